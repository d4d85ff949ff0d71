"""The protocol's split: disjoint users, targets after history, determinism, windows."""

import numpy as np

from mirec.data.split import SplitConfig, split_users, windows


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
    assert np.array_equal(a.example_pos, b.example_pos)
    assert not np.array_equal(a.test.users, c.test.users)


def test_training_examples_one_per_cut_point(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=1))
    lens = ds.offsets[sp.train_users + 1] - ds.offsets[sp.train_users]
    assert sp.num_examples == int((lens - 1).sum())
    # every target has its own user's start, and is not the user's first event
    assert np.all(sp.example_pos > sp.example_start)
    assert np.all(ds.user[sp.example_pos] == ds.user[sp.example_start])
    assert sp.example_pos.dtype == np.int64


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
