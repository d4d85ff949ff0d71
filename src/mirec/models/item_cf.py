"""ItemCF: score an item by its co-occurrence with the items of the user's history.

Item-to-item collaborative filtering (Sarwar et al., WWW 2001; Linden et al., IEEE Internet
Computing 2003) with counting instead of learned weights:

- ``C[i, j]`` = number of training users whose sequence holds both i and j (each user counts
  once per pair, however often the items repeat); with ``window = w`` only pairs of events at
  most w positions apart count. The diagonal is 0.
- ``normalize = "cosine"`` divides by ``sqrt(n_i n_j)``, n_i = training users holding item i.
- ``score(hist)[j] = sum over the real history positions p of C[hist[p], j]`` (an item seen twice
  in the history adds its row twice).

C is a dense (N, N) float32 matrix, so the catalogue is limited to ``max_items`` ids
(20,000 ids = 1.6 GB, up to about 3x that at the peak of fit); beyond that it refuses rather
than swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from mirec.config import check_fields, setting
from mirec.data.dataset import Dataset
from mirec.data.split import Split
from mirec.errors import MirecConfigError


@dataclass
class ItemCFConfig:
    # None: all pairs of a user's items; w: pairs <= w positions apart
    window: int | None = setting(None, ge=1)
    normalize: str = "none"  # "none" or "cosine"
    max_items: int = setting(20_000, ge=1)  # dense (N, N) float32 limit

    def validate(self) -> None:
        check_fields(self, "model_args.")
        if self.normalize not in ("none", "cosine"):
            raise MirecConfigError(
                f"model_args.normalize: must be 'none' or 'cosine', got {self.normalize!r}")


class ItemCF:
    """A numpy :class:`~mirec.eval.evaluate.Scorer` built from item co-occurrence counts."""

    def __init__(self, cfg: ItemCFConfig | None = None) -> None:
        self.cfg = cfg or ItemCFConfig()
        self.cfg.validate()
        self.sim: np.ndarray | None = None  # (N, N) float32, row and column 0 are zero

    def fit(self, ds: Dataset, split: Split) -> ItemCF:
        n = ds.num_items
        if n > self.cfg.max_items:
            raise MirecConfigError(
                f"model.max_items: ItemCF keeps a dense {n} x {n} float32 matrix "
                f"({4 * n * n / 1e9:.1f} GB) but max_items = {self.cfg.max_items}; raise it if "
                f"the memory is there, or use another model")
        # training users' events only; rows follow ds.user, which is sorted
        keep = split.train_events(ds.offsets)
        user, item = ds.user[keep].astype(np.int64), ds.item[keep].astype(np.int64)
        if self.cfg.window is None:
            c = _all_pairs(user, item, n)
        else:
            c = _window_pairs(user, item, n, self.cfg.window)
        np.fill_diagonal(c, 0.0)
        if self.cfg.normalize == "cosine":
            held = np.unique(user * n + item) % n  # (user, item) once each -> item ids
            norm = np.sqrt(np.maximum(np.bincount(held, minlength=n), 1)).astype(np.float32)
            c /= norm[:, None]  # in place: no (N, N) temporary
            c /= norm[None, :]
        self.sim = c
        return self

    def score(self, hist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, L) histories -> (B, N) summed co-occurrence rows; padding adds row 0 (zeros)."""
        assert self.sim is not None, "call fit() first"
        hist = np.where(mask, hist, 0)
        out = np.zeros((hist.shape[0], self.sim.shape[0]), dtype=np.float32)  # (B, N)
        for col in hist.T:  # L gathers of (B, N): no (B, L, N) temporary
            out += self.sim[col]
        return out


def _all_pairs(user: np.ndarray, item: np.ndarray, n: int, chunk: int = 0) -> np.ndarray:
    """C = X^T X for the 0/1 user-item matrix X, built in chunks of users to bound memory.

    Each chunk only multiplies the columns of the items it holds: (U_c, m) with m << N.
    """
    c = np.zeros((n, n), dtype=np.float32)
    row = np.unique(user, return_inverse=True)[1]  # (E,) dense user rows 0..U_t-1
    num_rows = row[-1] + 1 if len(row) else 0
    chunk = chunk or max(1, 2**24 // n)  # users per chunk: X takes at most 64 MB
    bounds = np.searchsorted(row, np.arange(0, num_rows + chunk, chunk))  # event offsets
    for a, b in pairwise(bounds):
        cols, col = np.unique(item[a:b], return_inverse=True)  # (m,), (E_c,)
        x = np.zeros((row[b - 1] - row[a] + 1, len(cols)), dtype=np.float32)  # (U_c, m)
        x[row[a:b] - row[a], col] = 1.0
        c[np.ix_(cols, cols)] += x.T @ x  # (m, m)
    return c


def _window_pairs(user: np.ndarray, item: np.ndarray, n: int, window: int) -> np.ndarray:
    """Counts of users holding items i != j at most ``window`` positions apart."""
    longest = np.unique(user, return_counts=True)[1].max(initial=1)
    keys = [np.zeros(0, np.int64)]
    for d in range(1, min(window, longest - 1) + 1):  # pairs (p, p + d) inside one user
        same = user[d:] == user[:-d]
        a, b = item[:-d][same], item[d:][same]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keys.append((user[:-d][same] * n + lo) * n + hi)
    keys = np.unique(np.concatenate(keys))  # each (user, pair) once
    pairs, counts = np.unique(keys % (n * n), return_counts=True)
    c = np.zeros((n, n), dtype=np.float32)
    c[pairs // n, pairs % n] = counts
    return c + c.T  # diagonal (i == i pairs) is zeroed by the caller
