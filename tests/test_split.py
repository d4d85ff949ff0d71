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
    assert run.metrics["hit_rate@50"] == run.metrics["recall@50"]  # one target a user
    assert mirec.evaluate(run=run.path).metrics == run.metrics  # the split is rebuilt from the run


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
