"""RecBole atomic files loader, on small files in RecBole's format."""

import json
import re
from pathlib import Path

import pytest

from mirec.data.atomic import load_recbole
from mirec.errors import MirecDataError
from tests.conftest import prepare_small as prepare
from tests.conftest import sequences

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t302\t3\t891717742\n"
    "196\t302\t4.5\t881250949.9\n"  # tie with the first row on user 196: file order kept
    "186\t242\t1\t891717000\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n"
    "302\tL.A. Confidential\t1997\tCrime Film-Noir  Mystery Thriller\n"
)
USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "196\t49\tM\twriter\t55105\n"
    "186\t39\tF\texecutive\t00000\n"
)


def write_set(d: Path, inter: str = INTER, item: str | None = ITEM,
              user: str | None = USER) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{d.name}.inter").write_text(inter)
    if item is not None:
        (d / f"{d.name}.item").write_text(item)
    if user is not None:
        (d / f"{d.name}.user").write_text(user)
    return d




def test_full_set(tmp_path):
    d = write_set(tmp_path / "ml-toy")
    raw = load_recbole(d)
    assert raw.source == {"name": "recbole", "dataset": "ml-toy", "path": str(d)}
    ds = prepare(raw, tmp_path)
    assert sequences(ds) == {
        "186": [("242", 891717000, 1.0), ("302", 891717742, 3.0)],
        "196": [("242", 881250949, 3.0), ("302", 881250949, 4.5)],  # float ts floored
    }
    assert ds.items.select("raw_id", "title", "categories").rows() == [
        ("242", "Kolya", ["Comedy"]),
        ("302", "L.A. Confidential", ["Crime", "Film-Noir", "Mystery", "Thriller"]),
    ]
    assert ds.users.to_dicts() == [
        {"user": 0, "raw_id": "186", "age": "39", "gender": "F", "occupation": "executive",
         "zip_code": "00000"},
        {"user": 1, "raw_id": "196", "age": "49", "gender": "M", "occupation": "writer",
         "zip_code": "55105"},
    ]


def test_inter_file_path_string_ids_and_no_side_files(tmp_path):
    inter = ("session:token\tuser_id:token\titem_id:token\ttimestamp:float\n"
             "s1\tu2\tB7\t20\ns1\tu1\tA1\t10\ns2\tu1\tB7\t5\n")
    d = write_set(tmp_path / "shop", inter=inter, item=None, user=None)
    raw = load_recbole(d / "shop.inter")
    assert "rating" not in raw.events.columns and raw.items is None and raw.users is None
    ds = prepare(raw, tmp_path)
    assert ds.rating is None
    assert ds.users["raw_id"].to_list() == ["u1", "u2"]
    assert ds.items["raw_id"].to_list() == ["A1", "B7"]
    assert ds.item.tolist() == [2, 1, 2] and ds.ts.tolist() == [5, 10, 20]
    assert ds.items["title"].to_list() == [None, None]
    assert ds.items["categories"].to_list() == [[], []]


def test_title_and_single_token_category(tmp_path):
    item = "item_id:token\ttitle:token_seq\tgenre:token\n242\tKolya\tWorld Cinema\n302\tX\t\n"
    ds = prepare(load_recbole(write_set(tmp_path / "s", item=item)), tmp_path)
    assert ds.items.select("title", "categories").rows() == [
        ("Kolya", ["World Cinema"]), ("X", [])]


def test_finding_the_inter_file(tmp_path):
    with pytest.raises(MirecDataError, match="no RecBole .inter file"):
        load_recbole(tmp_path)
    (tmp_path / "a.inter").write_text(INTER)
    assert load_recbole(tmp_path).source["dataset"] == "a"  # the only one
    (tmp_path / "b.inter").write_text(INTER)
    with pytest.raises(MirecDataError, match=r"several \.inter files \(a\.inter, b\.inter\)"):
        load_recbole(tmp_path)
    with pytest.raises(MirecDataError, match="expected a RecBole .inter file"):
        load_recbole(write_set(tmp_path / "c") / "c.item")
    with pytest.raises(MirecDataError, match="no such file or directory"):
        load_recbole(tmp_path / "nowhere")


@pytest.mark.parametrize("inter, where", [
    ("user_id:token\titem_id:token\trating\ttimestamp:float\n1\t2\t3\t4\n",
     "x.inter:1: header field 'rating' has no ':type'"),
    ("user_id:token\titem_id:token\ttimestamp:date\n1\t2\t4\n",
     "x.inter:1: header field 'timestamp:date': unknown type 'date'"),
    ("user_id:token\titem_id:token\trating:float\n1\t2\t3\n",
     "x.inter:1: no 'timestamp' field; mirec orders sequences by time"),
    ("", "x.inter:1: empty header"),
    (INTER + "196\t242\t3\tsoon\n",
     "x.inter:6: column 'timestamp:float': cannot read 'soon' as time"),
    (INTER.replace("186\t302\t3\t891717742", "186\t302\t3"),
     "x.inter:3: column 'timestamp:float': missing value"),
    (INTER.replace("\t4.5\t", "\tfour\t"), "x.inter:4: column 'rating:float': cannot read 'four'"),
])
def test_bad_inter(tmp_path, inter, where):
    with pytest.raises(MirecDataError, match=re.escape(where)):
        load_recbole(write_set(tmp_path / "x", inter=inter))


def test_bad_item_and_user_files(tmp_path):
    with pytest.raises(MirecDataError, match=re.escape("y.item:1: header field 'class'")):
        load_recbole(write_set(tmp_path / "y", item="item_id:token\tclass\n242\tDrama\n"))
    with pytest.raises(MirecDataError, match=re.escape("z.user:1: no 'user_id' field")):
        load_recbole(write_set(tmp_path / "z", user="id:token\tage:token\n196\t49\n"))
    with pytest.raises(MirecDataError, match=re.escape("w.item:3: column 'item_id:token': "
                                                       "missing value")):
        load_recbole(write_set(tmp_path / "w", item=ITEM.replace("302\t", "\t")))


def test_skip_bad_rows(tmp_path):
    inter = INTER + "196\t242\t3\tsoon\n\t242\t3\t5\n"
    raw = load_recbole(write_set(tmp_path / "s", inter=inter, item=ITEM + "\tNo id\t1999\tX\n"),
                       on_bad_rows="skip")
    assert raw.bad_rows_skipped == 2
    assert raw.source["bad_metadata_rows_skipped"] == 1
    ds = prepare(raw, tmp_path)
    assert len(ds.item) == 4
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["counts"]["bad_rows_skipped"] == 2
    assert meta["counts"]["raw_events"] == 6
