"""Benchmark: vectors for new items (cold start) on MovieLens-100K, against two baselines.

10% of the items (seeded) are held out: every event on them is dropped from the data set, and a
small ComiRec-SA is trained on the rest (``--epochs``, default 5). The held-out items then get
vectors the way ``--new-items`` gives them (:func:`mirec.serve.catalogue.cold_vectors`: the
mean of the trained vectors of the items sharing a genre, unit length under cosine), and each
user who rated held-out items is scored: interests from the user's kept (warm) events, the
last ``max_len`` of them, as serving does; targets: the held-out items the user rated.

Recall@50 = (targets in the top 50) / (targets), averaged over those users, in two settings:

* among new items: the held-out items alone are ranked (what "which new items to show" needs);
* full catalogue: new and trained items compete, the user's warm events excluded; the share
  of new items in those top-50 lists is printed too (new items are 10% of the catalogue).

The variant "not re-normalised" keeps the mean at its own length (below 1, shorter the more the
category's items spread), which lowers new items' scores against trained ones.
Baselines: random unit vectors for the new items; popularity (among new items: the mean
training popularity of the items of their genres, the same ranking for everyone; full
catalogue: the most popular trained items, so new items, with no events, are never shown).

Usage::

    python bench/cold_start.py                        # data/ml-100k (`mirec data fetch ml-100k`)
    python bench/cold_start.py --data data/ml-100k --epochs 5 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from machine import machine_line  # noqa: E402

TOP = 50


def drop_items(ds, cold: np.ndarray):
    """The data set without any event on the ``cold`` item ids (same dense ids)."""
    keep = ~np.isin(ds.item, cold)
    counts = np.bincount(ds.user[keep], minlength=ds.num_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    meta = {**ds.meta, "dataset_checksum": ds.checksum + "-cold"}
    return dataclasses.replace(ds, meta=meta, user=ds.user[keep], item=ds.item[keep], ts=ds.ts[keep],
                               offsets=offsets, rating=None if ds.rating is None else ds.rating[keep])


def top50(scores: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(U, 50) item ids of the best 50 columns of ``scores`` (U, C); ``columns``: column -> id."""
    return columns[np.argsort(-scores, axis=1, kind="stable")[:, :TOP]]


def recall(top: np.ndarray, targets: list[np.ndarray]) -> float:
    """Mean over users of |top-50 ∩ targets| / |targets|."""
    return float(np.mean([np.isin(t, row).sum() / len(t) for t, row in zip(targets, top)]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "ml-100k"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--held-out", type=float, default=0.1, help="fraction of items held out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch

    import mirec
    from mirec.data.dataset import load_dataset
    from mirec.serve.bundle import bundle_from_run
    from mirec.serve.catalogue import cold_vectors
    from mirec.serve.recommender import Recommender

    torch.set_num_threads(1)
    print(machine_line())
    ds = load_dataset(a.data)
    rng = np.random.default_rng(a.seed)
    N = ds.num_items
    cold = np.sort(rng.choice(np.arange(1, N), size=int(round(a.held_out * (N - 1))), replace=False))
    warm_ds = drop_items(ds, cold)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mirec.fit(model="comirec-sa", data=warm_ds, out=Path(tmp) / "run", progress=False,
                  train={"epochs": a.epochs, "seed": a.seed})
        bundle, _ = bundle_from_run(Path(tmp) / "run", warm_ds)
    train_s = time.perf_counter() - t

    # users with held-out events: interests from their warm events, targets = held-out items
    is_cold = np.zeros(N, dtype=bool)
    is_cold[cold] = True
    users, hists, targets = [], [], []
    for u in range(ds.num_users):
        seq = ds.item[ds.offsets[u]:ds.offsets[u + 1]]
        t_u, h_u = np.unique(seq[is_cold[seq]]), seq[~is_cold[seq]]
        if len(t_u) and len(h_u):
            users.append(u), hists.append(h_u.tolist()), targets.append(t_u)
    rec = Recommender(bundle, index=None)
    V, live, _, _ = rec.interests_batch(hists)  # (U, K, D), (U, K)

    def max_over_interests(E: np.ndarray) -> np.ndarray:  # (C, D) -> (U, C)
        s = np.einsum("ukd,cd->ukc", V, E)
        return np.where(live[:, :, None], s, -np.inf).max(1)

    warm_pool = ~is_cold
    warm_pool[0] = False
    cats = [bundle.item_categories[i] for i in cold]
    vectors = {"category mean (mirec)": cold_vectors(bundle, cats, warm_pool)}
    if bundle.cosine:  # the same mean left at its own length (< 1: shorter for a spread category)
        cosine_off = dataclasses.replace(bundle, config=dataclasses.replace(
            bundle.config, train=dataclasses.replace(bundle.config.train, cosine=False)))
        vectors["category mean, not re-normalised"] = cold_vectors(cosine_off, cats, warm_pool)
    noise = rng.standard_normal((len(cold), bundle.item_vectors.shape[1])).astype(np.float32)
    vectors["random vectors"] = noise / np.linalg.norm(noise, axis=1, keepdims=True)
    if not bundle.cosine:  # random vectors at the trained items' typical norm
        vectors["random vectors"] *= np.linalg.norm(bundle.item_vectors[warm_pool], axis=1).mean()
    counts = np.bincount(warm_ds.item, minlength=N).astype(np.float64)

    rows = []
    history_mask = np.zeros((len(users), N), dtype=bool)
    for r, h in enumerate(hists):
        history_mask[r, h] = True
    for name, E in vectors.items():
        among = recall(top50(max_over_interests(E), cold), targets)
        full_E = bundle.item_vectors.copy()
        full_E[cold] = E
        full = max_over_interests(full_E)  # (U, N)
        full[:, 0] = -np.inf
        full[history_mask] = -np.inf
        top = top50(full, np.arange(N))
        rows.append((name, among, recall(top, targets), is_cold[top].mean()))
    # popularity: a new item's score is the mean training count of its genres' trained items
    genre_pop = np.zeros(len(cold))
    for r, cs in enumerate(cats):
        mates = [i for i in range(1, N) if warm_pool[i] and set(bundle.item_categories[i]) & set(cs)]
        genre_pop[r] = counts[mates].mean() if mates else 0.0
    pop_full = np.where(history_mask, -np.inf, np.broadcast_to(counts, history_mask.shape))
    pop_full[:, 0] = -np.inf
    top = top50(pop_full, np.arange(N))
    rows.append(("popularity", recall(top50(np.broadcast_to(genre_pop, (len(users), len(cold))), cold),
                                      targets), recall(top, targets), is_cold[top].mean()))

    print(f"{a.data}: {N - 1} items, {len(cold)} held out ({a.held_out:.0%}, seed {a.seed}); ComiRec-SA "
          f"trained {a.epochs} epochs without them in {train_s:.0f} s; {len(users)} users rated held-out "
          f"items ({sum(len(t) for t in targets)} (user, item) targets)")
    print(f"| new-item vectors | Recall@{TOP} among new items | Recall@{TOP} full catalogue | "
          f"new items in the full top {TOP} |")
    print("|---|---|---|---|")
    for name, among, full, share in rows:
        print(f"| {name} | {among:.3f} | {full:.3f} | {share:.1%} |")


if __name__ == "__main__":
    main()
