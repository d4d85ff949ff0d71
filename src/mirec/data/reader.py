"""Validated reading of raw tables (CSV, Parquet, JSON lines) with Polars.

Every loader funnels through :func:`read_validated`: the raw columns are read as text (or as
stored, for Parquet), converted to their kinds, and any row whose required value is missing or
does not parse is reported by file, line (or row and row group), column and value. With
``on_bad_rows="skip"`` such rows are dropped and counted instead.

Kinds of column:

- ``id``: a raw user or item id; kept as Int64 when every value is an integer, else as String.
- ``int`` / ``float``: numbers.
- ``time``: an event time as integer seconds: integers, floats (floored) or ISO-8601 date-times.
- ``str``: free text (titles, categories); may be missing unless required.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from mirec.data.text import record_line, records
from mirec.errors import MirecDataError

Kind = Literal["id", "int", "float", "time", "str"]
OnBadRows = Literal["error", "skip"]
ROW = "__row"
MAX_ID_CHARS = 1000  # a longer id is a broken file (a runaway quote), not an id
MAX_TS = 10**11  # seconds: year 5138; a larger time is milliseconds or garbage (refused, named)
SHOW = 80  # characters of a value shown in a message
MAX_HEADER = 1 << 20  # bytes


def cut(text: str, limit: int = SHOW) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def show(value: object, limit: int = SHOW) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a message never carries megabytes."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(str(value)):,} characters)"


def _out_of_range(kind: Kind, v: pl.Expr) -> pl.Expr | None:
    """True where the converted value ``v`` is unusable though it parsed (null: not checked)."""
    if kind == "time":
        return (v < 0) | (v >= MAX_TS)
    if kind == "id":
        s = v.cast(pl.String)
        return s.str.contains("\x00", literal=True) | (s.str.len_chars() > MAX_ID_CHARS)
    return None


def _why(kind: Kind, value: object) -> str:
    """Why a parsed ``value`` is refused (what :func:`_out_of_range` flagged)."""
    if kind == "time":
        if isinstance(value, int) and value < 0:
            return f"negative time {value} (expected Unix seconds)"
        return (f"time {value} is after the year 5000: milliseconds? (expected Unix seconds, "
                f"below {MAX_TS:.0e}; divide by 1000)")
    if "\x00" in str(value):
        return f"NUL character inside the id {show(value)}"
    return f"id of {len(str(value)):,} characters (at most {MAX_ID_CHARS:,}): {show(value)}"


@dataclass(frozen=True)
class Col:
    """One column to read: ``source`` is its name in the file, ``name`` its name in mirec."""

    source: str
    name: str
    kind: Kind
    required: bool = True


def csv_locator(path: Path, first_line: int, separator: str = ",",
                quote_char: str | None = '"') -> Callable[[int], str]:
    """Row index -> ``file:line`` for a delimited text file whose first data row is record
    ``first_line - 1`` (2 with a header line, else 1; row -1: the header). A quoted field
    holding line breaks moves the later records' lines, so the line is that of the record's
    start, found by reading up to it (:func:`mirec.data.text.record_line`; only when a message
    names a row)."""
    return lambda row: f"{path}:{record_line(path, row + first_line - 1, separator, quote_char)}"


def parquet_files(path: Path) -> list[Path]:
    """``path`` itself, or a directory's Parquet part files in name order (what Spark and other
    engines write: ``part-*.parquet``; ``_SUCCESS``, ``_metadata`` and hidden files are skipped).
    Raises :class:`MirecDataError` for a directory without any."""
    if not path.is_dir():
        return [path]
    parts = sorted(p for p in path.iterdir()
                   if p.suffix == ".parquet" and p.is_file() and p.name[0] not in "._")
    if not parts:
        raise MirecDataError(f"{path}: a directory without Parquet part files (*.parquet)")
    return parts


def parquet_problem(files: Sequence[Path], columns: Sequence[str], read: bool = False) -> str | None:
    """``part: what`` for the first Parquet part that does not fit the others: unreadable (not
    Parquet, a corrupt footer), without one of ``columns``, or holding one of them with another
    type than the first part. ``read``: also read each part's ``columns`` (a corrupt page behind a
    good footer), which is slow, so only once a scan has failed. None when every part fits."""
    import pyarrow.parquet as pq

    first: dict[str, object] = {}  # column -> its type in the first part
    for i, f in enumerate(files):
        try:
            schema = pq.read_schema(f)
            if read:
                pq.read_table(f, columns=[c for c in columns if c in schema.names] or None)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return f"{f}: not a readable Parquet file: {cut(why)}"
        for c in columns:
            if c not in schema.names:
                if i:  # the first part's own missing columns are named by the reader
                    return f"{f}: no column {show(c)} (it is in {files[0].name})"
                continue
            kind = schema.field(c).type
            if first.setdefault(c, kind) != kind:
                return (f"{f}: column {show(c)} is {kind} here but {first[c]} in {files[0].name}; "
                        f"every part needs the same schema")
    return None


def parquet_locator(path: Path | Sequence[Path]) -> Callable[[int], str]:
    """Row index -> ``file: row group g, row r`` using the row-group sizes of ``path`` (one file
    or the part files of a directory, read one after the other)."""
    import pyarrow.parquet as pq

    files = [path] if isinstance(path, (str, Path)) else list(path)
    groups = []  # (file, row group, first row of the whole scan, rows)
    start = 0
    for f in files:
        try:
            meta = pq.ParquetFile(f).metadata
        except (OSError, ValueError) as e:
            raise MirecDataError(f"{f}: not a readable Parquet file: {e}") from None
        for g in range(meta.num_row_groups):
            groups.append((f, g, start, meta.row_group(g).num_rows))
            start += meta.row_group(g).num_rows

    file_start = {}
    for f, _, first, _ in groups:
        file_start.setdefault(f, first)

    def locate(row: int) -> str:
        if row < 0:
            return f"{files[0]}: schema"
        for f, g, first, n in groups:
            if row < first + n:
                return f"{f}: row group {g}, row {row - first} (row {row - file_start[f]} of the file)"
        return f"{files[-1]}: row {row}"

    return locate


def _parsed(kind: Kind, name: str, dtype: pl.DataType) -> pl.Expr:
    """The expression converting raw column ``name`` to ``kind``; a non-null input that cannot be
    converted becomes null (detected afterwards)."""
    c = pl.col(name)
    if kind == "str":
        return c.cast(pl.String)
    if dtype.is_numeric():
        if kind == "float":
            return c.cast(pl.Float64)
        if kind == "time" and dtype.is_float():
            return c.floor().cast(pl.Int64, strict=False)
        return c.cast(pl.Int64, strict=False)
    if dtype.is_temporal():
        if kind == "time":
            return c.dt.epoch("s")
        return c.cast(pl.String)
    s = c.cast(pl.String).str.strip_chars()
    if kind == "int":
        return s.cast(pl.Int64, strict=False)
    if kind == "float":
        return s.cast(pl.Float64, strict=False)
    if kind == "time":
        as_int = s.cast(pl.Int64, strict=False)
        as_float = s.cast(pl.Float64, strict=False).floor().cast(pl.Int64, strict=False)
        # date-times only where no number parsed: to_datetime over numeric text is very slow
        as_date = (pl.when(as_float.is_null()).then(s)
                   .str.to_datetime(strict=False, time_unit="us").dt.epoch("s"))
        return pl.coalesce(as_int, as_float, as_date)
    return s  # id: decided after reading (ints when all parse)


def read_validated(
    lf: pl.LazyFrame,
    cols: Sequence[Col],
    locate: Callable[[int], str],
    on_bad_rows: OnBadRows = "error",
    problem: Callable[[], str | None] | None = None,
) -> tuple[pl.DataFrame, int]:
    """:func:`validated`, with a file Polars cannot parse reported as a MirecDataError: the
    message ``problem()`` gives (e.g. :func:`text_problem`, naming the line), else the file and
    Polars' first line."""
    try:
        return validated(lf, cols, locate, on_bad_rows)
    except pl.exceptions.PolarsError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MirecDataError((problem() if problem else None)
                             or f"{locate(-1)}: cannot read the file ({cut(first)})") from None


def validated(
    lf: pl.LazyFrame,
    cols: Sequence[Col],
    locate: Callable[[int], str],
    on_bad_rows: OnBadRows = "error",
) -> tuple[pl.DataFrame, int]:
    """Read ``cols`` from ``lf`` (whose rows are in file order), validate and convert them.

    Returns the converted frame (columns named ``Col.name`` in the given order, file order kept)
    and the number of bad rows skipped. Raises :class:`MirecDataError` naming the location,
    column and value of the first bad row when ``on_bad_rows="error"``.
    """
    if on_bad_rows not in ("error", "skip"):
        raise MirecDataError(f"--on-bad-rows: expected 'error' or 'skip', got {on_bad_rows!r}")
    schema = lf.collect_schema()
    missing = [c.source for c in cols if c.source not in schema]
    if missing:
        where = locate(-1)  # the header line, or the schema
        raise MirecDataError(
            f"{where}: no column {show(missing[0])} (columns: {cut(', '.join(schema.names()))})"
        )
    _check_nested(lf, cols, schema, locate)
    fast = _read_fast(lf, cols, schema)
    if fast is not None:
        return fast, 0
    raw = lf.select([pl.col(c.source).alias(f"raw_{i}") for i, c in enumerate(cols)])
    raw = raw.with_row_index(ROW)
    # blank lines (every field empty) carry no event: dropped before validation, after the row
    # index is taken, so line numbers in messages stay those of the file
    raw = raw.filter(~pl.all_horizontal([pl.col(f"raw_{i}").is_null() for i in range(len(cols))]))
    parsed = raw.with_columns(
        [_parsed(c.kind, f"raw_{i}", schema[c.source]).alias(c.name) for i, c in enumerate(cols)]
    )
    bad_exprs = []
    for i, c in enumerate(cols):
        rawc = pl.col(f"raw_{i}")
        if schema[c.source] == pl.String:
            rawc_missing = rawc.is_null() | (rawc.str.strip_chars() == "")
        else:
            rawc_missing = rawc.is_null()
        failed = pl.col(c.name).is_null() & ~rawc_missing
        rng = _out_of_range(c.kind, pl.col(c.name))
        if rng is not None:
            failed = failed | rng.fill_null(False)
        bad_exprs.append((failed | rawc_missing) if c.required else failed)
    flagged = parsed.with_columns(
        pl.any_horizontal(bad_exprs).alias("__bad") if bad_exprs else pl.lit(False).alias("__bad")
    )
    df = flagged.collect()
    n_bad = int(df["__bad"].sum())
    if n_bad and on_bad_rows == "error":
        row = df.filter(pl.col("__bad")).row(0, named=True)
        for i, c in enumerate(cols):
            value = row[f"raw_{i}"]
            empty = value is None or (isinstance(value, str) and value.strip() == "")
            if empty and c.required:
                raise MirecDataError(
                    f"{locate(row[ROW])}: column {show(c.source)}: missing value "
                    f"({n_bad} bad row(s) in all; --on-bad-rows skip drops them)"
                )
            if row[c.name] is None and not empty:
                raise MirecDataError(
                    f"{locate(row[ROW])}: column {show(c.source)}: cannot read {show(value)} as "
                    f"{c.kind} ({n_bad} bad row(s) in all; --on-bad-rows skip drops them)"
                )
            rng = _out_of_range(c.kind, pl.lit(row[c.name]))
            if row[c.name] is not None and rng is not None and pl.select(rng).item():
                raise MirecDataError(
                    f"{locate(row[ROW])}: column {show(c.source)}: {_why(c.kind, row[c.name])} "
                    f"({n_bad} bad row(s) in all; --on-bad-rows skip drops them)"
                )
    if n_bad:
        df = df.filter(~pl.col("__bad"))
    df = df.select([c.name for c in cols])
    # ids: integers when every value is one and reads back unchanged (so "007" or "+7" stay
    # strings: the raw id must survive the round trip), else strings
    casts = []
    for c in cols:
        if c.kind == "id" and df[c.name].dtype == pl.String:
            as_int = df[c.name].cast(pl.Int64, strict=False)
            if (as_int.null_count() == df[c.name].null_count()
                    and (as_int.cast(pl.String) == df[c.name]).all()):
                casts.append(as_int.alias(c.name))
    if casts:
        df = df.with_columns(casts)
    return df, n_bad


def _check_nested(lf: pl.LazyFrame, cols: Sequence[Col], schema: pl.Schema,
                  locate: Callable[[int], str]) -> None:
    """Refuse a list or object where an id, number or time belongs (JSON lines, Parquet),
    naming the first row that holds one."""
    for c in cols:
        if c.kind != "str" and isinstance(schema[c.source], (pl.List, pl.Array, pl.Struct)):
            hit = (lf.with_row_index(ROW).filter(pl.col(c.source).is_not_null())
                   .select(ROW).head(1).collect())
            row = int(hit.item()) if hit.height else 0
            raise MirecDataError(f"{locate(row)}: column {show(c.source)}: expected one {c.kind} "
                                 f"value, got a {schema[c.source].base_type()}")


def _read_fast(lf: pl.LazyFrame, cols: Sequence[Col],
               schema: pl.Schema) -> pl.DataFrame | None:
    """The common case in one streaming pass: integer times, no bad rows.

    Text is converted chunk by chunk and never held whole. Returns None when any row needs the
    careful path (a missing or unparsable value, a non-integer time), which then reports or
    skips it. Ids come back as Int64 only when every value reads back identically (so "007"
    stays a string id); otherwise a second pass keeps them as strings.
    """
    present = pl.any_horizontal([pl.col(c.source).is_not_null() for c in cols])
    lf = lf.filter(present)  # blank lines carry no event

    def pass_(int_ids: bool) -> tuple[pl.DataFrame, dict[str, bool]] | None:
        exprs, bad, checks = [], [], {}
        for c in cols:
            src, text = pl.col(c.source), schema[c.source] == pl.String
            if c.kind == "id" and text and int_ids:
                e = src.cast(pl.Int64, strict=False)
                same = (e.cast(pl.String) == src).fill_null(False)  # null: not an integer
                exprs.append((same | src.is_null()).alias(f"__ok_{c.name}"))
                checks[c.name] = True
            elif c.kind in ("int", "time") and text:
                e = src.cast(pl.Int64, strict=False)
            elif c.kind == "float" and text:
                e = src.cast(pl.Float64, strict=False)
            elif c.kind == "time" and schema[c.source].is_float():
                e = src.floor().cast(pl.Int64, strict=False)
            elif c.kind == "time" and schema[c.source].is_temporal():
                e = src.dt.epoch("s")
            elif c.kind == "str" or (c.kind == "id" and not schema[c.source].is_integer()):
                e = src.cast(pl.String)
            else:
                e = src
            exprs.append(e.alias(c.name))
            rng = _out_of_range(c.kind, src if c.kind == "id" else e)
            if rng is not None and (c.kind != "id" or text):
                bad.append(rng.fill_null(False))
            if c.name in checks:
                bad.append(src.is_null())  # a non-integer id is not bad: the ok check sees it
            elif c.required:
                bad.append(e.is_null())
            elif c.kind != "str":
                bad.append(e.is_null() & src.is_not_null())
        exprs.append(pl.any_horizontal(bad).alias("__bad") if bad else pl.lit(False).alias("__bad"))
        df = lf.select(exprs).collect(engine="streaming")
        if df["__bad"].any():
            return None
        oks = {name: bool(df[f"__ok_{name}"].all()) for name in checks}
        return df.select([c.name for c in cols]), oks

    first = pass_(int_ids=True)
    if first is None:
        return None
    df, oks = first
    if all(oks.values()):
        return df
    del df
    second = pass_(int_ids=False)
    return None if second is None else second[0]


def scan_text(path: Path, separator: str, has_header: bool, names: Sequence[str] | None = None,
              encoding: str = "utf8", quote_char: str | None = '"') -> pl.LazyFrame:
    """Lazily scan a delimited text file with every column as text."""
    if not Path(path).exists():
        raise MirecDataError(f"{path}: file not found")
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise MirecDataError(f"{path}:1: empty file" + (" (expected a header line)" if has_header else ""))
    if has_header:
        with open(path, "rb") as f:
            head = f.readline(MAX_HEADER + 1)
        if len(head) > MAX_HEADER:  # Polars would spend minutes on a schema of a million columns
            start = head[:SHOW].decode("utf-8", "replace")
            raise MirecDataError(f"{path}:1: a header line over {MAX_HEADER >> 20} MiB, starting "
                                 f"{start!r}: not a table")
    if names and not has_header:
        # a fixed schema, so a short or long first line is a bad row, not a polars error
        columns = {"schema": {n: pl.String for n in names},
                   "missing_columns": "insert", "extra_columns": "ignore"}
    else:
        columns = {"new_columns": list(names) if names else None, "infer_schema": False}
    return pl.scan_csv(
        path, separator=separator, has_header=has_header, **columns,
        encoding="utf8-lossy" if encoding != "utf8" else "utf8",
        # with a header, a row longer than it is an error (named by text_problem), not cut short
        quote_char=quote_char, truncate_ragged_lines=not has_header,
    )


def text_problem(path: Path, separator: str = ",", quote_char: str | None = '"',
                 has_header: bool = True) -> str | None:
    """``file:line: what`` for the first record of a delimited text file that cannot be read
    (:func:`mirec.data.text.records`): bytes that are not UTF-8, a quote that is never closed,
    more fields than the header, a stray quote. Slow (Python) and so called only once a fast
    reader has failed, to name the line."""
    width = None
    try:
        for start, row in records(path, separator, quote_char):
            if width is None and has_header:
                width = len(row)
            elif width is not None and len(row) > width:
                return (f"{path}:{start}: {len(row)} fields, the header has {width} "
                        f"(an extra separator or an unquoted {separator!r} in a value)")
            stray = [v for v in row if quote_char and quote_char in v]
            if stray:  # legal only doubled inside a quoted field, which Polars reads
                return (f"{path}:{start}: a stray quote in {show(stray[0])}; quote the whole "
                        f"field and double the quotes inside it")
    except MirecDataError as e:
        return str(e)
    return None
