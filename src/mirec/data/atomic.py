"""RecBole atomic files.

A RecBole data set ``name`` is a directory holding ``name.inter`` and optionally ``name.item``
and ``name.user``. Each is tab-separated UTF-8 text whose first line is a header of
``field:type`` entries, type one of ``token``, ``token_seq`` (space-separated tokens), ``float``
or ``float_seq``; every other line is one record.

Fields mirec reads (others are ignored):

- ``.inter``: ``user_id`` -> user, ``item_id`` -> item, ``timestamp`` -> ts (required: sequences
  are ordered by time), ``rating`` -> rating when present.
- ``.item``: ``item_id``; the first title-like field (title, movie_title, item_title) -> title;
  the first category-like field (categories, category, genre, genres, class) -> categories
  (a ``*_seq`` field is split on spaces, a plain one is a single category).
- ``.user``: ``user_id``, and every other field as a string profile column named without its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mirec.data.prepare import RawLog
from mirec.data.reader import Col, OnBadRows, csv_locator, read_validated, scan_text, text_problem
from mirec.data.sources import Source, register
from mirec.data.text import lines
from mirec.errors import MirecDataError

TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_FIELDS = ("title", "movie_title", "item_title")
CATEGORY_FIELDS = ("categories", "category", "genre", "genres", "class")


@dataclass(frozen=True)
class Field:
    """One header entry: ``header`` is the full ``name:type`` text (the column's name)."""

    header: str
    name: str
    type: str


def load_recbole(path: Path, on_bad_rows: OnBadRows = "error") -> RawLog:
    """Read RecBole atomic files: ``path`` is their directory or the ``.inter`` file.

    Raises :class:`MirecDataError` naming the file, line and field of a bad header or row
    (``on_bad_rows="error"``); with ``"skip"`` bad rows are dropped and counted (bad ``.inter``
    rows in ``bad_rows_skipped``, bad ``.item``/``.user`` rows in
    ``source["bad_metadata_rows_skipped"]``).
    """
    path = Path(path)
    inter = find_inter(path)
    events, n_bad = _read_inter(inter, on_bad_rows)
    items = _read_items(inter.with_suffix(".item"), on_bad_rows)
    users = _read_users(inter.with_suffix(".user"), on_bad_rows)
    source: dict[str, object] = {"name": "recbole", "dataset": inter.stem, "path": str(path)}
    bad_meta = sum(frame[1] for frame in (items, users) if frame)
    if bad_meta:
        source["bad_metadata_rows_skipped"] = bad_meta
    return RawLog(events=events, source=source, items=items[0] if items else None,
                  users=users[0] if users else None, bad_rows_skipped=n_bad)


def find_inter(path: Path) -> Path:
    """The ``.inter`` file of ``path`` (a directory holding one, or the file itself)."""
    if path.is_file():
        if path.suffix != ".inter":
            raise MirecDataError(f"{path}: expected a RecBole .inter file or its directory")
        return path
    if not path.is_dir():
        raise MirecDataError(f"{path}: no such file or directory")
    named = path / f"{path.name}.inter"
    if named.is_file():
        return named
    found = sorted(path.glob("*.inter"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise MirecDataError(f"{path}: no RecBole .inter file (expected {named.name})")
    raise MirecDataError(f"{path}: several .inter files ({', '.join(f.name for f in found)}) "
                         f"and none named {named.name}; pass the .inter file itself")


def read_header(file: Path) -> dict[str, Field]:
    """The header fields of an atomic file, by name; a field without a known ``:type`` is an
    error naming the file, line 1 and the field."""
    line = next(lines(file), (1, ""))[1]  # no BOM, no line end
    if not line.strip():
        raise MirecDataError(f"{file}:1: empty header; expected tab-separated name:type fields")
    fields: dict[str, Field] = {}
    for header in line.split("\t"):
        name, sep, type_ = header.rpartition(":")
        if not sep or not name:
            raise MirecDataError(f"{file}:1: header field {header!r} has no ':type' "
                                 f"(expected name:type, type one of {', '.join(TYPES)})")
        if type_ not in TYPES:
            raise MirecDataError(f"{file}:1: header field {header!r}: unknown type {type_!r} "
                                 f"(expected one of {', '.join(TYPES)})")
        fields[name] = Field(header, name, type_)
    return fields


def _required(fields: dict[str, Field], name: str, file: Path, why: str = "") -> Field:
    if name not in fields:
        have = ", ".join(f.header for f in fields.values())
        raise MirecDataError(f"{file}:1: no {name!r} field{why} (fields: {have})")
    return fields[name]


def _scan(file: Path) -> pl.LazyFrame:
    return scan_text(file, "\t", has_header=True, quote_char=None)


def _read_inter(file: Path, on_bad_rows: OnBadRows) -> tuple[pl.DataFrame, int]:
    fields = read_header(file)
    cols = [
        Col(_required(fields, "user_id", file).header, "user", "id"),
        Col(_required(fields, "item_id", file).header, "item", "id"),
        Col(_required(fields, "timestamp", file, "; mirec orders sequences by time").header,
            "ts", "time"),
    ]
    if "rating" in fields:
        cols.append(Col(fields["rating"].header, "rating", "float"))
    return read_validated(_scan(file), cols, csv_locator(file, 2, "\t", None), on_bad_rows,
                         lambda: text_problem(file, "\t", None))


def _read_items(file: Path, on_bad_rows: OnBadRows) -> tuple[pl.DataFrame, int] | None:
    if not file.is_file():
        return None
    fields = read_header(file)
    cols = [Col(_required(fields, "item_id", file).header, "item", "id")]
    title = next((fields[n] for n in TITLE_FIELDS if n in fields), None)
    category = next((fields[n] for n in CATEGORY_FIELDS if n in fields), None)
    if title:
        cols.append(Col(title.header, "title", "str", required=False))
    if category:
        cols.append(Col(category.header, "categories", "str", required=False))
    df, n_bad = read_validated(_scan(file), cols, csv_locator(file, 2, "\t", None), on_bad_rows,
                         lambda: text_problem(file, "\t", None))
    return df.select(
        "item",
        pl.col("title") if title else pl.lit(None, dtype=pl.String).alias("title"),
        _categories(category),
    ), n_bad


def _categories(field: Field | None) -> pl.Expr:
    """The categories list of an item: a ``*_seq`` field split on spaces, else one category."""
    empty = pl.lit([], dtype=pl.List(pl.String))
    if field is None:
        return empty.alias("categories")
    text = pl.col("categories").str.strip_chars()
    if field.type.endswith("_seq"):
        cats = text.str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    else:
        cats = pl.when(text != "").then(pl.concat_list(text))
    return cats.fill_null(empty).alias("categories")


def _read_users(file: Path, on_bad_rows: OnBadRows) -> tuple[pl.DataFrame, int] | None:
    if not file.is_file():
        return None
    fields = read_header(file)
    cols = [Col(_required(fields, "user_id", file).header, "user", "id")]
    cols += [Col(f.header, f.name, "str", required=False)
             for f in fields.values() if f.name != "user_id"]
    return read_validated(_scan(file), cols, csv_locator(file, 2, "\t", None), on_bad_rows,
                         lambda: text_problem(file, "\t", None))


register(Source("recbole", "RecBole atomic files (.inter, optional .item/.user)", load_recbole))
