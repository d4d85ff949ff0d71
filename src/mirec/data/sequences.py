"""Sequence files: each user's items in time order, without timestamps (S3-Rec, SASRec data).

Two layouts, whitespace-separated, blank lines ignored:

- ``lines`` (the default): one line per user, ``user_id item_1 item_2 ...``;
- ``pairs``: SASRec's ``user item``, one event a line, each user's lines together in time order.

The position in the sequence stands in for time: a user's events get ``ts`` 0, 1, 2, ... in file
order, so prepare's stable sort by (user, ts) keeps that order, and an item a user took twice
stays twice (the two events differ in ``ts``). Ids are kept as integers when they all are.

The optional attributes file is JSON, ``{item_id: [attribute ids]}`` (S3-Rec's
``*_item2attributes.json``); each item's attribute ids become its categories, as strings.

Malformed lines (a user line without items, a pair that is not two fields, a user whose lines are
not together) raise :class:`MirecDataError` naming ``file:line``; with ``on_bad_rows="skip"``
they are dropped and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mirec.data.prepare import RawLog
from mirec.data.reader import Col, OnBadRows, read_validated
from mirec.data.sources import Option, Source, register
from mirec.data.text import raw_lines, read_small
from mirec.errors import MirecConfigError, MirecDataError

FORMATS = ("lines", "pairs")
ITEMS_SCHEMA = {"item": pl.String, "title": pl.String, "categories": pl.List(pl.String)}


class BadLine(ValueError):
    """A malformed line; the message says what is wrong (the caller adds file:line)."""


@dataclass
class _Events:
    """Events read so far, one entry per event; ``first_line`` maps a user to its first line."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    first_line: dict[str, int] = field(default_factory=dict)
    last_user: str | None = None
    bad: int = 0

    def add(self, user: str, items: list[str], number: int) -> None:
        start = self.ts[-1] + 1 if user == self.last_user else 0
        self.users += [user] * len(items)
        self.items += items
        self.ts += range(start, start + len(items))
        self.lines += [number] * len(items)
        self.first_line.setdefault(user, number)
        self.last_user = user


def load_sequences(path: str | Path, attributes: str | Path | None = None,
                   format: str = "lines", on_bad_rows: OnBadRows = "error") -> RawLog:
    """Read a sequence file (``format`` ``lines`` or ``pairs``) and optional item attributes."""
    path = Path(path)
    if format not in FORMATS:
        raise MirecConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    ev = _read(path, format, on_bad_rows)
    frame = pl.DataFrame({"user": ev.users, "item": ev.items, "ts": ev.ts},
                         schema={"user": pl.String, "item": pl.String, "ts": pl.Int64})
    cols = (Col("user", "user", "id"), Col("item", "item", "id"), Col("ts", "ts", "time"))
    lines = ev.lines
    events, n_bad = read_validated(frame.lazy(), cols, lambda row: f"{path}:{lines[row]}", on_bad_rows)
    source: dict[str, Any] = {"name": "sequences", "path": str(path), "format": format,
                              "time": "position in the sequence"}
    items = None
    if attributes is not None:
        items, skipped = read_attributes(Path(attributes), on_bad_rows)
        source.update(attributes=str(attributes), attributes_skipped=skipped)
    return RawLog(events=events, source=source, items=items, bad_rows_skipped=ev.bad + n_bad)


def _read(path: Path, fmt: str, on_bad_rows: OnBadRows) -> _Events:
    if not path.is_file():
        raise MirecDataError(f"{path}: file not found" if not path.exists() else
                             f"{path}: not a file; expected a sequence file")
    ev = _Events()
    for number, raw in raw_lines(path):  # no BOM, CRLF or LF
        try:
            tokens = raw.decode("utf-8").split()
            if not tokens:
                continue
            user, items = _parse(tokens, fmt, ev)
        except (BadLine, UnicodeDecodeError) as e:
            if isinstance(e, UnicodeDecodeError):
                e = BadLine(f"not UTF-8 (byte {e.start + 1} of the line)")
            if on_bad_rows == "error":
                raise MirecDataError(f"{path}:{number}: {e}") from None
            ev.bad += 1
            continue
        ev.add(user, items, number)
    return ev


def _parse(tokens: list[str], fmt: str, ev: _Events) -> tuple[str, list[str]]:
    """The user and items of one line; BadLine when the line is malformed."""
    user = tokens[0]
    if fmt == "lines":
        if len(tokens) < 2:
            raise BadLine(f"user {user!r} has no items (expected 'user_id item_1 item_2 ...')")
        if user in ev.first_line:
            raise BadLine(f"user {user!r} already has a line (line {ev.first_line[user]}); "
                          f"expected one line per user")
        return user, tokens[1:]
    if len(tokens) != 2:
        raise BadLine(f"expected 'user item', got {len(tokens)} fields")
    if user != ev.last_user and user in ev.first_line:
        raise BadLine(f"user {user!r} also appears from line {ev.first_line[user]} with other "
                      f"users' lines in between; a user's lines must be together, in time order")
    return user, tokens[1:]


def read_attributes(path: Path, on_bad_rows: OnBadRows = "error") -> tuple[pl.DataFrame, int]:
    """Items frame (``item``, ``title`` null, ``categories``) from ``{item_id: [ids]}`` JSON,
    and the number of entries skipped."""
    text = read_small(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MirecDataError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") \
            from None
    if not isinstance(data, dict):
        raise MirecDataError(f"{path}: expected a JSON object {{item_id: [attribute ids]}}, "
                             f"got a {type(data).__name__}")
    items: list[str] = []
    cats: list[list[str]] = []
    skipped = 0
    for key, value in data.items():
        if not isinstance(value, list) or not all(
                isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            if on_bad_rows == "error":
                raise MirecDataError(f"{path}: item {key!r}: expected a list of attribute ids, "
                                     f"got {json.dumps(value)[:80]}")
            skipped += 1
            continue
        items.append(key)
        cats.append([str(v) for v in value])
    frame = pl.DataFrame({"item": items, "title": [None] * len(items), "categories": cats},
                         schema=ITEMS_SCHEMA)
    return frame, skipped


register(Source("sequences", "one line of items per user, or SASRec 'user item' pairs",
                load_sequences,
                (Option("attributes", "JSON {item_id: [attribute ids]} giving item categories"),
                 Option("format", "lines (user item item ...) or pairs (user item)", "lines"))))
