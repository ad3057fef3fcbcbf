"""README.md's commands run as printed (issue 19), so the front page cannot drift from the CLI.

What is run, in README order, each as its own test:
* every fenced ``bash`` / ``python`` block under the "## Quick start" heading: each bash line (with
  ``\\`` continuations joined) through ``bash``, each python block through the venv's python;
* the first column of the table under "## Commands": each cell is one runnable example command.

They run in a temporary directory holding a SMALL demo made once by ``scripts/demo.sh`` itself
(its size knobs: 600 clips, 3 epochs), i.e. the ``runs/demo/`` layout ``make demo`` writes, so the
commands' default paths are the ones a user meets. ``avret serve`` is started on a free loopback
port, asked ``GET /health`` and stopped. ``make demo`` / ``make test`` are not run. Commands on
av-digits need the real FSDD recordings and are skipped without them. Later commands may use the
outputs of earlier ones (as a reader pasting them would), so run this module whole.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from avret.data.av_digits import default_fsdd_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICK_START = "Quick start"
COMMANDS = "Commands"
DEMO = {"AVRET_DEMO_CLIPS": "600", "AVRET_DEMO_EPOCHS": "3", "AVRET_DEMO_TEACHER_EPOCHS": "2"}
NEEDS_FSDD = ("make-av-digits", "runs/av-digits")
NOT_RUN = ("make demo", "make test")

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------------- README parsing


def section(markdown: str, title: str) -> str:
    """The text of the ``## title...`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\b.*?$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of ``text``."""
    return [(lang, code) for lang, code in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def shell_lines(code: str) -> list[str]:
    """Commands of a bash block: continuation lines joined; blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def table_commands(text: str) -> list[str]:
    """The backticked command of the first cell of every body row of the section's first table."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    commands = []
    for row in rows[2:]:  # header and separator
        cell = re.split(r"(?<!\\)\|", row)[1].strip()
        match = re.fullmatch(r"`([^`]+)`", cell)
        assert match, f"README.md Commands table: the first cell must be one `command`, got {cell!r}"
        commands.append(match.group(1).replace("\\|", "|"))
    return commands


def readme_commands() -> list[tuple[str, str, str]]:
    """``(test id, kind, code)`` for everything the README says to run, in README order."""
    markdown = README.read_text(encoding="utf-8")
    items: list[tuple[str, str, str]] = []
    for lang, code in fenced_blocks(section(markdown, QUICK_START)):
        if lang == "bash":
            items += [("bash", line) for line in shell_lines(code)]
        elif lang == "python":
            items.append(("python", code))
    items += [("bash", command) for command in table_commands(section(markdown, COMMANDS))]
    def name(code: str) -> str:
        return " ".join(code.splitlines()[0].split("#")[0].split())[:70]

    return [(f"{i:02d} {name(code)}", kind, code) for i, (kind, code) in enumerate(items)]


ITEMS = readme_commands()


def test_readme_has_commands_to_run():
    """The parser found the quick start's blocks and the table (a README change cannot empty this test)."""
    kinds = [kind for _, kind, _ in ITEMS]
    assert kinds.count("bash") >= 8 and "python" in kinds
    assert any(code.startswith("avret serve") for _, _, code in ITEMS)


def test_readme_links_point_to_files():
    """Every relative link of README.md names a file of the repository."""
    markdown = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", markdown):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


# ----------------------------------------------------------------------------------------- the demo


def _avret_bin() -> Path:
    here = Path(sys.executable).with_name("avret")
    return here if here.exists() else Path("avret")


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    fsdd = default_fsdd_dir()
    if fsdd.is_dir():
        env["AVRET_FSDD"] = str(fsdd.resolve())
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding ``runs/demo/`` written by ``scripts/demo.sh`` with its small-size knobs."""
    work = tmp_path_factory.mktemp("readme")
    env = {**_env(work), **DEMO, "AVRET_DEMO_OUT": str(work / "runs" / "demo"), "AVRET": str(_avret_bin())}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, cwd=work,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"scripts/demo.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for part in ("videoadviser", "towers", "cca", "index", "eval.json"):
        assert (work / "runs" / "demo" / part).exists(), f"scripts/demo.sh wrote no runs/demo/{part}"
    return work


# -------------------------------------------------------------------------------------- the commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(argv: list[str], workdir: Path) -> None:
    """Start ``avret serve ...`` on a free loopback port, GET /health, stop it."""
    argv = list(argv)
    assert "--host" not in argv, "README serve examples stay on the loopback address"
    port = _free_port()
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    log = workdir / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=workdir, env=_env(workdir), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300  # a bound against hanging, not a speed requirement
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{shlex.join(argv)} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    assert answer.status == 200
                    json.loads(answer.read())
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{shlex.join(argv)} never answered /health:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("kind,code", [(kind, code) for _, kind, code in ITEMS], ids=[i for i, _, _ in ITEMS])
def test_readme_command_runs(kind: str, code: str, workdir: Path):
    if any(code.startswith(skip) for skip in NOT_RUN):
        pytest.skip("make demo / make test are the entry points, not run here")
    if any(marker in code for marker in NEEDS_FSDD) and not default_fsdd_dir().is_dir():
        pytest.skip("needs the FSDD recordings (../shared/data/fsdd or $AVRET_FSDD)")
    if kind == "python":
        script = workdir / "readme_block.py"
        script.write_text(code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        argv = shlex.split(code, comments=True)
        if argv[:2] == ["avret", "serve"]:
            _serve(argv, workdir)
            return
        argv = ["bash", "-c", code]
    proc = subprocess.run(argv, cwd=workdir, env=_env(workdir), capture_output=True, text=True)
    assert proc.returncode == 0, (f"README command failed (exit {proc.returncode}): {code}\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
