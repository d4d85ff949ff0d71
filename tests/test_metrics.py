"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from mirec.eval.metrics import accuracy, coverage, diversity, topn_metrics


def csr(lists):
    indptr = np.cumsum([0] + [len(x) for x in lists])
    return indptr, np.array([i for x in lists for i in x], dtype=np.int64)


def test_recall_ndcg_hit_by_hand():
    topn = np.array([[5, 3, 9, 1], [2, 4, 6, 8], [7, 1, 2, 3]])
    indptr, items = csr([[3, 1, 10], [11, 12], [7]])
    acc = accuracy(topn, indptr, items)
    # user 0: hits at ranks 2 and 4 of 3 targets
    assert acc["recall"][0] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert acc["ndcg"][0] == pytest.approx(dcg / idcg)
    assert acc["hit_rate"][0] == 1
    # user 1: no hit
    assert acc["recall"][1] == 0 and acc["ndcg"][1] == 0 and acc["hit_rate"][1] == 0
    # user 2: one target, hit at rank 1
    assert acc["recall"][2] == 1 and acc["ndcg"][2] == pytest.approx(1.0)


def test_idcg_is_cut_at_n():
    # 5 targets, N = 2, both slots hit: NDCG must be 1 (IDCG over min(|T|, N) ranks)
    topn = np.array([[1, 2]])
    indptr, items = csr([[1, 2, 3, 4, 5]])
    acc = accuracy(topn, indptr, items)
    assert acc["ndcg"][0] == pytest.approx(1.0)
    assert acc["recall"][0] == pytest.approx(2 / 5)


def test_duplicate_targets_count_once():
    topn = np.array([[4, 5]])
    indptr, items = csr([[4, 4, 6]])
    assert accuracy(topn, indptr, items)["recall"][0] == pytest.approx(1 / 2)


def test_diversity_single_and_multi_category():
    # items 1..4; categories: 1:{a}, 2:{a}, 3:{b}, 4:{a,b}
    cat_indptr, cat_ids = csr([[], [0], [0], [1], [0, 1]])
    topn = np.array([[1, 2, 3], [1, 4, 3]])
    d = diversity(topn, cat_indptr, cat_ids.astype(np.int32))
    # user 0 pairs: (1,2)=0, (1,3)=1, (2,3)=1 -> 2/3
    assert d[0] == pytest.approx(2 / 3)
    # user 1 pairs: (1,4): 1 - 1/2 = 0.5, (1,3)=1, (4,3): 1 - 1/2 = 0.5 -> 2/3
    assert d[1] == pytest.approx(2 / 3)


def test_diversity_is_the_mean_pairwise_jaccard_distance_at_any_catalogue_size():
    """Against sets, on a catalogue of 3M items and 200k categories (a dense item x category
    matrix would be 2.4 TB), with items of 0-3 categories and repeated ids in a row."""
    rng = np.random.default_rng(0)
    n_items, n_cats = 3_000_000, 200_000
    listed = rng.choice(np.arange(1, n_items), 300, replace=False)
    lens = np.zeros(n_items, dtype=np.int64)
    lens[listed] = rng.integers(0, 4, len(listed))
    cat_indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(lens, out=cat_indptr[1:])
    cat_ids = rng.integers(0, n_cats, cat_indptr[-1]).astype(np.int32)
    cat_ids[cat_indptr[listed[0]]:cat_indptr[listed[0] + 1]] = 7  # one item's ids repeat
    topn = rng.choice(listed, (70, 6))  # 70 users: two batches of 64
    sets = {i: set(cat_ids[cat_indptr[i]:cat_indptr[i + 1]].tolist()) for i in listed}
    want = []
    for row in topn:
        d = [1 - len(sets[a] & sets[b]) / len(sets[a] | sets[b]) if sets[a] | sets[b] else 0.0
             for x, a in enumerate(row) for b in row[x + 1:]]
        want.append(np.mean(d))
    assert np.allclose(diversity(topn, cat_indptr, cat_ids), want, atol=1e-6)


def test_diversity_items_without_categories():
    cat_indptr, cat_ids = csr([[], [], [], [0]])
    d = diversity(np.array([[1, 2, 3]]), cat_indptr, cat_ids.astype(np.int32))
    # (1,2): both empty -> 0; (1,3) and (2,3): disjoint, non-empty union -> 1
    assert d[0] == pytest.approx(2 / 3)


def test_coverage():
    assert coverage(np.array([[1, 2], [2, 3]]), 10) == pytest.approx(0.3)


def test_topn_metrics_keys_and_prefix_cut():
    topn = np.array([[1, 2, 3, 4], [4, 3, 2, 1]])
    indptr, items = csr([[4], [4]])
    cat_indptr, cat_ids = csr([[], [0], [0], [1], [1]])
    m = topn_metrics(topn, indptr, items, cat_indptr, cat_ids.astype(np.int32), 4, ns=(1, 4))
    assert m["recall@1"] == pytest.approx(0.5)  # only user 1 has item 4 first
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["hit_rate@1"] == pytest.approx(0.5)
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(5) + 1) / 2)
    assert m["coverage@1"] == pytest.approx(0.5)
    assert set(m) == {f"{k}@{n}" for n in (1, 4)
                      for k in ("recall", "ndcg", "hit_rate", "diversity", "coverage")}
