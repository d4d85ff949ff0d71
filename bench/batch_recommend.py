"""Benchmark: batch top-n for every user (``mirec recommend --all-users``) on a synthetic bundle.

The bundle is bench/serve.py's (:func:`serve.make_bundle`, assembled in memory with
:func:`mirec.serve.bundle.assemble`: ``--items`` clustered unit vectors, ``--users`` users with
5-50 history items from 1-4 clusters) and its index (IVF by default: HNSW over 1M items takes
minutes to build; both are cached under ``--cache``). :func:`mirec.serve.batch.write_recommendations`
then writes the top-``--n`` of the first ``--measure`` users (all when 0) to a Parquet file,
``--block`` users per tower batch, Faiss search and row group, on one thread.

Printed: users/s of the batch (tower + search + aggregation + Parquet), the time the whole
``--users`` would take at that rate (an extrapolation when ``--measure`` is smaller, and said
so), and the process's peak RSS before and after the batch (``ru_maxrss``): the growth is what
the batch itself holds, bounded by a block, whatever the number of users.

Usage::

    python bench/batch_recommend.py                          # 1M items, 100k users, 10k measured
    python bench/batch_recommend.py --items 20000 --users 2000 --measure 0   # a quick smoke run
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import serve  # noqa: E402  (bench/serve.py, beside this script: the synthetic bundle)
from machine import machine_line  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000, help="known users in the bundle")
    ap.add_argument("--measure", type=int, default=10_000, help="users written (0 = all)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--lambda", dest="lam", type=float, default=0.0)
    ap.add_argument("--index", default="ivf", choices=("exact", "hnsw", "ivf"))
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--cache", default=str(ROOT / "data" / "bench-serve"))
    a = ap.parse_args(argv)

    import torch

    from mirec.serve.batch import write_recommendations
    from mirec.serve.recommender import Recommender

    torch.set_num_threads(1)
    s = argparse.Namespace(items=a.items, dim=64, interests=4, users=a.users, clusters=1000, noise=0.8,
                           categories=200, seed=0, index=a.index, nlist=0, nprobe=a.nprobe, hnsw_m=32,
                           ef_construction=200, ef_search=128, build_threads=1, cache=a.cache)
    print(machine_line())
    bundle = serve.make_bundle(s)
    index, _ = serve.open_index(s, bundle)
    rec = Recommender(bundle, index)
    users = sorted(bundle.user_histories)[: a.measure or None]
    before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = write_recommendations(rec, Path(tmp) / "recs.parquet", a.n, a.lam, block=a.block,
                                  users=users, progress=False)
        seconds = time.perf_counter() - t
        size = (Path(tmp) / "recs.parquet").stat().st_size
    after = peak_rss_mib()
    rate = r["users"] / seconds
    print(f"{a.items:,} items ({index.kind}), {a.users:,} users in the bundle, n = {a.n}, "
          f"lambda = {a.lam:g}, block = {a.block}")
    print(f"wrote {r['users']:,} users ({r['rows']:,} rows, {size / 2**20:.1f} MiB) in {seconds:.1f} s: "
          f"{rate:,.0f} users/s")
    what = "extrapolated" if r["users"] < a.users else "measured"
    print(f"all {a.users:,} users: {a.users / rate / 60:.1f} min ({what})")
    print(f"peak RSS: {before:,.0f} MiB before the batch (bundle + index), {after:,.0f} MiB after "
          f"(+{after - before:,.0f} MiB)")


if __name__ == "__main__":
    main()
