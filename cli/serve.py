"""``avret serve``: the search service and web page over an index that is loaded once."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer

from .common import user_errors
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
    device: str = typer.Option("cpu", "--device", help="FAISS device: cpu | cuda | auto"),
    workers_threads: int = typer.Option(40, "--threads", help="Request threads (searches and media decoding)"),
    reload_interval: float = typer.Option(10.0, "--reload-interval",
                                          help="Seconds between checks for a changed index (avret index add/remove, "
                                               "a rebuild), swapped in without a restart; 0: no timer (POST "
                                               "/admin/reload with the token still works)"),
) -> None:
    """Serve search over HTTP (JSON API + web page) on 127.0.0.1:8000 by default."""
    from avret.errors import AvretError

    if not _is_loopback(host) and token is None and not insecure:
        raise AvretError(f"--host {host} is not a loopback address: give --token T (or --insecure to serve "
                         "without one)")
    if token is not None and len(token) < 8:
        raise AvretError("--token: expected at least 8 characters")
    if not 0 < port < 65536:
        raise AvretError(f"--port {port}: expected 1..65535")
    if not reload_interval >= 0:
        raise AvretError(f"--reload-interval {reload_interval}: expected seconds >= 0")
    if not max_upload_mb > 0 or not max_seconds > 0 or workers_threads < 1:
        raise AvretError("--max-upload-mb, --max-seconds and --threads must be positive")

    import uvicorn

    from avret.index.searcher import Searcher
    from avret.serve.app import create_app
    from avret.serve.reload import ReloadingSearcher, install

    index = default_path(index, DEMO_INDEX, "index")

    def open_root(root: Path) -> Searcher:
        return Searcher(root, model=model, device=device, features=features, media_root=media_root,
                        load_model=True, max_query_seconds=max_seconds)

    searcher = ReloadingSearcher(index, open_root, interval=reload_interval or None)
    app = create_app(searcher, token=token, max_upload_bytes=int(max_upload_mb * 2**20),  # type: ignore[arg-type]
                     threads=workers_threads)
    install(app, searcher, token)

    info = searcher.info()
    counts = ", ".join(f"{v['count']} {m}" for m, v in info["indexes"].items())
    typer.echo(f"serving {index} ({counts}; media for {info['media']['clips']} clips) on "
               f"http://{_url_host(host)}:{port}/  (API docs: /docs; Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
