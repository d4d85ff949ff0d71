"""Rankers trained on a retrieval run's own candidates: the data follows the protocol's leakage
rules, training and serving compute the same features, the ranker only reorders what retrieval
found, resuming equals an uninterrupted run, and the pipeline evaluation reports both stages."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import mirec
from mirec.config import load
from mirec.data.cand_features import ItemWindow, user_features
from mirec.data.ctr import TRAIN, VALID
from mirec.data.dataset import load_dataset
from mirec.data.split import split_users
from mirec.data.synth import SynthConfig, synth_dataset
from mirec.errors import MirecDataError
from mirec.runs import RankRunConfig
from mirec.serve.bundle import bundle_from_run, load_bundle
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.pipeline import RankStage
from mirec.serve.recommender import Recommender, ServeConfig
from mirec.train.candidates import CandidateSearch, build_candidate_data, check_leakage, retrieval_seed_run

CAND = {"cand.m": 8, "cand.negatives": 4, "cand.examples_per_user": 3}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(num_users=120, num_categories=4, items_per_category=20, min_len=8, mean_len=12, seed=2)
    return load_dataset(synth_dataset(cfg, tmp_path_factory.mktemp("s") / "ds", progress=False))


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory):
    """A 2-seed retrieval run and the DIN ranker trained on its candidates."""
    root = tmp_path_factory.mktemp("runs")
    small = {"train.epochs": 1, "model_args.dim": 8, "model_args.num_interests": 2}
    mirec.fit(model="comirec-sa", data=synth, out=root / "ret", seeds=[1, 2], progress=False, **small)
    mirec.fit(model="din", data=synth, out=root / "rank", seeds=[1, 2], progress=False,
              candidates=root / "ret", **{"train.epochs": 1, "model_args.dim": 8, **CAND})
    return root / "ret", root / "rank"


def cand_cfg(ret) -> RankRunConfig:
    return load(RankRunConfig, None, [f"cand.run={ret}", *(f"{k}={v}" for k, v in CAND.items())])


def test_candidate_data_follows_the_retrieval_split(runs):
    ret, _ = runs
    run = retrieval_seed_run(ret, 2)
    split = split_users(run.dataset, run.config.split)
    data = build_candidate_data(cand_cfg(ret), run)
    check_leakage(data, run.dataset, split)
    assert not np.isin(data.user, split.test.users).any()
    # training states: validation users' history parts (cand.states=valid), never a target
    tr = data.part == TRAIN
    assert set(data.user[tr]) == set(split.valid.users)
    cut = dict(zip(split.valid.users.tolist(), split.valid.cut.tolist()))
    assert all(s < cut[u] for u, s in zip(data.user[tr], data.source[tr]))
    assert set(data.user[data.part == VALID]) == set(split.valid.users)
    # one positive per state: the real next item; negatives are neither it nor a history item
    pos = data.label == 1
    assert np.array_equal(data.item[pos], run.dataset.item[data.source[pos]])
    for j in np.flatnonzero(~pos)[:200]:
        hist = run.dataset.item[data.hist_start[j]:data.hist_stop[j]]
        assert data.item[j] != run.dataset.item[data.source[j]] and data.item[j] not in hist
    assert data.dense.shape == (len(data.item), data.features.num_dense)


def test_a_planted_held_out_target_fails_the_leakage_check(runs):
    ret, _ = runs
    run = retrieval_seed_run(ret, 1)
    ds, split = run.dataset, split_users(run.dataset, run.config.split)
    clean = build_candidate_data(cand_cfg(ret), run)
    check_leakage(clean, ds, split)
    t = split.test
    # a test user's held-out target as a training positive, with the user's history before it
    planted = dataclasses.replace(clean, user=np.r_[clean.user, t.users[0]],
                                  item=np.r_[clean.item, ds.item[t.cut[0]]],
                                  label=np.r_[clean.label, 1.0], part=np.r_[clean.part, TRAIN],
                                  hist_start=np.r_[clean.hist_start, t.hist_start[0]],
                                  hist_stop=np.r_[clean.hist_stop, t.cut[0]], source=np.r_[clean.source, t.cut[0]])
    with pytest.raises(MirecDataError, match="test user"):
        check_leakage(planted, ds, split)
    # a validation example whose history runs into the user's targets
    j = np.flatnonzero(clean.part == VALID)[0]
    stop = clean.hist_stop.copy()
    stop[j] += 1
    with pytest.raises(MirecDataError, match="validation example whose history"):
        check_leakage(dataclasses.replace(clean, hist_stop=stop), ds, split)
    # item statistics that count a held-out target
    count = np.array(clean.features.window["count"])
    count[ds.item[t.cut[0]]] += 1
    feats = dataclasses.replace(clean.features, window={**clean.features.window, "count": count})
    with pytest.raises(MirecDataError, match="outside the training window"):
        check_leakage(dataclasses.replace(clean, features=feats), ds, split)


def test_item_window_leaves_out_the_users_own_events():
    # item 1: user 0 at t=5, user 1 at t=9; item 2: user 1 only, at t=3 and t=7
    w = ItemWindow.of(np.array([0, 1, 1, 1]), np.array([1, 1, 2, 2]), np.array([5, 9, 3, 7]), num_items=4)
    assert w.count.tolist() == [0, 2, 2, 0] and (w.start, w.end) == (3, 9)
    cats = np.array([0, 0, 1, 2, 3]), np.array([0, 1, 0])  # item 1: c0; item 2: c1; item 3: c0
    f = user_features(np.array([1, 2, 3]), hist=np.array([2]), own=np.array([2, 1, 2]), user=1, window=w,
                      cat_indptr=cats[0], cat_ids=cats[1])
    # popularity by others: item 1 has user 0's event; item 2 only user 1's own
    np.testing.assert_allclose(f[:, 0], np.log1p([1, 0, 0]))
    # age: item 1's last event is user 1's (t=9): user 0's at t=5 counts, 9 - 5; item 2 and 3:
    # no other user's event -> the window's span + 1
    np.testing.assert_allclose(f[:, 1], np.log1p([4, 7, 7]))
    # category gap: the last history item (2) is in c1 -> item 2 gap 0; items 1 and 3 (c0): none
    assert f[:, 3].tolist() == [1, 0, 1] and f[1, 2] == 0
    np.testing.assert_allclose(f[:, 4], np.log1p(1))


def test_serving_computes_the_training_features(runs):
    """For each validation user, the features serving computes from the live history equal the
    training data's for the same candidates."""
    ret, rank = runs
    run = retrieval_seed_run(ret, 1)
    data = build_candidate_data(cand_cfg(ret), run)
    bundle, ds = bundle_from_run(ret / "seed-1")
    stage = RankStage.from_run(rank / "seed-1", bundle)
    assert stage.uses_candidates
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")), ranker=stage)
    compared = 0
    raw = ds.users["raw_id"].cast(str).to_list()
    for j in np.flatnonzero((data.part == VALID) & (data.label == 1))[:10]:
        u, stop = int(data.user[j]), int(data.hist_stop[j])
        hist = ds.item[ds.offsets[u]:stop].tolist()
        V, live, _, _ = rec.interests(hist)
        cand, f, k = rec.retrieve(V, live, hist, CAND["cand.m"])
        served = stage.dense(stage.user_index[raw[u]], hist, cand, f, k, len(V))
        rows = np.flatnonzero((data.user == u) & (data.hist_stop == stop))
        for r in rows:
            at = np.flatnonzero(cand == data.item[r])
            if len(at):
                np.testing.assert_allclose(served[at[0]], data.dense[r], rtol=1e-5, atol=1e-5)
                compared += 1
    assert compared >= 10


def test_the_ranker_only_reorders_retrieved_candidates(runs):
    ret, rank = runs
    bundle, ds = bundle_from_run(ret / "seed-2")
    stage = RankStage.from_run(rank / "seed-2", bundle)
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")), ranker=stage)
    user = next(iter(bundle.user_histories))
    hist = bundle.user_histories[user].tolist()
    V, live, _, _ = rec.interests(hist)
    cand, _, _ = rec.retrieve(V, live, hist, rec.cfg.candidates_per_interest)
    plain = rec.recommend(user_id=user, n=len(cand))
    ranked = rec.recommend(user_id=user, n=len(cand), rank=True)
    assert ranked.ranked and sorted(r.item for r in ranked.items) == sorted(cand.tolist())
    assert sorted(r.item for r in plain.items) == sorted(cand.tolist())
    top = rec.recommend(user_id=user, n=5, rank=True, diversity=0.5)
    assert {r.item for r in top.items} <= set(cand.tolist())


def test_the_ranker_scores_only_the_top_r_candidates_by_f_with_their_union_features(runs):
    ret, rank = runs
    bundle, _ = bundle_from_run(ret / "seed-1")
    stage = RankStage.from_run(rank / "seed-1", bundle)
    R = 10
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")),
                      cfg=ServeConfig(rank_candidates=R), ranker=stage)
    user = next(iter(bundle.user_histories))
    hist = bundle.user_histories[user].tolist()
    V, live, _, _ = rec.interests(hist)
    cand, f, k = rec.retrieve(V, live, hist, rec.cfg.candidates_per_interest)
    assert len(cand) > 2 * R
    seen = []
    score = stage.score
    stage.score = lambda u, h, c, ff, kk, K: seen.append(np.asarray(c).copy()) or score(u, h, c, ff, kk, K)
    got = rec.recommend(user_id=user, n=5, rank=True)
    top = cand[np.argsort(-f, kind="stable")[:R]]
    assert len(seen) == 1 and sorted(seen[0].tolist()) == sorted(top.tolist())
    assert {r.item for r in got.items} <= set(top.tolist())
    # what the kept candidates' features would be over the whole union: the same
    keep = np.isin(cand, top)
    whole = stage.dense(-1, hist, cand, f, k, len(V))[keep]
    np.testing.assert_allclose(stage.dense(-1, hist, cand[keep], f[keep], k[keep], len(V)), whole)


def test_candidate_negatives_come_from_the_top_r_the_server_ranks(runs):
    """cand.top: the negatives drawn from the candidates are among the top R by f, the set a
    served ranker reorders (ServeConfig.rank_candidates)."""
    ret, _ = runs
    run = retrieval_seed_run(ret, 1)
    ds, R = run.dataset, 3
    # two negatives a positive: the top 3 minus the positive still hold them (a shortfall is
    # drawn uniformly)
    cfg = load(RankRunConfig, None, [f"cand.run={ret}", *(f"{k}={v}" for k, v in CAND.items()),
                                     f"cand.top={R}", "cand.random_share=0", "cand.negatives=2"])
    data = build_candidate_data(cfg, run)
    search = CandidateSearch(run, cfg.cand.m)
    neg = data.label == 0
    states = sorted(set(zip(data.user[neg].tolist(), data.hist_stop[neg].tolist())))
    wider = 0
    for u, stop in states[:40]:
        got = search.search(ds.item, ds.offsets[[u]], np.array([stop]))[0]
        wider += len(got.cand) > R
        top = set(got.top(R).cand.tolist())
        rows = neg & (data.user == u) & (data.hist_stop == stop)
        assert set(data.item[rows].tolist()) <= top
    assert wider > 0  # the union was larger than R: the restriction was exercised


def test_resume_equals_uninterrupted_on_candidate_data(runs, tmp_path):
    from mirec.train.candidates import candidate_data
    from mirec.train.ctr import train_ctr

    ret, _ = runs
    cfg = load(RankRunConfig, None, [f"cand.run={ret}", "train.epochs=2", "model_args.dim=8",
                                     "model_args.use_user_id=false", *(f"{k}={v}" for k, v in CAND.items())])
    whole = train_ctr(cfg, candidate_data(cfg, 1)[0], tmp_path / "a", progress=False)
    train_ctr(cfg, candidate_data(cfg, 1)[0], tmp_path / "b", progress=False, stop_after_epoch=0)
    resumed = train_ctr(cfg, candidate_data(cfg, 1)[0], tmp_path / "b", progress=False, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_evaluate_pipeline_reports_both_stages_with_the_protocols_keys(runs, tmp_path):
    ret, rank = runs
    out = tmp_path / "pipe"
    r = mirec.evaluate(run=ret, ranker=rank, out=out)
    doc = json.loads((out / "results.json").read_text())
    protocol = json.loads((ret / "results.json").read_text())["metrics"]
    for key in ("retrieval", "pipeline", "retrieval_std", "pipeline_std"):
        assert set(doc[key]) == set(protocol), key
    assert doc["seeds"] == [1, 2] and doc == json.loads(json.dumps(r.doc))
    # retrieval alone through the served path reproduces the protocol's evaluation
    for k, v in protocol.items():
        assert doc["retrieval"][k] == pytest.approx(v, abs=1e-6), k


def test_diversity_report_with_a_ranker_sweeps_the_full_pipeline(runs, tmp_path):
    from mirec.eval.diversity import diversity_report

    ret, rank = runs
    r = diversity_report(ret / "seed-1", [0.0, 1.0], tmp_path, ranker=rank / "seed-1")
    doc = mirec.evaluate(run=ret / "seed-1", ranker=rank / "seed-1").doc
    # lambda 0 is the pipeline's ranking by the ranker's scores; a larger lambda trades accuracy for spread
    assert r.rows[0]["ndcg@50"] == pytest.approx(doc["pipeline"]["ndcg@50"])
    assert r.rows[0]["ndcg@50"] != pytest.approx(doc["retrieval"]["ndcg@50"])
    assert r.rows[1]["diversity@20"] >= r.rows[0]["diversity@20"]
    assert r.png_path.exists() and json.loads(r.json_path.read_text())["ranker"] == str(rank / "seed-1")


def test_http_rank_scores_the_live_history_with_the_candidate_ranker(runs, tmp_path):
    """`"rank": true` over loopback: after new events, the ranker scores the candidates of the
    live history (bundle history + stored events) with features computed from it."""
    from mirec.serve.store import EventStore
    from tests.test_serve import Server

    ret, rank = runs
    bundle = load_bundle(mirec.export(ret, tmp_path / "b"))
    stage = RankStage.from_run(rank, bundle)
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")),
                      EventStore(tmp_path / "e.sqlite"), ranker=stage)
    user = sorted(bundle.user_histories)[0]
    new = [bundle.raw_id(i) for i in (1, 2, 3)]
    with Server(rec) as client:
        events = {"user_id": user, "events": [{"item_id": i} for i in new]}
        assert client.post("/events", json=events).is_success
        body = client.post("/recommend", json={"user_id": user, "n": 5, "rank": True}).json()
    hist = bundle.user_histories[user].tolist() + [1, 2, 3]
    V, live, _, _ = rec.interests(hist)
    cand, f, k = rec.retrieve(V, live, hist, rec.cfg.candidates_per_interest)
    prob = 1 / (1 + np.exp(-stage.score(user, hist, cand, f, k, len(V))))
    best = np.argsort(-prob, kind="stable")[:5]
    assert body["ranked"]
    assert [r["item_id"] for r in body["items"]] == [bundle.raw_id(int(c)) for c in cand[best]]
    np.testing.assert_allclose([r["score"] for r in body["items"]], prob[best], rtol=1e-5)


def test_horizon_makes_the_next_items_positives_within_the_window(runs):
    ret, _ = runs
    run = retrieval_seed_run(ret, 1)
    ds, split = run.dataset, split_users(run.dataset, run.config.split)
    cfg = load(RankRunConfig, None, [f"cand.run={ret}", "cand.horizon=3", *(f"{k}={v}" for k, v in CAND.items())])
    data = build_candidate_data(cfg, run)
    check_leakage(data, ds, split)
    pos = data.label == 1
    assert np.array_equal(data.item[pos], ds.item[data.source[pos]])
    per_state = np.unique(np.c_[data.user[pos], data.hist_stop[pos]], axis=0, return_counts=True)[1]
    assert per_state.max() == 3 and (data.source[pos] - data.hist_stop[pos]).max() == 2


@pytest.mark.parametrize("n_hist", [0, 1, 6])
def test_din_one_user_path_equals_the_batch_path(runs, n_hist):
    from mirec.data.ctr import CTRBatch
    from mirec.runs import load_ranker

    _, rank = runs
    model, ck = load_ranker(rank / "seed-1")
    C, L = 9, 8
    g = torch.Generator().manual_seed(n_hist)
    hist = torch.zeros(L, dtype=torch.long)
    hist[L - n_hist:] = torch.randint(1, 80, (n_hist,), generator=g)
    batch = CTRBatch(user=torch.full((C,), 3), profile=ck["profile"][3][None].expand(C, -1),
                     item=torch.randint(1, 80, (C,), generator=g), hist=hist[None].expand(C, -1),
                     mask=(hist > 0)[None].expand(C, -1), dense=torch.randn(C, model.num_dense, generator=g))
    with torch.no_grad():
        torch.testing.assert_close(model.score_one_user(batch), model(batch), rtol=1e-5, atol=1e-5)


def test_positives_from_the_candidates_only(runs):
    from mirec.train.candidates import CandidateSearch

    ret, _ = runs
    run = retrieval_seed_run(ret, 1)
    sets = [f"cand.run={ret}", *(f"{k}={v}" for k, v in CAND.items())]
    data = build_candidate_data(load(RankRunConfig, None, [*sets, "cand.positives=candidates"]), run)
    everything = build_candidate_data(load(RankRunConfig, None, sets), run)
    pos = np.flatnonzero(data.label == 1)
    found = CandidateSearch(run, CAND["cand.m"]).search(run.dataset.item, data.hist_start[pos], data.hist_stop[pos])
    assert all(data.item[j] in got.cand for j, got in zip(pos, found))
    assert 0 < len(pos) < (everything.label == 1).sum()


@pytest.fixture(scope="module")
def other_rankers(runs, synth, tmp_path_factory):
    """DIEN and MIMN trained on the same retrieval run's candidates (seed 1, one epoch; one seed: no seed-1 folder)."""
    ret, _ = runs
    root = tmp_path_factory.mktemp("other")
    for name in ("dien", "mimn"):
        mirec.fit(model=name, data=synth, out=root / name, seeds=[1], progress=False, candidates=ret,
                  **{"train.epochs": 1, "model_args.dim": 8, **CAND})
    return root


@pytest.mark.parametrize("name", ["dien", "mimn"])
def test_dien_and_mimn_train_on_candidates_and_rank_served_candidates(runs, other_rankers, name):
    """`--candidates` with DIEN or MIMN: the run reads the candidate features, and serving ranks
    the retrieved candidates with them (only a reorder; the features move the logits)."""
    ret, _ = runs
    bundle, _ = bundle_from_run(ret / "seed-1")
    stage = RankStage.from_run(other_rankers / name, bundle)
    assert stage.uses_candidates and stage.model.num_dense == 10
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")), ranker=stage)
    user = next(iter(bundle.user_histories))
    hist = bundle.user_histories[user].tolist()
    V, live, _, _ = rec.interests(hist)
    cand, f, k = rec.retrieve(V, live, hist, rec.cfg.candidates_per_interest)
    ranked = rec.recommend(user_id=user, n=len(cand), rank=True)
    assert ranked.ranked and sorted(r.item for r in ranked.items) == sorted(cand.tolist())
    scores = stage.score(user, hist, cand, f, k, len(V))
    assert not np.allclose(stage.score(user, hist, cand, f[::-1].copy(), k, len(V)), scores)


def test_mimn_streams_candidate_features_as_the_per_example_path(other_rankers):
    """MIMN's streaming path (whole user sequences) feeds each example its own candidate features:
    its logits equal the per-example path's, where the windows hold the whole history."""
    from mirec.runs import load_ranker
    from mirec.train.candidates import candidate_data
    from mirec.train.ctr import predict

    model, ck = load_ranker(other_rankers / "mimn")
    cfg = ck["parsed_config"]
    data, _ = candidate_data(cfg, 1)
    idx = data.indices(VALID)
    assert (data.hist_stop[idx] - data.hist_start[idx]).max() <= cfg.ctr.max_len  # windows hold it all
    streamed = predict(model, data, idx, cfg=cfg.train)
    per_example = predict(model, data, idx, cfg=dataclasses.replace(cfg.train, stream=False))
    np.testing.assert_allclose(streamed, per_example, rtol=1e-4, atol=1e-4)
    shuffled = dataclasses.replace(data, dense=data.dense[::-1].copy())
    assert not np.allclose(predict(model, shuffled, idx, cfg=cfg.train), streamed, atol=1e-3)


def test_serving_reads_a_streaming_rankers_whole_history(runs, other_rankers):
    """MIMN trained on whole user sequences (train.stream) is served the whole history it is given,
    not the last ctr.max_len items; DIEN, trained on windows, gets the window."""
    from mirec.data.ctr import CTRBatch

    ret, _ = runs
    bundle, _ = bundle_from_run(ret / "seed-1")
    mimn = RankStage.from_run(other_rankers / "mimn", bundle)
    assert mimn.whole_history and not RankStage.from_run(other_rankers / "dien", bundle).whole_history
    mimn.max_len = 2  # a window that would cut the history below
    user = next(u for u, h in bundle.user_histories.items() if len(h) > 4)
    hist = bundle.user_histories[user].tolist()
    cand, f, k = np.array([1, 5, 9]), np.array([0.5, 0.2, 0.1]), np.array([0, 1, 0])
    dense = torch.from_numpy(mimn.dense(mimn.user_index.get(user, -1), hist, cand, f, k, 2))
    h = torch.tensor(hist)
    whole = CTRBatch(user=torch.full((3,), mimn.unknown_user), profile=mimn.profile[mimn.user_index[user]][None].expand(3, -1),
                     item=torch.from_numpy(cand), hist=h[None].expand(3, -1), mask=torch.ones(3, len(h), dtype=torch.bool),
                     dense=dense)
    with torch.no_grad():
        expect = mimn.model(whole).numpy()
    np.testing.assert_allclose(mimn.score(user, hist, cand, f, k, 2), expect, rtol=1e-5, atol=1e-5)
