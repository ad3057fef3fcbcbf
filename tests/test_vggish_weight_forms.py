"""The VGGish loader reads torchvggish's files as released: ``vggish-10086976.pth`` and its PCA params.

The files are written here in exactly that form (torchvggish's key names; the 2019 legacy torch
format; the PCA params as *numpy* arrays, ``pca_means`` of shape (128,), as the released file holds
them, pickled under numpy 1's module name ``numpy.core`` as well as numpy 2's) with reduced widths,
and the embeddings are compared with torchvggish's own network and postprocessor, transcribed below.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avret.errors import ModelError
from avret.features.vggish import load_pca_params, load_vggish

CHANNELS = (4, 4, 8, 8, 8, 8)
HIDDEN = (16, 16, 128)


class TorchVGGishReference(nn.Module):
    """harritaylor/torchvggish ``VGG`` + ``Postprocessor`` (torchvggish/vggish.py), widths as parameters."""

    def __init__(self) -> None:
        super().__init__()
        layers, c_in = [], 1
        for v in [CHANNELS[0], "M", CHANNELS[1], "M", CHANNELS[2], CHANNELS[3], "M", CHANNELS[4], CHANNELS[5], "M"]:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(c_in * 4 * 6, HIDDEN[0]), nn.ReLU(True), nn.Linear(*HIDDEN[:2]),
                                        nn.ReLU(True), nn.Linear(*HIDDEN[1:]), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.transpose(x, 1, 3)
        x = torch.transpose(x, 1, 2)
        x = x.contiguous()
        x = x.view(x.size(0), -1)
        return self.embeddings(x)

    @staticmethod
    def postprocess(emb: torch.Tensor, vecs: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        pca_applied = torch.mm(vecs, (emb.t() - means)).t()
        clipped = torch.clamp(pca_applied, -2.0, 2.0)
        return torch.round((clipped - -2.0) * (255.0 / (2.0 - -2.0)))


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("torchvggish")
    torch.manual_seed(0)
    ref = TorchVGGishReference().eval()
    state = OrderedDict((k, v.clone()) for k, v in ref.state_dict().items())
    torch.save(state, d / "vggish-10086976.pth", _use_new_zipfile_serialization=False)  # the 2019 format
    rng = np.random.default_rng(0)
    vecs = np.linalg.qr(rng.standard_normal((128, 128)))[0] * 8  # float64, as released
    means = rng.standard_normal(128) * 0.1  # (128,): torchvggish reshapes it to (128, 1)
    pca = d / "vggish_pca_params-970ea276.pth"
    torch.save({"pca_eigen_vectors": vecs, "pca_means": means}, pca, _use_new_zipfile_serialization=False)
    # the same file as numpy 1 pickled it (module numpy.core, not numpy._core)
    old = d / "numpy1" / pca.name
    old.parent.mkdir()
    data = pca.read_bytes()
    assert b"numpy._core.multiarray" in data
    old.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    examples = torch.randn(5, 96, 64, generator=torch.Generator().manual_seed(1)) * 3
    return {"dir": d, "ref": ref, "vecs": vecs, "means": means, "pca": pca, "pca_numpy1": old, "examples": examples}


def test_torchvggish_weights_give_torchvggish_embeddings(released):
    emb = load_vggish(released["dir"] / "vggish-10086976.pth")
    with torch.no_grad():
        want = released["ref"](released["examples"].unsqueeze(1)).numpy()
    np.testing.assert_allclose(emb.embed(released["examples"]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pca_file", ["pca", "pca_numpy1"])
def test_torchvggish_pca_params_of_numpy_arrays_postprocess_as_torchvggish(released, pca_file):
    emb = load_vggish(released["dir"] / "vggish-10086976.pth", released[pca_file])
    ref = released["ref"]
    vecs = torch.as_tensor(released["vecs"], dtype=torch.float)  # as torchvggish's hub loader converts them
    means = torch.as_tensor(released["means"].reshape(-1, 1), dtype=torch.float)
    with torch.no_grad():
        want = ref.postprocess(ref(released["examples"].unsqueeze(1)), vecs, means).numpy()
    got = emb.embed(released["examples"])
    assert emb.postprocessed and len(np.unique(got)) > 50  # mostly not clipped: the PCA shows
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


class Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/nonexistent-avret-test/should-not-exist"),))


def test_pca_params_with_anything_but_numpy_arrays_are_refused_without_running_it(tmp_path):
    path = tmp_path / "vggish_pca_params-970ea276.pth"
    torch.save({"pca_eigen_vectors": Evil(), "pca_means": np.zeros(128)}, path, pickle_module=pickle)
    with pytest.raises(ModelError, match="not a readable VGGish PCA params checkpoint") as exc:
        load_pca_params(path)
    assert "\n" not in str(exc.value) and not Path("/nonexistent-avret-test").exists()
