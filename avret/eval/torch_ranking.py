"""The evaluator's score matrix and ranking on torch (a CUDA GPU, or the CPU for tests).

It does what :class:`avret.eval.retrieval._Ranker` does for one chunk of queries, with the same
keys and the same tie rules, so the result is the CPU result bit for bit:

* one float64 GEMM of the chunk against the gallery (on the GPU: cuBLAS DGEMM);
* each score ``s`` becomes ``2 - s``, read as int64, its lowest bit replaced by "relevant to this
  query"; one sort of those keys per row puts relevant items where they rank;
* the ranks of the relevant items, the hits within each k and the rows to rank again go back to
  the caller, which computes AP and AP@R from the integer ranks with the CPU's own code (so the
  float sums are the same), and ranks the flagged rows again from correctly rounded scores.

A GEMM's rounding differs between cuBLAS and a CPU BLAS, but only within
:func:`~avret.eval.retrieval.tie_tolerance` of the exact score; every row where that could change
the relevance order (a relevant item next to an irrelevant one within that tolerance) is flagged
and ranked exactly, on the CPU, by the caller. The other rows' relevance sequences are the exact
ones whichever GEMM produced them, so every output equals the CPU path's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Working bytes per (query, gallery) pair on the device: float64 scores, the sort's values and
#: indices, the relevance bytes.
BYTES_PER_PAIR = 32
#: Memory the device ranking may use per chunk.
BUDGET = {"cuda": 4 * 1024**3, "cpu": 256 * 1024**2}


class TorchRanker:
    """A gallery (float64 unit rows) and its labels held on ``device``, ranking chunks of queries."""

    def __init__(self, gallery: np.ndarray, gallery_labels: np.ndarray, device: str, tol: float) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.m = gallery.shape[0]
        self.g_t = torch.from_numpy(np.ascontiguousarray(gallery.T)).to(self.device)
        self.gl = torch.from_numpy(np.ascontiguousarray(gallery_labels, dtype=np.int64)).to(self.device)
        self.tol = float(tol)

    def chunk_size(self) -> int:
        """Queries per chunk within the device's memory budget."""
        return max(1, BUDGET["cuda" if self.device.type == "cuda" else "cpu"] // (max(1, self.m) * BYTES_PER_PAIR))

    def rank(self, queries: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> tuple[Any, ...]:
        """For a chunk: (rows, ranks0) of every relevant item (sorted by row, then rank), hits@k
        (rows, len(ks)) int64, and the 0-based chunk rows to rank again exactly."""
        torch = self.torch
        with torch.inference_mode():
            q = torch.from_numpy(np.ascontiguousarray(queries)).to(self.device)
            lab = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(self.device)
            x = torch.sub(2.0, q @ self.g_t)  # positive: its IEEE bits as int64 grow as the score falls
            keys = x.view(torch.int64)
            keys &= ~1
            keys |= (self.gl[None, :] == lab[:, None]).to(torch.int64)
            keys = torch.sort(keys, dim=1).values
            rel = (keys & 1).bool()
            vals = keys.view(torch.float64)
            mixed = rel[:, 1:] != rel[:, :-1]
            near = (vals[:, 1:] - vals[:, :-1]) <= self.tol
            redo = torch.nonzero((mixed & near).any(dim=1)).flatten()
            hits = torch.stack([rel[:, :k].sum(dim=1) for k in ks], dim=1)
            where = torch.nonzero(rel)  # row-major: sorted by row, then rank
            where = where.cpu().numpy()
            return where[:, 0], where[:, 1], hits.cpu().numpy().astype(np.int64), redo.cpu().numpy()
