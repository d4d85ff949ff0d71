"""The user's own interaction table: CSV (with a header row), Parquet or JSON lines.

One event a row; the caller names the columns:

- ``user_col``, ``item_col``: raw ids (integers or strings);
- ``time_col``: Unix seconds (integer or float) or an ISO-8601 date-time (a Parquet
  timestamp column is taken as is);
- ``category_col`` (optional): one category, or several separated by ``|``
  (``"Comedy|Drama"``); in Parquet or JSON a list of strings is accepted too;
- ``title_col`` (optional): the item's title.

The items frame is built from the category and title columns when given: the first non-empty
value seen for each item. Bad rows are reported by ``file:line`` (CSV: the header is line 1; JSON
lines: the line of the record, blank lines counted) or by Parquet row group and row.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from mirec.data.prepare import RawLog
from mirec.data.reader import (
    Col,
    OnBadRows,
    csv_locator,
    parquet_files,
    parquet_locator,
    parquet_problem,
    read_validated,
    scan_text,
    show,
    text_problem,
)
from mirec.data.sources import Option, Source, register
from mirec.data.text import BOM, check_json_ids, json_lines, raw_lines
from mirec.errors import MirecConfigError, MirecDataError

FORMATS = ("csv", "parquet", "jsonl")
Locator = Callable[[int], str]


def load_table(
    path: str | Path,
    fmt: str,
    user_col: str,
    item_col: str,
    time_col: str,
    category_col: str | None = None,
    title_col: str | None = None,
    separator: str = ",",
    on_bad_rows: OnBadRows = "error",
) -> RawLog:
    """Read an interaction table in format ``fmt`` (``csv``, ``parquet`` or ``jsonl``)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise MirecConfigError(f"fmt: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "csv" and len(separator.encode()) != 1:
        raise MirecConfigError(f"--separator: expected one single-byte character, got {separator!r}")
    text_cols = [c for c in (user_col, item_col, time_col, category_col, title_col) if c]
    lf, locate = _scan(path, fmt, separator, text_cols)
    if fmt == "jsonl":
        check_json_ids(path, [user_col, item_col])
    lf = _join_lists(lf, [c for c in (category_col, title_col) if c])
    cols = [Col(user_col, "user", "id"), Col(item_col, "item", "id"), Col(time_col, "ts", "time")]
    if category_col:
        cols.append(Col(category_col, "category", "str", required=False))
    if title_col:
        cols.append(Col(title_col, "title", "str", required=False))
    try:
        df, n_bad = read_validated(lf, cols, locate, on_bad_rows,
                                   lambda: _problem(path, fmt, separator))
    except pl.exceptions.PolarsError as e:
        raise MirecDataError(_unreadable(path, fmt, e, separator)) from None
    if df.height == 0:
        raise MirecDataError(f"{locate(0)}: no events (a header, blank lines"
                             + (f" and {n_bad} bad row(s) skipped)" if n_bad else " only)"))
    return RawLog(
        events=_narrow_ids(df.select("user", "item", "ts")),
        source={"name": "table", "path": str(path), "format": fmt},
        items=_items(df) if category_col or title_col else None,
        bad_rows_skipped=n_bad,
    )


def _narrow_ids(events: pl.DataFrame) -> pl.DataFrame:
    """Integer ids that fit in Int32 as Int32: 8 bytes an event less for the whole preparation
    (85M events: 0.7 GB)."""
    small = [c for c in ("user", "item") if events[c].dtype.is_integer()
             and events.height and -2**31 <= events[c].min() and events[c].max() < 2**31]
    return events.with_columns([pl.col(c).cast(pl.Int32) for c in small]) if small else events


def _scan(path: Path, fmt: str, separator: str,
          text_cols: Sequence[str]) -> tuple[pl.LazyFrame, Locator]:
    """The lazy frame of the file in file order and its row locator."""
    if fmt == "csv":
        return scan_text(path, separator, has_header=True), csv_locator(path, 2, separator)
    if not path.exists():
        raise MirecDataError(f"{path}: file not found")
    if fmt == "parquet":  # one file or a directory of part files
        files = parquet_files(path)
        problem = parquet_problem(files, text_cols)  # a part that does not fit: named
        if problem:
            raise MirecDataError(problem)
        return pl.scan_parquet(files), parquet_locator(files)
    return _scan_jsonl(path, text_cols), _jsonl_locator(path)


def _scan_jsonl(path: Path, text_cols: Sequence[str]) -> pl.LazyFrame:
    """JSON lines with the named columns read as text (ids and times may mix numbers and
    strings across lines); list columns are kept as lists. A file starting with a byte-order
    mark (which Polars does not skip) is read from memory without it."""
    source: Path | io.BytesIO = path
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(len(BOM)) == BOM:
                source = io.BytesIO(path.read_bytes()[len(BOM):])
    try:
        schema = pl.scan_ndjson(source).collect_schema()
    except pl.exceptions.PolarsError as e:
        raise MirecDataError(_unreadable(path, "jsonl", e)) from None
    overrides = {c: pl.String for c in text_cols
                 if c in schema and not isinstance(schema[c], (pl.List, pl.Struct))}
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return pl.scan_ndjson(source, schema_overrides=overrides or None)


def _jsonl_locator(path: Path) -> Locator:
    """Record index -> ``file:line``; blank lines (which hold no record) are counted."""

    def locate(row: int) -> str:
        if row < 0:
            return f"{path}:1"
        seen = -1
        for lineno, raw in raw_lines(path):
            seen += bool(raw.strip())
            if seen == row:
                return f"{path}:{lineno}"
        return f"{path}: record {row}"

    return locate


def _unreadable(path: Path, fmt: str, err: Exception, separator: str = ",") -> str:
    """The message for a file Polars cannot parse, naming the first bad line of a text file."""
    return _problem(path, fmt, separator) or f"{path}: cannot read as {fmt}: {_first(err)}"


def _problem(path: Path, fmt: str, separator: str) -> str | None:
    """``file:line: what`` for the first line of a text file that cannot be read, if found."""
    if fmt == "csv":
        return text_problem(path, separator)
    if fmt == "jsonl":  # text_problem: only its UTF-8 check
        return text_problem(path, "\x1f", None, has_header=False) or _jsonl_problem(path)
    return parquet_problem(parquet_files(path), [], read=True)


def _jsonl_problem(path: Path) -> str | None:
    """``file:line: what`` for the first line that is not a JSON object, or whose field holds
    another shape (value, list, object) than on an earlier line (which Polars cannot type)."""
    records, shapes = 0, {}
    try:
        for lineno, rec in json_lines(path):
            records += 1
            for key, value in rec.items():
                shape = "a list" if isinstance(value, list) else "an object" if isinstance(
                    value, dict) else None if value is None else "a value"
                first = shapes.setdefault(key, (shape, lineno)) if shape else None
                if first and first[0] != shape:
                    return (f"{path}:{lineno}: field {show(key)} is {shape} here but "
                            f"{first[0]} on line {first[1]}")
    except MirecDataError as e:
        return str(e)
    return None if records else f"{path}:1: no JSON records (an empty file)"


def _first(err: Exception) -> str:
    """The first line of an error, cut short."""
    text = str(err).strip()
    return show(text.splitlines()[0])[1:-1] if text else type(err).__name__


def _join_lists(lf: pl.LazyFrame, names: Sequence[str]) -> pl.LazyFrame:
    """List-of-string columns (Parquet, JSON) joined with ``|`` so they read as one text value."""
    schema = lf.collect_schema()
    lists = [n for n in dict.fromkeys(names)
             if n in schema and isinstance(schema[n], pl.List)]
    if not lists:
        return lf
    return lf.with_columns(
        [pl.col(n).list.eval(pl.element().cast(pl.String)).list.join("|") for n in lists]
    )


def _items(df: pl.DataFrame) -> pl.DataFrame:
    """item, title, categories: the first non-empty value per item, categories split on ``|``."""
    text = [c for c in ("title", "category") if c in df.columns]
    firsts = df.select(pl.col("item").unique(maintain_order=True))
    for c in text:
        # the row of each item's first non-blank value, found on (item, row number) alone: no
        # string an event is copied or hashed (85M events), only one string an item gathered
        first = (df.select("item", pl.col(c).str.contains(r"\S").alias("__ok"))
                 .with_row_index("__r").filter("__ok")
                 .group_by("item").agg(pl.col("__r").min()))
        value = df[c].gather(first["__r"]).str.strip_chars()
        firsts = firsts.join(first.select("item", value.alias(c)), on="item", how="left",
                             maintain_order="left")
    out = [pl.col("item")]
    if "title" in text:
        out.append(pl.col("title"))
    if "category" in text:
        cats = (pl.col("category").str.split("|")
                .list.eval(pl.element().str.strip_chars())
                .list.eval(pl.element().filter(pl.element() != "")))
        out.append(cats.fill_null(pl.lit([], dtype=pl.List(pl.String))).alias("categories"))
    return firsts.select(out)


COLUMN_OPTIONS = (
    Option("user_col", "user id column", "user_id"),
    Option("item_col", "item id column", "item_id"),
    Option("time_col", "time column (epoch seconds or ISO date-time)", "timestamp"),
    Option("category_col", "item category column ('|' separates several)"),
    Option("title_col", "item title column"),
)
SEPARATOR = Option("separator", "field separator", ",")
register(Source("csv", "CSV with a header row, one event a row",
                functools.partial(load_table, fmt="csv"), COLUMN_OPTIONS + (SEPARATOR,)))
register(Source("parquet", "Parquet file or directory of part files, one event a row",
                functools.partial(load_table, fmt="parquet"), COLUMN_OPTIONS))
register(Source("jsonl", "JSON lines, one event object a line",
                functools.partial(load_table, fmt="jsonl"), COLUMN_OPTIONS))
