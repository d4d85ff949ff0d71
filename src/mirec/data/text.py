"""Reading the text files a user gives mirec: one set of rules for every reader.

- **Encoding**: UTF-8; a byte-order mark at the start of the file is skipped (Excel and
  Windows tools write one), bytes that are not UTF-8 are named by ``file:line``.
- **Line ends**: ``\\n`` and ``\\r\\n`` (CRLF) alike.
- **Quoting** (CSV, per RFC 4180): a quoted field may hold separators, doubled quotes and line
  breaks; it is one field of one record, and a record's errors name the physical line where
  the record starts (:func:`records`, :func:`record_line`).
- **Limits**: a field over :data:`MAX_FIELD` characters, a line over :data:`MAX_LINE` bytes, a
  file read whole over :data:`MAX_SMALL` bytes are refused, naming the file and line.
- **JSON ids** are strings or integers; an object, array, boolean, float or null where an id
  belongs is refused naming ``file:line`` and the field (:func:`json_id`).

Large logs are parsed by Polars (:func:`mirec.data.reader.scan_text`), which follows the same
rules for BOM, CRLF and quoted line breaks; this module names their lines when a row is bad, and
reads the small files (catalogue lists, new items, attributes, headers, config) itself.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mirec.errors import MirecDataError

BOM = b"\xef\xbb\xbf"
MAX_FIELD = 1 << 20  # characters of one CSV field: a longer one is a runaway quote
MAX_LINE = 64 << 20  # bytes of one line
MAX_SMALL = 256 << 20  # bytes of a file read whole
SHOW = 80


def _show(value: object) -> str:
    r = repr(value)
    return r if len(r) <= SHOW else f"{r[:SHOW]}... ({len(str(value)):,} characters)"


def _exists(path: Path) -> None:
    if not path.exists():
        raise MirecDataError(f"{path}: file not found")
    if path.is_dir():
        raise MirecDataError(f"{path}: cannot read: a directory, not a file")


def not_utf8(path: Path, lineno: int, raw: bytes, err: UnicodeDecodeError) -> MirecDataError:
    """The error for line ``lineno`` (bytes ``raw``) that is not UTF-8."""
    return MirecDataError(f"{path}:{lineno}: not UTF-8 (byte {raw[err.start]:#04x} at column "
                          f"{err.start + 1}); convert the file, e.g. iconv -f latin1 -t utf-8")


def raw_lines(path: str | Path, limit: int = MAX_LINE) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line end) of every line of ``path``; the BOM of the
    first line is skipped, ``\\r\\n`` ends a line like ``\\n``."""
    path = Path(path)
    _exists(path)
    with open(path, "rb") as f:
        lineno = 0
        while raw := f.readline(limit + 1):
            lineno += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise MirecDataError(f"{path}:{lineno}: a line over {limit >> 20} MiB: not a "
                                     f"text file of records")
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            yield lineno, raw.rstrip(b"\r\n")


def lines(path: str | Path, limit: int = MAX_LINE) -> Iterator[tuple[int, str]]:
    """(line number, text without the line end) of every line of ``path`` (:func:`raw_lines`),
    decoded as UTF-8; a line that is not UTF-8 is refused naming it."""
    path = Path(path)
    for lineno, raw in raw_lines(path, limit):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise not_utf8(path, lineno, raw, e) from None


def read_small(path: str | Path, limit: int = MAX_SMALL) -> str:
    """The whole text of a small file (a config, a list, a JSON document): UTF-8 without its BOM,
    line ends ``\\n``. A file over ``limit`` bytes or not UTF-8 is refused naming it (and the
    line)."""
    path = Path(path)
    _exists(path)
    try:
        if path.stat().st_size > limit:
            raise MirecDataError(f"{path}: over {limit >> 20} MiB; expected a small text file")
        data = path.read_bytes()
    except OSError as e:
        raise MirecDataError(f"{path}: cannot read ({e.strerror})") from None
    data = data[len(BOM):] if data.startswith(BOM) else data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        raise not_utf8(path, data.count(b"\n", 0, e.start) + 1, data[start:],
                       UnicodeDecodeError(e.encoding, e.object, e.start - start, e.end - start,
                                          e.reason)) from None
    return text.replace("\r\n", "\n")


def records(path: str | Path, separator: str = ",", quote_char: str | None = '"'
            ) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, fields) of every record of a delimited text file, quoted
    per RFC 4180 (``quote_char`` None: no quoting). A blank line is a record without fields.
    Raises :class:`MirecDataError` naming ``file:line`` for a quote never closed, a field over
    :data:`MAX_FIELD` characters or bytes that are not UTF-8."""
    path = Path(path)
    _exists(path)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=separator, quotechar=quote_char or None, strict=True,
                            quoting=csv.QUOTE_MINIMAL if quote_char else csv.QUOTE_NONE)
        start = 1
        try:
            for row in reader:
                if any(len(v) > MAX_FIELD for v in row):
                    raise MirecDataError(f"{path}:{start}: a field over {MAX_FIELD:,} characters "
                                         f"(a quote never closed?)")
                yield start, row
                start = reader.line_num + 1
        except UnicodeDecodeError:
            for _ in lines(path):  # names the line that is not UTF-8
                pass
            raise
        except csv.Error as e:
            if "end of data" in str(e) or "EOF" in str(e):
                raise MirecDataError(f"{path}:{start}: a quote opened on this line is never "
                                     f"closed") from None
            if "field larger" in str(e):
                raise MirecDataError(f"{path}:{start}: a field over {MAX_FIELD:,} characters "
                                     f"(a quote never closed?)") from None
            raise MirecDataError(f"{path}:{start}: {_show(str(e))}") from None


def record_line(path: str | Path, index: int, separator: str = ",",
                quote_char: str | None = '"') -> int:
    """The physical line where record ``index`` (0-based, the header included) starts: a
    record's line number once quoted fields hold line breaks. Reads up to that record."""
    if quote_char is None or index <= 0:
        return max(index + 1, 1)
    try:
        for i, (start, _) in enumerate(records(path, separator, quote_char)):
            if i == index:
                return start
    except MirecDataError:  # unreadable further on: the count of lines is the best guess
        pass
    return index + 1


def csv_dicts(path: str | Path, separator: str = ",") -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """The header and (line, {column: value}) of each non-blank record of a CSV file with a
    header line (:func:`records`)."""
    path = Path(path)
    rows = records(path, separator)
    first = next(rows, None)
    if first is None:
        raise MirecDataError(f"{path}:1: empty file (expected a header line)")
    header = [h.strip() for h in first[1]]

    def body() -> Iterator[tuple[int, dict]]:
        for start, row in rows:
            if not any(v.strip() for v in row):
                continue
            if len(row) > len(header):
                raise MirecDataError(f"{path}:{start}: {len(row)} fields, the header has "
                                     f"{len(header)}")
            yield start, dict(zip(header, row))

    return header, body()


# ---- JSON ------------------------------------------------------------------------------------


def _not_json(name: str) -> None:
    """Python reads NaN and Infinity; JSON does not."""
    raise ValueError(f"{name} is not JSON (write null or a number)")


def json_loads(text: str, where: str) -> Any:
    """``json.loads`` of ``text`` (NaN and Infinity refused); an error names ``where``."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as e:
        raise MirecDataError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
    except ValueError as e:
        raise MirecDataError(f"{where}: not valid JSON: {e}") from None


def json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSON lines file (:func:`lines`); a
    line that is not a JSON object is refused naming it."""
    path = Path(path)
    for lineno, line in lines(path):
        if not line.strip():
            continue
        rec = json_loads(line, f"{path}:{lineno}")
        if not isinstance(rec, dict):
            raise MirecDataError(f"{path}:{lineno}: expected a JSON object, got {_show(line.strip())}")
        yield lineno, rec


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", float: "a float"}.get(type(value), type(value).__name__)


def json_id(value: object, where: str, field: str) -> str:
    """A JSON id as text: a string or an integer; anything else is refused naming ``where``
    (``file:line``) and ``field``."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise MirecDataError(f"{where}: field {_show(field)}: expected a string or integer id, got "
                         f"{_json_kind(value)} ({_show(json.dumps(value))[1:-1]})")


def check_json_ids(path: str | Path, fields: Sequence[str]) -> None:
    """Refuse a JSON lines file where one of ``fields`` holds a boolean, float, object or array
    (Polars would read it as text: ``true``, ``1``). A fast scan for such a value after the
    field's name comes first; only a hit reads the file in Python to confirm and name the line."""
    import polars as pl

    path = Path(path)
    value = r"(?:true|false|\{|\[|-?[0-9]+\.[0-9]|-?[0-9]+(?:\.[0-9]+)?[eE])"
    pattern = "|".join(rf'"{re.escape(f)}"\s*:\s*{value}' for f in fields)
    # JSON holds no raw \x1f: each line is one text value
    lf = pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None,
                     schema={"line": pl.String}, truncate_ragged_lines=True,
                     encoding="utf8-lossy")
    try:
        hit = lf.select(pl.col("line").str.contains(pattern).any()).collect().item()
    except pl.exceptions.PolarsError:
        hit = True  # let the exact pass name what is wrong
    if not hit:
        return
    for lineno, rec in json_lines(path):
        for f in fields:
            if rec.get(f) is not None:
                json_id(rec[f], f"{path}:{lineno}", f)
