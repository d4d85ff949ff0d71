"""How distinct a trained multi-interest model's interests are, per run: the mean cosine between
two of a test user's K pooled interests (1 = one vector repeated), how many interests put an item
in a user's top 10, and each interest's share of those items (the last column is the sequential
interest when ``model_args.sequential_interest`` is on; its vector is not in the cosine).

    python bench/interest_spread.py runs/q100k-max/comirec-sa/seed-1 runs/loo-abl-seq/tune/comirec-sa/true
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mirec.data.split import split_users, windows
from mirec.models.base import VectorScorer
from mirec.runs import load_run


def spread(run_dir: str, users: int, n: int = 10) -> str:
    run = load_run(run_dir)
    sp = split_users(run.dataset, run.config.split)
    u = sp.test.select(slice(0, users))
    hist, mask = windows(run.dataset.item, u.hist_start, u.cut, run.config.split.max_len)
    scorer = VectorScorer(run.model, run.config.train.cosine)
    out = scorer.interests(hist, mask)
    K = run.model.cfg.num_interests
    v = torch.nn.functional.normalize(out.vectors[:, :K], dim=-1)  # (U, K, D)
    pairs = torch.triu_indices(K, K, 1)
    cos = (v @ v.transpose(1, 2))[:, pairs[0], pairs[1]].mean().item()
    s = torch.einsum("bkd,nd->bkn", out.vectors, scorer.items)  # (U, K', N)
    s[:, :, 0] = float("-inf")  # padding
    top = s.max(1).values.topk(n, dim=1).indices  # (U, n) by max over interests
    who = s.gather(2, top[:, None, :].expand(-1, s.shape[1], -1)).argmax(1)  # (U, n)
    per_user = np.mean([len(set(w.tolist())) for w in who])
    share = np.bincount(who.flatten().numpy(), minlength=s.shape[1]) / who.numel()
    return (f"{run_dir}: mean cosine of two pooled interests {cos:.3f}; interests in a top-{n} "
            f"{per_user:.2f}; share of the top-{n} by interest {np.round(share, 3).tolist()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run (or seed-*) directories of multi-interest models")
    ap.add_argument("--users", type=int, default=4000, help="the first this many test users")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for r in args.runs:
        print(spread(r, args.users))


if __name__ == "__main__":
    main()
