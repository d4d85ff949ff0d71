"""The evaluation loop: exclusion of history items, exact top-N, MostPopular, results.json."""

import json

import numpy as np
import pytest

from mirec.data.split import SplitConfig, split_users
from mirec.eval.evaluate import EvalConfig, evaluate, rank_topn
from mirec.experiment import evaluate_baseline
from mirec.models.most_popular import MostPopular


class Oracle:
    """Scores each user's own future targets highest (reads them from the data set)."""

    def __init__(self, ds, users):
        self.ds, self.users, self.calls = ds, users, 0

    def score(self, hist, mask):
        b = self.users.select(slice(self.calls, self.calls + len(hist)))
        self.calls += len(hist)
        s = np.zeros((len(hist), self.ds.num_items), dtype=np.float32)
        for j in range(len(b)):
            s[j, self.ds.item[b.cut[j]:b.end[j]]] = 1.0
        return s


def test_oracle_gets_perfect_recall(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    res = evaluate(Oracle(ds, sp.test), ds, sp.test, 20, EvalConfig(ns=(50,), batch_size=7))
    assert res.metrics["recall@50"] == pytest.approx(1.0)
    assert res.metrics["hit_rate@50"] == pytest.approx(1.0)


def test_history_items_and_padding_never_ranked(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    mp = MostPopular().fit(ds, sp)
    topn = rank_topn(mp, ds, sp.test, 20, 20, exclude_history=True, batch_size=8)
    for j in range(len(sp.test)):
        history = set(ds.item[sp.test.hist_start[j]:sp.test.cut[j]].tolist())
        assert not history & set(topn[j].tolist())
        assert 0 not in topn[j]
        assert len(set(topn[j].tolist())) == 20
    # without exclusion, the most popular item leads every list
    topn_all = rank_topn(mp, ds, sp.test, 20, 20, exclude_history=False)
    assert np.all(topn_all[:, 0] == np.argmax(mp.counts[1:]) + 1)


def test_topn_is_sorted_by_score(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    mp = MostPopular().fit(ds, sp)
    topn = rank_topn(mp, ds, sp.test, 30, 20)
    assert np.all(np.diff(mp.counts[topn], axis=1) <= 0)


def test_most_popular_counts_training_users_only(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    mp = MostPopular().fit(ds, sp)
    train = np.isin(ds.user, sp.train_users)
    assert mp.counts.sum() == train.sum()
    assert np.array_equal(mp.counts, np.bincount(ds.item[train], minlength=ds.num_items))


def test_results_json_with_several_seeds(random_dataset, tmp_path):
    run = evaluate_baseline("most-popular", random_dataset, [1, 2, 3], out=tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["seeds"] == [1, 2, 3]
    per_seed = [s["test"]["recall@50"] for s in res["per_seed"]]
    assert res["metrics"]["recall@50"] == pytest.approx(np.mean(per_seed))
    assert res["std"]["recall@50"] == pytest.approx(np.std(per_seed))
    assert res["dataset_checksum"] == random_dataset.checksum
    assert res["protocol"]["split"]["max_len"] == 20
    assert "mirec_version" in res and res["wall_seconds"] >= 0
    assert run.mean["recall@50"] == res["metrics"]["recall@50"]
