"""Benchmark: exact evaluation and the serving index at catalogue scale (default 1.7M items, d = 64,
K = 4 interests), on vectors built in memory.

Items are clustered unit vectors: ``--clusters`` Gaussian centres, item = centre + noise,
L2-normalised (so ANN recall is meaningful). A user's K interests each sit near one centre.

``--mode eval`` (default): exact top-``--n`` by max over interests for ``--users`` users with
:func:`mirec.eval.blocked.blocked_topn` (user blocks x item blocks, running top-n merge), in
batches of ``--batch`` users as evaluation runs. Prints wall and CPU seconds, the figure
extrapolated linearly to ``--target-users`` (10,000: the issue's target is <= 4 minutes on one
thread), the matmul rate, and peak RSS; checks the first 4 users' lists against a brute-force
sort of their full score rows.

``--mode serve``: builds the index ``mirec index build`` builds for this catalogue
(``IndexConfig()``'s auto choice: IVF above 500,000 items, nlist about 4 sqrt(N)), tunes nprobe
to recall@50 >= 0.95 per recommendation (max over interests) against exact on ``--recall-users``
users, and prints build seconds, index bytes, the recall and the in-process latency of one
recommendation (K interest searches + max-over-interests merge of the top 50) over
``--latency-users`` users: p50 / p99. One search thread.

Usage::

    nice -n 15 python bench/eval_scale.py                       # eval: 500 users, 1.7M items
    nice -n 15 python bench/eval_scale.py --mode serve          # index at 1.7M items
    python bench/eval_scale.py --items 200000 --users 200       # quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def clustered_items(rng: np.random.Generator, n: int, d: int, clusters: int,
                    noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(n + 1, d) unit item vectors (row 0: padding, zeros) around ``clusters`` centres."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    v = np.zeros((n + 1, d), dtype=np.float32)
    for a in range(1, n + 1, 200_000):  # in slices: no (n, d) temporaries
        z = min(a + 200_000, n + 1)
        x = centres[rng.integers(0, clusters, z - a)]
        x += noise / np.sqrt(d) * rng.standard_normal((z - a, d)).astype(np.float32)
        v[a:z] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return v, centres


def user_interests(rng: np.random.Generator, centres: np.ndarray, users: int, k: int,
                   noise: float) -> np.ndarray:
    """(users, k, d) unit interest vectors, each near a random centre."""
    d = centres.shape[1]
    q = centres[rng.integers(0, len(centres), (users, k))]
    q = q + noise / np.sqrt(d) * rng.standard_normal((users, k, d)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=2, keepdims=True)).astype(np.float32)


def run_eval(a: argparse.Namespace, items: np.ndarray, V: np.ndarray) -> None:
    from mirec.eval.blocked import ITEM_BLOCK, USER_BLOCK, blocked_topn

    item_t, V_t = torch.from_numpy(items), torch.from_numpy(V)
    live = torch.ones(V.shape[:2], dtype=torch.bool)
    none = torch.zeros(0, dtype=torch.long)
    ib, ub = a.item_block or ITEM_BLOCK, a.user_block or USER_BLOCK
    t, c = time.perf_counter(), time.process_time()
    tops = [blocked_topn(V_t[s:s + a.batch], live[s:s + a.batch], item_t, a.n, none, none, ib, ub)
            for s in range(0, len(V), a.batch)]
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    top = torch.cat(tops).numpy()
    # exactness on a few users: the full score row sorted by (score desc, id asc)
    s = (V_t[:4] @ item_t.T).amax(1).numpy()  # (4, N)
    s[:, 0] = -np.inf
    ids = np.arange(s.shape[1])
    same = all(np.array_equal(top[i], np.lexsort((ids, -s[i]))[:a.n]) for i in range(len(s)))
    flop = 2 * V.shape[0] * V.shape[1] * (items.shape[0] - 1) * items.shape[1]
    scale = a.target_users / len(V)
    print(f"exact top-{a.n}, {len(V):,} users x K={V.shape[1]} x {items.shape[0] - 1:,} items "
          f"x d={items.shape[1]} (item block {ib}, user block {ub}, batches of {a.batch}): "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU; {flop / cpu / 1e9:.1f} GFLOP/s of matmul per CPU s")
    print(f"extrapolated (x{scale:.0f}, linear in users) to {a.target_users:,} users: "
          f"{wall * scale / 60:.1f} min wall, {cpu * scale / 60:.1f} min CPU (target <= 4 min)")
    print(f"peak RSS {peak_rss_mib():,.0f} MiB (item table {items.nbytes / 2**20:,.0f} MiB); "
          f"first 4 users equal to the full sort: {same}")


def run_serve(a: argparse.Namespace, items: np.ndarray, rng: np.random.Generator,
              centres: np.ndarray) -> None:
    import faiss

    from mirec.serve.index import IndexConfig, ItemIndex, merged_topm, recommend_recall, tune_nprobe

    cfg = IndexConfig()
    t, c = time.perf_counter(), time.process_time()
    index = ItemIndex.build(items, cfg)
    build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
    size = len(faiss.serialize_index(index.index))
    print(f"{index.kind} index over {items.shape[0] - 1:,} items"
          + (f" (nlist {index.index.nlist})" if index.kind == "ivf" else "")
          + f": built in {build_s:.1f} s wall, {build_cpu:.1f} s CPU, {size / 2**20:,.0f} MiB; "
          f"peak RSS {peak_rss_mib():,.0f} MiB")
    Q = user_interests(rng, centres, a.recall_users, a.k, a.user_noise)  # (U, K, D)
    owner = np.repeat(np.arange(len(Q)), a.k)
    exact = ItemIndex.build(items, IndexConfig(kind="exact"))
    t, queries = time.perf_counter(), Q.reshape(-1, Q.shape[2])
    if index.kind == "ivf":
        nprobe, recall = tune_nprobe(index, exact, queries, owner, cfg.target_recall)
        how = f"nprobe {nprobe} (tuned in {time.perf_counter() - t:.1f} s)"
    else:
        recall, how = recommend_recall(index, exact, queries, owner), index.kind
    print(f"{how}: recall@50 per recommendation (max over {a.k} interests) vs exact "
          f"{recall:.4f} on {len(Q)} users")
    del exact
    L = user_interests(rng, centres, a.latency_users, a.k, a.user_noise)
    for u in range(min(20, len(L))):  # warm-up
        merged_topm(index, L[u], np.zeros(a.k, dtype=np.int64), 50)
    wall, cpu = [], []  # CPU time too: on a shared machine the wall p99 is mostly waiting
    for u in range(len(L)):
        t, c = time.perf_counter(), time.thread_time()
        merged_topm(index, L[u], np.zeros(a.k, dtype=np.int64), 50)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    w, c = np.array(wall) * 1e3, np.array(cpu) * 1e3
    print(f"one recommendation ({a.k} interest searches + merge, top 50), {len(L)} users, one "
          f"thread: p50 {np.percentile(w, 50):.2f} ms, p99 {np.percentile(w, 99):.2f} ms wall; "
          f"CPU p50 {np.percentile(c, 50):.2f} ms, p99 {np.percentile(c, 99):.2f} ms "
          f"(target p99 <= 5 ms); peak RSS {peak_rss_mib():,.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("eval", "serve"), default="eval")
    ap.add_argument("--items", type=int, default=1_700_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="interests per user")
    ap.add_argument("--clusters", type=int, default=9_000)
    ap.add_argument("--noise", type=float, default=1.0,
                    help="item spread around its centre (norm of the noise; centres have norm 1)")
    ap.add_argument("--user-noise", type=float, default=1.0)
    ap.add_argument("--users", type=int, default=500, help="eval: users ranked")
    ap.add_argument("--target-users", type=int, default=10_000, help="eval: extrapolated to")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--batch", type=int, default=512, help="eval: users per batch (eval.batch_size)")
    ap.add_argument("--item-block", type=int, default=0, help="0 = mirec.eval.blocked.ITEM_BLOCK")
    ap.add_argument("--user-block", type=int, default=0, help="0 = mirec.eval.blocked.USER_BLOCK")
    ap.add_argument("--recall-users", type=int, default=200)
    ap.add_argument("--latency-users", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; one thread")
    rng = np.random.default_rng(a.seed)
    t = time.perf_counter()
    items, centres = clustered_items(rng, a.items, a.dim, a.clusters, a.noise)
    print(f"{a.items:,} clustered unit vectors ({a.clusters:,} centres) in {time.perf_counter() - t:.1f} s")
    if a.mode == "eval":
        run_eval(a, items, user_interests(rng, centres, a.users, a.k, a.user_noise))
    else:
        run_serve(a, items, rng, centres)


if __name__ == "__main__":
    main()
