"""``vegas-synth``: a deterministic, VEGAS-shaped *synthetic* audio-visual data set.

It exists so that the whole engine (training, distillation, index, search, eval) runs and can be
measured on a fresh machine without downloading VEGAS. Its numbers are **synthetic** and every
report that prints them says so.

The simulation (all draws from one seeded generator):

* **Content.** Each clip has a latent content vector ``z`` (``latent_dim``): its class's mean,
  one of ``modes_per_class`` sub-modes of that class (a dog barking vs a dog panting), and
  clip-level variation. Class means share "super-class" components (machines, animals/people,
  events, water), so classes overlap; sub-modes make each class multi-modal, which a linear map
  cannot untangle.
* **Audio** (128-d, VGGish-like): ``z`` plus an audio-only nuisance (recording conditions)
  through a random two-layer non-linear map, plus noise, then quantised to uint8 and
  de-quantised ``(x - 128) / 256`` exactly as the community features.
* **Visual** (1024-d, Inception-pool-like, non-negative and sparse): ``z`` plus a visual-only
  nuisance through its own random non-linear map (ReLU output), plus noise.
* **Mixed clips.** Web clips are weakly labelled: a 10-second VEGAS clip carries one class, but
  its event often fills only part of the clip, the rest being other sounds and scenes. A fraction
  ``mixed_fraction`` of clips is a temporal mix: the labelled event fills a share ``s ~ U(mix_min,
  1)`` of the clip and another class's content fills the rest. Because the community features are
  mean-pooled over time, such a clip's audio and visual features are ``s·f(event) + (1-s)·f(other)``;
  its teacher frames show the event in ``round(s·T)`` frames. The label (train and test) is the
  labelled class. A teacher that sees the frames can tell how much of a clip is its event — graded
  knowledge the binary labels do not carry (``mixed_fraction=0`` turns this off and reproduces the
  unmixed data set exactly).
* **Corruption.** A fraction of clips have a corrupted modality: off-screen sound (audio made from
  an unrelated content vector) or an uninformative picture (title card / black frames).
* **Label noise.** Like VEGAS, whose labels come from weak web annotation, a fraction of the
  *training* labels are flipped (the ``test`` labels are the true classes, so the evaluation is
  clean). The teacher and all students see the same noisy training labels.
* **Teacher view.** A sequence of ``teacher_frames`` per-frame 512-d L2-normalised embeddings,
  like a CLIP image encoder would give: a linear view of ``z`` with small per-frame drift and
  little noise, no modality nuisance, and only half of the frames affected when the picture is
  corrupted. It is cleaner than the raw features, so a teacher that sees it has knowledge to
  transfer.

Class sizes follow an imbalance of about 1:2.2 like VEGAS's, and the test split is the VEGAS
ratio 5,621 / 28,103. The exact VEGAS per-class counts were not available offline, so the
proportions are illustrative, not the published ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from avret.data.dataset import AVDataset
from avret.data.h5 import VEGAS_CLASSES
from avret.errors import DataError

# Illustrative relative class sizes (sum 1); see the module docstring.
CLASS_PROPORTIONS = np.array([0.078, 0.090, 0.104, 0.118, 0.124, 0.101, 0.074, 0.137, 0.077, 0.097])
# Super-classes that make class means overlap: machines, animals/people, impulsive events, water.
SUPER_CLASS = np.array([1, 0, 1, 2, 2, 0, 0, 0, 1, 3])
VEGAS_TEST_FRACTION = 5621 / 28103


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the simulation; the defaults give the embedded default data set."""

    n_clips: int = 6000
    seed: int = 0
    latent_dim: int = 32
    modes_per_class: int = 3
    class_separation: float = 1.0
    super_class_weight: float = 0.9
    mode_spread: float = 0.75
    clip_variation: float = 0.6
    nuisance_dim: int = 8
    nuisance_scale: float = 1.5
    audio_noise: float = 0.5
    visual_noise: float = 0.5
    corrupt_fraction: float = 0.08
    label_noise: float = 0.10
    mixed_fraction: float = 0.5
    mix_min: float = 0.5
    teacher_frames: int = 8
    teacher_dim: int = 512
    teacher_noise: float = 0.15
    audio_dim: int = 128
    visual_dim: int = 1024
    test_fraction: float = VEGAS_TEST_FRACTION

    @classmethod
    def preset(cls, name: str = "default", **overrides: float) -> SynthConfig:
        """Named settings used by the benchmarks: ``default``, ``hard`` (noisier), ``light`` (cleaner), ``large``."""
        presets = {
            "default": {},
            "hard": {"audio_noise": 0.8, "visual_noise": 0.8, "corrupt_fraction": 0.15, "label_noise": 0.2},
            "light": {"audio_noise": 0.4, "visual_noise": 0.4, "corrupt_fraction": 0.05, "label_noise": 0.05},
            "large": {"n_clips": 28103},
        }
        if name not in presets:
            raise ValueError(f"unknown vegas-synth preset '{name}', expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


def _random_map(rng: np.random.Generator, d_in: int, d_hidden: int, d_out: int) -> tuple[np.ndarray, ...]:
    w1 = rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_hidden))
    b1 = rng.normal(0, 0.5, d_hidden)
    w2 = rng.normal(0, 1 / np.sqrt(d_hidden), (d_hidden, d_out))
    return w1, b1, w2


def _apply_map(x: np.ndarray, params: tuple[np.ndarray, ...], hidden_act) -> np.ndarray:
    w1, b1, w2 = params
    return hidden_act(x @ w1 + b1) @ w2


def _mean_pooled(share: np.ndarray, event: np.ndarray, other: Callable[[], np.ndarray]) -> np.ndarray:
    """Time-mean-pooled features of clips whose labelled event fills ``share`` of the clip."""
    if (share == 1.0).all():
        return event
    return share[:, None] * event + (1.0 - share[:, None]) * other()


def _class_sizes(n: int) -> np.ndarray:
    sizes = np.floor(CLASS_PROPORTIONS * n).astype(int)
    sizes[np.argsort(-CLASS_PROPORTIONS)[: n - sizes.sum()]] += 1
    return sizes


MIN_SYNTH_CLIPS, MAX_SYNTH_CLIPS = 50, 1_000_000  # a few clips per class .. what fits a 24 GiB machine


def make_vegas_synth(config: SynthConfig | None = None) -> AVDataset:
    """Generate the synthetic data set described in the module docstring (deterministic)."""
    cfg = config or SynthConfig()
    if not isinstance(cfg.n_clips, int) or not MIN_SYNTH_CLIPS <= cfg.n_clips <= MAX_SYNTH_CLIPS:
        raise DataError(f"vegas-synth n_clips (--synth-clips) is {cfg.n_clips}; "
                        f"expected {MIN_SYNTH_CLIPS}..{MAX_SYNTH_CLIPS}")
    rng = np.random.default_rng(cfg.seed)
    n_cls, d = len(VEGAS_CLASSES), cfg.latent_dim

    # Content: super-class + class + sub-mode means, then clip-level variation.
    super_means = rng.normal(0, 1, (SUPER_CLASS.max() + 1, d))
    class_means = cfg.class_separation * (
        cfg.super_class_weight * super_means[SUPER_CLASS] + rng.normal(0, 1, (n_cls, d))
    )
    mode_means = class_means[:, None, :] + cfg.mode_spread * rng.normal(0, 1, (n_cls, cfg.modes_per_class, d))
    labels = np.repeat(np.arange(n_cls), _class_sizes(cfg.n_clips))
    labels = labels[rng.permutation(len(labels))]
    n = len(labels)
    modes = rng.integers(0, cfg.modes_per_class, n)
    z = mode_means[labels, modes] + cfg.clip_variation * rng.normal(0, 1, (n, d))

    # Mixed clips: the labelled event fills only a share ``s`` of the clip; the rest is another class.
    # (its own generator, so that ``mixed_fraction=0`` reproduces the unmixed data set exactly)
    mix_rng = np.random.default_rng([cfg.seed, 1])
    mixed = mix_rng.random(n) < cfg.mixed_fraction
    other = (labels + mix_rng.integers(1, n_cls, n)) % n_cls
    z_other = (mode_means[other, mix_rng.integers(0, cfg.modes_per_class, n)]
               + cfg.clip_variation * mix_rng.normal(0, 1, (n, d)))
    share = np.where(mixed, mix_rng.uniform(cfg.mix_min, 1.0, n), 1.0)

    # Corruption: content seen by a corrupted modality is unrelated to the clip's class.
    unrelated = rng.normal(0, 1.5, (n, d))
    audio_bad = rng.random(n) < cfg.corrupt_fraction
    visual_bad = rng.random(n) < cfg.corrupt_fraction
    z_audio = np.where(audio_bad[:, None], unrelated, z)
    z_visual = np.where(visual_bad[:, None], 0.2 * unrelated, z)  # title card: weak, unrelated

    gelu = lambda x: x * 0.5 * (1.0 + np.tanh(0.79788456 * (x + 0.044715 * x**3)))  # noqa: E731
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731

    # Audio: VGGish-like 128-d, quantised to uint8 and de-quantised as the community files.
    audio_map = _random_map(rng, d + cfg.nuisance_dim, 256, cfg.audio_dim)
    nuis_a = cfg.nuisance_scale * rng.normal(0, 1, (n, cfg.nuisance_dim))
    audio = _mean_pooled(share, _apply_map(np.concatenate([z_audio, nuis_a], 1), audio_map, np.tanh),
                         lambda: _apply_map(np.concatenate([z_other, nuis_a], 1), audio_map, np.tanh))
    audio += cfg.audio_noise * rng.normal(0, 1, audio.shape) * audio.std()
    audio = audio / (5 * audio.std())
    audio_u8 = np.clip(np.round(audio * 256 + 128), 0, 255).astype(np.uint8)
    audio = (audio_u8.astype(np.float32) - 128.0) / 256.0

    # Visual: Inception-pool-like 1024-d, non-negative.
    visual_map = _random_map(rng, d + cfg.nuisance_dim, 512, cfg.visual_dim)
    nuis_v = cfg.nuisance_scale * rng.normal(0, 1, (n, cfg.nuisance_dim))
    visual = _mean_pooled(share, _apply_map(np.concatenate([z_visual, nuis_v], 1), visual_map, gelu),
                          lambda: _apply_map(np.concatenate([z_other, nuis_v], 1), visual_map, gelu))
    visual += cfg.visual_noise * rng.normal(0, 1, visual.shape) * visual.std()
    visual = relu(visual - 0.25 * visual.std()).astype(np.float32)

    # Teacher view: clean per-frame embeddings (CLIP-like, unit norm).
    proj = rng.normal(0, 1 / np.sqrt(d), (d, cfg.teacher_dim))
    t = cfg.teacher_frames
    drift = 0.3 * rng.normal(0, 1, (n, t, d))
    frame_content = z[:, None, :] + drift
    if mixed.any():  # a mixed clip shows its labelled event in round(share * t) of its frames (at least one)
        n_event = np.maximum(1, np.round(share * t)).astype(int)
        event_frame = mix_rng.random((n, t)).argsort(1).argsort(1) < n_event[:, None]
        frame_content = np.where(event_frame[..., None], frame_content, z_other[:, None, :] + drift)
    bad_frames = visual_bad[:, None] & (np.arange(t)[None, :] % 2 == 0)
    frame_content = np.where(bad_frames[..., None], 0.2 * unrelated[:, None, :], frame_content)
    frames = frame_content @ proj
    frames += cfg.teacher_noise * rng.normal(0, 1, frames.shape) * frames.std()
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True) + 1e-8

    # Split (stratified, VEGAS ratio) and training-label noise.
    split = np.full(n, "train", dtype=object)
    for c in range(n_cls):
        rows = rng.permutation(np.flatnonzero(labels == c))
        split[rows[: int(round(cfg.test_fraction * len(rows)))]] = "test"
    observed = labels.copy()
    flip = (split == "train") & (rng.random(n) < cfg.label_noise)
    observed[flip] = (labels[flip] + rng.integers(1, n_cls, flip.sum())) % n_cls

    return AVDataset(
        name="vegas-synth",
        clip_ids=np.asarray([f"synth_{i:06d}" for i in range(n)]),
        labels=observed,
        class_names=list(VEGAS_CLASSES),
        audio=audio,
        visual=visual,
        split=split.astype(str),
        teacher_frames=frames.astype(np.float32),
        synthetic=True,
        source=f"vegas-synth(seed={cfg.seed}, n_clips={cfg.n_clips})",
        meta={
            "synth_config": asdict(cfg),
            "true_labels": labels,
            "audio_corrupted": audio_bad,
            "visual_corrupted": visual_bad,
            "event_share": share,
        },
    )
