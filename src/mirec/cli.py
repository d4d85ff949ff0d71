"""The ``mirec`` command line: a thin layer over library functions.

Every command that writes takes ``--out`` and prints the path it wrote. Errors that mirec
raises on purpose (bad data, bad config) are printed as one clear line and exit with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from mirec.errors import MirecError

app = typer.Typer(help="mirec: multi-interest recommendation, from a raw log to top-N lists.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Fetch, prepare, generate and inspect data sets.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
index_app = typer.Typer(help="Build and check the Faiss index of a bundle.", no_args_is_help=True)
app.add_typer(index_app, name="index")
report_app = typer.Typer(help="Reports with tables and plots.", no_args_is_help=True)
app.add_typer(report_app, name="report")
# a terminal decides its own width; piped output (CI logs, files) gets room for the tables
console = Console(width=None if sys.stdout.isatty() else 120)

OnBad = Annotated[str, typer.Option("--on-bad-rows",
                                    help="'error' stops at the first bad row; 'skip' drops "
                                         "bad rows and reports how many.")]
KCore = Annotated[int, typer.Option("--k-core", help="Drop users and items with fewer events, "
                                                     "repeated until stable.")]

# the source options (`mirec data sources`), shared by `data prepare` and `data append`
UserCol = Annotated[Optional[str], typer.Option(help="csv/parquet/jsonl: user id column (default user_id).")]
ItemCol = Annotated[Optional[str], typer.Option(help="csv/parquet/jsonl: item id column (default item_id).")]
TimeCol = Annotated[Optional[str], typer.Option(help="csv/parquet/jsonl: time column, epoch seconds or ISO "
                                                     "date-time (default timestamp).")]
CategoryCol = Annotated[Optional[str], typer.Option(help="csv/parquet/jsonl: item category column ('|' "
                                                         "separates several).")]
TitleCol = Annotated[Optional[str], typer.Option(help="csv/parquet/jsonl: item title column.")]
Separator = Annotated[Optional[str], typer.Option(help="csv: field separator (default ,).")]
Meta = Annotated[Optional[Path], typer.Option(help="amazon: metadata JSON lines (.json or .json.gz).")]
Behaviors = Annotated[Optional[str], typer.Option(help="taobao: behaviours kept, comma-separated (pv, buy, "
                                                       "cart, fav; default pv).")]
Attributes = Annotated[Optional[Path], typer.Option(help="sequences: JSON {item_id: \\[attribute ids]}, the "
                                                         "items' categories.")]
Format = Annotated[Optional[str], typer.Option(help="sequences: lines (user item item ...) or pairs (user "
                                                    "item); default lines.")]

PREPARE_COMMON = ("source", "path", "out", "k_core", "on_bad_rows")
APPEND_COMMON = ("data", "new", "out", "source", "new_items", "since", "on_bad_rows")
Overwrite = Annotated[bool, typer.Option(help="Replace an existing --out file even if mirec did "
                                              "not write it (by default only mirec's own).")]


def _seeds(seed: int, seeds: str | None) -> list[int]:
    if not seeds:
        return [seed]
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise MirecError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None


@data_app.command("prepare")
def data_prepare(
    source: Annotated[str, typer.Argument(help="A source name; `mirec data sources` lists them "
                                               "with the options each takes.")],
    path: Annotated[Path, typer.Argument(help="Input file or directory of the source.")],
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default ./data/<name>).")] = None,
    k_core: KCore = 5,
    on_bad_rows: OnBad = "error",
    user_col: UserCol = None,
    item_col: ItemCol = None,
    time_col: TimeCol = None,
    category_col: CategoryCol = None,
    title_col: TitleCol = None,
    separator: Separator = None,
    meta: Meta = None,
    behaviors: Behaviors = None,
    attributes: Attributes = None,
    format: Format = None,
    *,
    ctx: typer.Context,
) -> None:
    """Prepare a raw log into a mirec data set (dedupe, k-core, dense ids, sorted)."""
    from mirec.api import prepare

    # the source options given (the parameters after on_bad_rows); the registry checks them
    given = {k: v for k, v in ctx.params.items() if k not in PREPARE_COMMON and v is not None}
    with console.status(f"preparing {path} ..."):
        written = prepare(source, path, out, k_core, on_bad_rows, **given)
    _print_info(written)
    console.print(f"wrote [bold]{written}[/bold]")


@data_app.command("append")
def data_append(
    data: Annotated[Path, typer.Argument(help="The prepared data set to append to (never changed).")],
    new: Annotated[str, typer.Argument(help="The new events: the event store of `mirec serve --store` "
                                            "(a SQLite file or a postgresql:// URL), or with --source a "
                                            "log that source reads.")],
    out: Annotated[Path, typer.Option(help="The new data set directory (not DATA; the --out rules of "
                                           "`data prepare`).")],
    source: Annotated[Optional[str], typer.Option(help="Read NEW with this source (`mirec data "
                                                       "sources`) instead of as an event store.")] = None,
    new_items: Annotated[Optional[Path], typer.Option(help="The new items' titles and categories: the "
                                                           "file of `mirec serve --new-items` (CSV or "
                                                           "JSON lines).")] = None,
    since: Annotated[Optional[int], typer.Option(
        help="Event store: read the events after this seq (default: after the last seq an earlier "
             "append of this store to DATA recorded; 0 reads all).")] = None,
    on_bad_rows: OnBad = "error",
    user_col: UserCol = None,
    item_col: ItemCol = None,
    time_col: TimeCol = None,
    category_col: CategoryCol = None,
    title_col: TitleCol = None,
    separator: Separator = None,
    meta: Meta = None,
    behaviors: Behaviors = None,
    attributes: Attributes = None,
    format: Format = None,
    *,
    ctx: typer.Context,
) -> None:
    """Append new events (live traffic, a newer log) to a data set as a new data set.

    Known users and items keep their ids; new ones are numbered after them. Duplicates of
    (user, item, time) are dropped; each user's events stay in time order; no k-core filter
    is applied. meta.json records the base's checksum and what was appended (for a store, its
    last seq: the next append of that store continues from it).
    """
    from mirec.api import append
    from mirec.data.append import describe
    from mirec.data.dataset import load_dataset

    given = {k: v for k, v in ctx.params.items() if k not in APPEND_COMMON and v is not None}
    with console.status(f"appending {new} ..."):
        written = append(data, new, out, source=source, new_items=new_items, since=since,
                         on_bad_rows=on_bad_rows, **given)
    _print_info(written)
    console.print(describe(load_dataset(written, verify=False).meta["appended"][-1]))
    console.print(f"wrote [bold]{written}[/bold]")


@data_app.command("sources")
def data_sources() -> None:
    """List the sources `mirec data prepare` reads and the options each takes."""
    from mirec.data.sources import sources
    from mirec.report import sources_table

    console.print(sources_table(sources()))


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Data set name, e.g. ml-100k, ml-1m, ml-20m, "
                                             "amazon-books, taobao.")],
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default "
                                                     "./data/<name>).")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Where downloads are kept.")] = Path(
        "data/downloads"),
    source: Annotated[str, typer.Option(help="auto | grouplens | recbole-wheel (ml-100k).")] = "auto",
    base_url: Annotated[Optional[str], typer.Option(help="Mirror host replacing the "
                                                         "official one.")] = None,
    k_core: KCore = 5,
) -> None:
    """Download (with checksum) and prepare a public data set in one step."""
    from mirec.data.fetch import FetchOptions, fetch
    from mirec.data.prepare import PrepareConfig

    out = out or Path("data") / name
    res = fetch(name, out, cache_dir, FetchOptions(source=source, base_url=base_url,
                                                   prepare=PrepareConfig(k_core=k_core)))
    console.print(f"source used: {res.source_used}")
    _print_info(res.path)
    console.print(f"wrote [bold]{res.path}[/bold]")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output data set directory.")] = Path("data/synth"),
    config: Annotated[Optional[Path], typer.Option(help="TOML file with SynthConfig fields.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: "
                                                                     "key=value (repeatable).")] = None,
    raw: Annotated[Optional[str], typer.Option(help="Write a raw log instead to --out: csv or "
                                                    "parquet (a file), parts (a directory of "
                                                    "Parquet part files).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Start from a public log's shape: taobao "
                                                       "(1M users, 1.7M items, 85M events), "
                                                       "books (460k users, 314k items, 8.9M "
                                                       "events) or drift (20k users, 600k "
                                                       "events; items arrive and interests "
                                                       "move over 60 days); --config and --set "
                                                       "apply on top.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Generate a synthetic log with planted multi-interest structure (see SynthConfig).

    Settings (--set key=value): num_users, num_categories, items_per_category, zipf_a,
    max_interests, stickiness, noise, min_len, mean_len, mean_gap_s, start_ts, seed, chunk_users;
    over time (off by default): span_days (users start, and late items arrive, within it; 365),
    item_arrival (share of each category's items that arrive late; 0), fresh_boost and
    fresh_half_life_days (a late item's popularity is multiplied by 1 + fresh_boost at arrival,
    halving in that many days; 10, 7), interest_drift (rate per day at which a user replaces one
    interest; 0), trend_share (share of categories, a window moving with time, that a drifting
    interest goes to; 1 = any) and trend_period_days (the days that window takes to cross every
    category; 365).
    """
    from mirec.config import load
    from mirec.data.synth import SynthConfig, synth_dataset, synth_raw
    from mirec.data.synth import preset as preset_fields

    cfg = load(SynthConfig, config, set_ or [], base=preset_fields(preset))
    if raw:
        written = synth_raw(cfg, out, fmt=raw, overwrite=overwrite)
    else:
        written = synth_dataset(cfg, out)
        _print_info(written)
    console.print(f"wrote [bold]{written}[/bold]")


@data_app.command("info")
def data_info(path: Annotated[Path, typer.Argument(help="A prepared data set directory.")]) -> None:
    """Show a prepared data set's source, filters and counts."""
    _print_info(path)


def _print_info(path: Path) -> None:
    from mirec.data.dataset import load_dataset
    from mirec.report import dataset_table

    console.print(dataset_table(load_dataset(path, verify=False)))


@app.command("train")
def train_cmd(
    model: Annotated[Optional[str], typer.Option(
        help="Retrieval: comirec-sa (default), comirec-dr, mind, youtube-dnn, gru4rec, sasrec. "
             "Ranking (--task ctr): din (default), dien, mimn, embedding-mlp. --resume: the "
             "run's.")] = None,
    task: Annotated[str, typer.Option(
        help="retrieval (next-item, Recall@N) or ctr (click-through ranking, AUC).")] = "retrieval",
    data: Annotated[Path, typer.Option(help="Prepared data set directory.")] = Path("data/ml-100k"),
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default ./runs/<model>).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with RunConfig fields "
                                                        "(\\[train], \\[split], \\[model_args]).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting, e.g. train.lr=0.003 or model_args.dim=32.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Split and initialisation seed (default "
                                                     "2020; --resume: the run's).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Several seeds, e.g. 1,2,3 (mean and std).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default 1: on 2 cores, more "
                                                        "threads beside other work stall).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped run from its last checkpoint, "
                                              "with the settings it was started with.")] = False,
    candidates: Annotated[Optional[Path], typer.Option(
        help="--task ctr: train the ranker on this retrieval run's own candidates (seed s on its "
             "seed-<s>; the cand.* settings).")] = None,
    warm_start: Annotated[Optional[Path], typer.Option(
        help="Start every parameter from this finished run's best checkpoint (same task; its "
             "config is the base, the architecture may not change); --data is its data set with "
             "new events appended: rows are mapped by raw id, new items start from the category "
             "mean. Trains on the events after train.since (default: the run's last timestamp; "
             "0 = all).")] = None,
) -> None:
    """Train a model with early stopping (validation Recall@50, or AUC for --task ctr); test the best.

    Retrieval models and rankers train data-parallel over several processes or machines when
    launched with torchrun: torchrun --standalone --nproc-per-node 2 -m mirec.cli train ...
    """
    from mirec.api import fit
    from mirec.config import apply_overrides
    from mirec.errors import MirecConfigError
    from mirec.report import ctr_table, results_table
    from mirec.train.distributed import world

    if task not in ("retrieval", "ctr"):
        raise MirecConfigError(f"--task: expected retrieval or ctr, got {task!r}")
    threads_set = [f"train.threads={threads}"] if threads is not None else []
    settings = apply_overrides({}, (set_ or []) + threads_set)
    console.quiet = not world().main  # under torchrun, process 0 reports
    chosen = _seeds(seed, seeds) if seed is not None or seeds else None  # None: the config's seed
    run = fit(model, data, out, chosen, config=config, resume=resume, log=console.print,
              task="ranking" if task == "ctr" else "retrieval", candidates=candidates, settings=settings,
              warm_start=warm_start)
    out = run.path
    console.print(ctr_table({run.model: run.to_json()}) if task == "ctr" else results_table({run.model: run}))
    console.print(f"wrote [bold]{out / 'results.json'}[/bold]")


@app.command("tune")
def tune_cmd(
    model: Annotated[str, typer.Option(help="Retrieval model to tune, e.g. comirec-sa.")] = "comirec-sa",
    data: Annotated[Path, typer.Option(help="Prepared data set directory.")] = Path("data/ml-100k"),
    trials: Annotated[int, typer.Option(help="Trials to finish in total (a rerun continues the "
                                             "study).")] = 20,
    out: Annotated[Optional[Path], typer.Option(help="Study directory (default "
                                                     "runs/tune-<model>).")] = None,
    seed: Annotated[int, typer.Option(help="Split and initialisation seed of every trial.")] = 2020,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Fix a setting for every trial, e.g. train.epochs=20.")] = None,
    heartbeat: Annotated[int, typer.Option(help="Seconds between a running trial's heartbeats; a "
                                                "rerun marks a trial silent for twice as long "
                                                "failed (its process died).")] = 30,
) -> None:
    """Search temperature, learning rate, weight decay and the model's own settings on validation
    users (Optuna TPE, median pruning per epoch); writes trials.csv and best.toml for
    `mirec train --config`."""
    from mirec.tune import tune

    out = out or Path("runs") / f"tune-{model}"
    study = tune(model, data, out, trials, seed, set_ or [], log=console.print, heartbeat=heartbeat)
    console.print(f"best: trial {study.best_trial.number}, valid recall@50 {study.best_value:.4f}")
    console.print(f"wrote [bold]{out / 'trials.csv'}[/bold] and [bold]{out / 'best.toml'}[/bold]")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Option(
        help="Baseline to fit and evaluate: most-popular, item-cf.")] = "most-popular",
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="Evaluate a trained run directory "
                                                                  "instead of a baseline.")] = None,
    data: Annotated[Path, typer.Option(help="Prepared data set directory.")] = Path("data/ml-100k"),
    out: Annotated[Optional[Path], typer.Option(help="Run directory for results.json "
                                                     "(default ./runs/<model>).")] = None,
    seed: Annotated[int, typer.Option(help="Split and model seed.")] = 2020,
    seeds: Annotated[Optional[str], typer.Option(help="Several seeds, e.g. 1,2,3: reports "
                                                      "mean and std.")] = None,
    max_len: Annotated[int, typer.Option(help="History window length.")] = 20,
    exclude_history: Annotated[bool, typer.Option(help="Exclude history items from the "
                                                       "ranking.")] = True,
    ranker: Annotated[Optional[Path], typer.Option(
        help="With --run: evaluate the two-stage pipeline, retrieval alone against retrieval + "
             "this ranking run, seeds paired (results.json in --out).")] = None,
    index: Annotated[str, typer.Option(
        "--index", help="exact (the blocked scan) or faiss (the serving index; prints its "
                        "recall against exact on a sample of users).")] = "exact",
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting: eval.* (and split.* for a baseline), e.g. "
                      "split.protocol=time.")] = None,
) -> None:
    """Evaluate a model under the protocol on test users; writes results.json."""
    from mirec.api import evaluate
    from mirec.config import apply_overrides
    from mirec.report import pipeline_table, results_table

    sets = apply_overrides({}, set_ or [])  # --set wins over the options it repeats
    ev = {"eval": {"exclude_history": exclude_history, "index": index, **sets.pop("eval", {})}, **sets}
    if ranker is not None:
        r = evaluate(run=run_dir, ranker=ranker, out=out, progress=True, **ev)
        console.print(pipeline_table(r.doc))
        if out is not None:
            console.print(f"wrote [bold]{out / 'results.json'}[/bold]")
        return
    if run_dir is not None:
        run = evaluate(run=run_dir, **ev)
        console.print(results_table({run.model: run}))
        for k, v in run.mean.items():
            if k.startswith("index_recall@"):
                console.print(f"faiss top-N: {k} against exact {v:.3f} (a seeded sample of users)")
        _print_new_items(run.mean)
        return
    out = out or Path("runs") / model
    ev["split"] = {"max_len": max_len, **ev.get("split", {})}
    run = evaluate(model=model, data=data, out=out, seeds=_seeds(seed, seeds), progress=True, **ev)
    console.print(results_table({model: run}))
    _print_new_items(run.mean)
    console.print(f"wrote [bold]{out / 'results.json'}[/bold]")


def _print_new_items(metrics: dict[str, float]) -> None:
    """split.protocol=time: the share of test targets that no training event holds (sure misses)."""
    if "new_item_share" in metrics:
        console.print(f"new items: {metrics['new_item_share']:.3f} of the test targets (never ranked, "
                      f"counted as misses)")


@app.command("demo")
def demo(
    data: Annotated[Path, typer.Option(help="Where MovieLens-100K is prepared.")] = Path(
        "data/ml-100k"),
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
    seeds: Annotated[str, typer.Option(help="Seeds to average over (each sets the split).")] = "2020",
    model: Annotated[str, typer.Option(help="The multi-interest model to train.")] = "comirec-sa",
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
) -> None:
    """Fetch MovieLens-100K, train ComiRec-SA, compare with MostPopular, show recommendations."""
    import dataclasses

    from mirec.config import load
    from mirec.data.dataset import load_dataset
    from mirec.data.fetch import fetch
    from mirec.data.split import windows
    from mirec.experiment import evaluate_baseline, train_seeds
    from mirec.models.base import VectorScorer
    from mirec.report import interest_table, results_table
    from mirec.runs import RunConfig

    if not (data / "meta.json").exists():
        res = fetch("ml-100k", data, Path("data/downloads"))
        console.print(f"fetched ml-100k; source used: {res.source_used}")
    ds = load_dataset(data)
    console.print(f"data set {data}: {ds.num_users} users, {ds.num_items - 1} items, "
                  f"{len(ds.item)} events")
    seed_list = _seeds(0, seeds)
    mp = evaluate_baseline("most-popular", ds, seed_list, out=out / "most-popular")
    cfg = load(RunConfig, None, [f"model={model}", f"train.threads={threads}"])
    run = train_seeds(cfg, ds, seed_list, out / model, log=console.print)
    console.print(results_table({"most-popular": mp, model: run}))

    first = run.seeds[0]
    sp_cfg = dataclasses.replace(cfg.split, seed=first.seed)
    from mirec.data.split import split_users

    sp = split_users(ds, sp_cfg)
    j = 0  # the first test user of the first seed
    hist, mask = windows(ds.item, sp.test.hist_start[j:j + 1], sp.test.cut[j:j + 1], sp_cfg.max_len)
    scorer = VectorScorer(first.model, cfg.train.cosine)
    console.print(interest_table(
        ds, scorer.interests(hist, mask), scorer.items, first.test_topn[j][:10], hist[0],
        ds.item[sp.test.cut[j]:sp.test.end[j]],
        title=f"{model}: top-10 for test user {ds.users['raw_id'][int(sp.test.users[j])]} "
              f"(seed {first.seed}), grouped by interest"))
    console.print(f"wrote [bold]{out}[/bold] (results.json, checkpoints, metrics.jsonl)")


IndexKind = Annotated[str, typer.Option("--index", help="auto (exact up to --hnsw-above items, "
                                                        "IVF above, nprobe tuned at index build), "
                                                        "exact, hnsw or ivf.")]
HnswAbove = Annotated[int, typer.Option(help="auto switches from exact search to an approximate "
                                             "index above this many items.")]


def _index_config(kind: str, hnsw_above: int):
    from mirec.serve.index import IndexConfig

    cfg = IndexConfig(kind=kind, hnsw_above=hnsw_above)
    cfg.validate()
    return cfg


def _recommender(bundle: Path, kind: str, hnsw_above: int, store: str | None, ranker: Path | None = None,
                 **store_options):
    from mirec.serve.service import open_recommender

    return open_recommender(bundle, kind, hnsw_above, store, ranker, **store_options)


RankerRun = Annotated[Optional[Path], typer.Option(
    help="A ranking run (`mirec train --task ctr`, same data set) for the two-stage pipeline: "
         "it re-scores the retrieved candidates before the diversity step.")]
Unavailable = Annotated[Optional[Path], typer.Option(
    help="File of raw item ids never to recommend (one per line, e.g. out of stock).")]
NewItems = Annotated[Optional[Path], typer.Option(
    help="Items added after training (CSV or JSONL: item_id, title, categories): they get "
         "the mean vector of their categories' items and can be recommended.")]
IdList = Annotated[Optional[str], typer.Option(help="Comma-separated.")]


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _filters(exclude_items: str | None, exclude_categories: str | None, only_categories: str | None):
    from mirec.serve.recommender import Filters

    return Filters(_split(exclude_items), _split(exclude_categories),
                   None if only_categories is None else _split(only_categories))


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished `mirec train` run directory.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    data: Annotated[Optional[Path], typer.Option(help="The run's data set, if it moved.")] = None,
) -> None:
    """Write a self-contained serving bundle (tower, item vectors, id maps, manifest)."""
    from mirec.api import export

    path = export(run_dir, out, data)
    console.print(f"wrote bundle [bold]{path}[/bold]")


@index_app.command("build")
def index_build(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (`mirec export`).")],
    index: IndexKind = "auto",
    hnsw_above: HnswAbove = 50_000,
    queries: Annotated[int, typer.Option(help="Held-out users whose interests test recall.")] = 200,
) -> None:
    """Build the bundle's index, save it into the bundle, report time, memory and recall@50."""
    from mirec.serve.bundle import load_bundle
    from mirec.serve.service import build_index_report

    b = load_bundle(bundle)
    r = build_index_report(b, _index_config(index, hnsw_above), queries)
    ivf = f" (nlist {r['nlist']}, nprobe {r['nprobe']})" if r["kind"] == "ivf" else ""
    console.print(f"{r['kind']} index{ivf} over {r['items']:,} items: built in {r['build_s']:.2f} s, "
                  f"{r['bytes'] / 2**20:.1f} MiB, recall@50 vs exact {r['recommend_recall@50']:.3f} "
                  f"per recommendation ({r['users']} users, max over interests), "
                  f"{r['recall@50']:.3f} per interest query ({r['queries']}); wrote {r['path']}")
    if r["kind"] == "ivf" and r["nprobe"] * 16 > r["nlist"]:
        console.print(f"note: at this recall each query scans {r['nprobe'] / r['nlist']:.0%} of the lists; "
                      f"`--index hnsw` may search faster (it builds slower; docs/serving.md)")


@app.command("recommend")
def recommend_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (`mirec export`).")],
    user: Annotated[Optional[str], typer.Option(help="Raw user id from the source data.")] = None,
    history: Annotated[Optional[str], typer.Option(help="Comma-separated raw item ids, oldest "
                                                        "first.")] = None,
    all_users: Annotated[bool, typer.Option(help="Every known user's top-n into --out (Parquet: "
                                                 "user_id, rank, item_id, score, interest, new).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="The Parquet file of --all-users.")] = None,
    n: Annotated[int, typer.Option(help="How many items.")] = 20,
    lam: Annotated[float, typer.Option("--lambda", help="Diversity weight (0 = pure accuracy).")] = 0.0,
    exclude_history: Annotated[bool, typer.Option(help="Never recommend history items.")] = True,
    exclude_items: IdList = None,
    exclude_categories: IdList = None,
    only_categories: IdList = None,
    unavailable: Unavailable = None,
    new_items: NewItems = None,
    block: Annotated[int, typer.Option(help="--all-users: users per batch (memory ~ block).")] = 1024,
    store: Annotated[Optional[str], typer.Option(help="Event store with recent events, a SQLite file or "
                                                     "a postgresql:// URL (an existing one: it is only "
                                                     "read).")] = None,
    index: IndexKind = "auto",
    hnsw_above: HnswAbove = 50_000,
    ranker: RankerRun = None,
    overwrite: Overwrite = False,
) -> None:
    """Recommend for a known user or a given history (prints rank, title, interest, because),
    or for every known user into a Parquet file (--all-users --out FILE)."""
    from mirec.report import served_table

    if sum([user is not None, history is not None, all_users]) != 1:
        raise MirecError("give exactly one of --user, --history or --all-users")
    if all_users and out is None:
        raise MirecError("--all-users: give the Parquet file to write with --out")
    if all_users:
        from mirec.io import check_output_file

        check_output_file(out, overwrite)  # before any work
    filters = _filters(exclude_items, exclude_categories, only_categories)
    rec = _recommender(bundle, index, hnsw_above, store, ranker, create_store=False,
                       unavailable=unavailable, new_items=new_items)
    if all_users:
        from mirec.serve.batch import write_recommendations

        r = write_recommendations(rec, out, n, lam, ranker is not None, filters, block,
                                  progress=sys.stderr.isatty(), overwrite=overwrite)
        console.print(f"{r['users']:,} users, {r['rows']:,} rows ({r['short']:,} lists shorter than "
                      f"{n}); wrote [bold]{r['path']}[/bold]")
        return
    hist = _split(history) if history is not None else None
    r = rec.recommend(user_id=user, history=hist, n=n, diversity=lam, exclude_history=exclude_history,
                      rank=ranker is not None, filters=filters)
    b = rec.bundle
    console.print(served_table(r, title=f"top-{n} for " + (f"user {user}" if user else "the history")
                               + f" (lambda {lam:g}" + (f", ranked by {rec.ranker.name})" if ranker else ")"),
                               name=lambda raw: b.item_title[b.item_ids[raw]]))
    if r.short:
        console.print(f"only {len(r.items)} items passed the filters")


@app.command("serve")
def serve_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (`mirec export`).")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    store: Annotated[str, typer.Option(help="Event store: a SQLite file (created if missing) or a "
                                            "postgresql://user@host/db URL that several servers share "
                                            "(password from PGPASSWORD or ~/.pgpass).")] =
        "runs/events.sqlite",
    index: IndexKind = "auto",
    hnsw_above: HnswAbove = 50_000,
    workers: Annotated[int, typer.Option(help="Server processes; each loads the bundle and "
                                              "index (memory x N) and uses one core.")] = 1,
    ranker: RankerRun = None,
    token: Annotated[Optional[str], typer.Option(
        envvar="MIREC_TOKEN", show_envvar=True,
        help="Require 'Authorization: Bearer TOKEN' on every endpoint but /, /health and the "
             "docs (prefer the environment variable: options show in `ps`).")] = None,
    max_body: Annotated[int, typer.Option(help="Largest request body in bytes (413 above).")] = 1 << 20,
    rate_limit: Annotated[float, typer.Option(help="Requests per second per client address and "
                                                   "worker (429 above; 0 = no limit).")] = 0.0,
    trusted_proxies: Annotated[Optional[str], typer.Option(
        envvar="MIREC_TRUSTED_PROXIES", show_envvar=True,
        help="Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is "
             "believed as the client address ('*': any); default none: the connection's peer.")] = None,
    keep_events: Annotated[Optional[int], typer.Option(help="Keep only each user's newest N "
                                                            "events in the store.")] = None,
    unavailable: Unavailable = None,
    new_items: NewItems = None,
    log_format: Annotated[str, typer.Option(help="'text' (uvicorn's warnings only) or 'json' (one "
                                                 "JSON line per request on stderr).")] = "text",
    reload_timeout: Annotated[float, typer.Option(help="With --workers N: how long a reload waits "
                                                       "for every worker to serve the new bundle "
                                                       "(504 after).")] = 60.0,
) -> None:
    """Serve POST /recommend, POST /events, GET /items/{id}, GET /health, GET /metrics and
    POST /admin/reload over HTTP; SIGHUP reloads the bundle (docs/production.md)."""
    import os

    import torch
    import uvicorn

    from mirec.serve.app import create_app
    from mirec.serve.guard import Limits, proxy_options
    from mirec.serve.observe import log_to_stderr
    from mirec.serve.service import Live, reload_on_sighup

    if log_format not in ("text", "json"):
        raise MirecError(f"--log-format: expected 'text' or 'json', got {log_format!r}")
    if not reload_timeout > 0:
        raise MirecError(f"--reload-timeout: expected a positive number of seconds, got {reload_timeout}")
    limits = Limits(token=token, max_body=max_body, rate=rate_limit)
    limits.validate()
    proxy = proxy_options(trusted_proxies)  # uvicorn's proxy_headers, forwarded_allow_ips
    torch.set_num_threads(1)  # one request = one core's work; concurrency comes from requests
    rec = _recommender(bundle, index, hnsw_above, store, ranker,  # also checks everything up front
                       keep_events=keep_events, unavailable=unavailable, new_items=new_items)
    console.print(f"serving {bundle} ({rec.bundle.manifest['model']}, {rec.index.kind} index) on "
                  f"http://{host}:{port} with {workers} worker(s) (docs: /docs); events in {rec.store.name}"
                  + ("; bearer token required" if token else ""))
    if log_format == "json":
        log_to_stderr()
    if workers == 1:
        live = Live(rec)
        reload_on_sighup(live)
        uvicorn.run(create_app(live, limits, log_json=log_format == "json"), host=host, port=port,
                    log_level="warning", **proxy)
        return
    from mirec.serve.fleet import serve_fleet

    serving = (rec.bundle.path, rec.bundle.version)  # the workers load it (generation 0)
    del rec
    os.environ.update(MIREC_BUNDLE=str(bundle), MIREC_STORE=str(store), MIREC_INDEX=index,
                      MIREC_HNSW_ABOVE=str(hnsw_above), MIREC_RANKER=str(ranker or ""),
                      MIREC_TOKEN=token or "", MIREC_MAX_BODY=str(max_body),
                      MIREC_RATE_LIMIT=str(rate_limit), MIREC_KEEP_EVENTS=str(keep_events or ""),
                      MIREC_UNAVAILABLE=str(unavailable or ""), MIREC_NEW_ITEMS=str(new_items or ""),
                      MIREC_LOG_FORMAT=log_format,
                      MIREC_SUPERVISOR_PID=str(os.getpid()))
    serve_fleet("mirec.serve.app:app_from_env", *serving, workers, host, port, reload_timeout, proxy)


@report_app.command("diversity")
def report_diversity(
    run_dir: Annotated[Path, typer.Option("--run", help="A finished `mirec train` run directory.")],
    lambdas: Annotated[str, typer.Option(help="Comma-separated lambda values.")] =
        "0,0.05,0.1,0.2,0.5,1,2",
    out: Annotated[Optional[Path], typer.Option(help="Where to write diversity.json/.png "
                                                     "(default: the run directory).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="The run's data set, if it moved.")] = None,
    ranker: Annotated[Optional[Path], typer.Option(
        help="A ranking run: the full pipeline's curve (lambda on the ranker's scores).")] = None,
) -> None:
    """Sweep lambda on test users: Recall@50 against Diversity@50, a table and a PNG plot."""
    from mirec.eval.diversity import diversity_report

    try:
        lams = [float(x) for x in lambdas.split(",")]
    except ValueError:
        raise MirecError(f"--lambdas: expected comma-separated numbers, got {lambdas!r}") from None
    r = diversity_report(run_dir, lams, out or run_dir, data, progress=True, ranker=ranker)
    console.print(r.table())
    console.print(f"wrote [bold]{r.json_path}[/bold] and [bold]{r.png_path}[/bold]")


@report_app.command("training")
def report_training(
    run_dir: Annotated[Path, typer.Option("--run", help="A `mirec train` run directory.")],
    out: Annotated[Optional[Path], typer.Option(help="PNG to write (default: RUN/training.png).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Plot loss and validation metrics per epoch from the run's metrics.jsonl, one line per seed."""
    from mirec.plots import save_png, training_figure

    png = save_png(training_figure(run_dir), out or run_dir / "training.png", overwrite)
    console.print(f"wrote [bold]{png}[/bold]")


@report_app.command("interests")
def report_interests(
    bundle: Annotated[Path, typer.Option(help="A bundle directory (`mirec export`).")],
    user: Annotated[str, typer.Option(help="A user id of the bundle (the source data's raw id).")],
    out: Annotated[Optional[Path], typer.Option(help="PNG to write (default: ./interests-USER.png).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Plot a user's interest vectors among the item vectors of their categories (2-D PCA)."""
    import re

    from mirec.plots import interests_figure, save_png
    from mirec.serve.bundle import load_bundle

    out = out or Path(f"interests-{re.sub(r'[^A-Za-z0-9_.-]', '_', user)}.png")
    console.print(f"wrote [bold]{save_png(interests_figure(load_bundle(bundle), user), out, overwrite)}"
                  f"[/bold]")


def main() -> None:
    """Run the CLI. A user's mistake (bad data, bad config, a bad option) is one line on stderr
    and exit code 2, never a traceback."""
    err = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)  # one line, as written
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted", markup=False)
        code = 130
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # a bare group: its help
            console.print(ctx.get_help(), highlight=False, markup=False)
        else:
            cmd = ctx.command_path if ctx is not None else "mirec"
            err.print(f"error: {cmd}: {one_line(e.format_message())} (see {cmd} --help)",
                      markup=False)
        code = 2
    except MirecError as e:
        err.print(f"error: {one_line(str(e))}", markup=False)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


def one_line(msg: str, limit: int = 2000) -> str:
    """``msg`` on one line, cut to ``limit`` characters (a message naming a value never floods a
    terminal)."""
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[:limit] + "..."


if __name__ == "__main__":
    main()
