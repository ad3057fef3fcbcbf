"""Resolve a data-set argument (a name or a path) to an :class:`AVDataset`.

``vegas-synth`` is generated; ``vegas`` and ``ave`` need the community h5 file (``data=PATH``);
any other argument is a path: an ``.h5``/``.hdf5`` file or a plain-folder layout directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

from avret.data.dataset import AVDataset
from avret.data.folder import load_folder
from avret.data.h5 import load_h5
from avret.data.synth import SynthConfig, make_vegas_synth
from avret.errors import DataError

NAMED = ("vegas-synth", "vegas", "ave")
EXPECTED_CLASSES = {"vegas": 10, "ave": 15}


def dataset_ref(dataset: AVDataset) -> str:
    """A string that :func:`load_dataset` turns back into the same data set (recorded in runs/indexes)."""
    if dataset.synthetic:
        cfg = dataset.meta.get("synth_config", {})
        defaults = asdict(SynthConfig())
        changed = {k: v for k, v in cfg.items() if defaults.get(k) != v}
        return "vegas-synth" + ("" if not changed else ":" + ",".join(f"{k}={v}" for k, v in sorted(changed.items())))
    source = str(Path(dataset.source).resolve()) if dataset.source else dataset.name
    return f"{dataset.name}={source}" if dataset.name in ("vegas", "ave") else source


def is_synthetic_ref(spec: str | None) -> bool:
    """Whether a data-set reference (as :func:`dataset_ref` writes it) names generated, SYNTHETIC data."""
    return spec is not None and (spec == "vegas-synth" or spec.startswith("vegas-synth:"))


def _synth_from_ref(spec: str) -> SynthConfig:
    """Parse ``vegas-synth:key=value,...`` (the form written by :func:`dataset_ref`)."""
    _, _, args = spec.partition(":")
    fields = {f.name: f.type for f in dataclasses.fields(SynthConfig)}
    overrides: dict[str, object] = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise DataError(f"data set '{spec}': unknown vegas-synth option '{key}', expected one of {sorted(fields)}")
        default = getattr(SynthConfig(), key)
        try:
            overrides[key] = type(default)(value)
        except ValueError:
            raise DataError(f"data set '{spec}': option '{key}={value}' is not a {type(default).__name__}") from None
    return SynthConfig(**overrides)


def load_dataset(
    spec: str = "vegas-synth",
    data: str | Path | None = None,
    *,
    synth: SynthConfig | None = None,
    test_code: int | None = None,
) -> AVDataset:
    """Load a data set by name (``vegas-synth``, ``vegas``, ``ave``) or by path."""
    if spec == "vegas-synth" or spec.startswith("vegas-synth:"):
        return make_vegas_synth(synth or _synth_from_ref(spec))
    name, sep, ref_path = spec.partition("=")
    if sep and name in ("vegas", "ave") and data is None:
        spec, data = name, ref_path
    if spec in ("vegas", "ave"):
        if data is None:
            raise DataError(f"--dataset {spec} needs --data PATH to the community h5 feature file")
        ds = load_h5(data, name=spec, test_code=test_code)
        if ds.num_classes != EXPECTED_CLASSES[spec]:
            raise DataError(
                f"{data}: has {ds.num_classes} classes, expected {EXPECTED_CLASSES[spec]} for {spec}"
            )
        return ds
    path = Path(data) if data is not None else Path(spec)
    if path.is_dir():
        return load_folder(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return load_h5(path, test_code=test_code)
    if not path.exists():
        raise DataError(f"data set '{spec}': no such file or directory; expected one of {list(NAMED)} or a path")
    raise DataError(f"{path}: expected an .h5/.hdf5 file or a plain-folder directory (manifest.csv + .npy)")
