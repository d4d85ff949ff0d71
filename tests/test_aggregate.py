"""Aggregation: max-merge re-scoring, candidate union, greedy lambda-diversity against references."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest

from mirec.serve.aggregate import (
    candidates,
    category_matrix,
    diversify,
    list_diversity,
    normalise,
    objective,
    rescore,
)
from mirec.serve.index import IndexConfig, ItemIndex

faiss.omp_set_num_threads(1)


def single_cats(labels: list[int] | np.ndarray, g: int | None = None) -> np.ndarray:
    """(C, G) one-hot category matrix from one label per candidate."""
    labels = np.asarray(labels)
    out = np.zeros((len(labels), g or int(labels.max()) + 1), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def reference_greedy(scores: np.ndarray, cats: np.ndarray, n: int, lam: float) -> list[int]:
    """Plain-Python greedy over candidate pairs, written straight from the definition."""
    s = normalise(scores)
    sets = [set(np.flatnonzero(row).tolist()) for row in cats]

    def g(a: int, b: int) -> float:
        union = sets[a] | sets[b]
        return 1.0 - len(sets[a] & sets[b]) / len(union) if union else 0.0

    picked: list[int] = []
    for _ in range(min(n, len(s))):
        best, best_gain = -1, -np.inf
        for c in range(len(s)):
            if c in picked:
                continue
            gain = s[c] + lam * sum(g(c, j) for j in picked)
            if gain > best_gain + 1e-12:
                best, best_gain = c, gain
        picked.append(best)
    return picked


def brute_force_best(scores: np.ndarray, cats: np.ndarray, n: int, lam: float) -> float:
    s = normalise(scores)
    return max(objective(s, cats, list(S), lam) for S in itertools.combinations(range(len(s)), n))


def test_lambda_zero_is_max_merge_top_n():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((400, 16)).astype(np.float32)
    V = rng.standard_normal((4, 16)).astype(np.float32)  # (K, D)
    live = np.array([True, True, False, True])
    index = ItemIndex.build(items, IndexConfig(kind="exact"))
    s, ids = index.search(V[live], 30)  # (K_live, M)
    cand = candidates(s, ids)
    f, _ = rescore(V, live, items, cand)
    n = 20
    got = cand[diversify(f, np.zeros((len(cand), 3), np.float32), n, 0.0)]
    # The top-n of max_k scores over the union ...
    np.testing.assert_array_equal(got, cand[np.argsort(-f, kind="stable")[:n]])
    # ... equals the top-n over the whole catalogue when M >= n: an item in the global top-n is
    # within the top-n of the interest that attains its max, so the union contains it.
    full = (V[live] @ items[1:].T).max(0)  # (N-1,)
    np.testing.assert_array_equal(got, np.argsort(-full)[:n] + 1)


def test_rescore_ignores_dead_interests():
    items = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    V = np.array([[1, 0], [100, 100], [0, 2]], np.float32)  # interest 1 would win everywhere
    live = np.array([True, False, True])
    f, k = rescore(V, live, items, np.array([1, 2, 3]))
    np.testing.assert_allclose(f, [1, 2, 2])
    np.testing.assert_array_equal(k, [0, 2, 2])
    assert k.dtype == np.int64
    with pytest.raises(ValueError, match="live"):
        rescore(V, np.zeros(3, bool), items, np.array([1]))


def test_candidates_union_drops_missing_and_excluded():
    ids = np.array([[5, 3, 9, -1], [3, 7, 5, 2]])
    scores = np.array([[4.0, 3.0, 2.0, -np.inf], [5.0, 1.0, 0.5, 0.1]])
    np.testing.assert_array_equal(candidates(scores, ids), [2, 3, 5, 7, 9])
    out = candidates(scores, ids, exclude=np.array([3, 9, 100]))
    np.testing.assert_array_equal(out, [2, 5, 7])
    assert out.dtype == np.int64
    assert not np.isin([3, 9], out).any()


def test_history_never_recommended_end_to_end():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((200, 8)).astype(np.float32)
    V = items[[10, 20, 30]]  # interests sitting on history items: they would rank first
    history = np.array([10, 20, 30, 11])
    s, ids = ItemIndex.build(items, IndexConfig(kind="exact")).search(V, 15)
    cand = candidates(s, ids, exclude=history)
    f, _ = rescore(V, np.ones(3, bool), items, cand)
    for lam in (0.0, 1.0):
        picked = cand[diversify(f, single_cats(cand % 4), 10, lam)]
        assert not np.isin(history, picked).any()


def test_n_larger_than_candidates_returns_all():
    f = np.array([0.3, 0.1, 0.9])
    for lam in (0.0, 0.5):
        out = diversify(f, single_cats([0, 1, 0]), 10, lam)
        assert sorted(out.tolist()) == [0, 1, 2]
    assert diversify(np.zeros(0), np.zeros((0, 2), np.float32), 5, 1.0).shape == (0,)


def test_lambda_zero_is_stable_argsort():
    f = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    np.testing.assert_array_equal(diversify(f, single_cats([0, 1, 2, 3, 4]), 4, 0.0), [1, 3, 0, 2])


def test_hand_computed_greedy():
    # Normalised scores [1, 0.9, 0]; items 0 and 1 share category a, item 2 is in b.
    f = np.array([10.0, 9.0, 0.0])
    cats = single_cats([0, 0, 1])
    # Second pick: item 1 gains 0.9 + lam * 0, item 2 gains 0 + lam * 1.
    np.testing.assert_array_equal(diversify(f, cats, 2, 0.5), [0, 1])
    np.testing.assert_array_equal(diversify(f, cats, 2, 1.0), [0, 2])


def test_jaccard_on_multi_category_sets():
    # {a, b} vs {b, c}: 1 - 1/3; {a, b} vs {}: 1; {} vs {}: 0.
    cats = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0]], np.float32)
    s = np.zeros(4)
    assert objective(s, cats, [0, 1], 1.0) == pytest.approx(2 / 3)
    assert objective(s, cats, [0, 2], 1.0) == pytest.approx(1.0)
    assert objective(s, cats, [2, 3], 1.0) == pytest.approx(0.0)
    assert objective(s, cats, [0, 1, 2], 2.0) == pytest.approx(2 * (2 / 3 + 1 + 1))
    assert list_diversity(cats, [0, 1, 2]) == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_scores_are_min_max_normalised():
    np.testing.assert_allclose(normalise(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(normalise(np.array([7.0, 7.0])), [0.0, 0.0])
    rng = np.random.default_rng(2)
    f = rng.standard_normal(40)
    cats = (rng.random((40, 6)) < 0.3).astype(np.float32)
    # Lambda means the same whatever the scale and offset of a user's scores.
    for lam in (0.1, 0.7, 3.0):
        np.testing.assert_array_equal(diversify(f, cats, 12, lam), diversify(50 * f - 3, cats, 12, lam))


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_greedy_matches_reference(seed):
    rng = np.random.default_rng(seed)
    c = 25
    f = rng.standard_normal(c)
    cats = (rng.random((c, 5)) < 0.35).astype(np.float32)  # multi-category, some empty
    for lam in (0.05, 0.3, 1.0, 4.0):
        assert diversify(f, cats, 8, lam).tolist() == reference_greedy(f, cats, 8, lam)


def test_diversity_non_decreasing_in_lambda():
    # 30 candidates, scores descending; the 12 best all sit in category 0, the rest cycle 1..4.
    f = np.linspace(1.0, 0.0, 30)
    labels = np.r_[np.zeros(12, int), 1 + np.arange(18) % 4]
    cats = single_cats(labels)
    div = [list_diversity(cats, diversify(f, cats, 5, lam)) for lam in (0, 0.1, 0.5, 2, 10)]
    assert div[0] == 0.0 and div[-1] == 1.0
    assert all(a <= b for a, b in zip(div, div[1:])), div
    acc = [normalise(f)[diversify(f, cats, 5, lam)].sum() for lam in (0, 0.1, 0.5, 2, 10)]
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc  # the accuracy side of the trade-off


@pytest.mark.parametrize("seed", range(3))
def test_greedy_matches_brute_force_where_greedy_is_optimal(seed):
    rng = np.random.default_rng(seed)
    c, n = 8, 3
    f = rng.standard_normal(c)
    random_cats = (rng.random((c, 4)) < 0.4).astype(np.float32)
    lam = float(rng.uniform(0.1, 3.0))
    cases = [
        (random_cats, n, 0.0),  # no diversity term: Q is a sum of scores, top-n is optimal
        # Every pair in different categories: the diversity term is lam * n(n-1)/2 for every
        # n-subset, so maximising Q is maximising the score sum.
        (single_cats(np.arange(c)), n, lam),
        (single_cats(np.zeros(c, int)), n, lam),  # one shared category: the term is always 0
        (random_cats, 1, lam),  # one item: no pairs, the best score wins
        (random_cats, c, lam),  # n = C: there is only one subset
    ]
    for cats, k, lam_ in cases:
        greedy = objective(normalise(f), cats, diversify(f, cats, k, lam_), lam_)
        assert greedy == pytest.approx(brute_force_best(f, cats, k, lam_), abs=1e-9)


def test_greedy_is_not_optimal_in_general():
    # Why the brute-force test is restricted to the cases above. Item 0 {a, b} is best alone but
    # half-overlaps items 1 {a} and 3 {b}, which differ from each other. Greedy takes 0 then 1:
    # Q = 1 + 0.9 + 0.5 = 2.4; the pair (1, 3) has Q = 0.9 + 0.85 + 1 = 2.75.
    f = np.array([1.0, 0.9, 0.0, 0.85])
    cats = np.array([[1, 1], [1, 0], [0, 0], [0, 1]], np.float32)
    picked = diversify(f, cats, 2, 1.0)
    assert picked.tolist() == [0, 1]
    assert objective(normalise(f), cats, picked, 1.0) == pytest.approx(2.4)
    assert brute_force_best(f, cats, 2, 1.0) == pytest.approx(2.75)


def test_category_matrix_from_csr():
    # Items 0 (padding, empty), 1 -> {2}, 2 -> {}, 3 -> {0, 3}, 4 -> {1}.
    indptr = np.array([0, 0, 1, 1, 3, 4], np.int64)
    indices = np.array([2, 0, 3, 1], np.int32)
    m = category_matrix(indptr, indices, np.array([3, 1, 2, 4, 3]), 5)
    want = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0],
                     [1, 0, 0, 1, 0]], np.float32)
    assert m.dtype == np.float32
    np.testing.assert_array_equal(m, want)
    with pytest.raises(ValueError, match="items"):
        category_matrix(indptr, indices, np.array([5]), 5)
    with pytest.raises(ValueError, match="category ids"):
        category_matrix(indptr, indices, np.array([3]), 3)


def test_category_matrix_matches_dataset_category_index(random_dataset):
    indptr, ids, names = random_dataset.category_index()
    items = np.arange(1, random_dataset.num_items)
    m = category_matrix(indptr, ids, items, len(names))
    raw = random_dataset.items["categories"].to_list()
    for row, item in zip(m, items):
        assert {names[j] for j in np.flatnonzero(row)} == set(raw[item - 1] or [])
