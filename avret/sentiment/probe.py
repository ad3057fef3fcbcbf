"""The frozen-encoder baseline: mean-pooled sentence embeddings + ridge regression.

This is the row the fine-tuned student must beat: it measures how much sentiment a frozen encoder
already exposes linearly. Ridge is solved in closed form (numpy, no scikit-learn), with the
intercept unpenalised (features and target centred on the train split) and ``alpha`` chosen by
dev MAE over a log grid. The same frozen embeddings are the VideoAdviser teacher's T=1 input on
MOSI, where only transcripts are available.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avret.sentiment.student import default_encoder_path, load_encoder, mean_pool

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


@torch.no_grad()
def embed_texts(texts: Sequence[str], encoder: str | Path | None = None, max_len: int = 64,
                batch_size: int = 128, normalize: bool = False) -> np.ndarray:
    """Frozen mean-pooled embeddings ``(N, H)`` float32 of ``texts`` (length-sorted batches)."""
    path = Path(encoder) if encoder is not None else default_encoder_path()
    model, tok = load_encoder(path)
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    for i in range(0, len(texts), batch_size):
        idx = order[i:i + batch_size]
        enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_len,
                  return_tensors="pt")
        states = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        emb = mean_pool(states, enc["attention_mask"])
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[idx] = emb.numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


@dataclass
class RidgeModel:
    """``y = (x - x_mean) @ coef + y_mean``, fit by closed-form ridge."""

    coef: np.ndarray
    x_mean: np.ndarray
    y_mean: float
    alpha: float
    dev_mae: dict[float, float] = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for rows of ``x``."""
        return (np.asarray(x, dtype=np.float64) - self.x_mean) @ self.coef + self.y_mean


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeModel:
    """Closed-form ridge with an unpenalised intercept: ``(Xc'Xc + alpha I)^-1 Xc' yc``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean = x.mean(0)
    y_mean = float(y.mean())
    xc = x - x_mean
    a = xc.T @ xc + alpha * np.eye(x.shape[1])
    coef = np.linalg.solve(a, xc.T @ (y - y_mean))
    return RidgeModel(coef=coef, x_mean=x_mean, y_mean=y_mean, alpha=alpha)


def ridge_select(x_train: np.ndarray, y_train: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray,
                 alphas: Sequence[float] = DEFAULT_ALPHAS) -> RidgeModel:
    """Fit ridge for every alpha; keep the one with the lowest dev MAE (test never consulted)."""
    best: RidgeModel | None = None
    scores: dict[float, float] = {}
    for a in alphas:
        m = fit_ridge(x_train, y_train, a)
        mae = float(np.mean(np.abs(m.predict(x_dev) - np.asarray(y_dev))))
        scores[float(a)] = mae
        if best is None or mae < scores[best.alpha]:
            best = m
    assert best is not None
    best.dev_mae = scores
    return best
