"""Click-through examples for the rankers, from a prepared data set (the ranking protocol: docs/ranking.md).

Labels: with ratings (MovieLens), ``rating >= positive_rating`` is a positive and a lower rating
a negative (both were shown). A log without ratings (Taobao pv, Amazon) has only positives;
``negatives`` items per positive are then drawn uniformly from the catalogue with a fixed seed
(never the positive item itself) and take the positive's place in time.

Split by time per user (``split.protocol = "per-user"``, the default): the last ``test_fraction``
of each user's events (at least one) are test, the ``valid_fraction`` before them (at least one,
when the user has 3 or more events) validation, the rest training. Sampled negatives follow
their positive.

``split.protocol = "time"`` takes the retrieval time protocol's cut instead
(:func:`mirec.data.split.split_users`, its module docstring): the events before
``split.valid_from`` are the training examples; every event of the validation window
``[valid_from, test_from)`` and of the test window (from ``test_from`` on) that has an earlier
event of its user (the retrieval rows) is a validation / test example, its history every earlier
event of the user, window events included. Negatives are drawn from the training catalogue
(the items of the training events), and window events whose item is new (outside it) are no
example: ``new_item_share`` says which share of each window's rows they were.

Features of each example: the user's dense id and profile codes, the candidate item, and the
user's earlier *positive* items (the last ``max_len``, left-padded; ``history = "all"`` takes
every earlier event instead, as a served event log has no ratings). Earlier means earlier in
the user's time-ordered sequence, so an event never sees itself or anything after it.
``labels = "implicit"`` ignores ratings: every event is a positive, negatives are sampled.

Everything is flat NumPy: the positives of all users are one array ``pos_item`` and each
example points at its history window ``pos_item[hist_start:hist_stop]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mirec.config import MAX_BATCH, MAX_LEN, check_fields, setting, size
from mirec.data.dataset import Dataset
from mirec.data.split import SplitConfig, split_users, windows
from mirec.errors import MirecConfigError

if TYPE_CHECKING:  # imported where used: models and training import this module without polars
    import polars as pl

TRAIN, VALID, TEST = 0, 1, 2
NONE = -1  # an event that is no example (the time protocol's new items, a new user's first window event)
RANK_PROTOCOLS = ("per-user", "time")
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: <18, 18-24, ..., 56+


@dataclass
class RankFeatures:
    """What a ranker needs to know about the feature space (saved in every CTR checkpoint)."""

    num_items: int  # item ids 0..num_items-1, 0 = padding
    num_users: int  # dense user ids 0..num_users-1
    profile_sizes: list[int]  # cardinality of each profile field, code 0 = unknown
    item_categories: torch.Tensor  # (N, C) long, category ids + 1, 0 = padding; row 0 all 0
    # A ranker trained on a retriever's candidates (mirec.train.candidates) also reads F dense
    # features per example (mirec.data.cand_features), standardised with the training mean/std;
    # ``window`` holds the training window's item statistics that serving computes them with.
    num_dense: int = 0
    dense_mean: torch.Tensor | None = None  # (F,) float
    dense_std: torch.Tensor | None = None  # (F,) float
    window: dict | None = None  # ItemWindow.to_dict()

    @property
    def num_categories(self) -> int:
        """Category id space including padding 0."""
        return int(self.item_categories.max()) + 1 if self.item_categories.numel() else 1


@dataclass
class CTRBatch:
    """A batch of (user, candidate) pairs with the user's earlier positive items."""

    user: torch.Tensor  # (B,) long, dense user id
    profile: torch.Tensor  # (B, F) long, profile codes (0 = unknown)
    item: torch.Tensor  # (B,) long, candidate item id
    hist: torch.Tensor  # (B, L) long, earlier positives, left-padded with 0, most recent last
    mask: torch.Tensor  # (B, L) bool, True on real history items
    dense: torch.Tensor | None = None  # (B, F) float, candidate features (rankers with num_dense)


@dataclass
class CTRConfig:
    max_len: int = size(50, MAX_LEN)  # earlier positive items per example (MIMN uses hundreds)
    positive_rating: float = 4.0  # with ratings: rating >= this is a positive
    negatives: int = size(1, MAX_BATCH)  # without ratings: sampled negatives per positive
    test_fraction: float = 0.1
    valid_fraction: float = 0.1
    seed: int = setting(2020, ge=0)  # negative sampling seed (the split itself is by time, not random)
    labels: str = "auto"  # auto: ratings when the data has them | rating | implicit
    history: str = "positives"  # positives: earlier positive items | all: every earlier event

    def validate(self) -> None:
        check_fields(self, "ctr.")
        if self.labels not in ("auto", "rating", "implicit"):
            raise MirecConfigError(f"ctr.labels: expected auto, rating or implicit, got {self.labels!r}")
        if self.history not in ("positives", "all"):
            raise MirecConfigError(f"ctr.history: expected positives or all, got {self.history!r}")
        for name in ("test_fraction", "valid_fraction"):
            v = getattr(self, name)
            if not 0 < v < 0.5:
                raise MirecConfigError(f"ctr.{name}: must be in (0, 0.5), got {v}")


@dataclass
class RankSplitConfig:
    """Which events the ranking task trains, validates and tests on (module docstring)."""

    protocol: str = "per-user"  # per-user (ctr.test_fraction, ctr.valid_fraction) | time
    # protocol time: where the validation and test windows start, as split.valid_from and
    # split.test_from of retrieval (a Unix timestamp >= 1 or a fraction of the event timeline)
    valid_from: float = 0.8
    test_from: float = 0.9

    def validate(self) -> None:
        check_fields(self, "split.")
        if self.protocol not in RANK_PROTOCOLS:
            raise MirecConfigError(f"split.protocol: --task ctr splits per-user (the default: each user's "
                                   f"last events, ctr.test_fraction) or by time, got {self.protocol!r}")
        if self.protocol == "time":
            self.time_config().validate()

    def time_config(self) -> SplitConfig:
        """The retrieval split config of the same cut (what :func:`split_users` takes)."""
        return SplitConfig(protocol="time", valid_from=self.valid_from, test_from=self.test_from)


@dataclass
class Parts:
    """Which part each event's examples are in, and what the split says about it."""

    part: np.ndarray  # (E,) int8: TRAIN, VALID, TEST or NONE
    catalogue: np.ndarray | None = None  # sorted item ids negatives come from (None: every item)
    new_item_share: dict[int, float] | None = None  # VALID / TEST: share of the rows left out as new items
    time_cuts: tuple[int, int] | None = None  # (valid_from, test_from) as timestamps of ds.ts


def time_protocol_parts(ds: Dataset, split: RankSplitConfig) -> Parts:
    """The time protocol's parts of ``ds``'s events (module docstring): the training events and
    the retrieval split's validation and test rows, less those whose item is new."""
    sp = split_users(ds, split.time_config())
    part = np.full(len(ds.item), NONE, dtype=np.int8)
    part[sp.train_events(ds.offsets)] = TRAIN
    part[sp.valid.cut] = VALID  # a row's target is the one event at cut
    part[sp.test.cut] = TEST
    known = np.ones(ds.num_items, dtype=bool)
    known[sp.valid.new_items] = False
    known[0] = False  # padding
    new = ~known[ds.item]  # (E,)
    share = {p: float(new[part == p].mean()) if (part == p).any() else 0.0 for p in (VALID, TEST)}
    part[(part != TRAIN) & new] = NONE
    if not (part == VALID).any():
        raise MirecConfigError(f"split.valid_from: no validation example between ts {sp.time_cuts[0]} and "
                               f"{sp.time_cuts[1]} (every event there is a new item or a user's first)")
    return Parts(part, np.flatnonzero(known), share, sp.time_cuts)


@dataclass
class CTRData:
    """Every example of one data set; ``part`` says train / valid / test."""

    user: np.ndarray  # (M,) int64
    item: np.ndarray  # (M,) int64
    label: np.ndarray  # (M,) float32, 1 = positive
    part: np.ndarray  # (M,) int8: TRAIN, VALID or TEST
    hist_start: np.ndarray  # (M,) int64, the user's first positive in pos_item
    hist_stop: np.ndarray  # (M,) int64, one past the last positive before the example
    pos_item: np.ndarray  # (P,) int32, every user's positives in time order
    pos_offsets: np.ndarray  # (U+1,) int64: user u's positives are pos_item[pos_offsets[u]:pos_offsets[u+1]]
    profile: np.ndarray  # (U, F) int64 profile codes, 0 = unknown
    profile_names: list[str]
    user_raw_ids: list[str]  # row u = dense user u
    features: RankFeatures
    max_len: int
    sampled_negatives: int  # 0 when labels came from ratings
    dense: np.ndarray | None = None  # (M, F) float32 candidate features (mirec.train.candidates)
    source: np.ndarray | None = None  # (M,) int64 event position of the example's positive
    ts: np.ndarray | None = None  # (M,) int64 the time of the example's event (train.since)
    # split.protocol=time: VALID / TEST -> the share of the window's rows left out as new items
    new_item_share: dict[int, float] | None = None
    time_cuts: tuple[int, int] | None = None  # split.protocol=time: (valid_from, test_from) as ts

    def indices(self, part: int) -> np.ndarray:
        return np.flatnonzero(self.part == part)

    def batch(self, idx: np.ndarray) -> CTRBatch:
        """The examples ``idx`` as tensors (one gather for the histories)."""
        hist, mask = windows(self.pos_item, self.hist_start[idx], self.hist_stop[idx], self.max_len)
        user = self.user[idx]
        return CTRBatch(user=torch.from_numpy(user), profile=torch.from_numpy(self.profile[user]),
                        item=torch.from_numpy(self.item[idx]), hist=torch.from_numpy(hist),
                        mask=torch.from_numpy(mask),
                        dense=None if self.dense is None else torch.from_numpy(self.dense[idx]))


def profile_codes(users: pl.DataFrame) -> tuple[np.ndarray, list[str], list[int]]:
    """Integer codes of the users' profile columns: ``(codes (U, F), names, sizes)``.

    ``age`` is bucketed into MovieLens-1M's groups; other columns are categorical, coded by
    sorted value (0 = missing). Columns that look like identifiers (more distinct values than
    half the users, e.g. a zip code) are left out.
    """
    import polars as pl

    cols, names, sizes = [], [], []
    for name in users.columns:
        if name in ("user", "raw_id"):
            continue
        col = users[name]
        if col.dtype.is_nested():  # lists (e.g. a synthetic set's planted interests): not a feature
            continue
        if name == "age":
            age = col.cast(pl.Float64, strict=False).to_numpy()
            code = np.where(np.isnan(age), 0, np.searchsorted(AGE_BUCKETS, age, side="right") + 1)
            cols.append(code.astype(np.int64))
            names.append(name)
            sizes.append(len(AGE_BUCKETS) + 2)
            continue
        values = col.cast(pl.Utf8).fill_null("").to_list()
        vocab = sorted({v for v in values if v})
        if not vocab or len(vocab) > max(users.height // 2, 1):
            continue
        lut = {v: j + 1 for j, v in enumerate(vocab)}
        cols.append(np.fromiter((lut.get(v, 0) for v in values), dtype=np.int64, count=len(values)))
        names.append(name)
        sizes.append(len(vocab) + 1)
    codes = np.stack(cols, axis=1) if cols else np.zeros((users.height, 0), dtype=np.int64)
    return codes, names, sizes


def category_table(ds: Dataset) -> torch.Tensor:
    """(N, C) long: category ids + 1 of each item, 0-padded; row 0 (padding item) all 0."""
    indptr, ids, _ = ds.category_index()
    return padded_categories(indptr, ids)


def padded_categories(indptr: np.ndarray, ids: np.ndarray) -> torch.Tensor:
    """Item categories as CSR (``indptr`` (N + 1,), category ids) -> (N, C) long, ids + 1,
    0-padded (C = the most categories of an item, at least 1)."""
    lens = np.diff(indptr)
    table = np.zeros((len(lens), max(int(lens.max(initial=0)), 1)), dtype=np.int64)
    row = np.repeat(np.arange(len(lens)), lens)
    col = np.arange(len(ids)) - np.repeat(indptr[:-1], lens)
    table[row, col] = ids.astype(np.int64) + 1
    return torch.from_numpy(table)


def time_parts(offsets: np.ndarray, test_fraction: float, valid_fraction: float) -> np.ndarray:
    """(E,) int8 part of each event: per user the last ``test_fraction`` (>= 1) is TEST, the
    ``valid_fraction`` before it (>= 1 when the user has >= 3 events) VALID."""
    n = np.diff(offsets)
    n_test = np.maximum(1, np.floor(test_fraction * n)).astype(np.int64)
    n_valid = np.where(n >= 3, np.maximum(1, np.floor(valid_fraction * n)), 0).astype(np.int64)
    n_test = np.minimum(n_test, n)
    n_valid = np.minimum(n_valid, n - n_test)
    # position of each event from its user's end: 0 = last
    from_end = np.repeat(offsets[1:], n) - 1 - np.arange(offsets[-1])
    user_test = np.repeat(n_test, n)
    user_valid = np.repeat(n_valid, n)
    part = np.full(offsets[-1], TRAIN, dtype=np.int8)
    part[from_end < user_test + user_valid] = VALID
    part[from_end < user_test] = TEST
    return part


def build_ctr(ds: Dataset, cfg: CTRConfig | None = None, keep: np.ndarray | None = None,
              split: RankSplitConfig | None = None) -> CTRData:
    """CTR examples of ``ds`` split as ``split`` says (module docstring); ``keep`` (E,) bool drops
    events entirely (e.g. the target part of held-out retrieval users, so that a ranker can be
    evaluated inside the retrieval protocol)."""
    import polars as pl

    cfg = cfg or CTRConfig()
    cfg.validate()
    split = split or RankSplitConfig()
    split.validate()
    user, item, rating, ts = ds.user.astype(np.int64), ds.item.astype(np.int64), ds.rating, ds.ts
    if cfg.labels == "rating" and rating is None:
        raise MirecConfigError(f"ctr.labels: 'rating', but {ds.path} has no ratings")
    if cfg.labels == "implicit":
        rating = None  # every event is a positive; negatives are sampled
    timed = time_protocol_parts(ds, split) if split.protocol == "time" else None
    if keep is not None:
        user, item, ts = user[keep], item[keep], ts[keep]
        rating = rating[keep] if rating is not None else None
    U = ds.num_users
    offsets = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=U), out=offsets[1:])
    if timed is None:
        parts = Parts(time_parts(offsets, cfg.test_fraction, cfg.valid_fraction))
    else:
        parts = timed if keep is None else dataclasses.replace(timed, part=timed.part[keep])
    part = parts.part
    if rating is not None:
        label = (rating >= cfg.positive_rating).astype(np.float32)
    else:
        label = np.ones(len(user), dtype=np.float32)
    pos = label > 0 if cfg.history == "positives" else np.ones(len(label), dtype=bool)
    pos_before = np.cumsum(pos) - pos  # (E,) positives strictly before each event, globally
    hist_stop = pos_before.astype(np.int64)
    hist_start = np.repeat(np.concatenate([[0], np.cumsum(pos)])[offsets[:-1]], np.diff(offsets))
    pos_item = item[pos].astype(np.int32)
    pos_offsets = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(user[pos], minlength=U), out=pos_offsets[1:])
    sampled = 0
    if rating is None:
        sampled = cfg.negatives
        rng = np.random.default_rng(cfg.seed)
        r = cfg.negatives
        neg = sample_negatives(rng, item, r, np.arange(1, ds.num_items) if parts.catalogue is None
                               else parts.catalogue)
        rep = lambda a: np.repeat(a, r)  # noqa: E731 - one copy per negative
        user = np.concatenate([user, rep(user)])
        item = np.concatenate([item, neg.reshape(-1)])
        label = np.concatenate([label, np.zeros(len(neg) * r, dtype=np.float32)])
        part = np.concatenate([part, rep(part)])
        ts = np.concatenate([ts, rep(ts)])
        hist_start = np.concatenate([hist_start, rep(hist_start)])
        hist_stop = np.concatenate([hist_stop, rep(hist_stop)])
    if (part == NONE).any():  # events that are only history
        ex = part != NONE
        user, item, label, part, ts = user[ex], item[ex], label[ex], part[ex], ts[ex]
        hist_start, hist_stop = hist_start[ex], hist_stop[ex]
    codes, names, sizes = profile_codes(ds.users)
    features = RankFeatures(num_items=ds.num_items, num_users=U, profile_sizes=sizes,
                            item_categories=category_table(ds))
    return CTRData(user=user, item=item, label=label, part=part, hist_start=hist_start,
                   hist_stop=hist_stop, pos_item=pos_item, pos_offsets=pos_offsets, profile=codes,
                   profile_names=names,
                   user_raw_ids=ds.users["raw_id"].cast(pl.Utf8).to_list(),
                   features=features, max_len=cfg.max_len, sampled_negatives=sampled, ts=ts,
                   new_item_share=parts.new_item_share, time_cuts=parts.time_cuts)


def sample_negatives(rng: np.random.Generator, item: np.ndarray, r: int, catalogue: np.ndarray) -> np.ndarray:
    """(E, r) item ids drawn uniformly from the sorted ``catalogue`` other than each positive
    ``item`` (E,) (an item outside the catalogue can be any of them)."""
    if len(catalogue) < 2:
        raise MirecConfigError(f"ctr.negatives: the catalogue negatives are drawn from has "
                               f"{len(catalogue)} item(s); a negative needs another")
    at = np.searchsorted(catalogue, item)  # (E,) the positive's place in the catalogue
    idx = rng.integers(0, len(catalogue) - 1, size=(len(item), r))  # one fewer: the positive skipped
    return catalogue[idx + (idx >= at[:, None])]
