"""The new-items file: items added to the catalogue after a data set was prepared.

One format for every reader: ``mirec serve --new-items`` and ``mirec recommend --new-items``
(cold-start vectors, :mod:`mirec.serve.catalogue`) and ``mirec data append --new-items`` (the
appended items' titles and categories, :mod:`mirec.data.append`).

CSV (header ``item_id,title,categories``, categories separated by ``|``) or JSON lines
(``{"item_id": ..., "title": ..., "categories": [...]}``; a ``.jsonl``, ``.json`` or
``.ndjson`` name), read by the text rules of :mod:`mirec.data.text` (UTF-8, a BOM skipped,
CRLF or LF, RFC 4180 quoting: a quoted title may hold line breaks). A missing title is the id.
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

from mirec.data.text import csv_dicts, json_id, json_lines
from mirec.errors import MirecDataError

NewItem = tuple[str, str, list[str]]  # (raw item id, title, categories)


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of a CSV or JSONL items file."""
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return list(json_lines(path))
    header, rows = csv_dicts(path)
    if "item_id" not in header:
        raise MirecDataError(f"{path}:1: the header has no 'item_id' column")
    return list(rows)


def _categories(value: object, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split("|") if c.strip()]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return value
    raise MirecDataError(f"{where}: field 'categories': expected a list of strings or 'a|b'")


def read_new_items(path: str | Path, known: Container[str]) -> list[NewItem]:
    """(item_id, title, categories) of each item of ``path``, in file order; an id in ``known``
    (the catalogue's raw ids) or repeated is an error naming the file and line."""
    path, out, seen = Path(path), [], set()
    for no, rec in _rows(path):
        where = f"{path}:{no}"
        raw = rec.get("item_id")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise MirecDataError(f"{where}: field 'item_id': missing or empty")
        raw = json_id(raw, where, "item_id").strip()
        if raw in known or raw in seen:
            raise MirecDataError(f"{where}: field 'item_id': {raw!r} is already in the catalogue")
        seen.add(raw)
        title = rec.get("title") or raw
        if not isinstance(title, str):
            raise MirecDataError(f"{where}: field 'title': expected a string")
        out.append((raw, title, _categories(rec.get("categories"), where)))
    return out
