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

Each finished stage appends one JSON line to ``WORK/scale.jsonl`` and is skipped when the bench
runs again (delete the line, or the file, to measure it again), so a long run resumes after an
interruption. ``--markdown`` prints the table of what is recorded and exits.

Usage::

    python bench/scale.py --preset books --work runs/scale-books
    python bench/scale.py --preset taobao --work runs/scale-taobao --steps 300
    python bench/scale.py --preset taobao --work runs/scale-taobao --serve-steps 50000 --serve-index hnsw
    python bench/scale.py --preset books --work /tmp/s --set num_users=5000 --steps 20   # smoke
    python bench/scale.py --preset books --work runs/scale-books --markdown

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


CHILDREN = {"cli": cli_child, "train": train_child, "eval": eval_child, "serve": serve_child}


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


def bench(a: argparse.Namespace) -> None:
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    rec = Record(w / "scale.jsonl")
    steps = str(a.steps)

    def cli(name: str, *args: str, keep: bool = False) -> dict[str, Any]:
        res = stage(name, "cli", *args)
        return res if keep else {k: v for k, v in res.items() if k != "printed"}

    def log_and_train(tag: str, synth_sets: list[str]) -> None:
        """Generate, prepare and train on one log: the preset's (tag "") or the 12k-item one."""
        raw, data = w / f"raw{tag}", w / f"data{tag}"
        sets = sum((["--set", x] for x in synth_sets), [])
        rec.do(f"generate{tag}", lambda: cli(f"generate{tag}", "data", "synth", "--preset",
                                             a.preset, *sets, "--raw", "parts", "--out", str(raw)))
        rec.do(f"prepare{tag}", lambda: {**cli(
            f"prepare{tag}", "data", "prepare", "parquet", str(raw), "--out", str(data),
            "--user-col", "user", "--item-col", "item", "--time-col", "timestamp",
            "--category-col", "category"), "size_gib": dir_gib(data)})
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
    p.add_argument("--markdown", action="store_true", help="print the recorded table and exit")
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(*sys.argv[2:])
    a = p.parse_args()
    a.work = a.work or Path("runs") / f"scale-{a.preset}"
    if a.markdown:
        table(a, Record(a.work / "scale.jsonl"))
        return
    bench(a)


if __name__ == "__main__":
    main()
