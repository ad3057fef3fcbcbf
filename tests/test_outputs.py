"""Nothing of the user's is replaced: --out may only replace an earlier output of the same kind.

The data-loss cases of the reliability issue, through the CLI: a directory of the user's files, a
regular file, the model run an index is built from. Each is refused with one line and exit 2 before
any work, leaving everything as it was; ``--overwrite`` is the explicit way to replace.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from avret_cli.main import app

SYNTH = ["--synth-clips", "200", "--synth-seed", "1"]


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "run"
    res = CliRunner().invoke(app, ["train", "--out", str(out), *SYNTH, "--epochs", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out


def _refused(res, *needles):
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in errors[0]


@pytest.mark.parametrize("command", [
    ["index", "build", "--model", "{model}"],
    ["train", *SYNTH, "--epochs", "1"],
    ["distill", "--method", "none", *SYNTH, "--epochs", "1"],
    ["sentiment", "train", "--data", "{model}/no-such-label.csv"],  # refused before any data is read
])
def test_a_directory_of_user_files_is_never_replaced(tmp_path, model_run, command):
    victim = tmp_path / "v"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    args = [a.replace("{model}", str(model_run)) for a in command]
    _refused(CliRunner().invoke(app, [*args, "--out", str(victim)]), str(victim), "--overwrite")
    assert (victim / "thesis.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == [
        "thesis.txt"]
    file_out = tmp_path / "notes.txt"
    file_out.write_text("mine")
    _refused(CliRunner().invoke(app, [*args, "--out", str(file_out)]), "not a directory")
    assert file_out.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "v"]  # nothing new beside them


def test_an_index_is_never_written_over_its_own_model(model_run):
    before = sorted(p.relative_to(model_run) for p in model_run.rglob("*"))
    for out in (model_run, model_run / "model"):
        res = CliRunner().invoke(app, ["index", "build", "--model", str(model_run), "--out", str(out),
                                       "--overwrite"])
        _refused(res, "which this command reads")
    assert sorted(p.relative_to(model_run) for p in model_run.rglob("*")) == before


def test_earlier_outputs_of_the_same_kind_are_replaced_and_overwrite_is_explicit(tmp_path, model_run):
    idx = tmp_path / "idx"
    for _ in range(2):  # the second build replaces the first index
        res = CliRunner().invoke(app, ["index", "build", "--model", str(model_run), "--out", str(idx)])
        assert res.exit_code == 0, res.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "old.txt").write_text("x")
    res = CliRunner().invoke(app, ["index", "build", "--model", str(model_run), "--out", str(other), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (other / "visual" / "manifest.json").is_file() and not (other / "old.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["train", "--out", str(empty), *SYNTH, "--epochs", "1", "--model-type", "cca"])
    assert res.exit_code == 0, res.output


def test_a_failed_distill_leaves_no_empty_out(tmp_path):
    out = tmp_path / "d"
    res = CliRunner().invoke(app, ["distill", "--method", "none", *SYNTH, "--epochs", "1", "--out", str(out),
                                   "--device", "tpu"])
    assert res.exit_code == 2
    assert not out.exists()


def test_outputs_follow_the_umask(tmp_path, model_run):
    """A shared index or run directory is readable by the group/others the umask allows (not 0700/0600)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        res = CliRunner().invoke(app, ["index", "build", "--model", str(model_run), "--out", str(tmp_path / "i")])
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "i").rglob("*")}
    modes[tmp_path / "i"] = stat.S_IMODE((tmp_path / "i").stat().st_mode)
    assert modes and all(m == (0o755 if (tmp_path / p).is_dir() else 0o644) for p, m in modes.items()), modes


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_writer_killed_between_its_renames_loses_nothing(tmp_path, model_run):
    """Crash states of the two-rename replace: the old complete output comes back, leftovers go."""
    import shutil

    from avret.io import load_model

    idx = tmp_path / "idx"
    assert CliRunner().invoke(app, ["index", "build", "--model", str(model_run), "--out", str(idx)]).exit_code == 0
    from avret.utils.atomic import TEMP_MARKER

    pid = _dead_pid()
    # killed after "old aside", before "new in": no idx, the old one inside .idx.old-<pid>-*/x
    aside = tmp_path / f".idx.old-{pid}-abc"
    aside.mkdir()
    (aside / TEMP_MARKER).write_text("avret temporary")  # every temporary of avret's carries its marker
    idx.rename(aside / "x")
    (tmp_path / f".idx.tmp-{pid}-def").mkdir()  # and the dead writer's half-written new output
    (tmp_path / f".idx.tmp-{pid}-def" / TEMP_MARKER).write_text("avret temporary")
    (tmp_path / f".idx.tmp-{pid}-def" / "junk").write_text("half")
    live = tmp_path / f".idx.tmp-{__import__('os').getpid()}-live"  # a live writer's temp is left alone
    live.mkdir()
    (live / TEMP_MARKER).write_text("avret temporary")
    # look-alikes of a user's without the marker stay, whatever their names say
    (tmp_path / ".idx.old-2025-backup").mkdir()
    (tmp_path / ".idx.old-2025-backup" / "todo.txt").write_text("mine")
    (tmp_path / f".idx.tmp-{pid}-draft.txt").write_text("mine")
    res = CliRunner().invoke(app, ["search", "audio-to-video", "--index", str(idx), "--query", "synth_000001",
                                   "-k", "3"])
    assert res.exit_code == 0, res.output  # the reader repaired it
    assert (idx / "visual" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", live.name, ".idx.old-2025-backup",
                                                                 f".idx.tmp-{pid}-draft.txt"])
    assert (tmp_path / ".idx.old-2025-backup" / "todo.txt").read_text() == "mine"
    shutil.rmtree(live)
    # the same for a model run: the reader restores it
    copy = tmp_path / "run"
    shutil.copytree(model_run, copy)
    aside = tmp_path / f".run.old-{pid}-x1"
    aside.mkdir()
    (aside / TEMP_MARKER).write_text("avret temporary")
    copy.rename(aside / "x")
    assert load_model(copy).embed_dim > 0 and not aside.exists()


def test_a_directory_left_by_a_killed_writer_counts_as_empty(tmp_path):
    """Only empty directories and dead writers' temporaries: accepted (a distill killed right after it created
    --out); a live writer's temporary or any other file: refused."""
    import os
    import shutil

    from avret.errors import AvretError
    from avret.utils.atomic import RUN_KIND, TEMP_MARKER, check_output


    out = tmp_path / "run"
    (out / "train_state").mkdir(parents=True)
    dead = out / "train_state" / f".key.json.tmp-{_dead_pid()}-x1"
    dead.mkdir()
    (dead / TEMP_MARKER).write_text("avret temporary")
    (dead / "x").write_text("half")
    check_output(out, RUN_KIND)
    live = out / "train_state" / f".key.json.tmp-{os.getpid()}-x2"
    live.mkdir()
    (live / TEMP_MARKER).write_text("avret temporary")
    with pytest.raises(AvretError, match="not an earlier retrieval run directory"):
        check_output(out, RUN_KIND)
    shutil.rmtree(live)
    lookalike = out / "train_state" / f".key.json.tmp-{_dead_pid()}-draft.txt"  # a user's, no marker
    lookalike.write_text("mine")
    with pytest.raises(AvretError, match="not an earlier retrieval run directory"):
        check_output(out, RUN_KIND)
    lookalike.unlink()
    (out / "train_state" / "notes.txt").write_text("mine")
    with pytest.raises(AvretError, match="not an earlier retrieval run directory"):
        check_output(out, RUN_KIND)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the probe left nothing
