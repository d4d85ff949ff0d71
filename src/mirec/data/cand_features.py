"""The features a candidate-trained ranker reads besides ids and history: one module that the
training data (``mirec.train.candidates``) and serving (``mirec.serve.pipeline.RankStage``)
both call, so that both compute them the same way (docs/ranking.md, "Candidate features").

For one user state (a history, and the retriever's candidates for it) and items X to score:

    0 score          the retrieval score f(u, i) = max over live interests k of v_k . e_i
    1 log_rank       log(1 + rank of f among the candidates), 0 = the best candidate
    2 interest_top   the best f among the candidates of the interest that retrieved i
    3 interest_gap   f - interest_top (<= 0 for a candidate)
    4 interest_order rank of that interest by its interest_top, 0 = the strongest
    5 log_pop        log(1 + events on i in the training window by other users)
    6 log_age        log(1 + window end - time of the last event on i by another user);
                     an item no other user touched gets the window's span
    7 log_cat_gap    log(1 + events since the user's last event in one of i's categories),
                     counted over the last HISTORY events; 0 when none (see 8)
    8 no_cat         1 when none of the last HISTORY events shares a category with i
    9 log_activity   log(1 + history length), the length capped at HISTORY

Nothing comes from the future: the window holds what the retriever may see (training users'
events and held-out users' history parts, never a held-out target), and its item statistics
leave out the user's own events, so a training example's positive (the user's next event,
which is in the window) does not count towards its own popularity or age.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMES = ("score", "log_rank", "interest_top", "interest_gap", "interest_order", "log_pop",
         "log_age", "log_cat_gap", "no_cat", "log_activity")
HISTORY = 200  # the history events a feature reads (what a served bundle keeps per user)


@dataclass
class ItemWindow:
    """Per-item statistics of the training window. ``N`` item ids (0 = padding)."""

    count: np.ndarray  # (N,) int64 events on the item
    last_ts: np.ndarray  # (N,) int64 time of the item's last event (window start - 1 if none)
    last_user: np.ndarray  # (N,) int64 the user of that event (-1 if none)
    other_ts: np.ndarray  # (N,) int64 the last event's time by a user other than last_user
    start: int  # the window's first and last event times
    end: int

    @classmethod
    def of(cls, user: np.ndarray, item: np.ndarray, ts: np.ndarray, num_items: int) -> ItemWindow:
        """Statistics of the events (user, item, ts), each (E,)."""
        start = int(ts.min()) if len(ts) else 0
        none = start - 1
        order = np.lexsort((ts, item))  # by item, then time
        u, i, t = user[order].astype(np.int64), item[order].astype(np.int64), ts[order].astype(np.int64)
        last_ts = np.full(num_items, none, dtype=np.int64)
        last_user = np.full(num_items, -1, dtype=np.int64)
        last_ts[i], last_user[i] = t, u  # the last write per item wins: its latest event
        other_ts = np.full(num_items, none, dtype=np.int64)
        other = u != last_user[i]  # events by someone else than the item's last user
        other_ts[i[other]] = t[other]
        return cls(np.bincount(i, minlength=num_items).astype(np.int64), last_ts, last_user, other_ts,
                   start, int(ts.max()) if len(ts) else 0)

    def to_dict(self) -> dict:
        return {"count": self.count, "last_ts": self.last_ts, "last_user": self.last_user,
                "other_ts": self.other_ts, "start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, d: dict) -> ItemWindow:
        arr = {k: np.asarray(d[k], dtype=np.int64) for k in ("count", "last_ts", "last_user", "other_ts")}
        return cls(**arr, start=int(d["start"]), end=int(d["end"]))


def top_positions(f: np.ndarray, r: int) -> np.ndarray:
    """Positions of the top ``r`` of candidates scoring ``f`` (C,), in their original order (ties
    by position): the set a served ranker reorders. Features 0-4 of the kept candidates are the
    same as over all C (every candidate scoring higher, and each interest's best, is kept)."""
    return np.sort(np.argsort(-f, kind="stable")[:r])


def retrieval_features(f: np.ndarray, k: np.ndarray, cand_f: np.ndarray, cand_k: np.ndarray,
                       num_interests: int) -> np.ndarray:
    """Features 0-4 of items with retrieval scores ``f`` (X,) from interests ``k`` (X,), given
    the candidate set's scores ``cand_f`` (C,) and interests ``cand_k`` (C,): (X, 5)."""
    top = np.full(num_interests, -np.inf)
    np.maximum.at(top, cand_k, cand_f)  # (K,) each interest's best candidate
    top_k = np.where(np.isfinite(top[k]), top[k], f)  # an interest with no candidate: its item's f
    order = np.argsort(np.argsort(-top, kind="stable"), kind="stable")  # (K,) 0 = strongest
    desc = np.sort(cand_f)[::-1]
    rank = np.searchsorted(-desc, -f, side="left")  # (X,) candidates scoring strictly higher
    return np.stack([f, np.log1p(rank), top_k, f - top_k, order[k]], axis=1).astype(np.float64)


def item_categories(items: np.ndarray, cat_indptr: np.ndarray,
                    cat_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (position in ``items``, category) pair of ``items`` (X,): two (P,) int64 arrays."""
    lens = cat_indptr[items + 1] - cat_indptr[items]  # (X,)
    row = np.repeat(np.arange(len(items)), lens)
    at = np.repeat(cat_indptr[items] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
    return row, cat_ids[at].astype(np.int64)


def user_features(items: np.ndarray, hist: np.ndarray, own: np.ndarray, user: int, window: ItemWindow,
                  cat_indptr: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
    """Features 5-9 of ``items`` (X,) for a user (dense id, -1 if unknown) with dense history
    ``hist`` (oldest first) and ``own`` the user's events in the window (a training user's whole
    sequence, later events included; at serving the history): (X, 5)."""
    items = np.asarray(items, dtype=np.int64)
    recent = np.asarray(hist[-HISTORY:], dtype=np.int64)  # (H,)
    mine_n = np.bincount(np.asarray(own, dtype=np.int64), minlength=len(window.count))[items]
    pop = np.maximum(window.count[items] - mine_n, 0)  # (X,) other users' events
    mine = window.last_user[items] == user
    last = np.where(mine, window.other_ts[items], window.last_ts[items])
    age = np.where(last >= window.start, window.end - last, window.end - window.start + 1)
    # events ago of the user's last event in each category (0 = the last event), then per item
    # the smallest over its categories
    never = HISTORY + 1
    ago = np.full(int(cat_ids.max(initial=-1)) + 1, never, dtype=np.int64)  # (G,)
    h_row, h_cat = item_categories(recent[::-1], cat_indptr, cat_ids)  # most recent first
    np.minimum.at(ago, h_cat, h_row)
    gap = np.full(len(items), never, dtype=np.int64)  # (X,)
    x_row, x_cat = item_categories(items, cat_indptr, cat_ids)
    np.minimum.at(gap, x_row, ago[x_cat])
    none = gap == never
    cat_gap = np.where(none, 0.0, np.log1p(np.maximum(gap, 0)))
    return np.stack([np.log1p(pop), np.log1p(np.maximum(age, 0)), cat_gap,
                     none.astype(np.float64), np.full(len(items), np.log1p(len(recent)))],
                    axis=1).astype(np.float64)


def features(items: np.ndarray, f: np.ndarray, k: np.ndarray, cand_f: np.ndarray, cand_k: np.ndarray,
             num_interests: int, hist: np.ndarray, own: np.ndarray, user: int, window: ItemWindow,
             cat_indptr: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
    """Every feature (X, len(NAMES)) float32 of ``items`` with retrieval scores ``f`` and
    interests ``k``; the arguments as in :func:`retrieval_features` and :func:`user_features`."""
    return np.concatenate([retrieval_features(f, k, cand_f, cand_k, num_interests),
                           user_features(items, hist, own, user, window, cat_indptr, cat_ids)],
                          axis=1).astype(np.float32)
