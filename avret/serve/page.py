"""The routes the search page needs beyond the JSON search API, kept apart from :mod:`avret.serve.app`.

* ``GET /clip/{clip_id}?direction=...&k=...``: one indexed clip as a query: its class, media and
  preview URLs, and (when the index knows its class) its own AP and precision@k over the whole
  index in that direction (the page's query card);
* ``GET /poster/{clip_id}``, ``GET /spectrogram/{clip_id}``: PNG previews made from the clip's media
  (:mod:`avret.serve.previews`, cached in the index directory);
* ``GET /page/links``: where the evaluation report of the index's model is (``null`` when none);
* ``GET /report/{path}``: that report's files (see :func:`find_report`);
* ``GET /favicon.ico``;
* a request log: one ``METHOD PATH STATUS MS`` line per request at info level on the
  ``avret.serve`` logger (the query string is left out, so a ``?token=`` never reaches the log).

:func:`install` adds all of them to an app, with the app's own ``authorize`` dependency.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from avret.errors import AvretError, QueryError, UnknownClipError
from avret.index.manifest import QUERY_FOR
from avret.index.searcher import Searcher
from avret.serve.app import ErrorBody
from avret.serve.previews import PreviewCache

LOG = logging.getLogger("avret.serve")
#: The report written by ``avret eval --report DIR``: its marker file and its page.
REPORT_FILE = "report.json"
REPORT_PAGE = "index.html"
#: ``avret serve`` looks for a report here, beside the index's model, when given no ``--report``.
DEFAULT_REPORT_DIR = "report"
#: Galleries larger than this get no per-query AP on the query card (a full ranking per click).
MAX_STATS_GALLERY = 200_000


class ClipStats(BaseModel):
    """A clip's own retrieval quality as a query over the whole index (the index knows its class)."""

    ap: float
    precision_at_k: float
    n_relevant: int
    n_gallery: int


class ClipCard(BaseModel):
    """``GET /clip/{clip_id}``: one indexed clip as a query (URLs are null when it has no media)."""

    clip_id: str
    direction: str
    k: int
    class_: str | None = Field(None, alias="class", description="the clip's class (null when unlabelled)")
    stats: ClipStats | None = None
    media_url: str | None = None
    poster_url: str | None = None
    spectrogram_url: str | None = None


class PageLinks(BaseModel):
    """``GET /page/links``: the evaluation report of the index's model, or null."""

    report: str | None


def configure_request_log(level: int = logging.INFO) -> None:
    """Send the ``avret.serve`` request log to stderr (``avret serve`` calls this once)."""
    if not any(getattr(h, "_avret", False) for h in LOG.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._avret = True  # type: ignore[attr-defined]
        LOG.addHandler(handler)
    LOG.setLevel(level)
    LOG.propagate = False


def report_fingerprints(report_dir: Path) -> set[str]:
    """Model fingerprints recorded in a report's ``report.json`` (empty when unreadable)."""
    try:
        raw = json.loads((report_dir / REPORT_FILE).read_text(encoding="utf-8"))
        return {str(m["fingerprint"]) for m in raw.get("models", []) if m.get("fingerprint")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()


def find_report(searcher: Searcher, given: Path | None = None) -> Path | None:
    """The report directory to link from the page.

    ``given`` (``avret serve --report DIR``) must hold a report (``report.json`` + ``index.html``)
    of the index's model, else a one-line :class:`AvretError`. Without it: ``MODEL_RUN/report``
    when it holds a report of this model (the place the docs suggest for ``avret eval --model RUN
    --report RUN/report``), looked for beside the model directory and in its parent run directory;
    otherwise None.
    """
    if given is not None:
        if not (given / REPORT_FILE).is_file() or not (given / REPORT_PAGE).is_file():
            raise AvretError(f"--report {given}: expected a directory written by avret eval --report "
                             f"({REPORT_FILE} and {REPORT_PAGE})")
        if searcher.fingerprint not in report_fingerprints(given):
            raise AvretError(f"--report {given}: it reports other models than the index's "
                             f"({searcher.fingerprint[:12]}); run avret eval --model RUN --report DIR")
        return given.resolve()
    if searcher.model_path is None:
        return None
    for base in (searcher.model_path, searcher.model_path.parent):
        cand = base / DEFAULT_REPORT_DIR
        if (cand / REPORT_PAGE).is_file() and searcher.fingerprint in report_fingerprints(cand):
            return cand.resolve()
    return None


def clip_stats(searcher: Searcher, direction: str, clip_id: str, k: int) -> dict[str, Any]:
    """The card of one indexed clip used as a query in ``direction``: class and, when known, its
    AP (over the whole ranked gallery of this index) and precision@k."""
    gallery = searcher.gallery(direction)
    source = searcher.indexes.get(QUERY_FOR[direction])
    if source is None:
        raise QueryError(f"this index has no {QUERY_FOR[direction]} embeddings to search {direction} by clip id")
    try:
        row = source.rows_of([clip_id])
    except QueryError as exc:
        raise UnknownClipError(str(exc)) from None
    label = int(source.labels[row[0]])
    cls = source.class_names[label] if 0 <= label < len(source.class_names) else None
    out: dict[str, Any] = {"clip_id": clip_id, "class": cls, "direction": direction, "k": k, "stats": None}
    if cls is None or gallery.count > MAX_STATS_GALLERY:
        return out
    import numpy as np

    relevant = int(np.count_nonzero(gallery.labels == label))
    if relevant == 0:
        out["stats"] = {"ap": 0.0, "precision_at_k": 0.0, "n_relevant": 0, "n_gallery": gallery.count}
        return out
    result = gallery.search(source.embeddings_of(row), gallery.count)
    ranked = result.labels[0][result.rows[0] >= 0] == label
    hits = np.flatnonzero(ranked)
    ap = float(np.sum(np.arange(1, hits.size + 1) / (hits + 1.0)) / relevant)
    out["stats"] = {"ap": ap, "precision_at_k": float(np.count_nonzero(ranked[:k]) / k),
                    "n_relevant": relevant, "n_gallery": gallery.count}
    return out


def install(app: FastAPI, searcher: Searcher, authorize: Callable[..., Any], *, report: Path | None = None) -> None:
    """Add the page's routes, the favicon and the request log to ``app`` (see the module docstring)."""
    previews = PreviewCache(searcher.root)
    auth = [Depends(authorize)]
    static = resources.files("avret.serve") / "static"

    @app.middleware("http")
    async def _request_log(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            LOG.info("%s %s %d %.1fms", request.method, request.url.path, status,
                     1000 * (time.perf_counter() - start))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response((static / "favicon.svg").read_bytes(), media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": what}
        for code, what in ((400, "bad request"), (401, "missing or wrong token"), (404, "unknown clip"),
                           (422, "invalid parameter"))}

    @app.get("/clip/{clip_id:path}", dependencies=auth, response_model=ClipCard, responses=errors)
    def clip(clip_id: str, direction: Literal["audio-to-video", "video-to-audio"] = Query(...),
             k: int = Query(10, ge=1, le=1000)) -> dict[str, Any]:
        """One indexed clip as a query: class, media/preview URLs, its own AP and P@k when its class is known."""
        out = clip_stats(searcher, direction, clip_id, k)
        has_media = searcher.media_path(clip_id) is not None
        q = quote(clip_id, safe="")
        out["media_url"] = f"/media/{q}" if has_media else None
        out["poster_url"] = f"/poster/{q}" if has_media else None
        out["spectrogram_url"] = f"/spectrogram/{q}" if has_media else None
        return out

    def preview(kind: str, clip_id: str) -> Response:
        path = searcher.media_path(clip_id)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no media for clip id {clip_id!r}")
        try:
            data = previews.get(kind, clip_id, path)
        except AvretError as exc:
            raise HTTPException(status_code=404, detail=f"clip {clip_id!r}: {exc}") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/poster/{clip_id:path}", dependencies=auth, response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 401: errors[401],
                        404: {"model": ErrorBody, "description": "no media or no video track"}})
    def poster(clip_id: str) -> Response:
        """A frame from the clip's video (PNG)."""
        return preview("poster", clip_id)

    @app.get("/spectrogram/{clip_id:path}", dependencies=auth, response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 401: errors[401],
                        404: {"model": ErrorBody, "description": "no media or no audio track"}})
    def spectrogram(clip_id: str) -> Response:
        """A spectrogram of the clip's sound (PNG)."""
        return preview("spectrogram", clip_id)

    @app.get("/page/links", dependencies=auth, response_model=PageLinks, responses={401: errors[401]})
    def links() -> dict[str, Any]:
        """Links the page shows: the evaluation report of the index's model (null when none)."""
        return {"report": f"/report/{REPORT_PAGE}" if report is not None else None}

    @app.get("/report/{name:path}", dependencies=auth, include_in_schema=False)
    def report_file(name: str) -> FileResponse:
        if report is None:
            raise HTTPException(status_code=404, detail="no evaluation report is served")
        path = (report / (name or REPORT_PAGE)).resolve()
        if not path.is_relative_to(report) or not path.is_file():
            raise HTTPException(status_code=404, detail=f"no report file {name!r}")
        return FileResponse(path)


__all__ = ["DEFAULT_REPORT_DIR", "REPORT_FILE", "REPORT_PAGE", "ClipCard", "ClipStats", "PageLinks", "clip_stats",
           "configure_request_log", "find_report", "install"]
