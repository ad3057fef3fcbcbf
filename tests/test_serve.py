"""The Searcher (index loaded once) and the HTTP service over it: every endpoint, every bad input."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from avret.errors import QueryError, UnknownClipError
from avret.features.synthetic_media import write_wav
from avret.index.build import build_indexes
from avret.index.searcher import Searcher
from avret.io import load_model
from avret.serve.app import create_app
from avret_cli.main import app as cli_app
from tests.fixtures_media import build_media_index

TOKEN = "s3cret-token-1"


@pytest.fixture(scope="module")
def synth_index(tmp_path_factory, tiny_run, tiny_synth) -> Path:
    out = tmp_path_factory.mktemp("serve") / "index"
    build_indexes(load_model(tiny_run), tiny_synth, out, device="cpu")
    return out


@pytest.fixture(scope="module")
def searcher(synth_index) -> Searcher:
    return Searcher(synth_index, load_model=True, device="cpu")


@pytest.fixture(scope="module")
def client(searcher) -> TestClient:
    return TestClient(create_app(searcher))


@pytest.fixture(scope="module")
def media_index(tmp_path_factory) -> dict[str, Path]:
    return build_media_index(tmp_path_factory.mktemp("media_index"))


@pytest.fixture(scope="module")
def media_client(media_index) -> TestClient:
    searcher = Searcher(media_index["index"], load_model=True, device="cpu")
    return TestClient(create_app(searcher, token=TOKEN, max_upload_bytes=200_000))


def _brute_force(searcher: Searcher, direction: str, queries: np.ndarray, k: int, rows=None):
    gallery = searcher.gallery(direction)
    emb = gallery.embeddings_of(np.arange(gallery.count))
    scores = queries @ emb.T
    if rows is not None:
        mask = np.full(gallery.count, -np.inf, dtype=np.float32)
        mask[rows] = 0
        scores = scores + mask
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return gallery.clip_ids[order], np.take_along_axis(scores, order, axis=1)


# ------------------------------------------------------------------ Searcher


def test_clip_id_query_uses_the_stored_embedding_and_equals_the_tower_path(searcher, tiny_run, tiny_synth):
    ids = [str(c) for c in tiny_synth.clip_ids[:3]]
    stored = searcher.search_clip_ids("audio-to-video", ids, k=7)
    # the same clips through the data set: features -> tower -> search (what avret search did before)
    rows = tiny_synth.rows_of(ids)
    via_tower = searcher.search_features("audio-to-video", tiny_synth.features("audio")[rows], k=7)
    assert stored.result.clip_ids.tolist() == via_tower.result.clip_ids.tolist()
    np.testing.assert_allclose(stored.result.scores, via_tower.result.scores, rtol=0, atol=1e-6)
    emb = load_model(tiny_run).embed("audio", tiny_synth.features("audio")[rows])
    want_ids, want_scores = _brute_force(searcher, "audio-to-video", emb, 7)
    assert stored.result.clip_ids.tolist() == want_ids.tolist()
    np.testing.assert_allclose(stored.result.scores, want_scores, atol=1e-5)
    assert stored.query_classes == [tiny_synth.class_names[int(c)] for c in tiny_synth.labels[rows]]


def test_clip_id_query_needs_no_model_or_data_set(synth_index, monkeypatch):
    import avret.data.registry
    import avret.io

    def boom(*a, **k):
        raise AssertionError("clip-id queries must not load a model or a data set")

    monkeypatch.setattr(avret.io, "load_model", boom)
    monkeypatch.setattr(avret.data.registry, "load_dataset", boom)
    searcher = Searcher(synth_index)
    answer = searcher.search("video-to-audio", "synth_000003", k=4)
    assert len(answer.result.clip_ids[0]) == 4 and searcher.info()["model"]["loaded"] is False


def test_class_filter_is_exact(searcher, tiny_synth):
    cls = tiny_synth.class_names[2]
    answer = searcher.search_clip_ids("video-to-audio", ["synth_000005"], k=5, classes=[cls])
    got = answer.to_records()[0]["results"]
    assert [r["class"] for r in got] == [cls] * 5
    gallery = searcher.gallery("video-to-audio")
    rows = np.flatnonzero(gallery.labels == 2)
    q = searcher.indexes["visual"].embeddings_of(searcher.indexes["visual"].rows_of(["synth_000005"]))
    want_ids, _ = _brute_force(searcher, "video-to-audio", q, 5, rows)
    assert [r["clip_id"] for r in got] == want_ids[0].tolist()
    with pytest.raises(QueryError, match="unknown class"):
        searcher.search_clip_ids("video-to-audio", ["synth_000005"], k=5, classes=["no-such-class"])


def test_unknown_clip_and_bad_k_are_one_line_errors(searcher):
    with pytest.raises(UnknownClipError, match="'nope' is not in index"):
        searcher.search_clip_ids("audio-to-video", ["nope"])
    with pytest.raises(QueryError, match="larger than the gallery"):
        searcher.search_clip_ids("audio-to-video", ["synth_000001"], k=10**6)
    with pytest.raises(QueryError, match="direction"):
        searcher.search_clip_ids("sideways", ["synth_000001"])


def test_concurrent_searches_equal_single_threaded_ones(searcher, tiny_synth):
    ids = [str(c) for c in tiny_synth.clip_ids[:48]]
    feats = tiny_synth.features("visual")[:48]
    want_a = [searcher.search_clip_ids("audio-to-video", [c], k=10).result.clip_ids.tolist() for c in ids]
    want_v = [searcher.search_features("video-to-audio", feats[i], k=10).result.clip_ids.tolist() for i in range(48)]
    classes = tiny_synth.class_names[:2]
    want_f = [searcher.search_clip_ids("audio-to-video", [c], k=5, classes=classes).result.clip_ids.tolist()
              for c in ids]

    def work(i: int):
        j = i % 48
        if i % 3 == 0:
            return "a", j, searcher.search_clip_ids("audio-to-video", [ids[j]], k=10).result.clip_ids.tolist()
        if i % 3 == 1:
            return "v", j, searcher.search_features("video-to-audio", feats[j], k=10).result.clip_ids.tolist()
        answer = searcher.search_clip_ids("audio-to-video", [ids[j]], k=5, classes=classes)
        return "f", j, answer.result.clip_ids.tolist()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(480)))
    want = {"a": want_a, "v": want_v, "f": want_f}
    assert all(got == want[kind][j] for kind, j, got in results)


# ------------------------------------------------------------------ the HTTP API


def test_health_info_and_page(client, tiny_synth):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["indexes"]["visual"]["count"] == len(tiny_synth) and info["indexes"]["audio"]["dim"] == 128
    assert info["classes"] == tiny_synth.class_names and info["examples"][0] == str(tiny_synth.clip_ids[0])
    assert info["model"]["loaded"] is True and info["versions"]["faiss"]
    assert info["synthetic"] is True  # vegas-synth: the page says its scores are synthetic
    page = client.get("/")
    assert page.status_code == 200 and "<form id=\"by-id\"" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/search"]


def test_search_endpoint_matches_the_library_and_the_cli(client, searcher, synth_index):
    body = {"direction": "audio-to-video", "clip_ids": ["synth_000010", "synth_000011"], "k": 6}
    got = client.post("/search", json=body).json()
    assert got == searcher.search_clip_ids("audio-to-video", body["clip_ids"], 6).to_json()
    res = CliRunner().invoke(cli_app, ["search", "audio-to-video", "--index", str(synth_index), "--query",
                                       "synth_000010,synth_000011", "-k", "6", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == got
    vec = {"direction": "video-to-audio", "vectors": [[0.05] * 512], "k": 3}
    width = searcher.model().visual_dim
    vec["vectors"] = [list(np.linspace(-1, 1, width))]
    got = client.post("/search", json=vec).json()
    assert got == searcher.search_features("video-to-audio", np.asarray(vec["vectors"]), 3).to_json()


def test_k_beyond_the_gallery_returns_all_of_it(client, searcher):
    """A schema-valid k (<= 1000) larger than the gallery is accepted: the whole gallery, ranked."""
    n = searcher.gallery("audio-to-video").count
    res = client.post("/search", json={"direction": "audio-to-video", "clip_ids": ["synth_000001"], "k": 999})
    assert res.status_code == 200, res.text[:300]
    assert len(res.json()["queries"][0]["results"]) == n


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"direction": "audio-to-video", "clip_ids": ["nope"]}, 404, "'nope' is not in index"),
        ({"direction": "audio-to-video", "clip_ids": ["synth_000001"], "k": 0}, 422, "k:"),
        ({"direction": "audio-to-video", "clip_ids": ["synth_000001"], "k": "ten"}, 422, "k:"),
        ({"direction": "audio-to-video", "vectors": [[0.1] * 7]}, 400, "width 7"),
        ({"direction": "audio-to-video", "vectors": [[0.1] * 128, [0.1] * 127]}, 422, "different widths"),
        ({"direction": "audio-to-video"}, 422, "exactly one of"),
        ({"direction": "audio-to-video", "clip_ids": ["a"], "vectors": [[1.0]]}, 422, "exactly one of"),
        ({"direction": "sideways", "clip_ids": ["synth_000001"]}, 422, "direction"),
        ({"direction": "audio-to-video", "clip_ids": []}, 422, "clip_ids"),  # the schema's minItems
        ({"direction": "audio-to-video", "clip_ids": ["synth_000001"], "classes": []}, 422, "classes"),
        ({"direction": "audio-to-video", "clip_ids": ["synth_000001"], "classes": ["zzz"]}, 400, "unknown class"),
        ({"direction": "audio-to-video", "clip_ids": ["synth_000001"], "extra": 1}, 422, "extra"),
    ],
)
def test_bad_search_requests_are_one_line_4xx_and_the_server_keeps_serving(client, body, status, fragment):
    res = client.post("/search", json=body)
    assert res.status_code == status, res.text[:300]
    err = res.json()["error"]
    assert fragment in err and "\n" not in err and list(res.json()) == ["error"]
    ok = client.post("/search", json={"direction": "audio-to-video", "clip_ids": ["synth_000001"], "k": 2})
    assert ok.status_code == 200 and len(ok.json()["queries"][0]["results"]) == 2


def test_nan_and_non_json_bodies(client):
    nan = b'{"direction": "audio-to-video", "vectors": [[NaN' + b", 0.1" * 127 + b"]]}"
    res = client.post("/search", content=nan, headers={"content-type": "application/json"})
    assert res.status_code == 422 and "vectors" in res.json()["error"], res.text  # the schema's bounds
    res = client.post("/search", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
    assert res.status_code in (400, 422) and "\n" not in res.json()["error"], res.text
    assert client.get("/health").status_code == 200


def test_media_of_an_index_without_media_is_404(client):
    assert client.get("/media/synth_000001").status_code == 404
    res = client.post("/search/media", data={"direction": "audio-to-video"},
                      files={"file": ("q.wav", b"RIFF....", "audio/wav")})
    msg = res.json()["error"]  # a plain error: no server path, no CLI flag
    assert res.status_code == 400 and "cannot embed uploaded media" in msg and "--" not in msg and "/tmp" not in msg


# ------------------------------------------------------------------ media, uploads, token


def test_token_is_required_everywhere_but_health(media_client):
    assert media_client.get("/health").status_code == 200
    assert media_client.get("/info").status_code == 401
    assert media_client.get("/info", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert media_client.get("/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert media_client.get(f"/info?token={TOKEN}").json()["synthetic"] is False
    assert media_client.get("/media/c0").status_code == 401
    assert media_client.post("/search", json={"direction": "audio-to-video", "clip_ids": ["c0"]}).status_code == 401


def test_media_is_served_with_ranges_only_from_the_index_table(media_client, media_index):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = media_client.post("/search", headers=auth, json={"direction": "audio-to-video", "clip_ids": ["c0"], "k": 3})
    assert res.status_code == 200
    hits = res.json()["queries"][0]["results"]
    assert all(h["media_url"] == f"/media/{h['clip_id']}" for h in hits)
    data = (media_index["media"] / "c3.mp4").read_bytes()
    full = media_client.get("/media/c3", headers=auth)
    assert full.status_code == 200 and full.content == data
    part = media_client.get("/media/c3", headers={**auth, "Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == data[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(data)}"
    (media_index["media"].parent / "secret.txt").write_text("secret")
    for attempt in ("../secret.txt", "..%2Fsecret.txt", "%2E%2E/secret.txt", "/etc/passwd", "c3.mp4", "nope"):
        assert media_client.get(f"/media/{attempt}", headers=auth).status_code == 404, attempt


def test_upload_search_and_bad_uploads(media_client, media_index, tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wav = write_wav(tmp_path / "q.wav", 1.5, 300.0)
    res = media_client.post("/search/media", headers=auth, data={"direction": "audio-to-video", "k": "4"},
                            files={"file": ("q.wav", wav.read_bytes(), "audio/wav")})
    assert res.status_code == 200, res.text
    block = res.json()["queries"][0]
    assert block["query"] == "q.wav" and len(block["results"]) == 4
    direct = Searcher(media_index["index"]).search_media("audio-to-video", wav, 4)
    assert [h["clip_id"] for h in block["results"]] == direct.result.clip_ids[0].tolist()

    def upload(name, content, direction="audio-to-video"):
        return media_client.post("/search/media", headers=auth, data={"direction": direction},
                                 files={"file": (name, content, "application/octet-stream")})

    cases = [
        (upload("q.txt", b"hello"), 415),
        (upload("q.wav", b""), 400),
        (upload("q.mp4", np.random.default_rng(0).bytes(5000)), 400),
        (upload("q.wav", wav.read_bytes(), direction="video-to-audio"), 400),  # no video track
        (upload("big.wav", b"\0" * 300_000), 413),
    ]
    for res, status in cases:
        assert res.status_code == status, res.text[:300]
        assert "\n" not in res.json()["error"]
    assert media_client.get("/health").status_code == 200


def test_cli_serve_refuses_a_public_address_without_a_token(synth_index):
    res = CliRunner().invoke(cli_app, ["serve", "--index", str(synth_index), "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "--token" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(cli_app, ["serve", "--index", str(synth_index / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_live_server_under_concurrent_clients(searcher):
    """A real uvicorn on loopback: 16 clients at once get the single-threaded answers, no errors."""
    import urllib.request

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(searcher), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        ids = [f"synth_{i:06d}" for i in range(40)]
        want = {c: searcher.search_clip_ids("video-to-audio", [c], 10).to_json() for c in ids}

        def ask(i: int):
            c = ids[i % len(ids)]
            body = json.dumps({"direction": "video-to-audio", "clip_ids": [c], "k": 10}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/search", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, c, json.loads(r.read())

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(ask, range(160)))
        assert all(status == 200 and body == want[c] for status, c, body in results)
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_forged_media_table_cannot_reach_outside_the_media_root(media_index, tmp_path):
    """Even the index's own table is only followed to files under the media root."""
    import shutil

    index = tmp_path / "index"
    shutil.copytree(media_index["index"], index)
    table = json.loads((index / "media.json").read_text())
    outside = tmp_path / "outside.txt"
    outside.write_text("not media")
    table["clips"]["c1"] = str(Path("..") / ".." / outside.relative_to(outside.anchor))
    table["clips"]["c2"] = str(outside)
    (index / "media.json").write_text(json.dumps(table))
    client = TestClient(create_app(Searcher(index, device="cpu")))
    assert client.get("/media/c0").status_code == 200
    assert client.get("/media/c1").status_code == 404 and client.get("/media/c2").status_code == 404
    hits = client.post("/search", json={"direction": "audio-to-video", "clip_ids": ["c0"], "k": 12}).json()
    urls = {h["clip_id"]: h.get("media_url") for h in hits["queries"][0]["results"]}
    assert urls["c1"] is None and urls["c2"] is None and urls["c3"] == "/media/c3"


def test_framework_errors_are_one_line_json_with_their_headers(media_client):
    """A wrong method keeps its Allow header; a bad or unsatisfiable Range is the one-line JSON error;
    a wrong token carries WWW-Authenticate; /openapi.json and /docs need the token."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = media_client.post("/health")
    assert res.status_code == 405 and "GET" in res.headers.get("allow", ""), res.headers
    assert list(res.json()) == ["error"]
    for rng, status in (("bytes=zz", 400), ("bytes=999999999-", 416)):
        res = media_client.get("/media/c3", headers={**auth, "Range": rng})
        assert res.status_code == status, (rng, res.status_code, res.text[:200])
        assert res.headers["content-type"] == "application/json" and list(res.json()) == ["error"], res.text
    res = media_client.get("/info", headers={"Authorization": "Bearer wrong-token"})
    assert res.status_code == 401 and res.headers.get("www-authenticate", "").startswith("Bearer")
    assert media_client.get("/openapi.json").status_code == 401
    assert media_client.get("/docs").status_code == 401
    assert media_client.get("/openapi.json", headers=auth).status_code == 200
    docs = media_client.get(f"/docs?token={TOKEN}")
    assert docs.status_code == 200 and f"/openapi.json?token={TOKEN}" in docs.text


def test_an_upload_error_never_names_the_server_temp_path(media_client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = media_client.post("/search/media", headers=auth, data={"direction": "audio-to-video"},
                            files={"file": ("broken.wav", b"RIFF not really a wav file" * 10, "audio/wav")})
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert "avret-upload-" not in err and "/tmp" not in err and "query.wav" not in err, err
