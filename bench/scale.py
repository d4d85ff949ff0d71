"""Benchmark: mirec at the size of the public logs (issue 25), one table per preset.

Every stage is the user's own command or library call, run in a child process of its own, timed
by the wall clock and measured by that child's peak RSS (``os.wait4``):

* ``generate``  ``mirec data synth --preset P --raw parts`` (a directory of Parquet part files)
* ``prepare``   ``mirec data prepare parquet`` of that directory (dedupe, 5-core, dense ids)
* ``train``     ComiRec-SA, sampled softmax with logQ, batch 256, one thread, ``--steps`` steps
                on the preset (no final test: the bench times the test separately); examples/s
* ``train-12k`` the same model, loss, batch and steps on a 12,000-item log of the same shape
                (the preset with 60 categories x 200 items and 50,000 users), in the same bench
                run: the ratio of the two examples/s
* ``epoch``     one full epoch's wall time: measured when ``--steps 0`` trains whole epochs,
                otherwise the training examples of an epoch / the measured examples/s (stated)
* ``eval``      exact max-over-interests top-50 of ``--eval-users`` test users over the whole
                catalogue (``mirec.eval.evaluate``, history excluded); time and peak RSS
* ``index``     ``mirec export`` + ``mirec index build`` (the index it chooses, with its recall@50
                against exact on a sample of users); time, size on disk
* ``serve``     in process, ``Recommender.recommend`` for ``--queries`` users: p50 / p99
* ``train-serve``, ``index-serve``, ``serve-serve``  with ``--serve-steps N``: ``index`` and
                ``serve`` on a model trained N steps (an approximate index finds the near items of
                trained vectors; a model of a few hundred steps leaves most rows at random);
                with ``--serve-index KIND`` those two stages build and open that index
                (``index-serve-hnsw``, ``serve-serve-hnsw``)
* ``ddp``       ``torchrun --nproc-per-node 2`` of the ``train`` stage (gloo, one thread each)

``--refresh`` measures instead the cost of keeping the preset's model fresh (issue "Fresh models
from live traffic"): the ``generate`` stage as above, then

* ``refresh-cut``      the timeline cut at the 8/9 quantile of the timestamps: the events up to
                       the cut (Parquet) become the base log, the later ones a SQLite event store
                       (mirec's schema, in time order: what ``mirec serve --store`` holds after
                       that traffic)
* ``refresh-prepare``  ``mirec data prepare parquet`` of the base log (as ``prepare``)
* ``refresh-base``     ``mirec train`` of ComiRec-SA on it with the ``train`` stage's settings and
                       ``--steps`` steps (not timed: the base's quality is not the point); 1% of
                       the users are test users (``split.train_frac=0.98``, ``valid_frac=0.01``),
                       as many as the ``eval`` stage's 10,000 at taobao, since a run's final test
                       covers all of them and the warm start inherits the split
* ``refresh``          the user's command, timed: ``mirec refresh --run BASE --events STORE --data
                       BASE_DATA --out DIR`` for one pass over the new events (``train.epochs=1``,
                       ``train.since`` the cut, validation on 1,000 sampled users, ``--refresh-set``
                       added); each step's seconds and peak RSS from ``DIR/refresh.json``, the
                       whole command's wall time and peak RSS

Each finished stage appends one JSON line to ``WORK/scale.jsonl`` and is skipped when the bench
runs again (delete the line, or the file, to measure it again), so a long run resumes after an
interruption. ``--markdown`` prints the table of what is recorded and exits.

Usage::

    python bench/scale.py --preset books --work runs/scale-books
    python bench/scale.py --preset taobao --work runs/scale-taobao --steps 300
    python bench/scale.py --preset taobao --work runs/scale-taobao --serve-steps 50000 --serve-index hnsw
    python bench/scale.py --preset books --work /tmp/s --set num_users=5000 --steps 20   # smoke
    python bench/scale.py --preset books --work runs/scale-books --markdown
    python bench/scale.py --preset taobao --work runs/scale-taobao --refresh
    python bench/scale.py --preset books --work /tmp/r --set num_users=20000 --steps 50 --refresh  # smoke

Run one benchmark at a time on the machine (two at once corrupt each other's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SMALL = ["num_categories=60", "items_per_category=200"]  # 12,000 items
SMALL_USERS = "num_users=50000"  # the step's cost does not depend on the users: a smaller log
TRAIN_SETS = ["train.loss=sampled", "train.optimizer=sparse", "train.epochs=1", "train.batch_size=256",
              "eval.max_users=1000"]
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its wall time and the last line it printed (stops the bench if it fails)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **CHILD_ENV, **(env or {})})
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return {"wall_s": wall, "stdout": last}


def stage(name: str, fn: str, *args: str) -> dict[str, Any]:
    """Run this file's function ``fn`` in a fresh interpreter that reports its own peak RSS;
    returns its JSON result plus ``wall_s`` and ``rss_gib``."""
    r = run([sys.executable, __file__, "--child", fn, *args])
    res = json.loads(r["stdout"])
    res["wall_s"] = r["wall_s"]
    print(f"  {name}: {r['wall_s']:.1f} s, peak RSS {res['rss_gib']:.2f} GiB", flush=True)
    return res


def child(fn: str, *args: str) -> None:
    """The child's side of :func:`stage`: one JSON line, the function's figures + peak RSS."""
    import resource

    res = dict(CHILDREN[fn](*args) or {})
    if int(os.environ.get("RANK", "0")) == 0:
        res["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(res), flush=True)


def cli_child(*argv: str) -> dict[str, Any]:
    """``mirec ARGV`` in process; what it printed is kept (``printed``)."""
    import contextlib
    import io

    from typer.main import get_command

    from mirec.cli import app

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        get_command(app).main(list(argv), prog_name="mirec", standalone_mode=False)
    return {"printed": " ".join(buf.getvalue().split())}


def train_child(data: str, out: str, steps: str, *sets: str) -> dict[str, Any]:
    """ComiRec-SA on ``data`` for ``steps`` steps (0: whole epochs), no final test."""
    from mirec.config import load
    from mirec.data.dataset import load_dataset
    from mirec.runs import RunConfig
    from mirec.train.loop import train

    more = [f"train.max_batches_per_epoch={steps}"] if int(steps) else []
    cfg = load(RunConfig, None, ["model=comirec-sa", "train.threads=1", *sets, *more])
    ds = load_dataset(data)
    r = train(cfg, ds, out, progress=False, run_test=False)
    row = r.history[-1]
    return {"examples_per_s": row["examples_per_s"], "items": ds.num_items,
            "events": int(len(ds.item)), "epoch_examples": int(r.split.num_examples)}


def eval_child(run_dir: str, data: str, users: str) -> dict[str, Any]:
    """Exact top-50 of a seeded sample of ``users`` test users over the whole catalogue."""
    import numpy as np

    from mirec.data.split import split_users
    from mirec.eval.evaluate import evaluate
    from mirec.models.base import VectorScorer
    from mirec.runs import load_run

    r = load_run(run_dir, data)
    ds, cfg = r.dataset, r.config
    test = split_users(ds, cfg.split).test
    pick = np.sort(np.random.default_rng(0).choice(len(test), size=min(int(users), len(test)),
                                                   replace=False))
    t = time.perf_counter()
    res = evaluate(VectorScorer(r.model, cfg.train.cosine), ds, test.select(pick),
                   cfg.split.max_len, cfg.eval)
    return {"eval_s": time.perf_counter() - t, "users": int(len(pick)),
            "recall@50": res.metrics.get("recall@50")}


def serve_child(bundle: str, queries: str, kind: str = "auto") -> dict[str, Any]:
    """In-process latency of one recommendation (top 50) for a seeded sample of known users."""
    import numpy as np

    from mirec.serve.recommender import Recommender

    rec = Recommender.open(bundle, index=kind)
    users = list(rec.bundle.user_histories)
    pick = np.random.default_rng(0).choice(len(users), size=min(int(queries) + 50, len(users)),
                                           replace=False)
    times = []
    for i, u in enumerate(pick):
        t = time.perf_counter()
        rec.recommend(users[u], n=50)
        if i >= 50:  # the first 50 warm up
            times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "queries": len(times), "index": rec.index.kind}


def cut_child(raw: str, base: str, store: str, quantile: str) -> dict[str, Any]:
    """The raw log ``raw`` (Parquet parts) cut at the ``quantile`` of its timestamps: the events
    at or before the cut into ``base/part-0.parquet``, the later ones, in time order, into the
    SQLite event store ``store`` (one transaction; a server writes one per POST /events)."""
    import sqlite3

    import polars as pl

    from mirec.serve.store import SCHEMA

    log = pl.scan_parquet(f"{raw}/*.parquet")
    cut = int(log.select(pl.col("timestamp").quantile(float(quantile), "lower")).collect().item())
    Path(base).mkdir(parents=True)
    log.filter(pl.col("timestamp") <= cut).sink_parquet(f"{base}/part-0.parquet")
    new = (log.filter(pl.col("timestamp") > cut).sort("timestamp", maintain_order=True)
           .select(pl.col("user").cast(pl.String), pl.col("item").cast(pl.String), "timestamp").collect())
    db = sqlite3.connect(store, isolation_level=None)
    db.execute("PRAGMA cache_size=-1048576")  # 1 GiB: the (user, ts) index's pages stay in memory
    db.executescript(SCHEMA)
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (user_id, item_id, ts) VALUES (?, ?, ?)", new.iter_rows())
    db.execute("COMMIT")
    db.close()
    base_events = log.filter(pl.col("timestamp") <= cut).select(pl.len()).collect().item()
    return {"cut": cut, "base_events": int(base_events), "new_events": new.height}


CHILDREN = {"cli": cli_child, "train": train_child, "eval": eval_child, "serve": serve_child,
            "cut": cut_child}


def dir_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


class Record:
    """``WORK/scale.jsonl``: one line per finished stage; a stage already there is skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["stage"]] = row

    def do(self, name: str, fn) -> dict[str, Any]:
        if name in self.rows:
            print(f"  {name}: recorded", flush=True)
            return self.rows[name]
        row = {"stage": name, **fn(), "load": os.getloadavg()[0]}
        self.rows[name] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def prepare_args(raw: Path, data: Path) -> list[str]:
    """``mirec data prepare parquet`` of a directory of the generator's Parquet parts."""
    return ["data", "prepare", "parquet", str(raw), "--out", str(data), "--user-col", "user",
            "--item-col", "item", "--time-col", "timestamp", "--category-col", "category"]


def cli(name: str, *args: str, keep: bool = False) -> dict[str, Any]:
    """The stage ``name``: ``mirec ARGS`` in a child (what it printed kept with ``keep``)."""
    res = stage(name, "cli", *args)
    return res if keep else {k: v for k, v in res.items() if k != "printed"}


def generate(a: argparse.Namespace, rec: Record, tag: str = "", synth_sets: list[str] | None = None) -> Path:
    """The stage ``generate{tag}``: the preset (with ``synth_sets``) as Parquet parts."""
    raw = a.work / f"raw{tag}"
    sets = sum((["--set", x] for x in (a.set if synth_sets is None else synth_sets)), [])
    rec.do(f"generate{tag}", lambda: cli(f"generate{tag}", "data", "synth", "--preset", a.preset, *sets,
                                         "--raw", "parts", "--out", str(raw)))
    return raw


def bench(a: argparse.Namespace) -> None:
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    rec = Record(w / "scale.jsonl")
    steps = str(a.steps)
    if a.refresh:
        refresh_bench(a, rec)
        return

    def log_and_train(tag: str, synth_sets: list[str]) -> None:
        """Generate, prepare and train on one log: the preset's (tag "") or the 12k-item one."""
        raw, data = generate(a, rec, tag, synth_sets), w / f"data{tag}"
        rec.do(f"prepare{tag}", lambda: {**cli(f"prepare{tag}", *prepare_args(raw, data)),
                                         "size_gib": dir_gib(data)})
        rec.do(f"train{tag}", lambda: stage(f"train{tag}", "train", str(data), str(w / f"run{tag}"),
                                            steps, *TRAIN_SETS))

    log_and_train("", a.set)
    users = [] if any(x.startswith("num_users=") for x in a.set) else [SMALL_USERS]
    log_and_train("-12k", a.set + SMALL + users)
    if a.eval_users:
        rec.do("eval", lambda: stage("eval", "eval", str(w / "run"), str(w / "data"),
                                     str(a.eval_users)))
    # the serving stages index a model trained for --serve-steps steps (default: the timed run's)
    run, bundle, tag = w / "run", w / "bundle", ""
    if a.serve_steps:
        run, bundle, tag = w / "run-serve", w / "bundle-serve", "-serve"
        rec.do("train-serve", lambda: {**stage("train-serve", "train", str(w / "data"), str(run),
                                               str(a.serve_steps), *TRAIN_SETS), "steps": a.serve_steps})
    if not (bundle / "manifest.json").exists():
        rec.do(f"export{tag}", lambda: cli("export", "export", str(run), "--out", str(bundle)))
    kind = a.serve_index
    tag += "" if kind == "auto" else f"-{kind}"
    rec.do(f"index{tag}", lambda: {**cli("index", "index", "build", str(bundle), "--index", kind, keep=True),
                                   "size_gib": dir_gib(bundle)})
    rec.do(f"serve{tag}", lambda: stage("serve", "serve", str(bundle), str(a.queries), kind))
    if a.ddp:
        rec.do("ddp", lambda: ddp(w, steps))
    table(a, rec)


REFRESH_QUANTILE = 8 / 9  # the last ninth of the timeline is the new traffic
BASE_SPLIT = ["split.train_frac=0.98", "split.valid_frac=0.01"]  # 1% test users (module docstring)
REFRESH_STEPS = ("append", "train", "export", "index")


def fresh_dir(path: Path) -> Path:
    """``path`` for a stage that was not recorded: what an interrupted run of it left (mirec's
    own output, in the bench's WORK) is removed, so that the stage is timed whole."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    return path


def refresh_bench(a: argparse.Namespace, rec: Record) -> None:
    """The ``--refresh`` stages (module docstring)."""
    raw, r = generate(a, rec), a.work / "refresh"
    r.mkdir(exist_ok=True)
    base_raw, store, data, base, out = r / "raw-base", r / "new.sqlite", r / "data", r / "base", r / "out"
    cut = rec.do("refresh-cut", lambda: stage("refresh-cut", "cut", str(raw), str(fresh_dir(base_raw)),
                                              str(fresh_dir(store)), str(REFRESH_QUANTILE)))["cut"]
    rec.do("refresh-prepare", lambda: {**cli("refresh-prepare", *prepare_args(base_raw, fresh_dir(data))),
                                       "size_gib": dir_gib(data)})
    sets = [*TRAIN_SETS, "train.threads=1", f"train.max_batches_per_epoch={a.steps}", *BASE_SPLIT]
    rec.do("refresh-base", lambda: cli("refresh-base", "train", "--model", "comirec-sa", "--data", str(data),
                                       "--out", str(fresh_dir(base)), *sum((["--set", x] for x in sets), [])))
    sets = ["train.epochs=1", "train.max_batches_per_epoch=0", f"train.since={cut}", "eval.max_users=1000",
            "train.threads=1", *a.refresh_set]
    rec.do("refresh", lambda: {**cli("refresh", "refresh", "--run", str(base), "--events", str(store),
                                     "--data", str(data), "--out", str(fresh_dir(out)),
                                     *sum((["--set", x] for x in sets), [])),
                               "settings": sets, **refresh_figures(out)})
    refresh_table(a, rec)


def refresh_figures(out: Path) -> dict[str, Any]:
    """What ``DIR/refresh.json`` and the new run record: each step's seconds and peak RSS so far,
    the events appended, the examples trained and their seconds, the test users, the index."""
    state = json.loads((out / "refresh.json").read_text())["steps"]
    epochs = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "run" / "results.json").read_text())
    index = state["index"]["result"]
    return {"steps": {s: {"seconds": state[s]["seconds"], "peak_rss_gib": state[s]["peak_rss_mib"] / 1024}
                      for s in REFRESH_STEPS},
            "appended": {k: state["append"]["result"][k] for k in ("events_added", "new_users", "new_items")},
            "examples": sum(e["examples"] for e in epochs),
            "train_s": sum(e["train_seconds"] for e in epochs),
            "test_users": results["per_seed"][0]["num_test_users"],
            "index": {k: index.get(k) for k in ("kind", "items", "recommend_recall@50", "nlist", "nprobe")}}


def refresh_table(a: argparse.Namespace, rec: Record) -> None:
    rows = rec.rows
    g, c, p, b, r = (rows.get(k, {}) for k in ("generate", "refresh-cut", "refresh-prepare", "refresh-base",
                                               "refresh"))
    print(f"\n### refresh, `{a.preset}` {' '.join(a.set)}\n")
    print("| stage | figure |\n|---|---|")
    if c:
        print(f"| the cut (8/9 of the timeline) | ts {c['cut']}: {c['base_events']:,} raw events before, "
              f"{c['new_events']:,} after (the event store) |")
    if g and c and p and b:
        print(f"| base, not timed | generate {g['wall_s']:.0f} s, cut {c['wall_s']:.0f} s, prepare "
              f"{p['wall_s']:.0f} s, train {b['wall_s']:.0f} s ({a.steps} steps and the test) |")
    if not r:
        return
    ap, st = r["appended"], r["steps"]
    what = {"append": f"{ap['events_added']:,} events added, {ap['new_users']:,} new users, "
                      f"{ap['new_items']:,} new items",
            "train": f"warm start, one pass: {r['examples']:,} examples in {r['train_s']:.0f} s of training "
                     f"({r['examples'] / max(r['train_s'], 1e-9):,.0f} ex/s); the rest: loading, "
                     f"validation, the final test of {r['test_users']:,} users",
            "export": "mirec export",
            "index": f"{r['index']['kind']} over {r['index']['items']:,} items, recall@50 per recommendation "
                     f"{r['index']['recommend_recall@50']:.3f}"}
    for s in REFRESH_STEPS:
        print(f"| {s} | {st[s]['seconds']:.0f} s, peak RSS so far {st[s]['peak_rss_gib']:.2f} GiB; "
              f"{what[s]} |")
    print(f"| **`mirec refresh`, total** | **{r['wall_s'] / 60:.1f} min** (steps "
          f"{sum(x['seconds'] for x in st.values()):.0f} s), **peak RSS {r['rss_gib']:.2f} GiB** "
          f"(target: <= 30 min, <= 8 GiB) |")


def ddp(w: Path, steps: str) -> dict[str, Any]:
    """The train stage under ``torchrun --nproc-per-node 2`` (gloo, one thread a process)."""
    out = w / "run-ddp"
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             "2", __file__, "--child", "train", str(w / "data"), str(out), steps, *TRAIN_SETS])
    return {**json.loads(r["stdout"]), "wall_s": r["wall_s"]}


def table(a: argparse.Namespace, rec: Record) -> None:
    rows = rec.rows
    g, p, t = rows.get("generate", {}), rows.get("prepare", {}), rows.get("train", {})
    t12 = rows.get("train-12k", {})
    print(f"\n### `{a.preset}` {' '.join(a.set)}\n")
    print("| stage | figure |\n|---|---|")
    if g and p:
        print(f"| generate + prepare | {g['wall_s']:.0f} s + {p['wall_s']:.0f} s = "
              f"{(g['wall_s'] + p['wall_s']) / 60:.1f} min; peak RSS {g['rss_gib']:.2f} / "
              f"{p['rss_gib']:.2f} GiB; prepared {p.get('size_gib', 0):.2f} GiB on disk |")
    if t:
        print(f"| data | {t['events']:,} events, {t['items']:,} items, {t['epoch_examples']:,} "
              "training examples an epoch |")
        print(f"| training (ComiRec-SA, sampled, batch 256, 1 thread) | {t['examples_per_s']:,.0f} "
              f"examples/s, peak RSS {t['rss_gib']:.2f} GiB |")
        if t12:
            print(f"| same at {t12['items']:,} items | {t12['examples_per_s']:,.0f} examples/s: "
                  f"ratio {t['examples_per_s'] / t12['examples_per_s']:.2f} |")
        print(f"| one epoch | {t['epoch_examples'] / t['examples_per_s'] / 60:.1f} min "
              f"(examples an epoch / examples/s over {a.steps} steps) |")
    if "eval" in rows:
        e = rows["eval"]
        print(f"| exact evaluation, {e['users']:,} test users | {e['eval_s']:.0f} s, peak RSS "
              f"{e['rss_gib']:.2f} GiB |")
    tags = [t[len("serve"):] for t in rows if t.startswith("serve")]  # "", "-serve", "-serve-hnsw"
    for tag in tags:
        model = f"the model trained {a.steps} steps" if not tag.startswith("-serve") else \
            f"a model trained {rows.get('train-serve', {}).get('steps', '?')} steps"
        if f"index{tag}" in rows:
            i = rows[f"index{tag}"]
            print(f"| index build, {model} | {i['wall_s']:.0f} s; {i.get('printed', '')} |")
        if f"serve{tag}" in rows:
            s = rows[f"serve{tag}"]
            print(f"| serving, in process ({s['index']}), {model} | p50 {s['p50_ms']:.2f} ms, p99 "
                  f"{s['p99_ms']:.2f} ms over {s['queries']} users |")
    if "ddp" in rows:
        d = rows["ddp"]
        print(f"| torchrun, 2 processes x 1 thread | {d['examples_per_s']:,.0f} examples/s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="books", help="taobao or books")
    p.add_argument("--work", type=Path, default=None, help="working directory (default runs/scale-PRESET)")
    p.add_argument("--set", action="append", default=[], help="synth override key=value (repeatable)")
    p.add_argument("--steps", type=int, default=300, help="training steps timed (0: whole epochs)")
    p.add_argument("--eval-users", type=int, default=10_000, help="test users evaluated (0: skip)")
    p.add_argument("--queries", type=int, default=1000, help="recommendations timed in process")
    p.add_argument("--serve-index", default="auto", help="the index the serving stages build and open "
                   "(mirec index build --index): auto, exact, hnsw or ivf")
    p.add_argument("--serve-steps", type=int, default=0,
                   help="train the served model this many steps (stage train-serve; default: index and "
                        "serve the timed run, whose few steps leave most item vectors random)")
    p.add_argument("--no-ddp", dest="ddp", action="store_false", help="skip the torchrun stage")
    p.add_argument("--refresh", action="store_true", help="measure a refresh from the last ninth of "
                   "the timeline instead (the refresh-* stages)")
    p.add_argument("--refresh-set", action="append", default=[],
                   help="--refresh: a --set of the timed `mirec refresh` key=value (repeatable)")
    p.add_argument("--markdown", action="store_true", help="print the recorded table and exit")
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(*sys.argv[2:])
    a = p.parse_args()
    a.work = a.work or Path("runs") / f"scale-{a.preset}"
    if a.markdown:
        (refresh_table if a.refresh else table)(a, Record(a.work / "scale.jsonl"))
        return
    bench(a)


if __name__ == "__main__":
    main()
