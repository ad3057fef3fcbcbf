"""VideoAdviser step 1: the teacher's classification logits -> a regression logit.

The paper's teacher is a classifier (class logits over prompts), but what is distilled into the
student (step 2) is a *regression* logit. Step 1 turns the first into the second *inside the teacher*,
with a small learned calibration trained on the training split.

Retrieval (:class:`RelevanceHead`)
    The regression target of a pair of clips is their relevance. From the teacher's class posteriors
    ``p_i, p_j`` we use the Bhattacharyya coefficient of temperature-sharpened posteriors::

        p~ = softmax(log p / tau)            (= p^(1/tau), renormalised)
        r_ij = sum_c sqrt(p~_ic * p~_jc)     in [0, 1];  r_ii = 1

    ``tau`` (learnable, ``log tau`` parametrised) calibrates the agreement: ``tau -> 0`` makes ``r`` the
    indicator "same arg-max class", ``tau -> inf`` makes every pair 1. It is fitted by
    :func:`fit_relevance_head` on the pairwise same-class target ``y_ij = [label_i == label_j]`` of
    training clips (i != j), with binary cross-entropy (default; positives and negatives weighted
    equally, ``balanced=True``, since only ~1/C pairs are positive) or MSE. BC is well behaved: bounded,
    symmetric, smooth in both posteriors, no saturation of a sigmoid to tune.

Sentiment: the same step for MOSI/MOSEI (class posteriors over ordered sentiment levels ->
a regression score) lives with the sentiment head, :mod:`avret.sentiment.sentiment_teacher`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from avret.distill.teacher import ArrayLike, Progress, epoch_progress, fit_history
from avret.errors import DataError, ModelError
from avret.losses.relevance import relevance_loss, same_class_targets
from avret.train.loop import FitConfig, fit

__all__ = [
    "RelevanceHead",
    "bhattacharyya_relevance",
    "fit_relevance_head",
]


# ====================================================================== retrieval relevance
def bhattacharyya_relevance(
    posteriors_a: torch.Tensor,
    posteriors_b: torch.Tensor,
    tau: float | torch.Tensor = 1.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """``r[i, j] = BC(p~_a[i], p~_b[j])`` with ``p~ = p^(1/tau)`` renormalised; ``(Na, Nb)`` in [0, 1]."""
    if posteriors_a.ndim != 2 or posteriors_b.ndim != 2 or posteriors_a.shape[1] != posteriors_b.shape[1]:
        raise DataError(
            f"posteriors have shapes {tuple(posteriors_a.shape)} and {tuple(posteriors_b.shape)}, "
            "expected (Na, C) and (Nb, C)"
        )
    tau_t = torch.as_tensor(tau, dtype=posteriors_a.dtype, device=posteriors_a.device)
    half_a = 0.5 * torch.log_softmax(posteriors_a.clamp_min(eps).log() / tau_t, dim=-1)
    half_b = 0.5 * torch.log_softmax(posteriors_b.clamp_min(eps).log() / tau_t, dim=-1)
    return (half_a.exp() @ half_b.exp().t()).clamp(0.0, 1.0)


class RelevanceHead(nn.Module):
    """Step-1 head for retrieval: class posteriors of two clips -> relevance (regression logit) in [0, 1]."""

    def __init__(self, init_tau: float = 1.0) -> None:
        super().__init__()
        if not init_tau > 0:
            raise ModelError(f"relevance head init_tau {init_tau}: expected > 0")
        self.log_tau = nn.Parameter(torch.tensor(float(np.log(init_tau)), dtype=torch.float32))

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def relevance_matrix(self, posteriors_a: torch.Tensor, posteriors_b: torch.Tensor) -> torch.Tensor:
        """Relevance ``(Na, Nb)`` in [0, 1] of every clip of ``a`` to every clip of ``b``."""
        return bhattacharyya_relevance(posteriors_a, posteriors_b, self.tau)

    def forward(self, posteriors_a: torch.Tensor, posteriors_b: torch.Tensor) -> torch.Tensor:
        return self.relevance_matrix(posteriors_a, posteriors_b)

    def pair_relevance(self, posteriors_a: torch.Tensor, posteriors_b: torch.Tensor) -> torch.Tensor:
        """Row-wise relevance ``(N,)`` of pairs ``(a[k], b[k])``."""
        half_a = 0.5 * torch.log_softmax(posteriors_a.clamp_min(1e-12).log() / self.tau, dim=-1)
        half_b = 0.5 * torch.log_softmax(posteriors_b.clamp_min(1e-12).log() / self.tau, dim=-1)
        return (half_a + half_b).exp().sum(-1).clamp(0.0, 1.0)


def fit_relevance_head(
    head: RelevanceHead,
    posteriors: ArrayLike,
    labels: ArrayLike,
    *,
    val: tuple[ArrayLike, ArrayLike] | None = None,
    loss: str = "bce",
    balanced: bool = True,
    epochs: int = 50,
    lr: float = 0.05,
    batch_size: int = 256,
    seed: int = 0,
    patience: int = 10,
    progress: Progress | None = None,
    num_threads: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Fit the head's temperature on train clips' posteriors ``(N, C)`` and labels ``(N,)`` (step 1).

    Each mini-batch of clips gives all its pairs (i != j) with target ``[label_i == label_j]``.
    ``val=(posteriors, labels)`` of the validation split enables early stopping on its pair loss.
    Returns a history (per-epoch ``train_loss``/``val_loss``, ``best_epoch``, final ``tau``).
    """
    p = torch.as_tensor(np.asarray(posteriors) if not torch.is_tensor(posteriors) else posteriors).float()
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
    keep = y >= 0
    p, y = p[keep], y[keep]
    if len(p) < 2:
        raise DataError("fit_relevance_head needs at least 2 labelled training clips")

    def loss_fn(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return relevance_loss(head(b["p"], b["p"]), same_class_targets(b["y"], b["y"]), loss=loss,
                              balanced=balanced)

    evaluate = None
    if val is not None:
        pv = torch.as_tensor(np.asarray(val[0]) if not torch.is_tensor(val[0]) else val[0]).float()
        yv = torch.as_tensor(np.asarray(val[1]) if not torch.is_tensor(val[1]) else val[1]).long()
        pv, yv = pv[yv >= 0], yv[yv >= 0]
        if len(pv) > 2048:  # bound the (Nv x Nv) matrix
            pick = torch.randperm(len(pv), generator=torch.Generator().manual_seed(seed))[:2048]
            pv, yv = pv[pick], yv[pick]

        def evaluate() -> dict[str, float]:
            d = head.log_tau.device
            pd, yd = pv.to(d), yv.to(d)
            return {"val_loss": float(relevance_loss(head(pd, pd), same_class_targets(yd, yd), loss=loss,
                                                     balanced=balanced))}

    optimizer = torch.optim.AdamW([head.log_tau], lr=lr, weight_decay=0.0)
    config = FitConfig(epochs=epochs, batch_size=batch_size, seed=seed, patience=patience, device=device,
                       min_batch_size=2, num_threads=num_threads)
    result = fit(head, loss_fn, {"p": p, "y": y}, optimizer, config, evaluate=evaluate, monitor="val_loss",
                 mode="min", progress=epoch_progress(progress))
    history = fit_history(result)
    history["tau"] = float(head.tau.detach())
    return history
