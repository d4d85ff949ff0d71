"""Benchmark: fresh models from live traffic, replayed on a log's timeline.

The log of ``--data`` (a prepared data set) is cut after an initial training window (the first
``--initial`` share of its events, in time order) into ``--periods`` periods of equal event
count, with cut times ``c_0 < c_1 < ... < c_N`` (``c_N`` just after the last event). The
initial events become a data set of their own (``mirec.prepare`` of a CSV of them, no k-core:
the log is already prepared) and each period's events are appended to the previous data set
with ``mirec.append`` (a CSV with titles and categories), so ``D_p`` holds every event before
``c_p``, ids kept, as ``mirec data append`` makes it in production. Per seed:

* **(a) frozen**: ComiRec-SA (``--model``) trained once on ``D_0``;
* **(b) refreshed**: after every period p < N, the previous (b) model warm-started on ``D_p``
  (``mirec.fit(..., warm_start=...)``) with ``train.since`` just before ``c_{p-1}``: only the
  period's events are trained (``--replay F`` starts F of a period earlier, replaying old
  events) at mirec's warm-start lr (``train.warm_lr`` auto, a tenth of ``train.lr``), with
  ``--warm-epochs`` and ``--warm-lr`` (``train.warm_lr``) when given;
* **(c) retrained**: after every period p < N, a model trained from scratch on ``D_p``, the
  same settings and epoch budget (early stopping) as the initial one.

Period 1 is scored before any update, so there the three are one model (a check); the means,
and so the targets, are over periods 2..N, each scored by the models of the period before.

Training uses ``split.protocol=loo`` by default (every user's last event held out for the test
and the one before it for early stopping, everything else trained: "all events so far"); ``--set``
changes it and any other setting, for every run. Before period p, each of (a), (b), (c) is
scored on that period's events by mirec's own evaluator under the time protocol
(``split.protocol=time``, ``valid_from = c_{p-1}``, ``test_from = c_p``: the validation rows,
``mirec.data.split.split_users`` and ``mirec.eval.evaluate.evaluate``): every event a target
scored from its user's whole history before it, the history excluded from the ranking, only
items seen before ``c_{p-1}`` ranked, so a new item is a miss (``new_item_share``). A model is
scored on the last data set, its item rows mapped by raw id as a warm start maps them
(``mirec.train.warm.warm_retriever``: known items exactly, an item the model never saw, which
can only be in a history, the cold-start vector serving gives it).

The wall time of each update is that of its ``mirec.fit`` call (training, early-stopping
validation and the run's own test; the append, shared by both, is not counted). Unless
``--no-serve``, the first seed's initial model is exported and served by a real ``mirec serve``
(a subprocess on loopback, ``MIREC_TOKEN``), and after every period the (b) model is exported
and loaded with ``POST /admin/reload`` while ``--clients`` threads send ``POST /recommend`` for
``--serve-seconds`` around it: requests, non-200 answers and connection errors are counted
(target 0 failed).

Targets from the issue (reported, not asserted): (b) >= 0.98x (c) on mean Recall@50 over the
periods at <= 0.25x its wall time; on a drifting log (b) >= 1.10x (a); 0 failed requests.

Usage::

    mirec data prepare movielens ../shared/data/ml-1m-half --out data/ml1mh
    python bench/freshness.py --data data/ml1mh --periods 4 --seeds 1 --epochs 10 --markdown
    mirec data synth --preset drift --set num_users=6000 --out data/drift6k
    python bench/freshness.py --data data/drift6k --periods 4 --seeds 1,2,3 --epochs 10 \
        --out runs/freshness/drift6k.json                  # docs/benchmarks.md, "Freshness"
    python bench/freshness.py --data /tmp/x --periods 2 --epochs 2 --markdown   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from machine import machine_line  # noqa: E402  (bench/machine.py, beside this script)

N = 50  # Recall@N, NDCG@N
ARMS = ("frozen", "refreshed", "retrained")
CSV_COLS = {"user_col": "user", "item_col": "item", "time_col": "ts", "category_col": "category",
            "title_col": "title"}


# ---- the timeline ----------------------------------------------------------------------------


def cut_times(ts: np.ndarray, initial: float, periods: int) -> list[int]:
    """``[c_0, ..., c_N]``: ``c_0`` the time after the first ``initial`` share of the events,
    then ``periods`` periods of equal event count (the ts of the event at each cut index, so
    equal timestamps stay on one side); ``c_N`` = last ts + 1. Refuses a cut with no event."""
    order = np.sort(ts)
    E = len(order)
    fracs = initial + (1 - initial) * np.arange(periods) / periods
    cuts = [int(order[int(f * E)]) for f in fracs] + [int(order[-1]) + 1]
    if any(a >= b for a, b in zip(cuts, cuts[1:])) or cuts[0] <= int(order[0]):
        raise SystemExit(f"--periods {periods} / --initial {initial}: some period has no event "
                         f"(cut times {cuts})")
    return cuts


def write_events(ds: Any, keep: np.ndarray, path: Path) -> int:
    """The events ``keep`` (E,) bool of ``ds`` as a CSV of raw ids with each item's title and
    categories (``|``-joined): what the csv source reads back. Returns the number written."""
    import polars as pl

    items = ds.items.with_columns(pl.col("categories").list.join("|").alias("category"))
    users = ds.users["raw_id"].cast(pl.Utf8).to_numpy()
    item_raw = items["raw_id"].cast(pl.Utf8).to_numpy()
    i = ds.item[keep] - 1
    frame = pl.DataFrame({"user": users[ds.user[keep]], "item": item_raw[i], "ts": ds.ts[keep],
                          "category": items["category"].to_numpy()[i],
                          "title": items["title"].fill_null("").to_numpy()[i]})
    frame.sort("ts", maintain_order=True).write_csv(path)
    return frame.height


def build_chain(ds: Any, cuts: list[int], root: Path) -> list[Path]:
    """``[D_0, ..., D_N]``: the initial events prepared, then each period appended."""
    import mirec

    paths = []
    for p in range(len(cuts)):
        keep = ds.ts < cuts[0] if p == 0 else (ds.ts >= cuts[p - 1]) & (ds.ts < cuts[p])
        csv = root / f"events-{p}.csv"
        write_events(ds, keep, csv)
        out = root / f"data-{p}"
        if p == 0:
            mirec.prepare("csv", csv, out=out, k_core=1, **CSV_COLS)
        else:
            mirec.append(paths[-1], csv, out, source="csv", **CSV_COLS)
        paths.append(out)
    return paths


# ---- training and scoring --------------------------------------------------------------------


def fit(data: Path, out: Path, seed: int, sets: dict[str, Any], warm: Path | None = None,
        model: str | None = None) -> tuple[float, int]:
    """``mirec.fit`` of one seed; returns its wall time in seconds and its best epoch (0-based)."""
    return fit_run(data, out, seed, sets, warm, model)[:2]


def fit_run(data: Path, out: Path, seed: int, sets: dict[str, Any], warm: Path | None = None,
            model: str | None = None) -> tuple[float, int, float]:
    """:func:`fit`, also returning the best epoch's validation Recall@50."""
    import mirec

    t = time.perf_counter()
    run = mirec.fit(model=model, data=str(data), out=out, seeds=[seed], progress=False, settings=sets,
                    warm_start=warm)
    s = run.seeds[0]
    return time.perf_counter() - t, s.best_epoch, float(s.valid.get(f"recall@{N}", float("nan")))


def choose_warm_lr(grid: list[float], data: Path, out: Path, seed: int, sets: dict[str, Any],
                   warm: Path) -> tuple[float, int, float, dict[float, float]]:
    """Warm-start once per learning rate of ``grid`` and keep the best on validation Recall@50.

    The validation users are the warm start's own (each user's second-to-last event of the
    data set so far), never a period still to be scored. Returns the wall time of every fit
    together (the update's cost), the kept run's best epoch, its lr and every lr's validation
    figure; the kept run is left at ``out``.
    """
    total, found = 0.0, {}
    best: tuple[float, int, Path] | None = None
    for lr in grid:
        cand = out.with_name(f"{out.name}-lr{lr:g}")
        sec, epoch, valid = fit_run(data, cand, seed, {**sets, "train.warm_lr": lr}, warm=warm)
        total += sec
        found[lr] = valid
        if best is None or valid > found[best[0]]:
            best = (lr, epoch, cand)
    assert best is not None
    best[2].rename(out)
    return total, best[1], best[0], found


def scorer_on(run: Path, ds: Any) -> tuple[Any, int]:
    """The best model of ``run`` over the items of ``ds`` (a later data set of the chain): its
    rows mapped by raw id as a warm start maps them; ``(VectorScorer, max_len)``."""
    from mirec.models.base import VectorScorer
    from mirec.runs import RunConfig, build_model
    from mirec.train import warm

    parent = warm.load_parent(run, "retrieval")
    cfg = warm.warm_config(RunConfig, parent, None, [])
    model = build_model(cfg, ds.num_items)
    warm.warm_retriever(model, cfg, parent, ds)
    return VectorScorer(model, cfg.train.cosine), cfg.split.max_len


def score_period(scorer: Any, max_len: int, ds: Any, start: int, end: int) -> dict[str, float]:
    """Recall@N, NDCG@N and new_item_share of the events in ``[start, end)`` under the time
    protocol (the split's validation rows), by mirec's evaluator."""
    from mirec.data.split import SplitConfig, split_users
    from mirec.eval.evaluate import EvalConfig, evaluate

    split = split_users(ds, SplitConfig(protocol="time", valid_from=start, test_from=end, max_len=max_len))
    r = evaluate(scorer, ds, split.valid, max_len, EvalConfig(ns=(N,)))
    return {"recall": r.metrics[f"recall@{N}"], "ndcg": r.metrics[f"ndcg@{N}"],
            "new_item_share": r.metrics["new_item_share"], "rows": r.num_users}


# ---- serving across reloads ------------------------------------------------------------------


class Server:
    """``mirec serve BUNDLE`` in a child process on a free loopback port, with a token."""

    def __init__(self, bundle: Path, work: Path) -> None:
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{port}"
        self.log = work / "serve.log"
        env = {**os.environ, "MIREC_TOKEN": self.token, "PYTHONPATH": str(ROOT / "src")}
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mirec.cli", "serve", str(bundle), "--port", str(port),
                 "--store", str(work / "events.sqlite")], stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"mirec serve did not start:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)

    def reload_under_load(self, bundle: Path, users: list[str], clients: int, seconds: float) -> dict:
        """``POST /admin/reload`` of ``bundle`` half-way through ``seconds`` of ``POST /recommend``
        from ``clients`` threads; the counts, and the reload's status and time."""
        import httpx

        stop = threading.Event()
        counts = {"requests": 0, "non_200": 0, "connection_errors": 0}
        lock = threading.Lock()

        def loop(k: int) -> None:
            rng = np.random.default_rng(k)
            headers = {"Authorization": f"Bearer {self.token}"}
            with httpx.Client(base_url=self.url, timeout=30, headers=headers) as c:
                while not stop.is_set():
                    user = users[int(rng.integers(len(users)))]
                    try:
                        ok = c.post("/recommend", json={"user_id": user, "n": 20}).status_code == 200
                        bad = ("non_200", not ok)
                    except httpx.TransportError:
                        bad = ("connection_errors", True)
                    with lock:
                        counts["requests"] += 1
                        counts[bad[0]] += int(bad[1])

        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        time.sleep(seconds / 2)
        t0 = time.perf_counter()
        r = httpx.post(f"{self.url}/admin/reload", json={"bundle": str(bundle)}, timeout=300,
                       headers={"Authorization": f"Bearer {self.token}"})
        reload_s = time.perf_counter() - t0
        time.sleep(seconds / 2)
        stop.set()
        for t in threads:
            t.join()
        return {**counts, "reload_status": r.status_code, "reload_seconds": reload_s,
                "served": r.json().get("bundle") if r.status_code == 200 else r.text[:200]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ---- one seed --------------------------------------------------------------------------------


def run_seed(a: argparse.Namespace, seed: int, chain: list[Path], cuts: list[int], final: Any,
             work: Path, serve: bool) -> dict:
    """Every period of one seed: the three arms scored, (b) and (c) updated and timed."""
    import mirec
    from mirec.data.dataset import load_dataset

    base = {"split.protocol": "loo", "train.threads": a.threads}
    if a.epochs:
        base["train.epochs"] = a.epochs
    base.update(dict(s.split("=", 1) for s in a.set))
    warm_sets = dict(base)
    if a.warm_epochs:
        warm_sets["train.epochs"] = a.warm_epochs
    if a.warm_lr:
        warm_sets["train.warm_lr"] = a.warm_lr
    d = work / f"seed-{seed}"
    initial_s, initial_epoch = fit(chain[0], d / "initial", seed, base, model=a.model)
    print(f"seed {seed}: initial model trained on {chain[0].name} in {initial_s:.0f} s (best epoch "
          f"{initial_epoch})", flush=True)
    frozen = scorer_on(d / "initial", final)
    runs = {"refreshed": d / "initial", "retrained": d / "initial"}
    server, users = None, []
    if serve:
        bundle = mirec.export(d / "initial", out=work / "bundle-0")
        server = Server(bundle, work)
        users = load_dataset(chain[0]).users["raw_id"].cast(str).to_list()
    rows = []
    try:
        for p in range(1, len(cuts)):
            start, end = cuts[p - 1], cuts[p]
            row: dict[str, Any] = {"period": p, "start": start, "end": end}
            if p > 1:  # period p - 1's events are in D_{p-1}: update (b) and (c) on them
                span = cuts[p - 1] - cuts[p - 2]
                since = int(cuts[p - 2] - a.replay * span) - 1  # targets ts > since: the period (+ replay)
                out_b, out_c = d / f"refreshed-{p - 1}", d / f"retrained-{p - 1}"
                sets = {**warm_sets, "train.since": since}
                if a.warm_lr_grid and p == 2:  # the first update chooses the warm-start lr on validation
                    grid = [float(x) for x in a.warm_lr_grid.split(",")]
                    sec, epoch, lr, row["warm_lr_valid"] = choose_warm_lr(
                        grid, chain[p - 1], out_b, seed, sets, runs["refreshed"])
                    row["refresh_seconds"], row["refresh_best_epoch"] = sec, epoch
                    warm_sets["train.warm_lr"] = lr
                    print(f"  warm-start lr chosen on validation: {lr:g} ({row['warm_lr_valid']})",
                          flush=True)
                else:
                    row["refresh_seconds"], row["refresh_best_epoch"] = fit(chain[p - 1], out_b, seed, sets,
                                                                            warm=runs["refreshed"])
                row["retrain_seconds"], row["retrain_best_epoch"] = fit(chain[p - 1], out_c, seed, base,
                                                                        model=a.model)
                runs = {"refreshed": out_b, "retrained": out_c}
                print(f"  after period {p - 1}: warm start {row['refresh_seconds']:.0f} s (best epoch "
                      f"{row['refresh_best_epoch']}), retrain {row['retrain_seconds']:.0f} s (best epoch "
                      f"{row['retrain_best_epoch']})", flush=True)
                if server is not None:
                    bundle = mirec.export(out_b, out=work / f"bundle-{p - 1}")
                    users = load_dataset(chain[p - 1]).users["raw_id"].cast(str).to_list()
                    row["serve"] = server.reload_under_load(bundle, users, a.clients, a.serve_seconds)
                    print(f"  reload: {row['serve']}", flush=True)
            for arm in ARMS:
                scorer = frozen if arm == "frozen" else scorer_on(runs[arm], final)
                row[arm] = score_period(*scorer, final, start, end)
            print(f"  period {p}: " + ", ".join(f"{arm} R@{N} {row[arm]['recall']:.4f}" for arm in ARMS)
                  + f" ({row['frozen']['rows']} events, new items {row['frozen']['new_item_share']:.1%})",
                  flush=True)
            rows.append(row)
    finally:
        if server is not None:
            server.stop()
    return {"seed": seed, "initial_seconds": initial_s, "initial_best_epoch": initial_epoch, "periods": rows}


# ---- report ----------------------------------------------------------------------------------


def summary(seeds: list[dict]) -> dict:
    """Per period and over periods, the mean over seeds; the ratios the targets name."""
    P = len(seeds[0]["periods"])
    per = []
    for j in range(P):
        rs = [s["periods"][j] for s in seeds]
        row = {"period": rs[0]["period"], "events": rs[0]["frozen"]["rows"],
               "new_item_share": rs[0]["frozen"]["new_item_share"]}
        for arm in ARMS:
            for m in ("recall", "ndcg"):
                row[f"{arm}_{m}"] = float(np.mean([r[arm][m] for r in rs]))
        for k in ("refresh_seconds", "retrain_seconds", "refresh_best_epoch", "retrain_best_epoch"):
            if k in rs[0]:
                row[k] = float(np.mean([r[k] for r in rs]))
        per.append(row)
    updated = per[1:] or per  # period 1 is scored before any update: the three arms are one model
    mean = {k: float(np.mean([r[k] for r in updated])) for k in updated[0] if k != "period"}
    refresh = sum(r.get("refresh_seconds", 0) for r in per)
    retrain = sum(r.get("retrain_seconds", 0) for r in per)
    serve = [r["serve"] for s in seeds for r in s["periods"] if "serve" in r]
    return {
        "per_period": per, "mean": mean,
        "refreshed_over_retrained_recall": mean["refreshed_recall"] / mean["retrained_recall"],
        "refreshed_over_frozen_recall": mean["refreshed_recall"] / mean["frozen_recall"],
        "refresh_over_retrain_time": refresh / retrain if retrain else float("nan"),
        "serve": {k: sum(s[k] for s in serve) for k in ("requests", "non_200", "connection_errors")}
        | {"reloads": len(serve), "reloads_ok": sum(s["reload_status"] == 200 for s in serve)},
    }


def table_rows(s: dict) -> list[list[str]]:
    rows = []
    last = s["per_period"][-1]["period"]
    for r in [*s["per_period"], {**s["mean"], "period": f"mean 2-{last}" if last > 1 else "mean"}]:
        cells = [str(r["period"]), f"{r['events']:.0f}", f"{r['new_item_share']:.1%}"]
        cells += [f"{r[f'{arm}_recall']:.4f}" for arm in ARMS]
        cells += [f"{r[f'{arm}_ndcg']:.4f}" for arm in ARMS]
        cells += [f"{r[k]:.1f} s" if k in r else "-" for k in ("refresh_seconds", "retrain_seconds")]
        rows.append(cells)
    return rows


HEADERS = ["period", "events", "new items", f"R@{N} frozen", f"R@{N} refreshed", f"R@{N} retrained",
           f"NDCG@{N} frozen", f"NDCG@{N} refreshed", f"NDCG@{N} retrained", "warm start", "retrain"]


def verdicts(s: dict) -> list[str]:
    sv = s["serve"]
    failed = sv["non_200"] + sv["connection_errors"]
    return [
        f"refreshed / retrained, mean Recall@{N}: {s['refreshed_over_retrained_recall']:.3f}x "
        f"(target >= 0.98x: {'met' if s['refreshed_over_retrained_recall'] >= 0.98 else 'not met'})",
        f"warm start / retrain wall time: {s['refresh_over_retrain_time']:.3f}x "
        f"(target <= 0.25x: {'met' if s['refresh_over_retrain_time'] <= 0.25 else 'not met'})",
        f"refreshed / frozen, mean Recall@{N}: {s['refreshed_over_frozen_recall']:.3f}x "
        f"(target on a drifting log >= 1.10x: "
        f"{'met' if s['refreshed_over_frozen_recall'] >= 1.10 else 'not met'})",
        f"serving: {sv['requests']} requests over {sv['reloads']} reloads ({sv['reloads_ok']} answered 200), "
        f"{sv['non_200']} non-200, {sv['connection_errors']} connection errors "
        f"(target 0 failed: {'met' if failed == 0 and sv['reloads_ok'] == sv['reloads'] else 'not met'})"
        if sv["reloads"] else "serving: not measured (--no-serve)",
    ]


def report(a: argparse.Namespace, s: dict, seeds: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{a.data}: Recall@{N} / NDCG@{N} on each period's events before it is trained on, "
                    f"mean over seeds {','.join(map(str, seeds))}")
    for h in HEADERS:
        t.add_column(h)
    for r in table_rows(s):
        t.add_row(*r)
    console = Console(width=160)
    console.print(t)
    for line in verdicts(s):
        console.print(line)
    if a.markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for r in table_rows(s):
            print("| " + " | ".join(r) + " |")
        print()
        for line in verdicts(s):
            print(f"- {line}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared data set (with timestamps)")
    ap.add_argument("--periods", type=int, default=4)
    ap.add_argument("--initial", type=float, default=0.5, help="share of the events before the first period")
    ap.add_argument("--model", default="comirec-sa")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (train.threads)")
    ap.add_argument("--epochs", type=int, default=0, help="train.epochs of every run (0: the default)")
    ap.add_argument("--warm-epochs", type=int, default=0, help="train.epochs of a warm start (0: --epochs)")
    ap.add_argument("--warm-lr", type=float, default=0.0,
                    help="train.warm_lr of a warm start (0: mirec's default, a tenth of train.lr)")
    ap.add_argument("--warm-lr-grid", default="",
                    help="comma-separated lrs: the first warm start of each seed tries each and keeps the "
                         "best on its validation users; later warm starts use it (its cost counts)")
    ap.add_argument("--replay", type=float, default=0.0,
                    help="a warm start also trains this share of a period before the new events")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (repeatable)")
    ap.add_argument("--no-serve", action="store_true", help="skip mirec serve and the reloads")
    ap.add_argument("--clients", type=int, default=2, help="request threads during a reload")
    ap.add_argument("--serve-seconds", type=float, default=4.0, help="request loop around each reload")
    ap.add_argument("--work", default=None, help="where data sets and runs go (default: a temporary dir)")
    ap.add_argument("--out", default=None, help="write every figure as JSON here")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    a = ap.parse_args(argv)
    if a.periods < 1 or not 0 < a.initial < 1 or a.replay < 0:
        ap.error("need --periods >= 1, 0 < --initial < 1, --replay >= 0")

    import torch

    from mirec.data.dataset import load_dataset

    torch.set_num_threads(a.threads)
    print(machine_line())
    seeds = [int(s) for s in a.seeds.split(",")]
    ds = load_dataset(a.data)
    cuts = cut_times(ds.ts, a.initial, a.periods)
    t0 = time.perf_counter()
    if a.work:
        Path(a.work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.work, prefix="freshness-") as tmp:
        work = Path(tmp)
        chain = build_chain(ds, cuts, work)
        final = load_dataset(chain[-1])
        print(f"{a.data}: {len(ds.ts)} events, initial {int((ds.ts < cuts[0]).sum())} before ts {cuts[0]}, "
              f"{a.periods} periods; data sets built in {time.perf_counter() - t0:.0f} s", flush=True)
        done = [run_seed(a, seed, chain, cuts, final, work, serve=not a.no_serve and k == 0)
                for k, seed in enumerate(seeds)]
    s = summary(done)
    report(a, s, seeds)
    if a.out:
        doc = {"args": vars(a), "machine": machine_line(), "cuts": cuts, "seeds": done, "summary": s,
               "wall_seconds": time.perf_counter() - t0}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
