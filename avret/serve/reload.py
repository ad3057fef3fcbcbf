"""Serve an index root that changes (``avret index add/remove``, a rebuild) without a restart.

:class:`ReloadingSearcher` stands in for the :class:`~avret.index.searcher.Searcher` that
:func:`avret.serve.app.create_app` serves. It opens the root, remembers a stamp of its manifests
(inode, size, mtime of ``*/manifest.json`` and ``media.json``: ``index add/remove`` and ``index
build`` replace the whole root, so every file is new), and swaps to a freshly opened root when the
stamp changes -- checked every ``interval`` seconds by a background thread and on ``POST
/admin/reload`` (token required). The new root is opened completely (and its stamp checked again
after opening, so a root replaced while it was being read is opened again) before one reference
assignment makes it current; a root that fails to open is reported and the old one kept.

Each request is pinned to the searcher that was current when it arrived (an ASGI middleware sets a
context variable that the FastAPI thread pool inherits), so one request never sees two versions,
even when it looks the searcher up several times; requests already running finish on the old
version, whose files stay readable while open.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

from avret.errors import AvretError
from avret.index.searcher import Searcher

_pinned: contextvars.ContextVar[Searcher | None] = contextvars.ContextVar("avret_searcher", default=None)

#: Attempts at opening a root that keeps changing while it is read.
OPEN_ATTEMPTS = 3


def root_stamp(root: Path) -> tuple:
    """What changes when an index root is replaced: (name, inode, size, mtime) of its manifests and media table."""
    out = []
    for name in ("visual/manifest.json", "audio/manifest.json", "media.json"):
        try:
            st = (root / name).stat()
            out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return tuple(out)


class ReloadingSearcher:
    """The current :class:`Searcher` of ``root`` (attribute access goes to the one pinned to the request)."""

    def __init__(self, root: str | Path, open_searcher: Callable[[Path], Searcher], interval: float | None = None):
        self._root = Path(root)
        self._open = open_searcher
        self._lock = threading.Lock()
        self._current, self._stamp = self._load()
        self.version = 1
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval:
            self._thread = threading.Thread(target=self._watch, args=(float(interval),), daemon=True,
                                            name="avret-index-reload")
            self._thread.start()

    def _load(self) -> tuple[Searcher, tuple]:
        for _ in range(OPEN_ATTEMPTS):
            before = root_stamp(self._root)
            searcher = self._open(self._root)
            if root_stamp(self._root) == before:
                return searcher, before
        raise AvretError(f"{self._root}: the index root kept changing while it was opened; try again")

    def current(self) -> Searcher:
        """The searcher pinned to this request, else the current one."""
        return _pinned.get() or self._current

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current(), name)

    def reload(self, force: bool = False) -> dict[str, Any]:
        """Open the root again when its stamp changed (or ``force``) and make it current; what happened."""
        with self._lock:
            if not force and root_stamp(self._root) == self._stamp:
                return {"reloaded": False, "version": self.version}
            try:
                searcher, stamp = self._load()
            except Exception as exc:  # a half-written or broken root: keep serving the old one
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise
            self._current, self._stamp = searcher, stamp
            self.version += 1
            self.last_error = None
            return {"reloaded": True, "version": self.version}

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload()
            except Exception:  # recorded in last_error; the next tick tries again  # noqa: S110
                pass

    def close(self) -> None:
        """Stop the background check."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class _PinRequest:
    """ASGI middleware: pin the current searcher for the whole of each request."""

    def __init__(self, app: Any, holder: ReloadingSearcher) -> None:
        self.app = app
        self.holder = holder

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _pinned.set(self.holder._current)  # noqa: SLF001 -- the same module
        try:
            await self.app(scope, receive, send)
        finally:
            _pinned.reset(token)


class ReloadBody(BaseModel):
    """``POST /admin/reload``: whether a changed root was swapped in, its version and its counts."""

    reloaded: bool
    version: int
    counts: dict[str, int]


def install(app: FastAPI, holder: ReloadingSearcher, token: str | None, authorize: Callable[..., Any]) -> None:
    """Pin each request of ``app`` to one version and add ``POST /admin/reload`` (behind ``authorize``).

    :func:`avret.serve.app.create_app` calls this when it serves a :class:`ReloadingSearcher`.
    ``/admin/reload`` answers :class:`ReloadBody`; 403 when the server has no token (reloading is
    then left to the timer), 401 for a wrong one, 409 when the new root cannot be opened (the old one
    keeps being served).
    """
    from avret.serve.app import ErrorBody

    app.add_middleware(_PinRequest, holder=holder)
    documented: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "missing or wrong token"},
        403: {"model": ErrorBody, "description": "the server was started without --token"},
        409: {"model": ErrorBody, "description": "the changed index could not be opened; the old one is served"}}

    @app.post("/admin/reload", dependencies=[Depends(authorize)], responses=documented, response_model=ReloadBody)
    def admin_reload() -> dict[str, Any]:
        """Swap in the index root if it changed on disk."""
        if token is None:
            raise HTTPException(status_code=403, detail="reload on request needs a server started with --token "
                                                        "(the index is still checked on a timer)")
        try:
            out = holder.reload()
        except Exception:
            raise HTTPException(status_code=409, detail="the changed index could not be opened; the previous one "
                                                        "is still served (check it with avret index info)") from None
        current = holder._current  # noqa: SLF001
        out["counts"] = {m: ix.count for m, ix in current.indexes.items()}
        return out
