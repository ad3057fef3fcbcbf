"""Video encoder of the VideoAdviser teacher: per-frame CLIP image embeddings pooled over time.

The teacher trains on *precomputed* frame embeddings ``(B, T, Dt)`` with a presence mask ``(B, T)`` (the
data set's teacher view); pixels are needed only to compute those embeddings, once, with
:func:`encode_frames` (CLIP's frozen image tower). The encoder then

1. L2-normalises every frame (CLIP features are compared by cosine; this also makes arbitrary
   embeddings scale-free),
2. projects it with a linear layer when ``Dt`` differs from CLIP's joint embedding width ``D``
   (e.g. frames embedded by another CLIP, or a sentence embedding used as a single "frame" where a
   data set has no video); when ``Dt == D`` the frames stay in CLIP space (no projection),
3. pools over time: ``mean`` -- masked mean (absent frames contribute nothing), or ``transformer`` --
   a small pre-norm temporal transformer (``temporal_layers`` layers, learnable positional embedding,
   key padding mask; its blocks are residual, so it starts close to mean pooling) before the masked
   mean (like CLIP4Clip's "seqTransf"),
4. L2-normalises the pooled video embedding ``(B, D)``.

A clip whose mask is all False gets a zero video embedding (and hence uniform class logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avret.errors import DataError

POOLINGS = ("mean", "transformer")

__all__ = ["POOLINGS", "VideoEncoder", "encode_frames", "masked_mean"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (B, T, D)`` over the frames where ``mask (B, T)`` is True; zeros for empty rows."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class VideoEncoder(nn.Module):
    """Frame embeddings ``(B, T, Dt)`` + mask ``(B, T)`` -> unit-norm video embedding ``(B, D)``."""

    def __init__(
        self,
        frame_dim: int,
        embed_dim: int,
        *,
        pooling: str = "mean",
        temporal_layers: int = 1,
        temporal_heads: int = 4,
        max_frames: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise DataError(f"pooling '{pooling}': expected one of {list(POOLINGS)}")
        self.frame_dim = int(frame_dim)
        self.embed_dim = int(embed_dim)
        self.pooling = pooling
        self.max_frames = int(max_frames)
        self.proj: nn.Module = nn.Identity() if frame_dim == embed_dim else nn.Linear(frame_dim, embed_dim)
        if pooling == "transformer":
            heads = max(h for h in range(1, temporal_heads + 1) if embed_dim % h == 0)
            self.pos = nn.Parameter(torch.zeros(max_frames, embed_dim))
            nn.init.normal_(self.pos, std=0.01)
            layer = nn.TransformerEncoderLayer(
                embed_dim,
                heads,
                dim_feedforward=2 * embed_dim,
                dropout=dropout,
                batch_first=True,
                norm_first=True,
            )
            self.temporal = nn.TransformerEncoder(
                layer, num_layers=max(1, int(temporal_layers)), enable_nested_tensor=False
            )

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if frames.ndim != 3 or frames.shape[-1] != self.frame_dim:
            raise DataError(
                f"teacher frames have shape {tuple(frames.shape)}, expected (B, T, {self.frame_dim})"
            )
        b, t, _ = frames.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=frames.device)
        mask = mask.to(device=frames.device, dtype=torch.bool)
        if mask.shape != (b, t):
            raise DataError(f"teacher mask has shape {tuple(mask.shape)}, expected ({b}, {t})")
        x = self.proj(F.normalize(frames, dim=-1))
        if self.pooling == "transformer":
            if t > self.max_frames:
                raise DataError(
                    f"teacher frames have T={t} frames, the temporal transformer allows {self.max_frames}"
                )
            # Rows with no frame at all would give NaN attention; let them attend (masked mean drops them).
            pad = ~mask
            pad = pad & mask.any(dim=1, keepdim=True)
            x = self.temporal(x + self.pos[:t], src_key_padding_mask=pad)  # pre-norm blocks: residual
        return F.normalize(masked_mean(x, mask), dim=-1)


@torch.no_grad()
def encode_frames(
    clip_model: nn.Module, pixels: torch.Tensor, mask: torch.Tensor | None = None, batch_size: int = 256
) -> torch.Tensor:
    """CLIP image embeddings of video frames: ``pixels (B, T, 3, H, W)`` -> ``(B, T, D)``.

    ``pixels`` must already be preprocessed with the model's transform (open_clip's
    ``image_transform``). Absent frames (mask False) are not encoded and come back as zeros. The
    result is what :class:`VideoEncoder` (and the data set's ``teacher_frames``) expects.
    """
    if pixels.ndim != 5:
        raise DataError(f"frame pixels have shape {tuple(pixels.shape)}, expected (B, T, 3, H, W)")
    b, t = pixels.shape[:2]
    mask = torch.ones(b, t, dtype=torch.bool) if mask is None else mask.to(torch.bool).cpu()
    flat = pixels.reshape(b * t, *pixels.shape[2:])
    rows = torch.nonzero(mask.reshape(-1)).squeeze(1)
    device = next(clip_model.parameters()).device
    out: torch.Tensor | None = None
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        emb = clip_model.encode_image(flat[idx].to(device)).float().cpu()
        if out is None:
            out = torch.zeros(b * t, emb.shape[-1])
        out[idx] = emb
    if out is None:
        from avret.models.clip import clip_embed_dim

        out = torch.zeros(b * t, clip_embed_dim(clip_model))
    return out.reshape(b, t, -1)
