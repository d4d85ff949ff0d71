"""A prepared data set, loaded into flat NumPy arrays.

On disk (see :mod:`mirec.data.prepare`): ``interactions.parquet`` (user:int32, item:int32,
ts:int64, sorted by user then time), ``items.parquet`` (item, raw_id, title, categories),
``users.parquet`` (user, raw_id, profile columns) and ``meta.json``.

In memory every user's sequence is a slice of one flat int32 item array:
``items[offsets[u]:offsets[u + 1]]``. No Python list per user or per example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mirec.errors import MirecDataError
from mirec.io import sha256_file

if TYPE_CHECKING:  # polars is imported where files are read, so that models and training
    import polars as pl  # import without it (bench/gpu_check.py runs on torch and NumPy alone)

FILES = ("interactions.parquet", "items.parquet", "users.parquet", "meta.json")


@dataclass
class Dataset:
    """Flat arrays of a prepared data set.

    Shapes: ``E`` events, ``U`` users, ``N`` = number of item ids including padding 0.
    """

    path: Path
    meta: dict[str, Any]
    user: np.ndarray  # (E,) int32, sorted
    item: np.ndarray  # (E,) int32
    ts: np.ndarray  # (E,) int64
    offsets: np.ndarray  # (U+1,) int64; user u's events are [offsets[u], offsets[u+1])
    items: pl.DataFrame  # item, raw_id, title, categories (row i-1 is item i)
    users: pl.DataFrame  # user, raw_id, profile columns (row u is user u)
    rating: np.ndarray | None = None  # (E,) float32 when the source had ratings

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        """Size of the item id space, padding id 0 included (so real items are 1..num_items-1)."""
        return self.items.height + 1

    @property
    def checksum(self) -> str:
        return self.meta.get("dataset_checksum", "")

    def category_index(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Item categories as CSR: ``(indptr (N+1,), category ids, category names)``."""
        return category_csr(self.items)

    def title(self, item: int) -> str:
        row = self.items.row(item - 1, named=True)
        return row["title"] or row["raw_id"]


def category_csr(items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Categories of an items table (row i - 1 is item i) as CSR: ``(indptr (N+1,), category
    ids, sorted category names)``. Row 0 (padding) is empty."""
    names = sorted(set(items["categories"].explode().drop_nulls().to_list()))
    lut = {c: j for j, c in enumerate(names)}
    lists = [[]] + items["categories"].to_list()
    lens = np.fromiter((len(c) if c else 0 for c in lists), dtype=np.int64, count=len(lists))
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    ids = np.fromiter((lut[c] for cs in lists if cs for c in cs), dtype=np.int32,
                      count=int(indptr[-1]))
    return indptr, ids, names


def load_dataset(path: str | Path, verify: bool = True) -> Dataset:
    """Load a prepared data set directory; ``verify`` checks the files' SHA-256 against meta."""
    import polars as pl

    path = Path(path)
    if not path.is_dir():
        raise MirecDataError(f"{path}: no such data set directory (prepare one with "
                             f"`mirec data prepare` or `mirec data fetch`)")
    for name in FILES:
        if not (path / name).exists():
            raise MirecDataError(f"{path / name}: missing; {path} is not a prepared data set")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except json.JSONDecodeError as e:
        raise MirecDataError(f"{path / 'meta.json'}: invalid JSON: {e}") from None
    if meta.get("format") != "mirec.dataset":
        raise MirecDataError(f"{path / 'meta.json'}: field 'format' is not 'mirec.dataset'")
    if verify:
        for name, digest in meta.get("checksums", {}).items():
            if sha256_file(path / name) != digest:
                raise MirecDataError(
                    f"{path / name}: checksum does not match meta.json (file changed or "
                    f"corrupt); prepare the data set again"
                )
    items = pl.read_parquet(path / "items.parquet").sort("item")
    users = pl.read_parquet(path / "users.parquet").sort("user")
    inter = path / "interactions.parquet"
    user = _column(inter, "user", np.int32)
    counts = np.bincount(user, minlength=users.height)
    offsets = np.zeros(users.height + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    has_rating = "rating" in pl.read_parquet_schema(inter)
    return Dataset(
        path=path, meta=meta, user=user, item=_column(inter, "item", np.int32),
        ts=_column(inter, "ts", np.int64), offsets=offsets, items=items, users=users,
        rating=_column(inter, "rating", np.float32) if has_rating else None,
    )


def _column(path: Path, name: str, dtype: type) -> np.ndarray:
    """One column as a compact NumPy array, read on its own so that only one column's decoding
    buffers exist at a time (85M events: 1.4 GB held, not twice that at the peak)."""
    import polars as pl

    return pl.read_parquet(path, columns=[name])[name].to_numpy().astype(
        dtype, copy=False)
