"""`mirec data append`: new events (the serving event store, or a log a source reads) appended
to a prepared data set, its ids kept (mirec/data/append.py, mirec.api.append).

The stores are real: SQLite files written through EventStore, a PostgreSQL server the suite
starts on loopback (skipped with the reason where none can be started), and the HTTP service's
own store after POST /events.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import mirec
from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, RawLog, build_dataset
from mirec.errors import MirecConfigError, MirecDataError
from mirec.serve.recommender import Recommender
from mirec.serve.store import EventStore, open_store
from tests import test_serve as shared
from tests.conftest import make_dataset
from tests.test_guarantees import mirec as cli
from tests.test_guarantees import refused

run, bundle_dir, bundle = shared.run, shared.bundle_dir, shared.bundle


@pytest.fixture
def base(tmp_path) -> Path:
    """Users 1, 2, 3 over items 10, 11, 12 (k-core 1): 5 events."""
    make_dataset(tmp_path / "base", [1, 1, 2, 2, 3], [10, 11, 10, 12, 11], [100, 200, 150, 250, 300],
                 {10: ["a"], 11: ["b"], 12: ["a"]})
    return tmp_path / "base"


def triples(path: Path) -> list[tuple[str, str, int]]:
    """(raw user, raw item, ts) of every event of a data set, in stored order."""
    ds = load_dataset(path)
    users, items = ds.users["raw_id"].to_list(), ds.items["raw_id"].to_list()
    return [(users[u], items[i - 1], int(t)) for u, i, t in zip(ds.user, ds.item, ds.ts)]


def store_with(path: Path, batches: list[tuple[str, list[tuple[str, int]]]]) -> Path:
    s = EventStore(path)
    for user, events in batches:
        s.append(user, events)
    s.close()
    return path


def record(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())["appended"][-1]


# ---- ids, duplicates, order ------------------------------------------------------------------


def test_known_ids_are_kept_and_new_ones_numbered_after_by_first_time(base, tmp_path):
    # arrival order is not time order: user "9" arrives first but its first event is the latest
    ev = store_with(tmp_path / "ev.sqlite", [("9", [("13", 900)]), ("8", [("14", 500), ("10", 510)]),
                                             ("2", [("15", 400)])])
    before = load_dataset(base)
    out = mirec.append(base, ev, tmp_path / "d2")
    after = load_dataset(out)
    U, N = before.num_users, before.num_items
    assert after.users["raw_id"][:U].to_list() == before.users["raw_id"].to_list()
    assert after.items["raw_id"][:N - 1].to_list() == before.items["raw_id"].to_list()
    assert after.items[:N - 1].equals(before.items)  # known items keep their metadata
    assert after.users["raw_id"][U:].to_list() == ["8", "9"]  # by first event time, not arrival
    assert after.items["raw_id"][N - 1:].to_list() == ["15", "14", "13"]  # ts 400, 500, 900
    assert after.items["item"].to_list() == list(range(1, N + 3))
    # every base event is there with the same dense ids
    old = set(zip(before.user.tolist(), before.item.tolist(), before.ts.tolist()))
    assert old <= set(zip(after.user.tolist(), after.item.tolist(), after.ts.tolist()))
    assert len(after.item) == len(before.item) + 4
    assert set(triples(out)) == set(triples(base)) | {("9", "13", 900), ("8", "14", 500), ("8", "10", 510),
                                                      ("2", "15", 400)}


def test_duplicates_of_the_base_and_within_new_are_dropped(base, tmp_path):
    ev = store_with(tmp_path / "ev.sqlite", [("1", [("10", 100), ("12", 120)]),  # (1, 10, 100): a base event
                                             ("1", [("12", 120), ("11", 200)]),  # both repeated
                                             ("4", [("10", 5), ("10", 5), ("10", 6)])])
    out = mirec.append(base, ev, tmp_path / "d2")
    got = triples(out)
    assert len(got) == len(set(got)) == 5 + 3  # (1, 12, 120), (4, 10, 5), (4, 10, 6)
    r = record(out)
    assert (r["events_read"], r["events_added"], r["duplicates_dropped"]) == (7, 3, 4)


def test_each_users_events_stay_in_time_order_older_ones_merged_in(base, tmp_path):
    # user 2 has events at 150 (item 10) and 250 (item 12); new ones before, between, tied, after
    ev = store_with(tmp_path / "ev.sqlite", [("2", [("11", 300), ("13", 150), ("11", 50), ("12", 200)])])
    out = mirec.append(base, ev, tmp_path / "d2")
    ds = load_dataset(out)
    u2 = ds.users["raw_id"].to_list().index("2")
    seq = triples(out)[ds.offsets[u2]:ds.offsets[u2 + 1]]
    # by time; at the tie (150) the base event first, then the new one
    assert [(i, t) for _, i, t in seq] == [("11", 50), ("10", 150), ("13", 150), ("12", 200),
                                           ("12", 250), ("11", 300)]
    assert all(np.all(np.diff(ds.ts[ds.offsets[u]:ds.offsets[u + 1]]) >= 0) for u in range(ds.num_users))
    assert record(out)["older_than_users_last_event"] == 3  # 150, 50, 200 < 250


# ---- the manifest and continuing a store -----------------------------------------------------


def test_the_manifest_records_the_base_and_what_was_appended_and_a_store_continues(base, tmp_path):
    (tmp_path / "new.csv").write_text("item_id,title,categories\n13,Thirteen,a|c\n99,never posted,x\n")
    path = store_with(tmp_path / "ev.sqlite", [("1", [("13", 400)]), ("7", [("10", 50)])])
    d2 = mirec.append(base, path, tmp_path / "d2", new_items=tmp_path / "new.csv")
    meta, r = json.loads((d2 / "meta.json").read_text()), record(d2)
    assert meta["format"] == "mirec.dataset" and meta["source"] == {"name": "test"}  # the base's
    assert r["base"] == {"path": str(base), "dataset_checksum": load_dataset(base).checksum}
    assert r["source"] == {"name": "store", "store": str(path.resolve()), "since": 0, "last_seq": 2}
    assert (r["events_read"], r["events_added"], r["new_users"], r["new_items"]) == (2, 2, 1, 1)
    assert r["k_core"] == "not applied"
    assert r["new_items_file"] == {"path": str(tmp_path / "new.csv"), "items": 2, "without_events": 1}
    items = load_dataset(d2).items
    assert items.row(3, named=True) == {"item": 4, "raw_id": "13", "title": "Thirteen", "categories": ["a", "c"]}
    assert "99" not in items["raw_id"].to_list()  # a catalogue item nobody posted: not added
    # more traffic; the next append of d2 reads from seq 3 on
    store_with(path, [("7", [("11", 60)])])
    d3 = mirec.append(d2, path, tmp_path / "d3")
    r3 = record(d3)
    assert r3["source"]["since"] == 2 and r3["source"]["last_seq"] == 3 and r3["events_read"] == 1
    assert len(json.loads((d3 / "meta.json").read_text())["appended"]) == 2
    assert mirec.append(d2, path, tmp_path / "d4", since=0).joinpath("meta.json").exists()
    assert triples(tmp_path / "d4") == triples(d3)  # re-reading everything: the same events


def test_appending_the_same_new_twice_changes_no_event(base, tmp_path):
    csv = tmp_path / "new.csv"
    csv.write_text("user_id,item_id,timestamp\n1,12,500\n5,10,20\n5,14,30\n1,12,500\n")
    d2 = mirec.append(base, csv, tmp_path / "d2", source="csv")
    d3 = mirec.append(d2, csv, tmp_path / "d3", source="csv")
    for name in ("interactions.parquet", "items.parquet", "users.parquet"):
        assert pl.read_parquet(d3 / name).equals(pl.read_parquet(d2 / name)), name
    assert (record(d3)["events_added"], record(d3)["duplicates_dropped"]) == (0, 4)
    ev = store_with(tmp_path / "ev.sqlite", [("5", [("10", 20), ("14", 30)]), ("1", [("12", 500)])])
    d4 = mirec.append(d3, ev, tmp_path / "d4")
    assert pl.read_parquet(d4 / "interactions.parquet").equals(pl.read_parquet(d2 / "interactions.parquet"))


def test_ratings_are_dropped_when_the_appended_events_have_none(tmp_path):
    ev = pl.DataFrame({"user": [1, 1, 2], "item": [10, 11, 10], "ts": [1, 2, 3], "rating": [5.0, 1.0, 4.0]})
    build_dataset(RawLog(ev, {"name": "rated"}), tmp_path / "base", PrepareConfig(k_core=1))
    assert load_dataset(tmp_path / "base").rating is not None
    d2 = mirec.append(tmp_path / "base", store_with(tmp_path / "ev.sqlite", [("2", [("11", 9)])]),
                      tmp_path / "d2")
    assert load_dataset(d2).rating is None  # not NaN labels that a ranker would read as negatives
    assert record(d2)["ratings"] == "dropped: the appended events have none"


# ---- sources ---------------------------------------------------------------------------------


def test_appending_a_csv_through_its_source_with_its_options(capsys, base, tmp_path):
    csv = tmp_path / "more.csv"
    csv.write_text("who;what;when;genre\n1;11;700;b\n6;20;2024-01-01T00:00:00;z\n6;10;800;a\n6;21;900;y\n")
    (tmp_path / "new.jsonl").write_text('{"item_id": 20, "title": "Twenty", "categories": ["t"]}\n')
    code, out, err = cli(capsys, "data", "append", base, csv, "--source", "csv", "--separator", ";",
                         "--user-col", "who", "--item-col", "what", "--time-col", "when",
                         "--category-col", "genre", "--new-items", tmp_path / "new.jsonl",
                         "--out", tmp_path / "d2")
    assert code == 0, err
    assert "4 events added (0 duplicates dropped), 1 new users, 2 new items" in out
    assert "appended (1x)" in out
    ds = load_dataset(tmp_path / "d2")
    # an item in the catalogue takes its title and categories; another, the log's own category
    assert ds.items.row(3, named=True) == {"item": 4, "raw_id": "21", "title": None, "categories": ["y"]}
    assert ds.items.row(4, named=True) == {"item": 5, "raw_id": "20", "title": "Twenty", "categories": ["t"]}
    assert ("6", "20", 1704067200) in triples(tmp_path / "d2")
    assert record(tmp_path / "d2")["source"]["path"] == str(csv)


def test_a_log_given_as_a_store_and_a_source_option_without_source_are_clear(capsys, base, tmp_path):
    csv = tmp_path / "more.csv"
    csv.write_text("user_id,item_id,timestamp\n1,11,700\n")
    refused(capsys, "data", "append", base, csv, "--out", tmp_path / "d2",
            says=f"{csv}: not an event store (a SQLite file of `mirec serve --store`); to append a "
                 f"log, name its source with --source")
    refused(capsys, "data", "append", base, csv, "--user-col", "u", "--out", tmp_path / "d2",
            says="--user-col: an option of a data source, but NEW is read as an event store")
    refused(capsys, "data", "append", base, tmp_path / "nothing.sqlite", "--out", tmp_path / "d2",
            says="no such event store")
    refused(capsys, "data", "append", tmp_path / "no-data", csv, "--source", "csv", "--out", tmp_path / "d2",
            says=f"{tmp_path / 'no-data'}: no such data set directory")
    refused(capsys, "data", "append", base, csv, "--source", "csv", "--since", "3", "--out", tmp_path / "d2",
            says="--since: reads an event store")
    assert sorted(os.listdir(tmp_path)) == ["base", "more.csv"]


# ---- bad input and --out ---------------------------------------------------------------------


def test_a_bad_line_in_new_is_one_line_naming_it_and_leaves_nothing(capsys, base, tmp_path):
    csv = tmp_path / "more.csv"
    csv.write_text("user_id,item_id,timestamp\n1,11,700\n2,12,yesterday\n")
    refused(capsys, "data", "append", base, csv, "--source", "csv", "--out", tmp_path / "d2", says=f"{csv}:3:")
    (tmp_path / "new.csv").write_text("item_id,title\n20,fine\n10,known already\n")
    with pytest.raises(MirecDataError, match=f"{tmp_path / 'new.csv'}:3: field 'item_id': '10' is already"):
        mirec.append(base, store_with(tmp_path / "ev.sqlite", []), tmp_path / "d2",
                     new_items=tmp_path / "new.csv")
    assert sorted(os.listdir(tmp_path)) == ["base", "ev.sqlite", "more.csv", "new.csv"]  # no d2, no .tmp-*


def test_out_is_never_the_base_nor_a_directory_mirec_did_not_write(capsys, base, tmp_path):
    ev = store_with(tmp_path / "ev.sqlite", [("1", [("12", 500)])])
    checksum = load_dataset(base).checksum
    refused(capsys, "data", "append", base, ev, "--out", base, says="is the data set appended to")
    refused(capsys, "data", "append", base, ev, "--out", base / "inner", says="or inside it")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused(capsys, "data", "append", base, ev, "--out", foreign, says="directory exists and is not a mirec data set")
    assert (foreign / "notes.txt").read_text() == "mine"
    assert load_dataset(base).checksum == checksum and sorted(os.listdir(base)) == sorted(
        ["interactions.parquet", "items.parquet", "users.parquet", "meta.json"])
    with pytest.raises(MirecConfigError, match="--since: must be >= 0"):
        mirec.append(base, ev, tmp_path / "d2", since=-1)
    # a data set mirec wrote is replaced whole
    assert mirec.append(base, ev, tmp_path / "d2") and mirec.append(base, ev, tmp_path / "d2", since=1)
    assert record(tmp_path / "d2")["events_read"] == 0


# ---- other stores ----------------------------------------------------------------------------


def test_appending_from_a_postgres_store(base, tmp_path, pg_url):
    s = open_store(pg_url)
    s.append("1", [("12", 500), ("13", 510)])
    s.append("6", [("10", 5)])
    out = mirec.append(base, pg_url, tmp_path / "d2")
    assert {("1", "12", 500), ("1", "13", 510), ("6", "10", 5)} <= set(triples(out))
    r = record(out)
    assert r["source"]["store"] == s.name and r["source"]["last_seq"] == max(q for q, *_ in s.events_since())
    s.append("6", [("11", 6)])
    assert record(mirec.append(out, pg_url, tmp_path / "d3"))["events_read"] == 1  # continues
    s.close()


def test_events_for_items_the_model_does_not_know_are_stored_and_appended(capsys, run, bundle, tmp_path):
    """The next refresh learns new items from real traffic: /events keeps them (serving still
    skips them in histories, and lists them in ignored_items)."""
    root, ds = run
    known = bundle.raw_id(1)
    path = tmp_path / "events.sqlite"
    with shared.Server(Recommender(bundle, shared.exact(bundle), EventStore(path))) as client:
        r = client.post("/events", json={"user_id": "visitor", "events": [
            {"item_id": known, "timestamp": 10**9}, {"item_id": "brand-new", "timestamp": 10**9 + 1}]}).json()
        assert r == {"user_id": "visitor", "stored": 2, "ignored_items": ["brand-new"]}
        rec = client.post("/recommend", json={"user_id": "visitor", "n": 5}).json()
        assert rec["history"] == [known] and rec["ignored_items"] == ["brand-new"]
    code, _, err = cli(capsys, "data", "append", root / "ds", path, "--out", tmp_path / "d2")
    assert code == 0, err
    d2 = load_dataset(tmp_path / "d2")
    assert d2.items["raw_id"].to_list()[-1] == "brand-new" and d2.num_items == ds.num_items + 1
    assert set(triples(tmp_path / "d2")) - set(triples(root / "ds")) == {
        ("visitor", known, 10**9), ("visitor", "brand-new", 10**9 + 1)}
