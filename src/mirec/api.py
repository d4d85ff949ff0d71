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
from mirec.config import apply_overrides, load
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.prepare import PrepareConfig, RawLog, build_dataset
from mirec.data.sources import flag
from mirec.data.sources import load as load_source
from mirec.data.split import SplitConfig
from mirec.errors import MirecConfigError, MirecDataError
from mirec.eval.evaluate import EvalConfig
from mirec.experiment import RunResult, evaluate_baseline, evaluate_run, train_ctr_seeds, train_seeds
from mirec.io import DATASET, check_output_dir
from mirec.models.registry import SPECS
from mirec.runs import RankRunConfig, RunConfig
from mirec.train import warm

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file

__all__ = ["prepare", "append", "load_dataset", "fit", "evaluate", "export", "refresh", "RunResult"]


def prepare(source: str, path: str | Path, out: str | Path | None = None, k_core: int = 5,
            on_bad_rows: str = "error", **options: Any) -> Path:
    """Prepare a raw log (``source``: one of ``mirec data sources``, e.g. movielens, csv) into
    a mirec data set in ``out`` (default ``data/<name>``): dedupe, k-core, dense ids, sorted,
    written atomically. ``options`` are the source's own (e.g. ``user_col`` for csv, ``meta`` for
    amazon). Returns the data set's path."""
    cfg = PrepareConfig(k_core=k_core, on_bad_rows=on_bad_rows)
    cfg.validate()
    path = Path(path)
    out = Path(out) if out is not None else Path("data") / path.stem
    check_output_dir(out, DATASET)  # before reading a possibly large log
    return build_dataset(load_source(source, path, on_bad_rows, **options), out, cfg)


def append(data: str | Path, new: str | Path, out: str | Path, *, source: str | None = None,
           new_items: str | Path | None = None, since: int | None = None, on_bad_rows: str = "error",
           **options: Any) -> Path:
    """Append the events of ``new`` to the prepared data set ``data`` as a new data set ``out``
    (``data`` is never changed; ``out`` follows the ``--out`` rules and may not be ``data``).

    ``new`` is the serving event store (a SQLite file of ``mirec serve --store`` or a
    ``postgresql://`` URL), or, with ``source``, a log that source reads (``options`` and
    ``on_bad_rows`` as for :func:`prepare`). A store is read from the seq after ``since``;
    by default after the last one an earlier append of the same store recorded (0: all).
    ``new_items``: a new-items file (the format of ``mirec serve --new-items``) with the new
    items' titles and categories. Known users and items keep their ids, new ones are numbered
    after them, duplicates are dropped, no k-core filter is applied (docs/data.md). Returns
    ``out``."""
    from mirec.data.append import append_dataset, check_out

    check_out(data, out)  # before reading a possibly large log
    options = {k: v for k, v in options.items() if v is not None}
    if source is None:
        if options:
            raise MirecConfigError(f"{flag(next(iter(options)))}: an option of a data source, but "
                                   f"NEW is read as an event store (name its source with --source)")
        raw = _store_log(data, new, since)
    else:
        if since is not None:
            raise MirecConfigError("--since: reads an event store; not with --source")
        PrepareConfig(on_bad_rows=on_bad_rows).validate()
        raw = load_source(source, new, on_bad_rows, **options)
    return append_dataset(data, raw, out, new_items)


def _store_log(data: str | Path, new: str | Path, since: int | None) -> RawLog:
    """The events of the event store ``new`` after ``since`` (default: where the last append
    of that store to ``data`` stopped) as a log; the store is read here (``api`` may import
    ``serve``; ``data`` may not) and handed over as plain rows."""
    from mirec.data.append import continue_from, store_log
    from mirec.serve.store import open_store

    spec = str(new)
    if since is not None and since < 0:
        raise MirecConfigError(f"--since: must be >= 0, got {since}")
    if "://" not in spec and Path(spec).is_file():
        with open(spec, "rb") as f:
            if f.read(16) != SQLITE_MAGIC:
                raise MirecDataError(f"{spec}: not an event store (a SQLite file of `mirec serve "
                                     f"--store`); to append a log, name its source with --source")
    store = open_store(spec, create=False)
    try:
        name = store.name if "://" in spec else str(Path(spec).resolve())
        since = continue_from(data, name) if since is None else since
        return store_log(store.events_since(since), name, since)
    finally:
        store.close()


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
        seeds: list[int] | None = None, *, config: str | Path | None = None, resume: bool = False,
        progress: bool = True, log: Callable[[str], None] = lambda s: None, task: str | None = None,
        candidates: str | Path | None = None, settings: dict[str, Any] | None = None,
        warm_start: str | Path | None = None, **more: Any) -> RunResult:
    """Train ``model`` on a prepared data set (its path or a loaded :class:`Dataset`) once per
    seed into ``out`` (default ``runs/<model>``) and test the best validation epoch.

    Settings are the ``--set`` keys, as keyword sections (``train={"epochs": 5}``, ``split``,
    ``eval``, ``model_args``; ``ctr`` for rankers) or a ``settings`` dict of the same; ``config``
    a TOML file of the same. A baseline (``most-popular``, ``item-cf``) is fitted without
    training. ``resume`` continues ``out`` with the settings it was started with (only the safe
    ones may change; ``model`` and the seeds default to the run's); without it, ``out`` must be
    new, empty or a run directory, whose old checkpoints and results are replaced. Returns the
    run: ``.path``, ``.metrics`` (mean over seeds of the test metrics, keys like
    ``"recall@50"``), ``.std``, ``.seeds``; ``results.json`` in ``out``.

    ``candidates`` (a finished retrieval run; rankers only) trains the ranker on that run's own
    candidates, seed s on its ``seed-<s>`` (the ``cand`` settings; docs/ranking.md).

    ``warm_start`` (a finished run of the same task) starts every parameter from that run's best
    checkpoint, its saved config the base (training settings may change, the architecture may
    not), ``data`` that run's data set with new events appended, and trains on the examples
    after ``train.since`` (default: the parent data set's last timestamp). A resumed warm-started
    run continues from its own last.pt (docs/production.md, "Keeping a model fresh").
    """
    settings = normalised({**(settings or {}), **more})
    model = model or settings.pop("model", None)
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
        return evaluate(model=model, data=data, out=out, seeds=seeds, settings=settings)
    cls = RankRunConfig if kind == "ranking" else RunConfig
    sets = ([f"model={model}"] if model else []) + overrides(settings)
    parent, recorded = None, None
    if warm_start is not None and candidates is not None:
        raise MirecConfigError("--warm-start: not with --candidates (a ranker warm-starts on a data set)")
    if out is not None and resume:
        recorded = warm.recorded(Path(out))
    if warm_start is not None and recorded is None:  # a new run (or one with no checkpoint yet)
        parent = warm.load_parent(warm_start, kind)
        model = model or parent.ck["config"]["model"]
    out = Path(out) if out is not None else Path("runs") / (model or cls().model)
    check_output_dir(out, may_hold=is_run_dir)
    if parent is not None:
        cfg = warm.warm_config(cls, parent, config, sets)
    else:
        cfg = resume_config(cls, out, config, sets) if resume else load(cls, config, sets)
    if resume and not seeds:  # the seeds the run was started with
        seeds = sorted(int(d.name[5:]) for d in out.glob("seed-*") if d.name[5:].lstrip("-").isdigit())
    elif not resume:
        clear_run(out)
    seeds = seeds or [cfg.train.seed]
    if recorded is not None:  # resuming a warm-started run: the parent only for seeds not begun
        parent = warm.resumed_parent(out, seeds, recorded, warm_start, kind)
    run = train_ctr_seeds if kind == "ranking" else train_seeds
    return run(cfg, data, seeds, out, resume, progress, log, parent)


def clear_run(out: Path) -> None:
    """Remove the files an earlier run left in ``out`` (a run directory, checked by the caller):
    a new run must not leave a stale ``best.pt`` or ``seed-*`` for export or reports to find."""
    for d in [out, *out.glob("seed-*")]:
        for name in RUN_FILES:
            (d / name).unlink(missing_ok=True)
        if d != out and d.is_dir() and not any(d.iterdir()):
            d.rmdir()


RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "steps.jsonl", "results.json")


def normalised(settings: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys and nested sections as one nested dict: ``{"train.epochs": 5}`` ->
    ``{"train": {"epochs": "5"}}``."""
    return apply_overrides({}, overrides(settings))


def evaluate(run: str | Path | None = None, model: str = "most-popular",
             data: str | Path | Dataset | None = None, out: str | Path | None = None,
             seeds: list[int] | None = None, progress: bool = False, ranker: str | Path | None = None, *,
             settings: dict[str, Any] | None = None, **more: Any) -> Any:
    """Re-evaluate a finished training run (``run``; ``data`` if its data set moved) on its test
    users, with its own ``eval`` settings unless ``eval`` overrides some; or fit and evaluate a
    baseline ``model`` on ``data`` (``split`` and ``eval`` settings as in :func:`fit`;
    ``results.json`` into ``out`` when given).

    With ``ranker`` (a ranking run, e.g. trained with ``candidates=run``) the two-stage pipeline
    is evaluated instead: retrieval alone and retrieval + ranking on the same test users, seeds
    paired; returns a ``PipelineResult`` whose ``doc`` is ``out/results.json``."""
    settings = normalised({**(settings or {}), **more})
    if ranker is not None:
        from mirec.eval.pipeline import evaluate_pipeline

        if run is None:
            raise MirecConfigError("--ranker: give the retrieval run too (--run)")
        ec = load(EvalConfig, None, overrides(settings["eval"])) if "eval" in settings else None
        if out is not None:
            check_output_dir(out, may_hold=lambda p: (p / "results.json").exists())
        return evaluate_pipeline(run, ranker, out, data, ec, progress)
    ev = overrides(settings.pop("eval", {}))  # ["exclude_history=False", ...]
    if run is not None:
        if settings:
            raise MirecConfigError(f"{next(iter(settings))}: re-evaluating a run takes eval settings only")
        return evaluate_run(run, data, ev)
    if data is None:
        raise MirecConfigError("data: give a prepared data set (or run= for a trained run)")
    split = load(SplitConfig, None, overrides(settings.pop("split", {})))
    if settings:
        raise MirecConfigError(f"{next(iter(settings))}: not a setting of a baseline (split, eval)")
    follows = RunConfig.defaults_for({"split": {"protocol": split.protocol}}).get("eval")  # loo's cut-offs
    return evaluate_baseline(model, data, seeds or [split.seed], split,
                             load(EvalConfig, None, ev, base=follows), out, progress)


def export(run: str | Path, out: str | Path, data: str | Path | None = None) -> Path:
    """Write the serving bundle of a finished run (its best checkpoint; the first seed's of a
    multi-seed run) into ``out``; returns the bundle's path."""
    from mirec.serve.bundle import export_bundle

    return export_bundle(run, out, data)


def refresh(run: str | Path, events: str | Path, data: str | Path, out: str | Path, *,
            serve: str | None = None, token: str | None = None, settings: dict[str, Any] | None = None,
            index: str = "auto", hnsw_above: int = 50_000, min_recall: float | None = None,
            queries: int = 200, log: Callable[[str], None] = lambda s: None, **more: Any) -> dict[str, Any]:
    """A model refreshed from live traffic in one resumable job into ``out``: ``data`` plus the
    event store ``events``' new events (-> ``out/data``), a warm start from the finished run
    ``run`` (-> ``out/run``; ``train.since`` defaults to ``data``'s last timestamp), its bundle
    (-> ``out/bundle``) with its index built and its recall checked against ``min_recall``, and,
    with ``serve`` (a server's address) and its bearer ``token``, ``POST /admin/reload`` of the
    new bundle. ``out/refresh.json`` records each finished step: calling again with the same
    arguments finishes a refresh that was stopped, and returns the same summary once finished.
    Settings as in :func:`fit` (``index.*`` keys configure the index). Returns the summary
    (docs/production.md, "One refresh command")."""
    from mirec.refresh import refresh as run_refresh

    return run_refresh(run, events, data, out, serve=serve, token=token,
                       settings=overrides({**(settings or {}), **more}), index=index, hnsw_above=hnsw_above,
                       min_recall=min_recall, queries=queries, log=log)
