"""Data sets: community h5 files, plain folders of .npy features, and the synthetic vegas-synth."""

from avret.data.dataset import AVDataset
from avret.data.registry import dataset_ref, load_dataset
from avret.data.synth import SynthConfig, make_vegas_synth

__all__ = ["AVDataset", "SynthConfig", "dataset_ref", "load_dataset", "make_vegas_synth"]
