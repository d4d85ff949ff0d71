"""Ranking (CTR) quality and training speed on MovieLens-100K: every ranker, mean ± std over seeds.

Quality: for each model, ``mirec train --task ctr`` runs once per seed (each sets the
initialisation, the batch order and any sampled negatives; the time split is fixed) with early
stopping on validation AUC; the table shows test AUC, GAUC and log-loss (mean ± std) and the
median training examples/s and seconds per epoch of those runs. ``results.json`` per model goes
under ``--out``.

Speed: steady-state training examples/s of each model on ``--speed-batches`` batches after a
warm-up, in a fresh process per (model, thread count) so that nothing else shares its threads,
at the peer's setting (d = 32, 50 earlier positives, batch 256). Beside it, the FLOP bound: the
FLOPs of every matmul of a training step (forward and backward, counted from the operands'
shapes as they run) per example, against the best 1024 x 1024 float32 matmul rate.

    python bench/ranking_quality.py                           # all models, seeds 1,2,3
    python bench/ranking_quality.py --models din,dien --seeds 1
    python bench/ranking_quality.py --speed-only --threads 1,2
    python bench/ranking_quality.py --tune --no-speed   # grid on validation, then the table
    python bench/ranking_quality.py --data data/synth-ctr --no-speed   # any prepared data set

``--tune``: for each model the same small grid (``TUNE_GRID``, 4 runs) is trained on seed 1 and
the setting with the best *validation* GAUC is kept for the seeds' runs (test events are never
looked at); finished search runs are reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["embedding-mlp", "din", "dien", "mimn"]
# Peer figures measured on this machine under the same protocol (issue 6): torch-rechub 0.9.0,
# seed 2020, d = 32, profile + target + 50 earlier positives, MLP 200-80, Adam 1e-3.
PEER = {"din": (0.792, 0.716, 0.554, 10_800), "dien": (0.798, 0.720, 0.551, 2_400)}
# Per-model settings (defaults otherwise); MIMN reads a longer history.
# MIMN trains on whole user sequences (train.stream): 8 users a batch gives it enough steps per
# epoch; its ctr.max_len is only the window used when it scores a request in the pipeline.
SETTINGS: dict[str, list[str]] = {"mimn": ["ctr.max_len=200", "train.users_per_batch=8", "train.lr=0.003"]}
# The same search budget for every model: head activation and dropout (in every ranker's config).
TUNE_GRID = {"model_args.activation": ["prelu", "dice"], "model_args.dropout": ["0.0", "0.3"]}


def tune(model: str, ds, out: Path, console: Console, extra: list[str]) -> list[str]:
    """The grid setting with the best validation GAUC on seed 1 (one run each); ``extra``
    overrides (``--set``) apply to every run."""
    from mirec.config import load
    from mirec.experiment import train_ctr_seeds
    from mirec.runs import RankRunConfig

    best, best_sets = -1.0, []
    for values in itertools.product(*TUNE_GRID.values()):
        sets = [f"{k}={v}" for k, v in zip(TUNE_GRID, values)]
        run_dir = out / "tune" / model / "_".join(values)
        done = run_dir / "tune.json"
        if done.exists():
            score = json.loads(done.read_text())["valid_gauc"]
        else:
            cfg = load(RankRunConfig, None, [f"model={model}", *SETTINGS.get(model, []), *sets, *extra])
            # seeded exactly as the table's seed-1 run
            run = train_ctr_seeds(cfg, ds, [1], run_dir, progress=False).to_json()["per_seed"][0]
            score = run["valid"]["gauc"]
            done.write_text(json.dumps({"settings": sets, "valid_gauc": score,
                                        "valid_auc": run["valid"]["auc"], "best_epoch": run["best_epoch"]}))
        console.print(f"  tune {model} {' '.join(sets)}: valid GAUC {score:.4f}")
        if score > best:
            best, best_sets = score, sets
    return best_sets


def speed_child(a: argparse.Namespace) -> None:
    import torch

    from mirec.config import load
    from mirec.data.ctr import TRAIN, build_ctr
    from mirec.data.dataset import load_dataset
    from mirec.train.ctr import (
        RankRunConfig,
        build_ranker,
        epoch_batches,
        make_loss,
        make_optimizer,
        streams,
    )
    from mirec.train.loop import keep_freed_memory

    torch.set_num_threads(a.threads)
    keep_freed_memory()
    cfg = load(RankRunConfig, None, [f"model={a.model}", *SETTINGS.get(a.model, []), *a.set])
    data = build_ctr(load_dataset(a.data), cfg.ctr, split=cfg.split)
    torch.manual_seed(0)
    model = build_ranker(cfg, data.features)
    opt = make_optimizer(model, cfg.train)
    batch_loss = make_loss(model, cfg.train, data)
    stream = streams(model, cfg.train)
    batches = epoch_batches(model, data, data.indices(TRAIN), cfg.train, np.random.default_rng(0))
    model.train()

    def step(b: int) -> int:  # one training step, as the trainer takes it
        j = batches[b % len(batches)]
        loss = batch_loss(data, j)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(j)

    t0 = time.perf_counter()
    for b in range(a.warmup):
        step(b)
    warmup_s = time.perf_counter() - t0  # includes compiling with train.compile=true
    t0, seen = time.perf_counter(), 0
    for b in range(a.speed_batches):
        seen += step(a.warmup + b)
    dt = time.perf_counter() - t0
    hist = "whole sequences" if stream else cfg.ctr.max_len
    # The FLOP bound: the matmuls' FLOPs per example, counted on a few more of the same steps,
    # against the best large matmul rate at this thread count.
    from machine import matmul_flops, matmul_peak  # bench/machine.py, beside this script

    n0 = a.warmup + a.speed_batches
    flops, examples = matmul_flops(lambda: sum(step(n0 + b) for b in range(5)))
    print(json.dumps({"examples_per_s": seen / dt, "max_len": hist, "warmup_s": warmup_s,
                      "flops_per_example": flops / examples, "peak": matmul_peak()}))


def speed(a: argparse.Namespace, models: list[str], console: Console) -> dict[tuple[str, int], float]:
    out = {}
    for m in models:
        for th in [int(t) for t in a.threads.split(",")]:
            cmd = [sys.executable, __file__, "--speed-child", "--model", m, "--threads", str(th),
                   "--data", a.data, "--speed-batches", str(a.speed_batches), "--warmup", str(a.warmup)]
            for s in a.set:
                cmd += ["--set", s]
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            doc = json.loads(r.stdout.strip().splitlines()[-1])
            out[(m, th)] = doc["examples_per_s"]
            bound = doc["peak"] / doc["flops_per_example"]
            console.print(f"  speed {m} ({th} thread{'s' if th > 1 else ''}, history {doc['max_len']}): "
                          f"{doc['examples_per_s']:,.0f} examples/s (warm-up {doc['warmup_s']:.1f} s); "
                          f"matmuls {doc['flops_per_example'] / 1e6:.2f} MFLOP/example, at the "
                          f"{doc['peak'] / 1e9:.0f} GFLOP/s matmul peak a bound of {bound:,.0f} "
                          f"examples/s ({doc['examples_per_s'] / bound:.0%} of it)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--data", default=str(ROOT / "data" / "ml-100k"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "ranking"))
    ap.add_argument("--set", action="append", default=[],
                    help="override for every model, e.g. train.lr=0.002")
    ap.add_argument("--threads", default="1,2", help="thread counts for the speed section")
    ap.add_argument("--speed-batches", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--tune", action="store_true", help="pick each model's setting on validation first")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--speed-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.speed_child:
        a.threads = int(a.threads)
        return speed_child(a)

    console = Console()
    models = [m for m in a.models.split(",") if m]
    seeds = [int(s) for s in a.seeds.split(",")]
    rates = {}
    if not a.no_speed:
        from machine import machine_line  # bench/machine.py, beside this script

        console.print(machine_line())
        rates = speed(a, models, console)
    docs = {}
    if not a.speed_only:
        from mirec.config import load
        from mirec.data.dataset import load_dataset
        from mirec.experiment import train_ctr_seeds
        from mirec.runs import RankRunConfig

        ds = load_dataset(a.data)
        for m in models:
            chosen = tune(m, ds, Path(a.out), console, a.set) if a.tune else []
            cfg = load(RankRunConfig, None, [f"model={m}", *SETTINGS.get(m, []), *chosen, *a.set])
            t0 = time.perf_counter()
            docs[m] = train_ctr_seeds(cfg, ds, seeds, Path(a.out) / m, progress=False).to_json()
            mm = docs[m]["metrics"]
            console.print(f"  {m} {' '.join(chosen) or 'defaults'}: test AUC {mm['auc']:.4f} "
                          f"GAUC {mm['gauc']:.4f} ({time.perf_counter() - t0:.0f} s)")

    t = Table(title=f"ranking on {Path(a.data).name}: test events, "
                    f"{'mean ± std over seeds ' + a.seeds if docs else 'speed only'}")
    peers = PEER if Path(a.data).name == "ml-100k" else {}  # the peer was measured on MovieLens-100K
    for h in ("model", "AUC", "GAUC", "log-loss", "epochs", "s/epoch", *[f"ex/s {th} thr" for th in
                                                                       a.threads.split(",")],
              *(["peer"] if peers else [])):
        t.add_column(h, justify="left" if h == "model" else "right")
    for m in models:
        cells = ["", "", "", "", ""]
        if m in docs:
            d, mm, sd = docs[m], docs[m]["metrics"], docs[m]["std"]
            cells = [f"{mm[k]:.4f}±{sd[k]:.4f}" for k in ("auc", "gauc", "logloss")]
            cells += [f"{np.mean([s['best_epoch'] + 1 for s in d['per_seed']]):.1f}",
                      f"{d['speed']['seconds_per_epoch']:.1f}"]
        sp = [f"{rates[(m, int(th))]:,.0f}" if (m, int(th)) in rates else "" for th in a.threads.split(",")]
        peer = peers.get(m)
        ps = [f"AUC {peer[0]:.3f} GAUC {peer[1]:.3f}, {peer[3]:,} ex/s" if peer else ""] if peers else []
        t.add_row(m, *cells, *sp, *ps)
    console.print(t)
    if "embedding-mlp" in docs and len(seeds) > 1:
        # Seeds move these figures: each model's lead over the baseline, with the standard error
        # of that difference of means (independent seeds), says whether a lead is more than noise.
        def per_seed(m: str, k: str) -> np.ndarray:
            return np.array([s["test"][k] for s in docs[m]["per_seed"]])

        for m in [m for m in docs if m != "embedding-mlp"]:
            parts = []
            for k in ("auc", "gauc"):
                a, b = per_seed(m, k), per_seed("embedding-mlp", k)
                se = np.hypot(a.std(ddof=1) / np.sqrt(len(a)), b.std(ddof=1) / np.sqrt(len(b)))
                parts.append(f"{k.upper()} {a.mean() - b.mean():+.4f} (standard error {se:.4f})")
            console.print(f"  {m} against embedding-mlp over {len(seeds)} seeds: {', '.join(parts)}")


if __name__ == "__main__":
    main()
