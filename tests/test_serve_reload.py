"""``avret serve`` picks up a changed index root without a restart and never mixes two versions.

Two versions of one root (B = A with clips removed and added, other class names) are swapped in and
out while 16 clients search: every answer must be exactly version A's or version B's answer.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from avret.index import AVIndex
from avret.index.searcher import Searcher
from avret.serve.app import create_app
from avret.serve.reload import ReloadingSearcher
from avret.utils.atomic import atomic_dir

FP = "e" * 64
TOKEN = "reload-token-123"


def _root(path: Path, ids: list[str], classes: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.arange(len(ids)) % len(classes)
    for modality in ("visual", "audio"):
        x = rng.standard_normal((len(ids), 8)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        AVIndex.build(x, ids, labels, classes, modality=modality, model_fingerprint=FP).save(path / modality)
    return path


@pytest.fixture()
def versions(tmp_path: Path) -> tuple[Path, Path, Path]:
    shared = [f"s{i:03d}" for i in range(60)]
    a = _root(tmp_path / "A", [f"a{i:03d}" for i in range(10)] + shared, ["a-x", "a-y"], seed=1)
    b = _root(tmp_path / "B", shared + [f"b{i:03d}" for i in range(25)], ["b-x", "b-y", "b-z"], seed=2)
    live = tmp_path / "live"
    shutil.copytree(a, live)
    return a, b, live


def _swap(live: Path, src: Path) -> None:
    with atomic_dir(live) as tmp:  # how index add/remove replace a root: one rename
        for sub in src.iterdir():
            shutil.copytree(sub, tmp / sub.name)


def _open(root: Path) -> Searcher:
    return Searcher(root)


def test_reload_on_request_and_refusals(versions) -> None:
    a, b, live = versions
    holder = ReloadingSearcher(live, _open)
    app = create_app(holder, token=TOKEN)
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.get("/info").json()["indexes"]["audio"]["count"] == 70
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    ok = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["reloaded"] is False  # nothing changed
    _swap(live, b)
    ok = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"reloaded": True, "version": 2, "counts": {"visual": 85,
                                                                                               "audio": 85}}
    assert client.get("/info").json()["indexes"]["audio"]["count"] == 85
    (live / "audio" / "metadata.json").write_text("{")  # a broken root: 409, the old version keeps serving
    shutil.copy(live / "audio" / "manifest.json", live / "audio" / "m.json")
    (live / "audio" / "manifest.json").unlink()
    shutil.copy(live / "audio" / "m.json", live / "audio" / "manifest.json")
    bad = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 409 and str(live) not in bad.text
    body = {"direction": "video-to-audio", "clip_ids": ["b001"], "k": 5}
    assert client.post("/search", json=body).status_code == 200
    untokened = create_app(ReloadingSearcher(a, _open))
    assert TestClient(untokened).post("/admin/reload").status_code == 403


def test_reloads_during_16_concurrent_clients_lose_nothing_and_never_mix(versions) -> None:
    import uvicorn

    a, b, live = versions
    want = {}
    for name, root in (("A", a), ("B", b)):
        s = Searcher(root)
        shared = [f"s{i:03d}" for i in range(60)]
        want[name] = {c: s.search_clip_ids("video-to-audio", [c], 10).to_json() for c in shared}
    assert all(want["A"][c] != want["B"][c] for c in want["A"])  # the versions are told apart by every answer
    holder = ReloadingSearcher(live, _open)
    app = create_app(holder, token=TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            threading.Event().wait(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]

        def post(path: str, body: dict | None, token: str | None = None):
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body or {}).encode(),
                                         headers=headers)
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())

        def ask(i: int):
            c = f"s{i % 60:03d}"
            status, body = post("/search", {"direction": "video-to-audio", "clip_ids": [c], "k": 10}, TOKEN)
            return status, c, body

        reloads = []

        def swapper() -> None:
            for src in (b, a, b, a, b, a):
                _swap(live, src)
                reloads.append(post("/admin/reload", None, TOKEN))

        with ThreadPoolExecutor(17) as pool:
            swapping = pool.submit(swapper)
            results = list(pool.map(ask, range(16 * 25)))
            swapping.result()
        assert len(results) == 400
        for status, c, body in results:
            assert status == 200 and body in (want["A"][c], want["B"][c]), (c, body)
        assert [r[0] for r in reloads] == [200] * 6 and all(r[1]["reloaded"] for r in reloads)
        assert reloads[-1][1]["version"] == 7
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_request_keeps_its_version_when_a_reload_lands_in_the_middle(versions) -> None:
    a, b, live = versions
    holder = ReloadingSearcher(live, _open)
    app = create_app(holder, token=TOKEN)

    @app.get("/probe")
    def probe() -> dict:  # looks the searcher up, lets a reload land, looks again
        before = holder.indexes["audio"].count
        _swap(live, b)
        holder.reload()
        return {"before": before, "after": holder.indexes["audio"].count}

    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.get("/probe").json() == {"before": 70, "after": 70}  # pinned to the version it started on
    assert client.get("/info").json()["indexes"]["audio"]["count"] == 85  # the next request sees the new one
