"""Reusable media fixtures (plain functions): tiny random-weight extractors and a labelled media set.

``make_tiny_extractors(dir)`` saves a tiny VGGish (the real layout with reduced widths) and a tiny
open_clip model to local files, the way users pass real weights; ``build_media_index(dir)`` runs
features extract → train → index build through the library on the clips of
:func:`avret.features.synthetic_media.write_labelled_media`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_FRAMES_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_extractors(d: Path) -> dict[str, Path]:
    """Tiny seeded VGGish + open_clip weights under ``d``; returns their paths (``vggish``, ``clip_cfg``, ``clip``)."""
    from avret.features.vggish import VGGish
    from avret.models.clip import load_clip

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(VGGish((4, 4, 8, 8, 8, 8), (16, 16, 128)).state_dict(), d / "vggish.pth")
    cfg = d / "avret-tiny-frames-clip.json"
    cfg.write_text(json.dumps(TINY_FRAMES_CLIP))
    torch.save(load_clip(str(cfg), None, allow_random=True).state_dict(), d / "tiny_clip.pt")
    return {"vggish": d / "vggish.pth", "clip_cfg": cfg, "clip": d / "tiny_clip.pt"}


def build_media_index(d: Path, n: int = 12) -> dict[str, Path]:
    """features extract → train (2 epochs) → index build over generated media; returns the paths."""
    from avret.data.folder import load_folder
    from avret.features.extract import ExtractConfig, extract_features
    from avret.features.synthetic_media import write_labelled_media
    from avret.index.build import build_indexes
    from avret.io import load_model
    from avret.train.runs import train_run
    from avret.train.tower_training import TrainConfig

    models = make_tiny_extractors(d / "models")
    media, _ = write_labelled_media(d, n)
    feats, run, index = d / "feats", d / "run", d / "index"
    cfg = ExtractConfig(vggish=models["vggish"], clip_model=str(models["clip_cfg"]), clip_weights=models["clip"],
                        fps=1.0, max_frames=2, workers=0, device="cpu", labels=d / "labels.csv")
    extract_features([media], feats, cfg)
    ds = load_folder(feats)
    train_run(ds, run, "towers", TrainConfig(epochs=2, batch_size=8, seed=0))
    build_indexes(load_model(run / "model"), ds, index, device="cpu")
    return {"media": media, "feats": feats, "run": run, "index": index, **models}
