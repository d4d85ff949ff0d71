"""Faiss-backed evaluation (``eval.index = "faiss"``): the top-N comes from the serving index
(:mod:`mirec.serve.index`) as serving forms it, each live interest searched and the lists merged
by max over interests, instead of the exact blocked scan. Its recall@N against exact is measured
on a seeded sample of the evaluated users and reported with the metrics (``index_recall@N``).
Items never ranked for any user (the time protocol's new items) are left out of the index.

Shapes: ``B`` users, ``K`` interests, ``D`` dim, ``N`` items (0 = padding), ``m`` results per
interest query.
"""

from __future__ import annotations

import numpy as np

from mirec.serve.index import IndexConfig, ItemIndex


class IndexScorer:
    """A retriever's top-N through a Faiss index over its item table: a blocked scorer for
    :func:`mirec.eval.evaluate.rank_topn`. ``exact`` is the wrapped exact scorer (a
    :class:`mirec.models.base.VectorScorer`). The sorted item ids ``never`` are not indexed."""

    blocked = True

    def __init__(self, exact, kind: str = "auto", never: np.ndarray | None = None) -> None:
        self.exact = exact
        items = exact.items.float().cpu().numpy()  # (N, D)
        self.num_items = items.shape[0]
        # index row r holds item self.ids[r]; row 0 (padding) is never indexed
        self.ids = np.arange(self.num_items)
        if never is not None:
            self.ids = np.setdiff1d(self.ids, never)
            items = np.ascontiguousarray(items[self.ids])
        self.index = ItemIndex.build(items, IndexConfig(kind=kind))
        self.never = never

    def topn(self, hist: np.ndarray, mask: np.ndarray, n: int,
             seen: tuple[np.ndarray, np.ndarray], never: np.ndarray | None = None) -> np.ndarray:
        """Top-``n`` ids (B, n): each live interest's top ``n`` + (most items any user has seen)
        from the index, merged by max over interests; seen items and padding dropped (``never``
        must be the items left out of the index). A user for whom the index found fewer than
        ``n`` rankable items (an inverted file whose probed lists are small) is ranked by the
        exact scorer instead."""
        assert (never is None) == (self.never is None), "never: the index was built without it"
        out = self.exact.interests(hist, mask)
        V, live = out.vectors.float().cpu().numpy(), out.mask.cpu().numpy()  # (B, K, D), (B, K)
        B, K, D = V.shape
        rows, items = seen
        m = min(n + int(np.bincount(rows, minlength=B).max(initial=0)), len(self.ids) - 1)
        scores, ids = self.index.search(V.reshape(B * K, D), m)  # (B K, m) each
        ids = np.where(ids > 0, self.ids[np.maximum(ids, 0)], ids)  # index rows -> item ids
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
            top[short] = self.exact.topn(hist[short], mask[short], n, (local, items[sel]), self.never)
        return top


def index_recall(got: np.ndarray, want: np.ndarray) -> float:
    """Mean over users of |got ∩ want| / n for (U, n) top-n lists."""
    hits = [np.isin(w, g).sum() for g, w in zip(got, want)]
    return float(np.mean(hits) / want.shape[1]) if len(want) else 0.0
