"""New events appended to a prepared data set, its ids kept: ``mirec data append``.

The new events come as a :class:`~mirec.data.prepare.RawLog`: read by a registered source
(:mod:`mirec.data.sources`) or made by :func:`store_log` from the rows of the serving event
store, which the caller reads (``data/`` imports nothing from ``serve/``: :func:`mirec.api.append`
opens the store and hands its plain ``(seq, user_id, item_id, ts)`` rows here). Then
:func:`append_dataset`:

1. maps the raw ids: users and items of the base data set keep their dense ids; new ones are
   numbered after them (users ``U, U+1, ...``, items ``N+1, ...``) in the order of their first
   event in time (ties in the order of the new log);
2. appends the new events after the base's and applies prepare's own steps to the whole: one
   stable sort by (user, time), then duplicates of ``(user, item, ts)`` dropped keeping the first
   (:func:`mirec.data.prepare._time_sorted`, :func:`~mirec.data.prepare._first_occurrences`).
   A new event identical to a base event, or repeated in the new log, is dropped; an event
   older than its user's last base event is merged into the sequence at its time (after base
   events of the same second);
3. applies no k-core filter: the base's events, users and items all stay, with their ids, and
   a new user or item with a single event is kept;
4. adds the new items to ``items.parquet`` (titles and categories from the ``--new-items`` file,
   else from the new log's own metadata) and the new users to ``users.parquet``;
5. writes a new data set (:func:`~mirec.data.prepare.write_dataset`, atomic) whose
   ``meta.json`` keeps the base's and adds a record to its ``appended`` list: the base's path
   and checksum, the source (for a store: its name and the last ``seq`` read, where a later
   append continues), events read / added / dropped as duplicates, new users and items.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mirec import __version__
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.new_items import read_new_items
from mirec.data.prepare import (
    RawLog,
    _first_occurrences,
    _items_table,
    _time_sorted,
    _users_table,
    write_dataset,
)
from mirec.errors import MirecConfigError
from mirec.io import DATASET, check_output_dir, is_artefact

APPENDED = "appended"  # meta.json: the list of append records, oldest first
STORE = "store"  # the source name of events read from the serving event store
ROWS = 100_000  # store rows turned into a frame at a time
BASE_ONLY = ("checksums", "dataset_checksum", "prepare_seconds", "append_seconds")


def store_log(rows: Iterable[tuple[int, str, str, int]], store: str, since: int) -> RawLog:
    """The events of an event store's ``(seq, user_id, item_id, ts)`` rows (arrival order, seq
    above ``since``) as a log; its source records the store and the last seq read (``since``
    when there was none), where the next append of this store continues."""
    schema = {"seq": pl.Int64, "user": pl.String, "item": pl.String, "ts": pl.Int64}
    rows = iter(rows)  # turned into frames ROWS at a time, never one Python list of the store
    frames = [pl.DataFrame(chunk, schema=schema, orient="row")
              for chunk in iter(lambda: list(itertools.islice(rows, ROWS)), [])]
    ev = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    last = int(ev["seq"].max()) if ev.height else since
    return RawLog(ev.drop("seq"), {"name": STORE, "store": store, "since": since, "last_seq": last})


def continue_from(data: str | Path, store: str) -> int:
    """The last seq of ``store`` appended to the data set ``data`` (0 when never): a later
    append of the same store reads only the events after it."""
    try:
        meta = json.loads((Path(data) / "meta.json").read_text())
    except (OSError, ValueError):
        return 0  # append_dataset names what is wrong with the data set
    seqs = [r["source"]["last_seq"] for r in meta.get(APPENDED, [])
            if r["source"].get("name") == STORE and r["source"].get("store") == store]
    return seqs[-1] if seqs else 0


def check_out(data: str | Path, out: str | Path) -> Path:
    """``data`` a data set mirec wrote, and ``out`` as ``--out`` rules allow
    (:func:`mirec.io.check_output_dir`), neither the base data set itself nor a directory inside
    it: checked before a possibly large store or log is read."""
    if not is_artefact(Path(data), DATASET):
        load_dataset(data, verify=False)  # names what is missing or wrong
    base, where = Path(data).resolve(), Path(out).resolve()
    if where == base or base in where.parents:
        raise MirecConfigError(f"--out {out}: is the data set appended to ({data}) or inside it; "
                               f"give a new directory (the base data set is never changed)")
    return check_output_dir(out, DATASET)


def _ids(raw: pl.Series, known: pl.Series, first: int, by_time: np.ndarray) -> tuple[np.ndarray, pl.Series]:
    """Dense int32 ids of the raw ids ``raw`` (E,): ``known[r]`` is id ``first + r``; the ids not
    in ``known`` get the next ones in the order of ``by_time`` (the rows sorted by time). Returns
    the ids and the new raw ids in their order."""
    timed = raw.gather(by_time)
    new = timed.filter(~timed.is_in(known.implode())).unique(maintain_order=True)
    every = pl.concat([known, new])
    ids = raw.replace_strict(every, pl.Series(np.arange(first, first + len(every), dtype=np.int32)),
                             return_dtype=pl.Int32)
    return ids.to_numpy(), new


def append_dataset(data: str | Path, raw: RawLog, out: str | Path,
                   new_items: str | Path | None = None) -> Path:
    """Write the data set ``data`` with the events of ``raw`` appended to ``out`` (see the module
    docstring). ``new_items``: a new-items file (:mod:`mirec.data.new_items`), the titles and
    categories of the new items; an id already in ``data`` is an error naming its line."""
    t0 = time.perf_counter()
    out = check_out(data, out)
    ds = load_dataset(data)  # checksums verified: the record names a base that is what it says
    catalogue = read_new_items(new_items, set(ds.items["raw_id"])) if new_items is not None else []
    ev = raw.events
    E0, U0 = len(ds.item), ds.num_users
    user_raw, item_raw = ev["user"].cast(pl.String), ev["item"].cast(pl.String)
    ts_new = ev["ts"].to_numpy().astype(np.int64, copy=False)
    by_time = np.argsort(ts_new, kind="stable")  # first appearance in time, ties in log order
    u_new, new_users = _ids(user_raw, ds.users["raw_id"], 0, by_time)
    i_new, new_items_raw = _ids(item_raw, ds.items["raw_id"], 1, by_time)

    # the base's events, then the new ones, through prepare's sort and dedupe
    user, item, ts, order = _time_sorted(np.concatenate([ds.user, u_new]), np.concatenate([ds.item, i_new]),
                                         np.concatenate([ds.ts, ts_new]), True)
    first = _first_occurrences(user, item, ts)
    user, item, ts, order = user[first], item[first], ts[first], order[first]
    dense = pl.DataFrame({"user": user, "item": item, "ts": ts})
    is_new = order >= E0
    last_base = ds.ts[ds.offsets[1:] - 1]  # (U0,) each base user's last time
    known_user = is_new & (user < U0)
    older = int((ts[known_user] < last_base[user[known_user]]).sum())
    ratings = _ratings(ds, ev, order)
    if ratings is not None:
        dense = dense.with_columns(ratings)

    items, matched = _new_items(ds, raw, item_raw, new_items_raw, catalogue)
    users = _new_users(ds, raw, new_users)
    record = {
        "base": {"path": str(data), "dataset_checksum": ds.checksum},
        "source": raw.source,
        "events_read": ev.height,
        "bad_rows_skipped": raw.bad_rows_skipped,
        "events_added": int(is_new.sum()),
        "duplicates_dropped": ev.height - int(is_new.sum()),
        "older_than_users_last_event": older,
        "new_users": len(new_users),
        "new_items": len(new_items_raw),
        "k_core": "not applied",
        "ratings": ("kept" if ratings is not None else "dropped: the appended events have none"
                    if ds.rating is not None else "none"),
    }
    if new_items is not None:
        record["new_items_file"] = {"path": str(new_items), "items": len(catalogue),
                                    "without_events": len(catalogue) - matched}
    meta = {k: v for k, v in ds.meta.items() if k not in BASE_ONLY}
    meta.update(mirec_version=__version__, **{APPENDED: [*ds.meta.get(APPENDED, []), record]})
    write_dataset(out, dense, pl.concat([ds.items, items], how="vertical_relaxed"),
                  users, meta, ("append_seconds", t0))
    return out


def _ratings(ds: Dataset, ev: pl.DataFrame, order: np.ndarray) -> pl.Series | None:
    """The rating column in final order when both the base and the new events have one."""
    if ds.rating is None or "rating" not in ev.columns:
        return None
    both = np.concatenate([ds.rating, ev["rating"].cast(pl.Float32).to_numpy()])
    return pl.Series("rating", both[order], dtype=pl.Float32)


def _new_items(ds: Dataset, raw: RawLog, item_raw: pl.Series, new: pl.Series,
               catalogue: list[tuple[str, str, list[str]]]) -> tuple[pl.DataFrame, int]:
    """The items table rows of the new items (ids N+1, ...), with prepare's metadata rules
    (the log's item metadata, else each item's most frequent per-event category), then the
    catalogue's title and categories over them; and how many catalogue entries had events."""
    per_event = (pl.DataFrame({"_key": item_raw, "c": raw.events["category"]})
                 if "category" in raw.events.columns else None)
    first = ds.num_items
    rows = _items_table(raw, per_event, new, np.ones(len(new), dtype=bool),
                        np.arange(first, first + len(new), dtype=np.int32))
    if not catalogue:
        return rows, 0
    cat = pl.DataFrame({"raw_id": [r for r, _, _ in catalogue], "_title": [t for _, t, _ in catalogue],
                        "_cats": [c for _, _, c in catalogue]},
                       schema={"raw_id": pl.String, "_title": pl.String, "_cats": pl.List(pl.String)})
    rows = rows.join(cat, on="raw_id", how="left", maintain_order="left")
    matched = int(rows["_title"].is_not_null().sum())
    rows = rows.with_columns(pl.coalesce("_title", "title").alias("title"),
                             pl.when(pl.col("_title").is_not_null()).then(pl.col("_cats"))
                             .otherwise(pl.col("categories")).alias("categories"))
    return rows.drop("_title", "_cats"), matched


def _new_users(ds: Dataset, raw: RawLog, new: pl.Series) -> pl.DataFrame:
    """The base's users table with the new users (ids U, U+1, ...) after it; their profile
    columns are the log's where it has the base's columns, else null."""
    rows = _users_table(raw, new, np.ones(len(new), dtype=bool))
    rows = rows.with_columns(pl.col("user") + ds.num_users)
    return pl.concat([ds.users, rows.select([c for c in rows.columns if c in ds.users.columns])],
                     how="diagonal_relaxed")


def describe(record: dict[str, Any]) -> str:
    """One line of an append record: ``12 events added (3 duplicates dropped), 2 new users, ...``."""
    line = (f"{record['events_added']:,} events added ({record['duplicates_dropped']:,} duplicates "
            f"dropped), {record['new_users']:,} new users, {record['new_items']:,} new items")
    if record["older_than_users_last_event"]:
        line += f"; {record['older_than_users_last_event']:,} older than their user's last event"
    if "last_seq" in record["source"]:
        line += f"; store seq up to {record['source']['last_seq']}"
    return line
