"""One user action, one function: evaluate a model on a prepared data set over several seeds.

The CLI and (later) the HTTP service call these functions; they print nothing themselves.
Each seed sets both the user split and the model's randomness; the figures reported are the
test users' metrics, with their mean and standard deviation over seeds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mirec import __version__
from mirec.config import from_dict, to_dict
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.prepare import PROTOCOL_VERSION
from mirec.data.split import SplitConfig, split_users
from mirec.errors import MirecConfigError, MirecDataError
from mirec.eval.evaluate import EvalConfig, evaluate
from mirec.io import atomic_write_json
from mirec.models.registry import MODELS, model_names
from mirec.train.checkpoint import load_checkpoint
from mirec.train.distributed import world
from mirec.train.loop import RunConfig, VectorScorer, build_model, train


@dataclass
class SeedResult:
    seed: int
    test: dict[str, float]
    valid: dict[str, float]
    num_test_users: int
    num_valid_users: int
    model: Any = field(default=None, repr=False)
    test_topn: np.ndarray | None = field(default=None, repr=False)  # (U_test, max N)
    best_epoch: int | None = None


@dataclass
class RunResult:
    model: str
    dataset: Dataset
    seeds: list[SeedResult]
    split: SplitConfig
    eval: EvalConfig
    wall_seconds: float

    @property
    def mean(self) -> dict[str, float]:
        keys = self.seeds[0].test.keys()
        return {k: float(np.mean([s.test[k] for s in self.seeds])) for k in keys}

    @property
    def std(self) -> dict[str, float]:
        keys = self.seeds[0].test.keys()
        return {k: float(np.std([s.test[k] for s in self.seeds])) for k in keys}

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": str(self.dataset.path),
            "dataset_checksum": self.dataset.checksum,
            "mirec_version": __version__,
            "protocol": {
                "version": PROTOCOL_VERSION,
                "split": {**to_dict(self.split), "seed": "per run: see seeds"},
                "eval": to_dict(self.eval),
                "ndcg_idcg": "cut at N (mirec.eval.metrics)",
                "users": "test",
            },
            "seeds": [s.seed for s in self.seeds],
            "metrics": self.mean,
            "std": self.std,
            "per_seed": [
                {"seed": s.seed, "test": s.test, "valid": s.valid,
                 "num_test_users": s.num_test_users, "num_valid_users": s.num_valid_users}
                for s in self.seeds
            ],
            "wall_seconds": round(self.wall_seconds, 3),
        }


def evaluate_baseline(model: str, data: str | Path | Dataset, seeds: list[int],
                      split: SplitConfig | None = None, eval_cfg: EvalConfig | None = None,
                      out: str | Path | None = None, progress: bool = False) -> RunResult:
    """Fit a model that needs no training loop (e.g. MostPopular) per seed and evaluate it.

    Writes ``results.json`` into ``out`` (atomically) when given.
    """
    if model not in MODELS:
        raise MirecConfigError(f"--model: unknown model {model!r} (known: {model_names()})")
    if not seeds:
        raise MirecConfigError("--seeds: need at least one seed")
    t0 = time.perf_counter()
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    split = split or SplitConfig()
    eval_cfg = eval_cfg or EvalConfig()
    cfg_cls, model_cls = MODELS[model]
    results = []
    for seed in seeds:
        sp = split_users(ds, dataclasses.replace(split, seed=seed))
        m = model_cls(cfg_cls()).fit(ds, sp)
        test = evaluate(m, ds, sp.test, split.max_len, eval_cfg, progress)
        valid = evaluate(m, ds, sp.valid, split.max_len, eval_cfg, progress)
        results.append(SeedResult(seed, test.metrics, valid.metrics, test.num_users,
                                  valid.num_users, m, test.topn))
    run = RunResult(model, ds, results, split, eval_cfg, time.perf_counter() - t0)
    if out is not None:
        atomic_write_json(Path(out) / "results.json", run.to_json())
    return run


def train_seeds(cfg: RunConfig, data: str | Path | Dataset, seeds: list[int], out: str | Path,
                resume: bool = False, progress: bool = True,
                log: Callable[[str], None] = lambda s: None) -> RunResult:
    """Train ``cfg`` once per seed (each sets the split and the initialisation) and evaluate
    the best validation checkpoint on the test users.

    With one seed the run directory is ``out``; with several, ``out/seed-<s>`` each, and
    ``out/results.json`` reports the mean and std over seeds.
    """
    if not seeds:
        raise MirecConfigError("--seeds: need at least one seed")
    t0 = time.perf_counter()
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    out = Path(out)
    results = []
    for seed in seeds:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                split=dataclasses.replace(cfg.split, seed=seed))
        run_dir = out if len(seeds) == 1 else out / f"seed-{seed}"
        log(f"training {cfg.model} seed {seed} -> {run_dir}")
        r = train(c, ds, run_dir, resume=resume, progress=progress, log=log)
        results.append(SeedResult(seed, r.test, r.best_valid, len(r.split.test),
                                  len(r.split.valid), r.model, r.test_topn))
        results[-1].best_epoch = r.best_epoch
    run = RunResult(cfg.model, ds, results, cfg.split, cfg.eval, time.perf_counter() - t0)
    doc = run.to_json()
    doc["config"] = to_dict(cfg)
    doc["best_epochs"] = [s.best_epoch for s in results]
    if world().main:  # under torchrun, process 0 writes
        atomic_write_json(out / "results.json", doc)
    return run


def evaluate_run(run_dir: str | Path, data: str | Path | None = None,
                 eval_cfg: EvalConfig | None = None) -> RunResult:
    """Re-evaluate a finished training run (every ``seed-*`` of it) on its test users."""
    run_dir = Path(run_dir)
    dirs = sorted(run_dir.glob("seed-*")) or [run_dir]
    results, ds, cfg = [], None, None
    t0 = time.perf_counter()
    for d in dirs:
        ck = load_checkpoint(d / "best.pt")
        cfg = from_dict(RunConfig, ck["config"])
        if ds is None:
            ds = load_dataset(data or ck["data"])
            if ds.checksum != ck["dataset_checksum"]:
                raise MirecDataError(f"{ds.path}: not the data set {d} was trained on "
                                     f"(checksum {ds.checksum[:12]} != {ck['dataset_checksum'][:12]})")
        model = build_model(cfg, ds.num_items)
        model.load_state_dict(ck["model"])
        sp = split_users(ds, cfg.split)
        ec = eval_cfg or cfg.eval
        scorer = VectorScorer(model, cfg.train.cosine)
        test = evaluate(scorer, ds, sp.test, cfg.split.max_len, ec)
        valid = evaluate(scorer, ds, sp.valid, cfg.split.max_len, ec)
        results.append(SeedResult(cfg.split.seed, test.metrics, valid.metrics, test.num_users,
                                  valid.num_users, model, test.topn))
    return RunResult(cfg.model, ds, results, cfg.split, eval_cfg or cfg.eval,
                     time.perf_counter() - t0)
