"""Taobao user behaviour data (``UserBehavior.csv``, Alibaba / Tianchi).

A CSV file, no header, one event a line::

    user,item,category,behavior,timestamp
    1,2268318,2520377,pv,1511544070

``behavior`` is one of ``pv`` (page view), ``buy``, ``cart`` and ``fav``; ``timestamp`` is in
Unix seconds. Only events whose behaviour is among the chosen ones are kept (default: page
views); the filter runs on the lazy scan, before anything is collected, so the 100M-line file
is never held whole. A line whose behaviour is missing or not chosen is dropped unvalidated;
the kept lines are validated (ids, time, category) and a bad one is reported by ``file:line``.

Events carry ``category`` (String) so :func:`mirec.data.prepare.build_dataset` gives each item
its (most frequent) category. ``RawLog.filters`` records ``{"behaviors": [...]}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from mirec.data.prepare import RawLog
from mirec.data.reader import Col, OnBadRows, read_validated, scan_text, text_problem
from mirec.data.sources import Option, Source, register
from mirec.data.text import record_line
from mirec.errors import MirecDataError

BEHAVIORS = ("pv", "buy", "cart", "fav")
COLUMNS = ("user", "item", "category", "behavior", "timestamp")
COLS = (
    Col("user", "user", "id"),
    Col("item", "item", "id"),
    Col("timestamp", "ts", "time"),
    Col("category", "category", "str"),
)


def load_taobao(path: str | Path, behaviors: Sequence[str] | str = ("pv",),
                on_bad_rows: OnBadRows = "error") -> RawLog:
    """Read ``UserBehavior.csv``, keeping the events whose behaviour is in ``behaviors``
    (a sequence, or one comma-separated string such as ``"pv,buy"``)."""
    path = Path(path)
    chosen = check_behaviors(behaviors)
    lf = _kept(scan_text(path, ",", has_header=False, names=COLUMNS), chosen)
    events, n_bad = read_validated(lf, COLS, _locator(path, chosen), on_bad_rows,
                                   lambda: text_problem(path, ",", has_header=False))
    return RawLog(
        events=events,
        source={"name": "taobao", "path": str(path)},
        bad_rows_skipped=n_bad,
        filters={"behaviors": list(chosen)},
    )


def check_behaviors(behaviors: Sequence[str] | str) -> tuple[str, ...]:
    """The chosen behaviour names, deduplicated in order; MirecDataError on an unknown one."""
    names = behaviors.split(",") if isinstance(behaviors, str) else list(behaviors)
    chosen = tuple(dict.fromkeys(str(b).strip() for b in names if str(b).strip()))
    if not chosen:
        raise MirecDataError(f"behaviors: none given (valid: {', '.join(BEHAVIORS)})")
    unknown = [b for b in chosen if b not in BEHAVIORS]
    if unknown:
        raise MirecDataError(
            f"behaviors: unknown behavior {unknown[0]!r} (valid: {', '.join(BEHAVIORS)})"
        )
    return chosen


def _kept(lf: pl.LazyFrame, chosen: Sequence[str]) -> pl.LazyFrame:
    return lf.filter(pl.col("behavior").str.strip_chars().is_in(list(chosen)))


def _locator(path: Path, chosen: Sequence[str]) -> Callable[[int], str]:
    """Kept-row index -> ``file:line``. Rows are numbered after the behaviour filter, so the line
    is found by scanning again (only when an error is reported)."""

    def locate(row: int) -> str:
        lf = scan_text(path, ",", has_header=False, names=COLUMNS).with_row_index("__line", 1)
        hit = _kept(lf, chosen).slice(row, 1).select("__line").collect()
        # __line counts records; a quoted field holding line breaks moves the lines
        return f"{path}:{record_line(path, hit.item() - 1)}" if hit.height else f"{path}: kept event {row}"

    return locate


register(Source("taobao", "Taobao UserBehavior.csv (user,item,category,behavior,timestamp)",
                load_taobao, (Option("behaviors", "behaviours kept, comma-separated", "pv"),)))
