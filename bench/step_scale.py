"""Benchmark: does a training step's cost grow with the catalogue? (issue 25, ``train.optimizer``)

For each catalogue size and optimiser a fresh child process builds a synthetic data set in
memory (3,000 users, ~90,000 events, item ids drawn uniformly from the catalogue, so most of a
1.7M-item table is never read), sets up ComiRec-SA as :func:`mirec.train.loop.train` does
(d = 64, K = 4, max_len 20, sampled softmax with 1,000 log-uniform negatives, batch 256, one
thread) and times ``--batches`` training steps after ``--warmup`` untimed ones (no evaluation).
It prints examples/s per (size, optimiser), the child's peak RSS, and the ratio of the large
catalogue's examples/s to the small one's (the issue's target: >= 0.8; before: 0.053).
Figures only; never asserts on timings.

Usage::

    python bench/step_scale.py                                   # 12,000 vs 1,700,000 items
    python bench/step_scale.py --sizes 2000,50000 --batches 5    # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

USERS, MEAN_LEN, BATCH = 3_000, 30, 256


def in_memory_dataset(num_items: int, seed: int = 0):
    """3,000 users x ~30 events over item ids 1..num_items-1 (the table has num_items rows)."""
    import numpy as np
    import polars as pl

    from mirec.data.dataset import Dataset

    rng = np.random.default_rng(seed)
    lens = rng.integers(MEAN_LEN // 2, MEAN_LEN * 3 // 2 + 1, USERS)  # (U,)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)  # (U + 1,)
    e = int(offsets[-1])
    return Dataset(path=Path("<memory>"), meta={}, user=np.repeat(np.arange(USERS, dtype=np.int32), lens),
                   item=rng.integers(1, num_items, e).astype(np.int32), ts=np.arange(e, dtype=np.int64),
                   offsets=offsets, items=pl.DataFrame({"item": np.arange(1, num_items)}),
                   users=pl.DataFrame({"user": np.arange(USERS)}))


def child(num_items: int, optimizer: str, warmup: int, batches: int) -> dict:
    import numpy as np

    from mirec.data.split import SplitConfig
    from mirec.runs import RunConfig, TrainConfig
    from mirec.train.loop import LossModule, setup, train_step

    ds = in_memory_dataset(num_items)
    cfg = RunConfig(model="comirec-sa", train=TrainConfig(loss="sampled", batch_size=BATCH, threads=1,
                                                          optimizer=optimizer, device="cpu"),
                    split=SplitConfig(max_len=20))
    split, model, opt, sampler = setup(cfg, ds)
    fn = LossModule(model, cfg.train, sampler, ds.num_items)
    rng = np.random.default_rng(1)
    batch = lambda: rng.choice(split.num_examples, BATCH, replace=False)  # noqa: E731
    for _ in range(warmup):
        train_step(opt, ds, split, batch(), cfg, fn)
    t0 = time.perf_counter()
    for _ in range(batches):
        train_step(opt, ds, split, batch(), cfg, fn)
    dt = time.perf_counter() - t0
    return {"items": num_items, "optimizer": optimizer, "events": len(ds.item),
            "examples_per_s": round(batches * BATCH / dt, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12000,1700000", help="catalogue sizes, the first is the baseline")
    ap.add_argument("--optimizers", default="adam,sparse")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # "items,optimizer": run one, print JSON
    a = ap.parse_args()
    if a.child:
        n, opt = a.child.split(",")
        print(json.dumps(child(int(n), opt, a.warmup, a.batches)))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = {}
    print(f"{'items':>10} {'optimizer':>9} {'examples/s':>11} {'peak RSS GiB':>13}")
    for opt in a.optimizers.split(","):
        for n in sizes:
            p = subprocess.run([sys.executable, __file__, "--child", f"{n},{opt}", "--warmup", str(a.warmup),
                                "--batches", str(a.batches)], capture_output=True, text=True, check=True)
            r = rows[n, opt] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"{n:>10,} {opt:>9} {r['examples_per_s']:>11,.0f} {r['peak_rss_gib']:>13.2f}", flush=True)
    for opt in a.optimizers.split(","):
        base = rows[sizes[0], opt]["examples_per_s"]
        for n in sizes[1:]:
            print(f"{opt}: examples/s at {n:,} items / at {sizes[0]:,} = "
                  f"{rows[n, opt]['examples_per_s'] / base:.3f}")


if __name__ == "__main__":
    main()
