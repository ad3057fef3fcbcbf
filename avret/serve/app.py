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
Every bad request is a 4xx with a one-line JSON body ``{"error": "..."}`` (the :class:`ErrorBody`
of the OpenAPI schema), and the server goes on serving. With a token, every endpoint but ``/health``
and the page shell (``/``, ``/static/*``: no data) needs ``Authorization: Bearer TOKEN`` or
``?token=TOKEN`` (the page passes it on, also to media URLs, which a media element cannot send
headers for) — ``/openapi.json`` and ``/docs`` too. The token is checked before any body is read,
and bodies are counted while they stream in (:mod:`avret.serve.guard`).

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
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

import anyio.to_thread
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from avret.errors import AvretError, UnknownClipError
from avret.index.query import MEDIA_SUFFIXES
from avret.index.searcher import Searcher
from avret.serve.guard import UNAUTHORIZED, RequestGuard, token_of

if TYPE_CHECKING:
    from avret.serve.reload import ReloadingSearcher

#: Largest accepted upload, bytes (``avret serve --max-upload-mb``).
DEFAULT_MAX_UPLOAD = 50 * 2**20
#: Largest k and number of query rows one request may ask for.
MAX_K = 1000
MAX_QUERIES = 256
#: Largest magnitude of a query feature value (features are small numbers; this keeps float32 finite).
MAX_FEATURE = 1e6
#: Clip-id searches of at most this many (queries x gallery items) are answered on the event loop.
INLINE_SEARCH_WORK = 50_000
_COPY_CHUNK = 1 << 20


class SearchRequest(BaseModel):
    """Body of ``POST /search``: exactly one of ``clip_ids`` and ``vectors`` (the schema's ``oneOf``).

    ``k`` larger than the gallery returns the whole gallery; ``classes`` (at least one name) filters
    the results to those classes.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["clip_ids"], "not": {"required": ["vectors"]}},
                  {"required": ["vectors"], "not": {"required": ["clip_ids"]}}]})

    direction: Literal["audio-to-video", "video-to-audio"]
    clip_ids: list[str] = Field(default=None, min_length=1, max_length=MAX_QUERIES)  # type: ignore[assignment]
    vectors: list[Annotated[list[Annotated[float, Field(ge=-MAX_FEATURE, le=MAX_FEATURE)]],  # type: ignore[assignment]
                            Field(min_length=1)]] = Field(default=None, min_length=1, max_length=MAX_QUERIES)
    k: int = Field(default=10, ge=1, le=MAX_K)
    classes: list[str] = Field(default=None, min_length=1)  # type: ignore[assignment]


class ErrorBody(BaseModel):
    """Every error answer: one line of text naming what was wrong."""

    error: str


class HealthBody(BaseModel):
    status: Literal["ok"]


#: The error answers every protected endpoint documents (status → description).
ERRORS = {400: "bad request: malformed body, unknown class, wrong vector width, undecodable upload",
          401: "missing or wrong token", 413: "request body larger than the limit",
          422: "request does not match the schema"}


def _responses(*extra: int) -> dict[int | str, dict[str, Any]]:
    codes = {**ERRORS, **{c: {404: "unknown clip id", 415: "unsupported media type"}[c] for c in extra}}
    out: dict[int | str, dict[str, Any]] = {c: {"model": ErrorBody, "description": d} for c, d in codes.items()}
    out[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
    return out


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": " ".join(str(message).split())}, headers=headers)


def create_app(
    searcher: Searcher | ReloadingSearcher,
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
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.searcher = searcher
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # the schema, with what this index accepts (classes, vector widths)
        if app.openapi_schema is None:
            _constrain_search(plain_openapi(), searcher)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    # the token before any body, bodies counted while they stream in, plain-text errors as JSON
    app.add_middleware(RequestGuard, token=token, max_upload_bytes=max_upload_bytes, upload_paths=("/search/media",))
    bearer = HTTPBearer(auto_error=False, description="the token of `avret serve --token`")
    query_token = APIKeyQuery(name="token", auto_error=False, description="the token (for media elements)")

    async def authorize(request: Request, _b: HTTPAuthorizationCredentials | None = Security(bearer),
                        _q: str | None = Security(query_token)) -> None:
        # RequestGuard refuses a wrong token before the body is read; this documents it in the schema
        if token is not None and not secrets.compare_digest(token_of(request.scope).encode(), token.encode()):
            raise HTTPException(status_code=401, detail=UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(AvretError)
    async def _avret_error(_: Request, exc: AvretError) -> JSONResponse:
        return _error(404 if isinstance(exc, UnknownClipError) else 400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))  # Allow on 405

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    def media_url(clip_id: str) -> str | None:
        return f"/media/{quote(clip_id, safe='')}" if searcher.media_path(clip_id) is not None else None

    @app.get("/health", response_model=HealthBody)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:  # RequestGuard asked for the token; the page passes it on
        given = token_of(request.scope)
        url = app.openapi_url + (f"?token={quote(given, safe='')}" if token is not None else "")
        return get_swagger_ui_html(openapi_url=url, title="avret API")

    @app.get("/info", dependencies=[Depends(authorize)], responses=_responses())
    def info() -> dict[str, Any]:
        out = searcher.info()
        first = next(iter(searcher.indexes.values()))
        out["examples"] = [str(c) for c in first.clip_ids[: min(8, first.count)]]
        out["server"] = {"max_upload_bytes": max_upload_bytes, "max_k": MAX_K, "token": token is not None,
                         "media_suffixes": sorted(MEDIA_SUFFIXES)}
        return out

    @app.post("/search", dependencies=[Depends(authorize)], responses=_responses(404))
    async def search(req: SearchRequest) -> JSONResponse:
        if (req.clip_ids is None) == (req.vectors is None):
            raise HTTPException(status_code=422, detail="give exactly one of 'clip_ids' and 'vectors'")
        req.k = min(req.k, searcher.gallery(req.direction).count)  # k beyond the gallery: all of it

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

    @app.post("/search/media", dependencies=[Depends(authorize)], responses=_responses(415))
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
        k = min(k, searcher.gallery(direction).count)
        with tempfile.TemporaryDirectory(prefix="avret-upload-") as tmp:
            path = Path(tmp) / f"query{suffix}"
            _copy_limited(file, path, max_upload_bytes)
            try:
                answer = searcher.search_media(direction, path, k, classes=wanted, name=name)
            except AvretError as exc:  # name the upload, never the server's temporary path
                raise HTTPException(status_code=404 if isinstance(exc, UnknownClipError) else 400,
                                    detail=str(exc).replace(str(path), name).replace(tmp, "")) from None
        return answer.to_json(media_url)

    @app.get("/media/{clip_id:path}", dependencies=[Depends(authorize)], responses=_responses(404),
             response_class=FileResponse)
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
    from avret.serve.reload import ReloadingSearcher
    from avret.serve.reload import install as install_reload

    if isinstance(searcher, ReloadingSearcher):  # avret serve: POST /admin/reload, requests pinned to a version
        install_reload(app, searcher, token, authorize)
    return app


def _constrain_search(schema: dict[str, Any], searcher: Searcher) -> None:
    """Write into ``SearchRequest``'s schema what this index accepts: its class names (``classes``
    items) and, per direction, the width of the query features (``vectors``), so that a
    schema-valid request is one the service answers."""
    from avret.index.manifest import QUERY_FOR

    req = schema["components"]["schemas"]["SearchRequest"]
    names = sorted({str(c) for ix in searcher.indexes.values() for c in ix.class_names})
    if names:
        req["properties"]["classes"]["items"] = {"type": "string", "enum": names}
    try:
        model = searcher.model()
        widths = {d: int(getattr(model, f"{QUERY_FOR[d]}_dim")) for d in ("audio-to-video", "video-to-audio")}
    except (AvretError, AttributeError, TypeError, ValueError):
        return  # no model: widths are checked per request (400)
    vector_forms = [{"required": ["direction", "vectors"], "not": {"required": ["clip_ids"]},
                     "properties": {"direction": {"const": d},
                                    "vectors": {"items": {"minItems": w, "maxItems": w}}}}
                    for d, w in widths.items() if d in ("audio-to-video", "video-to-audio")]
    req["oneOf"] = [{"required": ["clip_ids"], "not": {"required": ["vectors"]}}, *vector_forms]


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


__all__ = ["DEFAULT_MAX_UPLOAD", "MAX_K", "ErrorBody", "SearchRequest", "create_app"]
