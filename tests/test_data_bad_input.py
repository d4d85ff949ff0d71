"""Bad input is named: every broken raw file is a MirecDataError naming the file and the line,
never a traceback; and a hypothesis fuzz test keeps it so for generated CSV and JSON lines."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirec.data.prepare import PrepareConfig, build_dataset
from mirec.data.tabular import load_table
from mirec.errors import MirecDataError

HEADER = b"user_id,item_id,timestamp\n"
CASES = {  # file bytes -> (line, what the message says)
    "empty": (b"", 1, "empty file"),
    "header only": (HEADER, 2, "no events"),
    "latin-1": (HEADER + b"u1,i1,10\nu1,caf\xe9,11\n", 3, "not UTF-8 (byte 0xe9"),
    "unterminated quote": (HEADER + b'u1,i1,10\nu1,"i2,11\nu2,i3,12\n', 3, "never closed"),
    "extra field": (HEADER + b"u1,i1,10\nu1,i2,11,oops\n", 3, "4 fields, the header has 3"),
    "NUL in an id": (HEADER + b"u1,i1,10\nu1,i\x002,11\n", 3, "NUL character inside the id"),
    "negative time": (HEADER + b"u1,i1,10\nu1,i2,-5\n", 3, "negative time -5"),
    "milliseconds": (HEADER + b"u1,i1,1600000000000\n", 2, "milliseconds?"),
    "long id": (HEADER + b"u1,i1,10\nu1," + b"x" * 5000 + b",11\n", 3, "id of 5,000 characters"),
    "missing column": (b"user_id,item,timestamp\nu1,i1,10\n", 1, "no column 'item_id'"),
}


def read(path, fmt="csv"):
    return load_table(path, fmt, user_col="user_id", item_col="item_id", time_col="timestamp")


@pytest.mark.parametrize("case", CASES)
def test_bad_csv_is_named_by_file_and_line(tmp_path, case):
    data, line, says = CASES[case]
    path = tmp_path / "log.csv"
    path.write_bytes(data)
    with pytest.raises(MirecDataError) as e:
        read(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: ") and says in msg, msg
    assert len(msg) < 400 and "\n" not in msg


def test_skip_drops_out_of_range_rows(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(HEADER + b"u1,i1,10\nu1,i2,-5\nu1,i\x003,12\nu1,i4,1600000000000\nu1,i5,13\n")
    raw = load_table(path, "csv", "user_id", "item_id", "timestamp", on_bad_rows="skip")
    assert raw.events["item"].to_list() == ["i1", "i5"] and raw.bad_rows_skipped == 3


def test_a_huge_header_is_cut_in_the_message(tmp_path):
    """A 5 MB header line (no such column): the message shows 80 characters of it."""
    path = tmp_path / "log.csv"
    path.write_text(",".join(f"column{i}" for i in range(600_000))[:5_000_000] + "\n1,2,3\n")
    with pytest.raises(MirecDataError, match=r":1: a header line over 1 MiB") as e:
        read(path)
    assert len(str(e.value)) < 300


def test_a_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"user_id": "u1", "item_id": "i1", "timestamp": 10}\n'
                     b'{"user_id": "u1", "item_id": "i\xff", "timestamp": 11}\n')
    with pytest.raises(MirecDataError, match=r"log\.jsonl:2: not UTF-8"):
        read(path, "jsonl")
    path.write_bytes(b'{"user_id": "u1", "item_id": "i1", "timestamp": -3}\n')
    with pytest.raises(MirecDataError, match=r"log\.jsonl:1: column 'timestamp': negative time"):
        read(path, "jsonl")


# ------------------------------------------------------------------------------- fuzzing

FIELD = st.one_of(
    st.sampled_from(["u1", "u2", "i1", "i2", "10", "11", "-5", "1600000000000", "2020-01-01T00:00:00",
                     "", " ", '"', '"a,b"', "\x00", "1e3", "nan", "007"]),
    st.text(max_size=6),
)
GOOD_ROW = st.builds(lambda u, i, t: f"u{u},i{i},{t}", st.integers(0, 3), st.integers(0, 5),
                    st.integers(0, 10**6))
ROW = st.one_of(GOOD_ROW, st.lists(FIELD, min_size=0, max_size=5).map(lambda r: ",".join(r)))
GOOD_RECORD = st.builds(lambda u, i, t: {"user_id": u, "item_id": f"i{i}", "timestamp": t},
                        st.integers(0, 3), st.integers(0, 5), st.integers(0, 10**6))
CSV = st.builds(lambda rows, junk: (HEADER.decode() + "\n".join(rows)).encode() + junk,
                st.lists(ROW, max_size=6), st.sampled_from([b"", b"\n", b"", b"\xe9", b"\xff\xfe", b'"']))
JSON_VALUE = st.one_of(st.integers(-10**13, 10**13), st.text(max_size=5), st.none(),
                       st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))
RECORD = st.fixed_dictionaries({}, optional={"user_id": JSON_VALUE, "item_id": JSON_VALUE,
                                             "timestamp": JSON_VALUE})
JSONL = st.builds(lambda recs, junk: "\n".join(map(_json, recs)).encode() + junk,
                  st.lists(st.one_of(GOOD_RECORD, RECORD, st.just("{"), st.just("[1]"), st.just("")),
                           max_size=5),
                  st.sampled_from([b"", b"\n", b"", b"\xe9", b"{"]))
TRIED = {"cases": 0, "failures": 0}


def _json(rec) -> str:
    import json

    return rec if isinstance(rec, str) else json.dumps(rec)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(CSV.map(lambda b: ("csv", b)), JSONL.map(lambda b: ("jsonl", b))))
def test_fuzzed_files_load_or_fail_naming_file_and_line(tmp_path, data):
    """Generated CSV / JSON lines bytes: prepared, or a MirecDataError naming file and line; no
    other exception, and no output (or temporary) directory left behind on failure."""
    fmt, content = data
    TRIED["cases"] += 1
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(content)
    out = tmp_path / "out"
    try:
        build_dataset(read(path, fmt), out, PrepareConfig(k_core=1))
    except MirecDataError as e:
        TRIED["failures"] += 1
        assert re.match(rf"{re.escape(str(path))}:\d+: \S", str(e)), str(e)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    if out.exists():
        import shutil

        shutil.rmtree(out)


def test_fuzz_count():
    """Reports how many fuzz cases ran (pytest -s shows it) after the fuzz test above."""
    if TRIED["cases"]:
        print(f"\nloader fuzz: {TRIED['cases']} cases, {TRIED['failures']} named failures")
        assert TRIED["failures"] > 0  # the generator does reach the error paths


def test_other_loaders_name_the_line_polars_cannot_read(tmp_path):
    """The RecBole loader (like MovieLens, Amazon and Taobao) goes through the same reader: a
    non-UTF-8 line or an extra field is named, not a Polars traceback."""
    from mirec.data.atomic import load_recbole

    d = tmp_path / "shop"
    d.mkdir()
    head = b"user_id:token\titem_id:token\ttimestamp:float\n"
    (d / "shop.inter").write_bytes(head + b"u1\ti1\t10\nu1\tcaf\xe9\t11\n")
    with pytest.raises(MirecDataError, match=r"shop\.inter:3: not UTF-8"):
        load_recbole(d)
    (d / "shop.inter").write_bytes(head + b"u1\ti1\t10\nu1\ti2\t11\tx\n")
    with pytest.raises(MirecDataError, match=r"shop\.inter:3: 4 fields, the header has 3"):
        load_recbole(d)


def test_nan_and_infinity_in_json_lines_are_named(tmp_path):
    """Found by the fuzz test at 1,500 examples: Python's json reads them, Polars does not."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"user_id": "u1", "item_id": "i1", "timestamp": 1}\n{"user_id": Infinity}\n')
    with pytest.raises(MirecDataError, match=r"log\.jsonl:2: not valid JSON: Infinity is not JSON"):
        read(path, "jsonl")
