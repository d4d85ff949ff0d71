"""From a raw event log to a prepared data set directory (protocol steps 1-5).

Every source loader produces a :class:`RawLog`; :func:`build_dataset` then applies the same
steps to all of them:

1. drop duplicate ``(user, item, ts)`` rows (the first in file order is kept);
2. k-core filtering, repeated until stable (items, then users, with fewer than k events go);
3. remap ids to dense integers: users ``0..U-1``, items ``1..N`` (0 is padding), both in the
   sorted order of their raw ids;
4. sort events by user, then time, ties kept in file order;
5. write ``interactions.parquet``, ``items.parquet``, ``users.parquet`` and ``meta.json`` into a
   temporary directory that is renamed into place only when everything is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mirec import __version__
from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import DATASET, atomic_dir, atomic_write_json, sha256_file

PROTOCOL_VERSION = "1"
FORMAT_VERSION = 1


@dataclass
class PrepareConfig:
    """Options shared by every source."""

    k_core: int = 5
    on_bad_rows: str = "error"  # "error" or "skip"

    def validate(self) -> None:
        if self.k_core < 1:
            raise MirecConfigError(f"k_core: must be >= 1, got {self.k_core}")
        if self.on_bad_rows not in ("error", "skip"):
            raise MirecConfigError(
                f"on_bad_rows: expected 'error' or 'skip', got {self.on_bad_rows!r}"
            )


@dataclass
class RawLog:
    """What a source loader returns.

    ``events``: columns ``user``, ``item`` (raw ids, integers or String), ``ts`` (Int64 seconds), in
    file order; optional ``category`` (String, the item's category on this event, e.g. Taobao)
    and ``rating`` (Float64, kept for the click-through task).
    ``items``: optional, ``item`` (raw id), ``title`` (String or null), ``categories``
    (List[String]). ``users``: optional, ``user`` (raw id) and profile columns.
    """

    events: pl.DataFrame
    source: dict[str, Any]
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    bad_rows_skipped: int = 0
    filters: dict[str, Any] = field(default_factory=dict)


def kcore(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the events kept by k-core filtering, repeated until stable.

    ``users`` and ``items`` are non-negative integer codes. Each round drops the events of items
    with fewer than ``k`` events and of users with fewer than ``k`` events (counted on the events
    still kept), until a round drops nothing. The counts are updated by the dropped events only,
    and each round reads one byte an event per side (is the id below k?), no gathered counts.
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    n_u, n_i = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    ci = np.bincount(items, minlength=n_i)
    cu = np.bincount(users, minlength=n_u)
    while True:
        drop = keep & ((ci < k)[items] | (cu < k)[users])  # (E,)
        if not drop.any():
            return keep
        keep &= ~drop
        ci -= np.bincount(items[drop], minlength=n_i)
        cu -= np.bincount(users[drop], minlength=n_u)


def _codes(col: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Dense 0-based int32 codes of a raw id column in sorted raw-id order, and the sorted unique
    ids."""
    uniq = col.unique().sort()
    if col.dtype.is_integer() and len(uniq) and uniq[0] >= 0 and uniq[-1] < 4 * len(col) + 1024:
        # small non-negative ints: a lookup table is O(n), no hashing
        lut = np.full(int(uniq[-1]) + 1, -1, dtype=np.int32)
        lut[uniq.to_numpy()] = np.arange(len(uniq), dtype=np.int32)
        return lut[col.to_numpy()], uniq
    codes = pl.DataFrame({"v": col}).select(pl.col("v").rank("dense") - 1)["v"].to_numpy()
    return codes.astype(np.int32), uniq


def build_dataset(raw: RawLog, out: str | Path, cfg: PrepareConfig | None = None) -> Path:
    """Apply the protocol's preparation to ``raw`` and write the data set directory ``out``.

    Raises :class:`MirecDataError` when no events remain after filtering.
    """
    cfg = cfg or PrepareConfig()
    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out)
    ev = raw.events
    src = raw.source.get("path", raw.source.get("name", "input"))
    if ev.height == 0:
        raise MirecDataError(f"{src}: no events read")
    n_raw = ev.height
    u_code, u_raw = _codes(ev["user"])  # (E,) int32 each: 8 bytes an event, not 16
    i_code, i_raw = _codes(ev["item"])
    # one stable sort by (user, time): ties keep file order; duplicates become neighbours. The
    # source row order is kept only where a per-event column (rating, category) must follow.
    need_rows = "rating" in ev.columns or "category" in ev.columns
    u_code, i_code, ts, order = _time_sorted(u_code, i_code, ev["ts"].to_numpy(), need_rows)
    first = _first_occurrences(u_code, i_code, ts)
    if not first.all():
        u_code, i_code, ts = u_code[first], i_code[first], ts[first]
        order = order[first] if order is not None else None
    del first
    n_dedup = len(ts)

    before = {"events": n_dedup, "users": len(u_raw), "items": len(i_raw)}
    keep = kcore(u_code, i_code, cfg.k_core)
    if not keep.any():
        raise MirecDataError(
            f"{src}: no events remain after {cfg.k_core}-core filtering "
            f"(before: {n_dedup} events, {len(u_raw)} users, {len(i_raw)} items); "
            f"lower --k-core or check the input"
        )
    # compact codes: dense users 0..U-1, items 1..N, in sorted raw-id order
    u_present = np.bincount(u_code[keep], minlength=len(u_raw)) > 0
    i_present = np.bincount(i_code[keep], minlength=len(i_raw)) > 0
    u_map = (np.cumsum(u_present) - 1).astype(np.int32)
    i_map = np.cumsum(i_present).astype(np.int32)  # 1-based
    if not keep.all():
        u_code, i_code, ts = u_code[keep], i_code[keep], ts[keep]
        order = order[keep] if order is not None else None
    del keep
    dense = pl.DataFrame({"user": u_map[u_code], "item": i_map[i_code],
                          "ts": ts.astype(np.int64, copy=False)})
    del u_code, i_code, ts
    if "rating" in ev.columns:  # order: the source rows of the kept events, in final order
        dense = dense.with_columns(pl.Series("rating", ev["rating"].to_numpy()[order]).cast(pl.Float32))
    per_event = None
    if "category" in ev.columns:
        per_event = pl.DataFrame({"_key": ev["item"].gather(order), "c": ev["category"].gather(order)})
    del order

    items = _items_table(raw, per_event, i_raw, i_present, i_map)
    users = _users_table(raw, u_raw, u_present)
    after = {"events": dense.height, "users": users.height, "items": items.height}

    meta = {
        "format": "mirec.dataset",
        "format_version": FORMAT_VERSION,
        "protocol_version": PROTOCOL_VERSION,
        "mirec_version": __version__,
        "source": raw.source,
        "filters": {"dedupe": ["user", "item", "ts"], "k_core": cfg.k_core, **raw.filters},
        "counts": {
            "raw_events": n_raw + raw.bad_rows_skipped,
            "bad_rows_skipped": raw.bad_rows_skipped,
            "duplicates_dropped": n_raw - n_dedup,
            "before_k_core": before,
            "after_k_core": after,
        },
    }
    write_dataset(out, dense, items, users, meta, ("prepare_seconds", t0))
    return out


def write_dataset(out: Path, dense: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame,
                  meta: dict[str, Any], timer: tuple[str, float]) -> None:
    """Write a data set directory atomically: the three tables, then ``meta.json`` with the
    SHA-256 of each file, their combined checksum and ``timer``'s seconds since its start
    (``("prepare_seconds", t0)``)."""
    with atomic_dir(out, DATASET) as tmp:
        dense.write_parquet(tmp / "interactions.parquet", statistics=True)
        items.write_parquet(tmp / "items.parquet")
        users.write_parquet(tmp / "users.parquet")
        checksums = {name: sha256_file(tmp / name)
                     for name in ("interactions.parquet", "items.parquet", "users.parquet")}
        key, t0 = timer
        atomic_write_json(tmp / "meta.json", {**meta, "checksums": checksums,
                                              "dataset_checksum": _combined(checksums),
                                              key: round(time.perf_counter() - t0, 3)})


def _combined(checksums: dict[str, str]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()


def _raw_str(s: pl.Series) -> pl.Series:
    return s.cast(pl.String)


def _time_sorted(user: np.ndarray, item: np.ndarray, ts: np.ndarray, rows: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``(user, item, ts, order)`` sorted by (user, ts), ties in file order (a stable sort);
    ``order`` (the source rows, int64) only when ``rows``.

    When (user, ts) fit one int64 key, only that key and the int32 items (and the row numbers,
    if asked) are sorted: 12 bytes an event instead of a 16-byte (key, row) pair plus gathers.
    """
    cols = {"i": item}
    if rows:
        cols["r"] = np.arange(len(ts), dtype=np.int64)
    t0 = int(ts.min())
    span = int(ts.max()) - t0 + 1
    if (int(user.max()) + 1) * span < 2**62:  # one int64 key sorts fastest
        key = user.astype(np.int64) * span + (ts - t0)
        df = pl.DataFrame({"k": key, **cols}).sort("k", maintain_order=True)
        del key
        k = df["k"].to_numpy()
        u, t = (k // span).astype(np.int32), k % span + t0
    else:
        df = pl.DataFrame({"u": user, "t": ts, **cols}).sort(["u", "t"], maintain_order=True)
        u, t = df["u"].to_numpy(), df["t"].to_numpy()
    order = df["r"].to_numpy() if rows else None
    return u, df["i"].to_numpy(), t, order


def _first_occurrences(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Mask that drops repeated (user, item, ts) events, keeping the first in file order.

    Events are sorted by (user, ts), so a duplicate lies in a run of equal (user, ts): only
    those runs (usually few) are examined.
    """
    keep = np.ones(len(user), dtype=bool)
    same = (user[1:] == user[:-1]) & (ts[1:] == ts[:-1])
    tied = np.zeros(len(user), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    idx = np.flatnonzero(tied)
    if len(idx):
        sub = pl.DataFrame({"u": user[idx], "i": item[idx], "t": ts[idx]})
        keep[idx] = sub.select(pl.struct("u", "i", "t").is_first_distinct())["u"].to_numpy()
    return keep


def _items_table(raw: RawLog, per_event: pl.DataFrame | None, i_raw: pl.Series,
                 i_present: np.ndarray, i_map: np.ndarray) -> pl.DataFrame:
    kept_raw = i_raw.filter(pl.Series(i_present))
    items = pl.DataFrame({
        "item": pl.Series(i_map[i_present].astype(np.int32)),
        "raw_id": _raw_str(kept_raw),
        "_key": kept_raw,
    })
    title = pl.lit(None, dtype=pl.String)
    cats = pl.lit([], dtype=pl.List(pl.String))
    if raw.items is not None and raw.items.height:
        meta = raw.items.unique(subset=["item"], keep="first", maintain_order=True)
        meta = meta.with_columns(pl.col("item").cast(items["_key"].dtype, strict=False))
        items = items.join(meta.rename({"item": "_key"}), on="_key", how="left",
                           maintain_order="left")
        if "title" in items.columns:
            title = pl.col("title").cast(pl.String)
        if "categories" in items.columns:
            cats = pl.col("categories").fill_null(pl.lit([], dtype=pl.List(pl.String)))
    if per_event is not None:
        # per-event categories (Taobao, user logs): each item takes its most frequent one
        mode = (per_event.drop_nulls("c").group_by("_key")
                .agg(pl.col("c").mode().sort().first().alias("_cat")))
        items = items.join(mode, on="_key", how="left", maintain_order="left")
        items = items.with_columns(
            pl.when(pl.col("_cat").is_null()).then(cats)
            .otherwise(pl.concat_list(pl.col("_cat"))).alias("_cats")
        )
        cats = pl.col("_cats")
    return items.select(
        pl.col("item"), pl.col("raw_id"), title.alias("title"),
        cats.cast(pl.List(pl.String)).alias("categories"),
    ).sort("item")


def _users_table(raw: RawLog, u_raw: pl.Series, u_present: np.ndarray) -> pl.DataFrame:
    kept_raw = u_raw.filter(pl.Series(u_present))
    users = pl.DataFrame({
        "user": pl.Series(np.arange(len(kept_raw), dtype=np.int32)),
        "raw_id": _raw_str(kept_raw),
        "_key": kept_raw,
    })
    if raw.users is not None and raw.users.height:
        prof = raw.users.unique(subset=["user"], keep="first", maintain_order=True)
        prof = prof.with_columns(pl.col("user").cast(users["_key"].dtype, strict=False))
        users = users.join(prof.rename({"user": "_key"}), on="_key", how="left",
                           maintain_order="left")
    return users.drop("_key").sort("user")
