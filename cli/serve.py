"""``avret serve``: the search service and web page over an index that is loaded once."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer

from .common import require_int, require_number, user_errors
from .options import DEMO_INDEX, default_path

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@user_errors
def serve(
    index: Path | None = typer.Option(None, "--index", help="Index root (from avret index build) "
                                      "[default: runs/demo/index, written by `make demo`]"),
    media_root: Path | None = typer.Option(None, "--media-root", help="Directory media files are served from "
                                           "(default: the one recorded in the index)"),
    features: Path | None = typer.Option(None, "--features", help="Features dir for uploaded media queries "
                                         "(default: the one recorded in the index)"),
    model: Path | None = typer.Option(None, "--model", help="Model (default: the one recorded in the index)"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    token: str | None = typer.Option(None, "--token", envvar="AVRET_TOKEN",
                                     help="Bearer token required on every endpoint but /health"),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without --token"),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help="Largest accepted upload (MiB)"),
    max_seconds: float = typer.Option(60.0, "--max-seconds", help="Media queries: seconds of the file used"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto | torch-cpu | torch-cuda (docs/gpu.md)"),
    precision: str = typer.Option("fp32", "--precision", help="Torch backend's gallery scan: fp32 | bf16 | fp16"),
    workers_threads: int = typer.Option(40, "--threads", help="Request threads (searches and media decoding)"),
    report: Path | None = typer.Option(None, "--report", help="Evaluation report to link from the page (from avret "
                                       "eval --report; default: MODEL_RUN/report when it reports this model)"),
    reload_interval: float = typer.Option(10.0, "--reload-interval",
                                          help="Seconds between checks for a changed index (avret index add/remove, "
                                               "a rebuild), swapped in without a restart; 0: no timer (POST "
                                               "/admin/reload with the token still works)"),
) -> None:
    """Serve search over HTTP (JSON API + web page) on 127.0.0.1:8000 by default.

    Limits against hostile clients (docs/serving.md, "Limits"): the token is checked before any body
    is read, bodies are counted while they stream, request heads must arrive within 10 s, idle
    keep-alive connections close after 5 s, and open connections are capped below the descriptor limit
    (the soft RLIMIT_NOFILE is raised to the hard one where allowed).
    """
    from avret.errors import AvretError

    if token is not None and not token.strip():
        raise AvretError("--token (or AVRET_TOKEN): is empty; expected at least 8 characters, or leave it unset")
    if not _is_loopback(host) and token is None and not insecure:
        raise AvretError(f"--host {host} is not a loopback address: give --token T (or --insecure to serve "
                         "without one)")
    if token is not None and (len(token) < 8 or not token.isprintable() or token != token.strip()):
        raise AvretError("--token: expected at least 8 printable characters without surrounding spaces")
    if not 0 < port < 65536:
        raise AvretError(f"--port {port}: expected 1..65535")
    require_number(max_upload_mb, "--max-upload-mb", 0.0, MAX_UPLOAD_MB, low_open=True)
    require_number(max_seconds, "--max-seconds", 0.0, MAX_SECONDS, low_open=True)
    require_int(workers_threads, "--threads")
    if workers_threads > 1024:
        raise AvretError(f"--threads {workers_threads}: expected an integer <= 1024")
    for value, option in ((index, "--index"), (media_root, "--media-root"), (features, "--features")):
        if value is not None and not value.is_dir():
            raise AvretError(f"{option} {value}: does not exist or is not a directory")
    if model is not None and not model.exists():
        raise AvretError(f"--model {model}: not found")
    require_number(reload_interval, "--reload-interval", 0.0, 86400.0)

    import uvicorn

    from avret.index.searcher import Searcher
    from avret.serve.app import create_app
    from avret.serve.guard import KEEP_ALIVE_TIMEOUT, MAX_HEAD_BYTES, guarded_protocol, raise_fd_limit, server_limits
    from avret.serve.reload import ReloadingSearcher

    index = default_path(index, DEMO_INDEX, "index")
    sock = _bind(host, port)  # a port in use: one line before the index is loaded

    def open_root(root: Path) -> Searcher:
        return Searcher(root, model=model, device=device, precision=precision, features=features,
                        media_root=media_root, load_model=True, max_query_seconds=max_seconds)

    searcher = ReloadingSearcher(index, open_root, interval=reload_interval or None)
    from avret.serve.page import configure_request_log, find_report

    report_dir = find_report(searcher, report)  # type: ignore[arg-type]
    app = create_app(searcher, token=token, max_upload_bytes=int(max_upload_mb * 2**20), threads=workers_threads,
                     report=report_dir)
    configure_request_log()
    limits = server_limits(raise_fd_limit())

    info = searcher.info()
    counts = ", ".join(f"{v['count']} {m}" for m, v in info["indexes"].items())
    typer.echo(f"serving {index} ({counts}; media for {info['media']['clips']} clips) on "
               f"http://{_url_host(host)}:{port}/  (API docs: /docs; Ctrl-C stops)", err=True)
    if report_dir is not None:
        typer.echo(f"evaluation report: {report_dir} (linked from the page at /report/)", err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            http=guarded_protocol(max_connections=limits["max_connections"]),
                            backlog=limits["backlog"], limit_concurrency=limits["limit_concurrency"],
                            timeout_keep_alive=KEEP_ALIVE_TIMEOUT, h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    uvicorn.Server(config).run(sockets=[sock])


#: Upper bounds of --max-upload-mb (16 GiB) and --max-seconds (a day).
MAX_UPLOAD_MB = 16384.0
MAX_SECONDS = 86400.0


def _bind(host: str, port: int):  # -> socket.socket
    """A socket bound to ``host:port`` (uvicorn listens on it); a port in use or an address this machine
    does not have is one line."""
    import errno
    import socket

    from avret.errors import AvretError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise AvretError(f"--host {host}: cannot resolve it ({exc.args[-1] if exc.args else exc})") from None
    family, _type, proto, _name, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        why = {errno.EADDRINUSE: "already in use", errno.EACCES: "permission denied (a port below 1024?)",
               errno.EADDRNOTAVAIL: "not an address of this machine"}.get(exc.errno or 0, exc.strerror or str(exc))
        raise AvretError(f"--host {host} --port {port}: cannot listen there ({why}); choose another --port") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
