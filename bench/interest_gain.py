"""Where a multi-interest model gains over a single-interest one: per test user, against the
number of distinct categories in the user's history (issue 24's evidence when multi-interest
does not win on a data set).

For every seed both runs have (``seed-<s>`` directories, the same split because the same seed),
each test user's Recall@N and NDCG@N (``--n``, 50; 10 for the leave-one-out tables, where
Recall@N is HR@N) under each model are computed on the same top-N lists the protocol scores;
users are grouped by how many distinct categories their history holds (the
data set's item categories; Amazon Beauty's are its attribute ids) and each group's means and
the multi / single ratio are printed, with the rank correlation between the number of categories
and the per-user difference.

    python bench/interest_gain.py --multi runs/q24-beauty-comirec-sa --single runs/q24-beauty-sasrec \\
        --data data/beauty
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mirec.data.split import split_users
from mirec.eval.evaluate import rank_topn, targets_csr
from mirec.eval.metrics import accuracy
from mirec.models.base import VectorScorer
from mirec.runs import load_run, seed_dirs


def coarse_category(ds) -> np.ndarray:
    """(N,) each item's most common category id across the catalogue (-1: none): on Amazon
    Beauty, whose items carry 3-4 attribute ids (category path and brand), the top of the path."""
    indptr, cats, _ = ds.category_index()
    freq = np.bincount(cats, minlength=1)
    out = np.full(len(indptr) - 1, -1, dtype=np.int64)
    for i in range(1, len(out)):
        c = cats[indptr[i]:indptr[i + 1]]
        if len(c):
            out[i] = c[np.argmax(freq[c])]
    return out


def user_feature(ds, users, by: str) -> np.ndarray:
    """(U,) per test user: ``coarse`` distinct coarse categories, ``attributes`` distinct category
    ids, ``length`` events in the history ``item[hist_start:cut]``."""
    if by == "length":
        return (users.cut - users.hist_start).astype(np.int64)
    indptr, cats, _ = ds.category_index()
    coarse = coarse_category(ds) if by == "coarse" else None
    out = np.zeros(len(users), dtype=np.int64)
    for j, (a, b) in enumerate(zip(users.hist_start, users.cut)):
        items = ds.item[a:b]
        if coarse is not None:
            out[j] = len(np.unique(coarse[items]))
        else:
            out[j] = len(np.unique(np.concatenate([cats[indptr[i]:indptr[i + 1]] for i in items])))
    return out


def per_user(run_dir: Path, ds, n: int = 50) -> tuple[dict[str, np.ndarray], object]:
    run = load_run(run_dir, ds)
    sp = split_users(run.dataset, run.config.split)
    scorer = VectorScorer(run.model, run.config.train.cosine)
    topn = rank_topn(scorer, run.dataset, sp.test, n, run.config.split.max_len, ties=run.config.eval.ties)
    return accuracy(topn, *targets_csr(run.dataset, sp.test)), sp.test


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (0-based) with ties sharing their mean rank: most per-user differences are
    exactly 0 (both models hit or both miss), and ordinal ranks would order those by user."""
    _, inv, count = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(count) - count
    return (first + (count - 1) / 2)[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--multi", required=True, help="the multi-interest run directory")
    ap.add_argument("--single", required=True, help="the single-interest run directory")
    ap.add_argument("--data", default=None, help="the prepared data set (default: the runs')")
    ap.add_argument("--by", default="coarse,length",
                    help="group users by: coarse (distinct coarse categories), attributes "
                         "(distinct category ids), length (history events); comma-separated")
    ap.add_argument("--n", type=int, default=50, help="the list size N of Recall@N and NDCG@N")
    args = ap.parse_args()
    multi = {d.name: d for d in seed_dirs(args.multi)}
    single = {d.name: d for d in seed_dirs(args.single)}
    seeds = sorted(set(multi) & set(single))
    if not seeds:
        raise SystemExit(f"no seed-* directory in both {args.multi} and {args.single}")
    ds = load_run(multi[seeds[0]], args.data).dataset
    by = args.by.split(",")
    feats, rm, rs, nm, ns = {k: [] for k in by}, [], [], [], []
    for s in seeds:
        a, users = per_user(multi[s], ds, args.n)
        b, _ = per_user(single[s], ds, args.n)
        for k in by:
            feats[k].append(user_feature(ds, users, k))
        rm.append(a["recall"]), rs.append(b["recall"]), nm.append(a["ndcg"]), ns.append(b["ndcg"])
        print(f"{s}: {len(users)} test users, R@{args.n} multi {a['recall'].mean():.4f}, "
              f"single {b['recall'].mean():.4f}")
    rm, rs, nm, ns = map(np.concatenate, (rm, rs, nm, ns))
    for k in by:
        table(k, np.concatenate(feats[k]), rm, rs, nm, ns, seeds, args.n)


def table(by: str, x: np.ndarray, rm, rs, nm, ns, seeds: list[str], n: int = 50) -> None:
    """Users in about six equal-sized groups by ``x``, each group's means and ratios."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, 7)[:-1]).round().astype(np.int64))
    edges = list(edges) + [int(x.max()) + 1]
    print(f"\n{', '.join(seeds)} pooled: per-user test metrics by {by}")
    print(f"| {by} | users | R@{n} multi | R@{n} single | ratio | NDCG@{n} multi | NDCG@{n} single | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for lo, hi in zip(edges, edges[1:]):
        m = (x >= lo) & (x < hi)
        if not m.any():
            continue
        r1, r2, g1, g2 = rm[m].mean(), rs[m].mean(), nm[m].mean(), ns[m].mean()
        print(f"| {lo}-{hi - 1} | {m.sum()} | {r1:.4f} | {r2:.4f} | {r1 / max(r2, 1e-12):.3f} "
              f"| {g1:.4f} | {g2:.4f} | {g1 / max(g2, 1e-12):.3f} |")
    print(f"| all | {len(x)} | {rm.mean():.4f} | {rs.mean():.4f} | {rm.mean() / rs.mean():.3f} "
          f"| {nm.mean():.4f} | {ns.mean():.4f} | {nm.mean() / ns.mean():.3f} |")
    print(f"median {np.median(x):.0f}; Spearman({by}, R@{n} multi - single) = "
          f"{spearman(x, rm - rs):+.3f}, ({by}, NDCG@{n} multi - single) = {spearman(x, nm - ns):+.3f}")


if __name__ == "__main__":
    main()
