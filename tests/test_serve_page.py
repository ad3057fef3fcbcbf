"""The routes the search page needs (avret.serve.page): clip cards, previews, report link, favicon, request log."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from avret.errors import AvretError
from avret.eval.retrieval import retrieval_metrics
from avret.index.build import build_indexes
from avret.index.searcher import Searcher
from avret.io import load_model
from avret.serve.app import create_app
from avret.serve.page import REPORT_FILE, find_report
from avret.serve.previews import spectrogram_image
from tests.fixtures_media import build_media_index


@pytest.fixture(scope="module")
def synth_searcher(tmp_path_factory, tiny_run, tiny_synth) -> Searcher:
    out = tmp_path_factory.mktemp("page") / "index"
    build_indexes(load_model(tiny_run), tiny_synth, out, device="cpu")
    return Searcher(out, device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return build_media_index(tmp_path_factory.mktemp("page_media"))


def test_clip_card_ap_equals_the_evaluator_on_the_index_embeddings(synth_searcher, tiny_synth):
    client = TestClient(create_app(synth_searcher))
    audio, visual = synth_searcher.indexes["audio"], synth_searcher.indexes["visual"]
    g_emb = visual.embeddings_of(np.arange(visual.count))
    for row in (0, 7, 33):
        cid = str(audio.clip_ids[row])
        card = client.get(f"/clip/{cid}", params={"direction": "audio-to-video", "k": 5}).json()
        q_emb = audio.embeddings_of(np.array([row]))
        want = retrieval_metrics(q_emb, audio.labels[[row]], g_emb, visual.labels, ks=(5,))
        assert card["class"] == tiny_synth.class_names[int(audio.labels[row])]
        assert card["stats"]["ap"] == pytest.approx(float(want.ap[0]), abs=1e-6)
        assert card["stats"]["precision_at_k"] == pytest.approx(want.precision_at[5])
        assert card["stats"]["n_relevant"] == int((visual.labels == audio.labels[row]).sum())
        assert card["media_url"] is None and card["poster_url"] is None  # vegas-synth has no media
    res = client.get("/clip/nope", params={"direction": "audio-to-video"})
    assert res.status_code == 404 and "nope" in res.json()["error"]


def test_favicon_and_the_request_log(synth_searcher, caplog):
    client = TestClient(create_app(synth_searcher))
    with caplog.at_level(logging.INFO, logger="avret.serve"):
        fav = client.get("/favicon.ico")
        client.get("/clip/nope?direction=audio-to-video&token=secret-in-query")
    assert fav.status_code == 200 and fav.headers["content-type"].startswith("image/svg+xml")
    lines = [r.getMessage() for r in caplog.records if r.name == "avret.serve"]
    assert any(line.startswith("GET /favicon.ico 200 ") and line.endswith("ms") for line in lines), lines
    assert any(line.startswith("GET /clip/nope 404 ") for line in lines), lines
    assert not any("secret-in-query" in line for line in lines)  # the query string is never logged


def test_previews_are_pngs_cached_in_the_index_dir(media):
    from PIL import Image

    client = TestClient(create_app(Searcher(media["index"], device="cpu")))
    poster = client.get("/poster/c2")
    spec = client.get("/spectrogram/c2")
    for res in (poster, spec):
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(poster.content))
    assert min(img.size) >= 16 and Image.open(io.BytesIO(spec.content)).size == (320, 96)
    cached = sorted((media["index"] / "previews").rglob("*.png"))
    assert [p.parent.name for p in cached] == ["poster", "spectrogram"]
    assert {p.read_bytes() for p in cached} == {poster.content, spec.content}
    # a second server reads the cached files instead of decoding again
    cached[0].write_bytes(b"cached-bytes")
    again = TestClient(create_app(Searcher(media["index"], device="cpu"))).get(f"/{cached[0].parent.name}/c2")
    assert again.content == b"cached-bytes"
    cached[0].unlink()
    assert client.get("/poster/nope").status_code == 404
    card = client.get("/clip/c2", params={"direction": "video-to-audio"}).json()
    assert card["poster_url"] == "/poster/c2" and card["media_url"] == "/media/c2"


def test_spectrogram_shows_a_tone_at_its_frequency():
    rate = 16000
    t = np.arange(rate) / rate
    low = spectrogram_image(np.sin(2 * np.pi * 500 * t), rate).astype(float).sum(axis=(1, 2))
    high = spectrogram_image(np.sin(2 * np.pi * 6000 * t), rate).astype(float).sum(axis=(1, 2))
    # rows run from high frequencies (top) to low (bottom): the brightest row follows the tone
    assert int(np.argmax(low)) > int(np.argmax(high))
    assert int(np.argmax(low)) == pytest.approx(95 * (1 - 500 / 8000), abs=3)


def test_report_link_is_found_beside_the_model_or_given(tmp_path, synth_searcher):
    client = TestClient(create_app(synth_searcher))
    assert client.get("/page/links").json() == {"report": None}
    assert find_report(synth_searcher) is None
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "index.html").write_text("<html>report</html>")
    (rep / REPORT_FILE).write_text(json.dumps({"models": [{"fingerprint": "other"}]}))
    with pytest.raises(AvretError, match="other models than the index's"):
        find_report(synth_searcher, rep)
    (rep / REPORT_FILE).write_text(json.dumps({"models": [{"fingerprint": synth_searcher.fingerprint}]}))
    assert find_report(synth_searcher, rep) == rep.resolve()
    with pytest.raises(AvretError, match="expected a directory written by avret eval --report"):
        find_report(synth_searcher, tmp_path / "missing")
    client = TestClient(create_app(synth_searcher, report=rep.resolve()))
    assert client.get("/page/links").json() == {"report": "/report/index.html"}
    assert client.get("/report/index.html").text == "<html>report</html>"
    assert client.get("/report/%2e%2e/%2e%2e/etc/passwd").status_code == 404
