"""``avret serve`` against hostile clients, live on 127.0.0.1 (bounded counts, no timing assertions).

The server runs as a real ``avret serve`` process with a file-descriptor limit of 256 (soft and hard,
so it cannot raise it). 400 connections that send a partial request head and then idle (slowloris)
must not stop ``/health`` from answering; a chunked upload without Content-Length and with a wrong
token is refused with 401 before any byte of its body reaches the disk; an authenticated oversized
chunked upload is refused with 413; afterwards the server answers normally and its log holds no
traceback.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOKEN = "s3cret-token-live"
FD_LIMIT = 256
SLOWLORIS = 400

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE and loopback sockets: Linux")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def _chunked_upload(port: int, token: str, chunks: int) -> tuple[bytes, int]:
    """POST /search/media with Transfer-Encoding: chunked (no Content-Length); the answer's head, bytes sent."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    sent = 0
    try:
        s.sendall(b"POST /search/media HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + token.encode()
                  + b"\r\nContent-Type: multipart/form-data; boundary=XX\r\nTransfer-Encoding: chunked\r\n\r\n")
        head = (b'--XX\r\nContent-Disposition: form-data; name="file"; filename="q.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\n")
        s.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        chunk = b"\0" * 65536
        try:
            for _ in range(chunks):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:  # the server answered and closed: the rest is not read
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                part = s.recv(4096)
                if not part:
                    break
                answer += part
        except OSError:
            pass
        return answer, sent
    finally:
        s.close()


def _files(root: Path) -> list[tuple[str, int]]:
    return [(str(p), p.stat().st_size) for p in root.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def index_root(tmp_path_factory, tiny_run, tiny_synth) -> Path:
    from avret.index.build import build_indexes
    from avret.io import load_model

    out = tmp_path_factory.mktemp("hostile") / "index"
    build_indexes(load_model(tiny_run), tiny_synth, out, device="cpu")
    return out


def test_health_answers_under_slowloris_and_unauthenticated_uploads_write_nothing(index_root, tmp_path):
    import resource

    port = _free_port()
    spool = tmp_path / "server-tmp"  # the server's TMPDIR: where an upload would be spooled
    spool.mkdir()
    log = tmp_path / "serve.log"

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "avret_cli.main", "serve", "--index", str(index_root), "--port", str(port),
             "--token", TOKEN, "--max-upload-mb", "1", "--device", "cpu"],
            env={**os.environ, "TMPDIR": str(spool)}, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit_fds)
    attackers: list[socket.socket] = []
    try:
        for _ in range(1200):  # start-up (bounded by count, not asserted on time)
            try:
                if _get(port, "/health")[0] == 200:
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
        assert _get(port, "/health")[0] == 200

        # 400 idle connections with a partial request head: /health answers throughout
        answers = []
        for i in range(SLOWLORIS):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=60)
                s.sendall(b"GET /info HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                attackers.append(s)
            except OSError:  # the server closed an older idle one first: that is the defence
                pass
            if i % 40 == 39:
                answers.append(_get(port, "/health")[0])
        answers += [_get(port, "/health")[0] for _ in range(5)]
        assert answers == [200] * len(answers)

        # a chunked oversized upload with a wrong token: 401, nothing spooled to disk
        head, _sent = _chunked_upload(port, "wrong-token-123", chunks=64)
        assert head.startswith(b"HTTP/1.1 401"), head[:200]
        assert b"www-authenticate: bearer" in head.lower()
        assert _files(spool) == []
        # the same, authenticated, over the 1 MiB limit: 413 while streaming, the spool removed again
        head, _sent = _chunked_upload(port, TOKEN, chunks=64)
        assert head.startswith(b"HTTP/1.1 413"), head[:200]
        assert _get(port, "/health")[0] == 200
    finally:
        for s in attackers:
            s.close()
    try:
        # recovered: normal requests answer, with and without the token as documented
        assert _get(port, "/health")[0] == 200
        status, body = _get(port, "/info", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["indexes"]
        status, body = _get(port, "/openapi.json")
        assert status == 401 and list(json.loads(body)) == ["error"]
        assert _files(spool) == []
    finally:
        proc.terminate()
        proc.wait(60)
    text = log.read_text()
    assert "Traceback" not in text and "Exception" not in text, text[-3000:]
