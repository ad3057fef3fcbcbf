"""The HTTP app of ``avret serve``: a FastAPI service and a web page over one :class:`Searcher`.

Endpoints (``/docs`` has the OpenAPI page FastAPI generates):

* ``GET /health``: liveness, never needs the token;
* ``GET /info``: model, data set, counts, dims, factory, device, versions, a few example clip ids;
* ``POST /search``: JSON ``{"direction", "clip_ids": [...] | "vectors": [[...]], "k", "classes"}``;
  ``vectors`` are query-modality *features* (the tower input, e.g. 128-d VGGish for audio);
* ``POST /search/media``: multipart upload (``file``, ``direction``, ``k``, ``classes``) of a
  wav/mp4/...; decoded (at most ``max_query_seconds``), encoded and searched;
* ``GET /media/{clip_id}``: the clip's media file, with HTTP range requests (``<audio>``/``<video>``
  seek). The file comes only from the index's own clip → path table and must lie under the media
  root: nothing from the request ever becomes a path;
* ``GET /``: the page (static HTML/CSS/JS, no build step); the routes only the page needs (clip
  cards, previews, the report link, the favicon) and the request log live in :mod:`avret.serve.page`.

Answers have the shape of ``avret search --json`` plus ``media_url`` on hits that have media.
Every bad request is a 4xx with a one-line JSON body ``{"error": "..."}``, and the server goes on
serving. With a token, every endpoint but ``/health`` needs ``Authorization: Bearer TOKEN`` or
``?token=TOKEN`` (the page passes it on, also to media URLs, which a media element cannot send
headers for).

Searches run in FastAPI's thread pool; the :class:`Searcher` is thread-safe and a media upload's
decoding holds no lock, so searches are not serialised behind it.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import anyio.to_thread
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from avret.errors import AvretError, UnknownClipError
from avret.index.query import MEDIA_SUFFIXES
from avret.index.searcher import Searcher

#: Largest accepted upload, bytes (``avret serve --max-upload-mb``).
DEFAULT_MAX_UPLOAD = 50 * 2**20
#: Largest k and number of query rows one request may ask for.
MAX_K = 1000
MAX_QUERIES = 256
#: Clip-id searches of at most this many (queries x gallery items) are answered on the event loop.
INLINE_SEARCH_WORK = 50_000
_COPY_CHUNK = 1 << 20


class SearchRequest(BaseModel):
    """Body of ``POST /search``: exactly one of ``clip_ids`` and ``vectors``."""

    model_config = ConfigDict(extra="forbid")

    direction: Literal["audio-to-video", "video-to-audio"]
    clip_ids: list[str] | None = Field(default=None, max_length=MAX_QUERIES)
    vectors: list[list[float]] | None = Field(default=None, max_length=MAX_QUERIES)
    k: int = Field(default=10, ge=1, le=MAX_K)
    classes: list[str] | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": " ".join(str(message).split())})


def create_app(
    searcher: Searcher,
    *,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    threads: int | None = None,
    report: Path | None = None,
) -> FastAPI:
    """The FastAPI app serving ``searcher`` (see the module docstring); ``threads`` sizes the request pool;
    ``report`` is an evaluation report directory the page links to (:mod:`avret.serve.page`)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if threads is not None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(title="avret", version=_version(), summary="Audio-visual retrieval: which videos sound like this?",
                  lifespan=lifespan)
    app.state.searcher = searcher

    async def authorize(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong token (Authorization: Bearer TOKEN)")

    @app.exception_handler(AvretError)
    async def _avret_error(_: Request, exc: AvretError) -> JSONResponse:
        return _error(404 if isinstance(exc, UnknownClipError) else 400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def _upload_limit(request: Request, call_next: Any) -> Any:
        # Refuse an oversized upload before its body is parsed (the copy below also counts bytes,
        # for clients that send no Content-Length).
        length = request.headers.get("content-length", "")
        if request.url.path == "/search/media" and length.isdigit() and int(length) > max_upload_bytes + 65536:
            return _error(413, f"upload of {length} bytes is larger than the limit of {max_upload_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    def media_url(clip_id: str) -> str | None:
        return f"/media/{quote(clip_id, safe='')}" if searcher.media_path(clip_id) is not None else None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", dependencies=[Depends(authorize)])
    def info() -> dict[str, Any]:
        out = searcher.info()
        first = next(iter(searcher.indexes.values()))
        out["examples"] = [str(c) for c in first.clip_ids[: min(8, first.count)]]
        out["server"] = {"max_upload_bytes": max_upload_bytes, "max_k": MAX_K, "token": token is not None,
                         "media_suffixes": sorted(MEDIA_SUFFIXES)}
        return out

    @app.post("/search", dependencies=[Depends(authorize)])
    async def search(req: SearchRequest) -> JSONResponse:
        if (req.clip_ids is None) == (req.vectors is None):
            raise HTTPException(status_code=422, detail="give exactly one of 'clip_ids' and 'vectors'")

        def run() -> dict[str, Any]:
            if req.clip_ids is not None:
                answer = searcher.search_clip_ids(req.direction, req.clip_ids, req.k, classes=req.classes)
            else:
                import numpy as np

                widths = {len(v) for v in req.vectors or []}
                if len(widths) > 1:
                    raise HTTPException(status_code=422, detail=f"vectors: rows of different widths {sorted(widths)}")
                answer = searcher.search_features(req.direction, np.asarray(req.vectors, dtype=np.float64), req.k,
                                                  classes=req.classes)
            return answer.to_json(media_url)

        # A lookup of a few stored embeddings in a small gallery takes well under a millisecond: it is
        # answered on the event loop. Tower passes and larger searches go to the thread pool, where
        # FAISS and torch release the GIL and use every core.
        gallery = searcher.gallery(req.direction)
        cheap = req.clip_ids is not None and len(req.clip_ids) * gallery.count <= INLINE_SEARCH_WORK
        return JSONResponse(run() if cheap else await anyio.to_thread.run_sync(run))

    @app.post("/search/media", dependencies=[Depends(authorize)])
    def search_media(
        file: UploadFile = File(..., description="a wav/mp4/... file"),
        direction: Literal["audio-to-video", "video-to-audio"] = Form(...),
        k: int = Form(10, ge=1, le=MAX_K),
        classes: str | None = Form(None, description="comma-separated class names"),
    ) -> dict[str, Any]:
        name = Path(file.filename or "upload").name
        suffix = Path(name).suffix.lower()
        if suffix not in MEDIA_SUFFIXES:
            raise HTTPException(status_code=415, detail=f"file {name!r}: expected one of {sorted(MEDIA_SUFFIXES)}")
        wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        if searcher.features is None:
            raise HTTPException(status_code=400, detail="this index cannot embed uploaded media (it was built "
                                "without the feature extractors); search by clip id instead")
        with tempfile.TemporaryDirectory(prefix="avret-upload-") as tmp:
            path = Path(tmp) / f"query{suffix}"
            _copy_limited(file, path, max_upload_bytes)
            try:
                answer = searcher.search_media(direction, path, k, classes=wanted, name=name)
            except AvretError as exc:  # name the upload, never the server's temporary path
                raise type(exc)(str(exc).replace(str(path), name).replace(tmp, "")) from None
        return answer.to_json(media_url)

    @app.get("/media/{clip_id:path}", dependencies=[Depends(authorize)])
    def media(clip_id: str) -> FileResponse:
        path = searcher.media_path(clip_id)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no media for clip id {clip_id!r}")
        return FileResponse(path)

    static = resources.files("avret.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    from avret.serve.page import install as install_page_routes

    install_page_routes(app, searcher, authorize, report=report)
    return app


def _copy_limited(upload: UploadFile, dest: Path, limit: int) -> None:
    """Copy an upload to ``dest``, refusing it (413) as soon as it exceeds ``limit`` bytes."""
    size = 0
    with open(dest, "wb") as out:
        while chunk := upload.file.read(_COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(status_code=413, detail=f"upload larger than the limit of {limit} bytes")
            out.write(chunk)
    if size == 0:
        raise HTTPException(status_code=400, detail=f"upload {upload.filename!r} is empty")


def _version() -> str:
    import avret

    return str(avret.__version__)


__all__ = ["DEFAULT_MAX_UPLOAD", "MAX_K", "SearchRequest", "create_app"]
