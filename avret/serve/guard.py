"""What keeps ``avret serve`` answering under hostile clients: limits at the door.

* :class:`RequestGuard` (ASGI middleware, outside the routes): the token is checked on the request
  line and headers, before any body is read (a wrong token: 401 with ``WWW-Authenticate``, 0 bytes
  of the body read or written); a body is counted while it streams in — with or without
  ``Content-Length``, chunked too — and refused with 413 as soon as it passes the limit (the upload
  route: ``--max-upload-mb`` + 64 KiB of multipart framing; any other route: :data:`JSON_BODY_LIMIT`);
  plain-text error answers of the framework (a bad ``Range``: 400/416) become the one-line JSON
  ``{"error": "..."}`` of every other error.
* :func:`guarded_protocol`: uvicorn's h11 protocol with a header timeout (a connection that has not
  sent a complete request head within ``header_timeout`` seconds is closed: slowloris) and a cap on
  open connections (a new connection beyond it closes the oldest one that is idle or still sending
  its head), so that the process never runs out of file descriptors and ``/health`` keeps answering.
  Malformed HTTP gets the one-line JSON 400 too.
* :func:`raise_fd_limit` and :func:`server_limits`: the soft ``RLIMIT_NOFILE`` is raised to the hard
  limit where allowed; the connection cap, listen backlog and concurrency limit follow from it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Paths served without the token: liveness, and the page shell and its static files (they hold no
#: data; the page passes ``?token=`` on to every request it makes).
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
#: Largest body of a JSON request (``POST /search``): 256 query vectors of a few thousand numbers.
JSON_BODY_LIMIT = 16 * 2**20
#: Multipart framing allowed on top of the upload limit (boundaries, part headers, form fields).
MULTIPART_SLACK = 65536
#: Seconds a connection may take to send a complete request head.
HEADER_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``).
KEEP_ALIVE_TIMEOUT = 5
#: Largest request head (h11's ``max_incomplete_event_size``): a longer one is a 400.
MAX_HEAD_BYTES = 16 * 1024
UNAUTHORIZED = "missing or wrong token (send Authorization: Bearer TOKEN, or ?token=TOKEN)"


def error_body(message: str) -> bytes:
    """The one-line JSON error body ``{"error": "..."}``."""
    return json.dumps({"error": " ".join(str(message).split())}).encode()


async def send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def token_of(scope: Scope) -> str:
    """The token a request carries: ``Authorization: Bearer T``, else ``?token=T``."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [""])[0]


class RequestGuard:
    """ASGI middleware: the token before the body, bodies counted while streaming, JSON errors."""

    def __init__(self, app: Any, *, token: str | None, max_upload_bytes: int, upload_paths: tuple[str, ...],
                 json_limit: int = JSON_BODY_LIMIT) -> None:
        self.app, self.token = app, token
        self.upload_paths, self.upload_limit = upload_paths, max_upload_bytes + MULTIPART_SLACK
        self.json_limit = json_limit

    def authorized(self, scope: Scope) -> bool:
        if self.token is None or is_open_path(scope["path"]):
            return True
        return secrets.compare_digest(token_of(scope).encode("utf-8", "replace"), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        close = [(b"connection", b"close")]  # the unread rest of the body is not waited for
        if not self.authorized(scope):
            await send_error(send, 401, UNAUTHORIZED, [(b"www-authenticate", b'Bearer realm="avret"'), *close])
            return
        limit = self.upload_limit if scope["path"] in self.upload_paths else self.json_limit
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            if not length.strip().isdigit():
                await send_error(send, 400, "Content-Length: expected a number of bytes", close)
            else:
                await send_error(send, 413, f"request body of {int(length)} bytes is larger than the limit of "
                                 f"{limit} bytes", close)
            return
        state = {"received": 0, "over": False, "plain": None}

        async def guarded_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True  # the app sees a disconnect and stops reading; the 413 is ours
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", ())).get(b"content-type", b"")
                if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                    state["plain"] = (message, [])  # re-worded as JSON once complete
                    return
            elif message["type"] == "http.response.body" and state["plain"] is not None:
                start, parts = state["plain"]
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                text = b"".join(parts).decode("utf-8", "replace").strip()
                status = start["status"]
                if not text or text.startswith("<"):
                    text = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
                body = error_body(text)
                keep = [(k, v) for k, v in start.get("headers", ()) if k not in (b"content-type", b"content-length")]
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), *keep]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"]:
            await send_error(send, 413, f"request body larger than the limit of {limit} bytes", close)


# --------------------------------------------------------------------------- connections and descriptors
def raise_fd_limit(cap: int = 65536) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards the hard limit (at most ``cap``) where allowed; the soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return cap if soft == resource.RLIM_INFINITY else int(soft)


def server_limits(nofile: int) -> dict[str, int]:
    """The listen backlog, the cap on open connections and uvicorn's ``limit_concurrency`` for a process
    that may hold ``nofile`` descriptors: connections stay well below it (a burst of accepts is at most
    one backlog, closed connections release their descriptor one loop turn later; the index, threads
    and media decoding keep some)."""
    backlog = max(16, min(2048, nofile // 8))
    max_connections = max(8, min(10_000, nofile - 4 * backlog - 32))
    return {"backlog": backlog, "max_connections": max_connections,
            "limit_concurrency": max_connections + backlog}


def guarded_protocol(header_timeout: float = HEADER_TIMEOUT, max_connections: int = 1000) -> type:
    """uvicorn's h11 protocol with a header timeout, a connection cap and JSON 400s (see module doc)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: Any = None
        _idle_since: float = 0.0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._idle_since = self.loop.time()
            self._arm()
            if len(self.connections) > max_connections:
                self._evict()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._waiting_for_head() and not self.transport.is_closing():
                self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            self._idle_since = self.loop.time()
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            body = error_body(f"malformed HTTP request: {msg}")
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            try:
                self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers,
                                                                 reason=b"Bad Request")))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                pass
            self.transport.close()

        # -- helpers
        def _waiting_for_head(self) -> bool:
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _head_timeout(self) -> None:
            self._header_timer = None
            if self._waiting_for_head():
                self._close()

        def _close(self) -> None:
            if self.transport.is_closing():
                return
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()

        def _evict(self) -> None:
            idle = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c is not self
                    and c._waiting_for_head() and not c.transport.is_closing()]
            victim = min(idle, key=lambda c: c._idle_since) if idle else self
            victim._close()

    return GuardedH11Protocol


__all__ = ["HEADER_TIMEOUT", "JSON_BODY_LIMIT", "KEEP_ALIVE_TIMEOUT", "MAX_HEAD_BYTES", "OPEN_PATHS",
           "RequestGuard", "guarded_protocol", "raise_fd_limit", "server_limits"]
