"""The two-stage pipeline, end to end: retrieval alone against retrieval + a ranker (``--model``:
din, dien or mimn) trained on the retriever's own candidates (``mirec train --task ctr
--candidates``), on the protocol's test users, per data set and seed.

Per (data set, seed) the stages run in order, one training at a time, one thread:

    retrieval  ComiRec-SA, split seed s                      (skipped with --retrieval NAME=DIR)
    ranker     --model on that run's candidates (cand.* settings), into OUT/NAME/MODEL
    pipeline   mirec evaluate --run ... --ranker ...: Recall/NDCG/... of both stages
    ablation   the pipeline again with each candidate feature replaced by its training mean
               (no retraining: what the trained ranker leans on)
    latency    ranking 200 retrieved candidates for one user, in process, one thread

Every finished (data set, seed, stage) appends one JSON line to ``--results``; a rerun skips
what is recorded there, so an interrupted run resumes. Then the table (mean ± std over seeds).

    python bench/pipeline.py --data ml-100k=data/ml-100k --data synth=data/synth --seeds 1,2,3
    python bench/pipeline.py --data ml-100k=data/ml-100k --retrieval ml-100k=runs/ret-ml --model dien

``--latency RETRIEVAL_SEED_RUN=RANKER_SEED_RUN`` (repeatable) only times ranking with saved runs
(no training) and prints p50 / p99.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
N = 20


MODELS = ("din", "dien", "mimn")


def recorded(path: Path) -> dict[tuple[str, int, str, str], dict]:
    """(data, seed, stage, ranker) -> the row; rows without a ranker were DIN's."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["data"], r["seed"], r["stage"], r.get("model", "din")): r for r in rows}


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def pipeline_metrics(ret: Path, rank: Path, ablate: int | None = None) -> dict:
    """Both stages' test metrics; ``ablate`` replaces that candidate feature by its mean."""
    from mirec.data.split import split_users
    from mirec.eval.evaluate import targets_csr
    from mirec.eval.metrics import topn_metrics
    from mirec.eval.pipeline import served_topn
    from mirec.serve.bundle import bundle_from_run
    from mirec.serve.index import IndexConfig, ItemIndex
    from mirec.serve.pipeline import RankStage
    from mirec.serve.recommender import Recommender

    bundle, ds = bundle_from_run(ret)
    stage = RankStage.from_run(rank, bundle)
    if ablate is not None:
        dense, mean = stage.dense, stage.model.dense_mean.numpy()

        def without(*args, dense=dense):  # the feature at its training mean
            x = dense(*args)
            x[:, ablate] = mean[ablate]
            return x

        stage.dense = without
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")), ranker=stage)
    test = split_users(ds, bundle.config.split).test
    indptr, targets = targets_csr(ds, test)
    cat_indptr, cat_ids, _ = ds.category_index()
    out = {}
    for name, rank_on in (("retrieval", False), ("pipeline", True)):
        if ablate is not None and not rank_on:
            continue
        topn = served_topn(rec, ds, test, 50, rank=rank_on)
        out[name] = topn_metrics(topn, indptr, targets, cat_indptr, cat_ids, ds.num_items - 1, (20, 50))
    return out


def latency(ret: Path, rank: Path, users: int = 200) -> dict:
    """p50/p99 ms of ranking the first 200 retrieved candidates of test users (3 runs each), in
    process, on the thread count set (one, in :func:`main`): wall time, and the thread's CPU
    time, which on a busy machine is closer to what a quiet one's wall time would be."""
    from mirec.data.split import split_users
    from mirec.serve.bundle import bundle_from_run
    from mirec.serve.index import IndexConfig, ItemIndex
    from mirec.serve.pipeline import RankStage
    from mirec.serve.recommender import Recommender

    bundle, ds = bundle_from_run(ret)
    stage = RankStage.from_run(rank, bundle)
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")), ranker=stage)
    test = split_users(ds, bundle.config.split).test
    raw = [str(x) for x in ds.users["raw_id"].to_list()]
    times, cpu = [], []
    for j in range(min(users, len(test))):
        hist = ds.item[test.hist_start[j]:test.cut[j]].tolist()
        V, live, _, _ = rec.interests(hist)
        cand, f, k = rec.retrieve(V, live, hist, rec.cfg.candidates_per_interest)
        top = np.argsort(-f, kind="stable")[:200]
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.thread_time()
            stage.score(raw[test.users[j]], hist, cand[top], f[top], k[top], len(V))
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    return {"rank200_p50_ms": float(np.percentile(times, 50) * 1e3),
            "rank200_p99_ms": float(np.percentile(times, 99) * 1e3), "candidates": 200, "calls": len(times),
            "rank200_cpu_p50_ms": float(np.percentile(cpu, 50) * 1e3),
            "rank200_cpu_p99_ms": float(np.percentile(cpu, 99) * 1e3)}


def run_data(a: argparse.Namespace, name: str, path: str, seeds: list[int], console: Console) -> None:
    base = Path(a.out) / name
    ret = Path(a.retrieval[name]) if name in a.retrieval else base / "retrieval"
    for seed in seeds:
        run_seed(a, name, path, ret, base / a.model, seed, console)


def run_seed(a: argparse.Namespace, name: str, path: str, ret: Path, rank: Path, seed: int,
             console: Console) -> None:
    import mirec
    from mirec.data.cand_features import NAMES

    done = recorded(Path(a.results))
    r, k = ret / f"seed-{seed}", rank / f"seed-{seed}"

    def stage(what: str, fn) -> None:
        if (name, seed, what, a.model) in done or (what == "retrieval" and (name, seed, what, "din") in done):
            return
        t0 = time.perf_counter()
        row = fn()
        append(Path(a.results), {"data": name, "seed": seed, "stage": what, "model": a.model, **row,
                                 "seconds": round(time.perf_counter() - t0, 1)})
        console.print(f"{name} seed {seed} {what}: done in {time.perf_counter() - t0:.0f} s")

    def settings(pairs: list[str]) -> dict:
        return {"train.threads": 1, **dict(s.split("=", 1) for s in pairs)}

    if name not in a.retrieval:
        stage("retrieval", lambda: {"test": mirec.fit(model="comirec-sa", data=path, out=r, seeds=[seed],
                                                      progress=False, **settings(a.retrieval_set)).metrics})
    stage("ranker", lambda: {"valid": mirec.fit(model=a.model, data=path, out=k, seeds=[seed], progress=False,
                                                candidates=ret, **settings(a.set)).to_json()["valid"]})
    stage("pipeline", lambda: pipeline_metrics(r, k))
    if a.ablate:
        stage("ablation", lambda: {"pipeline_without": {f: pipeline_metrics(r, k, j)["pipeline"]
                                                        for j, f in enumerate(NAMES)}})
    stage("latency", lambda: latency(r, k))


def cell(xs: list[float]) -> str:
    return f"{np.mean(xs):.4f} ± {np.std(xs):.4f}"


def per_model(rows: dict, name: str, seeds: list[int]) -> list[tuple[str, list[dict], list[dict]]]:
    """(ranker, its pipeline rows, its latency rows) for each ranker measured on data set ``name``."""
    out = []
    for m in MODELS:
        got = [rows[(name, s, "pipeline", m)] for s in seeds if (name, s, "pipeline", m) in rows]
        lat = [rows[(name, s, "latency", m)] for s in seeds if (name, s, "latency", m) in rows]
        if got:
            out.append((m, got, lat))
    return out


def table_rows(rows: dict, name: str, seeds: list[int]) -> list[list[str]]:
    """Retrieval alone (every seed any ranker was measured on), then each ranker: data, stage,
    Recall, NDCG, HitRate, NDCG ratio, latency."""
    models = per_model(rows, name, seeds)
    ret = {g["seed"]: g for _, got, _ in models for g in got}  # a seed's retrieval, from any ranker
    out = []
    for m, got, lat in [("", list(ret.values()), [])] + models:
        st = "pipeline" if m else "retrieval"
        col = [cell([g[st][f"{k}@{N}"] for g in got]) for k in ("recall", "ndcg", "hit_rate")]
        if not m:
            out.append([f"{name} ({len(got)} seeds)", "retrieval alone", *col, "-", "-"])
            continue
        ratio = np.mean([g["pipeline"][f"ndcg@{N}"] / g["retrieval"][f"ndcg@{N}"] for g in got])
        ms = ("-" if not lat else f"{np.mean([x['rank200_p50_ms'] for x in lat]):.1f} / "
              f"{np.mean([x['rank200_p99_ms'] for x in lat]):.1f} ms")
        out.append([f"{name} ({len(got)} seeds)", f"+ {m.upper()} on candidates", *col, f"{ratio:.3f}", ms])
    return out if models else []


def ablations(rows: dict, name: str, seeds: list[int]) -> list[tuple[str, list[int], float, list]]:
    """(ranker, seeds, pipeline NDCG, [(feature, NDCG without it)]) per ranker with an ablation."""
    out = []
    for m in MODELS:
        done = [s for s in seeds if (name, s, "ablation", m) in rows]
        if not done:
            continue
        ref = float(np.mean([rows[(name, s, "pipeline", m)]["pipeline"][f"ndcg@{N}"] for s in done]))
        feats = rows[(name, done[0], "ablation", m)]["pipeline_without"]
        out.append((m, done, ref, [(f, float(np.mean([rows[(name, s, "ablation", m)]["pipeline_without"][f]
                                                      [f"ndcg@{N}"] for s in done]))) for f in feats]))
    return out


def report(a: argparse.Namespace, names: list[str], seeds: list[int], console: Console) -> None:
    rows = recorded(Path(a.results))
    t = Table(title=f"test users, N = {N}, lambda 0, mean ± std over seeds {a.seeds}")
    for h in ("data", "stage", f"Recall@{N}", f"NDCG@{N}", f"HitRate@{N}", "NDCG ratio",
              "rank 200 p50 / p99"):
        t.add_column(h)
    for name in names:
        for r in table_rows(rows, name, seeds):
            t.add_row(*r)
    console.print(t)
    for name in names:
        for m, done, ref, feats in ablations(rows, name, seeds):
            t = Table(title=f"{name}, {m}: pipeline NDCG@{N} with one feature at its training mean "
                            f"({len(done)} seeds)")
            for h in ("feature", f"NDCG@{N}", "change"):
                t.add_column(h)
            t.add_row("(none)", f"{ref:.4f}", "")
            for f, v in feats:
                t.add_row(f, f"{v:.4f}", f"{(v - ref) / ref:+.1%}")
            console.print(t)


def markdown(a: argparse.Namespace, names: list[str], seeds: list[int]) -> None:
    """The tables of docs/benchmarks.md, as Markdown."""
    rows = recorded(Path(a.results))
    print(f"| data | pipeline | Recall@{N} | NDCG@{N} | HitRate@{N} | NDCG@{N} ratio | rank 200 p50 / p99 |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        for r in table_rows(rows, name, seeds):
            print(f"| {' | '.join(r)} |")
    for name in names:
        for m, done, ref, feats in ablations(rows, name, seeds):
            print(f"\n{name}, {m}, seeds {done}: NDCG@{N} {ref:.4f}")
            for f, v in feats:
                print(f"| `{f}` | {v:.4f} | {(v - ref) / ref:+.1%} |")


def latency_only(pairs: list[str], console: Console) -> None:
    """``--latency RET=RANK``: time ranking with saved runs, no training."""
    for pair in pairs:
        ret, rank = pair.split("=", 1)
        r = latency(Path(ret), Path(rank))
        console.print(f"{rank}: rank 200 p50 {r['rank200_p50_ms']:.2f} ms, p99 {r['rank200_p99_ms']:.2f} ms; "
                      f"thread CPU p50 {r['rank200_cpu_p50_ms']:.2f} ms, p99 {r['rank200_cpu_p99_ms']:.2f} ms"
                      f" (one thread, {r['calls']} calls)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=[], help="NAME=DIR of a prepared data set")
    ap.add_argument("--retrieval", action="append", default=[],
                    help="NAME=DIR: a finished multi-seed retrieval run to use for data set NAME")
    ap.add_argument("--retrieval-set", action="append", default=[], help="retrieval setting, key=value")
    ap.add_argument("--set", action="append", default=[], help="ranker setting, key=value")
    ap.add_argument("--model", default="din", choices=MODELS, help="the ranker trained on the candidates")
    ap.add_argument("--latency", action="append", default=[], metavar="RET=RANK",
                    help="only time ranking: a retrieval seed run and a ranker seed run (no training)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--ablate", action="store_true", help="also the per-feature ablation")
    ap.add_argument("--out", default=str(ROOT / "runs" / "pipeline"))
    ap.add_argument("--results", default=str(ROOT / "runs" / "pipeline" / "results.jsonl"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown (no runs)")
    a = ap.parse_args()
    a.retrieval = dict(s.split("=", 1) for s in a.retrieval)
    torch.set_num_threads(1)
    console = Console(width=160)
    seeds = [int(s) for s in a.seeds.split(",")]
    data = dict(s.split("=", 1) for s in a.data)
    if a.latency:
        return latency_only(a.latency, console)
    if a.markdown:
        return markdown(a, list(data), seeds)
    if not a.report_only:
        for name, path in data.items():
            run_data(a, name, path, seeds, console)
    report(a, list(data), seeds, console)


if __name__ == "__main__":
    main()
