"""Bad input is named: every broken raw file is a MirecDataError naming the file and the line,
never a traceback; and a hypothesis fuzz test keeps it so for generated CSV and JSON lines."""

from __future__ import annotations

import re
from pathlib import Path

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
                     "", " ", '"', '"a,b"', "\x00", "1e3", "nan", "007", '"x\ny"', '"x\r\ny"']),
    st.text(max_size=6),
)
GOOD_ROW = st.builds(lambda u, i, t: f"u{u},i{i},{t}", st.integers(0, 3), st.integers(0, 5),
                    st.integers(0, 10**6))
ROW = st.one_of(GOOD_ROW, st.lists(FIELD, min_size=0, max_size=5).map(lambda r: ",".join(r)))
GOOD_RECORD = st.builds(lambda u, i, t: {"user_id": u, "item_id": f"i{i}", "timestamp": t},
                        st.integers(0, 3), st.integers(0, 5), st.integers(0, 10**6))
BOM = st.sampled_from([b"", b"\xef\xbb\xbf"])  # a UTF-8 byte-order mark, as Excel writes
EOL = st.sampled_from(["\n", "\r\n"])
CSV = st.builds(lambda bom, eol, rows, junk: bom + (HEADER.decode().replace("\n", eol) + eol.join(rows)).encode()
                + junk, BOM, EOL,
                st.lists(ROW, max_size=6), st.sampled_from([b"", b"\n", b"", b"\xe9", b"\xff\xfe", b'"']))
JSON_VALUE = st.one_of(st.integers(-10**13, 10**13), st.text(max_size=5), st.none(),
                       st.floats(allow_nan=True), st.lists(st.integers(), max_size=2), st.booleans(),
                       st.fixed_dictionaries({"a": st.integers()}))
RECORD = st.fixed_dictionaries({}, optional={"user_id": JSON_VALUE, "item_id": JSON_VALUE,
                                             "timestamp": JSON_VALUE})
JSONL = st.builds(lambda bom, eol, recs, junk: bom + eol.join(map(_json, recs)).encode() + junk, BOM, EOL,
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


# ------------------------------------------------- BOM, CRLF, quoted line breaks, JSON ids


def _sources(tmp_path, bom: bytes, eol: bytes) -> dict:
    """Each text source with the same three events (u1 i1 10, u1 i2 11, u2 i1 12), the file
    starting with ``bom`` and its lines ending with ``eol``: name -> loader call."""
    from mirec.data.amazon import load_amazon
    from mirec.data.atomic import load_recbole
    from mirec.data.sequences import load_sequences

    def write(name: str, lines: list[bytes]) -> Path:
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bom + eol.join(lines) + eol)
        return path

    csv = write("log.csv", [b"user_id,item_id,timestamp", b"u1,i1,10", b"u1,i2,11", b"u2,i1,12"])
    jsonl = write("log.jsonl", [b'{"user_id": "u1", "item_id": "i1", "timestamp": 10}',
                                b'{"user_id": "u1", "item_id": "i2", "timestamp": 11}',
                                b'{"user_id": "u2", "item_id": "i1", "timestamp": 12}'])
    seq = write("seq.txt", [b"u1 i1 i2", b"u2 i1"])
    inter = write("shop/shop.inter", [b"user_id:token\titem_id:token\ttimestamp:float",
                                      b"u1\ti1\t10", b"u1\ti2\t11", b"u2\ti1\t12"])
    amazon = write("ratings.csv", [b"i1,u1,5,10", b"i2,u1,4,11", b"i1,u2,3,12"])
    return {"csv": lambda: read(csv), "jsonl": lambda: read(jsonl, "jsonl"),
            "sequences": lambda: load_sequences(seq), "recbole": lambda: load_recbole(inter.parent),
            "amazon": lambda: load_amazon(amazon)}


SOURCES = ("csv", "jsonl", "sequences", "recbole", "amazon")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("bom, eol", [(b"\xef\xbb\xbf", b"\n"), (b"", b"\r\n"), (b"\xef\xbb\xbf", b"\r\n")],
                         ids=["bom", "crlf", "bom+crlf"])
def test_bom_and_crlf_change_no_id(tmp_path, source, bom, eol):
    """A UTF-8 byte-order mark (Excel's CSV, Notepad) and CRLF line ends read as the same events:
    the first column's name and the first id are unchanged (mirec.data.text)."""
    events = _sources(tmp_path, bom, eol)[source]().events
    assert events["user"].cast(str).to_list() == ["u1", "u1", "u2"], events
    assert events["item"].cast(str).to_list() == ["i1", "i2", "i1"], events


@pytest.mark.parametrize("source", ["csv", "amazon"])
def test_a_quoted_line_break_is_one_field_and_later_lines_keep_their_numbers(tmp_path, source):
    """RFC 4180: a quoted field holding a line break (CRLF or LF) is one value of one record;
    a bad row after it is named by its physical line (the line where the record starts)."""
    if source == "csv":
        path = tmp_path / "log.csv"
        path.write_bytes(b'user_id,item_id,timestamp,title\r\nu1,i1,10,"Two\r\nlines"\r\n'
                         b'u1,i2,11,"three\nshort\nlines"\r\nu2,i1,-1,x\r\n')
        load = lambda: load_table(path, "csv", "user_id", "item_id", "timestamp",  # noqa: E731
                                  title_col="title")
        bad_line = 7
    else:
        from mirec.data.amazon import load_amazon

        path = tmp_path / "ratings.csv"
        path.write_bytes(b'"i\n1",u1,5,10\ni2,u1,4,11\ni1,u2,3,-1\n')
        load = lambda: load_amazon(path)  # noqa: E731
        bad_line = 4
    with pytest.raises(MirecDataError, match=rf"{re.escape(str(path))}:{bad_line}: .*negative time"):
        load()
    path.write_bytes(path.read_bytes().replace(b"-1", b"12"))
    raw = load()
    assert raw.events.height == 3
    if source == "csv":
        assert raw.items["title"].to_list()[:2] == ["Two\r\nlines", "three\nshort\nlines"]
    else:
        assert raw.events["item"].to_list()[0] == "i\n1"


@pytest.mark.parametrize("value, kind", [('{"a": 1}', "an object"), ("[1, 2]", "an array"),
                                         ("true", "a boolean"), ("1.5", "a float"), ("2.0", "a float"),
                                         ("1e3", "a float")])
@pytest.mark.parametrize("field", ["user_id", "item_id"])
def test_a_json_id_must_be_a_string_or_an_integer(tmp_path, value, kind, field):
    """JSON lines: an object, array, boolean or float as an id is refused naming file:line and the
    field, never read as its text ("true", "2")."""
    path = tmp_path / "log.jsonl"
    rec = {"user_id": '"u1"', "item_id": '"i1"', "timestamp": "10"}
    lines = [rec, {**rec, "timestamp": "11"}, {**rec, field: value, "timestamp": "12"}]
    path.write_text("".join("{" + ", ".join(f'"{k}": {v}' for k, v in r.items()) + "}\n" for r in lines))
    with pytest.raises(MirecDataError, match=rf"log\.jsonl:3: .*{field}.*{kind}|log\.jsonl:3: column '{field}'"):
        read(path, "jsonl")
    path.write_text(path.read_text().replace(value, '"ok"'))  # a string or an integer is an id
    assert read(path, "jsonl").events.height == 3
