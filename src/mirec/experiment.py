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
from typing import Any

import numpy as np

from mirec import __version__
from mirec.config import to_dict
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.prepare import PROTOCOL_VERSION
from mirec.data.split import SplitConfig, split_users
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import EvalConfig, evaluate
from mirec.io import atomic_write_json
from mirec.models.registry import MODELS, model_names


@dataclass
class SeedResult:
    seed: int
    test: dict[str, float]
    valid: dict[str, float]
    num_test_users: int
    num_valid_users: int
    model: Any = field(default=None, repr=False)
    test_topn: np.ndarray | None = field(default=None, repr=False)  # (U_test, max N)


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
                "ndcg_idcg": "cut at N (protocol.md)",
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
