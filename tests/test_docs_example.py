"""The documentation's Python example runs, and its API page and navigation cover what they promise.

* docs/python.md's notebook block runs as printed, except the substitutions below that shrink it
  (each must occur exactly once, so an edit of the example cannot silently skip one);
* docs/api.md documents every name of ``avret.__all__`` (the front door);
* mkdocs.yml's nav lists every page of docs/ and nothing else (a page outside the nav is only an
  INFO message for ``mkdocs build --strict``, which ``make docs`` runs in CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import avret

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# text of the example -> what the test runs instead (a small data set, a few epochs)
SMALL = {
    '"vegas-synth"': '"vegas-synth:n_clips=600"',
    "epochs=80": "epochs=3",
}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)


@pytest.mark.slow
def test_python_page_notebook_example_runs(tmp_path):
    """In a fresh interpreter, as a notebook would run it."""
    code = python_blocks(DOCS / "python.md")[0]
    assert len(code.strip().splitlines()) <= 15, "the notebook example is promised in 15 lines"
    for text, small in SMALL.items():
        assert code.count(text) == 1, f"docs/python.md's example no longer contains {text!r} once"
        code = code.replace(text, small)
    script = tmp_path / "notebook.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"docs/python.md's example failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    printed = proc.stdout
    assert "600 clips" in printed and "mean mAP" in printed and "(SYNTHETIC)" in printed
    assert (tmp_path / "runs" / "nb" / "videoadviser" / "run.json").is_file()
    assert (tmp_path / "runs" / "nb" / "index").is_dir()
    ranks = [line.split()[0] for line in printed.splitlines() if line[:1].isdigit()]
    assert ranks == ["1", "2", "3", "4", "5"]


def test_api_page_documents_every_front_door_name():
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: avret\.(\w+)\s*$", page, re.M))
    documented |= set(re.findall(r"^::: avret\.api\.\w+\n\s+options:\n\s+heading: avret\.(\w+)", page, re.M))
    names = set(avret.__all__) - {"__version__"}
    assert names - documented == set(), f"docs/api.md lacks {sorted(names - documented)}"
    assert documented - names == set(), f"docs/api.md documents names not in avret.__all__: {documented - names}"


def test_mkdocs_nav_lists_every_page():
    nav = set(re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - nav == set(), f"pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert nav - pages == set(), f"mkdocs.yml's nav names missing pages: {sorted(nav - pages)}"
