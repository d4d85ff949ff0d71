"""One recommendation, end to end: history -> interests -> ANN search -> aggregation.

The CLI (``mirec recommend``), the HTTP service (``POST /recommend``) and the diversity report
all call :meth:`Recommender.recommend`::

    history (raw ids) --map--> dense ids, unknown ones reported in ``ignored_items``
    user tower on the last max_len items       -> K interest vectors, live mask, weights (K, L)
    each live interest searches the index      -> top-M items per interest
    union of the candidates, history removed   -> re-scored by f(u, i) = max_k v_k . e_i
    [rank=True: a ranker (serve/pipeline.py)    -> re-scores the top-R candidates by f: P(click)]
    diversify(lambda)                          -> the final n, each with the interest that
                                                  scored it and that interest's 3 heaviest
                                                  history items ("because")

An unknown user or a history with no catalogue item has no interests to search with: the
candidates are then the most popular items (counted over the bundle's user histories), scored
by their share of those events, with ``fallback="popular"`` and ``interest=-1``.

Business filters (:class:`Filters`, plus the items marked unavailable at start) remove items
after the search; when fewer than n candidates survive, each interest's M is widened (x4 at a
time, up to ``max_candidates_per_interest``) and the search repeated; a list that still has
fewer than n items says so with ``short=True``. :meth:`Recommender.recommend_all` does the same
for every known user, a block of users at a time (one tower batch, one Faiss search per block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from mirec.data.cand_features import top_positions
from mirec.data.split import left_pad
from mirec.errors import MirecConfigError
from mirec.models.base import user_interests
from mirec.serve.aggregate import candidates, category_matrix, diversify, rescore
from mirec.serve.bundle import Bundle, load_bundle, open_index
from mirec.serve.catalogue import add_new_items, read_unavailable
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.pipeline import RankStage
from mirec.serve.store import Store, open_store


@dataclass
class ServeConfig:
    candidates_per_interest: int = 200  # M: each interest's top-M from the index
    max_candidates_per_interest: int = 5000  # the cap when filters make M widen
    rank_candidates: int = 200  # R: with rank=True the ranker scores the top-R candidates by f
    max_n: int = 500  # largest n a request may ask for
    max_history: int = 1000  # longest history a request may send
    because: int = 3  # history items named per recommendation

    def validate(self) -> None:
        for name in ("candidates_per_interest", "max_candidates_per_interest", "rank_candidates", "max_n",
                     "max_history", "because"):
            if getattr(self, name) < 1:
                raise MirecConfigError(f"serve.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class Filters:
    """Business rules of one request (raw ids and category names; unknown ones match nothing)."""

    exclude_items: list[str] = field(default_factory=list)
    exclude_categories: list[str] = field(default_factory=list)
    only_categories: list[str] | None = None  # given: only items in at least one of these

    def empty(self) -> bool:
        return not self.exclude_items and not self.exclude_categories and self.only_categories is None


@dataclass
class Recommendation:
    item: int  # dense id
    item_id: str  # raw id
    title: str
    categories: list[str]
    score: float  # f(u, i); with rank=True the ranker's probability
    interest: int  # which interest retrieved and scored it
    because: list[str]  # raw ids of the history items that weigh most in that interest
    new: bool = False  # added after training (cold-start vector, serve/catalogue.py)


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
    short: bool = False  # fewer than n items passed the filters


Found = tuple[np.ndarray, np.ndarray]  # (Q, m) scores and ids of an index search


@dataclass
class TopN:
    """One user's list as arrays (the batch path, :meth:`Recommender.recommend_all`)."""

    user_id: str
    items: np.ndarray  # (n',) dense ids, best first
    scores: np.ndarray  # (n',)
    interests: np.ndarray  # (n',) the interest that scored each item; -1 for the fallback
    short: bool = False  # fewer than n items passed the filters
    fallback: str | None = None


class Recommender:
    """One user's top-n from a bundle: interests -> per-interest ANN search -> aggregation with
    the diversity weight (-> the ranking stage when a ranker is attached)."""

    @classmethod
    def open(cls, bundle: str | Path, index: str = "auto", store: str | Path | None = None,
             ranker: str | Path | None = None, hnsw_above: int = 50_000,
             unavailable: str | Path | None = None, new_items: str | Path | None = None, *,
             keep_events: int | None = None, create_store: bool = True,
             events: Store | None = None) -> Recommender:
        """Open a bundle directory (``mirec export``) for serving; the one place a recommender
        is opened (the CLI, the HTTP workers and reloads come here through
        :func:`mirec.serve.service.open_recommender`). The data path reads one way::

            load_bundle (bundle.py: every file validated, once)
              [+ new items (catalogue.py)] -> ranking run (pipeline.py) -> unavailable items
              -> open_index (bundle.py: the saved index, verified, or one built in memory)
              -> event store (store.py) -> Recommender

        ``store``: an event store, a SQLite file or a ``postgresql://`` URL (``keep_events``:
        per-user retention; ``create_store=False``: it must exist, reading only); ``events``: an
        open store to use instead (a reload keeps the server's); ``ranker``: a ranking run;
        ``unavailable``: a file of item ids never recommended; ``new_items``: a file of items
        added after training (serve/catalogue.py). The options are kept on the recommender
        (``rec.options``) so that
        :func:`mirec.serve.service.reopen` can load a new bundle the same way."""
        options = dict(kind=index, hnsw_above=hnsw_above, store=store, ranker=ranker,
                       keep_events=keep_events, create_store=create_store, unavailable=unavailable,
                       new_items=new_items)
        cfg = IndexConfig(kind=index, hnsw_above=hnsw_above)
        cfg.validate()
        b = load_bundle(bundle)
        if new_items:
            b = add_new_items(b, new_items)
        stage = RankStage.from_run(ranker, b) if ranker else None
        blocked = read_unavailable(unavailable, b) if unavailable else None
        item_index = open_index(b, cfg)
        if events is None and store:  # last: a refusal above leaves no store open
            events = open_store(store, keep_events, create_store)
        rec = cls(b, item_index, events, ranker=stage, unavailable=blocked)
        rec.options = options
        return rec

    def __init__(self, bundle: Bundle, index: ItemIndex, store: Store | None = None,
                 cfg: ServeConfig | None = None, ranker: RankStage | None = None,
                 unavailable: np.ndarray | None = None) -> None:
        self.bundle, self.index, self.store, self.ranker = bundle, index, store, ranker
        self.unavailable = unavailable  # (N,) bool or None
        self.options = None  # the ServeOptions it was opened with (for reloads)
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

    def tower_history(self, hist: list[int]) -> list[int]:
        """The history the tower may see: items added after training have no embedding row."""
        trained = self.bundle.trained_items
        return hist if self.bundle.new_from is None else [i for i in hist if i < trained]

    @torch.no_grad()
    def interests_batch(self, hists: list[list[int]]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The tower on each history's last max_len trained items, in one batch: vectors
        (B, K, D), live (B, K), weights (B, K, L), and the (B, L) dense ids (0 = padding)."""
        windows = np.stack([left_pad(self.tower_history(h), self.bundle.max_len) for h in hists])
        h = torch.from_numpy(windows)  # (B, L)
        out = user_interests(self.bundle.model, h, h > 0, self.bundle.cosine)
        return (out.vectors.numpy().astype(np.float32), out.mask.numpy(), out.weights.numpy(), windows)

    def interests(self, hist: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One history: vectors (K, D), live (K,), weights (K, L), window (L,)."""
        V, live, W, window = self.interests_batch([hist])
        return V[0], live[0], W[0], window[0]

    def check(self, n: int, diversity: float, rank: bool) -> None:
        if not 1 <= n <= self.cfg.max_n:
            raise MirecConfigError(f"n: must be in [1, {self.cfg.max_n}], got {n}")
        if not (math.isfinite(diversity) and diversity >= 0):
            raise MirecConfigError(f"lambda: must be a finite number >= 0, got {diversity}")
        if rank and self.ranker is None:
            raise MirecConfigError("rank: this recommender has no ranker (start it with --ranker RUN)")

    def recommend(self, user_id: str | None = None, history: list[str] | None = None,
                  n: int = 20, diversity: float = 0.0, exclude_history: bool = True,
                  rank: bool = False, filters: Filters | None = None) -> RecommendResult:
        if (user_id is None) == (history is None):
            raise MirecConfigError("give exactly one of user_id or history")
        self.check(n, diversity, rank)
        if history is not None:
            if len(history) > self.cfg.max_history:
                raise MirecConfigError(f"history: at most {self.cfg.max_history} items, "
                                       f"got {len(history)}")
            hist, ignored = self.map_items(history)
            known = bool(hist)
        else:
            hist, ignored, known = self.user_history(user_id)
        blocked = self.blocked(filters)
        if not self.tower_history(hist):
            return self.fallback(user_id, known, ignored, n, diversity, blocked)
        V, live, W, window = self.interests(hist)
        return self.result(user_id, known, hist, ignored, (V, live, W, window), n, diversity,
                           exclude_history, rank, blocked)

    def fallback(self, user_id: str | None, known: bool, ignored: list[str], n: int, lam: float,
                 blocked: np.ndarray | None) -> RecommendResult:
        items = self.popular(n, lam, blocked)
        return RecommendResult(items, user_id, known, [], ignored, fallback="popular",
                               short=len(items) < n)

    def rank_fn(self, user_id: str | None, hist: list[int],
                num_interests: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """(C,) candidate ids, their retrieval scores and interests -> the ranker's logits for
        this user (a candidate-trained ranker reads the scores and interests as features)."""
        trained, tower_hist = self.bundle.trained_items, self.tower_history(hist)
        # a new item has no row in the ranker's item table either: it is scored as padding
        return lambda c, f, k: self.ranker.score(user_id, tower_hist, np.where(c < trained, c, 0), f, k,
                                                 num_interests)

    def result(self, user_id: str | None, known: bool, hist: list[int], ignored: list[str],
               tower: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], n: int, lam: float,
               exclude_history: bool, rank: bool, blocked: np.ndarray | None) -> RecommendResult:
        """One user's result from the tower's output."""
        V, live, W, window = tower
        items = self.recommend_dense(V, live, W, window, hist if exclude_history else [], n, lam,
                                     self.rank_fn(user_id, hist, len(V)) if rank else None, blocked)
        return RecommendResult(items, user_id, known, [self.bundle.raw_id(i) for i in window[window > 0]],
                               ignored, int(live.sum()), ranked=rank, short=len(items) < n)

    def recommend_all(self, n: int = 100, diversity: float = 0.0, rank: bool = False,
                      filters: Filters | None = None, exclude_history: bool = True,
                      block: int = 1024, users: list[str] | None = None) -> Iterator[list[TopN]]:
        """Every known user's top-n (``users``: a subset), ``block`` users at a time: one tower
        batch and one Faiss search per block, then each user's aggregation exactly as in
        :meth:`recommend`, kept as arrays. Yields one list per block."""
        self.check(n, diversity, rank)
        if block < 1:
            raise MirecConfigError(f"block: must be >= 1, got {block}")
        blocked = self.blocked(filters)
        users = sorted(self.bundle.user_histories) if users is None else users
        for start in range(0, len(users), block):
            ids = users[start:start + block]
            hists = [self.user_history(u)[0] for u in ids]
            warm = [j for j, h in enumerate(hists) if self.tower_history(h)]
            out: list[TopN | None] = [None] * len(ids)
            if warm:
                V, live, _, _ = self.interests_batch([hists[j] for j in warm])  # (B, K, D), (B, K)
                ms = [self.first_m(n, hists[j] if exclude_history else []) for j in warm]
                scores, found = self.index.search(np.ascontiguousarray(V[live]), max(ms))  # (Q, M)
                ends = np.cumsum(live.sum(1))  # user b's rows: ends[b] - live[b].sum() .. ends[b]
                for b, j in enumerate(warm):
                    rows = slice(ends[b] - int(live[b].sum()), ends[b])
                    exclude = hists[j] if exclude_history else []
                    got = self.topn(V[b], live[b], exclude, n, diversity,
                                    self.rank_fn(ids[j], hists[j], V.shape[1]) if rank else None, blocked,
                                    (scores[rows, :ms[b]], found[rows, :ms[b]]))
                    out[j] = TopN(ids[j], *got, short=len(got[0]) < n)
            for j in range(len(ids)):
                if out[j] is None:
                    top, sc = self.popular_topn(n, diversity, blocked)
                    out[j] = TopN(ids[j], top, sc, np.full(len(top), -1), len(top) < n, "popular")
            yield out

    @cached_property
    def _category_owner(self) -> np.ndarray:
        """(entries,) the item of each entry of the category CSR."""
        return np.repeat(np.arange(self.bundle.num_items), np.diff(self.bundle.category_indptr))

    def in_categories(self, names: list[str]) -> np.ndarray:
        """(N,) bool: items in at least one of the named categories."""
        b = self.bundle
        wanted = [j for j, c in enumerate(b.category_names) if c in set(names)]
        hit = np.isin(b.category_ids, wanted)
        return np.bincount(self._category_owner[hit], minlength=b.num_items) > 0

    def blocked(self, f: Filters | None) -> np.ndarray | None:
        """(N,) bool: items a request must not get (unavailable ones, its filters); None if none."""
        b = self.bundle
        if self.unavailable is None and (f is None or f.empty()):
            return None
        mask = np.zeros(b.num_items, dtype=bool) if self.unavailable is None else self.unavailable.copy()
        if f is not None:
            mask[[b.item_ids[r] for r in f.exclude_items if r in b.item_ids]] = True
            if f.exclude_categories:
                mask |= self.in_categories(f.exclude_categories)
            if f.only_categories is not None:
                mask |= ~self.in_categories(f.only_categories)
        mask[0] = True
        return mask

    @cached_property
    def popularity(self) -> np.ndarray:
        """(N,) share of the bundle's history events that each item has (padding 0)."""
        ids = self.bundle.user_histories.flat
        counts = np.bincount(ids, minlength=self.bundle.num_items).astype(np.float64)
        counts[0] = 0
        return counts / max(counts.sum(), 1.0)

    def popular_topn(self, n: int, lam: float, blocked: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The fallback list: (n',) ids and popularity shares, diversified by ``lam``."""
        m = min(max(self.cfg.candidates_per_interest, n), self.bundle.num_items - 1)
        order = np.argsort(-self.popularity[1:], kind="stable") + 1  # (N-1,) most popular first
        if blocked is not None:
            order = order[~blocked[order]]
        cand = order[:m]
        scores = self.popularity[cand].astype(np.float32)
        picked = self.pick(cand, scores, n, lam)
        return cand[picked], scores[picked]

    def popular(self, n: int, lam: float, blocked: np.ndarray | None = None) -> list[Recommendation]:
        ids, scores = self.popular_topn(n, lam, blocked)
        return [self.item(int(i), float(s), -1, []) for i, s in zip(ids, scores)]

    def item(self, item: int, score: float, interest: int, because: list[str]) -> Recommendation:
        b = self.bundle
        return Recommendation(item, b.item_raw[item], b.item_title[item], list(b.item_categories[item]),
                              score, interest, because, b.is_new(item))

    def pick(self, cand: np.ndarray, scores: np.ndarray, n: int, lam: float) -> np.ndarray:
        """Positions of the final n among the candidates: diversify(lambda) over their categories."""
        b = self.bundle
        if lam > 0:
            cats = category_matrix(b.category_indptr, b.category_ids, cand, len(b.category_names))
        else:  # plain top-n by score: categories are not needed
            cats = np.zeros((len(cand), 0), dtype=np.float32)
        return diversify(scores, cats, n, lam)

    def first_m(self, n: int, exclude: list[int]) -> int:
        """Per-interest M of the first search: enough for n after removing the history."""
        return min(max(self.cfg.candidates_per_interest, n + len(set(exclude))), self.bundle.num_items - 1)

    def retrieve(self, V: np.ndarray, live: np.ndarray, exclude: list[int], m: int,
                 blocked: np.ndarray | None = None, need: int = 0,
                 found: Found | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates of the live interests: (C,) ids, (C,) f(u, i), (C,) interest index.
        While fewer than ``need`` pass ``blocked``, M grows x4 (up to the cap) and the search
        runs again; ``found`` is the first search's result when the caller already has it."""
        cap = min(max(self.cfg.max_candidates_per_interest, m), self.bundle.num_items - 1)
        drop = np.asarray(exclude, dtype=np.int64)
        while True:
            if found is None:
                found = self.index.search(np.ascontiguousarray(V[live]), m)  # (K_live, m) each
            cand = candidates(*found, exclude=drop)
            if blocked is not None:
                cand = cand[~blocked[cand]]
            if len(cand) >= need or m >= cap:
                break
            m, found = min(4 * m, cap), None
        scores, k = rescore(V, live, self.bundle.item_vectors, cand)
        return cand, scores, k

    def topn(self, V: np.ndarray, live: np.ndarray, exclude: list[int], n: int, lam: float,
             rank: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
             blocked: np.ndarray | None = None, found: Found | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Retrieve, optionally re-score with ``rank`` (candidate ids -> logits), diversify:
        (n',) ids, scores and interests, best first."""
        cand, scores, k = self.retrieve(V, live, exclude, self.first_m(n, exclude), blocked, n, found)
        if rank is not None and len(cand):
            # the ranker reorders the top-R by f; the union of K x M is several hundred items and
            # the ranker's cost grows with it
            keep = top_positions(scores, max(self.cfg.rank_candidates, n))
            cand, scores, k = cand[keep], scores[keep], k[keep]
            scores = 0.5 * (1.0 + np.tanh(0.5 * rank(cand, scores, k)))  # sigmoid of the logits
        picked = self.pick(cand, scores, n, lam)
        return cand[picked], scores[picked], k[picked]

    def recommend_dense(self, V: np.ndarray, live: np.ndarray, W: np.ndarray, window: np.ndarray,
                        exclude: list[int], n: int, lam: float,
                        rank: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
                        blocked: np.ndarray | None = None) -> list[Recommendation]:
        """:meth:`topn` as Recommendations, each with the history items behind its interest."""
        b = self.bundle
        recs = []
        for item, score, kk in zip(*self.topn(V, live, exclude, n, lam, rank, blocked)):
            top = np.argsort(-W[kk], kind="stable")[: self.cfg.because]
            because = [b.raw_id(int(window[t])) for t in top if window[t] > 0 and W[kk, t] > 0]
            recs.append(self.item(int(item), float(score), int(kk), because))
        return recs
