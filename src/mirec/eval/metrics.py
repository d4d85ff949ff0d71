"""Top-N metrics of the protocol, vectorised over users (pure NumPy).

Inputs: ``topn`` (U, N) int item ids, ranked best first; targets as CSR ``(indptr, items)``
with user j's target set ``items[indptr[j]:indptr[j+1]]`` (duplicates are counted once).

- ``Recall@N = |top-N ∩ T| / |T|``; ``HitRate@N = [|top-N ∩ T| > 0]``
- ``NDCG@N = DCG / IDCG``, ``DCG = sum_{hits at rank r} 1/log2(r + 1)``,
  ``IDCG = sum_{r=1..min(|T|, N)} 1/log2(r + 1)`` (the protocol's IDCG, cut at N)
- ``Diversity@N`` = mean over pairs (i < j) in the top-N of ``g(i, j) = 1 - |Ci ∩ Cj| / |Ci ∪ Cj|``
  (0 when both items have no category)
- ``Coverage@N = |union of top-N lists| / catalogue size``
"""

from __future__ import annotations

import numpy as np


def _unique_targets(indptr: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop duplicate targets within each user; returns a new CSR."""
    row = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    key = row.astype(np.int64) * (int(items.max(initial=0)) + 1) + items
    _, first = np.unique(key, return_index=True)
    first.sort()
    row, items = row[first], items[first]
    new_ptr = np.zeros_like(indptr)
    np.cumsum(np.bincount(row, minlength=len(indptr) - 1), out=new_ptr[1:])
    return new_ptr, items


def hits(topn: np.ndarray, indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(U, N) bool: whether ``topn[u, r]`` is one of user u's targets."""
    u, n = topn.shape
    width = int(max(topn.max(initial=0), items.max(initial=0))) + 1
    row = np.repeat(np.arange(u, dtype=np.int64), np.diff(indptr))
    target_keys = np.unique(row * width + items)
    keys = np.arange(u, dtype=np.int64)[:, None] * width + topn  # (U, N)
    pos = np.searchsorted(target_keys, keys)
    pos = np.minimum(pos, len(target_keys) - 1)
    return (target_keys[pos] == keys) if len(target_keys) else np.zeros((u, n), bool)


def _discount(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))  # rank r (1-based) -> 1/log2(r+1)


def accuracy(topn: np.ndarray, indptr: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user recall, NDCG and hit rate at N = ``topn.shape[1]``: arrays of shape (U,)."""
    indptr, items = _unique_targets(indptr, items)
    h = hits(topn, indptr, items)  # (U, N)
    n = topn.shape[1]
    n_targets = np.diff(indptr)
    disc = _discount(n)
    dcg = (h * disc).sum(1)
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_targets, n)]
    n_hit = h.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(n_targets > 0, n_hit / np.maximum(n_targets, 1), 0.0)
        ndcg = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1), 0.0)
    return {"recall": recall, "ndcg": ndcg, "hit_rate": (n_hit > 0).astype(float)}


def diversity(topn: np.ndarray, cat_indptr: np.ndarray, cat_ids: np.ndarray,
              batch: int = 64) -> np.ndarray:
    """Per-user Diversity@N, shape (U,), from item categories in CSR form.

    Per batch of users, the categories of the batch's listed items are numbered afresh and
    become a dense (b, N, C_b) 0/1 tensor; the pairwise intersections are one batched matrix
    product. C_b is at most the categories b x N items carry, so memory does not grow with the
    catalogue or its number of categories (a (num_items, C) matrix would be 61 GB at 1.7M items
    and 9,000 categories).
    """
    u, n = topn.shape
    out = np.zeros(u)
    if n < 2:
        return out
    counts = np.diff(cat_indptr)
    iu = np.triu_indices(n, k=1)
    for s in range(0, u, batch):
        t = topn[s:s + batch]  # (b, N)
        flat = t.ravel()
        lens = counts[flat]
        rows = np.repeat(np.arange(len(flat)), lens)
        pos = np.repeat(cat_indptr[flat] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        cats, local = np.unique(cat_ids[pos], return_inverse=True)
        m = np.zeros((len(flat), max(len(cats), 1)), dtype=np.float32)
        m[rows, local] = 1.0
        m = m.reshape(len(t), n, -1)  # (b, N, C_b)
        inter = m @ m.transpose(0, 2, 1)  # (b, N, N)
        sz = m.sum(-1)  # (b, N) distinct categories per item
        union = sz[:, :, None] + sz[:, None, :] - inter
        g = np.where(union > 0, 1.0 - inter / np.where(union > 0, union, 1), 0.0)
        out[s:s + len(t)] = g[:, iu[0], iu[1]].mean(1)
    return out


def coverage(topn: np.ndarray, catalogue_size: int) -> float:
    """Share of the catalogue that appears in at least one user's top-N."""
    return len(np.unique(topn)) / catalogue_size


def topn_metrics(topn: np.ndarray, indptr: np.ndarray, items: np.ndarray,
                 cat_indptr: np.ndarray, cat_ids: np.ndarray, catalogue_size: int,
                 ns: tuple[int, ...] = (20, 50)) -> dict[str, float]:
    """Mean metrics over users for each N in ``ns``; keys like ``"recall@50"``."""
    out: dict[str, float] = {}
    for n in ns:
        t = topn[:, :n]
        acc = accuracy(t, indptr, items)
        out[f"recall@{n}"] = float(acc["recall"].mean())
        out[f"ndcg@{n}"] = float(acc["ndcg"].mean())
        out[f"hit_rate@{n}"] = float(acc["hit_rate"].mean())
        out[f"diversity@{n}"] = float(diversity(t, cat_indptr, cat_ids).mean())
        out[f"coverage@{n}"] = coverage(t, catalogue_size)
    return out
