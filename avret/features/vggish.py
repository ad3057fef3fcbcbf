"""The VGGish network in PyTorch, loading the harritaylor/torchvggish checkpoint layout from a local file.

Layout (``vggish-10086976.pth``): ``features`` is ``[conv 64, relu, pool, conv 128, relu, pool,
conv 256, relu, conv 256, relu, pool, conv 512, relu, conv 512, relu, pool]`` so the convolutions
are ``features.{0,3,6,8,11,13}`` (3x3, padding 1) and the pools 2x2; ``embeddings`` is
``[linear 12288->4096, relu, linear 4096->4096, relu, linear 4096->128, relu]``, i.e.
``embeddings.{0,2,4}``. The final ReLU is kept as in torchvggish (the original TF-slim release,
from which both the checkpoint and the released AudioSet embeddings come, had it too). Before
flattening, the conv output is put in TF's NHWC order so the first linear layer's weights match.

The widths are read from the checkpoint's tensor shapes, so the real checkpoint gives the real
72M-parameter network, and a reduced-width checkpoint with the same layout (as the tests save)
gives a small one.

Optional postprocessing (``vggish_pca_params-970ea276.pth``: ``pca_eigen_vectors`` (128, 128),
``pca_means`` (128,) or (128, 1)). torchvggish's released file holds them as *numpy* arrays (its
hub loader converts them, "TODO: Convert the state_dict to torch"), which ``torch.load(weights_only=True)``
refuses by default: they are read with exactly numpy's array-rebuilding globals allowed
(:data:`NUMPY_ARRAY_GLOBALS`, under the numpy 1 and 2 module names), nothing else, so no pickled
code runs. A ``.npz`` with the same keys, or tensors, read too. PCA + whitening, clip to [-2, 2],
quantise to 0..255, as the
released AudioSet / VEGAS uint8 features. :meth:`VGGishEmbedder.clip_feature` averages over the
0.96 s examples and, for postprocessed features, de-quantises as ``(x - 128) / 256`` exactly as
:func:`avret.data.folder.dequantize` does for community uint8 features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avret.errors import ModelError
from avret.features.vggish_frontend import EXAMPLE_FRAMES, NUM_MEL_BINS

CONV_INDICES = (0, 3, 6, 8, 11, 13)
LINEAR_INDICES = (0, 2, 4)
#: Channels of the six convolutions and widths of the three linear layers of the real VGGish.
VGGISH_CHANNELS = (64, 128, 256, 256, 512, 512)
VGGISH_HIDDEN = (4096, 4096, 128)
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0
EMBEDDING_SIZE = 128


class VGGish(nn.Module):
    """VGGish (Hershey et al. 2017) with the torchvggish parameter names; input ``(N, 1, 96, 64)``."""

    def __init__(
        self,
        channels: tuple[int, ...] = VGGISH_CHANNELS,
        hidden: tuple[int, ...] = VGGISH_HIDDEN,
    ) -> None:
        super().__init__()
        if len(channels) != 6 or len(hidden) != 3:
            raise ValueError(f"VGGish needs 6 conv channels and 3 linear widths, got {channels}, {hidden}")
        layers: list[nn.Module] = []
        c_in = 1
        c = channels
        plan = [c[0], "M", c[1], "M", c[2], c[3], "M", c[4], c[5], "M"]
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        flat = c_in * (EXAMPLE_FRAMES // 16) * (NUM_MEL_BINS // 16)  # 512 * 6 * 4 for the real net
        self.embeddings = nn.Sequential(
            nn.Linear(flat, hidden[0]),
            nn.ReLU(True),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(True),
            nn.Linear(hidden[1], hidden[2]),
            nn.ReLU(True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 96, 64)`` log-mel examples -> ``(N, 128)`` embeddings."""
        x = self.features(x)  # (N, C, 6, 4)
        x = x.permute(0, 2, 3, 1).contiguous()  # NHWC as in TF, so embeddings.0 matches
        return self.embeddings(x.flatten(1))


def _numpy_array_globals() -> list[Any]:
    """The globals a pickled numpy array needs, under numpy 2's and numpy 1's module names."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return [np.ndarray, np.dtype, reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"),
            *(type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1"))]


#: Globals allowed when reading torchvggish files: numpy arrays of plain dtypes and nothing else.
NUMPY_ARRAY_GLOBALS = _numpy_array_globals()


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: {what} file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem
        raise ModelError(f"{path}: not a readable {what} checkpoint ({type(exc).__name__}); expected torchvggish's "
                         ".pth (tensors or numpy arrays) or a .npz") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict):  # torchvggish's PCA file holds numpy arrays
        obj = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) and v.dtype.kind in "fiu"
               else v for k, v in obj.items()}
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ModelError(f"{path}: expected a {what} state dict (name -> tensor)")
    return obj


def vggish_from_state_dict(state: dict[str, torch.Tensor], source: str = "checkpoint") -> VGGish:
    """Build a :class:`VGGish` whose widths match ``state`` and load it strictly."""
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("pproc.")}
    try:
        channels = tuple(int(state[f"features.{i}.weight"].shape[0]) for i in CONV_INDICES)
        hidden = tuple(int(state[f"embeddings.{i}.weight"].shape[0]) for i in LINEAR_INDICES)
    except KeyError as exc:
        raise ModelError(
            f"{source}: missing {exc.args[0]}; expected the torchvggish layout "
            "(features.{0,3,6,8,11,13}.weight, embeddings.{0,2,4}.weight)"
        ) from None
    if hidden[-1] != EMBEDDING_SIZE:
        raise ModelError(f"{source}: embeddings.4 gives {hidden[-1]}-d output, expected {EMBEDDING_SIZE}")
    with torch.device("meta"):  # no wasted random init: every tensor comes from the checkpoint
        model = VGGish(channels, hidden)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]
        raise ModelError(f"{source}: does not fit the VGGish layout ({detail})") from None
    return model.eval()


def load_pca_params(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigen_vectors (128, 128), means (128, 1))`` from a torchvggish pca params file (.pth or .npz)."""
    path = Path(path)
    state = _load_tensors(path, "VGGish PCA params")
    try:
        vecs = state["pca_eigen_vectors"].to(torch.float32)
        means = state["pca_means"].to(torch.float32).reshape(-1, 1)
    except KeyError as exc:
        missing = exc.args[0]
        raise ModelError(f"{path}: missing '{missing}'; expected pca_eigen_vectors and pca_means") from None
    if vecs.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.shape != (EMBEDDING_SIZE, 1):
        raise ModelError(
            f"{path}: pca_eigen_vectors {tuple(vecs.shape)} / pca_means {tuple(means.shape)}, "
            f"expected ({EMBEDDING_SIZE}, {EMBEDDING_SIZE}) / ({EMBEDDING_SIZE},)"
        )
    return vecs, means


class VGGishEmbedder:
    """A loaded VGGish (+ optional PCA/quantisation) on a device; embeds log-mel examples in batches."""

    def __init__(
        self,
        model: VGGish,
        pca: tuple[torch.Tensor, torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.pca = None if pca is None else (pca[0].to(self.device), pca[1].to(self.device))

    @property
    def postprocessed(self) -> bool:
        """True when embeddings are PCA'd and quantised to the 0..255 range."""
        return self.pca is not None

    def postprocess(self, emb: torch.Tensor) -> torch.Tensor:
        """PCA + clip + quantise exactly as torchvggish's ``Postprocessor`` (float values 0..255)."""
        assert self.pca is not None
        vecs, means = self.pca
        pca_applied = (vecs @ (emb.t() - means)).t()
        clipped = torch.clamp(pca_applied, QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))

    @torch.inference_mode()
    def embed(self, examples: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """``(n, 96, 64)`` examples -> ``(n, 128)`` float32 (0..255 valued when postprocessed)."""
        outs = []
        for i in range(0, examples.shape[0], batch_size):
            x = examples[i : i + batch_size].to(self.device, torch.float32).unsqueeze(1)
            emb = self.model(x)
            if self.pca is not None:
                emb = self.postprocess(emb)
            outs.append(emb.float().cpu())
        if not outs:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        return torch.cat(outs).numpy()

    def clip_feature(self, example_embeddings: np.ndarray) -> np.ndarray:
        """Per-clip feature: mean over examples; postprocessed ones de-quantised as ``(x - 128) / 256``."""
        emb = example_embeddings.astype(np.float32)
        if self.postprocessed:
            emb = (emb - 128.0) / 256.0
        return emb.mean(axis=0).astype(np.float32)


def load_vggish(
    weights: str | Path, pca: str | Path | None = None, device: str | torch.device = "cpu"
) -> VGGishEmbedder:
    """Load a torchvggish-layout checkpoint (and optional PCA params) from local paths.

    A missing, unreadable or mismatched file raises :class:`ModelError` naming the file.
    """
    weights = Path(weights)
    model = vggish_from_state_dict(_load_tensors(weights, "VGGish weights"), source=str(weights))
    return VGGishEmbedder(model, load_pca_params(pca) if pca is not None else None, device=device)
