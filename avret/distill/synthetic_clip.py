"""The small open_clip architecture used by the teacher on synthetic data.

No pretrained CLIP can be downloaded here, and vegas-synth's teacher view is synthetic anyway, so
on vegas-synth the teacher uses this small CLIP text tower with seeded random weights
(``clip_weights = "random-init"``, refused for real data). The prompt context, meta-net and video
encoder still learn; the teacher's knowledge comes from its cleaner input (the teacher view), not
from CLIP's pretraining. With real data, pass any open_clip architecture and its local weights.
"""

from __future__ import annotations

from avret.distill.clip_loading import register_model_config

SYNTH_CLIP_NAME = "avret-synth-clip"
SYNTH_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_synthetic_clip() -> str:
    """Make :data:`SYNTH_CLIP_NAME` known to open_clip; returns the name."""
    register_model_config(SYNTH_CLIP_NAME, SYNTH_CLIP_CONFIG)
    return SYNTH_CLIP_NAME
