"""Exact inner-product search with torch (matmul + top-k), giving what ``faiss.IndexFlatIP`` gives.

In the style of ``faiss.contrib.torch_utils``: small functions over tensors, no index class of
its own beyond :class:`TorchFlat`, which only keeps the gallery on its device. It serves a Flat
index on a CUDA GPU when faiss-gpu is not installed (its wheel is 135 MB; torch is there anyway),
and on the CPU for tests (``device="torch-cpu"``).

**Same answers as faiss Flat.** Scores are float32 inner products (to ~1e-6: a GEMM's rounding
depends on its shape and kernel, so the last bits may differ from faiss's). Items with equal
scores are chosen and ordered as faiss's CPU heap does (found empirically against faiss-cpu 1.15
with deliberate ties, and derived from its ``heap_replace_top``; see :func:`faiss_tie_rule`):

* faiss scans the gallery in id order into a k-slot heap, replacing the heap's worst entry only
  by a strictly better score; the worst entry is the lowest (score, id). Of the items tied at the
  k-th score ``v``, it therefore keeps, among the first k items (in id order) scoring ``>= v``,
  the tied ones with the *largest* ids (as many as there are slots left for ``v``);
* the result is sorted by score descending, equal scores by id *descending*.

faiss switches to a reservoir selection for ``k >= 100`` (``distance_compute_min_k_reservoir``),
whose choice among items tied at the k-th score depends on its partitioning; there the scores,
and every item scoring above the k-th score, are still the same, but which of the items tied
*exactly at* the k-th score fill the last slots may differ from faiss.

**Low-precision scoring** (``precision="bf16"`` or ``"fp16"``): the gallery is scanned in 16-bit
(half the bytes, twice the speed where memory bandwidth bounds the scan), the best ``k + margin``
candidates are re-scored exactly in float32, and the answer is *certified*: a query whose k-th
re-scored score does not exceed every non-candidate's possible float32 score (its 16-bit score plus
a rounding bound, :func:`lowp_error_bound`) is searched again in float32. So the answer is always
the float32 one; the margin only decides how often the fallback runs (counted in
:attr:`TorchFlat.fallbacks`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avret.utils.cuda import cuda_visible

__all__ = ["PRECISIONS", "TorchFlat", "cuda_visible", "faiss_tie_rule", "knn_fp32", "lowp_error_bound",
           "order_like_faiss", "select_like_faiss", "topk_candidates"]

#: Precisions of the gallery scan (the answer is float32 in all of them).
PRECISIONS = ("fp32", "bf16", "fp16")
#: Unit roundoff of each 16-bit format.
_UNIT = {"bf16": 2.0**-8, "fp16": 2.0**-11}
#: fp16's largest finite value: galleries or queries with larger products are refused in fp16.
_FP16_MAX = 65504.0
#: Bytes of scores one block (queries x gallery rows) may take.
BLOCK_BYTES = {"cuda": 1 << 30, "cpu": 1 << 27}


def lowp_error_bound(precision: str, dim: int, q_norm: Any, x_norm_max: float) -> Any:
    """An upper bound of ``|score_16 - score_32|`` for a query of norm ``q_norm`` (array or tensor).

    Rounding both inputs to 16 bits moves an inner product by at most ``(2u + u^2) |q| |x|``, the
    16-bit result by ``u |q| |x|`` more, and a GEMM summing its float32 partial products (some in
    16 bits where torch allows reduced-precision reductions) by a few ``u`` more: ``8u`` covers all
    three, plus twice float32's ``gamma_d`` for the float32 score it is compared with.
    """
    u = _UNIT[precision]
    gamma32 = dim * 2.0**-24 / (1.0 - dim * 2.0**-24)
    return (8.0 * u + 2.0 * gamma32) * q_norm * x_norm_max


def faiss_tie_rule(scores: Any, k: int) -> Any:
    """The positions faiss's heap returns for one row of ``scores`` (a 1-D tensor, in id order), best first.

    See the module doc: all items above the k-th score ``v``; of the items scoring ``>= v`` the
    first k in id order, and of their items tied at ``v`` the ones with the largest ids; sorted
    by score descending, then position descending.
    """
    import torch

    k = min(k, scores.shape[0])
    v = torch.topk(scores, k).values[-1]
    cand = torch.nonzero(scores >= v).flatten()  # ascending positions
    first = cand[:k]
    above = cand[scores[cand] > v]
    tied = first[scores[first] == v]
    keep = torch.cat([above, tied[tied.shape[0] - (k - above.shape[0]) :]])
    return order_like_faiss(scores[keep], keep)


def order_like_faiss(values: Any, ids: Any) -> Any:
    """``ids`` sorted by ``values`` descending, equal values by id descending (faiss's heap order)."""
    import torch

    by_id = torch.sort(ids, descending=True, stable=True).indices
    by_val = torch.sort(values[by_id], descending=True, stable=True).indices
    return ids[by_id[by_val]]


def _rows_per_block(nq: int, device: str, per_row: int) -> int:
    return max(1, BLOCK_BYTES["cuda" if device.startswith("cuda") else "cpu"] // (4 * max(1, nq) * per_row) * per_row)


def topk_candidates(xq: Any, xb: Any, k: int, *, block: int | None = None) -> tuple[Any, Any]:
    """The ``k`` best (values, positions) of ``xq @ xb.T`` per row (any tie choice), gallery in blocks."""
    import torch

    nb = xb.shape[0]
    block = block or _rows_per_block(xq.shape[0], str(xq.device), 1)
    best_v = best_i = None
    for s in range(0, nb, block):
        scores = xq @ xb[s : s + block].T
        kk = min(k, scores.shape[1])
        v, i = torch.topk(scores, kk, dim=1)
        i = i + s
        if best_v is None:
            best_v, best_i = v, i
        else:
            v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
            top = torch.topk(v, min(k, v.shape[1]), dim=1)
            best_v, best_i = top.values, torch.gather(i, 1, top.indices)
    return best_v, best_i


def select_like_faiss(values: Any, ids: Any, k: int, row_scores: Any) -> tuple[Any, Any]:
    """The final (scores, ids) ``(nq, k)`` from a top-``k+1`` (or top-``k`` when that is all) by value.

    ``values``/``ids``: per row the best ``k + 1`` scores (descending, any tie choice) and their ids.
    Rows whose k-th score is tied with the (k+1)-th one (a tie across the cut) are chosen again by
    :func:`faiss_tie_rule` over ``row_scores(r)`` -> (all scores of row r in id order, their ids).
    The others keep their k best, ordered as faiss orders them.
    """
    import torch

    nq = values.shape[0]
    if values.shape[1] > k:
        boundary = values[:, k] == values[:, k - 1]
    else:
        boundary = torch.zeros(nq, dtype=torch.bool, device=values.device)
    v, i = values[:, :k], ids[:, :k]
    by_id = torch.sort(i, dim=1, descending=True, stable=True).indices
    v, i = torch.gather(v, 1, by_id), torch.gather(i, 1, by_id)
    by_val = torch.sort(v, dim=1, descending=True, stable=True).indices
    v, i = torch.gather(v, 1, by_val), torch.gather(i, 1, by_val)
    for r in torch.nonzero(boundary).flatten().tolist():  # rare: the whole row, by faiss's rule
        scores, row_ids = row_scores(r)
        pos = faiss_tie_rule(scores, k)
        v[r], i[r] = scores[pos], row_ids[pos]
    return v, i


def knn_fp32(xq: Any, xb: Any, k: int, *, block: int | None = None) -> tuple[Any, Any]:
    """Exact float32 top-``k`` of ``xq @ xb.T`` with faiss's tie rule: (scores, ids), ``k <= len(xb)``."""
    import torch

    nb = xb.shape[0]
    # k + 1 values show whether a row's k-th score is tied with one left out (a boundary tie).
    v, i = topk_candidates(xq, xb, min(k + 1, nb), block=block)
    every = torch.arange(nb, device=xb.device)
    return select_like_faiss(v, i, k, lambda r: (xb @ xq[r], every))


def _rescore(xq: Any, xb: Any, ids: Any) -> Any:
    """float32 scores of the pairs (query row, gallery rows ``ids``): (nq, c)."""
    import torch

    return torch.einsum("qd,qcd->qc", xq, xb[ids])


class TorchFlat:
    """A flat gallery held as torch tensors on ``device`` ("cpu", "cuda", "cuda:1"...), searched exactly.

    ``precision`` "fp32" scans the float32 gallery; "bf16"/"fp16" also keep a 16-bit copy, scan
    that and re-score ``k + margin`` candidates in float32, certified (module doc). Thread-safe.
    """

    def __init__(self, xb: Any, device: str = "cpu", precision: str = "fp32",
                 margin: int | None = None) -> None:
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {list(PRECISIONS)}")
        self.device = device
        self.precision = precision
        self.margin = margin
        self.fallbacks = 0
        if isinstance(xb, torch.Tensor):  # already a tensor (e.g. made on the GPU): no host copy
            self.xb = xb.to(device=device, dtype=torch.float32).contiguous()
        else:
            self.xb = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32)).to(device)
        self.dim = int(self.xb.shape[1])
        self.x_norm_max = float(torch.linalg.vector_norm(self.xb, dim=1).max()) if len(self.xb) else 0.0
        self.low = None
        if precision == "fp16" and float(self.xb.abs().max()) * max(1.0, self.x_norm_max) * self.dim > _FP16_MAX:
            raise ValueError("precision fp16: the gallery's values are too large for float16; use bf16 or fp32")
        if precision != "fp32":
            self.low = self.xb.to(torch.bfloat16 if precision == "bf16" else torch.float16)

    @property
    def ntotal(self) -> int:
        return int(self.xb.shape[0])

    def search(self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style ``(D, I)`` float32/int64 numpy arrays of shape (nq, k); missing slots ``-inf``/-1.

        ``allowed``: ascending gallery positions the answer is restricted to (a class filter).
        """
        import torch

        with torch.inference_mode():
            q = torch.from_numpy(np.ascontiguousarray(xq, dtype=np.float32)).to(self.device)
            xb, low = self.xb, self.low
            rows = None
            if allowed is not None:
                rows = torch.from_numpy(np.ascontiguousarray(allowed, dtype=np.int64)).to(self.device)
                xb = xb.index_select(0, rows)
                low = low.index_select(0, rows) if low is not None else None
            nq, n = q.shape[0], xb.shape[0]
            kk = min(k, n)
            dist = np.full((nq, k), -np.inf, dtype=np.float32)
            ids = np.full((nq, k), -1, dtype=np.int64)
            if kk > 0:
                if low is None:
                    d, i = knn_fp32(q, xb, kk)
                else:
                    d, i = self._lowp(q, xb, low, kk)
                if rows is not None:
                    i = rows[i]
                dist[:, :kk] = d.float().cpu().numpy()
                ids[:, :kk] = i.cpu().numpy()
            return dist, ids

    def _lowp(self, q: Any, xb: Any, low: Any, k: int) -> tuple[Any, Any]:
        import torch

        n = xb.shape[0]
        m = min(n, k + (self.margin if self.margin is not None else max(64, 4 * k)))
        if m == n:  # the candidates would be the whole gallery: float32 is as cheap
            return knn_fp32(q, xb, k)
        ql = q.to(low.dtype)
        cv, ci = topk_candidates(ql, low, m)
        cut = cv[:, -1].float()  # every non-candidate's 16-bit score is <= this
        ci, _ = torch.sort(ci, dim=1)  # candidates in id order, as faiss's rule needs
        exact = _rescore(q, xb, ci)
        kth = torch.topk(exact, k, dim=1).values[:, -1]
        bound = lowp_error_bound(self.precision, self.dim, torch.linalg.vector_norm(q, dim=1), self.x_norm_max)
        ok = kth > cut + bound
        v, pos = torch.topk(exact, min(k + 1, m), dim=1)
        out_d, out_i = select_like_faiss(v, torch.gather(ci, 1, pos), k, lambda r: (exact[r], ci[r]))
        bad = torch.nonzero(~ok).flatten()
        if bad.numel():
            self.fallbacks += int(bad.numel())
            d, i = knn_fp32(q[bad], xb, k)
            out_d[bad], out_i[bad] = d, i
        return out_d, out_i
