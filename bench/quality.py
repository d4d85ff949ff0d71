"""Retrieval quality on MovieLens-100K under the protocol: every model, mean ± std over seeds.

Prints one row per model with test Recall@20/50, NDCG@50, HitRate@50 (mean ± std over the
seeds; each seed sets the split and the initialisation) and writes the per-model
``results.json`` under ``--out``. Hyper-parameters come from ``--set`` overrides or the
per-model table below, or with ``--tune`` from a small grid searched on validation users only:
every grid setting is trained on every seed and the one with the best validation Recall@50,
averaged over the seeds, gives the row (the same budget for every model; each seed's split holds
its test users out of training and of the choice).

    python bench/quality.py                          # all models, seeds 1,2,3
    python bench/quality.py --models comirec-sa,mind --seeds 1,2,3
    python bench/quality.py --tune --models youtube-dnn
    python bench/quality.py --data data/beauty --models sasrec,comirec-sa --defaults   # any data set
    python bench/quality.py --data data/beauty --models comirec-sa --seeds 1 --tune \
        --grid train.temperature=0.05,0.1,0.2 --grid train.hard_negative_beta=0,0.2

A run whose results.json (same config and seeds) is already under ``--out`` is reused, and every
finished run appends a line to ``--out/runs.jsonl``: an interrupted benchmark, started again,
continues where it stopped. Run one benchmark at a time (two at once distort the speed figures).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mirec.checkpoint import saved_config
from mirec.config import load
from mirec.data.dataset import load_dataset
from mirec.experiment import evaluate_baseline, train_seeds
from mirec.runs import RunConfig, model_config

BASELINES = ["most-popular", "item-cf"]
NEURAL = ["youtube-dnn", "gru4rec", "sasrec", "mind", "comirec-dr", "comirec-sa"]
# The settings ``--tune`` chose on validation users (seeds 1, 2, 3; see docs/benchmarks.md's table), so
# that a run without ``--tune`` reproduces the table's rows; the TrainConfig defaults otherwise.
CHOSEN: dict[str, list[str]] = {
    "youtube-dnn": ["train.temperature=0.2", "train.lr=0.003"],
    "gru4rec": ["train.temperature=0.2", "train.lr=0.003"],
    "mind": ["train.temperature=0.1", "train.lr=0.001"],
    "comirec-dr": ["train.temperature=0.2", "train.lr=0.003"],
    # ComiRec-SA: its defaults (K 3, hidden 1, lr 3.75e-3, T 0.1, routing_reg 10), chosen on the
    # validation users of five logs (docs/benchmarks.md, "Defaults against the tuned settings")
}
# The same budget for every model: 6 runs, the temperature (which moves the result most) x the
# learning rate.
GRID = {"train.temperature": ["0.05", "0.1", "0.2"], "train.lr": ["0.001", "0.003"]}


def run_or_reuse(cfg: RunConfig, ds, seeds: list[int], run_dir: Path, log: Path) -> dict:
    """``run_dir/results.json`` of ``cfg`` on ``seeds``: reused when a finished run with the same
    config and seeds is there, else trained (one at a time; an interrupted benchmark resumes at
    the first run it had not finished). Each finished run appends one JSON line to ``log``."""
    done = run_dir / "results.json"
    doc = json.loads(done.read_text()) if done.exists() else {}
    if doc.get("config") == saved_config(cfg, model_config(cfg)) and doc.get("seeds") == seeds:
        return doc
    doc = train_seeds(cfg, ds, seeds, run_dir, progress=False).to_json()
    row = {k: doc[k] for k in ("model", "data", "seeds", "metrics", "std", "valid", "best_epochs",
                               "wall_seconds")}
    with open(log, "a") as f:
        f.write(json.dumps({"run_dir": str(run_dir), **row}) + "\n")
    return doc


def tune(model: str, ds, seeds: list[int], out: Path, console: Console,
         extra: list[str], grid: dict[str, list[str]] = GRID) -> tuple[list[str], dict]:
    """Train every grid setting on every seed; keep the setting with the best validation
    Recall@50 averaged over the seeds (validation users only: each seed's split holds its test
    users out); ``extra`` (``--set``) applies to every run. Returns the setting and its runs'
    ``results.json``, whose test figures are the table's row. ``grid`` maps settings to the
    values tried (:data:`GRID` by default). A setting whose runs finished with
    the same config and seeds is not rerun."""
    best, best_set, best_doc = -1.0, [], {}
    for values in itertools.product(*grid.values()):
        sets = [f"{k}={v}" for k, v in zip(grid, values)]
        run_dir = out / "tune" / model / "_".join(values)
        cfg = load(RunConfig, None, [f"model={model}", *sets, *extra])
        doc = run_or_reuse(cfg, ds, seeds, run_dir, out / "runs.jsonl")
        valid = [s["valid"]["recall@50"] for s in doc["per_seed"]]
        score = sum(valid) / len(valid)
        console.print(f"  {model} {' '.join(sets)}: valid recall@50 {score:.4f} "
                      f"({' / '.join(f'{v:.4f}' for v in valid)})")
        if score > best:
            best, best_set, best_doc = score, sets, doc
    return best_set, best_doc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="data/ml-100k")
    p.add_argument("--models", default=",".join(BASELINES + NEURAL))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--set", action="append", default=[], help="override for every neural model")
    p.add_argument("--tune", action="store_true", help="grid-search on validation users first")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="with --tune: search these values instead of the default grid (repeatable)")
    p.add_argument("--defaults", action="store_true",
                   help="without --tune: the TrainConfig defaults, not MovieLens-100K's CHOSEN settings")
    args = p.parse_args()
    grid = dict(g.split("=", 1) for g in args.grid)
    grid = {k: v.split(",") for k, v in grid.items()} or GRID
    console = Console(width=140)
    ds = load_dataset(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    table = Table(title=f"{args.data}: test users, mean ± std over seeds {args.seeds}")
    for col in ("model", "settings", "R@20", "R@50", "NDCG@50", "HR@50", "best epochs", "time"):
        table.add_column(col)
    for model in args.models.split(","):
        t0 = time.perf_counter()
        if model in BASELINES:
            # the protocol settings of --set (split.*, eval.*) apply to the baselines too
            proto = [x for x in args.set if x.startswith(("split.", "eval."))]
            cfg = load(RunConfig, None, ["model=sasrec", *proto])
            run = evaluate_baseline(model, ds, seeds, split=cfg.split, eval_cfg=cfg.eval, out=out / model)
            sets, epochs = proto, "-"
            mean, std = run.mean, run.std
        elif args.tune:
            sets, doc = tune(model, ds, seeds, out, console, args.set, grid)
            mean, std, epochs = doc["metrics"], doc["std"], ",".join(map(str, doc["best_epochs"]))
        else:
            sets = ([] if args.defaults else CHOSEN.get(model, [])) + args.set
            cfg = load(RunConfig, None, [f"model={model}", *sets])
            doc = run_or_reuse(cfg, ds, seeds, out / model, out / "runs.jsonl")
            mean, std, epochs = doc["metrics"], doc["std"], ",".join(map(str, doc["best_epochs"]))
        cells = [f"{mean[k]:.3f} ± {std[k]:.3f}"
                 for k in ("recall@20", "recall@50", "ndcg@50", "hit_rate@50")]
        table.add_row(model, " ".join(sets) or "defaults", *cells, epochs,
                      f"{time.perf_counter() - t0:.0f} s")
        console.print(f"{model}: {cells[1]} recall@50")
    console.print(table)


if __name__ == "__main__":
    main()
