"""Typed configuration: dataclasses hold the defaults; TOML files and ``key=value`` overrides.

Precedence is defaults < file < overrides. Every value is type-checked against the dataclass
field it sets, and a bad one raises :class:`MirecConfigError` naming the field, e.g.
``split.seed: expected int, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from mirec.errors import MirecConfigError

T = TypeVar("T")


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
        validate()
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
    """Load config ``cls``: defaults (then ``base``, e.g. a saved run's settings), then the TOML
    file (optionally one ``[section]``), then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise MirecConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise MirecConfigError(f"{path}: invalid TOML: {e}") from None
        if section is not None:
            data = data.get(section, {})
    merged = _merge(_merge(to_dict(cls()), base or {}), data)
    apply_overrides(merged, overrides or [])
    return from_dict(cls, merged)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
