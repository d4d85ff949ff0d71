"""The protocol's split by user, and the sequence windows built from it.

Users are shuffled with a seed and cut 80/10/10 into train, validation and test users
(``n_train = floor(0.8 U)``, ``n_valid = floor(0.1 U)``, test = the rest).

- Training examples are ``(start, pos)`` pairs into the flat item array: the target is
  ``item[pos]`` and the history is ``item[max(start, pos - max_len):pos]``; one example per cut
  point ``t = 2..n`` of every training user, numbered user by user. They are not stored:
  :class:`Examples` keeps two arrays per training user (where its sequence starts, the number of
  its first example) and finds example ``i``'s user by binary search, so memory is O(users), not
  16 bytes an example (1.4 GB at Taobao's 85M events).
- Validation and test users: with ``n`` events, ``k = max(1, floor(0.8 n))``; the history part is
  ``item[start:start + k]`` (the model sees its last ``max_len`` items, and all of it is excluded
  from the ranking), the targets are ``item[start + k:end]``. Users with no target are dropped.

``split.protocol = "loo"`` (leave-one-out, what SASRec-style papers publish on Amazon Beauty and
MovieLens-1M) puts every user in all three parts instead: each user's last item is the test
target (history: every item before it), the one before it the validation target, and the
training examples are the cut points before those two. Users with fewer than 3 events have no
validation target (and with 1, no test target either).

``split.protocol = "time"`` cuts the whole log at two times instead (no training event happens
after a test event; Ji et al., "A Critical Study on Data Leakage in Recommender System Offline
Evaluation", TOIS 2023). ``split.valid_from`` and ``split.test_from`` are each a Unix timestamp
(in the data set's ``ts`` unit; values >= 1) or a fraction ``f`` in (0, 1) of the event timeline:
the ``ts`` of the event at index ``floor(f E)`` of all ``E`` events sorted by time, so that
(without ties) exactly ``floor(f E)`` events lie before it. Every user is in all three parts:

- training: each user's events with ``ts < valid_from`` (a prefix of its sequence, which is
  sorted by time); the examples are their cut points, so no target has ``ts >= valid_from``;
- validation: one row per event with ``valid_from <= ts < test_from``, test: one row per event
  with ``ts >= test_from``; a row's target is that one event and its history every earlier event
  of the user (window events included). An event without an earlier one (a new user's first)
  is no row;
- the rankable catalogue is the items of the training events; the others (``new_items``, first
  seen at or after ``valid_from``) are never ranked, so a target that is a new item is a miss.

The split does not depend on ``split.seed``; a data set whose ``ts`` is only a position in each
sequence (the ``sequences`` source) has no timeline and is refused.

Histories are left-padded: the most recent item is always in the last column, padding id 0 in
front, with a boolean mask that is true on real items.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mirec.config import MAX_LEN, check_fields, setting, size
from mirec.data.dataset import Dataset
from mirec.errors import MirecConfigError

PROTOCOLS = ("comirec", "loo", "time")


@dataclass
class SplitConfig:
    """How users are split and how long a history window is."""

    seed: int = setting(2020, ge=0)
    max_len: int = size(20, MAX_LEN)  # also every retriever's model_args.max_len
    train_frac: float = 0.8
    valid_frac: float = 0.1
    history_frac: float = 0.8  # share of an evaluation user's events that form the history
    protocol: str = "comirec"  # comirec (split by user) | loo (leave the last items out) | time
    # protocol time: where the validation and the test windows start, each a Unix timestamp
    # (>= 1) or a fraction in (0, 1) of the event timeline (module docstring)
    valid_from: float = 0.8
    test_from: float = 0.9

    def validate(self) -> None:
        check_fields(self, "split.")
        if self.protocol not in PROTOCOLS:
            raise MirecConfigError(f"split.protocol: expected one of {', '.join(PROTOCOLS)}, "
                                   f"got {self.protocol!r}")
        if self.protocol == "time":
            self._validate_time()
        if not (0 < self.train_frac < 1 and 0 <= self.valid_frac < 1
                and self.train_frac + self.valid_frac < 1):
            raise MirecConfigError(
                f"split.train_frac/valid_frac: need 0 < train, 0 <= valid, train + valid < 1; "
                f"got {self.train_frac}, {self.valid_frac}"
            )
        if not 0 < self.history_frac < 1:
            raise MirecConfigError(
                f"split.history_frac: must be in (0, 1), got {self.history_frac}"
            )

    def _validate_time(self) -> None:
        for key in ("valid_from", "test_from"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise MirecConfigError(f"split.{key}: expected a fraction in (0, 1) of the event "
                                       f"timeline or a Unix timestamp (>= 1), got {value}")
        if (self.valid_from < 1) == (self.test_from < 1) and self.valid_from >= self.test_from:
            raise MirecConfigError(f"split.valid_from: must be before split.test_from, got "
                                   f"{self.valid_from} and {self.test_from}")


@dataclass
class EvalUsers:
    """Validation or test rows: per row, the history range and the target range.

    Row ``j`` (user ``users[j]``) has history ``item[hist_start[j]:cut[j]]`` and targets
    ``item[cut[j]:end[j]]``. One row per user under the comirec and loo protocols; under time,
    one row per target event (a user has as many rows as events in the window).
    ``new_items`` (time protocol only): sorted item ids never ranked for any row, the items
    outside the training catalogue.
    """

    users: np.ndarray  # (U_e,) int32
    hist_start: np.ndarray  # (U_e,) int64
    cut: np.ndarray  # (U_e,) int64
    end: np.ndarray  # (U_e,) int64
    new_items: np.ndarray | None = None  # (M,) int64, sorted

    def __len__(self) -> int:
        return len(self.users)

    def select(self, idx: np.ndarray | slice) -> EvalUsers:
        return EvalUsers(self.users[idx], self.hist_start[idx], self.cut[idx], self.end[idx],
                         self.new_items)


@dataclass
class Examples:
    """The training examples, numbered user by user, held as O(users) arrays.

    Sequence ``j`` starts at ``seq_start[j]`` in the flat arrays; its examples are numbers
    ``first[j]..first[j + 1] - 1``, example ``first[j] + r`` having its target at
    ``seq_start[j] + 1 + r`` (the cut point ``t = r + 2``).
    """

    seq_start: np.ndarray  # (S,) int64
    first: np.ndarray  # (S + 1,) int64, non-decreasing, first[0] = 0, first[-1] = X
    # (S,) int64 or None (zeros): cut points skipped at the front of each sequence, so that
    # example first[j] + r has its target at seq_start[j] + 1 + skip[j] + r (:meth:`after`)
    skip: np.ndarray | None = None

    @classmethod
    def of(cls, starts: np.ndarray, ends: np.ndarray) -> Examples:
        """The examples of sequences ``[starts[j], ends[j])``: one per cut point t = 2..n."""
        per_seq = np.maximum(np.asarray(ends, np.int64) - starts, 1) - 1  # (S,)
        first = np.zeros(len(per_seq) + 1, dtype=np.int64)
        np.cumsum(per_seq, out=first[1:])
        return cls(np.asarray(starts, dtype=np.int64), first)

    def __len__(self) -> int:
        return int(self.first[-1])

    def __getitem__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start, pos)`` of examples ``idx`` (B,), both (B,) int64."""
        idx = np.asarray(idx, dtype=np.int64)
        j = np.searchsorted(self.first, idx, side="right") - 1  # (B,) sequence of each example
        start = self.seq_start[j]
        first_target = start + 1 if self.skip is None else start + 1 + self.skip[j]
        return start, first_target + (idx - self.first[j])

    def after(self, ts: np.ndarray, since: int) -> Examples:
        """The examples whose target happens after ``since`` (``ts[pos] > since``), numbered
        anew; their histories still reach back to each sequence's start. A sequence is in time
        order, so its kept examples are a suffix of its cut points."""
        n = np.diff(self.first)  # (S,) examples per sequence
        skip = np.zeros(len(n), dtype=np.int64) if self.skip is None else self.skip
        later = np.concatenate([[0], np.cumsum(ts > since, dtype=np.int64)])  # (E + 1,)
        lo = self.seq_start + 1 + skip  # (S,) each sequence's first target
        kept = later[lo + n] - later[lo]  # (S,) targets after since among them
        first = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(kept, out=first[1:])
        return Examples(self.seq_start, first, skip + n - kept)

    def blocks(self, size: int = 1 << 22) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(start, pos)`` of every example in order, ``size`` at a time (bounded memory)."""
        for lo in range(0, len(self), size):
            yield self[np.arange(lo, min(lo + size, len(self)))]


def permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """``rng.permutation(n)`` in 4-byte integers when ``n`` fits: the same order and the same
    generator state afterwards (``Generator.shuffle`` draws the same numbers whatever the dtype),
    half the memory (340 MB instead of 680 MB for 85M examples)."""
    perm = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    rng.shuffle(perm)
    return perm


@dataclass
class Split:
    """Train/validation/test users and the training examples of one seed."""

    train_users: np.ndarray  # (U_t,) int32
    train_end: np.ndarray  # (U_t,) int64: where each training user's training events end
    examples: Examples  # X training examples, O(U_t) memory
    valid: EvalUsers
    test: EvalUsers
    config: SplitConfig
    # protocol time: (valid_from, test_from) resolved to timestamps of the data set's ts
    time_cuts: tuple[int, int] | None = None

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    def target_counts(self, item: np.ndarray, num_items: int) -> np.ndarray:
        """(num_items,) int64: how often each item is a training example's target."""
        counts = np.zeros(num_items, dtype=np.int64)
        for _, pos in self.examples.blocks():
            counts += np.bincount(item[pos], minlength=num_items)
        return counts

    def train_events(self, offsets: np.ndarray) -> np.ndarray:
        """(E,) bool: the events models may learn from (what baselines count)."""
        starts = offsets[self.train_users]
        mark = np.zeros(int(offsets[-1]) + 1, dtype=np.int8)  # ranges are disjoint: sums in 0..1
        np.add.at(mark, starts, 1)
        np.add.at(mark, self.train_end, -1)
        return np.cumsum(mark, dtype=np.int8)[:-1] > 0


def split_users(ds: Dataset, cfg: SplitConfig | None = None) -> Split:
    """Split ``ds`` by user under the protocol (see the module docstring)."""
    cfg = cfg or SplitConfig()
    cfg.validate()
    n = ds.num_users
    if cfg.protocol == "loo":
        return _leave_one_out(ds.offsets, cfg)
    if cfg.protocol == "time":
        return _time_split(ds, cfg)
    perm = np.random.default_rng(cfg.seed).permutation(n).astype(np.int32)
    n_train = int(cfg.train_frac * n)
    n_valid = int(cfg.valid_frac * n)
    train = np.sort(perm[:n_train])
    valid = np.sort(perm[n_train:n_train + n_valid])
    test = np.sort(perm[n_train + n_valid:])
    ends = ds.offsets[train + 1]
    return Split(train, ends, Examples.of(ds.offsets[train], ends),
                 _eval_users(ds.offsets, valid, cfg.history_frac),
                 _eval_users(ds.offsets, test, cfg.history_frac), cfg)


def _leave_one_out(offsets: np.ndarray, cfg: SplitConfig) -> Split:
    users = np.arange(len(offsets) - 1, dtype=np.int32)
    start, end = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    n = end - start
    train_end = end - (n >= 2) - (n >= 3)  # the test and validation targets a user has are held out

    def part(cut: np.ndarray) -> EvalUsers:
        keep = cut > start  # at least one history item
        return EvalUsers(users[keep], start[keep], cut[keep], cut[keep] + 1)

    return Split(users, train_end, Examples.of(start, train_end), part(end - 2), part(end - 1), cfg)


def resolve_time_cuts(ds: Dataset, cfg: SplitConfig) -> tuple[int, int]:
    """``(valid_from, test_from)`` as timestamps of ``ds.ts`` (fractions resolved on the
    timeline, see the module docstring); refuses logs without times and an empty validation
    window."""
    source = ds.meta.get("source", {})
    if isinstance(source, dict) and source.get("time") == "position in the sequence":
        raise MirecConfigError(
            f"split.protocol: time needs event timestamps; {ds.path} was prepared from "
            f"{source.get('name', 'a source')} without times (ts is the position in each "
            f"sequence); use split.protocol=comirec or loo")
    if len(ds.ts) == 0:
        raise MirecConfigError("split.protocol: time needs events; the data set has none")
    cuts = _times_of(ds.ts, (cfg.valid_from, cfg.test_from))
    if cuts[0] >= cuts[1]:
        raise MirecConfigError(
            f"split.valid_from: resolves to ts {cuts[0]}, not before split.test_from's "
            f"{cuts[1]} (got {cfg.valid_from} and {cfg.test_from}): the validation window "
            f"would be empty")
    return cuts[0], cuts[1]


def _times_of(ts: np.ndarray, values: tuple[float, ...]) -> list[int]:
    """Cut points as timestamps: a value >= 1 itself (rounded up: ``ts < value`` is unchanged),
    a fraction ``f`` the ts of the event at index ``floor(f E)`` in time order."""
    ks = {v: min(int(v * len(ts)), len(ts) - 1) for v in values if v < 1}
    ordered = np.partition(ts, sorted(set(ks.values()))) if ks else ts  # O(E), no full sort
    return [int(ordered[ks[v]]) if v < 1 else math.ceil(v) for v in values]


def _time_split(ds: Dataset, cfg: SplitConfig) -> Split:
    """The time protocol's split (module docstring)."""
    valid_from, test_from = resolve_time_cuts(ds, cfg)
    offsets, ts = ds.offsets, ds.ts
    before = ts < valid_from  # (E,) the training events
    if not before.any():
        raise MirecConfigError(f"split.valid_from: no event happens before it (ts {valid_from}, "
                               f"earliest {int(ts.min())}): nothing to train on")
    start = offsets[:-1].astype(np.int64)
    # a user's events are sorted by time: its training events are the first of them
    train_end = start + np.bincount(ds.user[before], minlength=ds.num_users)
    known = np.zeros(ds.num_items, dtype=bool)
    known[ds.item[before]] = True
    known[0] = True  # padding is masked anyway
    new_items = np.flatnonzero(~known).astype(np.int64)

    def rows(events: np.ndarray) -> EvalUsers:
        pos = np.flatnonzero(events)
        user = ds.user[pos]
        first = offsets[user]
        keep = pos > first  # at least one earlier event of the user to score from
        return EvalUsers(user[keep].astype(np.int32), first[keep].astype(np.int64),
                         pos[keep].astype(np.int64), pos[keep].astype(np.int64) + 1, new_items)

    users = np.arange(ds.num_users, dtype=np.int32)
    valid = rows(~before & (ts < test_from))
    return Split(users, train_end, Examples.of(start, train_end), valid, rows(ts >= test_from), cfg,
                 (valid_from, test_from))


def training_examples(offsets: np.ndarray, users: np.ndarray,
                      ends: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(start, pos)`` of every cut point t = 2..n of ``users``' sequences (each cut at
    ``ends`` when given), vectorised: two int64 arrays of one entry per example (the ranker's
    candidate examples use it; training uses :class:`Examples`, O(users))."""
    starts = offsets[users]
    lens = (offsets[users + 1] if ends is None else ends) - starts
    per_user = np.maximum(lens - 1, 0)  # (U_t,) examples per user
    total = int(per_user.sum())
    ex_start = np.repeat(starts, per_user)  # (X,)
    # position = start + 1 + rank of the example within its user
    first = np.cumsum(per_user) - per_user  # (U_t,) index of each user's first example
    rank = np.arange(total, dtype=np.int64) - np.repeat(first, per_user)
    return ex_start.astype(np.int64), (ex_start + 1 + rank).astype(np.int64)


def _eval_users(offsets: np.ndarray, users: np.ndarray, history_frac: float) -> EvalUsers:
    start = offsets[users]
    end = offsets[users + 1]
    n = end - start
    k = np.maximum(1, np.floor(history_frac * n).astype(np.int64))
    keep = k < n  # users with at least one target
    cut = start + k
    return EvalUsers(users[keep].astype(np.int32), start[keep].astype(np.int64),
                     cut[keep].astype(np.int64), end[keep].astype(np.int64))


def windows(item: np.ndarray, start: np.ndarray, stop: np.ndarray,
            max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded windows of the last ``max_len`` items of ``item[start:stop]`` per row.

    Returns ``(hist, mask)``, both (B, max_len): ``hist`` int64 item ids with 0 on padding,
    ``mask`` true on real items. One fancy-index gather, no Python loop.
    """
    idx = stop[:, None] - max_len + np.arange(max_len)[None, :]  # (B, L)
    mask = idx >= start[:, None]
    hist = np.where(mask, item[np.maximum(idx, 0)], 0).astype(np.int64)
    return hist, mask


def left_pad(hist: Sequence[int], max_len: int) -> np.ndarray:
    """One history's last ``max_len`` item ids, left-padded with 0: (max_len,) int64, the row
    :func:`windows` makes (what serving feeds the models)."""
    out = np.zeros(max_len, dtype=np.int64)
    recent = hist[-max_len:]
    if len(recent):
        out[max_len - len(recent):] = recent
    return out
