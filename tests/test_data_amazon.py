"""Amazon loader: ratings-only CSV (item first) and 2014 / 2018 metadata lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mirec.data.amazon import load_amazon
from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, build_dataset
from mirec.errors import MirecDataError

# item,user,rating,timestamp -- in file order
RATINGS = [
    ("B0002", "A2", 4.0, 300),
    ("0000013714", "A1", 5.0, 200),
    ("B0001", "A1", 3.0, 100),
    ("B0002", "A1", 1.0, 150),
    ("B0001", "A3", 2.0, 50),
]

META_2014 = [  # Python dict literals, as in the 2014 release
    {"asin": "0000013714", "title": "Bob's Classics",
     "categories": [["Books", "Literature & Fiction", "Classics"], ["Books", "Other"]]},
    {"asin": "B0001", "categories": [["Movies & TV", "Drama"]]},
    {"asin": "B0009", "title": "Never rated", "categories": [["Toys"]]},
    {"asin": "B0002", "title": "No category", "categories": [[]]},
]

META_2018 = [  # strict JSON, flat category list
    {"asin": "B0001", "title": "Film", "category": ["Movies & TV", "Genre", "Drama"]},
    {"asin": "0000013714", "title": "Book", "category": ["Books", "Classics"]},
    {"asin": "B0002", "title": "Thing", "category": []},
    {"asin": "B0001", "title": "Duplicate", "category": ["Ignored"]},
]


def write_ratings(path: Path, rows: list[tuple] | list[str]) -> Path:
    lines = [r if isinstance(r, str) else ",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_meta(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_ratings_and_2014_meta_gz(tmp_path: Path) -> None:
    ratings = write_ratings(tmp_path / "ratings_Books.csv", RATINGS)
    meta = write_meta(tmp_path / "meta_Books.json.gz", [repr(m) for m in META_2014])
    raw = load_amazon(ratings, meta)
    assert raw.events.columns == ["user", "item", "ts", "rating"]
    assert raw.events["item"].to_list() == [r[0] for r in RATINGS]  # file order, raw asins
    assert raw.items is not None and "B0009" not in raw.items["item"].to_list()

    ds = load_dataset(build_dataset(raw, tmp_path / "ds", PrepareConfig(k_core=1)))
    # dense ids in sorted raw-id order: items 1..N, users 0..U-1
    assert ds.items["raw_id"].to_list() == ["0000013714", "B0001", "B0002"]
    assert ds.items["item"].to_list() == [1, 2, 3]
    assert ds.users["raw_id"].to_list() == ["A1", "A2", "A3"]
    # sorted by user, then time
    assert ds.user.tolist() == [0, 0, 0, 1, 2]
    assert ds.ts.tolist() == [100, 150, 200, 300, 50]
    assert ds.item.tolist() == [2, 3, 1, 3, 2]
    assert ds.rating is not None and ds.rating.tolist() == [3.0, 1.0, 5.0, 4.0, 2.0]
    # one category: last element of the first path
    assert ds.items["categories"].to_list() == [["Classics"], ["Drama"], []]
    assert ds.items["title"].to_list() == ["Bob's Classics", None, "No category"]
    assert raw.source["meta_lines_skipped"] == 0


def test_2018_meta_json(tmp_path: Path) -> None:
    ratings = write_ratings(tmp_path / "Books.csv", RATINGS)
    meta = write_meta(tmp_path / "meta_Books.json", [json.dumps(m) for m in META_2018])
    ds = load_dataset(build_dataset(load_amazon(ratings, meta), tmp_path / "ds",
                                    PrepareConfig(k_core=1)))
    assert ds.items["categories"].to_list() == [["Classics"], ["Drama"], []]
    assert ds.items["title"].to_list() == ["Book", "Film", "Thing"]  # first record per asin


def test_numeric_asins_keep_leading_zeros(tmp_path: Path) -> None:
    ratings = write_ratings(tmp_path / "r.csv", ["0000013714,A1,5.0,1", "1234567890,A1,4.0,2"])
    meta = write_meta(tmp_path / "m.json", [repr({"asin": "0000013714", "title": "Zero"})])
    ds = load_dataset(build_dataset(load_amazon(ratings, meta), tmp_path / "ds",
                                    PrepareConfig(k_core=1)))
    assert ds.items["raw_id"].to_list() == ["0000013714", "1234567890"]
    assert ds.items["title"].to_list() == ["Zero", None]


def test_no_meta(tmp_path: Path) -> None:
    raw = load_amazon(write_ratings(tmp_path / "r.csv", RATINGS))
    assert raw.items is None and raw.source["name"] == "amazon"


@pytest.mark.parametrize(
    ("bad_line", "pattern"),
    [
        ("B0001,A9,5.0,yesterday", r"r\.csv:3: column 'timestamp': cannot read 'yesterday'"),
        ("B0001,A9,5.0", r"r\.csv:3: column 'timestamp': missing value"),
        ("B0001,A9,five,7", r"r\.csv:3: column 'rating': cannot read 'five'"),
    ],
)
def test_bad_rating_rows(tmp_path: Path, bad_line: str, pattern: str) -> None:
    rows = ["B0002,A2,4.0,300", "B0001,A1,3.0,100", bad_line, "B0002,A1,1.0,150"]
    ratings = write_ratings(tmp_path / "r.csv", rows)
    with pytest.raises(MirecDataError, match=pattern):
        load_amazon(ratings)
    raw = load_amazon(ratings, on_bad_rows="skip")
    assert raw.bad_rows_skipped == 1 and raw.events.height == 3
    out = build_dataset(raw, tmp_path / "ds", PrepareConfig(k_core=1))
    assert load_dataset(out).meta["counts"]["bad_rows_skipped"] == 1


def test_bad_meta_line(tmp_path: Path) -> None:
    ratings = write_ratings(tmp_path / "r.csv", RATINGS)
    lines = [repr(META_2014[0]), "{'asin': 'B0001', 'title': 'Broken", repr(META_2014[3])]
    meta = write_meta(tmp_path / "meta.json.gz", lines)
    with pytest.raises(MirecDataError, match=r"meta\.json\.gz:2: not a JSON object"):
        load_amazon(ratings, meta)
    raw = load_amazon(ratings, meta, on_bad_rows="skip")
    assert raw.source["meta_lines_skipped"] == 1
    assert raw.items is not None and raw.items["item"].to_list() == ["0000013714", "B0002"]


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"title": "no asin"}', r"m\.json:2: field 'asin': missing"),
        ('{"asin": "B0001", "categories": "Books"}', r"m\.json:2: field 'categories': expected"),
        ('{"asin": "B0001", "category": "Books"}', r"m\.json:2: field 'category': expected"),
        ('["B0001"]', r"m\.json:2: expected an object"),
    ],
)
def test_bad_meta_fields(tmp_path: Path, line: str, pattern: str) -> None:
    ratings = write_ratings(tmp_path / "r.csv", RATINGS)
    meta = write_meta(tmp_path / "m.json", [json.dumps(META_2018[1]), line])
    with pytest.raises(MirecDataError, match=pattern):
        load_amazon(ratings, meta)


def test_unrated_meta_lines_are_not_parsed(tmp_path: Path) -> None:
    # a broken record of an item nobody rated is passed over (the metadata is only streamed)
    ratings = write_ratings(tmp_path / "r.csv", RATINGS)
    meta = write_meta(tmp_path / "m.json", ["{'asin': 'Z999', 'title': 'Bro", repr(META_2014[1])])
    raw = load_amazon(ratings, meta)
    assert raw.items is not None and raw.items["item"].to_list() == ["B0001"]


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(MirecDataError, match=r"nope\.csv: file not found"):
        load_amazon(tmp_path / "nope.csv")
    ratings = write_ratings(tmp_path / "r.csv", RATINGS)
    with pytest.raises(MirecDataError, match=r"meta\.json: file not found"):
        load_amazon(ratings, tmp_path / "meta.json")
