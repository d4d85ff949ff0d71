"""One user action, one function: train or evaluate a model on a prepared data set over seeds.

The CLI and the Python API (:mod:`mirec.api`) call these functions; they print nothing. Every
task (a baseline fitted without training, a trained retriever, a trained ranker) goes through
one seeds runner, :func:`run_seeds`, and writes one ``results.json`` schema (docs/results.md):
the test metrics' mean over seeds under ``metrics``, their std under ``std``, then the
validation figures, the per-seed rows, the protocol and the config.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mirec import __version__
from mirec.checkpoint import saved_config
from mirec.config import load, to_dict
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.prepare import PROTOCOL_VERSION
from mirec.data.split import Split, SplitConfig, split_users
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import EvalConfig, evaluate
from mirec.io import atomic_write_json
from mirec.models.base import VectorScorer
from mirec.models.registry import spec
from mirec.runs import RankRunConfig, RunConfig, load_run, model_config, seed_dirs
from mirec.train.distributed import world
from mirec.train.loop import train
from mirec.train.warm import Parent


@dataclass
class SeedResult:
    seed: int
    test: dict[str, float]
    valid: dict[str, float]
    best_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # counts, speed: into per_seed
    model: Any = field(default=None, repr=False)
    test_topn: np.ndarray | None = field(default=None, repr=False)  # (U_test, max N)


def _mean_std(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return ({k: float(np.mean([r[k] for r in rows])) for k in keys},
            {k: float(np.std([r[k] for r in rows])) for k in keys})


@dataclass
class RunResult:
    """Every seed of one run; ``to_json`` is the results.json document."""

    task: str  # baseline | retrieval | ranking
    model: str
    dataset: Dataset
    seeds: list[SeedResult]
    protocol: dict[str, Any]
    wall_seconds: float
    path: Path | None = None
    config: dict[str, Any] | None = None
    warm_start: dict[str, Any] | None = None  # the parent run of a warm start (docs/results.md)

    @property
    def mean(self) -> dict[str, float]:
        return _mean_std([s.test for s in self.seeds])[0]

    @property
    def std(self) -> dict[str, float]:
        return _mean_std([s.test for s in self.seeds])[1]

    @property
    def metrics(self) -> dict[str, float]:
        """The test metrics' mean over seeds (what results.json holds under ``metrics``)."""
        return self.mean

    def to_json(self) -> dict[str, Any]:
        doc = {"task": self.task, "model": self.model, "data": str(self.dataset.path),
               "dataset_checksum": self.dataset.checksum, "mirec_version": __version__,
               "seeds": [s.seed for s in self.seeds], "metrics": self.mean, "std": self.std,
               "valid": _mean_std([s.valid for s in self.seeds])[0]}
        speed = [s.extra["speed"] for s in self.seeds if "speed" in s.extra]
        if speed:
            doc["speed"] = _mean_std(speed)[0]
        doc["per_seed"] = [{"seed": s.seed, "test": s.test, "valid": s.valid, "best_epoch": s.best_epoch,
                            **s.extra} for s in self.seeds]
        doc["best_epochs"] = [s.best_epoch for s in self.seeds]
        doc["protocol"] = self.protocol
        if self.config is not None:
            doc["config"] = self.config
        if self.warm_start is not None:
            doc["warm_start"] = self.warm_start
        doc["wall_seconds"] = round(self.wall_seconds, 3)
        return doc


def run_seeds(task: str, model: str, data: str | Path | Dataset, seeds: list[int],
              one: Callable[[Dataset, int, Path | None], SeedResult], out: str | Path | None,
              protocol: dict[str, Any], config: dict[str, Any] | None = None,
              log: Callable[[str], None] = lambda s: None) -> RunResult:
    """``one(ds, seed, run_dir)`` per seed (``run_dir`` is ``out`` for one seed, ``out/seed-<s>``
    for several, None without ``out``), then ``out/results.json`` (process 0 under torchrun)."""
    if not seeds:
        raise MirecConfigError("--seeds: need at least one seed")
    t0 = time.perf_counter()
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    out = None if out is None else Path(out)
    results = []
    if out is not None and len(seeds) > 1 and task != "baseline" and world().main:
        for seed in seeds:  # every seed's directory up front: a resumed run finds them all
            (out / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        run_dir = None if out is None else out if len(seeds) == 1 else out / f"seed-{seed}"
        if run_dir is not None and task != "baseline":
            log(f"training {model} seed {seed} -> {run_dir}")
        results.append(one(ds, seed, run_dir))
    warm = next((s.extra.pop("warm_start") for s in results if "warm_start" in s.extra), None)
    for s in results:
        s.extra.pop("warm_start", None)
    run = RunResult(task, model, ds, results, protocol, time.perf_counter() - t0, out, config, warm)
    if out is not None and world().main:
        atomic_write_json(out / "results.json", run.to_json())
    return run


def retrieval_protocol(split: SplitConfig, eval_cfg: EvalConfig) -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "split": {**to_dict(split), "seed": "per run: see seeds"},
            "eval": to_dict(eval_cfg), "ndcg_idcg": "cut at N (mirec.eval.metrics)", "users": "test"}


def _speed(history: list[dict[str, Any]], best_epoch: int) -> dict[str, float]:
    return {"examples_per_s": float(np.median([h["examples_per_s"] for h in history])),
            "seconds_per_epoch": float(np.median([h["train_seconds"] for h in history[:best_epoch + 1]]))}


def evaluate_baseline(model: str, data: str | Path | Dataset, seeds: list[int],
                      split: SplitConfig | None = None, eval_cfg: EvalConfig | None = None,
                      out: str | Path | None = None, progress: bool = False) -> RunResult:
    """Fit a model that needs no training loop (e.g. MostPopular) per seed and evaluate it.

    Writes ``results.json`` into ``out`` (atomically) when given.
    """
    s = spec(model, "baseline", field="--model")
    split = split or SplitConfig()
    eval_cfg = eval_cfg or EvalConfig()

    def one(ds: Dataset, seed: int, run_dir: Path | None) -> SeedResult:
        sp = split_users(ds, dataclasses.replace(split, seed=seed))
        m = s.build(s.config()).fit(ds, sp)
        test = evaluate(m, ds, sp.test, split.max_len, eval_cfg, progress)
        valid = evaluate(m, ds, sp.valid, split.max_len, eval_cfg, progress)
        return SeedResult(seed, test.metrics, valid.metrics, model=m, test_topn=test.topn,
                          extra=_counts(test.num_users, valid.num_users, sp))

    return run_seeds("baseline", model, data, seeds, one, out, retrieval_protocol(split, eval_cfg))


def _counts(num_test: int, num_valid: int, split: Split) -> dict[str, Any]:
    """Per-seed counts: evaluated rows (users; target events under the time protocol) and the
    time protocol's cut points as timestamps."""
    out: dict[str, Any] = {"num_test_users": num_test, "num_valid_users": num_valid}
    if split.time_cuts is not None:
        out["time_cuts"] = dict(zip(("valid_from", "test_from"), split.time_cuts))
    return out


def _warm(record: dict[str, Any] | None) -> dict[str, Any]:
    """A seed's warm-start record, for :func:`run_seeds` to lift into results.json."""
    return {} if record is None else {"warm_start": record}


def train_seeds(cfg: RunConfig, data: str | Path | Dataset, seeds: list[int], out: str | Path,
                resume: bool = False, progress: bool = True,
                log: Callable[[str], None] = lambda s: None, warm: Parent | None = None) -> RunResult:
    """Train ``cfg`` once per seed (each sets the split and the initialisation) and evaluate
    the best validation checkpoint on the test users. ``warm``: every seed starts from that
    run's best checkpoint (:mod:`mirec.train.warm`)."""

    def one(ds: Dataset, seed: int, run_dir: Path | None) -> SeedResult:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                split=dataclasses.replace(cfg.split, seed=seed))
        go_on = resume and (run_dir / "last.pt").exists()  # a seed the run never started begins now
        r = train(c, ds, run_dir, resume=go_on, progress=progress, log=log, warm=warm)
        return SeedResult(seed, r.test, r.best_valid, r.best_epoch,
                          {**_counts(len(r.split.test), len(r.split.valid), r.split),
                           "speed": _speed(r.history, r.best_epoch), **_warm(r.warm_start)},
                          r.model, r.test_topn)

    return run_seeds("retrieval", cfg.model, data, seeds, one, out,
                     retrieval_protocol(cfg.split, cfg.eval), saved_config(cfg, model_config(cfg)), log)


def train_ctr_seeds(cfg: RankRunConfig, data: str | Path | Dataset, seeds: list[int], out: str | Path,
                    resume: bool = False, progress: bool = True,
                    log: Callable[[str], None] = lambda s: None, warm: Parent | None = None) -> RunResult:
    """Train a ranker once per seed (initialisation, batch order and sampled negatives; the
    time split does not depend on it); test AUC/GAUC/log-loss mean and std over seeds."""
    from mirec.train.ctr import train_ctr

    if cfg.cand.run and "use_user_id" not in cfg.model_args:  # held-out users are unknown to it
        cfg = dataclasses.replace(cfg, model_args={**cfg.model_args, "use_user_id": False})

    def one(ds: Dataset, seed: int, run_dir: Path | None) -> SeedResult:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                ctr=dataclasses.replace(cfg.ctr, seed=seed))
        data: Dataset | Any = ds
        if c.cand.run:  # the retrieval run's seed-<seed>: its split, its candidates
            from mirec.train.candidates import candidate_data

            log(f"building ranker examples from {c.cand.run}'s candidates (seed {seed})")
            data, _ = candidate_data(c, seed, ds)
        r = train_ctr(c, data, run_dir, resume=resume and (run_dir / "last.pt").exists(), progress=progress,
                      log=log, data_path=str(ds.path), data_checksum=ds.checksum, warm=warm)
        test = dict(r.test)
        n = test.pop("examples")
        cuts = {} if r.data.time_cuts is None else {"time_cuts": dict(zip(("valid_from", "test_from"),
                                                                          r.data.time_cuts))}
        return SeedResult(seed, test, {k: v for k, v in r.best_valid.items() if k != "examples"},
                          r.best_epoch, {"test_examples": n, **cuts, "speed": _speed(r.history, r.best_epoch),
                                         **_warm(r.warm_start)}, r.model)

    ds = data if isinstance(data, Dataset) else load_dataset(data)
    protocol = ctr_protocol(cfg, ds)
    if cfg.cand.run:
        protocol = {"labels": f"the next item against {cfg.cand.negatives} negatives from {cfg.cand.run}'s "
                              f"candidates ({cfg.cand.random_share:.0%} uniform)",
                    "split": "the retrieval run's users; validation users' first target for early stopping; "
                             "test: `mirec evaluate --run RETRIEVAL --ranker RUN`"}
    conf = saved_config(cfg, model_config(cfg))
    return run_seeds("ranking", cfg.model, ds, seeds, one, out, protocol, conf, log)


def ctr_protocol(cfg: RankRunConfig, ds: Dataset) -> dict[str, Any]:
    """The ``protocol`` of a plain ranking run's results.json: its labels and its split."""
    ratings = ds.rating is not None and cfg.ctr.labels != "implicit"
    catalogue = "the training catalogue" if cfg.split.protocol == "time" else "the catalogue"
    out: dict[str, Any] = {"labels": f"rating >= {cfg.ctr.positive_rating}" if ratings
                           else f"{cfg.ctr.negatives} uniform negative(s) per positive from {catalogue}",
                           "split_protocol": cfg.split.protocol}
    if cfg.split.protocol == "time":
        out.update(split="by time: training events before valid_from; every later event with an earlier "
                         "one of its user a validation (before test_from) or test example, those of new "
                         "items left out (new_item_share)",
                   valid_from=cfg.split.valid_from, test_from=cfg.split.test_from)
    else:
        out["split"] = (f"per user by time: last {cfg.ctr.test_fraction:.0%} test, "
                        f"{cfg.ctr.valid_fraction:.0%} before it validation")
    return out


def evaluate_run(run_dir: str | Path, data: str | Path | None = None,
                 eval_overrides: list[str] | None = None) -> RunResult:
    """Re-evaluate a finished retrieval run (every ``seed-*`` of it) on its test users, with the
    run's own eval settings and ``eval_overrides`` (``["exclude_history=false"]``) over them."""
    t0 = time.perf_counter()
    results, ds, cfg = [], data, None
    for d in seed_dirs(run_dir):
        run = load_run(d, ds)
        ds, cfg = run.dataset, run.config
        sp = split_users(ds, cfg.split)
        ec = load(EvalConfig, None, eval_overrides, base=to_dict(cfg.eval)) if eval_overrides else cfg.eval
        scorer = VectorScorer(run.model, cfg.train.cosine)
        test = evaluate(scorer, ds, sp.test, cfg.split.max_len, ec)
        valid = evaluate(scorer, ds, sp.valid, cfg.split.max_len, ec)
        results.append(SeedResult(cfg.split.seed, test.metrics, valid.metrics, run.checkpoint.get("epoch"),
                                  _counts(test.num_users, valid.num_users, sp), run.model, test.topn))
    return RunResult("retrieval", cfg.model, ds, results, retrieval_protocol(cfg.split, ec),
                     time.perf_counter() - t0, Path(run_dir))
