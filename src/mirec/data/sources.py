"""The registry of data sources: what ``mirec data prepare SOURCE`` and ``mirec data fetch`` read.

Each source module (movielens.py, atomic.py, amazon.py, taobao.py, tabular.py, sequences.py)
keeps its own loader and registers it with one line::

    register(Source("taobao", "Taobao UserBehavior.csv", load_taobao, options=(BEHAVIORS_OPT,)))

A loader is called as ``loader(path, on_bad_rows=..., **options)`` and returns a
:class:`~mirec.data.prepare.RawLog`. An option a source does not declare is a
:class:`MirecConfigError` naming it; an option not given takes the declared default.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirec.data.prepare import RawLog
from mirec.errors import MirecConfigError

# the modules that register sources; importing them fills SOURCES (they import polars, so lazily)
MODULES = ("movielens", "atomic", "amazon", "taobao", "tabular", "sequences")


@dataclass(frozen=True)
class Option:
    """One keyword a source's loader takes; ``flag`` is its name on the command line."""

    name: str
    help: str
    default: Any = None

    @property
    def flag(self) -> str:
        return flag(self.name)


@dataclass(frozen=True)
class Source:
    """A data source: its name, a one-line description, its loader and the options it takes."""

    name: str
    help: str
    loader: Callable[..., RawLog]
    options: tuple[Option, ...] = ()

    def load(self, path: str | Path, on_bad_rows: str = "error", **options: Any) -> RawLog:
        """Read ``path`` with the given options (the others take their defaults)."""
        known = {o.name: o for o in self.options}
        for name in options:
            if name not in known:
                takes = ", ".join(o.flag for o in self.options) or "no options"
                raise MirecConfigError(f"{flag(name)}: source {self.name!r} does not take "
                                       f"this option (it takes {takes})")
        given = {k: v for k, v in options.items() if v is not None}  # None: the default
        kwargs = {o.name: given.get(o.name, o.default) for o in self.options}
        return self.loader(Path(path), on_bad_rows=on_bad_rows, **kwargs)


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add ``source`` to the registry (a second source of the same name is a programming error)."""
    if SOURCES.get(source.name, source) is not source:
        raise ValueError(f"data source {source.name!r} registered twice")
    SOURCES[source.name] = source
    return source


def sources() -> Mapping[str, Source]:
    """Every registered source, in name order (importing the source modules on first use)."""
    for module in MODULES:
        importlib.import_module(f"mirec.data.{module}")
    return dict(sorted(SOURCES.items()))


def get(name: str) -> Source:
    """The source called ``name``; a :class:`MirecConfigError` listing the known ones if none."""
    known = sources()
    if name not in known:
        raise MirecConfigError(f"SOURCE: unknown source {name!r} (one of: {', '.join(known)})")
    return known[name]


def load(name: str, path: str | Path, on_bad_rows: str = "error", **options: Any) -> RawLog:
    """Read ``path`` with source ``name``: ``load("taobao", p, behaviors="pv,buy")``."""
    return get(name).load(path, on_bad_rows, **options)


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``user_col`` -> ``--user-col``."""
    return "--" + name.replace("_", "-")
