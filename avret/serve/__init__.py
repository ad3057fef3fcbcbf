"""``avret serve``: the HTTP service and web page over a :class:`avret.index.searcher.Searcher`.

Import :func:`avret.serve.app.create_app` (FastAPI is imported only there, so the rest of avret
never pays for it).
"""
