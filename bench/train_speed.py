"""Benchmark: training speed of the neural retrievers (examples/s, seconds per epoch).

For every (data set, model, thread count) a fresh child process of this script loads the data
set, builds the model as :func:`mirec.train.loop.train` does (d = 64, K = 4, max_len 20,
batch 256, Adam) and runs the training loop's own steps (``windows`` -> ``batch_loss`` ->
backward -> Adam step) for ``--warmup`` untimed then ``--batches`` timed batches. Seconds per
epoch are extrapolated from the timed batches (no evaluation). The child also times a big matmul
at the same thread count (the machine's practical FLOP/s peak) and reports its peak RSS.

The loss is mirec's default (``--loss auto``: full softmax up to 20,000 items, otherwise sampled
softmax with 1,000 log-uniform negatives shared by the batch); ``--loss sampled --negatives 10``
is the like-for-like setting of the peer comparison (the peer drew 10 negatives per example;
mirec's are shared by the batch, so it costs the same per example, 2 D S). Prints figures
only; never asserts on timings.

Data sets: ``ml-100k`` is ``data/ml-100k`` (``mirec data fetch ml-100k --out data/ml-100k``);
``synth-1m`` is generated once by :func:`mirec.data.synth.synth_dataset` into
``data/bench-synth-1m`` (about 1M events, 25,000 items) and reused afterwards.

Usage::

    python bench/train_speed.py                                  # all models, 1 and 2 threads
    python bench/train_speed.py --loss sampled --negatives 10    # like for like with the peer
    python bench/train_speed.py --models youtube-dnn,comirec-sa --datasets ml-100k --batches 20
    python bench/train_speed.py --compile --datasets ml-100k --threads 1   # train.compile=true
    python bench/train_speed.py --precision bf16 --datasets ml-100k --threads 1   # bf16 autocast
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

DATASETS = {"ml-100k": ROOT / "data" / "ml-100k", "synth-1m": ROOT / "data" / "bench-synth-1m"}
MODELS = ("youtube-dnn", "gru4rec", "mind", "comirec-dr", "comirec-sa")
PEER = {"youtube-dnn": 46_000, "mind": 16_000, "comirec-sa": 9_000, "comirec-dr": 300}
DIM, K, MAX_LEN, BATCH = 64, 4, 20, 256


def synth_config() -> Any:
    """20,000 users x mean length 50 = ~1M events; 125 categories x 200 = 25,000 items."""
    from mirec.data.synth import SynthConfig

    return SynthConfig(num_users=20_000, num_categories=125, items_per_category=200,
                       mean_len=50.0, seed=0)


def flops_per_example(name: str, cfg: Any, num_items: int, negatives: int | None) -> dict:
    """Forward+backward FLOPs of the main matmuls per example (backward ~ 2x forward).

    Embedding gathers, element-wise ops and Adam are free. ``negatives`` None = full softmax.
    """
    D, L, k = cfg.dim, cfg.max_len, getattr(cfg, "num_interests", 1)
    if name == "youtube-dnn":  # masked mean, then the MLP D -> hidden... -> D
        enc = 2 * L * D + sum(2 * a * b for a, b in itertools.pairwise((D, *cfg.hidden, D)))
    elif name == "gru4rec":  # 3 gates, each W_x x + W_h h, per step and layer
        enc = cfg.num_layers * L * 3 * 2 * (D * D + D * D)
    elif name == "mind":  # shared map S, routing (r weighted sums, r-1 logit updates), MLP per capsule
        r = cfg.routing_iters
        enc = (2 * L * D * D + (2 * r - 1) * 2 * k * L * D + k * 4 * D * cfg.hidden
               + 2 * 2 * k * D)
    elif name == "comirec-dr":  # u = W_ij e_i once (L K bilinear maps), then routing as MIND
        r = cfg.routing_iters
        enc = 2 * L * k * D * D + (2 * r - 1) * 2 * k * L * D + 2 * k * D
    elif name == "comirec-sa":  # W1 (D -> 4D), W2 (4D -> K), A^T H, readout
        h = cfg.hidden_factor * D
        enc = 2 * L * D * h + 2 * L * h * k + 2 * k * L * D + 2 * k * D
    else:
        raise ValueError(name)
    soft = 2 * D * (num_items if negatives is None else negatives + 1)
    return {"encoder": 3 * enc, "softmax": 3 * soft, "total": 3 * (enc + soft)}


def child(a: argparse.Namespace) -> None:
    """Time one (data set, model, threads) in this process; print one JSON line."""
    import numpy as np
    import torch
    from machine import matmul_peak  # bench/machine.py, beside this script

    from mirec.data.dataset import load_dataset
    from mirec.data.split import SplitConfig
    from mirec.models.registry import SPECS
    from mirec.train.loop import LossModule, RunConfig, TrainConfig, compiled, setup, train_step

    torch.set_num_threads(a.threads)
    peak = matmul_peak()
    ds = load_dataset(DATASETS[a.datasets], verify=False)  # checksums: not what is timed
    fields = {f.name for f in dataclasses.fields(SPECS[a.models].config)}
    margs = {k: v for k, v in {"dim": DIM, "num_interests": K}.items() if k in fields}
    tc = TrainConfig(batch_size=BATCH, loss=a.loss, threads=a.threads, compile=a.compile, device="cpu",
                     precision=a.precision, **({"num_negatives": a.negatives} if a.negatives else {}))
    cfg = RunConfig(model=a.models, model_args=margs, train=tc, split=SplitConfig(max_len=MAX_LEN))
    cfg.validate(), tc.validate()
    split, model, opt, sampler = setup(cfg, ds)  # the trainer's own set-up and step
    n_ex = split.num_examples
    perm = np.random.default_rng(tc.seed).permutation(n_ex)
    full_batches = max(1, n_ex // BATCH)
    model.train()
    # as train() does: the loss module, compiled with train.compile (the warm-up compiles it)
    loss_fn = LossModule(model, tc, sampler, ds.num_items)
    if a.compile:
        loss_fn = compiled(loss_fn, dynamic=False)

    def step(b: int) -> None:
        idx = perm[(b % full_batches) * BATCH:(b % full_batches + 1) * BATCH]
        train_step(opt, ds, split, idx, cfg, loss_fn)

    for b in range(a.warmup):
        step(b)
    t0 = time.perf_counter()
    for b in range(a.warmup, a.warmup + a.batches):
        step(b)
    dt = time.perf_counter() - t0
    ex_s = a.batches * BATCH / dt
    neg = tc.num_negatives if sampler is not None else None
    print(json.dumps({
        "examples": n_ex, "num_items": ds.num_items, "ex_s": ex_s, "epoch_s": n_ex / ex_s,
        "loss": f"sampled S={neg}" if neg else f"full N={ds.num_items}",
        "flops": flops_per_example(a.models, model.cfg, ds.num_items, neg), "peak": peak,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }))


def ensure_dataset(name: str) -> bool:
    """True when ``name`` is ready; generates synth-1m on first use."""
    path = DATASETS[name]
    if name == "ml-100k":
        if not (path / "meta.json").exists():
            print(f"{name}: {path} missing; run `mirec data fetch ml-100k --out data/ml-100k` "
                  f"first. Skipping it.")
            return False
        return True
    from mirec.data.synth import synth_dataset

    cfg = synth_config()
    meta = path / "meta.json"
    if meta.exists() and json.loads(meta.read_text())["source"].get("config") == cfg.to_dict():
        print(f"{name}: reusing {path}")
        return True
    t = time.perf_counter()
    synth_dataset(cfg, path, progress=False)
    print(f"{name}: generated {path} in {time.perf_counter() - t:.1f} s")
    return True


def fmt_rate(x: float) -> str:  # 46000 -> "46.0k"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated; default all")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--datasets", default="ml-100k,synth-1m", help="ml-100k and/or synth-1m")
    ap.add_argument("--batches", type=int, default=200, help="timed batches")
    ap.add_argument("--warmup", type=int, default=10, help="untimed batches first")
    ap.add_argument("--loss", default="auto", choices=("auto", "full", "sampled"))
    ap.add_argument("--negatives", type=int, default=None,
                    help="sampled-softmax negatives per batch (default: TrainConfig's 1000)")
    ap.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile the loss)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="train.precision (bf16: CPU autocast of the training loss)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:  # --models, --datasets and --threads hold one value each here
        a.threads = int(a.threads)
        return child(a)
    models, datasets = a.models.split(","), a.datasets.split(",")
    threads = [int(t) for t in a.threads.split(",")]
    bad = [m for m in models if m not in MODELS] + [d for d in datasets if d not in DATASETS]
    if bad:
        raise SystemExit(f"unknown model or data set: {', '.join(bad)}")
    import torch
    from machine import machine_line  # bench/machine.py, beside this script
    print(machine_line())
    print(f"torch {torch.__version__}; d={DIM}, K={K}, "
          f"max_len={MAX_LEN}, batch={BATCH}; loss={a.loss}, negatives="
          f"{a.negatives or 'default'}; {a.warmup} warm-up + {a.batches} timed batches"
          + ("; train.compile" if a.compile else "") + ("; bf16" if a.precision == "bf16" else ""))
    rows = []
    for ds in [d for d in datasets if ensure_dataset(d)]:
        for m, t in itertools.product(models, threads):
            cmd = [sys.executable, __file__, "--child", "--models", m, "--datasets", ds,
                   "--threads", str(t), "--batches", str(a.batches), "--warmup", str(a.warmup),
                   "--loss", a.loss] + (["--negatives", str(a.negatives)] if a.negatives else []) \
                + (["--compile"] if a.compile else []) + ["--precision", a.precision]
            env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                print(f"{ds} {m} x{t}: FAILED (exit {p.returncode})\n{p.stderr[-2000:]}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(dataset=ds, model=m, threads=t)
            rows.append(r)
            print(f"{ds:9} {m:11} x{t}: {r['ex_s']:,.0f} ex/s, {r['epoch_s']:.1f} s/epoch "
                  f"({r['examples']:,} examples, {r['loss']})")
    if not rows:
        raise SystemExit("no measurement")
    hdr = (f"{'dataset':9} {'model':11} {'thr':>3} {'loss':>15} {'ex/s':>8} {'s/epoch':>8} "
           f"{'RSS MiB':>8} {'MFLOP/ex':>9} {'(enc+sm)':>13} {'peak GF/s':>9} "
           f"{'bound ex/s':>10} {'% bound':>7} {'peer ex/s':>9} {'ratio':>6}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        f, peer = r["flops"], PEER.get(r["model"])
        bound = r["peak"] / f["total"]
        ratio = f"{r['ex_s'] / peer:.2f}x" if peer else "-"
        split = f"{f['encoder'] / 1e6:.2f}+{f['softmax'] / 1e6:.2f}"
        print(f"{r['dataset']:9} {r['model']:11} {r['threads']:>3} {r['loss']:>15} "
              f"{fmt_rate(r['ex_s']):>8} {r['epoch_s']:>8.1f} {r['rss_mib']:>8.0f} "
              f"{f['total'] / 1e6:>9.2f} {split:>13} {r['peak'] / 1e9:>9.1f} "
              f"{fmt_rate(bound):>10} {100 * r['ex_s'] / bound:>6.1f}% "
              f"{fmt_rate(peer) if peer else '-':>9} {ratio:>6}")
    print("\nMFLOP/ex: forward+backward (3x forward) of the main matmuls, encoder + softmax. "
          "peak: best n=1024 float32 matmul at the same thread count. bound = peak / MFLOP/ex.\n"
          "peer: examples/s at 1 thread with 10 negatives per example; compare with "
          "`--threads 1 --loss sampled --negatives 10` rows.")


if __name__ == "__main__":
    main()
