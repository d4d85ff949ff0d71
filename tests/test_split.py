"""The protocol's split: disjoint users, targets after history, determinism, windows."""

import numpy as np
import pytest

from mirec.data.split import Examples, SplitConfig, permutation, split_users, training_examples, windows
from mirec.errors import MirecConfigError
from tests.conftest import make_dataset


def test_users_disjoint_and_cover(random_dataset):
    sp = split_users(random_dataset, SplitConfig(seed=1))
    tr, va, te = set(sp.train_users), set(sp.valid.users), set(sp.test.users)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr) == 160 and len(va) == 20 and len(te) == 20
    assert tr | va | te == set(range(200))


def test_determinism_per_seed(random_dataset):
    a = split_users(random_dataset, SplitConfig(seed=7))
    b = split_users(random_dataset, SplitConfig(seed=7))
    c = split_users(random_dataset, SplitConfig(seed=8))
    assert np.array_equal(a.test.users, b.test.users)
    assert np.array_equal(a.examples[np.arange(a.num_examples)][1], b.examples[np.arange(b.num_examples)][1])
    assert not np.array_equal(a.test.users, c.test.users)


def test_training_examples_one_per_cut_point(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=1))
    lens = ds.offsets[sp.train_users + 1] - ds.offsets[sp.train_users]
    assert sp.num_examples == int((lens - 1).sum())
    # every target has its own user's start, and is not the user's first event
    start, pos = sp.examples[np.arange(sp.num_examples)]
    assert np.all(pos > start)
    assert np.all(ds.user[pos] == ds.user[start])
    assert pos.dtype == np.int64


def test_eval_targets_after_history(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=3))
    ev = sp.test
    n = ev.end - ev.hist_start
    assert np.array_equal(ev.cut - ev.hist_start, np.maximum(1, np.floor(0.8 * n)).astype(int))
    for j in range(len(ev)):
        hist_ts = ds.ts[ev.hist_start[j]:ev.cut[j]]
        tgt_ts = ds.ts[ev.cut[j]:ev.end[j]]
        assert hist_ts.max() <= tgt_ts.min()
        assert ds.user[ev.hist_start[j]] == ev.users[j] == ds.user[ev.end[j] - 1]


def test_windows_left_padded_and_truncated():
    item = np.array([10, 11, 12, 13, 14, 20, 21], dtype=np.int32)
    hist, mask = windows(item, np.array([0, 5]), np.array([4, 6]), max_len=3)
    assert hist.tolist() == [[11, 12, 13], [0, 0, 20]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


def test_leave_one_out_holds_out_each_users_last_two_items(tmp_path):
    from mirec.models.most_popular import MostPopular

    # user 0: items 1..5; user 1: 6, 7 (two events: a test target, no validation target); user 2: 8
    ds = make_dataset(tmp_path / "ds", [0] * 5 + [1] * 2 + [2], [1, 2, 3, 4, 5, 6, 7, 8], list(range(8)))
    sp = split_users(ds, SplitConfig(protocol="loo", max_len=3))
    item = lambda lo, hi: ds.item[lo:hi].tolist()  # noqa: E731
    raw = lambda ids: [int(ds.items["raw_id"][i - 1]) for i in ids]  # noqa: E731
    # test: every user with a history; target = the last item, history = everything before it
    assert [raw(item(s, c)) + [0] + raw(item(c, e)) for s, c, e in
            zip(sp.test.hist_start, sp.test.cut, sp.test.end)] == [[1, 2, 3, 4, 0, 5], [6, 0, 7]]
    assert [raw(item(c, e)) for c, e in zip(sp.valid.cut, sp.valid.end)] == [[4]]  # user 0 only
    # training: cut points before the held-out items; what is never a target (6: user 1's only
    # history item, 8: user 2's only event) is a training event
    assert sorted(raw(ds.item[sp.examples[np.arange(sp.num_examples)][1]].tolist())) == [2, 3]
    assert raw(ds.item[sp.train_events(ds.offsets)].tolist()) == [1, 2, 3, 6, 8]
    counts = MostPopular().fit(ds, sp).counts
    assert counts[ds.item[[ds.offsets[1] - 1, ds.offsets[1] - 2, ds.offsets[2] - 1]]].tolist() == [0, 0, 0]
    with pytest.raises(MirecConfigError, match="split.protocol"):
        SplitConfig(protocol="random").validate()


def test_comirec_protocol_train_events_are_the_training_users_events(random_dataset):
    sp = split_users(random_dataset, SplitConfig(seed=3))
    expected = np.isin(random_dataset.user, sp.train_users)
    np.testing.assert_array_equal(sp.train_events(random_dataset.offsets), expected)


def test_leave_one_out_runs_end_to_end(random_dataset, tmp_path):
    import mirec

    base = mirec.evaluate(model="most-popular", data=random_dataset, split={"protocol": "loo"})
    assert base.seeds[0].extra["num_test_users"] == random_dataset.num_users  # every user is tested
    run = mirec.fit(model="youtube-dnn", data=random_dataset, out=tmp_path / "r", seeds=[1], progress=False,
                    split={"protocol": "loo"}, train={"epochs": 2})
    assert run.seeds[0].extra["num_test_users"] == random_dataset.num_users
    for r in (base, run):  # the published tables' cut-offs, a baseline's as a trained run's
        assert {k for k in r.metrics if k.startswith("ndcg@")} == {"ndcg@5", "ndcg@10", "ndcg@20"}
    assert run.metrics["hit_rate@20"] == run.metrics["recall@20"]  # one target a user
    assert mirec.evaluate(run=run.path).metrics == run.metrics  # the split is rebuilt from the run


def test_the_best_epoch_is_the_one_train_select_names(random_dataset, tmp_path):
    """Leave-one-out picks the epoch of the best validation NDCG@10 (``train.select``), not the
    first cut-off's recall; another named metric picks by that one."""
    import json

    import mirec
    from mirec.checkpoint import load_checkpoint
    from mirec.config import load
    from mirec.runs import RunConfig
    from mirec.train.loop import selected_metric

    assert selected_metric(load(RunConfig, None, ["split.protocol=loo"])) == "ndcg@10"
    assert selected_metric(load(RunConfig, None, [])) == "recall@50"  # the ComiRec protocol's
    assert selected_metric(load(RunConfig, None, ["eval.ns=[5,10]"])) == "recall@5"
    with pytest.raises(MirecConfigError, match="train.select: ndcg@10 needs 10 among eval.ns"):
        selected_metric(load(RunConfig, None, ["split.protocol=loo", "eval.ns=[5]"]))
    with pytest.raises(MirecConfigError, match="train.select: expected auto or"):
        load(RunConfig, None, ["train.select=auc"]).train.validate()
    for select in ("auto", "hit_rate@20"):
        out = tmp_path / select.replace("@", "")
        train = {"epochs": 5, "patience": 5, "lr": 0.05}
        if select != "auto":
            train["select"] = select
        run = mirec.fit(model="youtube-dnn", data=random_dataset, out=out, seeds=[1], progress=False,
                        split={"protocol": "loo"}, train=train)
        rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
        name = "ndcg@10" if select == "auto" else select
        scores = [r["valid"][name] for r in rows]
        best = load_checkpoint(run.path / "best.pt")["epoch"]
        assert scores[best] == max(scores) and best == scores.index(max(scores))


@pytest.mark.parametrize("protocol", ["comirec", "loo"])
def test_examples_are_the_per_example_arrays_without_storing_them(random_dataset, protocol):
    """Examples (O(users)) gives exactly the (start, pos) pairs, in the same order, that the
    per-example arrays of training_examples (16 bytes an example) held, for any index batch."""
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=4, protocol=protocol))
    old_start, old_pos = training_examples(ds.offsets, sp.train_users, sp.train_end)
    assert sp.num_examples == len(old_pos) > 0
    idx = np.random.default_rng(0).permutation(len(old_pos))[:500]
    start, pos = sp.examples[idx]
    assert np.array_equal(start, old_start[idx]) and np.array_equal(pos, old_pos[idx])
    # the (history, target) pairs a training batch reads
    h_new, m_new = windows(ds.item, start, pos, 5)
    h_old, m_old = windows(ds.item, old_start[idx], old_pos[idx], 5)
    assert np.array_equal(h_new, h_old) and np.array_equal(m_new, m_old)
    assert np.array_equal(ds.item[pos], ds.item[old_pos[idx]])
    blocks = list(sp.examples.blocks(size=37))
    assert np.array_equal(np.concatenate([p for _, p in blocks]), old_pos)
    assert np.array_equal(sp.target_counts(ds.item, ds.num_items),
                          np.bincount(ds.item[old_pos], minlength=ds.num_items))
    # memory: two arrays per training user, none per example
    assert sp.examples.seq_start.nbytes + sp.examples.first.nbytes <= 16 * (len(sp.train_users) + 1)


def test_examples_skip_users_without_a_cut_point():
    """Sequences of length 0 or 1 have no example; the binary search never lands on them."""
    ex = Examples.of(np.array([0, 1, 1, 4, 9]), np.array([1, 1, 4, 9, 10]))  # lengths 1, 0, 3, 5, 1
    start, pos = ex[np.arange(len(ex))]
    assert len(ex) == 6
    assert start.tolist() == [1, 1, 4, 4, 4, 4] and pos.tolist() == [2, 3, 5, 6, 7, 8]


def test_permutation_is_rng_permutation_in_four_bytes():
    """The batch order of a seed is unchanged, and so is the generator afterwards."""
    for n in (1, 10, 100_003):
        a, b = np.random.default_rng(n), np.random.default_rng(n)
        perm = permutation(a, n)
        assert perm.dtype == np.int32
        assert np.array_equal(perm, b.permutation(n)) and a.random() == b.random()


# The time protocol. A hand-made log, (item, ts) per user (raw ids = dense ids: prepare numbers
# raw ids in sorted order). valid_from = 6, test_from = 8:
#   training events (ts < 6): user 1: 1 2 3; user 2: 2 1; user 4: 1 2 6 7; user 5: 2 1 3 6 2 3
#   -> training catalogue {1, 2, 3, 6, 7}; new items 4, 5 (first seen at 7) and 8 (at 10)
#   validation rows (6 <= ts < 8): user 1's 4@7 (new), user 2's 3@6; user 3's 5@7 has no
#   earlier event: no row
#   test rows (ts >= 8): user 1's 6@9, user 2's 7@8, user 3's 8@10 (new) and 3@11
TIME_LOG = {1: [(1, 1), (2, 2), (3, 3), (4, 7), (6, 9)],
            2: [(2, 2), (1, 4), (3, 6), (7, 8)],
            3: [(5, 7), (8, 10), (3, 11)],
            4: [(1, 1), (2, 3), (6, 4), (7, 5)],
            5: [(2, 1), (1, 2), (3, 3), (6, 4), (2, 5), (3, 5)]}


def time_log_dataset(path):
    users, items, ts = zip(*[(u, i, t) for u, events in TIME_LOG.items() for i, t in events])
    return make_dataset(path, list(users), list(items), list(ts))


def test_time_protocol_by_hand(tmp_path):
    from mirec.models.item_cf import ItemCF
    from mirec.models.most_popular import MostPopular

    ds = time_log_dataset(tmp_path / "ds")
    assert ds.items["raw_id"].to_list() == [str(i) for i in range(1, 9)]  # item id = raw id
    sp = split_users(ds, SplitConfig(protocol="time", valid_from=6, test_from=8))
    assert sp.time_cuts == (6, 8)
    # training examples: every cut point of the events before 6 (2 + 1 + 0 + 3 + 5)
    start, pos = sp.examples[np.arange(sp.num_examples)]
    assert sp.num_examples == 11
    assert ds.item[pos].tolist() == [2, 3, 1, 2, 6, 7, 1, 3, 6, 2, 3]
    assert ds.ts[pos].max() == 5
    assert np.array_equal(sp.train_events(ds.offsets), ds.ts < 6)
    # rows: one per window event with an earlier event of its user; history = all before it
    rows = lambda ev: [(int(ds.users["raw_id"][int(u)]), ds.item[s:c].tolist(), ds.item[c:e].tolist())  # noqa: E731
                       for u, s, c, e in zip(ev.users, ev.hist_start, ev.cut, ev.end)]
    assert rows(sp.valid) == [(1, [1, 2, 3], [4]), (2, [2, 1], [3])]
    assert rows(sp.test) == [(1, [1, 2, 3, 4], [6]), (2, [2, 1, 3], [7]), (3, [5], [8]), (3, [5, 8], [3])]
    assert sp.valid.new_items.tolist() == sp.test.new_items.tolist() == [4, 5, 8]
    assert sp.test.select(np.array([2, 3])).new_items.tolist() == [4, 5, 8]  # kept by select
    # MostPopular counts the training events only (later events would make 3 and 6 commoner);
    # ItemCF the users holding both items among them: 1 and 2 (users 1, 2, 4, 5), 3 and 6
    # (user 5; user 1's 6 comes at 9), nothing with a new item
    assert MostPopular().fit(ds, sp).counts.tolist() == [0, 4, 5, 3, 0, 0, 2, 1, 0]
    sim = ItemCF().fit(ds, sp).sim
    assert (sim[1, 2], sim[3, 6], sim[1, 7], sim[2, 3]) == (4, 1, 1, 2)
    assert not sim[[4, 5, 8]].any() and not sim[:, [4, 5, 8]].any()
    # the split does not depend on the seed
    other = split_users(ds, SplitConfig(protocol="time", valid_from=6, test_from=8, seed=99))
    assert np.array_equal(other.test.cut, sp.test.cut) and other.num_examples == sp.num_examples


def test_time_protocol_fractions_are_points_of_the_event_timeline(tmp_path):
    # 10 events at ts 10, 20, ..., 100 over two users: fraction f cuts at event floor(10 f)
    ds = make_dataset(tmp_path / "ds", [0] * 5 + [1] * 5, [1, 2, 3, 4, 5, 1, 2, 3, 4, 5],
                      [10, 30, 50, 70, 90, 20, 40, 60, 80, 100])
    sp = split_users(ds, SplitConfig(protocol="time", valid_from=0.6, test_from=0.8))
    assert sp.time_cuts == (70, 90)  # 6 events before 70, 8 before 90
    assert int(sp.train_events(ds.offsets).sum()) == 6
    assert ds.ts[sp.valid.cut].tolist() == [70, 80] and ds.ts[sp.test.cut].tolist() == [90, 100]
    # a fraction and a timestamp together; a timestamp between events (rounded up: ts < 65.5)
    sp = split_users(ds, SplitConfig(protocol="time", valid_from=65.5, test_from=0.9))
    assert sp.time_cuts == (66, 100)
    assert int(sp.train_events(ds.offsets).sum()) == 6
    # ties: 0.5 points at the 6th event (ts 40, as are the 4th and 5th): 3 events lie before it
    tied = make_dataset(tmp_path / "tied", [0] * 5 + [1] * 5, [1, 2, 3, 4, 5, 1, 2, 3, 4, 5],
                        [10, 20, 40, 40, 50, 30, 40, 60, 70, 80])
    sp = split_users(tied, SplitConfig(protocol="time", valid_from=0.5, test_from=0.8))
    assert sp.time_cuts == (40, 70) and int(sp.train_events(tied.offsets).sum()) == 3


@pytest.mark.parametrize("settings, key", [
    ({"valid_from": 0.9, "test_from": 0.8}, "split.valid_from: must be before split.test_from"),
    ({"valid_from": 500, "test_from": 500}, "split.valid_from: must be before split.test_from"),
    ({"valid_from": 0.0}, "split.valid_from: expected a fraction"),
    ({"test_from": -3}, "split.test_from: expected a fraction"),
    ({"test_from": float("nan")}, "split.test_from: .*finite"),  # the general finiteness check
])
def test_time_protocol_config_errors_name_the_key(settings, key):
    from mirec.config import load

    with pytest.raises(MirecConfigError, match=key):
        SplitConfig(protocol="time", **settings).validate()
    # the same through --set (strings), as the CLI gives them
    with pytest.raises(MirecConfigError, match=key):
        load(SplitConfig, None, ["protocol=time"] + [f"{k}={v}" for k, v in settings.items()])


def test_time_protocol_errors_on_the_data(tmp_path):
    ds = time_log_dataset(tmp_path / "ds")
    # a fraction and a timestamp that land on the same time (0.5 -> the 11th of 22 events, ts 4)
    with pytest.raises(MirecConfigError, match=r"split.valid_from: resolves to ts 4, not before "
                                               r"split.test_from's 4"):
        split_users(ds, SplitConfig(protocol="time", valid_from=0.5, test_from=4))
    with pytest.raises(MirecConfigError, match="split.valid_from: no event happens before it"):
        split_users(ds, SplitConfig(protocol="time", valid_from=1, test_from=8))


def test_time_protocol_refuses_a_log_without_times(tmp_path):
    from mirec.data.sequences import load_sequences
    from tests.conftest import prepare_small, write_lines

    seq = write_lines(tmp_path / "seq.txt", ["u1 a b c d", "u2 b c d e", "u3 a c e"])
    ds = prepare_small(load_sequences(seq), tmp_path)
    with pytest.raises(MirecConfigError, match="split.protocol: time needs event timestamps; .* "
                                               "sequences without times"):
        split_users(ds, SplitConfig(protocol="time"))
    split_users(ds, SplitConfig(protocol="loo"))  # the other protocols need no times


def memory_dataset(users, items, ts):
    """A Dataset in memory (no files) from parallel event lists, sorted as prepare sorts them."""
    import polars as pl

    from mirec.data.dataset import Dataset

    users, items, ts = (np.asarray(a, dtype=np.int64) for a in (users, items, ts))
    order = np.lexsort((ts, users))  # by user, then time; ties in list order
    user_ids, user = np.unique(users[order], return_inverse=True)
    item_ids, item = np.unique(items[order], return_inverse=True)
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user), out=offsets[1:])
    frame = lambda ids, name: pl.DataFrame({name: np.arange(len(ids)), "raw_id": ids.astype(str)})  # noqa: E731
    return Dataset(path=None, meta={"source": {"name": "test"}}, user=user.astype(np.int32),
                   item=(item + 1).astype(np.int32), ts=ts[order], offsets=offsets,
                   items=frame(item_ids, "item"), users=frame(user_ids, "user"))


@pytest.mark.filterwarnings("ignore")
def test_time_protocol_never_trains_on_the_windows_property():
    """Over random logs and cut points: no training example's target (nor any training event)
    has ts >= valid_from; every window event with an earlier event of its user is exactly one
    validation or test row, scored from all of that user's earlier events; the new items are
    those without an event before valid_from."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    events = st.lists(st.tuples(st.integers(0, 5), st.integers(1, 9), st.integers(0, 30)),
                      min_size=2, max_size=60)
    cut = st.one_of(st.floats(0.01, 0.99), st.integers(1, 30).map(float))

    split_logs = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(events, cut, cut)
    def check(log, a, b):
        if (a < 1) == (b < 1):  # two of a kind: in order (a fraction and a timestamp: as drawn)
            a, b = min(a, b), max(a, b)
        ds = memory_dataset(*zip(*log))
        try:
            sp = split_users(ds, SplitConfig(protocol="time", valid_from=a, test_from=b))
        except MirecConfigError as e:  # an empty validation window or no event before valid_from
            assert "split.valid_from" in str(e)
            return
        split_logs.append(log)
        vf, tf = sp.time_cuts
        start, pos = sp.examples[np.arange(sp.num_examples)]
        assert np.all(ds.ts[pos] < vf) and np.all(ds.user[start] == ds.user[pos]) and np.all(pos > start)
        train = sp.train_events(ds.offsets)
        assert np.array_equal(train, ds.ts < vf)
        assert sp.num_examples == sum(max(int(n) - 1, 0) for n in np.bincount(ds.user[train]))
        first = np.r_[True, ds.user[1:] != ds.user[:-1]]  # a user's first event: no row
        for rows, window in ((sp.valid, (ds.ts >= vf) & (ds.ts < tf)), (sp.test, ds.ts >= tf)):
            assert rows.cut.tolist() == np.flatnonzero(window & ~first).tolist()
            assert np.array_equal(rows.end, rows.cut + 1)
            assert np.array_equal(rows.hist_start, ds.offsets[rows.users])
            assert np.array_equal(ds.user[rows.cut], rows.users)
        assert sp.test.new_items.tolist() == sorted(set(range(1, ds.num_items)) - set(ds.item[train].tolist()))

    check()
    assert len(split_logs) > 20  # many drawn logs split (the others are checked errors; derandomized: 28)
