"""The accuracy-diversity trade-off: sweep lambda on test users (ComiRec paper, Sec. 4.4).

For every test user of the run's split, the served path runs as in production (interests ->
exact per-interest search -> union minus history -> max over interests -> greedy diversity
with lambda) and the protocol's metrics are computed on the resulting top-50. lambda = 0 is
plain max-over-interests aggregation, so its row reproduces ``mirec evaluate --run``.
Writes ``diversity.json`` and ``diversity.png`` (Recall@50 against Diversity@50).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.table import Table
from tqdm.auto import tqdm

from mirec.data.split import split_users, windows
from mirec.eval.evaluate import targets_csr
from mirec.eval.metrics import topn_metrics
from mirec.io import atomic_write_json
from mirec.models.base import user_interests
from mirec.plots import diversity_figure, save_png
from mirec.serve.bundle import bundle_from_run
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.recommender import Recommender

N = 50


@dataclass
class DiversityReport:
    model: str
    rows: list[dict]  # {"lambda", metrics...}
    json_path: Path
    png_path: Path

    def table(self) -> Table:
        t = Table(title=f"{self.model}: accuracy vs diversity on test users")
        cols = ("recall@20", "recall@50", "ndcg@50", "diversity@20", "diversity@50")
        t.add_column("lambda", justify="right")
        for c in cols:
            t.add_column(c, justify="right")
        for r in self.rows:
            t.add_row(f"{r['lambda']:g}", *(f"{r[c]:.4f}" for c in cols))
        return t


def diversity_report(run_dir: str | Path, lambdas: list[float], out: str | Path,
                     data: str | Path | None = None, progress: bool = False) -> DiversityReport:
    bundle, ds = bundle_from_run(run_dir, data)
    cfg = bundle.config
    test = split_users(ds, cfg.split).test
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")))
    hist, mask = windows(ds.item, test.hist_start, test.cut, cfg.split.max_len)  # (U, L)
    out_ = user_interests(bundle.model, torch.from_numpy(hist), torch.from_numpy(mask), bundle.cosine)
    V = out_.vectors
    V, live, W = V.numpy().astype(np.float32), out_.mask.numpy(), out_.weights.numpy()
    indptr, targets = targets_csr(ds, test)
    cat_indptr, cat_ids, _ = ds.category_index()
    rows = []
    for lam in tqdm(lambdas, desc="lambda", disable=None if progress else True, leave=False):
        topn = np.zeros((len(test), N), dtype=np.int64)
        for j in range(len(test)):
            seen = ds.item[test.hist_start[j]:test.cut[j]].tolist()
            recs = rec.recommend_dense(V[j], live[j], W[j], hist[j], seen, N, lam)
            topn[j, :len(recs)] = [r.item for r in recs]
        m = topn_metrics(topn, indptr, targets, cat_indptr, cat_ids, ds.num_items - 1, (20, N))
        rows.append({"lambda": lam, **m})
    out = Path(out)
    report = DiversityReport(cfg.model, rows, out / "diversity.json", out / "diversity.png")
    atomic_write_json(report.json_path, {"model": cfg.model, "run": str(run_dir),
                                         "test_users": len(test), "rows": rows})
    save_png(diversity_figure(cfg.model, rows), report.png_path)
    return report
