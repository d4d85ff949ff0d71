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

Histories are left-padded: the most recent item is always in the last column, padding id 0 in
front, with a boolean mask that is true on real items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mirec.config import MAX_LEN, check_fields, setting, size
from mirec.data.dataset import Dataset
from mirec.errors import MirecConfigError

PROTOCOLS = ("comirec", "loo")


@dataclass
class SplitConfig:
    """How users are split and how long a history window is."""

    seed: int = setting(2020, ge=0)
    max_len: int = size(20, MAX_LEN)  # also every retriever's model_args.max_len
    train_frac: float = 0.8
    valid_frac: float = 0.1
    history_frac: float = 0.8  # share of an evaluation user's events that form the history
    protocol: str = "comirec"  # comirec (split by user) | loo (leave the last items out)

    def validate(self) -> None:
        check_fields(self, "split.")
        if self.protocol not in PROTOCOLS:
            raise MirecConfigError(f"split.protocol: expected one of {', '.join(PROTOCOLS)}, "
                                   f"got {self.protocol!r}")
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


@dataclass
class EvalUsers:
    """Validation or test users: per user, the history range and the target range.

    User ``users[j]`` has history ``item[hist_start[j]:cut[j]]`` and targets
    ``item[cut[j]:end[j]]``.
    """

    users: np.ndarray  # (U_e,) int32
    hist_start: np.ndarray  # (U_e,) int64
    cut: np.ndarray  # (U_e,) int64
    end: np.ndarray  # (U_e,) int64

    def __len__(self) -> int:
        return len(self.users)

    def select(self, idx: np.ndarray | slice) -> EvalUsers:
        return EvalUsers(self.users[idx], self.hist_start[idx], self.cut[idx], self.end[idx])


@dataclass
class Examples:
    """The training examples, numbered user by user, held as O(users) arrays.

    Sequence ``j`` starts at ``seq_start[j]`` in the flat arrays; its examples are numbers
    ``first[j]..first[j + 1] - 1``, example ``first[j] + r`` having its target at
    ``seq_start[j] + 1 + r`` (the cut point ``t = r + 2``).
    """

    seq_start: np.ndarray  # (S,) int64
    first: np.ndarray  # (S + 1,) int64, non-decreasing, first[0] = 0, first[-1] = X

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
        return start, start + 1 + (idx - self.first[j])

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
