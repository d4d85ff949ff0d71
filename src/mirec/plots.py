"""Every PNG mirec writes: training curves, a user's interests, the accuracy-diversity trade-off.

Each ``*_figure`` function returns a Matplotlib figure (tests inspect its lines and points);
:func:`save_png` writes it atomically and closes it. Matplotlib runs on the Agg backend (no
display needed) and is imported only here, when a plot is asked for.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mirec.errors import MirecDataError
from mirec.io import PNG_KEY, WRITER, atomic_write_bytes, check_output_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mirec.serve.bundle import Bundle

# validation metrics plotted beside the loss, when the run logged them (retrieval, then ctr)
VALID_METRICS = ("recall@50", "ndcg@50", "auc", "gauc")
MAX_BACKGROUND = 3000  # item points drawn in the interests plot at most


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Figure, path: str | Path, overwrite: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically, marked as mirec's) and close it. An
    existing file mirec did not write is refused unless ``overwrite``
    (:func:`mirec.io.check_output_file`)."""
    path = Path(path)
    try:
        check_output_file(path, overwrite)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={PNG_KEY: WRITER})
    finally:
        _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---- training curves -------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of one ``metrics.jsonl`` (one per epoch); a bad line is named."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MirecDataError(f"{path}: cannot read ({e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"epoch": int(row["epoch"]), "loss": float(row["loss"]),
                         "valid": {k: float(v) for k, v in row.get("valid", {}).items()}})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise MirecDataError(f"{path}:{n}: not a metrics row ({e})") from None
    return rows


def run_metrics(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{label: rows}`` for a run directory: one entry per seed (``seed-<s>/metrics.jsonl``) or
    the run's own ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    seeds = sorted(run_dir.glob("seed-*/metrics.jsonl"),
                   key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    if seeds:
        return {p.parent.name.replace("-", " "): read_metrics(p) for p in seeds}
    single = run_dir / "metrics.jsonl"
    if not single.exists():
        raise MirecDataError(f"{run_dir}: no metrics.jsonl (nor seed-*/metrics.jsonl); is this a "
                             f"`mirec train` run directory?")
    label = "run"
    results = run_dir / "results.json"
    if results.exists():  # a one-seed run names its seed there
        try:
            seeds_ = json.loads(results.read_text(encoding="utf-8")).get("seeds") or []
        except (OSError, ValueError, AttributeError) as e:
            raise MirecDataError(f"{results}: not a readable results.json ({e})") from None
        label = f"seed {seeds_[0]}" if len(seeds_) == 1 else label
    return {label: read_metrics(single)}


def training_figure(run_dir: str | Path) -> Figure:
    """Loss and validation metrics per epoch, one line per seed on every panel."""
    runs = run_metrics(run_dir)
    logged = set.union(*(set(r["valid"]) for rows in runs.values() for r in rows) or [set()])
    metrics = [m for m in VALID_METRICS if m in logged] or sorted(logged)[:2]
    panels = ["loss"] + metrics
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, rows in runs.items():
            ys = [r["loss"] if panel == "loss" else r["valid"].get(panel, np.nan) for r in rows]
            ax.plot([r["epoch"] for r in rows], ys, marker="o", markersize=3, label=label)
        ax.set_title(panel if panel == "loss" else f"validation {panel}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{Path(run_dir).name}: training", fontsize=11)
    fig.tight_layout()
    return fig


# ---- a user's interests ----------------------------------------------------------------------


def pca_2d(points: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``points`` (P, D) projected on the two leading principal axes of ``basis`` (B, D)."""
    mean = basis.mean(0)
    _, _, vt = np.linalg.svd(basis - mean, full_matrices=False)  # vt: (min(B, D), D)
    return (points - mean) @ vt[:2].T  # (P, 2)


def interests_figure(bundle: Bundle, user_id: str, seed: int = 0) -> Figure:
    """A 2-D projection (PCA of the item vectors shown) of the user's live interest vectors among
    the items of the categories in their history, coloured by category; history items ringed."""
    from mirec.errors import MirecConfigError
    from mirec.serve.recommender import Recommender

    hist = bundle.user_histories.get(user_id)
    if hist is None:
        raise MirecConfigError(f"--user: {user_id!r} is not a user of the bundle {bundle.path}")
    hist = hist.tolist()
    V, live, _, window = Recommender(bundle, index=None).interests(hist)  # (K, D), (K,), _, (L,)
    items, cat_of = _items_of_categories(bundle, window[window > 0], seed)
    E = bundle.item_vectors[items]  # (P, D)
    xy = pca_2d(E, E)
    vk = pca_2d(V[live], E)  # (K_live, 2)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=100)
    names = sorted(set(cat_of), key=lambda c: (c == "other", c))
    colours = plt.get_cmap("tab10")
    for j, c in enumerate(names):
        sel = np.asarray([x == c for x in cat_of])
        colour = "lightgrey" if c == "other" else colours(j % 10)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=colour, alpha=0.6, label=c, linewidths=0)
    seen = np.isin(items, window[window > 0])
    ax.scatter(xy[seen, 0], xy[seen, 1], s=40, facecolors="none", edgecolors="black", linewidths=0.8,
               label="history (model's window)")
    ax.scatter(vk[:, 0], vk[:, 1], s=260, marker="*", color="crimson", edgecolors="black",
               linewidths=0.8, label="interest vectors", zorder=5)
    for k, (x, y) in zip(np.flatnonzero(live), vk):
        ax.annotate(f"interest {k}", (x, y), textcoords="offset points", xytext=(8, 6), fontsize=9,
                    fontweight="bold")
    ax.set_title(f"user {user_id}: {int(live.sum())} interests among {len(items)} items "
                 f"({bundle.manifest['model']})", fontsize=10)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, loc="best", markerscale=0.8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _items_of_categories(bundle: Bundle, hist: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """Items sharing a category with ``hist`` (all items when there are no categories), at most
    MAX_BACKGROUND of them plus the history itself, and each one's first category among the
    history's eight commonest (else "other")."""
    indptr, cids, names = bundle.category_indptr, bundle.category_ids, bundle.category_names
    owner = np.repeat(np.arange(bundle.num_items), np.diff(indptr))  # (E,) item of each entry
    counts = np.bincount(cids[np.isin(owner, hist)], minlength=len(names))  # (C,)
    top = [int(c) for c in np.argsort(-counts, kind="stable")[:8] if counts[c] > 0]
    has = np.zeros(bundle.num_items, dtype=bool)
    has[owner[np.isin(cids, np.flatnonzero(counts))]] = True
    pool = np.flatnonzero(has) if has.any() else np.arange(1, bundle.num_items)
    pool = np.setdiff1d(pool, hist)
    if len(pool) > MAX_BACKGROUND:
        pool = np.sort(np.random.default_rng(seed).choice(pool, MAX_BACKGROUND, replace=False))
    items = np.concatenate([pool, np.unique(hist)])
    cat_of = []
    for i in items:
        mine = [int(c) for c in cids[indptr[i]:indptr[i + 1]] if int(c) in top]
        cat_of.append(names[mine[0]] if mine else "other")
    return items, cat_of


# ---- accuracy against diversity --------------------------------------------------------------


def diversity_figure(model: str, rows: list[dict[str, float]]) -> Figure:
    """Recall@50 against Diversity@50, one point per lambda (``rows`` of the diversity report)."""
    x = [row["diversity@50"] for row in rows]
    y = [row["recall@50"] for row in rows]
    fig, ax = _pyplot().subplots(figsize=(5, 4), dpi=120)
    ax.plot(x, y, marker="o")
    for row, xi, yi in zip(rows, x, y):
        ax.annotate(f"λ={row['lambda']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("Diversity@50")
    ax.set_ylabel("Recall@50")
    ax.set_title(f"{model}: accuracy-diversity trade-off")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
