"""``avret index add`` / ``remove``: the index after a change answers exactly like a fresh build of the
same gallery (exact indexes: identical; IVF: identical to the same trained index filled with it), and
the whole root changes in one commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avret.errors import AvretError
from avret.index import AVIndex
from avret.index.update import with_added, without
from avret_cli.main import app

FP = "f" * 64
runner = CliRunner()


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((20, d)).astype(np.float32)
    x = c[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(rows) -> list[str]:
    return [f"clip{i:05d}" for i in rows]


def _same(a, b) -> None:
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.clip_ids, b.clip_ids) and np.array_equal(a.labels, b.labels)


def test_flat_add_and_remove_equal_a_fresh_build(tmp_path: Path) -> None:
    factory = "Flat"
    n, d = 600, 16
    x = _clustered(n, d)
    labels = np.where(np.arange(n) < 450, np.arange(n) % 3, np.arange(n) % 4)  # class 3 only among the added
    names = ["a", "b", "c", "d"]
    full = AVIndex.build(x, _ids(range(n)), labels, names, modality="audio", model_fingerprint=FP, factory=factory)
    base = AVIndex.build(x[:450], _ids(range(450)), labels[:450], names[:3], modality="audio",
                         model_fingerprint=FP, factory=factory)
    grown = with_added(base, x[450:], _ids(range(450, n)), labels[450:], names)  # class "d" is new
    assert grown.class_names == names
    q = x[::37]
    _same(grown.search(q, 12), full.search(q, 12))
    gone = [5, 6, 99, 451, 599]
    keep = np.setdiff1d(np.arange(n), gone)
    fresh = AVIndex.build(x[keep], _ids(keep), labels[keep], names, modality="audio", model_fingerprint=FP,
                          factory=factory)
    shrunk = without(grown, _ids(gone))
    _same(shrunk.search(q, 12), fresh.search(q, 12))
    allowed = np.arange(0, len(keep), 3)
    _same(shrunk.search(q, 5, allowed_rows=allowed), fresh.search(q, 5, allowed_rows=allowed))
    loaded = AVIndex.load(shrunk.save(tmp_path / "ix"))
    _same(loaded.search(q, 12), fresh.search(q, 12))


def test_ivf_remove_renumbers_and_add_appends(tmp_path: Path) -> None:
    n, d = 2_000, 16
    x = _clustered(n, d, seed=1)
    ivf = AVIndex.build(x, _ids(range(n)), None, None, modality="visual", model_fingerprint=FP,
                        factory="IVF16,Flat")
    gone = np.array([0, 3, 700, 1500, 1999])
    tail = np.arange(1800, n)
    keep = np.setdiff1d(np.arange(n), gone)
    shrunk = without(ivf, _ids(gone))
    # probing every list an IVF-Flat is exact: it must equal a Flat index of what is left, row for row
    flat = AVIndex.build(x[keep], _ids(keep), None, None, modality="visual", model_fingerprint=FP)
    q = x[::41]
    a, b = shrunk.search(q, 10, nprobe=16), flat.search(q, 10)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.clip_ids, b.clip_ids)
    # removing the tail and adding it back gives the same lists, in the same order
    again = with_added(without(ivf, _ids(np.union1d(gone, tail))), x[np.setdiff1d(tail, gone)],
                       _ids(np.setdiff1d(tail, gone)), np.full(len(np.setdiff1d(tail, gone)), -1), [])
    _same(again.search(q, 10, nprobe=2), shrunk.search(q, 10, nprobe=2))
    assert np.array_equal(again.embeddings_of(np.arange(again.count)), x[keep])
    loaded = AVIndex.load(again.save(tmp_path / "ix"))
    _same(loaded.search(q, 10, nprobe=2), shrunk.search(q, 10, nprobe=2))


def test_bad_changes_are_refused() -> None:
    x = _clustered(50, 8)
    ix = AVIndex.build(x, _ids(range(50)), None, None, modality="audio", model_fingerprint=FP)
    with pytest.raises(AvretError, match="clip id 'clip00003' is already in the index"):
        with_added(ix, x[:1], _ids([3]), np.array([-1]), [])
    with pytest.raises(AvretError, match="clip id 'nope' is not in"):
        without(ix, ["nope"])
    with pytest.raises(AvretError, match="would leave the audio index empty"):
        without(ix, _ids(range(50)))


# ---------------------------------------------------------------------- CLI: add/remove == build of that gallery
def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _search(root: Path, queries: str) -> list:
    out = []
    for direction in ("audio-to-video", "video-to-audio"):
        res = invoke("search", direction, "--index", root, "--query", queries, "-k", "15", "--json")
        assert res.exit_code == 0, res.output
        out.append([[(r["clip_id"], r["score"]) for r in b["results"]] for b in json.loads(res.stdout)["queries"]])
    return out


def test_cli_add_and_remove_equal_a_fresh_build(tiny_run, tmp_path: Path) -> None:
    train, grown, full = tmp_path / "train", tmp_path / "grown", tmp_path / "full"
    for out, split in ((train, "train"), (grown, "train"), (full, "all")):
        res = invoke("index", "build", "--model", tiny_run, "--out", out, "--split", split)
        assert res.exit_code == 0, res.output
    meta = lambda root: json.loads((root / "audio" / "metadata.json").read_text())  # noqa: E731
    train_ids = set(meta(train)["clip_ids"])
    rest = [c for c in meta(full)["clip_ids"] if c not in train_ids]
    res = invoke("index", "add", "--index", grown, "--split", "test")  # the rest of the data set
    assert res.exit_code == 0, res.output
    assert sorted(meta(grown)["clip_ids"]) == sorted(meta(full)["clip_ids"])
    queries = ",".join(meta(full)["clip_ids"][::40])
    assert _search(grown, queries) == _search(full, queries)
    again = invoke("index", "add", "--index", grown, "--split", "test")  # the same clips twice: refused
    assert again.exit_code == 2 and "is already in the index" in again.stderr
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(rest) + "\n")
    res = invoke("index", "remove", "--index", grown, "--ids", ids)
    assert res.exit_code == 0, res.output
    queries = ",".join(sorted(train_ids)[::30])
    assert _search(grown, queries) == _search(train, queries)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    bad = tmp_path / "bad.txt"
    bad.write_text("no-such-clip\n")
    before = (grown / "audio" / "manifest.json").read_bytes()
    res = invoke("index", "remove", "--index", grown, "--ids", bad)
    assert res.exit_code == 2 and "clip id 'no-such-clip' is not in" in res.stderr
    assert (grown / "audio" / "manifest.json").read_bytes() == before


def _lib_root(tmp_path: Path) -> Path:
    x = _clustered(30, 8)
    for modality in ("visual", "audio"):
        AVIndex.build(x, _ids(range(30)), None, None, modality=modality, model_fingerprint=FP).save(
            tmp_path / "root" / modality)
    return tmp_path / "root"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["index", "remove", "--index", "ROOT", "--ids", "MISSING"], "--ids"),
        (["index", "remove", "--index", "ROOT", "--ids", "EMPTY"], "no clip ids in it"),
        (["index", "remove", "--index", "NOROOT", "--ids", "IDS"], "no index there"),
        (["index", "add", "--index", "ROOT", "--features", "X", "--dataset", "vegas-synth"], "give one of them"),
        (["index", "add", "--index", "ROOT"], "records no model path; pass --model"),
        (["serve", "--index", "ROOT", "--reload-interval", "-1"], "--reload-interval -1.0: expected a finite"),
    ],
)
def test_bad_change_options_exit_2_and_change_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    root = _lib_root(tmp_path)
    (tmp_path / "EMPTY").write_text("\n\n")
    (tmp_path / "IDS").write_text("clip00001\n")
    subs = {"ROOT": root, "NOROOT": tmp_path / "nothing", "MISSING": tmp_path / "missing.txt",
            "EMPTY": tmp_path / "EMPTY", "IDS": tmp_path / "IDS"}
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    res = invoke(*[subs.get(a, a) for a in args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY", "IDS", "root"]
