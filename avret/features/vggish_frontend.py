"""The VGGish audio front end: 16 kHz waveform -> log-mel examples of shape (n, 96, 64).

Reproduces ``vggish_input.waveform_to_examples`` / ``mel_features.log_mel_spectrogram`` of the
reference (tensorflow/models research/audioset/vggish, ported unchanged by harritaylor/torchvggish):

* frames of 25 ms (400 samples) every 10 ms (160 samples), no centre padding, so a waveform of
  ``n`` samples gives ``1 + (n - 400) // 160`` frames;
* periodic Hann window, each windowed frame zero-padded at the end to the FFT size 512;
* magnitude (not power) spectrogram, 257 bins;
* 64 mel bands from 125 to 7,500 Hz on the HTK mel scale ``1127 ln(1 + f / 700)``, with filters
  that are triangles **in the mel domain** and a zeroed DC row;
* ``log(mel + 0.01)``;
* non-overlapping examples of 96 frames (0.96 s); a trailing partial example is dropped.

The STFT is :func:`torchaudio.functional.spectrogram` with the 400-sample window zero-padded on the
right to 512 and the waveform padded with 112 zeros at the end: that gives exactly the reference's
frame count and frame contents (torch's own centring of a shorter window would shift every frame
by 56 samples). The mel matrix is built here rather than with
:func:`torchaudio.functional.melscale_fbanks`, whose triangles are linear in Hz, not in mel, and
would differ from the reference by up to a few percent per band.

A waveform shorter than one example (0.975 s = 15,600 samples) is zero-padded at the end to one
example, so every clip with audio gets at least one VGGish embedding; the padding is silence and
shows as ``log(0.01)`` in the padded frames.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import numpy as np
import torch

SAMPLE_RATE = 16_000
STFT_WINDOW_SAMPLES = 400  # 25 ms
STFT_HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512  # 2 ** ceil(log2(400))
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s at 100 frames/s
EXAMPLE_HOP_FRAMES = 96  # non-overlapping
EXAMPLE_SECONDS = EXAMPLE_FRAMES * STFT_HOP_SAMPLES / SAMPLE_RATE
#: Samples needed for exactly one example: 400 + 95 * 160.
MIN_SAMPLES = STFT_WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * STFT_HOP_SAMPLES


def hertz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale as written in the VGGish reference: ``1127 * ln(1 + hz / 700)``."""
    return 1127.0 * torch.log1p(hz / 700.0)


@functools.lru_cache(maxsize=4)
def mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = FFT_SIZE // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> torch.Tensor:
    """``(num_spectrogram_bins, num_mel_bins)`` float64 weights, as ``spectrogram_to_mel_matrix``."""
    nyquist = sample_rate / 2.0
    bins_mel = hertz_to_mel(torch.linspace(0.0, nyquist, num_spectrogram_bins, dtype=torch.float64))
    edges = torch.linspace(
        float(hertz_to_mel(torch.tensor(lower_hz, dtype=torch.float64))),
        float(hertz_to_mel(torch.tensor(upper_hz, dtype=torch.float64))),
        num_mel_bins + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    lower_slope = (bins_mel[:, None] - lower) / (center - lower)
    upper_slope = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(lower_slope, upper_slope), min=0.0)
    weights[0, :] = 0.0  # the reference zeroes the DC bin
    return weights


@functools.lru_cache(maxsize=1)
def _padded_window() -> torch.Tensor:
    win = torch.hann_window(STFT_WINDOW_SAMPLES, periodic=True, dtype=torch.float64)
    return torch.nn.functional.pad(win, (0, FFT_SIZE - STFT_WINDOW_SAMPLES))


def log_mel_spectrogram(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(frames, 64)`` float64 log-mel spectrogram of a 16 kHz mono waveform (reference front end)."""
    import torchaudio.functional as AF

    wave = torch.as_tensor(np.asarray(waveform) if not torch.is_tensor(waveform) else waveform)
    wave = wave.to(torch.float64).reshape(-1)
    if wave.numel() < STFT_WINDOW_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, STFT_WINDOW_SAMPLES - wave.numel()))
    wave = torch.nn.functional.pad(wave, (0, FFT_SIZE - STFT_WINDOW_SAMPLES))
    spec = AF.spectrogram(
        wave,
        pad=0,
        window=_padded_window(),
        n_fft=FFT_SIZE,
        hop_length=STFT_HOP_SAMPLES,
        win_length=FFT_SIZE,
        power=1.0,
        normalized=False,
        center=False,
    )  # (257, frames)
    mel = spec.transpose(0, 1) @ mel_matrix()
    return torch.log(mel + LOG_OFFSET)


def waveform_to_examples(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(n_examples, 96, 64)`` float32 VGGish input examples of a 16 kHz mono waveform.

    Waveforms shorter than one example are zero-padded to exactly one (see module docstring).
    """
    wave = torch.as_tensor(np.asarray(waveform) if not torch.is_tensor(waveform) else waveform)
    wave = wave.reshape(-1)
    if wave.numel() < MIN_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - wave.numel()))
    log_mel = log_mel_spectrogram(wave)
    n = 1 + (log_mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_HOP_FRAMES
    examples = log_mel.unfold(0, EXAMPLE_FRAMES, EXAMPLE_HOP_FRAMES)[:n]  # (n, 64, 96)
    return examples.transpose(1, 2).contiguous().to(torch.float32)


#: Samples between the starts of two consecutive examples (96 frames of 160 samples).
EXAMPLE_HOP_SAMPLES = EXAMPLE_HOP_FRAMES * STFT_HOP_SAMPLES


def iter_examples(chunks: Iterable[torch.Tensor | np.ndarray]) -> Iterator[torch.Tensor]:
    """:func:`waveform_to_examples` of a waveform given in consecutive chunks, yielded chunk by chunk.

    Example ``k`` reads samples ``[k * 15360, k * 15360 + 15600)`` only, so computing the complete
    examples of what has arrived and keeping the (< 1 example) rest gives exactly the examples of the
    whole waveform, holding one chunk at a time. Yields ``(m, 96, 64)`` float32 tensors (``m >= 1``);
    a waveform shorter than one example still gives one zero-padded example, as the whole would.
    """
    rest = torch.zeros(0, dtype=torch.float32)
    produced = False
    for chunk in chunks:
        x = torch.as_tensor(np.asarray(chunk) if not torch.is_tensor(chunk) else chunk).reshape(-1)
        rest = torch.cat([rest, x.to(rest.dtype)]) if rest.numel() else x.to(torch.float32)
        m = (rest.numel() - (MIN_SAMPLES - EXAMPLE_HOP_SAMPLES)) // EXAMPLE_HOP_SAMPLES
        if m >= 1:
            head = rest[: m * EXAMPLE_HOP_SAMPLES + MIN_SAMPLES - EXAMPLE_HOP_SAMPLES]
            yield waveform_to_examples(head)
            produced = True
            rest = rest[m * EXAMPLE_HOP_SAMPLES:].clone()
    if not produced:  # what is left after complete examples is always shorter than one example
        yield waveform_to_examples(rest)
