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

SOURCES = ("movielens", "recbole", "amazon", "taobao", "csv", "parquet", "jsonl")
OnBad = Annotated[str, typer.Option("--on-bad-rows",
                                    help="'error' stops at the first bad row; 'skip' drops "
                                         "bad rows and reports how many.")]
KCore = Annotated[int, typer.Option("--k-core", help="Drop users and items with fewer events, "
                                                     "repeated until stable.")]


def _seeds(seed: int, seeds: str | None) -> list[int]:
    if not seeds:
        return [seed]
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise MirecError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None


@data_app.command("prepare")
def data_prepare(
    source: Annotated[str, typer.Argument(help=f"One of: {', '.join(SOURCES)}.")],
    path: Annotated[Path, typer.Argument(help="Input file or directory of the source.")],
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default ./data/<name>).")] = None,
    k_core: KCore = 5,
    on_bad_rows: OnBad = "error",
    user_col: Annotated[str, typer.Option(help="csv/parquet/jsonl: user id column.")] = "user_id",
    item_col: Annotated[str, typer.Option(help="csv/parquet/jsonl: item id column.")] = "item_id",
    time_col: Annotated[str, typer.Option(help="csv/parquet/jsonl: time column (epoch seconds "
                                               "or ISO date-time).")] = "timestamp",
    category_col: Annotated[Optional[str], typer.Option(help="Item category column ('|' "
                                                             "separates several).")] = None,
    title_col: Annotated[Optional[str], typer.Option(help="Item title column.")] = None,
    separator: Annotated[str, typer.Option(help="csv: field separator.")] = ",",
    meta: Annotated[Optional[Path], typer.Option(help="amazon: metadata JSON lines "
                                                      "(.json or .json.gz).")] = None,
    behaviors: Annotated[str, typer.Option(help="taobao: behaviours kept, comma-separated "
                                                "(pv, buy, cart, fav).")] = "pv",
) -> None:
    """Prepare a raw log into a mirec data set (dedupe, k-core, dense ids, sorted)."""
    from mirec.data.prepare import PrepareConfig, build_dataset

    cfg = PrepareConfig(k_core=k_core, on_bad_rows=on_bad_rows)
    cfg.validate()
    if source == "movielens":
        from mirec.data.movielens import load_movielens
        raw = load_movielens(path, on_bad_rows)
    elif source == "recbole":
        from mirec.data.atomic import load_recbole
        raw = load_recbole(path, on_bad_rows)
    elif source == "amazon":
        from mirec.data.amazon import load_amazon
        raw = load_amazon(path, meta, on_bad_rows)
    elif source == "taobao":
        from mirec.data.taobao import load_taobao
        raw = load_taobao(path, tuple(b.strip() for b in behaviors.split(",") if b.strip()),
                          on_bad_rows)
    elif source in ("csv", "parquet", "jsonl"):
        from mirec.data.tabular import load_table
        raw = load_table(path, source, user_col=user_col, item_col=item_col, time_col=time_col,
                         category_col=category_col, title_col=title_col, separator=separator,
                         on_bad_rows=on_bad_rows)
    else:
        raise MirecError(f"SOURCE: unknown source {source!r} (one of: {', '.join(SOURCES)})")
    out = out or Path("data") / path.stem
    with console.status(f"preparing {path} ..."):
        written = build_dataset(raw, out, cfg)
    _print_info(written)
    console.print(f"wrote [bold]{written}[/bold]")


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
    from mirec.data.fetch import fetch
    from mirec.data.prepare import PrepareConfig

    out = out or Path("data") / name
    res = fetch(name, out, cache_dir, base_url=base_url, source=source,
                prepare_cfg=PrepareConfig(k_core=k_core))
    console.print(f"source used: {res.source_used}")
    _print_info(res.path)
    console.print(f"wrote [bold]{res.path}[/bold]")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output data set directory.")] = Path("data/synth"),
    config: Annotated[Optional[Path], typer.Option(help="TOML file with SynthConfig fields.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: "
                                                                     "key=value (repeatable).")] = None,
    raw: Annotated[Optional[str], typer.Option(help="Write a raw log instead (csv or parquet) to "
                                                    "--out as a file.")] = None,
) -> None:
    """Generate a synthetic log with planted multi-interest structure (see SynthConfig)."""
    from mirec.config import load
    from mirec.data.synth import SynthConfig, synth_dataset, synth_raw

    cfg = load(SynthConfig, config, set_ or [])
    if raw:
        written = synth_raw(cfg, out, fmt=raw)
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
        help="Retrieval: comirec-sa (default), comirec-dr, mind, youtube-dnn, gru4rec. "
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
) -> None:
    """Train a model with early stopping (validation Recall@50, or AUC for --task ctr); test the best.

    Retrieval models train data-parallel over several processes or machines when launched
    with torchrun: torchrun --standalone --nproc-per-node 2 -m mirec.cli train ...
    """
    from mirec.config import load
    from mirec.experiment import train_seeds
    from mirec.io import check_output_dir
    from mirec.report import ctr_table, results_table
    from mirec.train.checkpoint import is_run_dir, resume_config
    from mirec.train.loop import RunConfig

    overrides = ([f"model={model}"] if model else []) + (set_ or [])
    if threads is not None:
        overrides.append(f"train.threads={threads}")
    from mirec.errors import MirecConfigError

    if task not in ("retrieval", "ctr"):
        raise MirecConfigError(f"--task: expected retrieval or ctr, got {task!r}")
    if task == "ctr":
        from mirec.train.ctr import RankRunConfig, train_ctr_seeds
        from mirec.train.distributed import launched

        if launched():
            raise MirecConfigError("--task ctr: rankers train in one process; run it without torchrun "
                                   "(data-parallel training is for retrieval models)")

        out = out or Path("runs") / (model or RankRunConfig().model)
        check_output_dir(out, may_hold=is_run_dir)
        cfg = resume_config(RankRunConfig, out, config, overrides) if resume else \
            load(RankRunConfig, config, overrides)
        doc = train_ctr_seeds(cfg, data, _seeds(cfg.train.seed if seed is None else seed, seeds),
                              out, resume=resume, log=console.print)
        console.print(ctr_table({cfg.model: doc}))
        console.print(f"wrote [bold]{out / 'results.json'}[/bold]")
        return
    out = out or Path("runs") / (model or RunConfig().model)
    check_output_dir(out, may_hold=is_run_dir)
    cfg = resume_config(RunConfig, out, config, overrides) if resume else \
        load(RunConfig, config, overrides)
    from mirec.train.distributed import world

    console.quiet = not world().main  # under torchrun, process 0 reports
    run = train_seeds(cfg, data, _seeds(cfg.train.seed if seed is None else seed, seeds), out,
                      resume=resume, log=console.print)
    console.print(results_table({cfg.model: run}))
    console.print(f"wrote [bold]{out / 'results.json'}[/bold]")


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
) -> None:
    """Evaluate a model under the protocol on test users; writes results.json."""
    from mirec.data.split import SplitConfig
    from mirec.eval.evaluate import EvalConfig
    from mirec.experiment import evaluate_baseline
    from mirec.report import results_table

    if run_dir is not None:
        from mirec.experiment import evaluate_run

        run = evaluate_run(run_dir, eval_cfg=EvalConfig(exclude_history=exclude_history))
        console.print(results_table({run.model: run}))
        return
    out = out or Path("runs") / model
    run = evaluate_baseline(model, data, _seeds(seed, seeds), SplitConfig(max_len=max_len),
                            EvalConfig(exclude_history=exclude_history), out, progress=True)
    console.print(results_table({model: run}))
    console.print(f"wrote [bold]{out / 'results.json'}[/bold]")


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
    from mirec.report import interest_table, results_table
    from mirec.train.loop import RunConfig, VectorScorer

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
                                                        "HNSW above), exact, hnsw or ivf.")]
HnswAbove = Annotated[int, typer.Option(help="auto switches to HNSW above this many items.")]


def _index_config(kind: str, hnsw_above: int):
    from mirec.serve.index import IndexConfig

    cfg = IndexConfig(kind=kind, hnsw_above=hnsw_above)
    cfg.validate()
    return cfg


def _recommender(bundle: Path, kind: str, hnsw_above: int, store: Path | None, ranker: Path | None = None):
    from mirec.serve.service import open_recommender

    return open_recommender(bundle, kind, hnsw_above, store, ranker)


RankerRun = Annotated[Optional[Path], typer.Option(
    help="A ranking run (`mirec train --task ctr`, same data set) for the two-stage pipeline: "
         "it re-scores the retrieved candidates before the diversity step.")]


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished `mirec train` run directory.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    data: Annotated[Optional[Path], typer.Option(help="The run's data set, if it moved.")] = None,
) -> None:
    """Write a self-contained serving bundle (tower, item vectors, id maps, manifest)."""
    from mirec.serve.bundle import export_bundle

    path = export_bundle(run_dir, out, data)
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
    console.print(f"{r['kind']} index over {r['items']:,} items: built in {r['build_s']:.2f} s, "
                  f"{r['bytes'] / 2**20:.1f} MiB, recall@50 vs exact {r['recall@50']:.3f} "
                  f"({r['queries']} interest vectors of held-out users); wrote {r['path']}")


@app.command("recommend")
def recommend_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (`mirec export`).")],
    user: Annotated[Optional[str], typer.Option(help="Raw user id from the source data.")] = None,
    history: Annotated[Optional[str], typer.Option(help="Comma-separated raw item ids, oldest "
                                                        "first.")] = None,
    n: Annotated[int, typer.Option(help="How many items.")] = 20,
    lam: Annotated[float, typer.Option("--lambda", help="Diversity weight (0 = pure accuracy).")] = 0.0,
    exclude_history: Annotated[bool, typer.Option(help="Never recommend history items.")] = True,
    store: Annotated[Optional[Path], typer.Option(help="SQLite event store with recent events.")] = None,
    index: IndexKind = "auto",
    hnsw_above: HnswAbove = 50_000,
    ranker: RankerRun = None,
) -> None:
    """Recommend for a known user or a given history; prints rank, title, interest, because."""
    from mirec.report import served_table

    if (user is None) == (history is None):
        raise typer.BadParameter("give exactly one of --user or --history")
    rec = _recommender(bundle, index, hnsw_above, store, ranker)
    hist = [h.strip() for h in history.split(",") if h.strip()] if history is not None else None
    r = rec.recommend(user_id=user, history=hist, n=n, lam=lam, exclude_history=exclude_history,
                      rank=ranker is not None)
    b = rec.bundle
    console.print(served_table(r, title=f"top-{n} for " + (f"user {user}" if user else "the history")
                               + f" (lambda {lam:g}" + (f", ranked by {rec.ranker.name})" if ranker else ")"),
                               name=lambda raw: b.item_title[b.item_ids[raw]]))


@app.command("serve")
def serve_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (`mirec export`).")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    store: Annotated[Path, typer.Option(help="SQLite event store file (created if missing).")] = Path(
        "runs/events.sqlite"),
    index: IndexKind = "auto",
    hnsw_above: HnswAbove = 50_000,
    workers: Annotated[int, typer.Option(help="Server processes; each loads the bundle and "
                                              "index (memory x N) and uses one core.")] = 1,
    ranker: RankerRun = None,
) -> None:
    """Serve POST /recommend, POST /events, GET /items/{id}, GET /health over HTTP."""
    import os

    import torch
    import uvicorn

    from mirec.serve.app import create_app

    torch.set_num_threads(1)  # one request = one core's work; concurrency comes from requests
    rec = _recommender(bundle, index, hnsw_above, store, ranker)  # also checks everything up front
    console.print(f"serving {bundle} ({rec.bundle.manifest['model']}, {rec.index.kind} index) on "
                  f"http://{host}:{port} with {workers} worker(s) (docs: /docs); events in {store}")
    if workers == 1:
        uvicorn.run(create_app(rec), host=host, port=port, log_level="warning")
        return
    del rec
    os.environ.update(MIREC_BUNDLE=str(bundle), MIREC_STORE=str(store), MIREC_INDEX=index,
                      MIREC_HNSW_ABOVE=str(hnsw_above), MIREC_RANKER=str(ranker or ""))
    uvicorn.run("mirec.serve.app:app_from_env", factory=True, workers=workers, host=host,
                port=port, log_level="warning")


@report_app.command("diversity")
def report_diversity(
    run_dir: Annotated[Path, typer.Option("--run", help="A finished `mirec train` run directory.")],
    lambdas: Annotated[str, typer.Option(help="Comma-separated lambda values.")] =
        "0,0.05,0.1,0.2,0.5,1,2",
    out: Annotated[Optional[Path], typer.Option(help="Where to write diversity.json/.png "
                                                     "(default: the run directory).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="The run's data set, if it moved.")] = None,
) -> None:
    """Sweep lambda on test users: Recall@50 against Diversity@50, a table and a PNG plot."""
    from mirec.serve.diversity import diversity_report

    try:
        lams = [float(x) for x in lambdas.split(",")]
    except ValueError:
        raise MirecError(f"--lambdas: expected comma-separated numbers, got {lambdas!r}") from None
    r = diversity_report(run_dir, lams, out or run_dir, data, progress=True)
    console.print(r.table())
    console.print(f"wrote [bold]{r.json_path}[/bold] and [bold]{r.png_path}[/bold]")


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
