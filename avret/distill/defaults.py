"""Default settings of the MSD and MI-KD methods, in a module that imports nothing heavy.

The CLI shows them as option defaults without importing torch; :mod:`avret.distill.msd` and
:mod:`avret.distill.mikd` use them as the methods' defaults.
"""

from __future__ import annotations

from typing import Any

MSD_DEFAULTS: dict[str, Any] = {
    "msd_weighting": "instance",
    "msd_fusion": "sum",
    "msd_teacher_epochs": 30,
    "msd_teacher_hidden": 256,
    "msd_meta_lr": 0.02,
    "msd_meta_inner_lr": 0.1,
}

MIKD_DEFAULTS: dict[str, Any] = {
    "mi_weights": [0.5, 0.5, 0.1],
    "mi_teacher_ce": 1.0,
    "mi_temperature": 0.1,
    "mi_proj_dim": 64,
    "mi_hidden": 256,
    "mi_disc_lr": 1e-3,
    "mi_fusion": "sum",
}
