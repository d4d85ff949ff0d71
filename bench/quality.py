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

``--protocol loo`` runs the papers' leave-one-out tables instead (``split.protocol=loo``, every
item ranked, the user's earlier items filtered, ties broken pessimistically, ``eval.ns`` 5, 10,
20): the table shows HR and NDCG at 5, 10 and 20 and the mean training seconds an epoch, and,
for a data set with published figures (``--published beauty``, or a ``--data`` path naming it),
prints those rows beside mirec's:

    python bench/quality.py --data data/beauty --protocol loo --models sasrec,comirec-sa --defaults
    python bench/quality.py --data data/beauty --protocol loo --models comirec-sa --seeds 1 --tune \
        --grid split.max_len=20,50        # an ablation, chosen on validation NDCG@10 (--select)

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


# Published leave-one-out, full-ranking figures on the S3-Rec preprocessing (HR@10, NDCG@10,
# HR@20, NDCG@20; None where the source gives none). Sources: docs/benchmarks.md, "Leave-one-out".
PUBLISHED: dict[str, list[tuple[str, float | None, float | None, float | None, float | None]]] = {
    "beauty": [
        ("BSARec (AAAI 2024)", 0.1008, 0.0611, 0.1373, 0.0703),
        ("ICSRec (WSDM 2024)", 0.0959, 0.0578, 0.1298, 0.0663),
        ("SASRec, sampled softmax, 256 negatives (eSASRec)", 0.0921, 0.0531, None, None),
        ("DuoRec (ICSRec's re-run)", None, None, 0.1228, 0.0536),
        ("ICLRec", 0.0744, 0.0403, 0.1058, 0.0483),
        ("SINE (ICSRec's table)", None, None, 0.0964, 0.0384),
        ("SASRec, BCE with one negative (S3-Rec)", 0.0605, 0.0318, 0.0902, 0.0394),
    ],
}
LOO_SETS = ["split.protocol=loo", "eval.ns=[5,10,20]", "eval.ties=pessimistic"]
LOO_COLS = ("hit_rate@5", "ndcg@5", "hit_rate@10", "ndcg@10", "hit_rate@20", "ndcg@20")
VALID_COLS = ("hit_rate@10", "ndcg@10", "hit_rate@20", "ndcg@20", "recall@50", "ndcg@50")


def epoch_seconds(doc: dict) -> float | None:
    """Training seconds an epoch of a ``results.json`` ``doc``: its ``speed``, each seed's median
    epoch up to its best, averaged over the seeds by ``mirec.experiment``; None without it."""
    return doc.get("speed", {}).get("seconds_per_epoch")


def published_table(name: str) -> Table:
    """The published rows of data set ``name`` as a rich table."""
    t = Table(title=f"published, {name} (leave-one-out, full ranking)")
    for col in ("model", "HR@10", "NDCG@10", "HR@20", "NDCG@20"):
        t.add_column(col)
    for model, *vals in PUBLISHED[name]:
        t.add_row(model, *("-" if v is None else f"{v:.4f}" for v in vals))
    return t


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
         extra: list[str], grid: dict[str, list[str]] = GRID,
         select: str = "recall@50") -> tuple[list[str], dict]:
    """Train every grid setting on every seed; keep the setting with the best validation
    ``select`` metric (Recall@50; NDCG@10 under ``--protocol loo``) averaged over the seeds
    (validation users only: each seed's split holds its test users out); ``extra`` (``--set``)
    applies to every run. Returns the setting and its runs' ``results.json``, whose test figures
    are the table's row. ``grid`` maps settings to the values tried (:data:`GRID` by default).
    Each setting's validation figures are printed (the ablation). A setting whose runs finished
    with the same config and seeds is not rerun."""
    best, best_set, best_doc = -1.0, [], {}
    for values in itertools.product(*grid.values()):
        sets = [f"{k}={v}" for k, v in zip(grid, values)]
        run_dir = out / "tune" / model / "_".join(values)
        cfg = load(RunConfig, None, [f"model={model}", *extra, *sets])  # a grid value wins over --set
        doc = run_or_reuse(cfg, ds, seeds, run_dir, out / "runs.jsonl")
        valid = [s["valid"][select] for s in doc["per_seed"]]
        score = sum(valid) / len(valid)
        others = " ".join(f"{k} {doc['valid'][k]:.4f}" for k in VALID_COLS
                          if k in doc["valid"] and k != select)
        per_epoch = epoch_seconds(doc)
        console.print(f"  {model} {' '.join(sets)}: valid {select} {score:.4f} "
                      f"({' / '.join(f'{v:.4f}' for v in valid)}); {others}; best epochs "
                      f"{','.join(map(str, doc['best_epochs']))}; "
                      f"{'-' if per_epoch is None else f'{per_epoch:.1f}'} s / epoch")
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
    p.add_argument("--protocol", choices=("user", "loo"), default="user",
                   help="loo: the papers' leave-one-out tables (HR/NDCG at 5, 10, 20; ties pessimistic)")
    p.add_argument("--published", default="", help=f"print published rows of: {', '.join(PUBLISHED)}")
    p.add_argument("--select", default="",
                   help="--tune's validation metric (default recall@50; ndcg@10 with --protocol loo)")
    args = p.parse_args()
    loo = args.protocol == "loo"
    select = args.select or ("ndcg@10" if loo else "recall@50")
    if loo:
        args.set = LOO_SETS + args.set
    published = args.published or next((k for k in PUBLISHED if loo and k in args.data.lower()), "")
    grid = dict(g.split("=", 1) for g in args.grid)
    grid = {k: v.split(",") for k, v in grid.items()} or GRID
    console = Console(width=140)
    ds = load_dataset(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    table = Table(title=f"{args.data}: test users, mean ± std over seeds {args.seeds}")
    cols = LOO_COLS if loo else ("recall@20", "recall@50", "ndcg@50", "hit_rate@50")
    heads = [c.replace("hit_rate", "HR").replace("recall", "R").replace("ndcg", "NDCG") for c in cols]
    for col in ("model", "settings", *heads, "best epochs", "s / epoch", "time"):
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
            sets, doc = tune(model, ds, seeds, out, console, args.set, grid, select)
            mean, std, epochs = doc["metrics"], doc["std"], ",".join(map(str, doc["best_epochs"]))
        else:
            sets = ([] if args.defaults else CHOSEN.get(model, [])) + args.set
            cfg = load(RunConfig, None, [f"model={model}", *sets])
            doc = run_or_reuse(cfg, ds, seeds, out / model, out / "runs.jsonl")
            mean, std, epochs = doc["metrics"], doc["std"], ",".join(map(str, doc["best_epochs"]))
        digits = 4 if loo else 3
        cells = [f"{mean[k]:.{digits}f} ± {std[k]:.{digits}f}" for k in cols]
        per_epoch = None if model in BASELINES else epoch_seconds(doc)
        sets = [x for x in sets if x not in LOO_SETS]
        table.add_row(model, " ".join(sets) or "defaults", *cells, epochs,
                      "-" if per_epoch is None else f"{per_epoch:.1f}", f"{time.perf_counter() - t0:.0f} s")
        console.print(f"{model}: {cells[1]} {heads[1]}")
    console.print(table)
    if published:
        console.print(published_table(published))


if __name__ == "__main__":
    main()
