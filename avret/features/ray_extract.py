"""``features extract --ray``: the same extraction on a Ray cluster (Ray Data), same shards and folder.

The driver plans the run exactly as :func:`avret.features.extract.extract_features` does
(:func:`~avret.features.extract.plan_extraction`: same clip ids, same resume rule), then Ray Data
streams the files still to do through two stages:

1. **decode** (Ray tasks, 1 CPU each): :func:`~avret.features.extract.decode_media_file`, the very
   function of the single-process DataLoader; a bad file becomes a clip whose ``error`` is the same
   one-line reason. With GPU actors these tasks run on every free CPU of the cluster; with CPU
   actors (same resources: 1 CPU) Ray Data fuses them into the actors, so each actor decodes the
   clips it encodes and no decoded pixels move between processes.
2. **encode** (a fixed pool of ``max(1, config.workers)`` actors, ``num_gpus=1`` each when the
   cluster has GPUs and ``--device`` is not ``cpu``, else one CPU and one torch thread each): each
   actor loads the models once (:class:`~avret.features.extract.FeatureExtractor`), takes the
   decoded clips in calls of :func:`clips_per_call` clips, cuts them into groups with the
   single-process rule (:func:`~avret.features.extract.group_is_full`) and returns each group's
   shard arrays (:meth:`~avret.features.extract.FeatureExtractor.encode_group`) and the failures
   (a :class:`GroupResult`).

The driver writes each shard as it comes back (:meth:`~avret.features.extract.ExtractPlan.store_group`),
so an interrupted run resumes from the shards written so far, and finally builds the folder with
:func:`~avret.features.extract.finish_extraction`: manifest, arrays (media-list order),
``failures.json`` (media-list order) and ``extract_config.json`` are those of the single-process
path; only how clips are grouped into shard files differs. Decoded clips travel between the stages
as Python objects (Ray Data pickles them): their arrays are ragged (examples and frames per clip)
and a failed clip has none.

Before Ray starts, the driver loads the models once on its CPU: weights that fail to load stop the
run with the same one-line error and nothing written, the decode tasks get the frame transforms from
them, and the feature widths are known even when every file fails. A run with nothing left to do
starts no Ray at all. Ray is imported only here, and only when a run needs it.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avret.errors import AvretError
from avret.features.decode import DecodedClip
from avret.features.extract import (
    ExtractConfig,
    ExtractPlan,
    ExtractProgress,
    ExtractReport,
    FeatureExtractor,
    decode_media_file,
    failure_record,
    finish_extraction,
    group_is_full,
    plan_extraction,
)

#: ``address`` values that start a local Ray on this machine (instead of connecting to a cluster).
LOCAL = ("local", "")
INSTALL_HINT = "pip install -e '.[scale]'"
#: Decode tasks: blocks of at most this many files are read by one task (small blocks spread the work).
MAX_BLOCKS = 2000


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line :class:`AvretError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs pyarrow/pandas too
    except ImportError as exc:
        raise AvretError(f"--ray needs Ray Data, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


def clips_per_call(config: ExtractConfig) -> int:
    """Decoded clips handed to an encoder actor per call: ``ceil(batch_size / max_frames)``.

    That is at most ``batch_size`` frames when every clip has ``max_frames`` frames, so an actor's
    input (decoded pixels) stays bounded like the single-process pipeline's group. Groups never span
    two calls, so clips with fewer frames than ``max_frames`` give smaller model batches than the
    single-process path (the features are the same; raise ``batch_size`` for larger batches).
    """
    return max(1, -(-config.batch_size // config.max_frames))


def start_ray(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to the cluster at ``address`` (``auto`` or ``host:port``) or start a local Ray.

    A local Ray gets this machine's CPUs, at least ``workers + 1`` (one to decode beside the
    encoder actors). When Ray is already initialised in this process (a library user, a test),
    that session is used as is. Returns True when this call started Ray (the caller shuts it down).
    Ray's own log lines stay off the terminal (``log_to_driver=False``, no dashboard).
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": True}
    local = (address or "").strip().lower() in LOCAL
    if not local:
        check_reachable(str(address))
    try:
        if local:
            ray.init(num_cpus=max(os.cpu_count() or 1, workers + 1), **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray" if local else f"the Ray cluster at '{address}'"
        detail = " ".join(str(exc).split())[:300]
        raise AvretError(f"--ray {address or 'local'}: cannot start or reach {where} ({detail})") from None
    return True


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One-line :class:`AvretError` when a ``host:port`` (or ``ray://host:port``) address does not answer.

    ``ray.init`` retries an unreachable head for minutes; a TCP connect with ``timeout`` fails at
    once. ``auto`` and addresses of another form are left to Ray.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise AvretError(f"--ray {address}: no Ray head answers there ({exc.strerror or exc}); start one with "
                         "`ray start --head` or check the address") from None


def plan_pool(resources: dict[str, float], config: ExtractConfig) -> tuple[int, bool]:
    """``(actors, use_gpu)`` for the encoder pool on a cluster with ``resources`` (``ray.cluster_resources()``).

    ``actors = max(1, config.workers)``; GPUs are used when the cluster has them and ``config.device``
    is not ``cpu`` (``cuda`` on a cluster without GPUs is a one-line error). Each actor holds one CPU
    (and one GPU); at least one CPU must be left for decoding, so a pool that cannot fit is refused
    here instead of waiting forever.
    """
    actors = max(1, config.workers)
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    device = (config.device or "auto").strip().lower()
    if device not in ("auto", "cpu") and not (device == "cuda" or device.startswith("cuda:")):
        raise AvretError(f"--device '{config.device}': expected one of auto, cpu, cuda")
    if device != "cpu" and device != "auto" and gpus == 0:
        raise AvretError(f"--device '{config.device}': the Ray cluster has no GPUs; use --device cpu or auto")
    use_gpu = device != "cpu" and gpus > 0
    if use_gpu and actors > gpus:
        raise AvretError(f"--workers {config.workers}: {actors} GPU encoder actors need {actors} GPUs; "
                         f"the Ray cluster has {gpus}")
    if actors + 1 > cpus:
        hint = f"use --workers {cpus - 1} or fewer" if cpus >= 2 else "a cluster with 2 CPUs or more is needed"
        raise AvretError(f"--workers {config.workers}: {actors} encoder actors and the decode tasks need at "
                         f"least {actors + 1} CPUs; the Ray cluster has {cpus} ({hint})")
    return actors, use_gpu


def decode_row(row: dict[str, Any], config: ExtractConfig, transforms: dict[str, Callable]) -> dict[str, Any]:
    """Ray Data ``map`` function: one ``{"index", "clip_id", "path"}`` row -> ``{"index", "clip"}``."""
    return {"index": int(row["index"]), "clip": decode_media_file(str(row["clip_id"]), str(row["path"]), config,
                                                                    transforms)}


@dataclass
class GroupResult:
    """What an encoder actor returns for one group: its shard arrays (None: failures only), failures, timings."""

    arrays: dict[str, np.ndarray] | None
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (index in plan.todo, record)
    decode_seconds: float = 0.0
    audio_seconds: float = 0.0
    n_frames: int = 0
    model_seconds: float = 0.0


class EncodeActor:
    """Ray Data actor (``map_batches``): decoded clips -> a ``result`` column, one :class:`GroupResult` a group."""

    def __init__(self, config: ExtractConfig, device: str) -> None:
        torch.set_num_threads(1)
        self.config = config
        self.extractor = FeatureExtractor(config, torch.device(device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[GroupResult]]:
        results: list[GroupResult] = []
        current = GroupResult(None)
        pending: list[DecodedClip] = []

        def flush() -> None:
            nonlocal current
            if pending:
                before = self.extractor.model_seconds
                current.arrays = self.extractor.encode_group(pending)
                current.model_seconds = self.extractor.model_seconds - before
                results.append(current)
                current = GroupResult(None)
                pending.clear()

        for index, clip in zip(batch["index"], batch["clip"], strict=True):
            current.decode_seconds += clip.decode_seconds
            if clip.error:
                current.failures.append((int(index), failure_record(clip)))
                continue
            current.audio_seconds += clip.audio_seconds
            current.n_frames += clip.n_frames
            pending.append(clip)
            if group_is_full(pending, self.config):
                flush()
        flush()
        if current.failures:
            results.append(current)
        return {"result": results}


def extract_features_ray(
    media: Sequence[str | Path],
    out_dir: str | Path,
    config: ExtractConfig,
    address: str | None = "local",
    progress: bool | Callable[[int, int], None] = False,
) -> ExtractReport:
    """:func:`avret.features.extract.extract_features` on Ray: same arguments, same output folder and report.

    ``address``: ``"local"`` (or None / ``""``) starts a local Ray on this machine; ``"auto"`` or
    ``"host:port"`` connects to a running cluster (``ray.init(address=...)``); a Ray already
    initialised in this process is used as it is. ``config.workers`` is the number of encoder
    actors (at least 1); see the module docstring for the pipeline. Raises :class:`AvretError`
    (one line) when Ray is not installed, the cluster cannot be reached or the pool cannot fit.
    """
    ray = import_ray()
    plan = plan_extraction(media, out_dir, config)
    report = plan.report
    if not plan.todo:  # nothing to decode: no Ray, no models
        return finish_extraction(plan, None)
    # Models first, on the driver's CPU: weights that fail to load stop the run before anything is written.
    checker = FeatureExtractor(config, torch.device("cpu"))
    started = start_ray(ray, address, config.workers)
    try:
        actors, use_gpu = plan_pool(ray.cluster_resources(), config)
        report.device = "cuda" if use_gpu else "cpu"
        plan.start_writing()
        _stream(ray, plan, checker.transforms(), actors, use_gpu, progress)
    finally:
        if started:
            ray.shutdown()
    return finish_extraction(plan, checker.dims)


def _stream(ray: Any, plan: ExtractPlan, transforms: dict[str, Callable], actors: int, use_gpu: bool,
            progress: bool | Callable[[int, int], None]) -> None:
    """Run the Ray Data pipeline; write each shard as it comes back; failures in media-list order at the end."""
    config, report = plan.config, plan.report
    failures: list[tuple[int, dict[str, str]]] = []
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    with warnings.catch_warnings():
        # Ray Data's own notes, e.g. "the operator only received 1 input(s)" when fewer files than actors
        # are left, or deprecations inside its DataContext: nothing a user of avret can act on.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data")
        ctx = ray.data.DataContext.get_current()
        saved_bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = False  # ours instead
        data_log.setLevel(logging.ERROR)  # Ray Data's per-run INFO/WARNING lines (plan, progress) stay in its log file
        bar = ExtractProgress(progress, len(plan.todo), report.n_skipped)
        try:
            rows = [{"index": i, "clip_id": cid, "path": path} for i, (cid, path) in enumerate(plan.todo)]
            ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
            ds = ds.map(decode_row, fn_kwargs={"config": config, "transforms": transforms}, num_cpus=1)
            ds = ds.map_batches(
                EncodeActor,
                fn_constructor_kwargs={"config": config, "device": "cuda" if use_gpu else "cpu"},
                batch_size=clips_per_call(config),
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=1,
                num_gpus=1 if use_gpu else 0,
            )
            for row in ds.iter_rows():
                res: GroupResult = row["result"]
                report.decode_seconds += res.decode_seconds
                report.audio_seconds += res.audio_seconds
                report.n_frames += res.n_frames
                report.model_seconds += res.model_seconds
                if res.arrays is not None:
                    bar.advance(plan.store_group(res.arrays))
                if res.failures:
                    failures.extend(res.failures)
                    bar.advance(len(res.failures))
        finally:
            bar.close()
            ctx.enable_progress_bars = saved_bars
            data_log.setLevel(saved_level)
            report.failures.extend(rec for _, rec in sorted(failures, key=lambda f: f[0]))
