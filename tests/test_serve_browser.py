"""The web page of a live ``avret serve``, driven by a real headless Chromium (Playwright).

Needs Debian's Chromium (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` Python package (a dev dependency; its own browser downloads are never used). On a
machine without Chromium the tests skip and say how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from avret.features.synthetic_media import write_wav
from avret.index.build import build_indexes
from avret.io import load_model
from tests.fixtures_media import build_media_index

REPO = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    for name in (os.environ.get("AVRET_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    pytest.skip("no Chromium found: install it with `apt-get install chromium` (or set AVRET_CHROMIUM)")


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (a dev dependency)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True,
                               args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``avret serve`` in a subprocess on a free loopback port (stopped at exit)."""

    def __init__(self, index: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "avret_cli.main", "serve", "--index", str(index), "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"avret serve exited: {self.proc.stdout.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if json.loads(r.read()) == {"status": "ok"}:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("avret serve did not answer /health within 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def synth_server(tmp_path_factory, tiny_run, tiny_synth):
    index = tmp_path_factory.mktemp("browser") / "index"
    build_indexes(load_model(tiny_run), tiny_synth, index, device="cpu")
    server = LiveServer(index)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def media_server(tmp_path_factory):
    paths = build_media_index(tmp_path_factory.mktemp("browser_media"))
    server = LiveServer(paths["index"], "--token", "browser-token-1")
    server.paths = paths
    yield server
    server.stop()


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all(
        ".card.hit", "cards => cards.map(c => ({id: c.dataset.clipId, cls: c.querySelector('.class').textContent,"
                     " match: c.querySelector('.match').textContent}))")


def _api_search(server, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(server.url + "/search", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def _wait_for_query(page, clip_id: str, direction: str = "") -> None:
    """Until the page shows the results of a search from ``clip_id`` (in ``direction`` when given)."""
    page.wait_for_function("([id, dir]) => { const h = document.querySelector('.query-head');"
                           " const r = document.querySelector('.results-head');"
                           " return h && h.textContent === 'Query ' + id && document.querySelector('.card.hit')"
                           " && r && r.textContent.includes('(' + dir)"
                           " && !document.querySelector('#busy').offsetParent; }", arg=[clip_id, direction])


def test_page_searches_by_clip_id_and_shows_errors(browser, synth_server, tiny_synth):
    page = browser.new_page()
    page.goto(synth_server.url + "/")
    page.wait_for_function("document.querySelector('#info').textContent.includes('visual')")
    assert page.text_content("#info").startswith("SYNTHETIC data")
    # the class picker lists exactly the index's classes; an index without media offers no upload
    picker = page.eval_on_selector_all("#class-list input[type=checkbox]", "bs => bs.map(b => b.value)")
    assert picker == list(tiny_synth.class_names)
    assert page.query_selector("#by-file") is None and page.query_selector("#file") is None
    query = str(tiny_synth.clip_ids[7])
    page.select_option("#direction", "audio-to-video")
    k = int(np.bincount(tiny_synth.labels).max()) + 20  # more than one class is among the hits
    page.fill("#k", str(k))
    page.fill("#clip-id", query)
    page.click("#search-id")
    _wait_for_query(page, query)
    cards = _cards(page)
    want_cls = tiny_synth.class_names[int(tiny_synth.labels[7])]
    assert len(cards) == k
    assert page.text_content(".query-class") == f"class {want_cls}"
    assert page.text_content(".query-stats").startswith("AP ")  # its own AP, the index knows its class
    assert all(c["match"] == ("✓ same class" if c["cls"] == want_cls else "✗ other class") for c in cards)
    assert {c["match"] for c in cards} == {"✓ same class", "✗ other class"}
    api = _api_search(synth_server, {"direction": "audio-to-video", "clip_ids": [query], "k": k})
    assert [c["id"] for c in cards] == [h["clip_id"] for h in api["queries"][0]["results"]]
    assert page.text_content(".card.hit .no-media") == "no media"  # vegas-synth has no media files
    assert f"q={query}" in page.url and "dir=a2v" in page.url and f"k={k}" in page.url

    # a class picked in the picker filters the results and goes into the URL
    page.click("#class-picker summary")
    page.check(f"#class-list input[value='{want_cls}']")
    page.click("#search-id")
    page.wait_for_function("(c) => location.search.includes('classes=' + c)", arg=want_cls)
    _wait_for_query(page, query)
    assert {c["cls"] for c in _cards(page)} == {want_cls}

    page.fill("#clip-id", "no-such-clip")
    page.click("#search-id")
    page.wait_for_selector("#error:not([hidden])")
    assert "no-such-clip" in page.text_content("#error") and page.query_selector(".card.hit") is None
    page.close()


def test_clicking_a_result_searches_from_it_and_the_url_reproduces_it(browser, synth_server, tiny_synth):
    page = browser.new_page()
    page.goto(synth_server.url + "/?q=synth_000003&dir=v2a&k=6")
    _wait_for_query(page, "synth_000003")  # the deep link runs the search
    assert page.input_value("#direction") == "video-to-audio" and page.input_value("#k") == "6"
    first = _cards(page)
    api = _api_search(synth_server, {"direction": "video-to-audio", "clip_ids": ["synth_000003"], "k": 6})
    assert [c["id"] for c in first] == [h["clip_id"] for h in api["queries"][0]["results"]]

    target = next(c["id"] for c in first if c["id"] != "synth_000003")
    page.click(f".card.hit[data-clip-id='{target}'] a.clip-id")
    _wait_for_query(page, target)
    assert f"q={target}" in page.url and "dir=v2a" in page.url
    second = _cards(page)
    api = _api_search(synth_server, {"direction": "video-to-audio", "clip_ids": [target], "k": 6})
    assert [c["id"] for c in second] == [h["clip_id"] for h in api["queries"][0]["results"]]

    # the other direction from a result's button
    page.click(".card.hit .search-other")
    page.wait_for_function("location.search.includes('dir=a2v')")
    _wait_for_query(page, page.evaluate("new URLSearchParams(location.search).get('q')"), "audio-to-video")
    other = page.url

    # back goes to the previous search; the URL opened anew reproduces the search
    page.go_back()
    _wait_for_query(page, target, "video-to-audio")
    assert [c["id"] for c in _cards(page)] == [c["id"] for c in second]
    fresh = browser.new_page()
    fresh.goto(page.url)
    _wait_for_query(fresh, target, "video-to-audio")
    assert [c["id"] for c in _cards(fresh)] == [c["id"] for c in second]
    assert fresh.input_value("#direction") == "video-to-audio"
    fresh.goto(other)
    fresh.wait_for_function("document.querySelector('#direction').value === 'audio-to-video'"
                            " && document.querySelector('.card.hit')")
    fresh.close()
    page.close()


def test_page_shows_media_previews_and_searches_by_upload(browser, media_server, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(media_server.url + "/?token=browser-token-1")
    page.wait_for_function("document.querySelector('#info').textContent.includes('media for 12 clips')")
    assert page.is_visible("#by-file")  # this index can embed uploads
    page.select_option("#direction", "audio-to-video")
    page.fill("#k", "3")
    page.fill("#clip-id", "c0")
    page.click("#search-id")
    _wait_for_query(page, "c0")
    assert "token=browser-token-1" in page.url and "q=c0" in page.url  # the deep link keeps the token
    # the query card: its spectrogram (an audio query) is a loaded image, with a player
    page.wait_for_function("document.querySelector('.query-card img.spectrogram').naturalWidth > 0")
    assert page.query_selector(".query-card audio[controls]") is not None
    assert page.text_content(".query-class") == "class low"
    # result cards: a video player with a poster frame (a PNG image that decodes), at a usable size
    src = page.get_attribute(".card.hit video", "src")
    clip = page.get_attribute(".card.hit", "data-clip-id")
    size = page.evaluate("async (u) => (await (await fetch(u)).arrayBuffer()).byteLength", src)
    assert size == (media_server.paths["media"] / f"{clip}.mp4").stat().st_size
    poster = page.evaluate("""async () => {
        const v = document.querySelector('.card.hit video');
        const img = new Image(); img.src = v.poster; await img.decode();
        return {w: img.naturalWidth, h: img.naturalHeight, controls: v.controls,
                box: v.getBoundingClientRect().toJSON(), rendering: getComputedStyle(v).imageRendering};
    }""")
    assert poster["w"] > 0 and poster["h"] > 0 and poster["controls"]
    assert poster["box"]["width"] >= 160 and poster["box"]["height"] >= 160, poster["box"]
    assert poster["rendering"] == "pixelated"
    page.evaluate("document.querySelector('.card.hit video').play()")  # preload=none: loads when played
    page.wait_for_function("document.querySelector('.card.hit video').readyState >= 1", timeout=30_000)
    assert page.evaluate("document.querySelector('.card.hit video').error") is None
    assert page.evaluate("document.querySelector('.card.hit video').duration") > 0.5

    # video -> audio: the gallery cards show spectrograms
    page.click(f".card.hit[data-clip-id='{clip}'] .search-other")
    _wait_for_query(page, clip, "video-to-audio")
    page.wait_for_function("[...document.querySelectorAll('.card.hit img.spectrogram')].every(i => i.naturalWidth > 0)")
    assert page.query_selector(".query-card video[controls]") is not None

    wav = write_wav(tmp_path / "spoken.wav", 1.5, 300.0)
    page.select_option("#direction", "audio-to-video")
    page.set_input_files("#file", str(wav))
    page.click("#search-file")
    page.wait_for_function("document.querySelector('.query-head') && "
                           "document.querySelector('.query-head').textContent.includes('spoken.wav')")
    assert len(_cards(page)) == 3

    page.select_option("#direction", "video-to-audio")
    page.click("#search-file")  # a wav has no video track: the page shows the server's one-line error
    page.wait_for_selector("#error:not([hidden])")
    msg = page.text_content("#error")
    assert "video" in msg and "spoken.wav" in msg and "avret-upload" not in msg and "--" not in msg
    page.close()
