"""Merging a user's K interests' candidates, and the greedy accuracy/diversity trade-off.

Each interest retrieves its top-M items; the union is re-scored by
``f(u, i) = max over live k of v_k . e_i``. The final list S of n items maximises, greedily,

    Q(u, S) = sum_{i in S} f^(u, i) + lam * sum_{i < j in S} g(i, j)

where ``f^`` is ``f`` min-max normalised to [0, 1] over the candidate set (so ``lam`` means the
same for every user, whatever the scale of their scores) and ``g`` is the Jaccard distance
between the two items' category sets (1 - |A & B| / |A | B|, and 0 when both are empty). With
single-category items ``g`` is the indicator ``[CATE(i) != CATE(j)]``. ``lam = 0`` is plain
aggregation: the top-n by ``f``.

Shapes: ``K`` interests, ``D`` dim, ``N`` item id space, ``M`` results per interest, ``C``
candidates, ``G`` categories.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np

# (C, G) float32 multi-hot: row c has a 1 in column j when candidate c is in category j.
CategorySets: TypeAlias = np.ndarray


def candidates(scores: np.ndarray, ids: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Union of the per-interest search results, as sorted unique item ids.

    Parameters
    ----------
    scores, ids : (K, M) search results; entries with id ``-1`` or a non-finite score are
        "not found" and dropped.
    exclude : item ids never to return (e.g. the user's history), or None.

    Returns
    -------
    (C,) int64 item ids, ascending.
    """
    scores, ids = np.asarray(scores), np.asarray(ids)
    if scores.shape != ids.shape:
        raise ValueError(f"scores {scores.shape} and ids {ids.shape} must have the same shape")
    keep = (ids >= 0) & np.isfinite(scores)
    out = np.unique(ids[keep]).astype(np.int64)  # (C,)
    if exclude is not None and len(exclude):
        out = out[~np.isin(out, np.asarray(exclude, dtype=np.int64))]
    return out


def rescore(V: np.ndarray, live: np.ndarray, item_vectors: np.ndarray,
            cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``f(u, c) = max over live k of v_k . e_c`` and the interest that attains it.

    Parameters
    ----------
    V : (K, D) interest vectors.
    live : (K,) bool; dead interests (e.g. capsules with no routed behaviour) are ignored.
    item_vectors : (N, D) item matrix, row = item id.
    cand : (C,) item ids.

    Returns
    -------
    scores : (C,) best inner product over live interests.
    interest : (C,) int64 index k of that interest.
    """
    V, live = np.asarray(V), np.asarray(live, dtype=bool)
    if V.ndim != 2 or live.shape != (V.shape[0],):
        raise ValueError(f"V must be (K, D) and live (K,); got {V.shape} and {live.shape}")
    if item_vectors.ndim != 2 or item_vectors.shape[1] != V.shape[1]:
        raise ValueError(f"item_vectors {item_vectors.shape}: dim does not match V dim {V.shape[1]}")
    if not live.any():
        raise ValueError("live: no live interest to score with")
    sims = V[live] @ item_vectors[cand].T  # (K_live, C)
    best = sims.argmax(0)  # (C,) position among the live interests
    scores = np.take_along_axis(sims, best[None], 0)[0]  # (C,)
    interest = np.flatnonzero(live)[best].astype(np.int64)  # (C,) back to 0..K-1
    return scores, interest


def category_matrix(indptr: np.ndarray, indices: np.ndarray, items: np.ndarray,
                    num_categories: int) -> CategorySets:
    """Multi-hot category sets of ``items`` from the item -> category CSR.

    Parameters
    ----------
    indptr : (N+1,) row pointers over dense item ids (row 0, padding, is empty), as returned by
        ``Dataset.category_index()``.
    indices : category ids of every item, concatenated in item order.
    items : (C,) item ids.
    num_categories : G, the number of columns.

    Returns
    -------
    (C, G) float32 with 1 where the item has the category.
    """
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n_items = len(indptr) - 1
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"items: ids must be in [0, {n_items}), got {items.min()}..{items.max()}")
    start, lens = indptr[items], indptr[items + 1] - indptr[items]  # (C,), (C,)
    total = int(lens.sum())
    rows = np.repeat(np.arange(len(items)), lens)  # (total,)
    # Position of each (item, category) entry in ``indices``: its row start plus its rank in the row.
    pos = np.repeat(start - np.cumsum(lens) + lens, lens) + np.arange(total)  # (total,)
    cols = indices[pos]
    if total and (cols.min() < 0 or cols.max() >= num_categories):
        raise ValueError(f"indices: category ids must be in [0, {num_categories}), "
                         f"got {cols.min()}..{cols.max()}")
    out = np.zeros((len(items), num_categories), dtype=np.float32)  # (C, G)
    out[rows, cols] = 1.0
    return out


def normalise(scores: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] over the candidate set; all-equal (or a single) score gives zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    lo, hi = scores.min(), scores.max()
    if hi <= lo:
        return np.zeros_like(scores)
    return (scores - lo) / (hi - lo)


def _jaccard_to(cats: np.ndarray, sizes: np.ndarray, j: int) -> np.ndarray:
    """Jaccard distance of every row of ``cats`` to row ``j``: (C,)."""
    inter = cats @ cats[j]  # (C,)
    union = sizes + sizes[j] - inter
    return np.where(union > 0, 1.0 - inter / np.where(union > 0, union, 1.0), 0.0)


def _check(scores: np.ndarray, cats: CategorySets) -> None:
    if scores.ndim != 1 or cats.ndim != 2 or cats.shape[0] != scores.shape[0]:
        raise ValueError(f"scores must be (C,) and cats (C, G); got {scores.shape} and {cats.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores: NaN in candidate scores")


def diversify(scores: np.ndarray, cats: CategorySets, n: int, lam: float) -> np.ndarray:
    """Greedy maximisation of Q(u, S) over n-item lists; returns positions into the candidates.

    Scores are min-max normalised to [0, 1] over the candidate set first (all equal -> zeros),
    so ``lam`` is on the same scale for every user: ``lam = 1`` values one whole "category
    switch" to an already-picked item as much as the gap between the best and worst candidate.
    Each step picks the remaining ``c`` maximising ``f^(c) + lam * sum_{j in S} g(c, j)``; ties
    go to the lower position. ``lam = 0`` is exactly a stable argsort of ``-scores``, cut at n.

    Parameters
    ----------
    scores : (C,) f(u, c) of each candidate.
    cats : (C, G) multi-hot category sets (see :func:`category_matrix`).
    n : list length; larger than C returns all C.
    lam : diversity weight, >= 0.

    Returns
    -------
    (min(n, C),) int64 positions in pick order.
    """
    scores, cats = np.asarray(scores), np.asarray(cats, dtype=np.float32)
    _check(scores, cats)
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if lam < 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    n = min(n, len(scores))
    if lam == 0:
        # Raw scores, not normalised: rounding in the scaling could create ties that were not there.
        return np.argsort(-scores, kind="stable")[:n].astype(np.int64)
    cats = cats[:, cats.any(0)]  # (C, G') unused categories change no intersection or union
    sizes = cats.sum(1)  # (C,)
    base = normalise(scores)  # (C,)
    dist_sum = np.zeros(len(scores))  # (C,) sum of g(c, j) over the picked j
    taken = np.zeros(len(scores), dtype=bool)
    picked = np.empty(n, dtype=np.int64)
    for t in range(n):
        gain = np.where(taken, -np.inf, base + lam * dist_sum)
        j = int(np.argmax(gain))  # first maximum: ties go to the lower position
        picked[t] = j
        taken[j] = True
        dist_sum += _jaccard_to(cats, sizes, j)
    return picked


def pairwise_distance(cats: CategorySets, picked: np.ndarray) -> np.ndarray:
    """(S, S) Jaccard distances between the category sets of the ``picked`` rows."""
    sub = np.asarray(cats, dtype=np.float64)[np.asarray(picked, dtype=np.int64)]  # (S, G)
    inter = sub @ sub.T  # (S, S)
    sizes = sub.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.where(union > 0, 1.0 - inter / np.where(union > 0, union, 1.0), 0.0)


def objective(scores_normalised: np.ndarray, cats: CategorySets, picked: np.ndarray,
              lam: float) -> float:
    """Q(u, S) = sum_{i in S} f^(u, i) + lam * sum_{i < j in S} g(i, j) for the ``picked`` positions.

    ``scores_normalised`` is f^ (see :func:`normalise`); each unordered pair counts once.
    """
    picked = np.asarray(picked, dtype=np.int64)
    g = pairwise_distance(cats, picked)
    return float(np.asarray(scores_normalised, dtype=np.float64)[picked].sum() + lam * np.triu(g, 1).sum())


def list_diversity(cats: CategorySets, picked: np.ndarray) -> float:
    """Mean pairwise Jaccard distance of a list (0 for fewer than two items)."""
    if len(picked) < 2:
        return 0.0
    g = pairwise_distance(cats, picked)
    return float(g[np.triu_indices(len(picked), 1)].mean())
