"""The user's own table: CSV with a header, Parquet and JSON lines."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, build_dataset
from mirec.data.tabular import load_table
from mirec.errors import MirecConfigError, MirecDataError
from tests.conftest import write_lines as write

CSV_ROWS = [
    "uid;song;when;genre;name",
    "bob;s2;2021-01-01T00:00:10;Rock;Second",
    "amy;s1;30;Pop| Dance ;First",
    "amy;s2;20;Jazz;Other title",
    "bob;s1;5;;",
]



def prepare(raw, tmp_path: Path):
    return load_dataset(build_dataset(raw, tmp_path / "ds", PrepareConfig(k_core=1)))


def test_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", CSV_ROWS)
    raw = load_table(path, "csv", "uid", "song", "when", category_col="genre",
                     title_col="name", separator=";")
    assert raw.events["user"].to_list() == ["bob", "amy", "amy", "bob"]
    ds = prepare(raw, tmp_path)
    assert ds.users["raw_id"].to_list() == ["amy", "bob"]
    assert ds.items["raw_id"].to_list() == ["s1", "s2"]
    assert ds.user.tolist() == [0, 0, 1, 1]
    assert ds.ts.tolist() == [20, 30, 5, 1609459210]
    assert ds.item.tolist() == [2, 1, 1, 2]
    # first non-empty value per item in file order; '|' separates categories
    assert ds.items["categories"].to_list() == [["Pop", "Dance"], ["Rock"]]
    assert ds.items["title"].to_list() == ["First", "Second"]
    assert ds.meta["source"]["format"] == "csv"


def test_csv_without_item_columns(tmp_path: Path) -> None:
    raw = load_table(write(tmp_path / "log.csv", CSV_ROWS), "csv", "uid", "song", "when",
                     separator=";")
    assert raw.items is None
    assert prepare(raw, tmp_path).items["categories"].to_list() == [[], []]


def test_csv_bad_and_skipped_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", CSV_ROWS[:3] + ["cat;s3;soon;Folk;X"] + CSV_ROWS[3:])
    args = ("csv", "uid", "song", "when")
    with pytest.raises(MirecDataError, match=r"log\.csv:4: column 'when': cannot read 'soon'"):
        load_table(path, *args, separator=";")
    raw = load_table(path, *args, separator=";", on_bad_rows="skip")
    assert raw.bad_rows_skipped == 1 and raw.events.height == 4
    assert prepare(raw, tmp_path).meta["counts"]["bad_rows_skipped"] == 1


def test_csv_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", ["u,i,t", "1,2,3", "1,4"])
    with pytest.raises(MirecDataError, match=r"log\.csv:3: column 't': missing value"):
        load_table(path, "csv", "u", "i", "t")


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", CSV_ROWS)
    with pytest.raises(MirecDataError,
                       match=r"log\.csv:1: no column 'item' \(columns: uid, song, when, genre, name\)"):
        load_table(path, "csv", "uid", "item", "when", separator=";")
    with pytest.raises(MirecDataError, match=r"log\.csv:1: no column 'cat'"):
        load_table(path, "csv", "uid", "song", "when", category_col="cat", separator=";")


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(MirecConfigError, match=r"fmt: expected one of csv, parquet, jsonl"):
        load_table(tmp_path / "x.xlsx", "xlsx", "u", "i", "t")


def parquet_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "user": [7, 3, 7, 3, 3],
        "item": ["b", "a", "a", "c", "b"],
        "time": [datetime(2020, 1, 1, 0, 0, s) for s in (5, 4, 3, 2, 1)],
        "cats": [["x", "y"], ["z"], None, [], ["w"]],
    })


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    parquet_frame().write_parquet(path, row_group_size=2)
    raw = load_table(path, "parquet", "user", "item", "time", category_col="cats")
    assert raw.events["user"].dtype.is_integer()  # Int32: ids that fit are narrowed
    ds = prepare(raw, tmp_path)
    assert ds.users["raw_id"].to_list() == ["3", "7"]
    assert ds.items["raw_id"].to_list() == ["a", "b", "c"]
    base = 1577836800  # 2020-01-01T00:00:00 UTC
    assert ds.ts.tolist() == [base + 1, base + 2, base + 4, base + 3, base + 5]
    assert ds.item.tolist() == [2, 3, 1, 1, 2]
    assert ds.items["categories"].to_list() == [["z"], ["x", "y"], []]


def test_parquet_bad_row_names_row_group(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    df = parquet_frame().with_columns(
        pl.Series("time", ["1", "2", "3", "late", "5"]), pl.Series("user", [7, 3, 7, None, 3])
    )
    df.write_parquet(path, row_group_size=2)
    with pytest.raises(MirecDataError,
                       match=r"log\.parquet: row group 1, row 1 \(row 3 of the file\): "
                             r"column 'user': missing value"):
        load_table(path, "parquet", "user", "item", "time")
    raw = load_table(path, "parquet", "user", "item", "time", on_bad_rows="skip")
    assert raw.bad_rows_skipped == 1 and raw.events["ts"].to_list() == [1, 2, 3, 5]


def test_parquet_not_parquet(tmp_path: Path) -> None:
    path = write(tmp_path / "log.parquet", ["u,i,t"])
    with pytest.raises(MirecDataError, match=r"log\.parquet: not a readable Parquet file"):
        load_table(path, "parquet", "u", "i", "t")
    with pytest.raises(MirecDataError, match=r"gone\.parquet: file not found"):
        load_table(tmp_path / "gone.parquet", "parquet", "u", "i", "t")


JSONL = [
    {"u": 1, "i": 10, "t": 100, "c": "A|B", "n": "Ten"},
    {"u": "u2", "i": 20, "t": "2020-01-01T00:00:00", "c": "C"},
    {"u": 1, "i": 20, "t": 50.9},
]


def test_jsonl(tmp_path: Path) -> None:
    lines = [json.dumps(JSONL[0]), "", json.dumps(JSONL[1]), json.dumps(JSONL[2])]
    path = write(tmp_path / "log.jsonl", lines)
    raw = load_table(path, "jsonl", "u", "i", "t", category_col="c", title_col="n")
    ds = prepare(raw, tmp_path)
    assert ds.users["raw_id"].to_list() == ["1", "u2"]  # mixed ids stay strings
    assert ds.items["raw_id"].to_list() == ["10", "20"]
    assert ds.user.tolist() == [0, 0, 1]
    assert ds.ts.tolist() == [50, 100, 1577836800]
    assert ds.item.tolist() == [2, 1, 2]
    # categories: one string, split on '|'
    assert ds.items["categories"].to_list() == [["A", "B"], ["C"]]
    assert ds.items["title"].to_list() == ["Ten", None]


def test_jsonl_category_lists(tmp_path: Path) -> None:
    rows = [{"u": 1, "i": 1, "t": 1, "c": ["A", "B"]}, {"u": 1, "i": 2, "t": 2, "c": []}]
    path = write(tmp_path / "log.jsonl", [json.dumps(r) for r in rows])
    raw = load_table(path, "jsonl", "u", "i", "t", category_col="c")
    assert prepare(raw, tmp_path).items["categories"].to_list() == [["A", "B"], []]


def test_jsonl_bad_value_names_line(tmp_path: Path) -> None:
    bad = json.dumps({"u": 3, "i": 30, "t": "never"})
    path = write(tmp_path / "log.jsonl", [json.dumps(JSONL[0]), "", bad, json.dumps(JSONL[2])])
    with pytest.raises(MirecDataError, match=r"log\.jsonl:3: column 't': cannot read 'never'"):
        load_table(path, "jsonl", "u", "i", "t")
    assert load_table(path, "jsonl", "u", "i", "t", on_bad_rows="skip").bad_rows_skipped == 1


def test_jsonl_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [json.dumps(JSONL[0]), json.dumps({"u": 2, "i": 1})])
    with pytest.raises(MirecDataError, match=r"log\.jsonl:2: column 't': missing value"):
        load_table(path, "jsonl", "u", "i", "t")


def test_jsonl_malformed_line(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [json.dumps(JSONL[0]), '{"u": 2, "i": 1 "t": 3}'])
    with pytest.raises(MirecDataError, match=r"log\.jsonl:2: not valid JSON"):
        load_table(path, "jsonl", "u", "i", "t")


def test_jsonl_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [json.dumps(JSONL[0])])
    with pytest.raises(MirecDataError, match=r"log\.jsonl:1: no column 'user' \(columns: u, i, t"):
        load_table(path, "jsonl", "user", "i", "t")


def _parts(tmp_path: Path, frames: list[pl.DataFrame]) -> Path:
    """A directory as Spark writes it: part files, ``_SUCCESS``, a hidden checksum file."""
    d = tmp_path / "parts"
    d.mkdir()
    for i, f in enumerate(frames):
        f.write_parquet(d / f"part-{i:05d}-c000.snappy.parquet", row_group_size=3)
    (d / "_SUCCESS").touch()
    (d / ".part-00000-c000.snappy.parquet.crc").write_bytes(b"\x00crc")
    return d


def _log(n: int, seed: int) -> pl.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    return pl.DataFrame({"u": rng.integers(0, 12, n), "i": rng.integers(0, 9, n).astype(str),
                         "t": rng.integers(0, 40, n), "c": rng.integers(0, 3, n).astype(str)})


def test_parquet_directory_prepares_like_the_concatenated_file(tmp_path: Path) -> None:
    """Part files are read in name order as one log: the same data set (ids, order, ties in
    file order, duplicates, categories) as the single file holding their rows."""
    frames = [_log(40, 0), _log(25, 1), _log(33, 2)]
    frames[1] = pl.concat([frames[1], frames[0].head(4)])  # duplicates across parts
    one = tmp_path / "one.parquet"
    pl.concat(frames).write_parquet(one)
    d = _parts(tmp_path, frames)
    raws = [load_table(p, "parquet", "u", "i", "t", category_col="c") for p in (one, d)]
    outs = [build_dataset(r, tmp_path / f"ds{j}", PrepareConfig(k_core=2)) for j, r in enumerate(raws)]
    metas = [json.loads((o / "meta.json").read_text()) for o in outs]
    assert metas[0]["checksums"] == metas[1]["checksums"]
    assert metas[0]["counts"] == metas[1]["counts"]
    assert metas[1]["counts"]["duplicates_dropped"] >= 4
    assert raws[1].source["path"] == str(d)


def test_bad_row_in_a_part_file_is_named_by_file_and_row(tmp_path: Path) -> None:
    good = _log(10, 0)
    bad = _log(10, 1).with_columns(pl.col("t").cast(pl.String))
    bad = bad.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("soon"))
                           .otherwise(pl.col("t")).alias("t"))
    d = tmp_path / "parts"
    d.mkdir()
    good.with_columns(pl.col("t").cast(pl.String)).write_parquet(d / "part-00000.parquet")
    bad.write_parquet(d / "part-00001.parquet", row_group_size=3)
    with pytest.raises(MirecDataError) as e:
        load_table(d, "parquet", "u", "i", "t")
    assert str(e.value).startswith(f"{d / 'part-00001.parquet'}: row group 2, row 1 (row 7 of "
                                   f"the file): column 't': cannot read 'soon' as time")
    raw = load_table(d, "parquet", "u", "i", "t", on_bad_rows="skip")
    assert raw.bad_rows_skipped == 1 and raw.events.height == 19


def test_parquet_directory_without_parts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").touch()
    with pytest.raises(MirecDataError, match="empty: a directory without Parquet part files"):
        load_table(tmp_path / "empty", "parquet", "u", "i", "t")
    d = tmp_path / "broken"
    d.mkdir()
    (d / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(MirecDataError, match="part-00000.parquet: not a readable Parquet file"):
        load_table(d, "parquet", "u", "i", "t")


@pytest.mark.parametrize("odd", ["other type", "missing column", "not parquet", "truncated"])
def test_an_odd_part_among_three_is_named(tmp_path: Path, odd: str) -> None:
    """A directory of three parts, the second odd (another schema, or a corrupt file): the
    message names the second part, not the first."""
    d = tmp_path / "parts"
    d.mkdir()
    for k in range(3):
        _log(10, k).write_parquet(d / f"part-{k:05d}.parquet")
    second = d / "part-00001.parquet"
    if odd == "other type":
        _log(10, 1).with_columns(pl.col("i").cast(pl.Int64)).write_parquet(second)
        says = "column 'i' is int64 here but large_string in part-00000.parquet"
    elif odd == "missing column":
        _log(10, 1).drop("t").write_parquet(second)
        says = "no column 't'"
    elif odd == "not parquet":
        second.write_bytes(b"user,item\n1,2\n")
        says = "not a readable Parquet file"
    else:
        second.write_bytes(second.read_bytes()[:-20])
        says = "not a readable Parquet file"
    with pytest.raises(MirecDataError) as e:
        load_table(d, "parquet", "u", "i", "t")
    assert str(e.value).startswith(f"{second}: ") and says in str(e.value), str(e.value)
