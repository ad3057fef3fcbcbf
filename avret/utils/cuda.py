"""Whether torch sees a CUDA GPU, asked without importing torch on a machine that has no NVIDIA driver.

``avret search`` by clip id and ``avret eval`` on a CPU-only machine must not pay torch's import
just to learn that there is no GPU: torch is imported only when it already is, or when the NVIDIA
driver is present (``/proc/driver/nvidia``), or when ``AVRET_TORCH_PROBE=1`` asks for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cuda_visible() -> bool:
    """True when torch is installed and ``torch.cuda.is_available()``; never raises."""
    if "torch" not in sys.modules and not Path("/proc/driver/nvidia").exists() and \
            os.environ.get("AVRET_TORCH_PROBE") != "1":
        return False
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not break CPU use
        return False
