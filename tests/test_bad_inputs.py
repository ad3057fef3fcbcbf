"""Malformed inputs of every kind the CLI reads: one line on stderr, exit 2, no traceback, nothing written.

Each case builds a bad input in a fresh directory, snapshots every path under it, runs the command
with its output (``--out``/``--json-out``) inside that directory, and checks: exit code 2, exactly one
line on stderr (``error: ...``), no "Traceback", and the same paths afterwards (no new file or
directory, no temporary left behind). Hypothesis draws the malformations (derandomized, few
examples, so the file is deterministic and fast); fixed cases cover what a generator would rarely hit.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from avret_cli.main import app

SETTINGS = settings(max_examples=6, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SYNTH = ["--synth-clips", "200"]
N_SYNTH = 200
_counter = itertools.count()


# --------------------------------------------------------------------------- fixtures and the one check
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny towers run + its index, one tiny sentiment run (tiny random RoBERTa)."""
    from avret.sentiment.tiny import make_tiny_roberta
    from tests.test_sentiment_student import FILL, NEG, POS, tiny_examples

    root = tmp_path_factory.mktemp("bad_inputs")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--out", str(root / "run"), *SYNTH, "--epochs", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["index", "build", "--model", str(root / "run"), "--out", str(root / "idx")])
    assert res.exit_code == 0, res.output
    enc = make_tiny_roberta(root / "encoder", POS + NEG + FILL)
    with open(root / "label.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "label", "mode"])
        for e in tiny_examples(30):
            w.writerow([e.id, e.text, e.label, e.split])
    res = runner.invoke(app, ["sentiment", "train", "--data", str(root / "label.csv"), "--encoder", str(enc),
                              "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(root / "srun")])
    assert res.exit_code == 0, res.output
    return {"root": root, "run": root / "run", "idx": root / "idx", "enc": enc, "srun": root / "srun",
            "label": root / "label.csv"}


def _case(world) -> Path:
    """A fresh, empty directory for one case (Hypothesis examples share the test's fixtures)."""
    d = world["root"] / "cases" / f"c{next(_counter)}"
    d.mkdir(parents=True)
    return d


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(args: list, where: Path, *needles: str) -> str:
    """Run ``avret args``; assert the one-line refusal and that nothing appeared under ``where``."""
    before = _tree(where)
    res = CliRunner().invoke(app, [str(a) for a in args])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output, res.output
    assert _tree(where) == before, sorted(_tree(where) ^ before)
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- .npy / .npz / .h5 frame files
BAD_ARRAYS = st.one_of(
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    st.binary(max_size=60).map(lambda b: ("bytes", b"\x93NUMPY\x01\x00" + b)),  # a .npy magic, then garbage
    st.sampled_from(["objects", "strings", "complex", "bytes-dtype", "records", "nan", "inf", "2-d", "4-d",
                     "0-d", "rows", "empty-T"]).map(lambda k: ("kind", k)),
)


def _bad_array(kind: str) -> np.ndarray:
    good = (N_SYNTH, 3, 8)
    if kind == "objects":
        return np.array([{"a": 1}] * N_SYNTH, dtype=object)
    if kind == "strings":
        return np.full(good, "x")
    if kind == "complex":
        return np.ones(good, np.complex64)
    if kind == "bytes-dtype":
        return np.full(good, b"x")
    if kind == "records":
        return np.zeros(good, dtype=[("a", "f4"), ("b", "f4")])
    if kind in ("nan", "inf"):
        arr = np.ones(good, np.float32)
        arr[N_SYNTH // 2, 1, 2] = np.nan if kind == "nan" else np.inf
        return arr
    return {"2-d": np.ones((N_SYNTH, 8)), "4-d": np.ones((N_SYNTH, 2, 3, 4)), "0-d": np.array(1.0),
            "rows": np.ones((N_SYNTH - 1, 3, 8)), "empty-T": np.ones((N_SYNTH, 0, 8))}[kind]


def _write_bad(path: Path, drawn) -> None:
    what, value = drawn
    if what == "bytes":
        path.write_bytes(value)
        return
    arr = _bad_array(value)
    if path.suffix == ".npy":
        np.save(path, arr, allow_pickle=True)
    elif path.suffix == ".npz":
        np.savez(path, teacher_frames=arr)
    else:
        with h5py.File(path, "w") as h5:
            if arr.dtype.kind == "O":
                h5.create_group("teacher_frames")  # h5 cannot hold pickles: a group where an array belongs
            else:
                h5["teacher_frames"] = arr


@SETTINGS
@given(drawn=BAD_ARRAYS, suffix=st.sampled_from([".npy", ".npz", ".h5"]))
def test_bad_frame_files(world, drawn, suffix):
    case = _case(world)
    frames = case / f"frames{suffix}"
    _write_bad(frames, drawn)
    refused(["distill", "--method", "none", *SYNTH, "--epochs", "1", "--frames", frames, "--out", case / "out"],
            case, str(frames))


@pytest.mark.parametrize("extra", [
    {"teacher_mask": np.full((N_SYNTH, 3), "yes")},  # strings are not a mask
    {"teacher_mask": np.ones((N_SYNTH, 4), bool)},  # (N, T) of another T
    {"clip_ids": np.array(["a"] * N_SYNTH)},  # duplicates
    {"clip_ids": np.zeros((N_SYNTH, 2))},  # not (N,) ids
])
def test_bad_frame_companions(world, extra):
    case = _case(world)
    frames = case / "frames.npz"
    np.savez(frames, teacher_frames=np.ones((N_SYNTH, 3, 8), np.float32), **extra)
    refused(["distill", "--method", "none", *SYNTH, "--epochs", "1", "--frames", frames, "--out", case / "out"],
            case, str(frames), next(iter(extra)))


@SETTINGS
@given(drawn=BAD_ARRAYS)
def test_bad_query_arrays(world, drawn):
    case = _case(world)
    q = case / "q.npy"
    _write_bad(q, drawn)
    refused(["search", "audio-to-video", "--index", world["idx"], "--query", q], case, "q.npy")


# --------------------------------------------------------------------------- community h5 feature files
H5_FAULTS = {
    "audio_feat": ["group", "strings", "complex", "nan", "rows", "4-d"],
    "visual_feat": ["group", "strings", "nan", "rows"],
    "Label_ID": ["group", "strings", "nan", "rows"],
    "Train_test": ["group", "three-codes", "nan", "names"],
    "clip_ids": ["group", "short", "duplicates", "matrix"],
    "class_names": ["group", "count"],
}


def _h5_good(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"audio_feat": rng.normal(size=(n, 128)).astype(np.float32),
            "visual_feat": rng.normal(size=(n, 1024)).astype(np.float32),
            "Label_ID": np.arange(n) % 4, "Train_test": (np.arange(n) >= n - 6).astype(np.int64),
            "clip_ids": np.array([f"v{i}".encode() for i in range(n)]),
            "class_names": np.array([b"a", b"b", b"c", b"d"])}


def _h5_fault(value: np.ndarray, fault: str, n: int) -> np.ndarray | None:
    """``value`` made bad by ``fault``; None for "a group in its place"."""
    if fault == "group":
        return None
    if fault == "nan":
        value = value.astype(np.float64)
        value[n // 2] = np.nan
        return value
    return {"strings": lambda: np.full((n, 4), b"x"), "complex": lambda: value.astype(np.complex64),
            "rows": lambda: value[:-1], "4-d": lambda: np.ones((n, 2, 2, 2)),
            "three-codes": lambda: np.arange(n) % 3, "names": lambda: np.array([b"train", b"bogus"] * (n // 2)),
            "short": lambda: value[:2], "duplicates": lambda: np.array([b"same"] * n),
            "matrix": lambda: np.zeros((n, 2)), "count": lambda: value[:2]}[fault]()


@SETTINGS
@given(key_fault=st.sampled_from([(k, f) for k, fs in H5_FAULTS.items() for f in fs]),
       n=st.integers(6, 15).map(lambda h: 2 * h))
def test_bad_h5_feature_files(world, key_fault, n):
    key, fault = key_fault
    case = _case(world)
    path = case / "feats.h5"
    with h5py.File(path, "w") as h5:
        for k, value in _h5_good(n).items():
            value = _h5_fault(value, fault, n) if k == key else value
            if value is None:
                h5.create_group(k)
            else:
                h5[k] = value
    line = refused(["index", "build", "--model", world["run"], "--dataset", path, "--out", case / "idx"], case,
                   str(path))
    if key in ("clip_ids", "class_names") or fault == "group":
        assert key in line, line  # the field at fault is named (short clip_ids are not a 'labels' error)


def test_short_clip_ids_are_a_clip_ids_error(world):
    case = _case(world)
    path = case / "feats.h5"
    with h5py.File(path, "w") as h5:
        h5["audio_feat"], h5["visual_feat"] = np.ones((20, 128), np.float32), np.ones((20, 1024), np.float32)
        h5["Label_ID"], h5["Train_test"] = np.arange(20) % 4, (np.arange(20) > 14).astype(int)
        h5["clip_ids"] = np.array([b"a", b"b"])
    refused(["eval", "--model", world["run"], "--dataset", path, "--json-out", case / "m.json"], case,
            "'clip_ids' has 2 entries, expected 20")


# --------------------------------------------------------------------------- plain folders (manifest.csv)
def _folder(case: Path, manifest: bytes, classes: bytes | None = None, n: int = 4) -> Path:
    d = case / "feats"
    d.mkdir()
    (d / "manifest.csv").write_bytes(manifest)
    np.save(d / "audio.npy", np.ones((n, 128), np.float32))
    np.save(d / "visual.npy", np.ones((n, 1024), np.float32))
    if classes is not None:
        (d / "classes.txt").write_bytes(classes)
    return d


BAD_IDS = st.tuples(st.text(min_size=0, max_size=4), st.sampled_from([",", "\n", "\r", "\x00", "\x1b", "\t"]),
                    st.text(min_size=0, max_size=4)).map("".join)


@SETTINGS
@given(bad_id=BAD_IDS)
def test_unqueryable_clip_ids_are_refused(world, bad_id):
    case = _case(world)
    rows = [["clip_id", "label", "split"], [bad_id, "x", "test"], ["b", "x", "test"], ["c", "y", "test"],
            ["d", "y", "test"]]
    with open(case / "m.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    d = _folder(case, (case / "m.csv").read_bytes())
    (case / "m.csv").unlink()
    refused(["index", "build", "--model", world["run"], "--dataset", d, "--out", case / "idx"], case,
            "manifest.csv", "clip_id")


@SETTINGS
@given(junk=st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)))
def test_non_utf8_manifest_and_classes(world, junk):
    case = _case(world)
    d = _folder(case, b"clip_id,label,split\na," + junk + b",test\nb,x,test\nc,x,test\nd,x,test\n")
    refused(["index", "build", "--model", world["run"], "--dataset", d, "--out", case / "idx"], case,
            "manifest.csv", "UTF-8")
    case = _case(world)
    d = _folder(case, b"clip_id,label,split\na,x,test\nb,x,test\nc,x,test\nd,x,test\n", classes=b"x\n" + junk)
    refused(["index", "build", "--model", world["run"], "--dataset", d, "--out", case / "idx"], case,
            "classes.txt", "UTF-8")


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("manifest, classes, needle", [
    (b"clip_id,label,split\na,x,test\nb,x,test\nc,y,test\nd,y,test\n", b"x\ny\nx\n", "listed twice"),
    (b"clip_id,label,split\na,x,test,extra\nb,x,test\nc,y,test\nd,y,test\n", None, "more fields"),
    (b"clip_id,label,split\na,x,test\nb,x,test\n", None, "shape (4, 128), expected (2, D)"),
    (b"id,label\na,x\n", None, "no 'clip_id' column"),
])
def test_bad_manifests(world, manifest, classes, needle):
    case = _case(world)
    d = _folder(case, manifest, classes)
    refused(["index", "build", "--model", world["run"], "--dataset", d, "--out", case / "idx"], case, needle)


def test_a_bom_in_the_manifest_header_is_accepted(world):
    case = _case(world)
    d = _folder(case, "\ufeffclip_id,label,split\na,x,test\nb,x,test\nc,y,test\nd,y,test\n".encode())
    res = CliRunner().invoke(app, ["eval", "--model", str(world["run"]), "--dataset", str(d)])
    assert res.exit_code == 0 and "feats: 4 clips" in res.stderr, res.output


@pytest.mark.parametrize("kind", ["objects", "strings", "complex", "random"])
def test_bad_feature_arrays_in_a_folder(world, kind):
    case = _case(world)
    d = _folder(case, b"clip_id,label,split\na,x,test\nb,x,test\nc,y,test\nd,y,test\n")
    if kind == "random":
        (d / "audio.npy").write_bytes(b"\x93NUMPY junk")
    else:
        np.save(d / "audio.npy", {"objects": np.array([{}] * 4, dtype=object), "strings": np.full((4, 128), "a"),
                                  "complex": np.ones((4, 128), np.complex128)}[kind], allow_pickle=True)
    refused(["index", "build", "--model", world["run"], "--dataset", d, "--out", case / "idx"], case, "audio.npy")


# --------------------------------------------------------------------------- model directories: JSON, safetensors
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=6)


def _model_copy(world, case: Path) -> Path:
    m = case / "run"
    shutil.copytree(world["run"], m)
    return m


@SETTINGS
@given(content=st.one_of(
    JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).filter(lambda b: not _utf8(b)),
    st.text(max_size=20).filter(lambda t: not _is_json(t)).map(str.encode),
    st.dictionaries(st.sampled_from(["model_type", "embed_dim", "hidden", "format_version", "bogus"]),
                    JSON_VALUES, min_size=1, max_size=3).map(lambda d: json.dumps(d).encode()),
))
def test_bad_model_configs(world, content):
    case = _case(world)
    m = _model_copy(world, case)
    (m / "model" / "config.json").write_bytes(content)
    refused(["index", "build", "--model", m, "--out", case / "idx"], case, "config.json")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


@SETTINGS
@given(content=st.one_of(st.binary(max_size=40), JSON_VALUES.filter(lambda v: not isinstance(v, dict))
                         .map(lambda v: json.dumps(v).encode())))
def test_bad_run_json(world, content):
    case = _case(world)
    m = _model_copy(world, case)
    (m / "run.json").write_bytes(content)
    refused(["index", "build", "--model", m, "--out", case / "idx"], case, "run.json")
    refused(["eval", "--model", m, "--json-out", case / "m.json"], case, "run.json")


@pytest.mark.parametrize("fault", ["random", "truncated", "nan", "inf", "shape"])
def test_bad_safetensors(world, fault):
    import torch
    from safetensors.torch import load_file, save_file

    case = _case(world)
    m = _model_copy(world, case)
    w = m / "model" / "model.safetensors"
    if fault == "random":
        w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}" * 3)
    elif fault == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    else:
        tensors = load_file(str(w))
        key = sorted(tensors)[3]
        tensors[key] = tensors[key].clone()
        if fault == "shape":
            tensors[key] = torch.zeros(3)
        else:
            tensors[key].view(-1)[0] = float("nan") if fault == "nan" else float("inf")
        save_file(tensors, str(w))
    refused(["index", "build", "--model", m, "--out", case / "idx"], case, "model.safetensors")
    refused(["eval", "--model", m, "--json-out", case / "m.json"], case, "model.safetensors")


# --------------------------------------------------------------------------- FAISS index files
@SETTINGS
@given(fault=st.one_of(st.binary(max_size=80).map(lambda b: ("bytes", b)),
                       st.integers(0, 2 ** 40).filter(lambda n: n != N_SYNTH).map(lambda n: ("count", n)),
                       st.integers(1, 99).map(lambda pct: ("truncate", pct))))
def test_bad_faiss_files(world, fault):
    case = _case(world)
    idx = case / "idx"
    shutil.copytree(world["idx"], idx)
    f = idx / "visual" / "index.faiss"
    what, value = fault
    data = f.read_bytes()
    if what == "bytes":
        data = value
    elif what == "count":  # a forged header: ntotal at offset 8 (after fourcc and d)
        data = data[:8] + struct.pack("<q", value) + data[16:]
    else:
        data = data[: len(data) * value // 100]
    f.write_bytes(data)
    refused(["search", "audio-to-video", "--index", idx, "--query", "synth_000001"], case, "index.faiss")


def test_a_short_ivf_file_is_refused_before_faiss_reads_it(world, tmp_path):
    """IVF / HNSW files are checked for size too, not only flat ones."""
    import faiss

    from avret.errors import IndexError_
    from avret.index.store import check_index_file

    faiss.omp_set_num_threads(1)
    x = np.random.default_rng(0).normal(size=(600, 16)).astype(np.float32)
    for factory in ("IVF4,Flat", "IVF4,PQ4x4", "HNSW8"):
        index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        f = tmp_path / "index.faiss"
        faiss.write_index(index, str(f))
        check_index_file(f, 16, 600)  # the complete file passes
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 10])
        with pytest.raises(IndexError_, match="takes at least"):
            check_index_file(f, 16, 600)
        if factory.startswith("IVF"):  # a forged number of lists
            f.write_bytes(data[:37] + struct.pack("<Q", 1 << 40) + data[45:])
            with pytest.raises(IndexError_, match="lists"):
                check_index_file(f, 16, 600)


# --------------------------------------------------------------------------- media and text
@pytest.mark.parametrize("name", ["sound.wav", "clip.mp4"])
def test_media_queries_without_features_config(world, name):
    case = _case(world)
    q = case / name
    q.write_bytes(b"\x00garbage" * 10)
    direction = "audio-to-video" if name.endswith(".wav") else "video-to-audio"
    refused(["search", direction, "--index", world["idx"], "--query", q], case, name)


@SETTINGS
@given(body=st.one_of(
    st.binary(min_size=1, max_size=30).filter(lambda b: not _utf8(b)).map(lambda b: b"id,text,label,mode\n" + b),
    st.sampled_from(["nan", "4", "-3.5", "x", "", "inf"]).map(lambda v: f"id,text,label,mode\na,good,{v},train\n"
                                                                       .encode()),
    st.sampled_from(["id,text,label\n", "text,label,mode\n", "", "id,text,label,mode\n"]).map(str.encode),
    st.sampled_from(["bogus", ""]).map(lambda m: f"id,text,label,mode\na,good,1,{m}\n".encode()),
))
def test_bad_label_csv(world, body):
    case = _case(world)
    f = case / "label.csv"
    f.write_bytes(body)
    refused(["sentiment", "train", "--data", f, "--encoder", world["enc"], "--epochs", "1", "--device", "cpu",
             "--out", case / "s"], case, "label.csv")
    refused(["sentiment", "eval", "--model", world["srun"], "--data", f, "--json", case / "m.json"], case,
            "label.csv")


@pytest.mark.parametrize("text, needle", [("", "empty"), ("  \t", "empty"), ("bad \udcff byte", "UTF-8")])
def test_bad_predict_texts(world, text, needle):
    case = _case(world)
    refused(["sentiment", "predict", "--model", world["srun"], "fine", text], case, "text argument 2", needle)


def test_non_utf8_predict_file(world):
    case = _case(world)
    f = case / "lines.txt"
    f.write_bytes(b"good\n\xff\xfe\n")
    refused(["sentiment", "predict", "--model", world["srun"], "--file", f], case, "lines.txt")


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("command, option, value", [
    (["train", *SYNTH], "--epochs", "0"),
    (["train", *SYNTH], "--epochs", "-3"),
    (["distill", "--method", "none", *SYNTH], "--epochs", "0"),
    (["distill", "--method", "kd", *SYNTH], "--teacher-epochs", "0"),
    (["sentiment", "train", "--data", "{label}"], "--epochs", "0"),
    (["sentiment", "train", "--data", "{label}"], "--batch-size", "0"),
    (["sentiment", "train", "--data", "{label}"], "--alpha", "1.5"),
    (["sentiment", "train", "--data", "{label}"], "--lr", "nan"),
])
def test_bad_numbers_before_any_work(world, command, option, value):
    case = _case(world)
    args = [str(a).replace("{label}", str(world["label"])) for a in command]
    refused([*args, option, value, "--out", case / "out"], case, f"{option} {value}")


# --------------------------------------------------------------------------- progress and resume
def test_progress_prints_nothing_when_the_work_fails(capsys):
    from avret_cli.progress import flush_status, progress_bar

    with pytest.raises(RuntimeError), progress_bar("work", total=3) as update:
        update(1, info="first")
        raise RuntimeError("boom")
    assert capsys.readouterr().err == ""
    with progress_bar("work", total=3) as update:
        update(3, info="done")
    flush_status()  # what cli.common.user_errors does when the command succeeds
    assert capsys.readouterr().err.splitlines() == ["work: 3/3 done"]


def test_distill_resume_retrains_a_damaged_step1_or_run_json(world, tmp_path):
    """Damaged leftovers of an earlier run in --out (step1.json, run.json) are trained again, not a traceback."""
    out = tmp_path / "d"
    shutil.copytree(world["run"], out)  # model/ + run.json, as an earlier run leaves them
    (out / "step1.json").write_bytes(b"\xff not json")
    (out / "run.json").write_text("[1, 2]")
    res = CliRunner().invoke(app, ["distill", "--method", "kd", "--synth-clips", "100", "--epochs", "1",
                                   "--teacher-epochs", "1", "--device", "cpu", "--prompts", "shared",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "run.json is damaged" in res.stderr and "step1.json is damaged" in res.stderr
    assert isinstance(json.loads((out / "step1.json").read_text())["tau"], float)
    assert json.loads((out / "run.json").read_text())["method"] == "kd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# =========================================================================== issue 24: nothing of the user's is touched
def _bytes(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root``: a file's bytes, a link's target, a directory's marker."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_bytes()
        elif p.is_fifo():
            out[rel] = "fifo"
        else:
            out[rel] = "dir"
    return out


def refused_untouched(args: list, where: Path, *needles: str) -> str:
    """:func:`refused`, and every file under ``where`` byte-identical afterwards."""
    before = _bytes(where)
    line = refused(args, where, *needles)
    assert _bytes(where) == before
    return line


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _inputs_of(world, command: str, place: Path) -> tuple[list, Path]:
    """The argv of ``command`` (without --out) reading an input placed at ``place``, and that input."""
    place.parent.mkdir(parents=True, exist_ok=True)
    if command == "sentiment train":
        shutil.copy(world["label"], place)
        return ["sentiment", "train", "--data", place, "--encoder", world["enc"], "--epochs", "1"], place
    if command == "index build":
        shutil.copytree(world["run"], place)
        return ["index", "build", "--model", place], place
    if command == "distill":
        np.save(place, np.ones((N_SYNTH, 2, 4), np.float32))
        return ["distill", "--method", "none", *SYNTH, "--epochs", "1", "--frames", place], place
    shutil.copy(world["root"] / "feats.h5" if (world["root"] / "feats.h5").exists() else world["label"], place)
    return ["train", *SYNTH, "--dataset", place, "--epochs", "1"], place


OUTPUT_COMMANDS = ["sentiment train", "index build", "distill", "train"]


@SETTINGS
@given(command=st.sampled_from(OUTPUT_COMMANDS), relation=st.sampled_from(["equal", "holds", "inside", "grandparent"]),
       overwrite=st.booleans())
def test_an_output_never_equals_holds_or_sits_inside_an_input(world, command, relation, overwrite):
    """--out that is, contains or lies inside the command's own input: refused even with --overwrite."""
    case = _case(world)
    name = {"sentiment train": "label.csv", "index build": "run", "distill": "frames.npy", "train": "d.h5"}[command]
    argv, inp = _inputs_of(world, command, case / "D" / "sub" / name)
    out = {"equal": inp, "holds": inp.parent, "inside": inp / "x", "grandparent": case / "D"}[relation]
    refused_untouched([*argv, "--out", out, *(["--overwrite"] if overwrite else [])], case,
                      "which this command reads")


@pytest.mark.parametrize("target", [".", ".."])
def test_out_dot_or_dotdot_is_refused_even_with_overwrite(world, monkeypatch, target):
    case = _case(world)
    work = case / "w"
    work.mkdir()
    (work / "mine.txt").write_text("mine")
    monkeypatch.chdir(work)
    refused_untouched(["train", *SYNTH, "--epochs", "1", "--out", target, "--overwrite"], case, "current directory")


@pytest.mark.parametrize("target", ["notes", "run.json", "model-config", "link", "report-link", "fifo", "dir",
                                    "dev-link"])
@pytest.mark.parametrize("command", ["eval", "sentiment eval"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_json_out_never_replaces_what_is_not_an_eval_report(world, target, command, overwrite):
    """--json-out: a user's file, the model's own files, a symlink (never followed), a FIFO, a directory;
    with --overwrite only a user's regular file may be replaced."""
    if overwrite and target == "notes":
        pytest.skip("--overwrite replaces a user's regular file: that is what it is for")
    case = _case(world)
    model = case / "model-run"
    shutil.copytree(world["run"] if command == "eval" else world["srun"], model)
    (case / "notes.json").write_text('{"mine": true}\n')
    paths = {"notes": case / "notes.json", "run.json": model / "run.json",
             "model-config": model / "model" / "config.json", "link": case / "link.json",
             "fifo": case / "fifo.json", "dir": case / "dir.json", "dev-link": case / "stdout.json"}
    (case / "link.json").symlink_to(case / "notes.json")
    (case / "report.json").write_text(json.dumps({"kind": "avret.eval-report", "rows": {}}))
    (case / "report-link.json").symlink_to(case / "report.json")  # even to a report: never written through
    paths["report-link"] = case / "report-link.json"
    os.mkfifo(case / "fifo.json")
    (case / "dir.json").mkdir()
    (case / "stdout.json").symlink_to("/dev/stdout")
    argv = (["eval", "--model", model, *SYNTH] if command == "eval" else
            ["sentiment", "eval", "--model", model, "--data", world["label"]])
    refused_untouched([*argv, "--json-out", paths[target], *(["--overwrite"] if overwrite else [])], case,
                      "--json-out")


def test_json_out_replaces_an_earlier_report_and_a_user_file_only_with_overwrite(world):
    case = _case(world)
    report = case / "eval.json"
    res = CliRunner().invoke(app, ["eval", "--model", world["run"], *SYNTH, "--json-out", report])
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["kind"] == "avret.eval-report"
    legacy = {"dataset": "vegas-synth", "split": "test", "rows": {}}  # a report of an earlier version
    report.write_text(json.dumps(legacy))
    res = CliRunner().invoke(app, ["eval", "--model", world["run"], *SYNTH, "--json-out", report])
    assert res.exit_code == 0, res.output  # make demo rewrites runs/demo/eval.json on every run
    mine = case / "mine.json"
    mine.write_text("notes")
    refused_untouched(["eval", "--model", world["run"], *SYNTH, "--json-out", mine], case, "not an earlier eval report")
    res = CliRunner().invoke(app, ["eval", "--model", world["run"], *SYNTH, "--json-out", mine, "--overwrite"])
    assert res.exit_code == 0 and json.loads(mine.read_text())["kind"] == "avret.eval-report"


def test_an_output_of_another_kind_or_a_look_alike_folder_is_refused(world):
    """sentiment train never replaces a retrieval run; features extract never writes into a folder that
    merely holds a manifest.csv/failures.json; a run.json without avret's record does not make a run."""
    case = _case(world)
    retrieval = case / "retrieval"
    shutil.copytree(world["run"], retrieval)
    refused_untouched(["sentiment", "train", "--data", world["label"], "--encoder", world["enc"], "--out", retrieval],
                      case, "retrieval run")
    fake = case / "fake"
    fake.mkdir()
    (fake / "run.json").write_text('{"my": "notes"}')
    refused_untouched(["train", *SYNTH, "--epochs", "1", "--out", fake], case, "not an earlier")
    from avret.errors import AvretError
    from avret.utils.atomic import FEATURES_KIND, check_output

    folder = case / "mine"
    folder.mkdir()
    (folder / "manifest.csv").write_text("clip_id,label\nx,y\n")
    (folder / "failures.json").write_text("[]")
    before = _bytes(case)
    with pytest.raises(AvretError, match="not an earlier features folder"):
        check_output(folder, FEATURES_KIND)
    assert _bytes(case) == before


LOOK_ALIKES = st.sampled_from([
    ".idx.old-{pid}-backup/todo.txt", ".idx.tmp-{pid}-draft.txt", ".idx.old-notes/todo.txt",
    ".idx.tmp-{pid}-probe-keep/x", ".idx.old-{pid}-x/x/mine.txt",
])


@SETTINGS
@given(names=st.lists(LOOK_ALIKES, min_size=1, max_size=3, unique=True))
def test_crash_recovery_leaves_look_alike_temporaries_alone(world, names):
    """Files and folders whose names only look like avret's temporaries (no marker) survive a rebuild of
    the output beside them byte for byte, and an output replaced over them is still replaced."""
    case = _case(world)
    idx = case / "idx"
    shutil.copytree(world["idx"], idx)
    pid = _dead_pid()
    for name in names:
        p = case / name.format(pid=pid)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"user data {name}")
    before = {k: v for k, v in _bytes(case).items() if not k.startswith("idx")}
    res = CliRunner().invoke(app, ["index", "build", "--model", world["run"], *SYNTH, "--out", idx])
    assert res.exit_code == 0, res.output
    after = {k: v for k, v in _bytes(case).items() if not k.startswith("idx")}
    assert after == before


PATH_PARTS = st.one_of(
    st.integers(256, 400).map(lambda n: ("long-name", n)),
    st.integers(4100, 6000).map(lambda n: ("long-path", n)),
)


@SETTINGS
@given(part=PATH_PARTS, option=st.sampled_from(["--out", "--dataset", "--json-out", "--frames"]))
def test_paths_too_long_for_the_file_system(world, part, option):
    case = _case(world)
    kind, n = part
    name = "a" * n if kind == "long-name" else "/".join(["b" * 99] * (n // 100))
    path = case / name
    if option == "--json-out":
        argv = ["eval", "--model", world["run"], *SYNTH, "--json-out", path]
    elif option == "--frames":
        argv = ["distill", "--method", "none", *SYNTH, "--epochs", "1", "--frames", path, "--out", case / "o"]
    elif option == "--dataset":
        argv = ["train", "--dataset", path, "--epochs", "1", "--out", case / "o"]
    else:
        argv = ["train", *SYNTH, "--epochs", "1", "--out", path]
    refused_untouched(argv, case)


SEEDS = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32, max_value=2**80))


@SETTINGS
@given(seed=SEEDS, where=st.sampled_from([("train", "--seed"), ("train", "--synth-seed"), ("distill", "--seed"),
                                          ("sentiment train", "--seed"), ("data make-av-digits", "--seed")]))
def test_seeds_outside_unsigned_32_bits(world, seed, where):
    case = _case(world)
    command, option = where
    extra = ["--data", world["label"]] if command == "sentiment train" else []
    refused_untouched([*command.split(), *extra, option, str(seed), "--out", case / "o"], case, option)


@pytest.mark.parametrize("argv, needle", [
    (["data", "make-av-digits", "--size", "100000"], "--size"),
    (["data", "make-av-digits", "--workers", "-1"], "--workers"),
    (["sentiment", "train", "--max-len", "100000"], "--max-len"),
    (["train", "--synth-clips", "10000000000"], "--synth-clips"),
])
def test_out_of_range_sizes(world, argv, needle):
    case = _case(world)
    refused_untouched([*argv, "--out", case / "o"], case, needle)


FORGED = st.one_of(
    st.tuples(st.integers(10**6, 10**12), st.integers(1, 8), st.integers(1, 64)).map(lambda s: ("rows", s)),
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(10**8, 10**13)).map(lambda s: ("width", s)),
)


@SETTINGS
@given(forged=FORGED, suffix=st.sampled_from([".npy", ".npz"]), use=st.sampled_from(["frames", "query"]))
def test_forged_array_headers_are_refused_before_allocation(world, forged, suffix, use):
    """A header claiming far more than the file holds (1e9 rows, absurd widths): one line, nothing allocated."""
    case = _case(world)
    _kind, shape = forged
    if use == "query":
        shape, suffix = shape[1:], ".npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1,) * len(shape), np.float32))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(b"\0" * 64)
    path = case / f"forged{suffix}"
    if suffix == ".npy":
        path.write_bytes(buf.getvalue())
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("teacher_frames.npy", buf.getvalue())
    if use == "query":
        refused_untouched(["search", "audio-to-video", "--index", world["idx"], "--query", path], case, "header claims")
    else:
        refused_untouched(["distill", "--method", "none", *SYNTH, "--epochs", "1", "--frames", path,
                           "--out", case / "o"], case, "header claims")


@pytest.mark.parametrize("layout", ["soft-link-loop", "huge-chunked"])
def test_hostile_h5_files(world, layout):
    case = _case(world)
    path = case / "hostile.h5"
    with h5py.File(path, "w") as f:
        if layout == "soft-link-loop":
            f["audio_feat"] = h5py.SoftLink("/loop")
            f["loop"] = h5py.SoftLink("/audio_feat")
        else:
            f.create_dataset("audio_feat", shape=(10**10, 128), dtype="f4", chunks=(1, 128))
        f["visual_feat"] = np.zeros((4, 8), np.float32)
        f["Label_ID"] = np.zeros(4, np.int64)
        f["Train_test"] = np.zeros(4, np.int64)
    refused_untouched(["train", "--dataset", path, "--epochs", "1", "--out", case / "o"], case, "audio_feat")


def test_a_fifo_where_a_file_is_read(world):
    case = _case(world)
    fifo = case / "lines.txt"
    os.mkfifo(fifo)
    refused_untouched(["sentiment", "predict", "--model", world["srun"], "--file", fifo], case, "not a regular file")
    refused_untouched(["sentiment", "train", "--data", fifo, "--out", case / "o"], case, "lines.txt")


@pytest.mark.parametrize("fps", ["1e9", "0", "nan", "inf"])
def test_features_extract_ranges_up_front(world, fps):
    case = _case(world)
    (case / "a.wav").write_bytes(b"RIFF")
    refused_untouched(["features", "extract", "--media", case / "a.wav", "--audio-encoder", "logmel",
                       "--visual-encoder", "efficientnet-lite0", "--fps", fps, "--out", case / "o"], case, "fps")


def test_an_index_with_nan_stored_embeddings_is_not_served(world):
    import faiss

    case = _case(world)
    idx = case / "idx"
    shutil.copytree(world["idx"], idx)
    path = idx / "audio" / "index.faiss"
    index = faiss.read_index(str(path))
    vectors = index.reconstruct_n(0, index.ntotal)
    vectors[3] = np.nan
    index.reset()
    index.add(vectors)
    faiss.write_index(index, str(path))
    refused_untouched(["search", "audio-to-video", "--index", idx, "--query", "synth_000001"], case, "NaN")


@pytest.mark.parametrize("depth", [10_000, 200_000])
@pytest.mark.parametrize("file", ["metadata.json", "manifest.json"])
def test_index_metadata_nested_too_deeply(world, depth, file):
    case = _case(world)
    idx = case / "idx"
    shutil.copytree(world["idx"], idx)
    (idx / "visual" / file).write_text("[" * depth + "]" * depth)
    refused_untouched(["search", "audio-to-video", "--index", idx, "--query", "synth_000001"], case, file)


def test_an_idmap_factory_is_refused_before_any_work(world):
    case = _case(world)
    refused_untouched(["index", "build", "--model", world["run"], *SYNTH, "--factory", "IDMap,Flat",
                       "--out", case / "idx"], case, "IDMap")


@pytest.mark.parametrize("custom", ["auto_map", "python-file"])
def test_an_encoder_folder_carrying_code_is_refused(world, custom):
    """avret never runs code from a model folder (trust_remote_code stays False)."""
    case = _case(world)
    enc = case / "enc"
    shutil.copytree(world["enc"], enc)
    if custom == "auto_map":
        cfg = json.loads((enc / "config.json").read_text())
        cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
        (enc / "config.json").write_text(json.dumps(cfg))
    (enc / "modeling_evil.py").write_text("raise SystemExit('code from a model folder ran')\n")
    refused_untouched(["sentiment", "train", "--data", world["label"], "--encoder", enc, "--epochs", "1",
                       "--out", case / "o"], case, "never runs code")


def test_a_clip_config_with_a_tiny_text_vocabulary(world):
    case = _case(world)
    cfg = case / "tiny-vocab-clip.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                               "patch_size": 16, "head_width": 16},
                               "text_cfg": {"context_length": 16, "vocab_size": 8, "width": 16, "heads": 2,
                                            "layers": 1}}))
    frames = case / "frames.npy"
    np.save(frames, np.ones((N_SYNTH, 2, 16), np.float32))
    refused_untouched(["distill", "--method", "videoadviser", *SYNTH, "--epochs", "1", "--teacher-epochs", "1",
                       "--frames", frames, "--clip-model", cfg, "--prompts", "shared", "--out", case / "o"],
                      case, "vocab_size")


@pytest.mark.parametrize("factory", ["HNSW8", "IVF4,Flat"])
@pytest.mark.parametrize("claim", [2**20, 2**38])
def test_forged_hnsw_and_ivf_tables_are_refused_before_faiss_allocates(world, factory, claim):
    """A table length inside index.faiss (HNSW level probabilities, an IVF list's size) forged to a huge
    number: one line, refused before FAISS reads (and allocates) it."""
    case = _case(world)
    idx = case / "idx"
    res = CliRunner().invoke(app, ["index", "build", "--model", world["run"], *SYNTH, "--factory", factory,
                                   "--out", idx])
    assert res.exit_code == 0, res.output
    path = idx / "audio" / "index.faiss"
    raw = bytearray(path.read_bytes())
    at = 37 if factory.startswith("HNSW") else raw.find(b"ilar") + 32  # assign_probas / the first list's size
    struct.pack_into("<Q", raw, at, claim)
    path.write_bytes(bytes(raw))
    refused_untouched(["search", "audio-to-video", "--index", idx, "--query", "synth_000001"], case, "forged")
