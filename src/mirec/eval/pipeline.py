"""The two-stage pipeline on the protocol's test users: retrieval alone against retrieval +
ranking, with the candidates the server uses (exact index, ``candidates_per_interest`` per live
interest, union minus the history, f = max over interests; the ranker reorders the top
``rank_candidates`` by f).

``mirec evaluate --run RETRIEVAL --ranker RANKER --out DIR`` pairs the runs' seeds
(``seed-<s>`` with ``seed-<s>``) and writes ``DIR/results.json`` (docs/results.md, "Pipeline"):
``retrieval`` and ``pipeline`` hold the mean over seeds of the protocol's metrics,
``retrieval_std`` and ``pipeline_std`` their std, ``per_seed`` each seed's.

The ranker must not have trained on the test events: a retrieval run under
``split.protocol=time`` pairs only with a ranker trained under ``split.protocol=time`` with the
same cuts (its training events are the retriever's), and a ranker of the time protocol only
with such a retrieval run (:func:`check_split`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mirec.data.dataset import Dataset
from mirec.data.split import EvalUsers, SplitConfig, resolve_time_cuts, split_users, windows
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import EvalConfig, targets_csr
from mirec.eval.metrics import topn_metrics
from mirec.io import atomic_write_json
from mirec.models.base import user_interests
from mirec.runs import RankRunConfig, seed_dirs
from mirec.serve.bundle import bundle_from_run
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.pipeline import RankStage
from mirec.serve.recommender import Recommender


def served_topn(rec: Recommender, ds: Dataset, users: EvalUsers, n: int, lam: float = 0.0,
                rank: bool = False, progress: bool = False) -> np.ndarray:
    """(U_e, n) item ids that ``rec`` serves each evaluated row (history part and the rows'
    ``new_items`` excluded), ranked by ``rec.ranker`` when ``rank``; 0 fills a list shorter than
    ``n``."""
    b = rec.bundle
    hist, mask = windows(ds.item, users.hist_start, users.cut, b.max_len)  # (U, L)
    out = user_interests(b.model, torch.from_numpy(hist), torch.from_numpy(mask), b.cosine)
    V, live, W = out.vectors.numpy().astype(np.float32), out.mask.numpy(), out.weights.numpy()
    raw = [str(x) for x in ds.users["raw_id"].to_list()]
    topn = np.zeros((len(users), n), dtype=np.int64)
    blocked = None  # (N,) bool: items never served (the time protocol's new items)
    if users.new_items is not None:
        blocked = np.zeros(ds.num_items, dtype=bool)
        blocked[users.new_items] = True
    for j in tqdm(range(len(users)), desc="users", disable=None if progress else True, leave=False):
        seen = ds.item[users.hist_start[j]:users.cut[j]].tolist()
        fn = None
        if rank:
            user = raw[users.users[j]]
            fn = lambda c, f, k, u=user, h=seen, K=len(V[j]): rec.ranker.score(u, h, c, f, k, K)  # noqa: E731
        recs = rec.recommend_dense(V[j], live[j], W[j], hist[j], seen, n, lam, fn, blocked)
        topn[j, :len(recs)] = [r.item for r in recs]
    return topn


def pair_seeds(run_dir: str | Path, ranker_dir: str | Path) -> list[tuple[Path, Path]]:
    """(retrieval seed dir, ranker seed dir) pairs: ``seed-<s>`` with ``seed-<s>``."""
    runs, rankers = seed_dirs(run_dir), seed_dirs(ranker_dir)
    if len(runs) == 1 and len(rankers) == 1:
        return [(runs[0], rankers[0])]
    by_name = {d.name: d for d in rankers}
    missing = [d.name for d in runs if d.name not in by_name]
    if missing:
        raise MirecConfigError(f"--ranker: {ranker_dir} has no {missing[0]} to pair with {run_dir}'s "
                               f"(train it with the same --seeds and --candidates {run_dir})")
    return [(d, by_name[d.name]) for d in runs]


def check_split(ds: Dataset, retrieval: SplitConfig, ranker: RankRunConfig | None,
                ranker_dir: str | Path) -> None:
    """Refuse a ranker that trained on the retrieval run's test events (module docstring)."""
    if ranker is None:
        return
    protocols = (retrieval.protocol, ranker.split.protocol)
    if (protocols[0] == "time") != (protocols[1] == "time"):
        raise MirecConfigError(f"split.protocol: the retrieval run is under {protocols[0]}, the ranker "
                               f"{ranker_dir} under {protocols[1]}; under the time protocol both must be "
                               f"(train the ranker with --set split.protocol=time and the same cuts)")
    if protocols[0] == "time":
        want, got = resolve_time_cuts(ds, retrieval), resolve_time_cuts(ds, ranker.split.time_config())
        if want != got:
            raise MirecConfigError(f"split.valid_from: the ranker {ranker_dir} was trained with time cuts "
                                   f"at ts {got[0]}, {got[1]}, the retrieval run at {want[0]}, {want[1]}; "
                                   f"train it with the same split.valid_from and split.test_from")


@dataclass
class PipelineResult:
    doc: dict[str, Any]  # what results.json holds
    path: Path | None


def _mean_std(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    return ({k: float(np.mean([r[k] for r in rows])) for k in rows[0]},
            {k: float(np.std([r[k] for r in rows])) for k in rows[0]})


def evaluate_pipeline(run_dir: str | Path, ranker_dir: str | Path, out: str | Path | None = None,
                      data: str | Path | None = None, eval_cfg: EvalConfig | None = None,
                      progress: bool = False) -> PipelineResult:
    """Retrieval alone and retrieval + ranking on each seed's test users (module docstring)."""
    t0 = time.perf_counter()
    per_seed = []
    for rdir, kdir in pair_seeds(run_dir, ranker_dir):
        bundle, ds = bundle_from_run(rdir, data)
        ec = eval_cfg or bundle.config.eval
        stage = RankStage.from_run(kdir, bundle)
        check_split(ds, bundle.config.split, stage.config, kdir)
        index = ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact"))
        rec = Recommender(bundle, index, ranker=stage)
        test = split_users(ds, bundle.config.split).test
        indptr, targets = targets_csr(ds, test)
        cat_indptr, cat_ids, _ = ds.category_index()
        row = {"seed": bundle.config.split.seed, "retrieval_run": str(rdir), "ranker_run": str(kdir),
               "test_users": len(test)}
        for name, rank in (("retrieval", False), ("pipeline", True)):
            topn = served_topn(rec, ds, test, max(ec.ns), rank=rank, progress=progress)
            row[name] = topn_metrics(topn, indptr, targets, cat_indptr, cat_ids, ds.num_items - 1,
                                     tuple(sorted(ec.ns)))
            if test.new_items is not None:  # split.protocol=time, as the retrieval run reports it
                row[name]["new_item_share"] = float(np.isin(targets, test.new_items).mean())
        per_seed.append(row)
    doc: dict[str, Any] = {"task": "pipeline", "retrieval_run": str(run_dir), "ranker_run": str(ranker_dir),
                           "seeds": [r["seed"] for r in per_seed]}
    for name in ("retrieval", "pipeline"):
        doc[name], doc[f"{name}_std"] = _mean_std([r[name] for r in per_seed])
    doc.update(candidates_per_interest=rec.cfg.candidates_per_interest,
               rank_candidates=rec.cfg.rank_candidates, per_seed=per_seed,
               wall_seconds=round(time.perf_counter() - t0, 3))
    if out is not None:
        atomic_write_json(Path(out) / "results.json", doc)
    return PipelineResult(doc, None if out is None else Path(out))
