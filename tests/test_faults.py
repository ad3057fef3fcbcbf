"""Fault injection: every writer killed (SIGKILL) at its filesystem steps, on a read-only and a full disk.

Each command runs in a fork of one server process (``tests/fault_runner.py``) that wraps the
filesystem primitives and kills itself before its N-th call, so no production code has hooks. A
first, unfaulted run of the command lists its steps; the kill points are every rename/replace
under the output's parent, the steps right after them, the first and the last step, and an evenly
spread sample of the rest. After each kill: the output's name holds nothing (or, for a resumable
command, an unfinished run that no reader takes for a complete one), the old complete output, or the
new complete one, as the public readers see it (which repair a writer killed between its two
renames); a rerun succeeds; and no ``.NAME.tmp-*`` / ``.NAME.old-*`` is left anywhere under the
output's parent.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avret.data.folder import load_folder
from avret.errors import AvretError
from avret.index.store import AVIndex, index_path_for, read_index_manifest
from avret.io import load_model, read_run, verify_run
from tests.fault_runner import FaultRunner

SYNTH = ["--synth-clips", "100", "--synth-seed", "1", "--device", "cpu"]
MAX_POINTS = 5


@pytest.fixture(scope="module")
def runner():
    r = FaultRunner()
    yield r
    r.close()


# ------------------------------------------------------------------ helpers
def tree_digest(path: Path) -> str | None:
    """sha256 over the relative names and bytes of every file under ``path`` (None: nothing there)."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


TEMPORARY = re.compile(r"^\..*[.-](tmp|old|commit)-\d+")  # .NAME.tmp-<pid>-*, .NAME.old-<pid>-*, ...


def leftovers(root: Path) -> list[str]:
    """Temporaries (of any writer, dead or alive) anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if TEMPORARY.match(p.name))


def kill_points(steps: list[list[str]], inside: Path) -> list[tuple[int, str]]:
    """The steps (number, kind) under ``inside`` to kill at, at most ``MAX_POINTS``, by priority:

    1. the first and the last step, every rename of a direct child of ``inside`` (the output's name,
       the old output moved aside) and the step right after each (the state just after the rename);
    2. the other renames that a reader can see (not inside a temporary) and the steps after them;
    3. one step inside a temporary (all such states look alike from outside);
    4. the other visible steps, evenly spread.
    """
    mine = [(int(n), kind, Path(path)) for n, kind, path in steps if path.startswith(str(inside) + "/")]
    assert mine, f"no filesystem step under {inside}: {steps}"

    def hidden(path: Path) -> bool:
        return any(".tmp-" in part for part in path.relative_to(inside).parts[:-1])

    tiers: list[list[int]] = [[mine[0][0], mine[-1][0]], [], [], []]
    for i, (n, kind, path) in enumerate(mine):
        after = [mine[i + 1][0]] if i + 1 < len(mine) else []
        if kind in ("replace", "rename") and path.parent == inside or ".old-" in str(path.relative_to(inside)):
            if kind in ("replace", "rename"):
                tiers[0] += [n, *after]
        elif kind in ("replace", "rename") and not hidden(path):
            tiers[1] += [n, *after]
    inner = [n for n, _, path in mine if hidden(path)]
    tiers[2] = inner[len(inner) // 2:][:1]
    tiers[3] = [n for n, _, path in mine if not hidden(path)]
    chosen: list[int] = []
    for tier in tiers:
        tier = [n for n in dict.fromkeys(tier) if n not in chosen]
        room = MAX_POINTS - len(chosen)
        if len(tier) > room > 0:
            tier = [tier[round(i * (len(tier) - 1) / max(1, room - 1))] for i in range(room)]
        chosen += tier[:max(0, room)]
    kinds = {n: kind for n, kind, _ in mine}
    return [(n, kinds[n]) for n in sorted(set(chosen))]


def crash_matrix(runner: FaultRunner, work: Path, pristine: Path, argv: list[Any],
                 check: Callable[[str], None], ignore: re.Pattern[str] | None = None) -> int:
    """Kill ``argv`` at each chosen step, with ``work`` restored from ``pristine`` each time.

    ``check(phase)`` asserts the output's state, ``phase`` being ``"killed"`` or ``"done"``. Returns the
    number of kill points.
    """

    def restore() -> None:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work, symlinks=True)

    restore()
    trace = runner.run(argv)
    assert trace["code"] == 0, trace["output"]
    points = kill_points(trace["steps"], work)
    for n, kind in points:
        restore()
        res = runner.run(argv, fault_at=n)
        assert res["killed"], f"not killed at step {n} ({kind}): {res['code']} {res['output'][-2000:]}"
        assert res["steps"][-1][1] == kind, (n, kind, res["steps"][-1])  # the same step as in the trace
        check("killed")
        res = runner.run(argv)
        assert res["code"] == 0, f"rerun after a kill at step {n} ({kind}): {res['output'][-2000:]}"
        check("done")
        left = [p for p in leftovers(work) if ignore is None or not ignore.match(Path(p).name)]
        assert left == [], f"after a kill at step {n} ({kind}) and a rerun"
    return len(points)


# ------------------------------------------------------------------ the writers
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, runner) -> dict[str, Path]:
    """A model run (for index build), the sentiment encoder and data, the feature models and media."""
    root = tmp_path_factory.mktemp("inputs")
    res = runner.run(["train", "--epochs", "1", *SYNTH, "--out", root / "model"])
    assert res["code"] == 0, res["output"]
    runner.call("tests.fault_runner:make_sentiment_inputs", root)
    runner.call("tests.fault_runner:make_feature_inputs", root)
    return {"root": root, "model": root / "model"}


def run_state(out: Path) -> str | None:
    """'old' (seed 0) / 'new' (seed 1) complete run, 'unfinished' (no run.json) or None (nothing)."""
    try:
        load_model(out)  # the reader repairs a writer killed between its two renames
    except AvretError:
        pass
    if not out.exists():
        return None
    if not (out / "run.json").is_file():
        return "unfinished"
    assert verify_run(out) == [], f"{out}: files differ from run.json: {verify_run(out)}"
    load_model(out)
    return {0: "old", 1: "new"}[read_run(out)["seed"]]


def index_state(out: Path) -> str | None:
    """'old' (the train split) / 'new' (every clip) complete index, or None (nothing)."""
    try:  # the searcher's way in: index_path_for repairs a writer killed between its two renames
        visual = AVIndex.load(index_path_for(out, "visual"), device="cpu")
    except AvretError:
        assert not out.exists(), f"{out} holds an incomplete index: {sorted(p.name for p in out.iterdir())}"
        return None
    audio = AVIndex.load(index_path_for(out, "audio"), device="cpu")
    assert visual.manifest.count == audio.manifest.count == read_index_manifest(out / "audio").count
    return "new" if visual.manifest.count == 100 else "old"


def folder_state(out: Path) -> str | None:
    """'old' (two clips) / 'new' (three clips) complete feature folder, or None (not loadable yet)."""
    try:
        ds = load_folder(out)
    except AvretError:
        return None
    assert len(ds.audio) == len(ds.visual) == len(ds.clip_ids) == len(ds.teacher_frames)
    return {2: "old", 3: "new"}[len(ds.clip_ids)]


def _argv(name: str, inputs: dict[str, Path], out: Path, which: str) -> list[Any]:
    root, seed = inputs["root"], "0" if which == "old" else "1"
    if name == "train":
        return ["train", "--epochs", "1", *SYNTH, "--seed", seed, "--out", out]
    if name == "distill":
        return ["distill", "--method", "none", "--epochs", "2", *SYNTH, "--seed", seed, "--out", out]
    if name == "index":
        split = ["--split", "train"] if which == "old" else []
        return ["index", "build", "--model", inputs["model"], "--device", "cpu", *split, "--out", out]
    if name == "sentiment":
        return ["sentiment", "train", "--data", root / "label.csv", "--encoder", root / "encoder", "--epochs", "1",
                "--batch-size", "8", "--device", "cpu", "--seed", seed, "--out", out]
    media = ["--media", root / "media"] + (["--media", root / "more"] if which == "new" else [])
    return ["features", "extract", *media, "--vggish", root / "vggish.pth", "--clip-model",
            root / "avret-fault-clip.json", "--clip-weights", root / "clip.pt", "--fps", "2", "--max-frames", "2",
            "--device", "cpu", "--no-progress", "--out", out]


STATE = {"train": run_state, "distill": run_state, "index": index_state, "sentiment": run_state,
         "features": folder_state}
RESUMABLE = {"distill", "features"}  # they write into --out as they go; a reader must not take that for done
WRITERS = list(STATE)


def situation(runner: FaultRunner, inputs: dict[str, Path], tmp: Path, name: str, previous: bool
              ) -> tuple[Path, Path, Path]:
    """``(base, work, out)``: ``base`` is the pristine parent of ``out`` (empty, or with the old output)."""
    base, work = tmp / "base", tmp / "w"
    base.mkdir()
    out = work / "out"
    if previous:
        res = runner.run(_argv(name, inputs, base / "out", "old"))
        assert res["code"] == 0, res["output"]
        assert STATE[name](base / "out") == "old"
    return base, work, out


def allowed_states(name: str, previous: bool) -> set[str | None]:
    states: set[str | None] = {"new", "old" if previous else None}
    if name in RESUMABLE and not previous:
        states |= {None, "unfinished"}
    return states


@pytest.mark.parametrize("previous", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["new", "replace"])
@pytest.mark.parametrize("name", WRITERS)
def test_a_killed_writer_leaves_the_old_or_the_new_output(request, tmp_path, runner, inputs, name, previous):
    """SIGKILL at each chosen step; then the state, a rerun, and no temporaries anywhere.

    (A killed shard write of ``features extract`` is left out of the temporaries check here: see
    :func:`test_a_shard_killed_while_written_is_not_left_behind`.)
    """
    base, work, out = situation(runner, inputs, tmp_path, name, previous)
    allowed, seen = allowed_states(name, previous), set()

    def check(phase: str) -> None:
        state = STATE[name](out)
        seen.add(state)
        if phase == "done":
            assert state == "new"
        else:
            assert state in allowed, f"{name}: after a kill {out} is {state!r}, expected one of {allowed}"

    n = crash_matrix(runner, work, base, _argv(name, inputs, out, "new"), check,
                     ignore=SHARD_TMP if name == "features" else None)
    assert n >= 3 and "new" in seen


SHARD_TMP = re.compile(r"^\.shard-.*\.npz\.tmp-")


def test_a_shard_killed_while_written_is_not_left_behind(tmp_path, runner, inputs):
    out = tmp_path / "out"
    argv = _argv("features", inputs, out, "new")
    res = runner.run(argv, fault_at=1, match=r"^replace .*/shard-[^/]*\.npz$")
    assert res["killed"], res["output"][-2000:]
    assert runner.run(argv)["code"] == 0 and folder_state(out) == "new"
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ read-only and full disks
def one_error_line(res: dict[str, Any], *needles: str) -> str:
    assert res["code"] == 2, res["output"][-3000:]
    assert "Traceback" not in res["output"], res["output"][-3000:]
    errors = [ln for ln in res["output"].splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, res["output"][-3000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("name", WRITERS)
def test_a_read_only_parent_is_refused_before_any_work(tmp_path, runner, inputs, name):
    """Every write under the output's parent fails with EROFS (as on a read-only mount; root ignores chmod)."""
    work = tmp_path / "ro"
    work.mkdir()
    res = runner.run(_argv(name, inputs, work / "out", "new"), ro_root=work)
    line = one_error_line(res, "cannot write in", "read-only", str(work))
    assert [ln for ln in res["output"].splitlines() if ln.strip()] == [line], "work was done before the check"
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("name", WRITERS)
def test_a_full_disk_gives_one_line_and_leaves_nothing(tmp_path, runner, inputs, name):
    """ENOSPC at the first fsync of a temporary: one line, exit 2, no temporary left, old output intact."""
    base, work, out = situation(runner, inputs, tmp_path, name, previous=name == "train")
    shutil.copytree(base, work)
    before = tree_digest(out)
    res = runner.run(_argv(name, inputs, out, "new"), fault="ENOSPC", fault_at=1, match=r"^fsync .*[.-]tmp-")
    one_error_line(res, "no space left")
    assert leftovers(work) == []
    assert tree_digest(out) == before or STATE[name](out) in allowed_states(name, False) - {"new"}


# ------------------------------------------------------------------ real mounts (root with CAP_SYS_ADMIN only)
@pytest.fixture
def tmpfs(tmp_path):
    """Mount a 1 MiB tmpfs (optionally read-only) at a fresh directory; skip where mounting is not allowed."""
    import subprocess

    mounted = []

    def mount(name: str, *, ro: bool = False, free: int | None = None) -> Path:
        where = tmp_path / name
        where.mkdir()
        opts = "size=1m" + (",ro" if ro else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        mounted.append(where)
        if free is not None:  # fill it up to ``free`` bytes
            with open(where / "filler", "wb") as fh:
                try:
                    fh.write(b"\0" * ((1 << 20) - free))
                except OSError:
                    pass
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.parametrize("name", WRITERS)
def test_a_real_full_tmpfs(tmp_path, runner, inputs, tmpfs, name):
    disk = tmpfs("full", free=16 << 10)
    res = runner.run(_argv(name, inputs, disk / "out", "new"))
    one_error_line(res, "no space left")
    assert leftovers(disk) == [] and STATE[name](disk / "out") in allowed_states(name, False) - {"new"}


@pytest.mark.parametrize("name", WRITERS)
def test_a_real_read_only_mount(tmp_path, runner, inputs, tmpfs, name):
    disk = tmpfs("ro", ro=True)
    res = runner.run(_argv(name, inputs, disk / "out", "new"))
    one_error_line(res, "cannot write in", "read-only")
    assert list(disk.iterdir()) == []


def test_kill_points_cover_renames_and_ends():
    kinds = ["mkdir", "create", "fsync", "replace", "fsync"] + ["fsync"] * 20
    steps = [[str(i), k, f"/w/{'.o.tmp-1-a/' if 8 < i < 20 else ''}x{i}"] for i, k in enumerate(kinds, start=1)]
    pts = [n for n, _ in kill_points(steps + [["99", "replace", "/elsewhere"]], Path("/w"))]
    assert {1, 4, 5, 25} <= set(pts) and 99 not in pts and len(pts) == MAX_POINTS
    assert np.all(np.diff(pts) > 0) and any(8 < p < 20 for p in pts)  # one step inside the temporary
