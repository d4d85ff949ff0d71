"""The accuracy-diversity trade-off: sweep lambda on test users (ComiRec paper, Sec. 4.4).

For every test user of the run's split, the served path runs as in production (interests ->
exact per-interest search -> union minus history -> max over interests -> greedy diversity
with lambda) and the protocol's metrics are computed on the resulting top-50. lambda = 0 is
plain max-over-interests aggregation, so its row reproduces ``mirec evaluate --run``.
Writes ``diversity.json`` and ``diversity.png`` (Recall@50 against Diversity@50).

With a ranker (``--ranker RUN``) the full pipeline runs: the candidates are re-scored by the
ranker and the lambda aggregation runs on the ranker's scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from tqdm.auto import tqdm

from mirec.data.split import split_users
from mirec.eval.evaluate import targets_csr
from mirec.eval.metrics import topn_metrics
from mirec.eval.pipeline import check_split, served_topn
from mirec.io import atomic_write_json
from mirec.plots import diversity_figure, save_png
from mirec.serve.bundle import bundle_from_run
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.pipeline import RankStage
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
                     data: str | Path | None = None, progress: bool = False,
                     ranker: str | Path | None = None) -> DiversityReport:
    bundle, ds = bundle_from_run(run_dir, data)
    cfg = bundle.config
    test = split_users(ds, cfg.split).test
    stage = None if ranker is None else RankStage.from_run(ranker, bundle)
    if stage is not None:
        check_split(ds, cfg.split, stage.config, ranker)
    rec = Recommender(bundle, ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact")), ranker=stage)
    indptr, targets = targets_csr(ds, test)
    cat_indptr, cat_ids, _ = ds.category_index()
    rows = []
    for lam in tqdm(lambdas, desc="lambda", disable=None if progress else True, leave=False):
        topn = served_topn(rec, ds, test, N, lam, rank=stage is not None)
        m = topn_metrics(topn, indptr, targets, cat_indptr, cat_ids, ds.num_items - 1, (20, N))
        rows.append({"lambda": lam, **m})
    out = Path(out)
    name = cfg.model if stage is None else f"{cfg.model} + {stage.name}"
    report = DiversityReport(name, rows, out / "diversity.json", out / "diversity.png")
    atomic_write_json(report.json_path, {"model": cfg.model, "run": str(run_dir), "ranker": str(ranker or ""),
                                         "test_users": len(test), "rows": rows})
    save_png(diversity_figure(name, rows), report.png_path)
    return report
