"""Faiss-backed evaluation (``eval.index = "faiss"``): the top-N comes from the serving index
(:mod:`mirec.serve.index`) as serving forms it, each live interest searched and the lists merged
by max over interests, instead of the exact blocked scan. Its recall@N against exact is measured
on a seeded sample of the evaluated users and reported with the metrics (``index_recall@N``).

Shapes: ``B`` users, ``K`` interests, ``D`` dim, ``N`` items (0 = padding), ``m`` results per
interest query.
"""

from __future__ import annotations

import numpy as np

from mirec.serve.index import IndexConfig, ItemIndex


class IndexScorer:
    """A retriever's top-N through a Faiss index over its item table: a blocked scorer for
    :func:`mirec.eval.evaluate.rank_topn`. ``exact`` is the wrapped exact scorer (a
    :class:`mirec.models.base.VectorScorer`)."""

    blocked = True

    def __init__(self, exact, kind: str = "auto") -> None:
        self.exact = exact
        items = exact.items.float().cpu().numpy()  # (N, D)
        self.index = ItemIndex.build(items, IndexConfig(kind=kind))
        self.num_items = items.shape[0]

    def topn(self, hist: np.ndarray, mask: np.ndarray, n: int,
             seen: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Top-``n`` ids (B, n): each live interest's top ``n`` + (most items any user has seen)
        from the index, merged by max over interests; seen items and padding dropped. A user
        for whom the index found fewer than ``n`` rankable items (an inverted file whose probed
        lists are small) is ranked by the exact scorer instead."""
        out = self.exact.interests(hist, mask)
        V, live = out.vectors.float().cpu().numpy(), out.mask.cpu().numpy()  # (B, K, D), (B, K)
        B, K, D = V.shape
        rows, items = seen
        m = min(n + int(np.bincount(rows, minlength=B).max(initial=0)), self.num_items - 1)
        scores, ids = self.index.search(V.reshape(B * K, D), m)  # (B K, m) each
        scores = np.where(live.reshape(B * K, 1), scores, -np.inf).reshape(B, K * m)
        ids = ids.reshape(B, K * m)
        drop = np.isin(np.arange(B)[:, None] * self.num_items + ids, rows * self.num_items + items)
        scores[drop | (ids <= 0)] = -np.inf
        top = np.zeros((B, n), dtype=np.int64)
        short = []
        for b in range(B):
            order = np.argsort(-scores[b], kind="stable")
            i = ids[b, order][np.isfinite(scores[b, order])]
            _, first = np.unique(i, return_index=True)  # an item's best score is its first place
            keep = i[np.sort(first)][:n]
            if len(keep) < n:  # the probed lists held too few items (IVF): rank exactly
                short.append(b)
            else:
                top[b] = keep
        if short:
            sel = np.isin(rows, short)
            local = np.searchsorted(short, rows[sel])  # the short users' rows renumbered 0..
            top[short] = self.exact.topn(hist[short], mask[short], n, (local, items[sel]))
        return top


def index_recall(got: np.ndarray, want: np.ndarray) -> float:
    """Mean over users of |got ∩ want| / n for (U, n) top-n lists."""
    hits = [np.isin(w, g).sum() for g, w in zip(got, want)]
    return float(np.mean(hits) / want.shape[1]) if len(want) else 0.0
