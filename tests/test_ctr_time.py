"""The ranking task (--task ctr) under the time protocol (split.protocol=time), on test_split's
hand-made log.

TIME_LOG with valid_from = 6, test_from = 8 (see tests/test_split.py):
  training events (ts < 6): user 1: 1 2 3; user 2: 2 1; user 4: 1 2 6 7; user 5: 2 1 3 6 2 3
    -> 15 events, the training catalogue {1, 2, 3, 6, 7}
  validation window rows: user 1's 4@7 (a new item: left out), user 2's 3@6 (kept); user 3's
    5@7 has no earlier event (no row) -> 1 example event, new_item_share 1/2
  test window rows: user 1's 6@9, user 2's 7@8, user 3's 8@10 (new: left out) and 3@11
    -> 3 example events, new_item_share 1/4
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mirec.cli import app
from mirec.config import load
from mirec.data.ctr import TEST, TRAIN, VALID, CTRConfig, RankSplitConfig, build_ctr
from mirec.data.split import SplitConfig
from mirec.errors import MirecConfigError
from mirec.eval.pipeline import check_split
from mirec.runs import RankRunConfig
from tests.test_split import time_log_dataset

torch.set_num_threads(1)

CUTS = ["split.protocol=time", "split.valid_from=6", "split.test_from=8"]


@pytest.fixture
def ds(tmp_path):
    return time_log_dataset(tmp_path / "ds")


def events(data, part, label=1.0):
    """(raw user, item, ts, history items) of the examples of ``part`` with ``label``."""
    idx = data.indices(part)
    idx = idx[data.label[idx] == label]
    return [(int(data.user_raw_ids[data.user[j]]), int(data.item[j]), int(data.ts[j]),
             data.pos_item[data.hist_start[j]:data.hist_stop[j]].tolist()) for j in idx]


def test_time_protocol_examples_by_hand(ds):
    data = build_ctr(ds, CTRConfig(negatives=2, seed=3), split=RankSplitConfig("time", 6, 8))
    assert data.time_cuts == (6, 8)
    # training: the 15 events before valid_from, each with its 2 negatives; none at or after it
    train = events(data, TRAIN)
    assert len(train) == 15 and len(data.indices(TRAIN)) == 45
    assert data.ts[data.indices(TRAIN)].max() == 5
    assert sorted((u, i, t) for u, i, t, _ in train) == sorted(
        (u, i, t) for u, evs in {1: [(1, 1), (2, 2), (3, 3)], 2: [(2, 2), (1, 4)],
                                 4: [(1, 1), (2, 3), (6, 4), (7, 5)],
                                 5: [(2, 1), (1, 2), (3, 3), (6, 4), (2, 5), (3, 5)]}.items()
        for i, t in evs)
    # validation and test: exactly the window rows of known items, history = every earlier event
    assert events(data, VALID) == [(2, 3, 6, [2, 1])]
    assert sorted(events(data, TEST)) == [(1, 6, 9, [1, 2, 3, 4]), (2, 7, 8, [2, 1, 3]), (3, 3, 11, [5, 8])]
    assert len(data.indices(VALID)) == 3 and len(data.indices(TEST)) == 9
    # the new items' events are left out and counted
    assert data.new_item_share == {VALID: 0.5, TEST: 0.25}
    assert not np.isin(data.item, [4, 5, 8]).any()
    # negatives: from the training catalogue, never their positive, in their positive's part
    neg = data.label == 0
    assert set(data.item[neg].tolist()) <= {1, 2, 3, 6, 7}
    positive = {(u, stop): (i, p) for u, stop, i, p in zip(data.user[~neg], data.hist_stop[~neg],
                                                           data.item[~neg], data.part[~neg])}
    assert len(positive) == 19
    for u, stop, i, p in zip(data.user[neg], data.hist_stop[neg], data.item[neg], data.part[neg]):
        assert positive[u, stop][0] != i and positive[u, stop][1] == p


def test_time_protocol_with_ratings_keeps_their_labels(tmp_path):
    from tests.test_ranking import toy_dataset

    ds = toy_dataset(tmp_path)  # 30 users x 20 events at ts 0..19, ratings 5 or 1
    data = build_ctr(ds, CTRConfig(), split=RankSplitConfig("time", 14, 17))
    assert data.sampled_negatives == 0
    # every event is an example: before 14 training, 14..16 validation, 17.. test (all items seen)
    for part, lo, hi in ((TRAIN, 0, 14), (VALID, 14, 17), (TEST, 17, 20)):
        idx = data.indices(part)
        assert len(idx) == 30 * (hi - lo) and data.ts[idx].min() == lo and data.ts[idx].max() == hi - 1
    assert np.array_equal(data.label, (ds.rating >= 4).astype(np.float32))


@pytest.mark.parametrize("sets, field", [
    (["split.protocol=loo"], "split.protocol"),
    (["split.protocol=comirec"], "split.protocol"),
    (["split.seed=3"], "split.seed"),
    (["split.protocol=time", "split.valid_from=0.9", "split.test_from=0.5"], "split.valid_from"),
    (["split.protocol=time", "cand.run=runs/x"], "split.protocol"),
])
def test_protocols_that_make_no_sense_for_ranking_are_refused(sets, field):
    with pytest.raises(MirecConfigError, match=f"^{field}: ") as e:
        load(RankRunConfig, None, sets)
    assert "\n" not in str(e.value)


def test_cuts_without_a_validation_example_are_refused(ds):
    # [7, 8): user 1's 4@7 is a new item, user 3's 5@7 its first event: nothing to validate on
    with pytest.raises(MirecConfigError, match="^split.valid_from: no validation example"):
        build_ctr(ds, CTRConfig(), split=RankSplitConfig("time", 7, 8))


@pytest.mark.parametrize("model", ["din", "dien", "mimn", "embedding-mlp"])
def test_cli_trains_a_ranker_under_the_time_protocol(ds, tmp_path, model):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--task", "ctr", "--model", model, "--data", str(ds.path),
                                 "--out", str(out), "--seeds", "1",
                                 *[x for s in [*CUTS, "train.epochs=1", "model_args.dim=4",
                                               "model_args.hidden=[8]"] for x in ("--set", s)]])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["protocol"]["split_protocol"] == "time"
    assert (doc["protocol"]["valid_from"], doc["protocol"]["test_from"]) == (6, 8)
    assert doc["per_seed"][0]["time_cuts"] == {"valid_from": 6, "test_from": 8}
    assert doc["per_seed"][0]["test_examples"] == 3 * 2  # 3 test events, 1 negative each
    assert doc["metrics"]["new_item_share"] == 0.25 and doc["valid"]["new_item_share"] == 0.5
    assert 0 <= doc["metrics"]["auc"] <= 1
    assert doc["config"]["split"] == {"protocol": "time", "valid_from": 6, "test_from": 8}


def test_pipeline_pairs_a_time_split_retriever_only_with_a_ranker_of_its_cuts(ds):
    time = SplitConfig(protocol="time", valid_from=6, test_from=8)
    other = load(RankRunConfig, None, ["split.protocol=time", "split.valid_from=5", "split.test_from=8"])
    with pytest.raises(MirecConfigError, match="^split.valid_from: the ranker r was trained with time cuts "
                                               "at ts 5, 8, the retrieval run at 6, 8"):
        check_split(ds, time, other, "r")
    # the same cuts, one as a fraction: 0.7 of the 22 events is event 15 in time order, ts 6
    same = load(RankRunConfig, None, ["split.protocol=time", "split.valid_from=0.7", "split.test_from=8"])
    check_split(ds, time, same, "r")
    with pytest.raises(MirecConfigError, match="^split.protocol: the retrieval run is under time, the ranker r "
                                               "under per-user"):
        check_split(ds, time, RankRunConfig(), "r")
    with pytest.raises(MirecConfigError, match="^split.protocol: the retrieval run is under comirec"):
        check_split(ds, SplitConfig(), load(RankRunConfig, None, CUTS), "r")
    check_split(ds, SplitConfig(), RankRunConfig(), "r")  # as before


def test_pipeline_evaluation_under_the_time_protocol_end_to_end(ds, tmp_path):
    import mirec

    cuts = {"split.protocol": "time", "split.valid_from": 6, "split.test_from": 8}
    small = {"train.epochs": 1, "model_args.dim": 8}
    mirec.fit(model="comirec-sa", data=ds.path, out=tmp_path / "ret", seeds=[1], progress=False,
              **cuts, **small, **{"model_args.num_interests": 2, "eval.ns": "[2,4]"})
    mirec.fit(model="din", data=ds.path, out=tmp_path / "rank", seeds=[1], progress=False, **cuts, **small)
    doc = mirec.evaluate(run=tmp_path / "ret", ranker=tmp_path / "rank").doc
    assert doc["per_seed"][0]["test_users"] == 4  # the test rows: new-item targets are misses
    assert 0 <= doc["pipeline"]["recall@4"] <= 0.75  # 1 of the 4 targets is a new item
    # retrieval alone through the served path reproduces the time protocol's evaluation
    protocol = json.loads((tmp_path / "ret" / "results.json").read_text())["metrics"]
    assert set(doc["pipeline"]) == set(doc["retrieval"]) == set(protocol)
    assert doc["pipeline"]["new_item_share"] == 0.25
    for k, v in protocol.items():
        assert doc["retrieval"][k] == pytest.approx(v, abs=1e-6), k
    mirec.fit(model="din", data=ds.path, out=tmp_path / "user", seeds=[1], progress=False, **small)
    with pytest.raises(MirecConfigError, match="^split.protocol: the retrieval run is under time"):
        mirec.evaluate(run=tmp_path / "ret", ranker=tmp_path / "user")
