"""Rich tables for the terminal: data set summaries, metric tables, recommendation lists."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from rich.table import Table

from mirec.data.dataset import Dataset

METRICS = ("recall", "ndcg", "hit_rate", "diversity", "coverage")


def dataset_table(ds: Dataset) -> Table:
    m = ds.meta
    c = m.get("counts", {})
    t = Table(title=f"data set {ds.path}", show_header=False)
    t.add_row("source", str(m.get("source", {}).get("name", "?")))
    t.add_row("filters", ", ".join(f"{k}={v}" for k, v in m.get("filters", {}).items()))
    if "before_k_core" in c:
        b, a = c["before_k_core"], c["after_k_core"]
        t.add_row("before k-core", f"{b['events']:,} events, {b['users']:,} users, "
                                   f"{b['items']:,} items")
        t.add_row("after k-core", f"{a['events']:,} events, {a['users']:,} users, "
                                  f"{a['items']:,} items")
    else:
        t.add_row("events", f"{len(ds.item):,} events, {ds.num_users:,} users, "
                            f"{ds.num_items - 1:,} items")
    if c.get("bad_rows_skipped"):
        t.add_row("bad rows skipped", f"{c['bad_rows_skipped']:,}")
    if m.get("appended"):  # `mirec data append`: the counts above are the first base's
        added = {k: sum(r[k] for r in m["appended"]) for k in ("events_added", "new_users", "new_items")}
        t.add_row(f"appended ({len(m['appended'])}x)", f"{added['events_added']:,} events, "
                  f"{added['new_users']:,} new users, {added['new_items']:,} new items (no k-core)")
        t.add_row("now", f"{len(ds.item):,} events, {ds.num_users:,} users, {ds.num_items - 1:,} items")
    t.add_row("checksum", ds.checksum[:16])
    return t


def results_table(runs: dict[str, Any], ns: tuple[int, ...] | None = None) -> Table:
    """One row per model: mean (± std over seeds when several) of each metric @N; ``ns``: the
    list sizes the first run measured (its ``eval.ns``) unless given."""
    first = next(iter(runs.values()))
    ns = ns or tuple(sorted({int(k.split("@")[1]) for k in first.mean if k.startswith("recall@")}))
    n_seeds = len(first.seeds)
    title = (f"test users ({first.seeds[0].extra['num_test_users']}), "
             f"{'seed ' + str(first.seeds[0].seed) if n_seeds == 1 else f'mean ± std over {n_seeds} seeds'}")
    t = Table(title=title)
    t.add_column("model", no_wrap=True)
    t.add_column("N", justify="right")
    for header in ("Recall", "NDCG", "HitRate", "Diversity", "Coverage"):
        t.add_column(header, justify="right")
    for name, run in runs.items():
        mean, std = run.mean, run.std
        for n in ns:
            cells = [f"{mean[f'{m}@{n}']:.3f}"
                     + (f"±{std[f'{m}@{n}']:.3f}" if n_seeds > 1 else "") for m in METRICS]
            t.add_row(name, str(n), *cells)
    return t


def ctr_table(runs: dict[str, dict[str, Any]]) -> Table:
    """One row per ranker from ``results.json`` documents of ``--task ctr`` runs."""
    first = next(iter(runs.values()))
    n = len(first["seeds"])
    tested = bool(first["metrics"])  # a ranker trained on candidates is tested as a pipeline
    what = f"test events ({first['per_seed'][0]['test_examples']:,})" if tested else \
        "validation users' candidates (test: mirec evaluate --run RETRIEVAL --ranker RUN)"
    if "new_item_share" in first["metrics"]:  # split.protocol=time
        what += f", {first['metrics']['new_item_share']:.1%} of the window's events new items (left out)"
    t = Table(title=f"{what}, {'seed ' + str(first['seeds'][0]) if n == 1 else f'mean ± std over {n} seeds'}")
    for header in ("model", "AUC", "GAUC", "log-loss", "examples/s", "s/epoch"):
        t.add_column(header, justify="left" if header == "model" else "right")
    for name, doc in runs.items():
        m, sd, speed = (doc["metrics"], doc["std"], doc["speed"]) if tested else (doc["valid"], {},
                                                                                  doc["speed"])
        n = n if tested else 1
        cells = [f"{m[k]:.4f}" + (f"±{sd[k]:.4f}" if n > 1 else "") for k in ("auc", "gauc", "logloss")]
        t.add_row(name, *cells, f"{speed['examples_per_s']:,.0f}", f"{speed['seconds_per_epoch']:.1f}")
    return t


def interest_table(ds: Dataset, interests: Any, item_vecs: Any, items: np.ndarray,
                   hist: np.ndarray, targets: np.ndarray, title: str) -> Table:
    """Recommended items grouped by the interest that scores them highest; each interest names
    the three history items weighing most in it (attention or routing weights)."""
    import torch

    v = interests.vectors[0]  # (K, D)
    live = interests.mask[0]  # (K,)
    w = interests.weights[0]  # (K, L)
    e = item_vecs[torch.as_tensor(items, dtype=torch.long)]  # (n, D)
    s = (e @ v.T).masked_fill(~live[None, :], float("-inf"))  # (n, K)
    best_k = s.argmax(1).tolist()
    target_set = set(targets.tolist())
    t = Table(title=title)
    t.add_column("interest", justify="right")
    t.add_column("formed by (history)")
    t.add_column("rank", justify="right")
    t.add_column("title")
    t.add_column("categories")
    t.add_column("hit", justify="center")
    for k in sorted(set(best_k)):
        top = torch.topk(w[k], k=min(3, int((hist > 0).sum()))).indices.tolist()
        because = "; ".join(ds.title(int(hist[p])) for p in top if hist[p] > 0)
        first = True
        for r, (i, kk) in enumerate(zip(items, best_k), 1):
            if kk != k:
                continue
            row = ds.items.row(int(i) - 1, named=True)
            t.add_row(str(k) if first else "", because if first else "", str(r),
                      row["title"] or row["raw_id"], ", ".join(row["categories"] or []),
                      "✓" if int(i) in target_set else "")
            first = False
        t.add_section()
    t.caption = f"{len(target_set)} held-out targets; ✓ = one of them"
    return t


def served_table(result: Any, title: str, name: Any = str) -> Table:
    """A served recommendation (:class:`mirec.serve.recommender.RecommendResult`): rank, title,
    categories, score, interest and the history items behind that interest (shown through
    ``name``, e.g. raw id -> title)."""
    t = Table(title=title)
    for col, just in (("rank", "right"), ("item", "left"), ("title", "left"),
                      ("categories", "left"), ("score", "right"), ("interest", "right"),
                      ("because of", "left")):
        t.add_column(col, justify=just)
    for r, x in enumerate(result.items, 1):
        t.add_row(str(r), x.item_id, x.title, ", ".join(x.categories), f"{x.score:.3f}",
                  str(x.interest), "; ".join(name(b) for b in x.because))
    notes = [f"{result.interests} live interests, history of {len(result.history)} items"]
    if result.user_id is not None and not result.known_user:
        notes.append(f"unknown user {result.user_id!r}")
    if getattr(result, "fallback", None):
        notes.append(f"no usable history: fallback {result.fallback!r} (most popular items)")
    if result.ignored_items:
        notes.append(f"ignored (not in the catalogue): {', '.join(result.ignored_items[:10])}")
    t.caption = "; ".join(notes)
    return t


def sources_table(sources: Mapping[str, Any]) -> Table:
    """The data sources `mirec data prepare` reads: name, description, options (default)."""
    table = Table(title="data sources")
    for col in ("source", "reads", "options"):
        table.add_column(col)
    for src in sources.values():
        opts = ", ".join(o.flag + (f" ({o.default})" if o.default is not None else "")
                         for o in src.options)
        table.add_row(src.name, src.help, opts or "-")
    return table


def pipeline_table(doc: dict[str, Any], ns: tuple[int, ...] = (20, 50)) -> Table:
    """Retrieval alone against retrieval + ranking, from a pipeline ``results.json`` document."""
    k = len(doc["seeds"])
    t = Table(title=f"test users ({doc['per_seed'][0]['test_users']}), "
                    f"{'seed ' + str(doc['seeds'][0]) if k == 1 else f'mean ± std over {k} seeds'}")
    t.add_column("stage", no_wrap=True)
    t.add_column("N", justify="right")
    for header in ("Recall", "NDCG", "HitRate", "Diversity", "Coverage"):
        t.add_column(header, justify="right")
    for name in ("retrieval", "pipeline"):
        mean, std = doc[name], doc[f"{name}_std"]
        for n in ns:
            t.add_row(name, str(n), *(f"{mean[f'{m}@{n}']:.3f}" + (f"±{std[f'{m}@{n}']:.3f}" if k > 1 else "")
                                      for m in METRICS))
    return t
