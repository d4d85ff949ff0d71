"""The evaluation loop: exclusion of history items, exact top-N, MostPopular, results.json."""

import json

import numpy as np
import pytest

from mirec.data.split import SplitConfig, split_users
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import EvalConfig, evaluate, rank_topn
from mirec.experiment import evaluate_baseline
from mirec.models.most_popular import MostPopular
from tests.conftest import make_dataset


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


def test_most_popular_under_the_time_protocol_by_hand(tmp_path):
    """tests/test_split.py's hand-made log, valid_from 6, test_from 8. MostPopular's training
    counts rank 2 (5) > 1 (4) > 3 (3) > 6 (2) > 7 (1); 4, 5 and 8 are new items, never ranked.
    Test rows (history excluded): user 1 [6 7] target 6 (hit @1); user 2 [6 7] target 7 (hit @2);
    user 3 target 8 (new: a miss); user 3 [2 1] target 3 (a miss). Validation: user 1 target 4
    (new), user 2 [3 6] target 3 (hit @1)."""
    from tests.test_split import time_log_dataset

    ds = time_log_dataset(tmp_path / "ds")
    split = SplitConfig(protocol="time", valid_from=6, test_from=8)
    run = evaluate_baseline("most-popular", ds, [1], split, EvalConfig(ns=(1, 2)), out=tmp_path / "run")
    assert run.seeds[0].test_topn.tolist() == [[6, 7], [6, 7], [2, 1], [2, 1]]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    m = doc["metrics"]
    assert (m["recall@1"], m["recall@2"], m["hit_rate@2"]) == (0.25, 0.5, 0.5)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["new_item_share"] == 0.25
    assert (doc["valid"]["recall@1"], doc["valid"]["new_item_share"]) == (0.5, 0.5)
    seed = doc["per_seed"][0]
    assert (seed["num_test_users"], seed["num_valid_users"]) == (4, 2)  # rows: target events
    assert seed["time_cuts"] == {"valid_from": 6, "test_from": 8}
    assert doc["protocol"]["split"]["protocol"] == "time"
    with pytest.raises(MirecConfigError, match=r"eval.ns: N = 6 is larger than the training catalogue \(5"):
        evaluate_baseline("most-popular", ds, [1], split, EvalConfig(ns=(6,)))


def late_new_items_dataset(path):
    """200 users over items 1..60 at ts 0..9,999; items 61..65 appear only from ts 9,900 on (the
    last 1% of the timeline): new items under any time split before that."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(200):
        n = int(rng.integers(6, 31))
        users += [u] * n
        items += rng.choice(np.arange(1, 61), size=n, replace=False).tolist()
        ts += sorted(rng.integers(0, 9_900, size=n).tolist())
        if u % 3 == 0:
            users.append(u)
            items.append(61 + u % 5)
            ts.append(9_900 + u % 100)
    return make_dataset(path, users, items, ts, {i: [f"c{i % 5}"] for i in range(1, 66)})


@pytest.mark.parametrize("index", ["exact", "faiss"])
def test_new_items_are_never_ranked_by_a_retriever(tmp_path, index):
    """A retriever's lists (the blocked scan, the Faiss index) never hold a new item, with N
    (25) close to the rankable items (at least 29 a row), and equal the full score matrix's
    lists with new items at -inf."""
    import torch

    from mirec.models.base import VectorScorer
    from mirec.runs import RunConfig, build_model

    ds = late_new_items_dataset(tmp_path / "ds")
    sp = split_users(ds, SplitConfig(protocol="time", valid_from=0.5, test_from=0.99))
    new = sp.test.new_items
    assert len(new) >= 5 and set(ds.items["raw_id"][new - 1].to_list()) >= {"61", "62", "63", "64", "65"}
    torch.manual_seed(0)
    scorer = VectorScorer(build_model(RunConfig(model="youtube-dnn"), ds.num_items), cosine=True)
    cfg = EvalConfig(ns=(25,), index=index, faiss_kind="exact", recall_users=50)  # 29+ rankable a row
    res = evaluate(scorer, ds, sp.test, 20, cfg)
    assert not np.isin(res.topn, new).any() and not (res.topn == 0).any()
    dense = VectorScorer(scorer.model, cosine=True, blocked=False)  # the (B, N) scores, masked
    assert np.array_equal(rank_topn(dense, ds, sp.test, 25, 20), res.topn)
    if index == "faiss":
        assert res.metrics["index_recall@25"] == 1.0
    targets = ds.item[sp.test.cut]
    share = np.isin(targets, new).mean()
    assert share > 0 and res.metrics["new_item_share"] == pytest.approx(share)


def test_cli_evaluates_a_baseline_under_the_time_protocol(tmp_path, monkeypatch, capsys):
    """`mirec evaluate --model most-popular --set split.protocol=time ...` (mirec.cli.main in
    this process: its exit status and its one-line errors)."""
    from mirec.cli import main

    ds = late_new_items_dataset(tmp_path / "ds")

    def cli(*sets):
        monkeypatch.setattr("sys.argv", ["mirec", "evaluate", "--model", "most-popular", "--data", str(ds.path),
                                         "--out", str(tmp_path / "run"), "--set", "split.protocol=time",
                                         "--set", "split.valid_from=0.8", *sum((["--set", s] for s in sets), [])])
        with pytest.raises(SystemExit) as e:
            main()
        out = capsys.readouterr()
        return e.value.code, out.out + out.err

    code, out = cli("split.test_from=0.9")
    assert code == 0, out
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    sp = split_users(ds, SplitConfig(protocol="time", valid_from=0.8, test_from=0.9))
    share = np.isin(ds.item[sp.test.cut], sp.test.new_items).mean()
    assert share > 0 and doc["metrics"]["new_item_share"] == pytest.approx(share)
    assert f"new items: {share:.3f} of the test targets" in out
    assert doc["per_seed"][0]["num_test_users"] == len(sp.test)
    assert doc["per_seed"][0]["time_cuts"] == dict(zip(("valid_from", "test_from"), sp.time_cuts))
    # a mistake: one line naming the key, exit status 2
    code, out = cli("split.test_from=0.7")
    assert code == 2 and out.startswith("error: split.valid_from: must be before split.test_from")
    assert len(out.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_retriever_trains_and_reevaluates_under_the_time_protocol(tmp_path):
    """Training reaches the time split (examples before valid_from, validation rows, new items
    masked); `evaluate --run` rebuilds it; the served path of the diversity report masks new
    items too (its lambda 0 row is the protocol's figure); a ranker on its candidates is
    refused, naming why."""
    import mirec
    from mirec.eval.diversity import diversity_report

    ds = late_new_items_dataset(tmp_path / "ds")
    split = {"protocol": "time", "valid_from": 0.8, "test_from": 0.9}
    run = mirec.fit(model="youtube-dnn", data=ds, out=tmp_path / "r", seeds=[1], progress=False,
                    split=split, train={"epochs": 1, "threads": 1})
    assert 0 < run.metrics["new_item_share"] < 1 and "new_item_share" in run.seeds[0].valid
    again = mirec.evaluate(run=run.path)
    assert again.metrics == run.metrics
    row = diversity_report(run.path, [0.0], tmp_path / "div").rows[0]
    for key in ("recall@20", "recall@50", "ndcg@50"):
        assert row[key] == pytest.approx(run.metrics[key]), key
    with pytest.raises(MirecConfigError, match="--candidates: .* split.protocol=time"):
        mirec.fit(model="din", data=ds, out=tmp_path / "k", seeds=[1], progress=False, task="ranking",
                  candidates=run.path, train={"epochs": 1})


# ---- leave-one-out as the published tables define it: HR@k, NDCG@k, history filtered, ties ----


def loo_log(path, n_users=6, n_items=30, seed=0):
    """Users with 4..9 distinct items over raw ids 1..n_items (every item used), under loo: the
    last item is the test target, every earlier one the history."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        seq = rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(4, 10)), replace=False)
        users += [u] * len(seq)
        items += seq.tolist()
    users += [n_users] * n_items  # a filler user holding every item
    items += list(range(1, n_items + 1))
    return make_dataset(path, users, items, list(range(len(users))))


class RowScorer:
    """Scores row j of ``users`` (in evaluation order) with ``make(j)`` -> (N,) scores."""

    def __init__(self, make):
        self.make, self.calls = make, 0

    def score(self, hist, mask):
        rows = [self.make(self.calls + j) for j in range(len(hist))]
        self.calls += len(hist)
        return np.stack(rows).astype(np.float32)


def reference_ranks(scores, ds, users, ties):
    """The published definition, written independently: per row, every item but padding and the
    history ranked by a NumPy sort of the dense scores (equal scores: lower id first, or the
    target last when ``ties`` is pessimistic); -> the target's 1-based rank."""
    ranks = []
    for j in range(len(users)):
        s = scores[j].astype(np.float64).copy()
        s[0] = -np.inf
        s[ds.item[users.hist_start[j]:users.cut[j]]] = -np.inf
        t = int(ds.item[users.cut[j]])
        ids = np.arange(len(s))
        last = (ids == t).astype(int) if ties == "pessimistic" else np.zeros(len(s), int)
        order = np.lexsort((ids, last, -s))  # score descending, then (target last), then id
        ranks.append(int(np.nonzero(order == t)[0][0]) + 1 if np.isfinite(s[t]) else len(s))
    return np.array(ranks)


def published_metrics(ranks, ns):
    """HR@k = share of users whose target ranks in the top k; NDCG@k = mean of 1/log2(rank + 1)
    over hits (one target a user, so IDCG = 1)."""
    out = {}
    for k in ns:
        hit = ranks <= k
        out[f"hit_rate@{k}"] = hit.mean()
        out[f"ndcg@{k}"] = np.where(hit, 1 / np.log2(ranks + 1), 0).mean()
    return out


def test_loo_hr_and_ndcg_by_hand(tmp_path):
    """Four test users whose targets rank 3, 7, 15 and 25 among the items they have not seen,
    with every history item scored above everything (it must be filtered, never ranked).
    HR@5 = 1/4, HR@10 = 2/4, HR@20 = 3/4; NDCG@5 = (1/log2 4) / 4, NDCG@10 = (1/2 + 1/3) / 4,
    NDCG@20 = (1/2 + 1/3 + 1/4) / 4."""
    ds = loo_log(tmp_path / "ds", n_users=4)
    sp = split_users(ds, SplitConfig(protocol="loo"))
    users = sp.test.select(np.isin(sp.test.users, sp.test.users[:4]))  # the four, not the filler
    users = users.select(np.argsort(ds.users["raw_id"].to_numpy()[users.users]))
    assert len(users) == 4
    want_rank = [3, 7, 15, 25]

    def make(j):
        hist = ds.item[users.hist_start[j]:users.cut[j]]
        t = int(ds.item[users.cut[j]])
        others = [i for i in range(1, ds.num_items) if i != t and i not in set(hist.tolist())]
        order = others[:want_rank[j] - 1] + [t] + others[want_rank[j] - 1:]
        s = np.zeros(ds.num_items)
        s[order] = np.arange(len(order), 0, -1)  # distinct, best first
        s[hist] = 100.0  # above everything: only the filter keeps them out
        return s

    res = evaluate(RowScorer(make), ds, users, 20, EvalConfig(ns=(5, 10, 20)))
    m = res.metrics
    assert (m["hit_rate@5"], m["hit_rate@10"], m["hit_rate@20"]) == (0.25, 0.5, 0.75)
    assert m["ndcg@5"] == pytest.approx(0.5 / 4)
    assert m["ndcg@10"] == pytest.approx((1 / 2 + 1 / 3) / 4)
    assert m["ndcg@20"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert m["recall@10"] == m["hit_rate@10"]  # one target a user
    scores = np.stack([make(j) for j in range(4)])
    assert reference_ranks(scores, ds, users, "low-id").tolist() == want_rank


def test_ties_low_id_and_pessimistic_by_hand(tmp_path):
    """Every item scores the same: under low-id the target ranks after the unseen items with a
    lower id; under pessimistic after every unseen item."""
    ds = loo_log(tmp_path / "ds", n_users=4)
    sp = split_users(ds, SplitConfig(protocol="loo"))
    flat = RowScorer(lambda j: np.zeros(ds.num_items))
    low = evaluate(flat, ds, sp.test, 20, EvalConfig(ns=(5, 20)))
    flat.calls = 0
    pess = evaluate(flat, ds, sp.test, 20, EvalConfig(ns=(5, 20), ties="pessimistic"))
    low_rank, pess_rank = [], []
    for j in range(len(sp.test)):
        seen = set(ds.item[sp.test.hist_start[j]:sp.test.cut[j]].tolist())
        t = int(ds.item[sp.test.cut[j]])
        unseen = [i for i in range(1, ds.num_items) if i not in seen and i != t]
        low_rank.append(len([i for i in unseen if i < t]) + 1)
        pess_rank.append(len(unseen) + 1)
    for got, ranks in ((low, low_rank), (pess, pess_rank)):
        ranks = np.array(ranks)
        for k in (5, 20):
            assert got.metrics[f"hit_rate@{k}"] == pytest.approx((ranks <= k).mean())
            assert got.metrics[f"ndcg@{k}"] == pytest.approx(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0).mean())
    assert low.metrics["hit_rate@20"] > pess.metrics["hit_rate@20"]
    with pytest.raises(MirecConfigError, match="eval.ties: expected low-id or pessimistic"):
        EvalConfig(ties="random").validate()


@pytest.mark.parametrize("ties", ["low-id", "pessimistic"])
def test_loo_metrics_equal_an_independent_implementation(tmp_path, ties):
    """A random log and random scores drawn from 4 values (many ties): mirec's HR@k and NDCG@k
    (k = 5, 10, 20) equal the published formula over a NumPy sort of the dense score matrix."""
    ds = loo_log(tmp_path / "ds", n_users=40, n_items=60, seed=1)
    sp = split_users(ds, SplitConfig(protocol="loo"))
    scores = np.random.default_rng(2).integers(0, 4, size=(len(sp.test), ds.num_items)).astype(np.float32)
    res = evaluate(RowScorer(lambda j: scores[j]), ds, sp.test, 20,
                   EvalConfig(ns=(5, 10, 20), batch_size=7, ties=ties))
    want = published_metrics(reference_ranks(scores, ds, sp.test, ties), (5, 10, 20))
    for key, value in want.items():
        assert res.metrics[key] == pytest.approx(value), key
    assert want["hit_rate@20"] > 0


def test_pessimistic_ties_on_a_retrievers_blocked_path(tmp_path):
    """A retriever whose item table holds 5 distinct rows (ties everywhere): the blocked scan's
    pessimistic lists equal the full score matrix's, and its metrics the independent formula's."""
    import torch

    from mirec.models.base import VectorScorer
    from mirec.runs import RunConfig, build_model

    ds = loo_log(tmp_path / "ds", n_users=40, n_items=60, seed=3)
    sp = split_users(ds, SplitConfig(protocol="loo"))
    torch.manual_seed(0)
    model = build_model(RunConfig(model="youtube-dnn"), ds.num_items)
    with torch.no_grad():
        w = model.emb.weight
        w[1:] = w[1 + torch.arange(ds.num_items - 1) % 5]
    cfg = EvalConfig(ns=(5, 10, 20), ties="pessimistic")
    blocked = evaluate(VectorScorer(model, cosine=False), ds, sp.test, 20, cfg)
    dense = VectorScorer(model, cosine=False, blocked=False)
    assert np.array_equal(rank_topn(dense, ds, sp.test, 20, 20, ties="pessimistic"), blocked.topn)
    scores = np.concatenate([dense.score(*_windows(ds, sp.test.select(slice(s, s + 512)), 20))
                             for s in range(0, len(sp.test), 512)])
    want = published_metrics(reference_ranks(scores, ds, sp.test, "pessimistic"), (5, 10, 20))
    for key, value in want.items():
        assert blocked.metrics[key] == pytest.approx(value), key
    low = evaluate(VectorScorer(model, cosine=False), ds, sp.test, 20, EvalConfig(ns=(20,)))
    assert low.metrics["hit_rate@20"] > blocked.metrics["hit_rate@20"]  # ties matter here


def _windows(ds, users, max_len):
    from mirec.data.split import windows

    return windows(ds.item, users.hist_start, users.cut, max_len)


def test_cli_reports_loo_hr_and_ndcg_at_5_10_20(tmp_path, monkeypatch, capsys):
    """`mirec evaluate --set split.protocol=loo --set eval.ns=[5,10,20] --set eval.ties=pessimistic`
    stores HR@k and NDCG@k for each k in results.json."""
    from mirec.cli import main

    ds = loo_log(tmp_path / "ds", n_users=40, n_items=60)
    monkeypatch.setattr("sys.argv", ["mirec", "evaluate", "--model", "most-popular", "--data", str(ds.path),
                                     "--out", str(tmp_path / "run"), "--set", "split.protocol=loo",
                                     "--set", "eval.ns=[5,10,20]", "--set", "eval.ties=pessimistic"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0, capsys.readouterr()
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {f"{m}@{k}" for m in ("hit_rate", "ndcg") for k in (5, 10, 20)} <= set(doc["metrics"])
    assert doc["protocol"]["eval"]["ties"] == "pessimistic"
