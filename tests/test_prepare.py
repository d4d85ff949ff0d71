"""Preparation: dedupe, k-core to a fixed point, dense ids, order, atomic writes."""

import json

import numpy as np
import polars as pl
import pytest

from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, RawLog, build_dataset, kcore
from mirec.errors import MirecDataError
from tests.conftest import make_dataset


def test_kcore_is_stable_fixed_point():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 50, 2000)
    i = (rng.zipf(1.5, 2000) % 200).astype(np.int64)
    keep = kcore(u, i, 5)
    assert keep.any()
    cu = np.bincount(u[keep])
    ci = np.bincount(i[keep])
    assert cu[cu > 0].min() >= 5 and ci[ci > 0].min() >= 5
    # applying k-core again removes nothing
    assert kcore(u[keep], i[keep], 5).all()


def test_kcore_cascade():
    # item 9 has 2 events; dropping it leaves user 2 with 4 < 5 events, which then drops
    users = [1] * 5 + [2] * 5 + [3] * 5
    items = [1, 2, 3, 4, 5] + [1, 2, 3, 4, 9] + [1, 2, 3, 4, 5]
    users += [4, 4, 4, 4, 4]
    items += [1, 2, 3, 5, 9]
    keep = kcore(np.array(users), np.array(items), 3)
    kept_users = set(np.array(users)[keep])
    assert 9 not in set(np.array(items)[keep])
    assert kept_users == {1, 2, 3, 4}
    keep5 = kcore(np.array(users), np.array(items), 5)
    assert not keep5.any()


def test_dense_ids_sorted_and_ties_in_file_order(tmp_path):
    # user "b" has two events at the same time: file order must be kept
    ev = pl.DataFrame({"user": ["b", "b", "a", "b", "a"],
                       "item": ["x", "z", "y", "y", "x"],
                       "ts": [5, 5, 1, 2, 0]})
    build_dataset(RawLog(ev, {"name": "t"}), tmp_path / "d", PrepareConfig(k_core=1))
    ds = load_dataset(tmp_path / "d")
    assert ds.users["raw_id"].to_list() == ["a", "b"]
    assert ds.items["raw_id"].to_list() == ["x", "y", "z"]
    assert ds.items["item"].to_list() == [1, 2, 3]  # 0 is padding
    assert ds.user.tolist() == [0, 0, 1, 1, 1]
    assert ds.item.tolist() == [1, 2, 2, 1, 3]  # a: x@0, y@1; b: y@2, x@5, z@5
    assert ds.offsets.tolist() == [0, 2, 5]


def test_duplicates_dropped(tmp_path):
    ds = make_dataset(tmp_path / "d", [1, 1, 1], [5, 5, 6], [3, 3, 4])
    assert len(ds.item) == 2
    assert ds.meta["counts"]["duplicates_dropped"] == 1


def test_empty_after_filtering_is_clear_error(tmp_path):
    ev = pl.DataFrame({"user": [1, 2], "item": [1, 2], "ts": [0, 0]})
    with pytest.raises(MirecDataError, match="no events remain after 5-core"):
        build_dataset(RawLog(ev, {"name": "t", "path": "log.csv"}), tmp_path / "d")
    assert not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []  # no temp directory left behind


def test_failed_write_leaves_previous_dataset_intact(tmp_path, monkeypatch):
    make_dataset(tmp_path / "d", [1, 1, 2, 2], [1, 2, 1, 2], [0, 1, 0, 1])
    before = json.loads((tmp_path / "d" / "meta.json").read_text())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    with pytest.raises(OSError):
        make_dataset(tmp_path / "d", [7, 7], [1, 2], [0, 1])
    monkeypatch.undo()
    assert json.loads((tmp_path / "d" / "meta.json").read_text()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    assert load_dataset(tmp_path / "d").num_users == 2


def test_meta_and_checksum_verification(tmp_path):
    ds = make_dataset(tmp_path / "d", [1, 1, 2], [1, 2, 1], [0, 1, 0])
    meta = ds.meta
    assert meta["protocol_version"] == "1"
    assert meta["counts"]["after_k_core"] == {"events": 3, "users": 2, "items": 2}
    assert set(meta["checksums"]) == {"interactions.parquet", "items.parquet", "users.parquet"}
    # tamper with a file: loading names it
    p = tmp_path / "d" / "items.parquet"
    pl.DataFrame({"item": [1], "raw_id": ["x"]}).write_parquet(p)
    with pytest.raises(MirecDataError, match="items.parquet: checksum"):
        load_dataset(tmp_path / "d")


def test_interactions_schema(tmp_path):
    make_dataset(tmp_path / "d", [3, 3, 1], [2, 1, 2], [9, 8, 7])
    df = pl.read_parquet(tmp_path / "d" / "interactions.parquet")
    assert df.schema == pl.Schema({"user": pl.Int32, "item": pl.Int32, "ts": pl.Int64})
