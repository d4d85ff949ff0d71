"""ItemIndex: exact search against brute force, padding, persistence, HNSW recall, auto choice."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mirec.errors import MirecConfigError, MirecDataError
from mirec.serve.index import (
    IndexConfig,
    ItemIndex,
    merged_topm,
    recall_at,
    recommend_recall,
    tune_nprobe,
)

faiss.omp_set_num_threads(1)


def brute_force(vectors: np.ndarray, queries: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-m item ids (1..N-1) and scores by inner product, padding row 0 excluded."""
    s = queries @ vectors[1:].T  # (Q, N-1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(s, order, 1), order + 1


def clustered(rng, n: int, d: int, clusters: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, centres


def test_exact_matches_brute_force():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((300, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    index = ItemIndex.build(v, IndexConfig(kind="exact"))
    scores, ids = index.search(q, 10)
    want_s, want_ids = brute_force(v, q, 10)
    assert index.kind == "exact" and index.num_items == 300 and index.dim == 16
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (7, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)


def test_padding_never_returned_even_when_it_scores_best():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((20, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    v[0] = 100.0 * q.mean(0)  # row 0 would beat every item for these queries
    for kind in ("exact", "hnsw"):
        _, ids = ItemIndex.build(v, IndexConfig(kind=kind)).search(q, 19)
        assert (ids != 0).all(), kind
        assert sorted(ids[0].tolist()) == list(range(1, 20)), kind


def test_fewer_items_than_m_pads_with_minus_one_and_minus_inf():
    v = np.eye(4, dtype=np.float32)  # items 1..3
    scores, ids = ItemIndex.build(v, IndexConfig(kind="exact")).search(v[1:2], 5)
    assert ids[0, 0] == 1 and set(ids[0, :3].tolist()) == {1, 2, 3}
    assert ids[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 3:]).all() and np.isfinite(scores[0, :3]).all()


def test_non_contiguous_float64_queries_are_accepted():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((50, 6)).astype(np.float32)
    q = rng.standard_normal((6, 4)).T  # (4, 6) float64, Fortran order
    index = ItemIndex.build(v, IndexConfig(kind="exact"))
    _, ids = index.search(q, 5)
    np.testing.assert_array_equal(ids, brute_force(v, q.astype(np.float32), 5)[1])


def test_wrong_query_dim_names_both_dims():
    index = ItemIndex.build(np.ones((5, 8), np.float32), IndexConfig(kind="exact"))
    with pytest.raises(MirecDataError, match=r"dim 7 .* index dim 8"):
        index.search(np.ones((2, 7), np.float32), 3)
    with pytest.raises(ValueError, match="m"):
        index.search(np.ones((2, 8), np.float32), 0)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(3)
    v = rng.standard_normal((500, 12)).astype(np.float32)
    q = rng.standard_normal((9, 12)).astype(np.float32)
    cfg = IndexConfig(kind=kind)
    index = ItemIndex.build(v, cfg)
    path = tmp_path / "sub" / "items.faiss"
    index.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["items.faiss"]  # no temp file left behind
    loaded = ItemIndex.load(path, cfg)
    assert (loaded.kind, loaded.num_items, loaded.dim) == (kind, 500, 12)
    s0, i0 = index.search(q, 20)
    s1, i1 = loaded.search(q, 20)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(s0, s1)


def test_load_corrupt_or_missing_names_the_file(tmp_path):
    bad = tmp_path / "broken.faiss"
    bad.write_bytes(b"this is not a faiss index at all")
    with pytest.raises(MirecDataError, match="broken.faiss"):
        ItemIndex.load(bad, IndexConfig())
    good = tmp_path / "trunc.faiss"
    ItemIndex.build(np.ones((100, 8), np.float32), IndexConfig(kind="exact")).save(good)
    good.write_bytes(good.read_bytes()[:50])
    with pytest.raises(MirecDataError, match="trunc.faiss"):
        ItemIndex.load(good, IndexConfig())
    with pytest.raises(MirecDataError, match="missing.faiss"):
        ItemIndex.load(tmp_path / "missing.faiss", IndexConfig())


def test_hnsw_recall_at_50():
    rng = np.random.default_rng(4)
    v, centres = clustered(rng, 20_000, 64, 50)
    q = centres[rng.integers(0, 50, 50)] + 0.5 * rng.standard_normal((50, 64)).astype(np.float32)
    # Smaller graph settings than the defaults keep the build ~1 s on a loaded 2-core machine.
    hnsw = ItemIndex.build(v, IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=64, ef_search=128))
    exact = ItemIndex.build(v, IndexConfig(kind="exact"))
    assert hnsw.kind == "hnsw"
    assert recall_at(exact, exact, q, 50) == 1.0
    assert recall_at(hnsw, exact, q, 50) >= 0.95


def test_recall_at_counts_overlap():
    v = np.eye(6, dtype=np.float32)
    exact = ItemIndex.build(v, IndexConfig(kind="exact"))

    class Shifted:  # a fake approximate index that gets one of two right
        num_items = 6

        def search(self, queries, m):
            s, ids = exact.search(queries, m)
            ids = ids.copy()
            ids[:, 1] = 5  # replace the true second item with a wrong one
            return s, ids

    q = np.array([[0, 1, 0.5, 0, 0, 0]], np.float32)  # exact top-2: items 1, 2
    assert recall_at(Shifted(), exact, q, 2) == pytest.approx(0.5)


def test_auto_picks_exact_up_to_threshold_then_ivf_or_what_approximate_says():
    rng = np.random.default_rng(5)
    cfg = IndexConfig(kind="auto", hnsw_above=100)
    assert ItemIndex.build(rng.standard_normal((101, 4)), cfg).kind == "exact"  # 100 real items
    assert ItemIndex.build(rng.standard_normal((102, 4)), cfg).kind == "ivf"  # 101 real items
    cfg = IndexConfig(kind="auto", hnsw_above=100, approximate="hnsw")
    assert ItemIndex.build(rng.standard_normal((102, 4)), cfg).kind == "hnsw"


@pytest.mark.parametrize("field,value", [("kind", "ivfpq"), ("approximate", "exact"), ("hnsw_above", -1), ("hnsw_m", 1),
                                         ("ef_construction", 0), ("ef_search", 0), ("threads", 0)])
def test_config_validate_names_field(field, value):
    cfg = IndexConfig(**{field: value})
    with pytest.raises(MirecConfigError, match=f"index.{field}"):
        cfg.validate()


def test_merged_recommendation_is_the_max_over_interests_top_m():
    rng = np.random.default_rng(7)
    v = rng.standard_normal((300, 8)).astype(np.float32)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    owner = np.array([0, 0, 0, 1, 2, 2])  # users with 3, 1 and 2 interests
    got = merged_topm(ItemIndex.build(v, IndexConfig(kind="exact")), q, owner, 10)
    for u in range(3):
        best = (q[owner == u] @ v[1:].T).max(0)  # (N - 1,) max over the user's interests
        np.testing.assert_array_equal(got[u], np.argsort(-best, kind="stable")[:10] + 1)


def test_ivf_nprobe_is_tuned_to_the_target_and_kept_in_the_file(tmp_path):
    rng = np.random.default_rng(8)
    v, centres = clustered(rng, 20_000, 32, 60, noise=0.8)
    q = centres[rng.integers(0, 60, 120)] + 0.8 * rng.standard_normal((120, 32)).astype(np.float32)
    owner = np.repeat(np.arange(30), 4)  # 30 users with 4 interests each
    cfg = IndexConfig(kind="ivf", ivf_nlist=256)
    ivf, exact = ItemIndex.build(v, cfg), ItemIndex.build(v, IndexConfig(kind="exact"))
    assert ivf.index.nprobe == 16  # untuned: the default
    assert recommend_recall(exact, exact, q, owner) == 1.0
    nprobe, recall = tune_nprobe(ivf, exact, q, owner, 0.95)
    assert recall >= 0.95 and ivf.index.nprobe == nprobe > 1
    ivf.index.nprobe = nprobe // 2  # the next smaller power of two misses the target
    assert recommend_recall(ivf, exact, q, owner) < 0.95
    ivf.index.nprobe = nprobe
    ivf.save(tmp_path / "ivf.faiss")
    assert ItemIndex.load(tmp_path / "ivf.faiss", IndexConfig()).index.nprobe == nprobe
    assert ItemIndex.load(tmp_path / "ivf.faiss", IndexConfig(ivf_nprobe=3)).index.nprobe == 3


def test_auto_builds_ivf_above_its_threshold_whatever_approximate_says():
    cfg = IndexConfig(hnsw_above=10, ivf_above=100, approximate="hnsw")
    assert cfg.resolved_kind(10) == "exact" and cfg.resolved_kind(100) == "hnsw"
    assert cfg.resolved_kind(101) == "ivf"
    with pytest.raises(MirecConfigError, match="index.target_recall"):
        IndexConfig(target_recall=1.5).validate()
