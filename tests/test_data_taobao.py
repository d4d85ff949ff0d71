"""Taobao loader: UserBehavior.csv with a behaviour filter and per-event categories."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, build_dataset
from mirec.data.taobao import load_taobao
from mirec.errors import MirecDataError
from tests.conftest import write_lines as write

# user,item,category,behavior,timestamp -- in file order
ROWS = [
    "2,30,7,pv,1511544070",
    "1,20,5,pv,1511544080",
    "1,10,5,buy,1511544000",
    "1,10,5,pv,1511543000",
    "2,20,6,pv,1511540000",
    "1,20,5,cart,1511545000",
    "2,20,5,fav,1511546000",
]



def test_page_views(tmp_path: Path) -> None:
    raw = load_taobao(write(tmp_path / "UserBehavior.csv", ROWS))
    assert raw.filters == {"behaviors": ["pv"]}
    assert raw.events.columns == ["user", "item", "ts", "category"]
    assert raw.events["item"].to_list() == [30, 20, 10, 20]  # file order, pv only

    ds = load_dataset(build_dataset(raw, tmp_path / "ds", PrepareConfig(k_core=1)))
    assert ds.meta["filters"]["behaviors"] == ["pv"]
    assert ds.items["raw_id"].to_list() == ["10", "20", "30"]
    assert ds.users["raw_id"].to_list() == ["1", "2"]
    assert ds.user.tolist() == [0, 0, 1, 1]
    assert ds.ts.tolist() == [1511543000, 1511544080, 1511540000, 1511544070]
    assert ds.item.tolist() == [1, 2, 2, 3]
    # item 20 seen with categories 5 and 6 once each: the mode's smallest wins
    assert ds.items["categories"].to_list() == [["5"], ["5"], ["7"]]


def test_several_behaviors(tmp_path: Path) -> None:
    path = write(tmp_path / "UserBehavior.csv", ROWS)
    raw = load_taobao(path, behaviors=("buy", "cart", "buy"))
    assert raw.filters == {"behaviors": ["buy", "cart"]}
    assert raw.events["item"].to_list() == [10, 20]
    assert load_taobao(path, behaviors="pv,fav").events.height == 5


def test_unknown_behavior(tmp_path: Path) -> None:
    path = write(tmp_path / "UserBehavior.csv", ROWS)
    with pytest.raises(MirecDataError, match=r"unknown behavior 'click'.*pv, buy, cart, fav"):
        load_taobao(path, behaviors=("pv", "click"))
    with pytest.raises(MirecDataError, match="none given"):
        load_taobao(path, behaviors=())


def test_no_events_after_filter(tmp_path: Path) -> None:
    raw = load_taobao(write(tmp_path / "UserBehavior.csv", [r for r in ROWS if ",buy," not in r]),
                      behaviors=("buy",))
    assert raw.events.height == 0
    with pytest.raises(MirecDataError, match="no events"):
        build_dataset(raw, tmp_path / "ds", PrepareConfig(k_core=1))


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ("3,40,8,pv,noon", r"UserBehavior\.csv:4: column 'timestamp': cannot read 'noon'"),
        ("3,40,8,pv", r"UserBehavior\.csv:4: column 'timestamp': missing value"),
        ("3,,8,pv,1511544070", r"UserBehavior\.csv:4: column 'item': missing value"),
        ("3,40,,pv,1511544070", r"UserBehavior\.csv:4: column 'category': missing value"),
    ],
)
def test_bad_rows(tmp_path: Path, bad: str, pattern: str) -> None:
    # line 3 is a buy: the kept-row index (2) differs from the line (4)
    path = write(tmp_path / "UserBehavior.csv", ROWS[:3] + [bad] + ROWS[3:])
    with pytest.raises(MirecDataError, match=pattern):
        load_taobao(path)
    raw = load_taobao(path, on_bad_rows="skip")
    assert raw.bad_rows_skipped == 1 and raw.events.height == 4


def test_bad_row_of_other_behavior_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "UserBehavior.csv", ROWS + ["3,40,8,buy,noon"])
    assert load_taobao(path).bad_rows_skipped == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MirecDataError, match=r"UserBehavior\.csv: file not found"):
        load_taobao(tmp_path / "UserBehavior.csv")
