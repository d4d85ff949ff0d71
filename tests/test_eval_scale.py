"""Evaluation at catalogue scale: exact top-N in blocks of users x items (the same lists as the
full score matrix, ties by the lower id), bounded block shapes, the validation sample
(eval.max_users), and Faiss-backed evaluation's recall against exact."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import mirec.eval.blocked as blocked
from mirec.config import load
from mirec.data.split import SplitConfig, split_users
from mirec.eval.blocked import blocked_topn, edges, scores_topn, topn_exact, vector_blocks
from mirec.eval.evaluate import EvalConfig, evaluate, rank_topn, sample_users
from mirec.models.base import VectorScorer
from mirec.runs import RunConfig, build_model
from mirec.serve.bundle import load_bundle
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.service import build_index_report
from mirec.train.loop import RetrievalTask, train
from tests import test_serve as shared


def reference_topn(v, live, items, n, rows, seen):
    """Max over live interests of the full (B, N) matrix, sorted by (score desc, id asc)."""
    s = torch.einsum("bkd,nd->bkn", v, items).masked_fill(~live[:, :, None], float("-inf"))
    s = s.amax(1)
    s[:, 0] = float("-inf")
    s[rows, seen] = float("-inf")
    ids = np.arange(s.shape[1])
    return np.stack([np.lexsort((ids, -r))[:n] for r in s.numpy()])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("item_block,user_block", [(7, 3), (64, 5), (100, 128), (1_000, 2)])
def test_blocked_topn_is_the_sorted_full_matrix(ties, item_block, user_block):
    """Blocks not dividing N, users with long histories (up to half the catalogue seen), dead
    interests, and (rounded vectors) many equal scores: the lists match the full sort."""
    g = torch.Generator().manual_seed(item_block + ties)
    B, K, N, D, n = 23, 3, 389, 4, 25
    v, items = torch.randn(B, K, D, generator=g), torch.randn(N, D, generator=g)
    if ties:
        v, items = v.round(), items.round()
    live = torch.rand(B, K, generator=g) > 0.3
    live[:, 0] = True
    lens = torch.randint(0, N // 2, (B,), generator=g)
    rows = torch.repeat_interleave(torch.arange(B), lens)
    seen = torch.randint(0, N, (int(lens.sum()),), generator=g)
    want = reference_topn(v, live, items, n, rows, seen)
    got = blocked_topn(v, live, items, n, rows, seen, item_block, user_block).numpy()
    np.testing.assert_array_equal(got, want)
    # items never ranked for anyone (the time protocol's new items), across every block
    never = torch.unique(torch.randint(1, N, (60,), generator=g))  # sorted
    rows_all = torch.arange(B).repeat_interleave(len(never))
    want = reference_topn(v, live, items, n, torch.cat([rows, rows_all]), torch.cat([seen, never.repeat(B)]))
    got = blocked_topn(v, live, items, n, rows, seen, item_block, user_block, never).numpy()
    np.testing.assert_array_equal(got, want)


def test_ties_rank_by_the_lower_id_also_across_blocks():
    s = torch.tensor([[0.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]])
    assert topn_exact(s, 3)[1].tolist() == [[4, 1, 2]]
    # the same scores in blocks of 2: the tied 1.0s of later blocks never displace earlier ones
    assert scores_topn(s, 3, block=2).tolist() == [[4, 1, 2]]
    assert scores_topn(torch.full((2, 10), float("-inf")), 4, block=3).tolist() == [[0, 1, 2, 3]] * 2


def test_score_is_the_max_over_live_interests():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # interest 0 -> item 1, interest 1 -> item 2
    none = torch.zeros(0, dtype=torch.long)
    both = blocked_topn(v, torch.tensor([[True, True]]), items, 3, none, none).tolist()
    assert both == [[1, 2, 3]]  # 1.0, 1.0 (tie: lower id), then max(0.7, 0.7)
    dead = blocked_topn(v, torch.tensor([[True, False]]), items, 3, none, none).tolist()
    assert dead == [[1, 3, 2]]  # interest 1 is dead: item 2 scores 0 (interest 0), after 0.7


def test_history_items_and_padding_are_never_ranked_unless_nothing_else_is_left():
    items = torch.eye(6)[:, :3].contiguous()  # items 1, 2 score 1 on their axis; 3..5 score 0
    v = torch.ones(1, 1, 3)
    rows, seen = torch.tensor([0, 0, 0]), torch.tensor([1, 3, 4])
    got = blocked_topn(v, torch.ones(1, 1, dtype=torch.bool), items, 4, rows, seen, 2, 1)
    # 2 (score 1), 5 (score 0) are rankable; then the excluded ids by id: 0, 1 (as the full
    # matrix with -inf on padding and history sorts them)
    assert got.tolist() == [[2, 5, 0, 1]]


def test_blocks_have_bounded_shapes_whatever_the_catalogue(monkeypatch):
    """Memory does not grow with N: every block handed to the merge is at most
    (item_block, K, user_block) floats, and the item ranges tile [0, N) once."""
    shapes = []
    real = blocked.merge_block

    def spy(best, ids, s, lo):
        shapes.append(tuple(s.shape))
        return real(best, ids, s, lo)

    monkeypatch.setattr(blocked, "merge_block", spy)
    N, K, B = 5_003, 2, 10
    g = torch.Generator().manual_seed(0)
    v, items = torch.randn(B, K, 8, generator=g), torch.randn(N, 8, generator=g)
    none = torch.zeros(0, dtype=torch.long)
    blocked_topn(v, torch.ones(B, K, dtype=torch.bool), items, 20, none, none, 256, 4)
    assert shapes and max(s[0] for s in shapes) <= 256 and max(s[2] for s in shapes) <= 4
    assert {s[1] for s in shapes} == {K}
    spans = edges(N, 256, 20)
    assert spans[0][0] == 0 and spans[-1][1] == N
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert edges(30, 7, 20)[0] == (0, 20)  # the first block holds a whole list
    sizes = [s.shape for _, s in vector_blocks(v, torch.ones(B, K, dtype=torch.bool), items,
                                               none, none, 256, 20)]
    assert max(s[0] for s in sizes) == 256 and len(sizes) == len(spans)


def small_cfg(*extra: str) -> RunConfig:
    return load(RunConfig, None, ["model_args.dim=8", "model_args.num_interests=2", "train.epochs=2",
                                  "train.batch_size=64", "train.max_batches_per_epoch=3", *extra])


@pytest.mark.parametrize("exclude", [True, False])
@pytest.mark.parametrize("block", [7, 13, 64])
def test_blocked_evaluation_equals_the_full_score_matrix(random_dataset, exclude, block):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    torch.manual_seed(0)
    model = build_model(small_cfg(), ds.num_items)
    full = VectorScorer(model, cosine=True, blocked=False)
    scorer = VectorScorer(model, cosine=True)
    scorer.block, scorer.user_block = block, 5
    want = rank_topn(full, ds, sp.test, 20, 20, exclude, batch_size=16)
    np.testing.assert_array_equal(rank_topn(scorer, ds, sp.test, 20, 20, exclude, batch_size=16), want)
    cfg = EvalConfig(ns=(5, 20), exclude_history=exclude)
    assert evaluate(scorer, ds, sp.test, 20, cfg).metrics == evaluate(full, ds, sp.test, 20, cfg).metrics


def test_validation_sample_is_seeded_and_the_same_every_epoch(random_dataset):
    sp = split_users(random_dataset, SplitConfig(seed=0))
    a, b = sample_users(sp.valid, 7, 3), sample_users(sp.valid, 7, 3)
    assert len(a) == 7 and np.array_equal(a.users, b.users)
    assert set(a.users) <= set(sp.valid.users) and np.all(np.diff(a.cut) > 0)  # original order
    assert not np.array_equal(sample_users(sp.valid, 7, 4).users, a.users)  # another seed
    assert sample_users(sp.valid, 0, 3) is sp.valid and sample_users(sp.valid, 10**6, 3) is sp.valid
    with pytest.raises(Exception, match="eval.max_users"):
        EvalConfig(max_users=-1).validate()


def test_training_validates_on_the_sample_and_tests_on_every_user(random_dataset, tmp_path):
    cfg = small_cfg("eval.max_users=6", "train.epochs=1")
    task = RetrievalTask(cfg, random_dataset)
    again = RetrievalTask(cfg, random_dataset)  # as after a resume
    assert len(task.valid_users) == 6 and np.array_equal(task.valid_users.users, again.valid_users.users)
    r = train(cfg, random_dataset, tmp_path / "run", progress=False)
    scorer = VectorScorer(r.model, cfg.train.cosine)
    on_sample = evaluate(scorer, random_dataset, task.valid_users, 20, cfg.eval).metrics
    assert r.history[-1]["valid"] == on_sample  # the last epoch is the best here (one epoch)
    assert len(r.test_topn) == len(r.split.test) > 6  # the final test ranks every test user
    assert r.test == evaluate(scorer, random_dataset, r.split.test, 20, cfg.eval).metrics


@pytest.mark.parametrize("exclude", [True, False])
def test_faiss_evaluation_with_an_exact_index_has_recall_one(random_dataset, exclude):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    torch.manual_seed(0)
    scorer = VectorScorer(build_model(small_cfg(), ds.num_items), cosine=True)
    exact = evaluate(scorer, ds, sp.test, 20, EvalConfig(ns=(5, 10), exclude_history=exclude))
    cfg = EvalConfig(ns=(5, 10), exclude_history=exclude, index="faiss", faiss_kind="exact",
                     recall_users=8)
    got = evaluate(scorer, ds, sp.test, 20, cfg)
    assert got.metrics.pop("index_recall@10") == 1.0
    assert got.metrics == pytest.approx(exact.metrics, abs=0.02)  # float sums may swap near ties
    assert (np.sort(got.topn, 1) == np.sort(exact.topn, 1)).mean() > 0.97
    if exclude:  # no history item is recommended (10 < the 30+ items every user has not seen)
        hist = [set(ds.item[a:c]) for a, c in zip(sp.test.hist_start, sp.test.cut)]
        assert not any(h & set(row) for h, row in zip(hist, got.topn))


def test_faiss_evaluation_ranks_users_exactly_when_the_index_finds_too_few(random_dataset):
    """An inverted file of 6 lists over 60 items probing 1 list finds at most ~2 x 10 items for
    2 interests: short of n = 30 for every user, who is then ranked exactly (before, users with
    short histories crashed the padding)."""
    from mirec.eval.evaluate import rank_topn
    from mirec.eval.faiss_eval import IndexScorer
    from mirec.serve.index import IndexConfig, ItemIndex

    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    torch.manual_seed(0)
    exact = VectorScorer(build_model(small_cfg(), ds.num_items), cosine=True)
    s = IndexScorer(exact, "exact")
    s.index = ItemIndex.build(exact.items.float().numpy(),
                              IndexConfig(kind="ivf", ivf_nlist=6, ivf_nprobe=1))
    got = rank_topn(s, ds, sp.test, 30, 20)
    want = rank_topn(exact, ds, sp.test, 30, 20)
    assert min(sp.test.cut - sp.test.hist_start) < 10  # some users' histories are short
    np.testing.assert_array_equal(got, want)


def test_faiss_evaluation_reports_the_recall_of_an_ivf_index(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    torch.manual_seed(0)
    scorer = VectorScorer(build_model(small_cfg(), ds.num_items), cosine=True)
    got = evaluate(scorer, ds, sp.test, 20, EvalConfig(index="faiss", faiss_kind="ivf"))
    assert 0 < got.metrics["index_recall@50"] <= 1
    with pytest.raises(Exception, match="eval.index"):
        EvalConfig(index="annoy").validate()


run, bundle_dir = shared.run, shared.bundle_dir  # test_serve.py's trained run and its bundle


@pytest.mark.slow  # trains test_serve.py's small run (~8 s on a loaded machine)
def test_index_build_tunes_ivf_nprobe_and_reports_recall_per_recommendation(bundle_dir, tmp_path):
    b = shutil.copytree(bundle_dir, tmp_path / "b")
    r = build_index_report(load_bundle(b), IndexConfig(kind="ivf", ivf_nlist=2), num_users=30)
    assert r["kind"] == "ivf" and r["nlist"] == 2 and r["nprobe"] in (1, 2)
    assert r["recommend_recall@50"] >= 0.95 and r["users"] == 30
    assert ItemIndex.load(r["path"], IndexConfig()).index.nprobe == r["nprobe"]  # kept in the file


def test_reevaluating_a_run_with_faiss_reports_its_recall(random_dataset, tmp_path):
    import mirec

    mirec.fit(model="comirec-sa", data=random_dataset, out=tmp_path / "run", progress=False,
              model_args={"dim": 8, "num_interests": 2}, train={"epochs": 1, "batch_size": 64})
    run = mirec.evaluate(run=tmp_path / "run", eval={"index": "faiss", "faiss_kind": "exact",
                                                      "ns": "[5, 10]"})
    exact = mirec.evaluate(run=tmp_path / "run", eval={"ns": "[5, 10]"})
    got = dict(run.mean)  # (a property: recomputed on every read)
    assert got.pop("index_recall@10") == 1.0  # stored with the metrics, as results.json has them
    assert got == pytest.approx(exact.mean, abs=0.02)


@pytest.mark.slow
def test_index_build_says_when_ivf_scans_a_large_share_of_the_lists(bundle_dir, tmp_path, capsys):
    from tests.test_guarantees import mirec

    b = shutil.copytree(bundle_dir, tmp_path / "b")
    code, out, err = mirec(capsys, "index", "build", b, "--index", "ivf", "--queries", "20")
    ivf = ItemIndex.load(b / "index-ivf.faiss", IndexConfig()).index
    nlist, nprobe = ivf.nlist, ivf.nprobe
    assert code == 0, err
    assert nprobe * 16 > nlist  # a handful of lists on this small catalogue: a large share
    assert "--index hnsw" in " ".join(out.split())
