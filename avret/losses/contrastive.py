"""The supervised cross-modal training objective of the towers.

Two terms, both standard in current supervised cross-modal retrieval:

* **Cross-modal supervised contrastive loss** (SupCon, Khosla et al. 2020, applied across
  modalities): for an audio anchor, every visual item of the same class in the batch is a
  positive and all visual items form the denominator; symmetric for visual anchors. Unlike a
  pairwise InfoNCE (CLIP) it does not push apart same-class clips, which is what class-level
  retrieval (relevant = same class) rewards; unlike triplet losses it uses every pair in the batch.
* **Shared prototype classifier** (as in DSCMR, Zhen et al. 2019): one set of class prototypes
  for both modalities; cosine logits, cross-entropy. It ties both modalities to the same class
  anchors in the common space and stabilises training on small batches.

The prototypes are a training-only head: they are not part of the saved towers.

With several processes (torchrun) the towers' trainer hands :class:`RetrievalObjective` the
embeddings of the *global* batch, all-gathered with gradients (:mod:`avret.train.distributed`), so
every anchor's denominator holds the clips of every rank: N processes with batch b optimise the
objective of one process with batch N·b. Nothing here depends on that.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def cross_modal_supcon(
    queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over anchors of -mean_{positives} log softmax(sim / T); anchors without positives skipped."""
    logits = queries @ keys.T / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]).float()
    n_pos = positive.sum(1)
    has_pos = n_pos > 0
    per_anchor = -(log_prob * positive).sum(1)[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


class PrototypeClassifier(nn.Module):
    """Cosine classifier shared by both modalities (training-only head)."""

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_classes, embed_dim) / embed_dim**0.5)
        self.scale = scale

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * embeddings @ F.normalize(self.prototypes, dim=-1).T


class RetrievalObjective(nn.Module):
    """SupCon across modalities (both directions) + ``classifier_weight`` × prototype CE."""

    def __init__(self, embed_dim: int, num_classes: int, temperature: float = 0.1,
                 classifier_weight: float = 0.5) -> None:
        super().__init__()
        self.temperature = temperature
        self.classifier_weight = classifier_weight
        self.classifier = PrototypeClassifier(embed_dim, num_classes)

    def forward(
        self, audio: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        con = 0.5 * (
            cross_modal_supcon(audio, visual, labels, self.temperature)
            + cross_modal_supcon(visual, audio, labels, self.temperature)
        )
        ce = 0.5 * (F.cross_entropy(self.classifier(audio), labels) + F.cross_entropy(self.classifier(visual), labels))
        loss = con + self.classifier_weight * ce
        return loss, {"supcon": con.item(), "proto_ce": ce.item()}
