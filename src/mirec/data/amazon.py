"""Amazon review data: the 2014 (McAuley et al.) and 2018 (Ni et al.) releases.

Ratings: a "ratings only" CSV file, no header, one rating a line, **item first**::

    item,user,rating,timestamp
    0000013714,A2VKWLCNZF4ZVB,5.0,1360540800

``timestamp`` is in Unix seconds. The events keep ``rating`` (for the click-through task).

Metadata (optional): one record a line, plain or gzip-compressed (``.json.gz``; detected by the
file's magic bytes, not its name). Two layouts:

- 2014: ``asin``, ``title``, ``categories``, a list of category paths (lists of strings), e.g.
  ``[["Books", "Literature & Fiction", "Classics"]]``. These files hold Python dict literals
  (single quotes), not strict JSON: each line is read with :func:`json.loads`, falling back to
  :func:`ast.literal_eval`.
- 2018: strict JSON with ``asin``, ``title``, ``category``, a flat list of strings.

One category per item (protocol): 2014 -> the last element of the first path; 2018 -> the last
element of ``category``. The metadata is streamed line by line (files run to GBs) and only items
that occur in the ratings are kept: a line whose ``asin`` can be spotted without parsing it and
is not rated is passed over unparsed, so only the lines of rated items (and lines whose ``asin``
cannot be spotted) are validated. A malformed line raises :class:`MirecDataError` naming
``file:line``; with ``on_bad_rows="skip"`` it is dropped and counted in
``RawLog.source["meta_lines_skipped"]`` (``bad_rows_skipped`` counts rating rows only, as it
feeds the raw event count).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from mirec.data.prepare import RawLog
from mirec.data.reader import Col, OnBadRows, csv_locator, read_validated, scan_text, text_problem
from mirec.data.sources import Option, Source, register
from mirec.errors import MirecDataError

RATING_COLUMNS = ("item", "user", "rating", "timestamp")
RATING_COLS = (
    Col("user", "user", "id"),
    Col("item", "item", "id"),
    Col("timestamp", "ts", "time"),
    Col("rating", "rating", "float"),
)
ITEMS_SCHEMA = {"item": pl.String, "title": pl.String, "categories": pl.List(pl.String)}
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")


class BadRecord(ValueError):
    """A metadata line that cannot be read; the message names the field (not the location)."""


def load_amazon(ratings: str | Path, meta: str | Path | None = None,
                on_bad_rows: OnBadRows = "error") -> RawLog:
    """Read an Amazon ratings-only CSV and, optionally, its metadata file."""
    ratings = Path(ratings)
    lf = scan_text(ratings, ",", has_header=False, names=RATING_COLUMNS)
    events, n_bad = read_validated(lf, RATING_COLS, csv_locator(ratings, 1), on_bad_rows,
                                   lambda: text_problem(ratings, ",", has_header=False))
    source: dict[str, Any] = {"name": "amazon", "path": str(ratings)}
    items = None
    if meta is not None:
        wanted = set(events["item"].cast(pl.String).to_list())
        items, skipped = read_amazon_meta(Path(meta), wanted, on_bad_rows)
        source.update(meta=str(meta), meta_lines_skipped=skipped)
    return RawLog(events=events, source=source, items=items, bad_rows_skipped=n_bad)


def read_amazon_meta(path: Path, wanted: set[str],
                     on_bad_rows: OnBadRows = "error") -> tuple[pl.DataFrame, int]:
    """Items frame (item, title, categories) of the asins in ``wanted``, first record per asin,
    and the number of malformed lines skipped."""
    if on_bad_rows not in ("error", "skip"):
        raise MirecDataError(f"--on-bad-rows: expected 'error' or 'skip', got {on_bad_rows!r}")
    rows: dict[str, tuple[str | None, list[str]]] = {}
    skipped = 0
    for lineno, line in _lines(path):
        spotted = _ASIN.search(line)
        if spotted and (spotted.group(1) not in wanted or spotted.group(1) in rows):
            continue
        try:
            asin, title, category = _meta_record(line)
        except BadRecord as e:
            if on_bad_rows == "error":
                raise MirecDataError(
                    f"{path}:{lineno}: {e} (--on-bad-rows skip drops such lines)"
                ) from None
            skipped += 1
            continue
        if asin in wanted and asin not in rows:
            rows[asin] = (title, [category] if category else [])
    frame = pl.DataFrame(
        {"item": list(rows), "title": [t for t, _ in rows.values()],
         "categories": [c for _, c in rows.values()]},
        schema=ITEMS_SCHEMA,
    )
    return frame, skipped


def _open_text(path: Path) -> IO[str]:
    if not path.exists():
        raise MirecDataError(f"{path}: file not found")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; a broken gzip stream names the line."""
    lineno = 0
    with _open_text(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                line = line.removeprefix("\ufeff") if lineno == 1 else line  # a byte-order mark
                if line.strip():
                    yield lineno, line
        except (OSError, EOFError) as e:
            raise MirecDataError(f"{path}:{lineno + 1}: cannot read the file: {e}") from None


def _parse_line(line: str) -> dict[str, Any]:
    """A JSON object or a Python dict literal; BadRecord otherwise."""
    try:
        rec = json.loads(line)
    except ValueError:
        try:
            rec = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise BadRecord(
                f"not a JSON object or Python dict literal: {_short(line.strip())}"
            ) from None
    if not isinstance(rec, dict):
        raise BadRecord(f"expected an object, got {_short(rec)}")
    return rec


def _meta_record(line: str) -> tuple[str, str | None, str | None]:
    """``(asin, title, category)`` of one metadata line; BadRecord naming the field at fault."""
    rec = _parse_line(line)
    asin = rec.get("asin")
    if not isinstance(asin, str) or not asin.strip():
        raise BadRecord(f"field 'asin': missing or not a string ({_short(asin)})")
    title = rec.get("title")
    if title is not None and not isinstance(title, str):
        raise BadRecord(f"field 'title': expected a string, got {_short(title)}")
    return asin.strip(), (title or None), _category(rec)


def _category(rec: dict[str, Any]) -> str | None:
    """The item's one category: last of the first 2014 path, or last of the 2018 list."""
    if "categories" in rec:
        field, paths = "categories", rec["categories"]
        if not isinstance(paths, list) or not all(isinstance(p, list) for p in paths):
            raise BadRecord(f"field 'categories': expected a list of lists of strings, "
                             f"got {_short(paths)}")
        path = paths[0] if paths else []
    elif "category" in rec:
        field, path = "category", rec["category"]
        if not isinstance(path, list):
            raise BadRecord(f"field 'category': expected a list of strings, got {_short(path)}")
    else:
        return None
    if not path:
        return None
    if not isinstance(path[-1], str):
        raise BadRecord(f"field {field!r}: expected strings, got {_short(path[-1])}")
    return path[-1].strip() or None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


register(Source("amazon", "Amazon ratings-only CSV (item,user,rating,timestamp)", load_amazon,
                (Option("meta", "metadata JSON lines (.json or .json.gz)"),)))
