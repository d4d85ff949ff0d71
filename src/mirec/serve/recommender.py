"""One recommendation, end to end: history -> interests -> ANN search -> aggregation.

The CLI (``mirec recommend``), the HTTP service (``POST /recommend``) and the diversity report
all call :meth:`Recommender.recommend`::

    history (raw ids) --map--> dense ids, unknown ones reported in ``ignored_items``
    user tower on the last max_len items       -> K interest vectors, live mask, weights (K, L)
    each live interest searches the index      -> top-M items per interest
    union of the candidates, history removed   -> re-scored by f(u, i) = max_k v_k . e_i
    [rank=True: a ranker (serve/pipeline.py)    -> re-scores the candidates: P(click)]
    diversify(lambda)                          -> the final n, each with the interest that
                                                  scored it and that interest's 3 heaviest
                                                  history items ("because")

An unknown user or a history with no catalogue item has no interests to search with: the
candidates are then the most popular items (counted over the bundle's user histories), scored
by their share of those events, with ``fallback="popular"`` and ``interest=-1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mirec.data.split import left_pad
from mirec.errors import MirecConfigError
from mirec.models.base import user_interests
from mirec.serve.aggregate import candidates, category_matrix, diversify, rescore
from mirec.serve.bundle import Bundle
from mirec.serve.index import ItemIndex
from mirec.serve.pipeline import RankStage
from mirec.serve.store import EventStore


@dataclass
class ServeConfig:
    candidates_per_interest: int = 200  # M: each interest's top-M from the index
    max_n: int = 500  # largest n a request may ask for
    max_history: int = 1000  # longest history a request may send
    because: int = 3  # history items named per recommendation

    def validate(self) -> None:
        for name in ("candidates_per_interest", "max_n", "max_history", "because"):
            if getattr(self, name) < 1:
                raise MirecConfigError(f"serve.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class Recommendation:
    item: int  # dense id
    item_id: str  # raw id
    title: str
    categories: list[str]
    score: float  # f(u, i); with rank=True the ranker's probability
    interest: int  # which interest retrieved and scored it
    because: list[str]  # raw ids of the history items that weigh most in that interest


@dataclass
class RecommendResult:
    items: list[Recommendation]
    user_id: str | None = None
    known_user: bool = False  # the user has history in the bundle or the event store
    history: list[str] = field(default_factory=list)  # raw ids the tower saw, oldest first
    ignored_items: list[str] = field(default_factory=list)  # raw ids not in the catalogue
    interests: int = 0  # live interests
    ranked: bool = False  # scores come from the ranking stage
    fallback: str | None = None  # "popular": no usable history, the most popular items


class Recommender:
    """One user's top-n from a bundle: interests -> per-interest ANN search -> aggregation with
    the diversity weight (-> the ranking stage when a ranker is attached)."""

    @classmethod
    def open(cls, bundle: str | Path, index: str = "auto", store: str | Path | None = None,
             ranker: str | Path | None = None, hnsw_above: int = 50_000) -> Recommender:
        """Load and verify a bundle directory (``mirec export``), its index (the saved one when
        present), an optional SQLite event store and an optional ranking run."""
        from mirec.serve.service import open_recommender

        return open_recommender(bundle, index, hnsw_above, store, ranker)

    def __init__(self, bundle: Bundle, index: ItemIndex, store: EventStore | None = None,
                 cfg: ServeConfig | None = None, ranker: RankStage | None = None) -> None:
        self.bundle, self.index, self.store, self.ranker = bundle, index, store, ranker
        self.cfg = cfg or ServeConfig()
        self.cfg.validate()

    def user_history(self, user_id: str) -> tuple[list[int], list[str], bool]:
        """A known user's dense history (bundle history, then stored events), the raw ids of
        stored events no longer in the catalogue, and whether the user is known at all."""
        b = self.bundle
        base = b.user_histories.get(user_id)
        hist = [] if base is None else base.tolist()
        ignored: list[str] = []
        stored = self.store.history(user_id, self.cfg.max_history) if self.store else []
        for raw in stored:
            i = b.item_ids.get(raw)
            if i is None:
                ignored.append(raw)
            else:
                hist.append(i)
        return hist, ignored, base is not None or bool(stored)

    def map_items(self, raw_ids: list[str]) -> tuple[list[int], list[str]]:
        ids = self.bundle.item_ids
        return [ids[r] for r in raw_ids if r in ids], [r for r in raw_ids if r not in ids]

    @torch.no_grad()
    def interests(self, hist: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The tower on the last max_len items: vectors (K, D), live (K,), weights (K, L),
        and the (L,) dense ids of the positions (0 = padding)."""
        window = left_pad(hist, self.bundle.max_len)  # (L,)
        h = torch.from_numpy(window)[None]  # (1, L)
        out = user_interests(self.bundle.model, h, h > 0, self.bundle.cosine)
        return (out.vectors[0].numpy().astype(np.float32), out.mask[0].numpy(), out.weights[0].numpy(),
                window)

    def recommend(self, user_id: str | None = None, history: list[str] | None = None,
                  n: int = 20, diversity: float = 0.0, exclude_history: bool = True,
                  rank: bool = False) -> RecommendResult:
        if (user_id is None) == (history is None):
            raise MirecConfigError("give exactly one of user_id or history")
        if not 1 <= n <= self.cfg.max_n:
            raise MirecConfigError(f"n: must be in [1, {self.cfg.max_n}], got {n}")
        if not (math.isfinite(diversity) and diversity >= 0):
            raise MirecConfigError(f"lambda: must be a finite number >= 0, got {diversity}")
        if rank and self.ranker is None:
            raise MirecConfigError("rank: this recommender has no ranker (start it with --ranker RUN)")
        if history is not None:
            if len(history) > self.cfg.max_history:
                raise MirecConfigError(f"history: at most {self.cfg.max_history} items, "
                                       f"got {len(history)}")
            hist, ignored = self.map_items(history)
            known = bool(hist)
        else:
            hist, ignored, known = self.user_history(user_id)
        if not hist:
            return RecommendResult(self.popular(n, diversity), user_id, known, [], ignored,
                                   fallback="popular")
        V, live, W, window = self.interests(hist)
        rescore_fn = None
        if rank:
            rescore_fn = lambda cand, f, k: self.ranker.score(user_id, hist, cand, f, k, len(V))  # noqa: E731
        items = self.recommend_dense(V, live, W, window, hist if exclude_history else [], n, diversity,
                                     rescore_fn)
        return RecommendResult(items, user_id, known, [self.bundle.raw_id(i) for i in
                                                       window[window > 0]], ignored,
                               int(live.sum()), ranked=rank)

    @cached_property
    def popularity(self) -> np.ndarray:
        """(N,) share of the bundle's history events that each item has (padding 0)."""
        hists = list(self.bundle.user_histories.values())
        ids = np.concatenate(hists) if hists else np.zeros(0, dtype=np.int64)
        counts = np.bincount(ids, minlength=self.bundle.num_items).astype(np.float64)
        counts[0] = 0
        return counts / max(counts.sum(), 1.0)

    def popular(self, n: int, lam: float) -> list[Recommendation]:
        """The fallback list: the top items by popularity, diversified by ``lam``."""
        b = self.bundle
        m = min(max(self.cfg.candidates_per_interest, n), b.num_items - 1)
        cand = np.argsort(-self.popularity[1:], kind="stable")[:m] + 1  # (m,) ids, most popular first
        scores = self.popularity[cand].astype(np.float32)
        cats = (category_matrix(b.category_indptr, b.category_ids, cand, len(b.category_names))
                if lam > 0 else np.zeros((len(cand), 0), dtype=np.float32))
        recs = []
        for p in diversify(scores, cats, n, lam):
            info = b.item_info(int(cand[p]))
            recs.append(Recommendation(int(cand[p]), info["item_id"], info["title"],
                                       info["categories"], float(scores[p]), -1, []))
        return recs

    def retrieve(self, V: np.ndarray, live: np.ndarray, exclude: list[int],
                 m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates of the live interests: (C,) ids, (C,) f(u, i), (C,) interest index."""
        found, ids = self.index.search(np.ascontiguousarray(V[live]), m)  # (K_live, m) each
        cand = candidates(found, ids, exclude=np.asarray(exclude, dtype=np.int64))
        scores, k = rescore(V, live, self.bundle.item_vectors, cand)
        return cand, scores, k

    def recommend_dense(self, V: np.ndarray, live: np.ndarray, W: np.ndarray, window: np.ndarray,
                        exclude: list[int], n: int, lam: float,
                        rank: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
                        ) -> list[Recommendation]:
        """Retrieve, optionally re-score with ``rank`` ((C,) candidate ids, their retrieval scores
        and interests -> (C,) logits), diversify on the final scores."""
        b = self.bundle
        m = min(max(self.cfg.candidates_per_interest, n + len(set(exclude))), b.num_items - 1)
        cand, scores, k = self.retrieve(V, live, exclude, m)
        if rank is not None and len(cand):
            scores = 0.5 * (1.0 + np.tanh(0.5 * rank(cand, scores, k)))  # sigmoid of the logits
        if lam > 0:
            cats = category_matrix(b.category_indptr, b.category_ids, cand, len(b.category_names))
        else:  # plain top-n by score: categories are not needed
            cats = np.zeros((len(cand), 0), dtype=np.float32)
        picked = diversify(scores, cats, n, lam)
        recs = []
        for p in picked:
            item, kk = int(cand[p]), int(k[p])
            top = np.argsort(-W[kk], kind="stable")[: self.cfg.because]
            because = [b.raw_id(int(window[t])) for t in top if window[t] > 0 and W[kk, t] > 0]
            info = b.item_info(item)
            recs.append(Recommendation(item, info["item_id"], info["title"], info["categories"],
                                       float(scores[p]), kk, because))
        return recs
