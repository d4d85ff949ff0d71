"""The two-stage pipeline on the retrieval protocol: retrieval alone vs retrieval + ranking.

For each seed, the retrieval run ``--retrieval/seed-<s>`` (trained with split seed s) serves its
test users through :class:`mirec.serve.recommender.Recommender` (exact index, 200 candidates per
interest, history excluded, lambda 0): once ranked by f(u, i), once re-scored by a ranker. The
ranker (DIN by default) is trained here on the same data set with the retrieval validation and
test users' *target* events removed (only what the retriever may see: training users' whole
sequences and held-out users' history parts), with ``ctr.history=all`` as in serving, and one
of two label definitions:

- ``rating``: P(rating >= 4 | shown), the CTR task of the ranking protocol (README, "Ranking");
- ``implicit``: P(interaction), every event a positive and one uniform negative per positive,
  which is what Recall counts.

Prints Recall/NDCG/HitRate@20 (mean ± std over seeds) per variant, and the in-process latency
of ranking 200 candidates for one user and of the whole pipeline.

    python bench/pipeline.py --retrieval runs/quality/comirec-sa --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
N = 20


def held_out_targets(ds, split) -> np.ndarray:
    """(E,) bool: False on the target events of validation and test users."""
    keep = np.ones(len(ds.item), dtype=bool)
    for users in (split.valid, split.test):
        lens = users.end - users.cut
        pos = np.repeat(users.cut, lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
        keep[pos] = False
    return keep


def run_seed(a: argparse.Namespace, seed: int, console: Console) -> dict:
    from mirec.config import load
    from mirec.data.ctr import build_ctr
    from mirec.data.split import split_users
    from mirec.eval.evaluate import targets_csr
    from mirec.eval.metrics import accuracy
    from mirec.serve.bundle import bundle_from_run
    from mirec.serve.index import IndexConfig, ItemIndex
    from mirec.serve.pipeline import RankStage
    from mirec.serve.recommender import Recommender
    from mirec.train.ctr import RankRunConfig, load_ranker, train_ctr

    bundle, ds = bundle_from_run(Path(a.retrieval) / f"seed-{seed}")
    split = split_users(ds, bundle.config.split)
    test = split.test
    keep = held_out_targets(ds, split)
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")))
    raw_users = [str(x) for x in ds.users["raw_id"].to_list()]
    hists = [ds.item[s:c].tolist() for s, c in zip(test.hist_start, test.cut)]
    indptr, targets = targets_csr(ds, test)

    def topn(stage: RankStage | None) -> tuple[np.ndarray, list[float]]:
        rows, times = [], []
        for u, hist in zip(test.users, hists):
            t0 = time.perf_counter()
            V, live, W, window = rec.interests(hist)
            rank = None if stage is None else (lambda c, u=u, h=hist: stage.score(raw_users[u], h, c))
            items = rec.recommend_dense(V, live, W, window, hist, N, 0.0, rank)
            times.append(time.perf_counter() - t0)
            rows.append([x.item for x in items])
        return np.asarray(rows, dtype=np.int64), times

    out = {}
    base, t_base = topn(None)
    out["retrieval only"] = {k: float(v.mean()) for k, v in accuracy(base, indptr, targets).items()}
    out["retrieval only"]["p50_ms"] = float(np.percentile(t_base, 50) * 1e3)
    for labels in a.labels.split(","):
        run_dir = Path(a.out) / f"seed-{seed}" / f"{a.ranker}-{labels}"
        cfg = load(RankRunConfig, None, [f"model={a.ranker}", f"ctr.labels={labels}", "ctr.history=all",
                                         f"train.seed={seed}", f"ctr.seed={seed}", *a.set])
        data = build_ctr(ds, cfg.ctr, keep=keep)
        r = train_ctr(cfg, data, run_dir, progress=False, data_path=str(ds.path), data_checksum=ds.checksum)
        model, ck = load_ranker(run_dir)
        stage = RankStage(model, ck, cfg.ctr.max_len, name=a.ranker)
        ranked, t_rank = topn(stage)
        name = f"+ {a.ranker} ({labels} labels)"
        out[name] = {k: float(v.mean()) for k, v in accuracy(ranked, indptr, targets).items()}
        out[name]["p50_ms"] = float(np.percentile(t_rank, 50) * 1e3)
        out[name]["ranker_test_auc"] = r.test["auc"]
        # ranking exactly 200 candidates for one user
        times = []
        for j, (u, hist) in enumerate(zip(test.users, hists)):
            cand = np.random.default_rng(j).choice(np.arange(1, ds.num_items), 200, replace=False)
            for _ in range(3):
                t0 = time.perf_counter()
                stage.score(raw_users[u], hist, cand)
                times.append(time.perf_counter() - t0)
        out[name]["rank200_p50_ms"] = float(np.percentile(times, 50) * 1e3)
        out[name]["rank200_p99_ms"] = float(np.percentile(times, 99) * 1e3)
        console.print(f"  seed {seed} {name}: recall@{N} {out[name]['recall']:.4f} (retrieval only "
                      f"{out['retrieval only']['recall']:.4f}); ranker test AUC {r.test['auc']:.4f}; "
                      f"rank 200 p50 {out[name]['rank200_p50_ms']:.2f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrieval", default=str(ROOT / "runs" / "quality" / "comirec-sa"),
                    help="a multi-seed retrieval run directory (seed-<s>/best.pt)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--ranker", default="din")
    ap.add_argument("--labels", default="rating,implicit")
    ap.add_argument("--set", action="append", default=[], help="ranker config override")
    ap.add_argument("--out", default=str(ROOT / "runs" / "pipeline"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    console = Console()
    seeds = [int(s) for s in a.seeds.split(",")]
    per_seed = [run_seed(a, s, console) for s in seeds]
    t = Table(title=f"pipeline on {Path(a.retrieval).name}'s test users, N = {N}, lambda 0, "
                    f"mean ± std over seeds {a.seeds}")
    for h in ("pipeline", f"Recall@{N}", f"NDCG@{N}", f"HR@{N}", "ranker test AUC", "p50 ms/user",
              "rank 200: p50 / p99 ms"):
        t.add_column(h, justify="left" if h == "pipeline" else "right")
    for name in per_seed[0]:
        col = {k: [p[name][k] for p in per_seed] for k in per_seed[0][name]}
        cell = lambda k, col=col: f"{np.mean(col[k]):.4f} ± {np.std(col[k]):.4f}"  # noqa: E731
        t.add_row(name, cell("recall"), cell("ndcg"), cell("hit_rate"),
                  cell("ranker_test_auc") if "ranker_test_auc" in col else "-",
                  f"{np.mean(col['p50_ms']):.2f}",
                  f"{np.mean(col['rank200_p50_ms']):.2f} / {np.mean(col['rank200_p99_ms']):.2f}"
                  if "rank200_p50_ms" in col else "-")
    console.print(t)


if __name__ == "__main__":
    main()
