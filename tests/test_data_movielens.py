"""MovieLens loader: each layout (100K, 1M, 10M, 20M+) on small files in the real format."""

import json
import re
from pathlib import Path

import pytest

from mirec.data.dataset import Dataset
from mirec.data.movielens import load_movielens
from mirec.errors import MirecDataError
from tests.conftest import prepare_small as prepare
from tests.conftest import sequences


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path




def item_row(ds: Dataset, raw_id: str) -> dict:
    return ds.items.filter(ds.items["raw_id"] == raw_id).row(0, named=True)


def flags(*genres: str) -> str:
    order = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
             "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
             "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    return "|".join("1" if g in genres else "0" for g in order)


def ml100k(d: Path, data: str | None = None, item: str | None = None) -> Path:
    # user 2: ts 100 (item 30), 50 (item 10), 100 (item 20) -> order 10, 30, 20 (tie in file order)
    write(d / "u.data", data or "2\t30\t4\t100\n1\t10\t5\t300\n2\t10\t3\t50\n"
                                "2\t20\t1\t100\n1\t20\t2\t200\n")
    write(d / "u.item", item or (
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags('Animation', 'Comedy')}\n"
        f"20|Misérables, Les (1995)|01-Jan-1995||http://y|{flags('Drama', 'Musical')}\n"
        f"30|unknown||||{flags('unknown')}\n"
    ), encoding="latin-1")
    write(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    return d


def test_ml100k(tmp_path):
    raw = load_movielens(ml100k(tmp_path / "ml-100k"))
    assert raw.source == {"name": "movielens", "variant": "ml-100k",
                          "path": str(tmp_path / "ml-100k")}
    ds = prepare(raw, tmp_path)
    assert sequences(ds) == {
        "1": [("20", 200, 2.0), ("10", 300, 5.0)],
        "2": [("10", 50, 3.0), ("30", 100, 4.0), ("20", 100, 1.0)],
    }
    assert ds.items["raw_id"].to_list() == ["10", "20", "30"]
    assert item_row(ds, "10")["categories"] == ["Animation", "Comedy"]
    assert item_row(ds, "20")["title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert item_row(ds, "20")["categories"] == ["Drama", "Musical"]
    assert item_row(ds, "30")["categories"] == []  # "unknown" genre -> none
    users = ds.users.to_dicts()
    assert users[0] == {"user": 0, "raw_id": "1", "age": 24, "gender": "M",
                        "occupation": "technician", "zip_code": "85711"}
    assert users[1]["zip_code"] == "T8H1N"


def test_ml1m(tmp_path):
    d = tmp_path / "ml-1m"
    write(d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n"
                             "2::1193::4::978298413\n1::914::3::978300760\n")
    write(d / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                            "661::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
                            "914::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n",
          encoding="latin-1")
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    raw = load_movielens(d)
    assert raw.source["variant"] == "ml-1m"
    ds = prepare(raw, tmp_path)
    assert sequences(ds) == {
        "1": [("1193", 978300760, 5.0), ("914", 978300760, 3.0), ("661", 978302109, 3.0)],
        "2": [("1193", 978298413, 4.0)],
    }
    assert item_row(ds, "661")["title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert item_row(ds, "661")["categories"] == ["Action", "Sci-Fi"]
    assert item_row(ds, "914")["title"] == "Cité des enfants perdus, La (1995)"
    assert ds.users.to_dicts()[1] == {"user": 1, "raw_id": "2", "age": 56, "gender": "M",
                                      "occupation": "16", "zip_code": "70072"}


def test_ml10m_half_stars_no_users(tmp_path):
    d = tmp_path / "ml-10M100K"
    write(d / "ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n")
    write(d / "movies.dat", "122::Boomerang (1992)::Comedy|Romance\n"
                            "185::Net, The (1995)::(no genres listed)\n")
    raw = load_movielens(d)
    assert raw.source["variant"] == "ml-10m" and raw.users is None
    ds = prepare(raw, tmp_path)
    assert sequences(ds) == {"1": [("185", 838983525, 4.5), ("122", 838985046, 5.0)]}
    assert item_row(ds, "185")["categories"] == []
    assert ds.users.columns == ["user", "raw_id"]


def test_ml25m_csv(tmp_path):
    d = tmp_path / "ml-25m"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n"
                             "1,296,5.0,1147880044\n1,306,3.5,1147868817\n2,296,4.0,1147868828\n")
    write(d / "movies.csv", "movieId,title,genres\n"
                            '296,"Pulp Fiction, The Movie (1994)",Comedy|Crime|Drama|Thriller\n'
                            "306,Three Colors: Red (1994),(no genres listed)\n")
    raw = load_movielens(d)
    assert raw.source["variant"] == "ml-25m"
    ds = prepare(raw, tmp_path)
    assert sequences(ds) == {"1": [("306", 1147868817, 3.5), ("296", 1147880044, 5.0)],
                             "2": [("296", 1147868828, 4.0)]}
    assert item_row(ds, "296")["title"] == "Pulp Fiction, The Movie (1994)"
    assert item_row(ds, "296")["categories"] == ["Comedy", "Crime", "Drama", "Thriller"]
    assert item_row(ds, "306")["categories"] == []


def test_csv_layout_in_unnamed_directory(tmp_path):
    d = tmp_path / "ratings"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.0,4\n")
    write(d / "movies.csv", "movieId,title,genres\n2,X (2000),Drama\n")
    assert load_movielens(d).source["variant"] == "ml-csv"


def test_missing_files(tmp_path):
    with pytest.raises(MirecDataError, match="not a MovieLens directory: expected u.data"):
        load_movielens(tmp_path)
    with pytest.raises(MirecDataError, match="not a directory"):
        load_movielens(write(tmp_path / "u.data", "1\t2\t3\t4\n"))
    with pytest.raises(MirecDataError, match=r"ml-100k directory lacks u\.item, u\.user"):
        load_movielens(tmp_path)
    write(tmp_path / "x" / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(MirecDataError, match=re.escape(f"{tmp_path / 'x'}: ml-csv directory "
                                                       f"lacks movies.csv")):
        load_movielens(tmp_path / "x")


@pytest.mark.parametrize("data, where", [
    ("1\t10\t5\t300\n2\t10\t3\tsoon\n", "u.data:2: column 'timestamp': cannot read 'soon'"),
    ("1\t10\t5\n2\t10\t3\t50\n", "u.data:1: column 'timestamp': missing value"),
    ("1\t10\t5\t300\n2\tx\t3\t50\n\n",
     "u.data:2: column 'item': cannot read 'x' as int"),
    # a blank line carries no event and is passed over; line numbers still count it
    ("1\t10\t5\t300\n\n2\t10\t3\tsoon\n", "u.data:3: column 'timestamp': cannot read"),
    ("1\t10\t5\t300\n2\t10\tgood\t50\n", "u.data:2: column 'rating': cannot read 'good'"),
])
def test_ml100k_bad_rows(tmp_path, data, where):
    with pytest.raises(MirecDataError, match=re.escape(where)):
        load_movielens(ml100k(tmp_path, data=data))


def test_bad_genre_flag_and_bad_dat_rows(tmp_path):
    item = f"10|A (1995)|||x|{flags('Drama')}\n20|B (1995)|||x|0|yes|{flags()[4:]}\n"
    with pytest.raises(MirecDataError, match=re.escape("u.item:2: column 'Action': cannot read "
                                                       "'yes' as int")):
        load_movielens(ml100k(tmp_path / "a", item=item))
    d = tmp_path / "b"
    write(d / "ratings.dat", "1::10::5::978300760\n1::20::3\n")
    write(d / "movies.dat", "10::A (1995)::Drama\n")
    with pytest.raises(MirecDataError, match=re.escape("ratings.dat:2: column 'timestamp': "
                                                       "missing value")):
        load_movielens(d)
    write(d / "ratings.dat", "1::10::5::978300760\n")
    write(d / "movies.dat", "10::A (1995)::Drama\n\nten::B (1995)::Drama\n")
    with pytest.raises(MirecDataError, match=re.escape("movies.dat:3: column 'MovieID': "
                                                       "cannot read 'ten'")):
        load_movielens(d)


def test_csv_bad_header(tmp_path):
    d = tmp_path / "ml-20m"
    write(d / "ratings.csv", "user,movieId,rating,timestamp\n1,2,3.0,4\n")
    write(d / "movies.csv", "movieId,title,genres\n2,X (2000),Drama\n")
    with pytest.raises(MirecDataError, match=r"ratings\.csv:1: no column 'userId'"):
        load_movielens(d)


def test_skip_bad_rows(tmp_path):
    d = tmp_path / "ml-1m"
    write(d / "ratings.dat", "1::10::5::978300760\n1::20::3\n2::10::4::later\n"
                             "2::20::2::978300761\n")
    write(d / "movies.dat", "10::A (1995)::Drama\n20::B (1995)::Comedy\nbad::C::Drama\n")
    write(d / "users.dat", "1::F::1::10::48067\n2::M::old::16::70072\n")
    raw = load_movielens(d, on_bad_rows="skip")
    assert raw.bad_rows_skipped == 2
    assert raw.source["bad_metadata_rows_skipped"] == 2
    ds = prepare(raw, tmp_path)
    assert sequences(ds) == {"1": [("10", 978300760, 5.0)], "2": [("20", 978300761, 2.0)]}
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["counts"]["bad_rows_skipped"] == 2
    assert meta["counts"]["raw_events"] == 4
    assert ds.users["age"].to_list() == [1, None]  # user 2's profile row was dropped
