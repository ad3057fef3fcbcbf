"""``features extract --ray``: on a local Ray (2 CPU workers) the output folder equals the single-process one.

Generated media (four good files, one corrupt, one without video), tiny random-weight VGGish and
CLIP (teacher frames included). Ray starts once for the module (seconds); every test that needs it
shares that session, and it is shut down at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avret.errors import AvretError
from avret.features.extract import ExtractConfig, extract_features
from avret.features.ray_extract import check_reachable, extract_features_ray, plan_pool
from avret.features.shards import DONE, SHARDS
from avret.features.synthetic_media import write_media
from avret_cli.main import app
from tests.fixtures_media import make_tiny_extractors

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[scale]')")

ARRAYS = ("audio.npy", "visual.npy", "teacher_frames.npy", "teacher_mask.npy")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_extractors(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    for i, seconds in enumerate((1.0, 1.6, 0.7, 2.2)):
        write_media(d / f"clip{i}.mp4", seconds=seconds, freq=300.0 + 110 * i, noise=i == 2)
    write_media(d / "audio_only.m4a", seconds=1.0, video=False)
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return d


def _config(models: dict[str, Path], workers: int = 0) -> ExtractConfig:
    return ExtractConfig(vggish=models["vggish"], clip_model=str(models["clip_cfg"]), clip_weights=models["clip"],
                         fps=2.0, max_frames=3, batch_size=4, device="cpu", workers=workers)


def _cli_args(models: dict[str, Path], media: Path, out: Path) -> list[str]:
    return ["features", "extract", "--media", str(media), "--out", str(out), "--vggish", str(models["vggish"]),
            "--clip-model", str(models["clip_cfg"]), "--clip-weights", str(models["clip"]), "--fps", "2",
            "--max-frames", "3", "--batch-size", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, models, media) -> Path:
    """The reference: the single-process extraction of the same media."""
    out = tmp_path_factory.mktemp("single") / "feats"
    extract_features([media], out, _config(models))
    return out


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module: 3 logical CPUs (2 encoder actors + decoding)."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cli_out(tmp_path_factory, models, media, ray_session) -> tuple[Path, dict]:
    """``avret features extract --ray local --workers 2 --json`` (the session above is reused)."""
    out = tmp_path_factory.mktemp("ray") / "feats"
    res = CliRunner().invoke(app, [*_cli_args(models, media, out), "--ray", "local", "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def _assert_same_folder(got: Path, want: Path) -> None:
    assert (got / "manifest.csv").read_text() == (want / "manifest.csv").read_text()
    for name in ARRAYS:
        a, b = np.load(got / name), np.load(want / name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
    assert json.loads((got / "failures.json").read_text()) == json.loads((want / "failures.json").read_text())
    g, w = (json.loads((d / "extract_config.json").read_text()) for d in (got, want))
    assert (g["audio"], g["visual"], g["teacher"], g["device"]) == (w["audio"], w["visual"], w["teacher"], w["device"])


def test_cli_ray_run_equals_the_single_process_folder(ray_cli_out, single):
    out, report = ray_cli_out
    _assert_same_folder(out, single)
    ids = (out / "manifest.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in ids] == ["clip0", "clip1", "clip2", "clip3"]
    failures = json.loads((out / "failures.json").read_text())
    assert [Path(f["path"]).name for f in failures] == ["audio_only.m4a", "corrupt.mp4"]  # media-list order
    assert "no video track" in failures[0]["error"] and "not a readable media file" in failures[1]["error"]
    assert (report["n_extracted"], report["n_skipped"], report["n_failed"], report["n_rows"]) == (4, 0, 2, 4)
    assert report["failures"] == failures
    # every clip went through a shard the driver wrote
    done = [json.loads(line) for line in (out / SHARDS / DONE).read_text().splitlines()]
    assert sorted(r["clip_id"] for r in done) == ["clip0", "clip1", "clip2", "clip3"]


def test_rerun_skips_done_clips_and_redoes_a_lost_shard(ray_cli_out, single, models, media, tmp_path):
    """A run interrupted after some shards: the next --ray run redoes only the clips whose shard is missing."""
    out = tmp_path / "feats"
    shutil.copytree(ray_cli_out[0], out)
    shards = sorted((out / SHARDS).glob("shard-*.npz"))
    assert len(shards) >= 2, "the test needs clips spread over several shards"
    lost = shards[0]
    with np.load(lost) as z:
        lost_ids = sorted(map(str, z["clip_ids"]))
    lost.unlink()
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in shards[1:]}

    report = extract_features_ray([media], out, _config(models, workers=1))

    assert report.n_extracted == len(lost_ids) and report.n_skipped == 4 - len(lost_ids)
    assert [f["clip_id"] for f in report.failures] == ["audio_only", "corrupt"]  # failed files are retried
    for p, (data, mtime) in kept.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime, f"{p.name} was rewritten"
    redone = []
    for shard in set((out / SHARDS).glob("shard-*.npz")) - set(kept):
        with np.load(shard) as z:
            redone += map(str, z["clip_ids"])
    assert sorted(redone) == lost_ids
    _assert_same_folder(out, single)


def test_without_ray_installed_is_one_line_exit_2(models, media, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "feats"
    res = CliRunner().invoke(app, [*_cli_args(models, media, out), "--ray", "local"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ray") and "pip install -e '.[scale]'" in lines[0]
    assert not out.exists()


def test_encoder_pool_size_and_device(models):
    cfg = _config(models, workers=2)
    assert plan_pool({"CPU": 3.0}, cfg) == (2, False)
    cfg.device = "auto"
    assert plan_pool({"CPU": 8.0, "GPU": 2.0}, cfg) == (2, True)  # a GPU per actor
    assert plan_pool({"CPU": 8.0}, cfg) == (2, False)
    cfg.workers = 0
    assert plan_pool({"CPU": 2.0, "GPU": 1.0}, cfg) == (1, True)  # at least one actor
    cfg.workers, cfg.device = 2, "cpu"
    assert plan_pool({"CPU": 8.0, "GPU": 2.0}, cfg) == (2, False)  # --device cpu: no GPU asked for
    with pytest.raises(AvretError, match=r"need at least 3 CPUs; the Ray cluster has 2"):
        plan_pool({"CPU": 2.0}, cfg)  # two actors and no CPU left to decode would wait forever
    cfg.device = "cuda"
    with pytest.raises(AvretError, match="has no GPUs"):
        plan_pool({"CPU": 8.0}, cfg)
    with pytest.raises(AvretError, match="need 2 GPUs; the Ray cluster has 1"):
        plan_pool({"CPU": 8.0, "GPU": 1.0}, cfg)


def test_an_unreachable_cluster_address_fails_at_once():
    """ray.init would retry for minutes; nothing listens on port 1, so this is one line at once."""
    with pytest.raises(AvretError, match=r"--ray 127\.0\.0\.1:1: no Ray head answers there"):
        check_reachable("127.0.0.1:1", timeout=2.0)
    check_reachable("auto")  # left to Ray (it finds the local head itself)
