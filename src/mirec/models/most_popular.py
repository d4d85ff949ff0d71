"""MostPopular: every user gets the items seen most often in the training users' events."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mirec.data.dataset import Dataset
from mirec.data.split import Split


@dataclass
class MostPopularConfig:
    """MostPopular has no settings; the dataclass keeps the registry uniform."""

    def validate(self) -> None:
        pass


class MostPopular:
    """Scores an item by its number of events among the training users."""

    def __init__(self, cfg: MostPopularConfig | None = None) -> None:
        self.cfg = cfg or MostPopularConfig()
        self.counts: np.ndarray | None = None  # (N,) float32

    def fit(self, ds: Dataset, split: Split) -> MostPopular:
        items = ds.item[split.train_events(ds.offsets)]
        self.counts = np.bincount(items, minlength=ds.num_items).astype(np.float32)
        return self

    def score(self, hist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, L) histories -> (B, N) scores, the same popularity row for every user."""
        assert self.counts is not None, "call fit() first"
        return np.broadcast_to(self.counts, (hist.shape[0], len(self.counts)))
