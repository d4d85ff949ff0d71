"""Batch top-n for every known user, written to Parquet (``mirec recommend --all-users``).

One row per (user, rank): ``user_id`` (string), ``rank`` (int32, 1 = best), ``item_id``
(string), ``score`` (float32), ``interest`` (int16; -1 for the popularity fallback), ``new``
(bool, a cold-start item). Users come in blocks (:meth:`Recommender.recommend_all`); each block
is one Parquet row group, written as it is produced, so memory stays bounded by a block. The
file is written to a temporary sibling and renamed into place when complete; its key-value
metadata marks it as mirec's (``written_by: mirec``), so a later run may replace it, while any
other file is left alone unless ``overwrite`` (:func:`mirec.io.check_output_file`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mirec.io import atomic_path, check_output_file, parquet_mark
from mirec.serve.recommender import Filters, Recommender, TopN

SCHEMA = parquet_mark(pa.schema([
    ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
    ("score", pa.float32()), ("interest", pa.int16()), ("new", pa.bool_())]))


def block_table(rec: Recommender, results: list[TopN]) -> pa.Table:
    """The rows of one block of users."""
    b = rec.bundle
    lens = [len(r.items) for r in results]
    items = np.concatenate([r.items for r in results]).astype(np.int64)  # (rows,)
    raw = b.item_raw
    return pa.table({
        "user_id": np.repeat(np.array([r.user_id for r in results], dtype=object), lens),
        "rank": np.concatenate([np.arange(1, k + 1, dtype=np.int32) for k in lens]),
        "item_id": [raw[i] for i in items.tolist()],
        "score": np.concatenate([r.scores for r in results]).astype(np.float32),
        "interest": np.concatenate([r.interests for r in results]).astype(np.int16),
        "new": items >= b.trained_items}, schema=SCHEMA)


def write_recommendations(rec: Recommender, out: str | Path, n: int = 100, diversity: float = 0.0,
                          rank: bool = False, filters: Filters | None = None, block: int = 1024,
                          users: list[str] | None = None, progress: bool = True,
                          overwrite: bool = False) -> dict:
    """Write every known user's top-n to ``out`` (Parquet); returns users, rows and short lists.
    An existing ``out`` that mirec did not write is refused unless ``overwrite``."""
    check_output_file(out, overwrite)
    users = sorted(rec.bundle.user_histories) if users is None else users
    stats = {"users": 0, "rows": 0, "short": 0, "path": str(out)}
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer, \
            tqdm(total=len(users), unit="user", disable=not progress, desc="recommend") as bar:
        for results in rec.recommend_all(n, diversity, rank, filters, block=block, users=users):
            table = block_table(rec, results)
            writer.write_table(table, row_group_size=max(len(table), 1))
            stats["users"] += len(results)
            stats["rows"] += len(table)
            stats["short"] += sum(r.short for r in results)
            bar.update(len(results))
    return stats
