"""Sequence files (one line per user, or SASRec pairs) and attributes, on files the tests write;
the real Amazon Beauty and ML-1M-half folders when ../shared/data is present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, build_dataset
from mirec.data.sequences import load_sequences
from mirec.errors import MirecConfigError, MirecDataError

LINES = "1 10 11 12 10\n\n2 11 12\n3 30\n"
PAIRS = "1 10\n1 11\n1 12\n1 10\n2 11\n2 12\n3 30\n"
ATTRS = {"10": [1, 2], "11": [3], "12": [], "99": [7]}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def histories(path: Path) -> dict[str, list[tuple[str, str, list[str]]]]:
    """raw user -> [(raw item, its categories as str), ...] in the data set's order."""
    ds = load_dataset(path, verify=False)
    items = {r["item"]: (r["raw_id"], r["categories"]) for r in ds.items.to_dicts()}
    users = ds.users["raw_id"].to_list()
    out: dict[str, list] = {}
    for u, i in zip(ds.user.tolist(), ds.item.tolist()):
        out.setdefault(users[u], []).append(items[i])
    return out


def test_lines_keep_order_repeats_and_attributes(tmp_path: Path) -> None:
    attrs = tmp_path / "attrs.json"
    attrs.write_text(json.dumps(ATTRS))
    raw = load_sequences(write(tmp_path / "seq.txt", LINES), attrs)
    # position stands in for time: 0, 1, 2, ... per user, in file order
    assert raw.events["ts"].to_list() == [0, 1, 2, 3, 0, 1, 0]
    assert raw.events["user"].dtype == pl.Int64
    out = build_dataset(raw, tmp_path / "ds", PrepareConfig(k_core=1))
    assert histories(out) == {
        "1": [("10", ["1", "2"]), ("11", ["3"]), ("12", []), ("10", ["1", "2"])],
        "2": [("11", ["3"]), ("12", [])],
        "3": [("30", [])],
    }


def test_pairs_give_the_same_data_set(tmp_path: Path) -> None:
    a = build_dataset(load_sequences(write(tmp_path / "l.txt", LINES)), tmp_path / "a",
                      PrepareConfig(k_core=1))
    b = build_dataset(load_sequences(write(tmp_path / "p.txt", PAIRS), format="pairs"),
                      tmp_path / "b", PrepareConfig(k_core=1))
    assert pl.read_parquet(a / "interactions.parquet").equals(
        pl.read_parquet(b / "interactions.parquet"))


def test_string_ids(tmp_path: Path) -> None:
    raw = load_sequences(write(tmp_path / "s.txt", "alice A B A\nbob B\n"))
    assert raw.events["user"].to_list() == ["alice"] * 3 + ["bob"]
    assert raw.events["item"].to_list() == ["A", "B", "A", "B"]


@pytest.mark.parametrize(("fmt", "text", "where"), [
    ("lines", "1 10 11\n\n3\n", r"s\.txt:3: user '3' has no items"),
    ("lines", "1 10 11\n2 10\n1 12\n", r"s\.txt:3: user '1' already has a line \(line 1\)"),
    ("pairs", "1 10\n1 11 5\n", r"s\.txt:2: expected 'user item', got 3 fields"),
    ("pairs", "1 10\n2 10\n1 11\n", r"s\.txt:3: user '1' also appears from line 1"),
])
def test_malformed_lines_are_named(tmp_path: Path, fmt: str, text: str, where: str) -> None:
    path = write(tmp_path / "s.txt", text)
    with pytest.raises(MirecDataError, match=where):
        load_sequences(path, format=fmt)
    raw = load_sequences(path, format=fmt, on_bad_rows="skip")
    assert raw.bad_rows_skipped == 1


def test_bad_attributes_and_format(tmp_path: Path) -> None:
    seq = write(tmp_path / "s.txt", LINES)
    bad = write(tmp_path / "a.json", '{"10": [1],\n "11": [2,]}')
    with pytest.raises(MirecDataError, match=r"a\.json:2: not valid JSON"):
        load_sequences(seq, bad)
    wrong = write(tmp_path / "w.json", '{"10": [1], "11": {"x": 1}}')
    with pytest.raises(MirecDataError, match=r"w\.json: item '11': expected a list"):
        load_sequences(seq, wrong)
    assert load_sequences(seq, wrong, on_bad_rows="skip").source["attributes_skipped"] == 1
    with pytest.raises(MirecDataError, match="nothing.txt: file not found"):
        load_sequences(tmp_path / "nothing.txt")
    with pytest.raises(MirecConfigError, match="--format: expected one of lines, pairs"):
        load_sequences(seq, format="csv")


# ---- the real data sets, read-only, when present ------------------------------------------

SHARED = Path(os.environ.get("MIREC_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} absent (set MIREC_SHARED_DATA to the shared data folder)")
    return path


def counts(out: Path) -> dict[str, int]:
    return json.loads((out / "meta.json").read_text())["counts"]["after_k_core"]


def test_amazon_beauty(tmp_path: Path) -> None:
    d = shared("amazon-beauty")
    raw = load_sequences(d / "Beauty.txt", d / "Beauty_item2attributes.json")
    out = build_dataset(raw, tmp_path / "beauty")
    assert counts(out) == {"events": 198_502, "users": 22_363, "items": 12_101}
    items = pl.read_parquet(out / "items.parquet")
    assert items.filter(pl.col("categories").list.len() == 0).height == 0


def test_ml_1m_half(tmp_path: Path) -> None:
    from mirec.data.movielens import load_movielens

    out = build_dataset(load_movielens(shared("ml-1m-half")), tmp_path / "ml")
    assert counts(out)["users"] == 2_998
    titles = pl.read_parquet(out / "items.parquet")["title"].to_list()
    assert "Misérables, Les (1995)" in titles


def test_non_utf8_bytes_are_named_and_skipped_rows_counted(tmp_path: Path) -> None:
    seq = tmp_path / "s.txt"
    seq.write_bytes(b"1 10 11\n2 \xff\xfe 3\n3 12 13\n")
    with pytest.raises(MirecDataError, match=r"s\.txt:2: not UTF-8"):
        load_sequences(seq)
    assert load_sequences(seq, on_bad_rows="skip").bad_rows_skipped == 1
    attrs = tmp_path / "a.json"
    attrs.write_bytes(b'{"10": ["\xff"]}')
    with pytest.raises(MirecDataError, match=r"a\.json:1: not UTF-8"):
        load_sequences(seq, attributes=attrs, on_bad_rows="skip")
    with pytest.raises(MirecDataError, match="cannot read"):
        load_sequences(seq, attributes=tmp_path, on_bad_rows="skip")
