"""Typed config: defaults < file < overrides, and errors that name the field."""

from dataclasses import dataclass, field

import pytest

from mirec.config import from_dict, load, to_dict
from mirec.data.split import SplitConfig
from mirec.errors import MirecConfigError


@dataclass
class Inner:
    lr: float = 0.001
    ns: tuple[int, ...] = (20, 50)


@dataclass
class Outer:
    name: str = "x"
    epochs: int = 3
    inner: Inner = field(default_factory=Inner)


def test_precedence_file_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 5\n[inner]\nlr = 0.01\n')
    cfg = load(Outer, f, ["inner.lr=0.5", "inner.ns=10,20"])
    assert cfg.epochs == 5 and cfg.inner.lr == 0.5 and cfg.inner.ns == (10, 20)
    assert cfg.name == "x"


def test_list_overrides_take_commas_or_brackets():
    for text in ("10,20", "[10, 20]", " [10,20] "):
        assert load(Outer, None, [f"inner.ns={text}"]).inner.ns == (10, 20)


def test_errors_name_the_field(tmp_path):
    with pytest.raises(MirecConfigError, match=r"inner\.lr: expected float, got 'abc'"):
        load(Outer, None, ["inner.lr=abc"])
    with pytest.raises(MirecConfigError, match="epochs: expected int"):
        from_dict(Outer, {"epochs": "many"})
    with pytest.raises(MirecConfigError, match="nope: unknown setting"):
        from_dict(Outer, {"nope": 1})
    with pytest.raises(MirecConfigError, match=r"split.max_len: must be in \[1, 16384\], got 0"):
        load(SplitConfig, None, ["max_len=0"])
    with pytest.raises(MirecConfigError, match="not found"):
        load(Outer, tmp_path / "missing.toml")


def test_roundtrip():
    cfg = Outer(epochs=9)
    assert from_dict(Outer, to_dict(cfg)) == cfg
