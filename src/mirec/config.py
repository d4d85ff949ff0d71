"""Typed configuration: dataclasses hold the defaults; TOML files and ``key=value`` overrides.

Precedence is defaults < file < overrides. Every value is type-checked against the dataclass
field it sets, and a bad one raises :class:`MirecConfigError` naming the field, e.g.
``split.seed: expected int, got 'abc'``.

Then every value is checked against its bounds (:func:`check_fields`), before anything is
allocated from it: a float must be finite and an int must fit in 64 bits unless its field says
otherwise, and a field declared with :func:`setting` (or :func:`size`) carries its own range,
e.g. ``lr: float = setting(1e-3, gt=0)`` refuses ``train.lr=nan`` with ``train.lr: must be > 0
and finite, got nan``. Sizes (widths, lengths, counts, batch sizes) have sane maxima (``MAX_*`` below); the
memory a model's parameters would take is checked when it is built (``mirec.runs``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from mirec.errors import MirecConfigError

T = TypeVar("T")

# Sane maxima of sizes: far above any model or batch trained here, far below a size that would
# overflow or try to allocate terabytes before any other check could see it.
MAX_WIDTH = 1 << 14  # embedding dimensions and hidden-layer widths (16,384)
MAX_LEN = 1 << 14  # history lengths (16,384)
MAX_COUNT = 1 << 10  # interests, memory slots, layers, heads, routing iterations (1,024)
MAX_BATCH = 1 << 20  # batch sizes, sampled negatives, candidates (1,048,576)
INT64 = (-(1 << 63), (1 << 63) - 1)  # every int field: what torch and NumPy take


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting (and of each element of a list setting); ``finite=False``
    lets a float be infinite (never NaN). Every int must also fit in 64 bits. The message reads
    ``train.lr: must be > 0 and finite, got nan``."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = True

    def check(self, value: Any, field: str) -> None:
        """Raise naming ``field`` unless ``value`` (an int or a float; anything else passes) is in
        range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        is_int = isinstance(value, int)
        ok = (is_int and INT64[0] <= value <= INT64[1]) or (
            not is_int and not math.isnan(value) and (math.isfinite(value) or not self.finite))
        ok = ok and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge) \
            and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le)
        if not ok:
            raise MirecConfigError(f"{field}: must {self.wording(is_int)}, got {value!r}")

    def wording(self, is_int: bool) -> str:
        """``be > 0 and finite``, ``be in [0, 1)``, ``fit in 64 bits``: what a value must be."""
        r = self.ranges()
        if is_int:
            return f"be{r}" if r else "fit in 64 bits"
        if not self.finite or (r.startswith(" in ")):
            return f"be{r}" if r else "be a number"
        return f"be{r} and finite" if r else "be finite"

    def ranges(self) -> str:
        """`` > 0``, `` in [0, 1)``, ...: the range as error messages word it."""
        low, opening = (self.gt, "(") if self.gt is not None else (self.ge, "[")
        high, closing = (self.lt, ")") if self.lt is not None else (self.le, "]")
        if low is not None and high is not None:
            return f" in {opening}{_num(low)}, {_num(high)}{closing}"
        if low is not None:
            return f" {'>' if self.gt is not None else '>='} {_num(low)}"
        if high is not None:
            return f" {'<' if self.lt is not None else '<='} {_num(high)}"
        return ""


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


DEFAULT_BOUNDS = Bounds()  # a field declared without setting(): finite floats, 64-bit ints


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | Any = dataclasses.MISSING,
            gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None, finite: bool = True) -> Any:
    """A config dataclass field with its bounds: ``lr: float = setting(1e-3, gt=0)``,
    ``hidden: list[int] = setting(factory=lambda: [200, 80], ge=1, le=MAX_WIDTH)``."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"bounds": Bounds(gt, ge, lt, le, finite)})


def size(default: Any = dataclasses.MISSING, most: int = MAX_WIDTH, *, least: int = 1,
         factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A size setting: an int (or each int of a list) in ``[least, most]``."""
    return setting(default, factory=factory, ge=least, le=most)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of config dataclass ``obj`` against its declared :class:`Bounds` (by
    default: floats finite, ints within 64 bits), each element of a list field too; raise
    :class:`MirecConfigError` naming ``prefix + field`` (``train.lr: must be > 0 and finite, got
    nan``)."""
    for f in dataclasses.fields(obj):
        bounds = f.metadata.get("bounds", DEFAULT_BOUNDS)
        value = getattr(obj, f.name)
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                bounds.check(v, f"{prefix}{f.name}[{i}]")
        else:
            bounds.check(value, f"{prefix}{f.name}")



def _coerce(value: Any, tp: Any, field: str) -> Any:
    """Convert ``value`` (from TOML or a CLI string) to type ``tp`` or raise naming ``field``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field)
            except MirecConfigError as e:
                errors.append(str(e))
        raise MirecConfigError(errors[0] if errors else f"{field}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise MirecConfigError(f"{field}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):  # "80,40" or "[80, 40]"
            value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise MirecConfigError(f"{field}: expected a list, got {value!r}")
        elem = args[0] if args else Any
        out = [_coerce(v, elem, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MirecConfigError(f"{field}: expected a table, got {value!r}")
        return from_dict(tp, value, prefix=f"{field}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise MirecConfigError(f"{field}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise MirecConfigError(f"{field}: expected int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise MirecConfigError(f"{field}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise MirecConfigError(f"{field}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise MirecConfigError(f"{field}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, checking names and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MirecConfigError(
            f"{prefix}{unknown[0]}: unknown setting (known: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()  # a config's own checks, which name its section (check_fields first)
    check_fields(obj, prefix)  # and any config's bounds: finite floats, 64-bit ints
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON/TOML-ready dict of a config dataclass (tuples become lists)."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    return conv(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict (values stay strings; coerced later)."""
    for item in overrides:
        if "=" not in item:
            raise MirecConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise MirecConfigError(f"{key}: {p} is not a table")
        node[parts[-1]] = value.strip()
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         section: str | None = None, base: dict[str, Any] | None = None) -> T:
    """Load config ``cls``: defaults (then those that follow from the given settings, if ``cls``
    has ``defaults_for``; then ``base``, e.g. a saved run's settings), then the TOML file
    (optionally one ``[section]``), then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path)
        if section is not None:
            data = data.get(section, {})
    follow = getattr(cls, "defaults_for", None)
    layer = {}
    if follow is not None:  # read what was given alone; the merged dict's checks come below
        layer = follow(apply_overrides(copy.deepcopy(_merge(base or {}, data)), overrides or []))
    merged = _merge(_merge(_merge(to_dict(cls()), layer), base or {}), data)
    apply_overrides(merged, overrides or [])
    return from_dict(cls, merged)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as a dict; a missing, unreadable, non-UTF-8 or invalid file raises one
    line naming it (and the line and byte of a bad character)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise MirecConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise MirecConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise MirecConfigError(f"{path}: not UTF-8 text (line {line}, byte {e.start}: "
                               f"{raw[e.start:e.start + 1]!r}); TOML config files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MirecConfigError(f"{path}: invalid TOML: {e}") from None


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
