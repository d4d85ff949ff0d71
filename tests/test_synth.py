"""Synthetic log: determinism, planted multi-interest structure, output formats, validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, RawLog, build_dataset
from mirec.data.synth import (
    BLOCK_USERS,
    SynthConfig,
    item_arrivals,
    iter_chunks,
    num_chunks,
    preset,
    synth_dataset,
    synth_raw,
)
from mirec.errors import MirecConfigError

FILES = ("interactions.parquet", "items.parquet", "users.parquet")


def _small(**kw) -> SynthConfig:
    base = {"num_users": 300, "num_categories": 8, "items_per_category": 20,
            "max_interests": 3, "mean_len": 20.0, "chunk_users": 100, "seed": 1}
    base.update(kw)
    return SynthConfig(**base)


def _interest_matrix(users: pl.DataFrame, kmax: int) -> np.ndarray:
    """(U, kmax) int32 of each user's planted categories, -1 padded."""
    out = np.full((users.height, kmax), -1, dtype=np.int32)
    for u, cats in enumerate(users["interests"].to_list()):
        out[u, :len(cats)] = cats
    return out


# -- determinism -----------------------------------------------------------------------------

def test_same_seed_same_files_different_seed_different(tmp_path: Path) -> None:
    cfg = _small()
    a = synth_dataset(cfg, tmp_path / "a", progress=False)
    b = synth_dataset(cfg, tmp_path / "b", progress=False)
    c = synth_dataset(_small(seed=2), tmp_path / "c", progress=False)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb, mc = (json.loads((d / "meta.json").read_text()) for d in (a, b, c))
    assert ma["dataset_checksum"] == mb["dataset_checksum"]
    assert (a / "interactions.parquet").read_bytes() != (c / "interactions.parquet").read_bytes()
    assert ma["dataset_checksum"] != mc["dataset_checksum"]
    assert ma["checksums"]["items.parquet"] == mc["checksums"]["items.parquet"]  # catalogue


def test_events_do_not_depend_on_chunk_users(tmp_path: Path) -> None:
    n = 2 * BLOCK_USERS + 37  # several blocks, a partial last one
    big = synth_dataset(_small(num_users=n, mean_len=6.0, chunk_users=10**6), tmp_path / "big",
                        progress=False)
    small = synth_dataset(_small(num_users=n, mean_len=6.0, chunk_users=1), tmp_path / "small",
                          progress=False)
    a, b = load_dataset(big), load_dataset(small)
    for f in ("user", "item", "ts"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.users.equals(b.users)
    assert num_chunks(_small(num_users=n, chunk_users=1)) == 3
    assert num_chunks(_small(num_users=n, chunk_users=10**6)) == 1


def test_chunks_cover_every_user_once_and_count_events(tmp_path: Path) -> None:
    cfg = _small(num_users=2500, chunk_users=1000, mean_len=8.0)
    chunks = list(iter_chunks(cfg))
    assert len(chunks) == num_chunks(cfg) == 3
    firsts = [c.first_user for c in chunks]
    assert firsts == [0, 1024, 2048]
    users = np.concatenate([np.unique(c.user) for c in chunks])
    np.testing.assert_array_equal(users, np.arange(cfg.num_users))
    total = sum(len(c.item) for c in chunks)
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    assert len(ds.item) == total == ds.meta["counts"]["after_k_core"]["events"]
    assert ds.num_users == cfg.num_users


# -- the data set format ---------------------------------------------------------------------

def test_dataset_loads_and_is_well_formed(tmp_path: Path) -> None:
    cfg = _small(num_users=400, min_len=7, mean_len=15.0)
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    n_items = cfg.num_categories * cfg.items_per_category
    assert ds.num_items == n_items + 1
    assert ds.num_users == cfg.num_users
    assert ds.item.min() >= 1 and ds.item.max() <= n_items
    assert ds.user.dtype == np.int32 and ds.item.dtype == np.int32 and ds.ts.dtype == np.int64
    assert np.all(np.diff(ds.user) >= 0)
    lens = np.diff(ds.offsets)
    assert lens.min() >= cfg.min_len
    assert abs(lens.mean() - cfg.mean_len) < 2.0
    # timestamps strictly increase within a user
    same_user = ds.user[1:] == ds.user[:-1]
    assert np.all(np.diff(ds.ts)[same_user] > 0)
    # catalogue: every item, its category in title and categories
    assert ds.items["item"].to_list() == list(range(1, n_items + 1))
    row = ds.items.row(3 * cfg.items_per_category + 17, named=True)  # item c3 rank 17
    assert row["title"] == "c3 item 17" and row["categories"] == ["c3"]
    assert row["raw_id"] == str(3 * cfg.items_per_category + 18)
    _, _, names = ds.category_index()
    assert names == sorted(f"c{c}" for c in range(cfg.num_categories))
    meta = ds.meta
    assert meta["format"] == "mirec.dataset"
    assert meta["source"]["name"] == "synth"
    assert meta["source"]["config"]["seed"] == cfg.seed
    assert meta["filters"]["k_core"] is None
    # users: planted interests, 1..Kmax distinct categories, every count occurs
    k = ds.users["num_interests"].to_numpy()
    assert k.min() == 1 and k.max() == cfg.max_interests
    for cats, kk in zip(ds.users["interests"].to_list(), k, strict=True):
        assert len(cats) == kk == len(set(cats))
        assert all(0 <= c < cfg.num_categories for c in cats)
    assert ds.users["raw_id"].to_list()[:3] == ["0", "1", "2"]


def test_zipf_popularity_within_category(tmp_path: Path) -> None:
    cfg = _small(num_users=500, zipf_a=1.2, noise=0.0)
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    rank = (ds.item - 1) % cfg.items_per_category
    counts = np.bincount(rank, minlength=cfg.items_per_category)
    assert counts[0] > counts[1] > counts[5] > counts[-1]
    p0 = 1.0 / np.sum(np.arange(1, cfg.items_per_category + 1) ** -1.2)
    assert abs(counts[0] / counts.sum() - p0) < 0.02


# -- planted structure -----------------------------------------------------------------------

def _stats(ds, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per event: category, own (in the user's interests); per pair: same category; k per user."""
    cat = (ds.item - 1) // cfg.items_per_category  # (E,)
    interests = _interest_matrix(ds.users, cfg.max_interests)  # (U, Kmax)
    own = (interests[ds.user] == cat[:, None]).any(axis=1)  # (E,)
    pair = ds.user[1:] == ds.user[:-1]
    same = (cat[1:] == cat[:-1])[pair]  # (pairs,)
    k = ds.users["num_interests"].to_numpy()
    return cat, own, same, k


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_own_interest_fraction_matches_planted(tmp_path: Path, noise: float) -> None:
    cfg = SynthConfig(num_users=2000, num_categories=10, items_per_category=10,
                      max_interests=4, stickiness=0.7, noise=noise, mean_len=30.0, seed=3)
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    _, own, _, k = _stats(ds, cfg)
    k_ev = k[ds.user]
    for kk in range(1, cfg.max_interests + 1):
        got = own[k_ev == kk].mean()
        want = 1 - noise * (1 - kk / cfg.num_categories)
        assert abs(got - want) < 0.015, (kk, got, want)


def test_consecutive_same_category_matches_stickiness(tmp_path: Path) -> None:
    s, noise, c = 0.6, 0.1, 12
    cfg = SynthConfig(num_users=2000, num_categories=c, items_per_category=10,
                      max_interests=4, stickiness=s, noise=noise, mean_len=30.0, seed=4)
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    _, _, same, k = _stats(ds, cfg)
    pair = ds.user[1:] == ds.user[:-1]
    k_pair = k[ds.user[1:][pair]]
    clean = (1 - noise) ** 2
    for kk in range(1, cfg.max_interests + 1):
        got = same[k_pair == kk].mean()
        want = clean * (s + (1 - s) / kk) + (1 - clean) / c
        assert abs(got - want) < 0.02, (kk, got, want)


def test_higher_stickiness_more_same_category_pairs(tmp_path: Path) -> None:
    fr = []
    for s in (0.1, 0.5, 0.95):
        cfg = _small(num_users=500, stickiness=s, noise=0.05, max_interests=4)
        ds = load_dataset(synth_dataset(cfg, tmp_path / f"s{s}", progress=False))
        fr.append(_stats(ds, cfg)[2].mean())
    assert fr[0] < fr[1] < fr[2]


def test_extremes_single_interest_no_noise(tmp_path: Path) -> None:
    cfg = _small(max_interests=1, noise=0.0)
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    _, own, _, k = _stats(ds, cfg)
    assert np.all(k == 1) and own.all()
    # full stickiness: a user stays in the interest its first event drew
    cfg = _small(max_interests=3, stickiness=1.0, noise=0.0)
    ds = load_dataset(synth_dataset(cfg, tmp_path / "e", progress=False))
    _, own, same, _ = _stats(ds, cfg)
    assert own.all() and same.all()


# -- raw log ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_raw_log_has_the_same_events(tmp_path: Path, fmt: str) -> None:
    cfg = _small(num_users=1500, chunk_users=500)
    path = synth_raw(cfg, tmp_path / f"raw.{fmt}", fmt=fmt, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [f"raw.{fmt}"]  # no temp leftovers
    if fmt == "csv":
        assert path.read_text().splitlines()[0] == "user,item,category,timestamp"
        raw = pl.read_csv(path)
    else:
        raw = pl.read_parquet(path)
    assert raw.columns == ["user", "item", "category", "timestamp"]
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    assert raw.height == len(ds.item)
    # category column agrees with the item's category
    cat = (raw["item"] - 1) // cfg.items_per_category
    assert (("c" + cat.cast(pl.String)) == raw["category"]).all()
    # rows are time-sorted within each chunk (each chunk: 1024 users)
    chunk = (raw["user"] // BLOCK_USERS).to_numpy()
    assert np.all(np.diff(chunk) >= 0)
    ts = raw["timestamp"].to_numpy()
    assert np.all(np.diff(ts)[chunk[1:] == chunk[:-1]] >= 0)
    # same events as the data set
    srt = raw.sort(["user", "timestamp"])
    np.testing.assert_array_equal(srt["user"].to_numpy(), ds.user)
    np.testing.assert_array_equal(srt["item"].to_numpy(), ds.item)
    np.testing.assert_array_equal(srt["timestamp"].to_numpy(), ds.ts)


def test_raw_log_prepares_to_the_same_data_set(tmp_path: Path) -> None:
    cfg = _small(num_users=400, num_categories=4, items_per_category=5)
    direct = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    assert direct.meta["counts"]["items_with_events"] == 20  # every item used: same item ids
    raw = pl.read_csv(synth_raw(cfg, tmp_path / "raw.csv", progress=False))
    events = raw.select("user", "item", pl.col("timestamp").alias("ts"), "category")
    out = build_dataset(RawLog(events=events, source={"name": "synth-raw"}), tmp_path / "p",
                        PrepareConfig(k_core=1))
    prepared = load_dataset(out)
    for f in ("user", "item", "ts"):
        np.testing.assert_array_equal(getattr(prepared, f), getattr(direct, f))
    assert prepared.items["categories"].to_list() == direct.items["categories"].to_list()


def test_raw_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(MirecConfigError, match="fmt"):
        synth_raw(_small(), tmp_path / "x.json", fmt="json")  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("num_users", 0),
    ("num_users", 1.5),
    ("num_categories", 0),
    ("items_per_category", 0),
    ("zipf_a", -0.1),
    ("zipf_a", float("nan")),
    ("max_interests", 0),
    ("max_interests", 9),  # > num_categories (8)
    ("stickiness", 1.5),
    ("noise", -0.01),
    ("min_len", 4),
    ("mean_len", 4.0),
    ("mean_gap_s", 0.5),
    ("seed", -1),
    ("seed", True),
    ("chunk_users", 0),
    ("span_days", 0.0),
    ("span_days", float("inf")),
    ("item_arrival", 1.0),
    ("item_arrival", -0.1),
    ("fresh_boost", -1.0),
    ("fresh_half_life_days", 0.0),
    ("interest_drift", -0.5),
    ("trend_share", 0.0),
    ("trend_share", 1.5),
    ("trend_period_days", 0.0),
])
def test_validate_names_the_field(field: str, value: object) -> None:
    cfg = _small(**{field: value})
    with pytest.raises(MirecConfigError, match=rf"^{field}:"):
        cfg.validate()


def test_validate_accepts_defaults_and_item_id_bound() -> None:
    SynthConfig().validate()
    with pytest.raises(MirecConfigError, match="^items_per_category:"):
        SynthConfig(num_categories=2**16, items_per_category=2**16).validate()


def test_bad_config_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(MirecConfigError, match="^noise:"):
        synth_dataset(_small(noise=2.0), tmp_path / "d", progress=False)
    assert not any(tmp_path.iterdir())


# -- presets ---------------------------------------------------------------------------------

def _preset_cfg(name: str, **kw) -> SynthConfig:
    from mirec.config import load

    return load(SynthConfig, None, [f"{k}={v}" for k, v in kw.items()], base=preset(name))


def test_presets_have_the_public_logs_shape() -> None:
    """Full-size presets: users, catalogue and expected events of the published logs."""
    tb, bk = _preset_cfg("taobao"), _preset_cfg("books")
    assert tb.num_users == 976_779 and abs(tb.num_items - 1_708_530) / 1_708_530 < 0.01
    assert 8_500 <= tb.num_categories <= 9_500
    assert abs(tb.num_users * tb.mean_len - 85.4e6) / 85.4e6 < 0.01
    assert bk.num_users == 459_133 and abs(bk.num_items - 313_966) / 313_966 < 0.01
    assert abs(bk.num_users * bk.mean_len - 8.9e6) / 8.9e6 < 0.01
    with pytest.raises(MirecConfigError, match="--preset: unknown preset 'tmall'"):
        preset("tmall")


def test_preset_with_overrides_is_heavy_tailed_and_deterministic(tmp_path: Path) -> None:
    """--preset taobao --set num_users=... keeps the preset's shape (mean length, items per
    category, heavy tail: the top 1% of items hold a large share, the median item is rare) and
    the part files are identical per seed, different across seeds."""
    cfg = _preset_cfg("taobao", num_users=1500, num_categories=40, chunk_users=1024)
    a = synth_raw(cfg, tmp_path / "a", fmt="parts", progress=False)
    b = synth_raw(cfg, tmp_path / "b", fmt="parts", progress=False)
    c = synth_raw(_preset_cfg("taobao", num_users=1500, num_categories=40, chunk_users=1024,
                              seed=1), tmp_path / "c", fmt="parts", progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert names == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]  # one a chunk
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / names[1]).read_bytes() != (c / names[1]).read_bytes()
    ev = pl.read_parquet(sorted(a.glob("part-*.parquet")))
    assert ev.columns == ["user", "item", "category", "timestamp"]
    assert ev["user"].n_unique() == 1500 and ev["user"].max() == 1499
    assert ev["category"].n_unique() == 40
    assert abs(ev.height / 1500 - cfg.mean_len) < 5  # 87.4 events a user
    counts = np.zeros(cfg.num_items + 1, dtype=np.int64)
    np.add.at(counts, ev["item"].to_numpy(), 1)
    counts = np.sort(counts[1:])[::-1]  # (N,) every catalogue item, most popular first
    top = counts[: len(counts) // 100].sum() / counts.sum()
    assert top > 0.2  # Zipf over 190 items a category: ~30% (uniform: 1%)
    assert np.median(counts) < 0.4 * counts.mean()  # the median item is rare (~a quarter)


def test_parts_match_the_single_file(tmp_path: Path) -> None:
    cfg = _small(num_users=1500, chunk_users=500)
    parts = synth_raw(cfg, tmp_path / "parts", fmt="parts", progress=False)
    one = pl.read_parquet(synth_raw(cfg, tmp_path / "one.parquet", fmt="parquet", progress=False))
    assert len(list(parts.glob("part-*.parquet"))) == num_chunks(cfg) == 2
    assert pl.read_parquet(sorted(parts.glob("part-*.parquet"))).equals(one)


# -- a log that changes over time ------------------------------------------------------------

DAY = 86_400


def _digest(cfg: SynthConfig) -> str:
    """SHA-256 of every chunk's arrays (events, categories, planted interests)."""
    h = hashlib.sha256()
    for ch in iter_chunks(cfg):
        for a in (ch.user, ch.item, ch.category, ch.ts, ch.interests, ch.num_interests):
            h.update(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def test_time_settings_off_leave_the_log_of_earlier_versions() -> None:
    """With item_arrival and interest_drift 0 (the defaults) the events are those the generator
    wrote before these settings existed: the digests were computed on that code."""
    assert _digest(_small(num_users=1500, chunk_users=500)) == (
        "398a41f8fa167183a7ba632e3ac80dc5e8f1f7dd883366abcaeda52aa007dc08")
    assert _digest(SynthConfig(num_users=1100, seed=7)) == (
        "ba03c459916b8d6906f10f7e51ec0e3889666005dea372cc94355e90f4bc4cef")
    # the other time settings do nothing while both are off
    assert _digest(_small(num_users=1500, chunk_users=500, fresh_boost=3.0, trend_share=0.2)) == (
        "398a41f8fa167183a7ba632e3ac80dc5e8f1f7dd883366abcaeda52aa007dc08")


def _arriving(**kw) -> SynthConfig:
    base = {"num_users": 1500, "num_categories": 6, "items_per_category": 30, "mean_len": 20.0,
            "mean_gap_s": DAY / 4, "span_days": 30.0, "item_arrival": 0.5, "fresh_boost": 10.0,
            "fresh_half_life_days": 3.0, "chunk_users": 500, "seed": 5}
    base.update(kw)
    return SynthConfig(**base)


def test_items_arrive_late_and_take_over_the_traffic(tmp_path: Path) -> None:
    cfg = _arriving()
    ds = load_dataset(synth_dataset(cfg, tmp_path / "d", progress=False))
    arrival = item_arrivals(cfg)  # (N+1,)
    late = arrival > cfg.start_ts  # (N+1,)
    # half of each category's items arrive late, within span_days; items.parquet says when
    assert (late[1:].reshape(cfg.num_categories, -1).sum(axis=1) == 15).all()
    assert arrival.max() <= cfg.start_ts + 30 * DAY
    np.testing.assert_array_equal(ds.items["arrival_ts"].to_numpy(), arrival[1:])
    # no event picks an item before it arrived, yet late items are picked soon after
    assert (arrival[ds.item] <= ds.ts).all()
    assert (ds.ts - arrival[ds.item])[late[ds.item]].min() < DAY
    # the share of events on late items grows over the timeline
    order = np.argsort(ds.ts, kind="stable")
    thirds = [late[ds.item[part]].mean() for part in np.array_split(order, 3)]
    assert thirds[0] + 0.15 < thirds[1] < thirds[2], thirds
    # a fresh late item is more popular than the same item later, and than without the boost
    flat = load_dataset(synth_dataset(_arriving(fresh_boost=0.0), tmp_path / "f", progress=False))
    fresh = (ds.ts - arrival[ds.item]) < 3 * DAY
    flat_fresh = (flat.ts - arrival[flat.item]) < 3 * DAY
    assert fresh.mean() > 2 * flat_fresh.mean()


def _own_share(ds, cfg: SynthConfig, part: slice) -> float:
    """Share of events, in each user's ``part`` of its sequence, in its planted interests."""
    interests = _interest_matrix(ds.users, cfg.max_interests)  # (U, Kmax)
    cat = (ds.item - 1) // cfg.items_per_category
    own = []
    for u in range(ds.num_users):
        lo, hi = ds.offsets[u], ds.offsets[u + 1]
        n = hi - lo
        idx = np.arange(lo, hi)[part.start * n // 3: part.stop * n // 3]
        own.append(np.isin(cat[idx], interests[u]).mean())
    return float(np.mean(own))


def _drifting(**kw) -> SynthConfig:
    base = {"num_users": 600, "num_categories": 30, "items_per_category": 5, "max_interests": 3,
            "mean_len": 40.0, "mean_gap_s": float(DAY), "span_days": 100.0, "noise": 0.0,
            "trend_period_days": 200.0,
            "interest_drift": 0.1, "chunk_users": 300, "seed": 6}
    base.update(kw)
    return SynthConfig(**base)


def test_interest_drift_moves_users_to_other_categories(tmp_path: Path) -> None:
    """With drift a user's last third of events leaves its starting interests; without, it
    stays in them; drifted interests land in the trend window of their time."""
    still_cfg, drift_cfg = _drifting(interest_drift=0.0), _drifting()
    still = load_dataset(synth_dataset(still_cfg, tmp_path / "s", progress=False))
    drift = load_dataset(synth_dataset(drift_cfg, tmp_path / "d", progress=False))
    assert _own_share(still, still_cfg, slice(0, 1)) == _own_share(still, still_cfg, slice(2, 3)) == 1
    first, last = _own_share(drift, drift_cfg, slice(0, 1)), _own_share(drift, drift_cfg, slice(2, 3))
    assert first - last > 0.3 and last < 0.6, (first, last)
    np.testing.assert_array_equal(still.ts, drift.ts)  # the same users and times
    assert still.users.equals(drift.users)  # interests at the first event

    # trend_share: a moved interest is a category of the window between the user's first event
    # and this one (within the first trend period: the window has not wrapped)
    cfg = _drifting(trend_share=0.1)  # 3 categories
    ds = load_dataset(synth_dataset(cfg, tmp_path / "t", progress=False))
    c, span = cfg.num_categories, 200 * DAY  # the trend period
    cat = (ds.item - 1) // cfg.items_per_category
    interests = _interest_matrix(ds.users, cfg.max_interests)
    moved = ~(interests[ds.user] == cat[:, None]).any(axis=1)  # (E,) not a starting interest
    moved &= ds.ts - cfg.start_ts < span
    t_first = ds.ts[ds.offsets[:-1]][ds.user]  # (E,)
    w_first = (c * (t_first - cfg.start_ts) // span) % c
    w_now = (c * (ds.ts - cfg.start_ts) // span) % c
    lag = (cat - w_first) % c
    assert moved.mean() > 0.2
    assert (lag[moved] < (w_now - w_first)[moved] % c + 3).all()
    # without a trend window the moved categories are anywhere
    uni_cfg = _drifting(trend_share=1.0)
    uni = load_dataset(synth_dataset(uni_cfg, tmp_path / "u", progress=False))
    ucat = (uni.item - 1) // cfg.items_per_category
    umoved = ~(_interest_matrix(uni.users, cfg.max_interests)[uni.user] == ucat[:, None]).any(axis=1)
    umoved &= uni.ts - cfg.start_ts < span
    uw_first = (c * (uni.ts[uni.offsets[:-1]][uni.user] - cfg.start_ts) // span) % c
    uw_now = (c * (uni.ts - cfg.start_ts) // span) % c
    ulag = (ucat - uw_first) % c
    assert not (ulag[umoved] < (uw_now - uw_first)[umoved] % c + 3).all()


def test_time_settings_do_not_depend_on_chunk_users(tmp_path: Path) -> None:
    n = 2 * BLOCK_USERS + 37
    kw = {"num_users": n, "mean_len": 8.0, "item_arrival": 0.4, "interest_drift": 0.5,
          "trend_share": 0.3, "mean_gap_s": float(DAY), "span_days": 20.0}
    a = load_dataset(synth_dataset(_small(chunk_users=10**6, **kw), tmp_path / "a", progress=False))
    b = load_dataset(synth_dataset(_small(chunk_users=1, **kw), tmp_path / "b", progress=False))
    for f in ("user", "item", "ts"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.users.equals(b.users) and a.items.equals(b.items)
    assert _digest(_small(chunk_users=1, **kw)) != _digest(_small(chunk_users=1))


def test_drift_preset_from_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mirec.cli import app

    cli = CliRunner()
    out = tmp_path / "drift"
    res = cli.invoke(app, ["data", "synth", "--preset", "drift", "--set", "num_users=400",
                           "--set", "items_per_category=20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = load_dataset(out)
    cfg = ds.meta["source"]["config"]
    assert cfg["num_users"] == 400 and cfg["item_arrival"] == 0.5 and cfg["interest_drift"] > 0
    assert ds.num_users == 400 and "arrival_ts" in ds.items.columns
    res = cli.invoke(app, ["data", "synth", "--preset", "drift", "--set", "item_arrival=1",
                           "--out", str(tmp_path / "bad")])
    # (main() turns the error into one line and status 2)
    assert isinstance(res.exception, MirecConfigError)
    assert str(res.exception) == "item_arrival: must be in [0, 1), got 1.0"
    assert not (tmp_path / "bad").exists()
    text = " ".join(cli.invoke(app, ["data", "synth", "--help"], terminal_width=150)
                    .output.replace("│", " ").split())
    for name in ("drift", "span_days", "item_arrival", "fresh_boost", "fresh_half_life_days",
                 "trend_period_days",
                 "interest_drift", "trend_share"):
        assert name in text, name
