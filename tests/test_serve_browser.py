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


def _rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "tr.hit", "rows => rows.map(r => ({id: r.dataset.clipId, cls: r.querySelector('.class').textContent,"
                  " match: r.querySelector('.match').textContent}))")


def test_page_searches_by_clip_id_and_shows_errors(browser, synth_server, tiny_synth):
    page = browser.new_page()
    page.goto(synth_server.url + "/")
    page.wait_for_function("document.querySelector('#info').textContent.includes('visual')")
    assert page.text_content("#info").startswith("SYNTHETIC data")
    query = str(tiny_synth.clip_ids[7])
    page.select_option("#direction", "audio-to-video")
    k = int(np.bincount(tiny_synth.labels).max()) + 20  # more than one class is among the hits
    page.fill("#k", str(k))
    page.fill("#clip-id", query)
    page.click("#search-id")
    page.wait_for_selector("tr.hit")
    rows = _rows(page)
    want_cls = tiny_synth.class_names[int(tiny_synth.labels[7])]
    assert len(rows) == k
    assert f"class {want_cls}" in page.text_content(".query-head")
    assert all(r["match"] == ("✓ yes" if r["cls"] == want_cls else "✗ no") for r in rows)
    assert {r["match"] for r in rows} == {"✓ yes", "✗ no"}
    with urllib.request.urlopen(urllib.request.Request(
            synth_server.url + "/search", data=json.dumps({"direction": "audio-to-video", "clip_ids": [query],
                                                         "k": k}).encode(),
            headers={"Content-Type": "application/json"})) as r:
        api = json.loads(r.read())
    assert [r["id"] for r in rows] == [h["clip_id"] for h in api["queries"][0]["results"]]
    assert page.text_content("tr.hit .media") == "no media"  # vegas-synth has no media files

    page.fill("#clip-id", "no-such-clip")
    page.click("#search-id")
    page.wait_for_selector("#error:not([hidden])")
    assert "no-such-clip" in page.text_content("#error") and page.query_selector("tr.hit") is None
    page.close()


def test_page_plays_media_and_searches_by_upload(browser, media_server, tmp_path):
    page = browser.new_page()
    page.goto(media_server.url + "/?token=browser-token-1")
    page.wait_for_function("document.querySelector('#info').textContent.includes('media for 12 clips')")
    page.select_option("#direction", "audio-to-video")
    page.fill("#k", "3")
    page.fill("#clip-id", "c0")
    page.click("#search-id")
    page.wait_for_selector("tr.hit video")
    src = page.get_attribute("tr.hit video", "src")
    clip = page.get_attribute("tr.hit", "data-clip-id")
    # the element's URL returns the clip's own file, and the element loads it (metadata = playable)
    size = page.evaluate("async (u) => (await (await fetch(u)).arrayBuffer()).byteLength", src)
    assert size == (media_server.paths["media"] / f"{clip}.mp4").stat().st_size
    page.wait_for_function("document.querySelector('tr.hit video').readyState >= 1", timeout=30_000)
    assert page.evaluate("document.querySelector('tr.hit video').error") is None
    assert page.evaluate("document.querySelector('tr.hit video').duration") > 0.5

    wav = write_wav(tmp_path / "spoken.wav", 1.5, 300.0)
    page.set_input_files("#file", str(wav))
    page.click("#search-file")
    page.wait_for_function("document.querySelector('.query-head') && "
                           "document.querySelector('.query-head').textContent.includes('spoken.wav')")
    assert len(_rows(page)) == 3

    page.select_option("#direction", "video-to-audio")
    page.click("#search-file")  # a wav has no video track: the page shows the server's one-line error
    page.wait_for_selector("#error:not([hidden])")
    assert "video" in page.text_content("#error")
    page.close()
