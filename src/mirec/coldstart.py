"""The cold-start vector of an item no model has trained: the mean of the vectors of the known
items that share one of its categories, or of every known item when none does (unit length
under cosine scoring). Serving gives it to ``--new-items`` (:mod:`mirec.serve.catalogue`) and a
warm-started run to the items its data set adds (:mod:`mirec.train.warm`): one formula."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def category_mean_vectors(vectors: np.ndarray, indptr: np.ndarray, category_ids: np.ndarray,
                          category_names: Sequence[str], categories: Sequence[Sequence[str]],
                          cosine: bool = False, pool: np.ndarray | None = None) -> np.ndarray:
    """(len(categories), D) vectors for new items, one per entry of ``categories`` (its
    category names).

    ``vectors`` (N, D) are the known items' (row 0 = padding, never used); ``indptr`` (N + 1,),
    ``category_ids`` and ``category_names`` their categories as CSR
    (:func:`mirec.data.dataset.category_csr`). ``pool``: (N,) bool, the items that may
    contribute (default: every real item). ``cosine``: each result scaled to unit length."""
    n = vectors.shape[0]
    if pool is None:
        pool = np.arange(n) > 0
    names = {c: j for j, c in enumerate(category_names)}
    owner = np.repeat(np.arange(n), np.diff(indptr))  # (entries,) item of each entry
    owner = np.where(pool[owner], owner, -1)
    everyone = vectors[pool].mean(0)
    out = np.empty((len(categories), vectors.shape[1]), dtype=np.float32)
    for r, cats in enumerate(categories):
        wanted = [names[c] for c in cats if c in names]
        items = np.unique(owner[np.isin(category_ids, wanted)]) if wanted else np.zeros(0, int)
        items = items[items > 0]
        out[r] = vectors[items].mean(0) if len(items) else everyone
    if cosine:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
