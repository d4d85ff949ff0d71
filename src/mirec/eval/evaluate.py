"""The evaluation loop: exact top-N over the whole catalogue, in batches of users.

A model is evaluated through the :class:`Scorer` contract: given left-padded histories it scores
every item id. Padding id 0 and (by default) every item of the user's history part are set to
-inf before the top-N cut, so they are never recommended. Equal scores rank by the lower id
(``eval.ties = "low-id"``, the default) or, with ``eval.ties = "pessimistic"``, every target
ranks after every non-target of equal score (targets among themselves by id): the lower bound a
published table's arbitrary tie order can reach (:func:`targets_last`). A retriever's
:class:`mirec.models.base.VectorScorer` never forms the (B, N) matrix: it ranks in blocks of
users x items (:mod:`mirec.eval.blocked`). ``eval.index = "faiss"`` ranks through the serving
index instead and reports its recall against exact (:mod:`mirec.eval.faiss_eval`).

Rows are what :class:`mirec.data.split.EvalUsers` holds: one per user (comirec, loo) or one per
target event (time), and every metric is a mean over rows. Under the time protocol the rows'
``new_items`` (outside the training catalogue) are never ranked, like padding, on every path,
and ``new_item_share`` (the share of the rows' targets that are new items, each a sure miss)
joins the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from mirec.data.dataset import Dataset
from mirec.data.split import EvalUsers, windows
from mirec.errors import MirecConfigError
from mirec.eval.blocked import scores_topn
from mirec.eval.metrics import topn_metrics


class Scorer(Protocol):
    """Anything that scores the catalogue for a batch of histories.

    A scorer with ``blocked = True`` is asked ``topn(hist, mask, n, (rows, items), never)`` for
    the (B, n) best item ids instead (computed where it likes, e.g. on a GPU; the ``(rows,
    items)`` pairs, the item ids ``never`` (sorted; None: none) and padding never ranked):
    :class:`mirec.models.base.VectorScorer` on a GPU."""

    def score(self, hist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """hist, mask: (B, L) item ids (0 = padding) and real-item mask -> (B, N) scores."""
        ...


TIES = ("low-id", "pessimistic")


@dataclass
class EvalConfig:
    """How top-N lists are cut and measured."""

    ns: tuple[int, ...] = (20, 50)
    exclude_history: bool = True
    batch_size: int = 512
    # Validation during training ranks a seeded sample of this many validation users (the same
    # users every epoch and after a resume); 0 = all. Final validation and test use all users.
    max_users: int = 0
    # exact (the blocked scan) | faiss: top-N from the serving index (mirec.eval.faiss_eval),
    # of kind faiss_kind (serving's auto | exact | hnsw | ivf), with its recall@N against exact
    # on a seeded sample of recall_users users reported as index_recall@N
    index: str = "exact"
    faiss_kind: str = "auto"
    recall_users: int = 200
    # how equal scores are ordered: low-id (the lower item id first) | pessimistic (a target
    # after every other item of its score; exact ranking only). docs/protocol.md#ties
    ties: str = "low-id"

    def validate(self) -> None:
        if not self.ns or min(self.ns) < 1:
            raise MirecConfigError(f"eval.ns: need positive list sizes, got {list(self.ns)}")
        if self.batch_size < 1:
            raise MirecConfigError(f"eval.batch_size: must be >= 1, got {self.batch_size}")
        if self.max_users < 0:
            raise MirecConfigError(f"eval.max_users: must be >= 0 (0 = all), got {self.max_users}")
        if self.index not in ("exact", "faiss"):
            raise MirecConfigError(f"eval.index: expected exact or faiss, got {self.index!r}")
        if self.faiss_kind not in ("auto", "exact", "hnsw", "ivf"):
            raise MirecConfigError(f"eval.faiss_kind: expected auto, exact, hnsw or ivf, "
                                   f"got {self.faiss_kind!r}")
        if self.recall_users < 1:
            raise MirecConfigError(f"eval.recall_users: must be >= 1, got {self.recall_users}")
        if self.ties not in TIES:
            raise MirecConfigError(f"eval.ties: expected low-id or pessimistic, got {self.ties!r}")
        if self.ties == "pessimistic" and self.index != "exact":
            raise MirecConfigError("eval.ties: pessimistic needs eval.index=exact (the Faiss index "
                                   "orders its ties itself)")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    topn: np.ndarray  # (U_e, max(ns)) ranked item ids
    num_users: int
    extra: dict = field(default_factory=dict)


def rank_topn(scorer: Scorer, ds: Dataset, users: EvalUsers, n: int, max_len: int,
              exclude_history: bool = True, batch_size: int = 512,
              progress: bool = False, ties: str = "low-id") -> np.ndarray:
    """Top-``n`` item ids per evaluated row, shape (U_e, n), best first; ``users.new_items``
    (when set) are never ranked; equal scores ordered as ``ties`` says (:class:`EvalConfig`)."""
    never = users.new_items
    rankable = ds.num_items - 1 - (0 if never is None else len(never))
    if n > rankable:  # N equal to the catalogue is a full ranking (as before the time protocol)
        what = "catalogue" if never is None else "training catalogue"
        raise MirecConfigError(f"eval.ns: N = {n} is larger than the {what} ({rankable} items)")
    out = np.zeros((len(users), n), dtype=np.int64)
    starts = range(0, len(users), batch_size)
    show = progress and len(users) > 4 * batch_size
    # disable=None shows bars on a terminal only, so logs and CI output stay readable
    for s in tqdm(starts, desc="evaluate", unit="batch", disable=None if show else True,
                  leave=False):
        b = users.select(slice(s, s + batch_size))
        hist, mask = windows(ds.item, b.hist_start, b.cut, max_len)
        rows = np.zeros(0, dtype=np.int64)  # (row, item) pairs never ranked: the history part
        seen = np.zeros(0, dtype=np.int64)
        if exclude_history:
            lens = b.cut - b.hist_start
            rows = np.repeat(np.arange(len(b)), lens)
            pos = np.repeat(b.hist_start - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
            seen = ds.item[pos].astype(np.int64)
        if ties == "pessimistic":
            out[s:s + len(b)] = pessimistic_topn(scorer, ds, b, hist, mask, n, (rows, seen), never)
            continue
        if getattr(scorer, "blocked", False):  # top-N on the scorer's device (a GPU)
            out[s:s + len(b)] = scorer.topn(hist, mask, n, (rows, seen), never)
            continue
        scores = masked_scores(scorer, hist, mask, (rows, seen), never)  # (B, N)
        out[s:s + len(b)] = scores_topn(torch.from_numpy(scores), n).numpy()  # ties: lower id
    return out


def masked_scores(scorer: Scorer, hist: np.ndarray, mask: np.ndarray,
                  seen: tuple[np.ndarray, np.ndarray], never: np.ndarray | None) -> np.ndarray:
    """The scorer's (B, N) float32 scores with padding, the ``seen`` (row, item) pairs and the
    items ``never`` set to -inf (never ranked)."""
    scores = np.array(scorer.score(hist, mask), dtype=np.float32, copy=True)  # (B, N)
    scores[:, 0] = -np.inf
    scores[seen] = -np.inf
    if never is not None:
        scores[:, never] = -np.inf
    return scores


def pessimistic_topn(scorer: Scorer, ds: Dataset, b: EvalUsers, hist: np.ndarray, mask: np.ndarray,
                     n: int, seen: tuple[np.ndarray, np.ndarray], never: np.ndarray | None) -> np.ndarray:
    """Top-``n`` ids (B, n) of one batch under ``eval.ties = "pessimistic"``: the top-n of the
    non-targets (targets never ranked, equal scores by the lower id), then the targets placed
    after every listed item of equal score (:func:`targets_last`).

    A full-score scorer's scores come from one (B, N) matrix. A blocked scorer (a retriever)
    ranks the non-targets in blocks and then scores the listed items and the targets with
    ``score_items`` (one computation, so equal scores compare equal)."""
    t_ptr, t_items = targets_csr(ds, b)
    t_rows = np.repeat(np.arange(len(b)), np.diff(t_ptr))
    rows, items = (np.concatenate([a, t]) for a, t in zip(seen, (t_rows, t_items)))
    t_ids = padded_targets(t_ptr, t_items)  # (B, T) sorted ids, 0 = none
    if getattr(scorer, "blocked", False):
        listed = scorer.topn(hist, mask, n, (rows, items), never)  # (B, n) non-targets
        ids = np.concatenate([listed, t_ids], 1)  # (B, n + T)
        both = np.array(scorer.score_items(hist, mask, ids), dtype=np.float32, copy=True)
        both[never_ranked(ids, seen, never, ds.num_items)] = -np.inf
        listed_s, t_s = both[:, :n], both[:, n:]
    else:
        scores = masked_scores(scorer, hist, mask, seen, never)  # (B, N)
        t_s = np.take_along_axis(scores, t_ids, 1)
        t_s[t_ids == 0] = -np.inf
        scores[t_rows, t_items] = -np.inf
        listed = scores_topn(torch.from_numpy(scores), n).numpy()
        listed_s = np.take_along_axis(scores, listed, 1)
    return targets_last(listed, listed_s, t_ids, t_s)


def never_ranked(ids: np.ndarray, seen: tuple[np.ndarray, np.ndarray], never: np.ndarray | None,
                 num_items: int) -> np.ndarray:
    """(B, M) bool: which of the (B, M) ``ids`` are never ranked for their row: padding 0, a
    ``seen`` (row, item) pair, an item of ``never``."""
    keys = np.arange(len(ids))[:, None] * num_items + ids
    out = (ids == 0) | np.isin(keys, seen[0] * num_items + seen[1])
    return out | np.isin(ids, never) if never is not None else out


def padded_targets(indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Targets CSR -> (B, T) distinct target ids per row in ascending order, 0 where a row has
    fewer (T = the most distinct targets of a row, at least 1)."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = np.lexsort((items, rows))
    rows, items = rows[order], items[order]
    keep = np.ones(len(items), bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])  # duplicates out
    rows, items = rows[keep], items[keep]
    counts = np.bincount(rows, minlength=len(indptr) - 1)
    out = np.zeros((len(indptr) - 1, max(int(counts.max(initial=0)), 1)), dtype=np.int64)
    start = np.cumsum(counts) - counts
    out[rows, np.arange(len(rows)) - start[rows]] = items
    return out


def targets_last(listed: np.ndarray, listed_s: np.ndarray, t_ids: np.ndarray,
                 t_s: np.ndarray) -> np.ndarray:
    """Merge the targets into a list of non-targets, pessimistically: (B, n) ids and scores of
    the top-n non-targets (best first), (B, T) target ids (ascending) and scores (-inf: never
    ranked) -> (B, n) ids ordered by score, a non-target before a target of equal score, targets
    among themselves by id. The order is (score descending, target last, id ascending)."""
    n = listed.shape[1]
    ids = np.concatenate([listed, t_ids], 1)  # (B, n + T)
    s = np.concatenate([listed_s, t_s], 1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :n]  # the listed ones first on equal scores
    return np.take_along_axis(ids, order, 1)


def sample_index(count: int, k: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of ``k`` of ``range(count)`` (all when ``k`` is 0 or not smaller):
    the same for the same seed, whatever ran before."""
    if not 0 < k < count:
        return np.arange(count)
    return np.sort(np.random.default_rng([seed, 25]).choice(count, k, replace=False))


def sample_users(users: EvalUsers, max_users: int, seed: int) -> EvalUsers:
    """A seeded sample of ``max_users`` of ``users`` in their original order (see
    :func:`sample_index`); ``users`` itself when that is all of them."""
    if not 0 < max_users < len(users):
        return users
    return users.select(sample_index(len(users), max_users, seed))


def targets_csr(ds: Dataset, users: EvalUsers) -> tuple[np.ndarray, np.ndarray]:
    """Each evaluated user's targets ``item[cut:end]`` as CSR ``(indptr, items)``."""
    lens = users.end - users.cut
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    pos = np.repeat(users.cut - indptr[:-1], lens) + np.arange(indptr[-1])
    return indptr, ds.item[pos].astype(np.int64)


def evaluate(scorer: Scorer, ds: Dataset, users: EvalUsers, max_len: int,
             cfg: EvalConfig | None = None, progress: bool = False) -> EvalResult:
    """Rank the whole catalogue for ``users`` and compute the protocol's metrics."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    if len(users) == 0:
        raise MirecConfigError("no users to evaluate (every user lacks a target)")
    n_max = max(cfg.ns)
    ranker = scorer
    if cfg.index == "faiss":
        from mirec.eval.faiss_eval import IndexScorer  # Faiss only when asked for

        if not hasattr(scorer, "interests"):
            raise MirecConfigError("eval.index=faiss: needs a retrieval model's interest vectors; "
                                   "this scorer only scores (a baseline)")
        ranker = IndexScorer(scorer, cfg.faiss_kind, users.new_items)
    topn = rank_topn(ranker, ds, users, n_max, max_len, cfg.exclude_history, cfg.batch_size,
                     progress, cfg.ties)
    indptr, items = targets_csr(ds, users)
    if users.new_items is not None:
        # a row with fewer rankable items than N is filled with never-ranked ids (-inf): a new
        # item among them would count as a hit, so it becomes padding (never a target)
        topn[np.isin(topn, users.new_items)] = 0
    cat_indptr, cat_ids, _ = ds.category_index()
    metrics = topn_metrics(topn, indptr, items, cat_indptr, cat_ids, ds.num_items - 1,
                           tuple(sorted(cfg.ns)))
    if users.new_items is not None:
        metrics["new_item_share"] = float(np.isin(items, users.new_items).mean())
    if ranker is not scorer:
        metrics[f"index_recall@{n_max}"] = index_recall_on_sample(scorer, ds, users, topn, max_len, cfg)
    return EvalResult(metrics, topn, len(users))


def index_recall_on_sample(scorer: Scorer, ds: Dataset, users: EvalUsers, topn: np.ndarray,
                           max_len: int, cfg: EvalConfig) -> float:
    """Recall of ``topn`` (U_e, n) against the exact top-n on a seeded sample of the users."""
    from mirec.eval.faiss_eval import index_recall

    pick = sample_index(len(users), cfg.recall_users, 0)
    exact = rank_topn(scorer, ds, users.select(pick), topn.shape[1], max_len, cfg.exclude_history,
                      cfg.batch_size)
    return index_recall(topn[pick], exact)
