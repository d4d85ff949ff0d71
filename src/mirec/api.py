"""The Python API: what ``import mirec`` offers, and what the CLI calls.

    data = mirec.prepare("movielens", "path/to/ml-100k", out="data/ml-100k")
    run = mirec.fit(model="comirec-sa", data=data, out="runs/sa", seeds=[1, 2], train={"epochs": 5})
    run.metrics["recall@50"]                    # test users, mean over seeds
    bundle = mirec.export(run.path, out="bundles/sa")
    mirec.Recommender.open(bundle).recommend(user_id="196", n=10, diversity=0.3)

Settings are the ``--set`` keys as nested dicts or dotted names: ``train={"epochs": 5}`` and
``**{"train.epochs": 5}`` are the same setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mirec.checkpoint import is_run_dir, resume_config
from mirec.config import load
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.prepare import PrepareConfig, build_dataset
from mirec.data.sources import load as load_source
from mirec.data.split import SplitConfig
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import EvalConfig
from mirec.experiment import RunResult, evaluate_baseline, evaluate_run, train_ctr_seeds, train_seeds
from mirec.io import check_output_dir
from mirec.models.registry import SPECS
from mirec.runs import RankRunConfig, RunConfig

__all__ = ["prepare", "load_dataset", "fit", "evaluate", "export", "RunResult"]


def prepare(source: str, path: str | Path, out: str | Path | None = None, k_core: int = 5,
            on_bad_rows: str = "error", **options: Any) -> Path:
    """Prepare a raw log (``source``: one of ``mirec data sources``, e.g. movielens, csv) into
    a mirec data set in ``out`` (default ``data/<name>``): dedupe, k-core, dense ids, sorted,
    written atomically. ``options`` are the source's own (e.g. ``user_col`` for csv, ``meta`` for
    amazon). Returns the data set's path."""
    cfg = PrepareConfig(k_core=k_core, on_bad_rows=on_bad_rows)
    cfg.validate()
    path = Path(path)
    raw = load_source(source, path, on_bad_rows, **options)
    return build_dataset(raw, Path(out) if out is not None else Path("data") / path.stem, cfg)


def overrides(settings: dict[str, Any]) -> list[str]:
    """``{"train": {"epochs": 5}, "split.max_len": 30}`` -> ``["train.epochs=5", "split.max_len=30"]``."""
    out = []
    for key, value in settings.items():
        if isinstance(value, dict):
            out += overrides({f"{key}.{k}": v for k, v in value.items()})
        else:
            out.append(f"{key}={','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    return out


def _task(model: str) -> str:
    if model not in SPECS:
        raise MirecConfigError(f"model: unknown model {model!r} (known: {', '.join(sorted(SPECS))})")
    return SPECS[model].task


def fit(model: str | None = None, data: str | Path | Dataset = "data/ml-100k", out: str | Path | None = None,
        seeds: list[int] | None = None, config: str | Path | None = None, resume: bool = False,
        progress: bool = True, log: Callable[[str], None] = lambda s: None, task: str | None = None,
        candidates: str | Path | None = None, **settings: Any) -> RunResult:
    """Train ``model`` on a prepared data set (its path or a loaded :class:`Dataset`) once per
    seed into ``out`` (default ``runs/<model>``) and test the best validation epoch.

    ``settings`` are the ``--set`` keys (``train``, ``split``, ``eval``, ``model_args``; ``ctr``
    for rankers); ``config`` a TOML file of the same. A baseline (``most-popular``, ``item-cf``)
    is fitted without training. ``resume`` continues ``out`` with the settings it was started
    with (only the safe ones may change; ``model`` defaults to the run's). ``out`` must be new,
    empty or a run directory. Returns the run: ``.path``, ``.metrics`` (mean over seeds of the
    test metrics, keys like ``"recall@50"``), ``.std``, ``.seeds``; ``results.json`` in ``out``.

    ``candidates`` (a finished retrieval run; rankers only) trains the ranker on that run's own
    candidates, seed s on its ``seed-<s>`` (the ``cand`` settings; docs/ranking.md).
    """
    kind = _task(model) if model else task or "retrieval"
    if task and kind != task:
        raise MirecConfigError(f"--model: {model!r} is a {kind} model" + (
            "; use --task ctr" if kind == "ranking" else
            "; use `mirec evaluate --model` for baselines" if kind == "baseline" else "; drop --task ctr"))
    if candidates is not None:
        if kind != "ranking":
            raise MirecConfigError("--candidates: trains a ranker (--task ctr), not a retrieval model")
        settings = {**settings, "cand.run": str(candidates)}
    if kind == "baseline":
        return evaluate(model=model, data=data, out=out, seeds=seeds, **settings)
    cls = RankRunConfig if kind == "ranking" else RunConfig
    out = Path(out) if out is not None else Path("runs") / (model or cls().model)
    check_output_dir(out, may_hold=is_run_dir)
    sets = ([f"model={model}"] if model else []) + overrides(settings)
    cfg = resume_config(cls, out, config, sets) if resume else load(cls, config, sets)
    run = train_ctr_seeds if kind == "ranking" else train_seeds
    return run(cfg, data, seeds or [cfg.train.seed], out, resume, progress, log)


def evaluate(run: str | Path | None = None, model: str = "most-popular",
             data: str | Path | Dataset | None = None, out: str | Path | None = None,
             seeds: list[int] | None = None, progress: bool = False, ranker: str | Path | None = None,
             **settings: Any) -> Any:
    """Re-evaluate a finished training run (``run``; ``data`` if its data set moved) on its test
    users, or fit and evaluate a baseline ``model`` on ``data`` (``split`` and ``eval``
    settings as in :func:`fit`; ``results.json`` into ``out`` when given).

    With ``ranker`` (a ranking run, e.g. trained with ``candidates=run``) the two-stage pipeline
    is evaluated instead: retrieval alone and retrieval + ranking on the same test users, seeds
    paired; returns a ``PipelineResult`` whose ``doc`` is ``out/results.json``."""
    if ranker is not None:
        from mirec.eval.pipeline import evaluate_pipeline

        if run is None:
            raise MirecConfigError("--ranker: give the retrieval run too (--run)")
        ec = load(EvalConfig, None, overrides(settings.get("eval", {}))) if "eval" in settings else None
        if out is not None:
            check_output_dir(out, may_hold=lambda p: (p / "results.json").exists())
        return evaluate_pipeline(run, ranker, out, data, ec, progress)
    if run is not None:
        ec = load(EvalConfig, None, overrides(settings.get("eval", {}))) if "eval" in settings else None
        return evaluate_run(run, data, ec)
    if data is None:
        raise MirecConfigError("data: give a prepared data set (or run= for a trained run)")
    split = load(SplitConfig, None, overrides(settings.pop("split", {})))
    ec = load(EvalConfig, None, overrides(settings.pop("eval", {})))
    if settings:
        raise MirecConfigError(f"{next(iter(settings))}: not a setting of a baseline (split, eval)")
    return evaluate_baseline(model, data, seeds or [split.seed], split, ec, out, progress)


def export(run: str | Path, out: str | Path, data: str | Path | None = None) -> Path:
    """Write the serving bundle of a finished run (its best checkpoint; the first seed's of a
    multi-seed run) into ``out``; returns the bundle's path."""
    from mirec.serve.bundle import export_bundle

    return export_bundle(run, out, data)
