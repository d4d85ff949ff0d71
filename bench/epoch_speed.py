"""One training epoch of mirec against the peer (torch-rechub 0.9.0) on a real data set, in
alternating rounds: each side's own training loop on the same examples, one thread each.

Each round runs, in fresh child processes, ``bench/peer_quality.py --epochs 1`` (the peer's
model on mirec's split and training examples, 50 uniform negatives per example) and then
``mirec train --set train.epochs=1`` at mirec's defaults, and reads the examples/s each prints
for its training epoch (evaluation excluded). Prints every round and the mean ratio. Install the
peer beside the venv as for ``bench/peer_speed.py``; run it with nothing else on the machine.

    PYTHONPATH=/tmp/rechub-0.9.0 python bench/epoch_speed.py --data data/beauty --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RATE = re.compile(r"([\d,]+) ex/s")


def rate_of(cmd: list[str], env: dict[str, str]) -> float:
    """The first ``N ex/s`` figure a child process prints (its first epoch's training rate)."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    m = RATE.search(out.stdout + out.stderr)
    if out.returncode != 0 or m is None:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return float(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="data/beauty", help="a prepared mirec data set")
    ap.add_argument("--model", default="comirec-sa", help="a model both sides have")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="mirec override (default: none)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    here = Path(__file__).resolve().parent
    mirec = [sys.executable, "-m", "mirec.cli"]
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, args.rounds + 1):
            peer = rate_of([sys.executable, str(here / "peer_quality.py"), "--data", args.data,
                            "--models", args.model, "--seeds", str(args.seed), "--epochs", "1",
                            "--out", f"{tmp}/peer-{r}"], env)
            ours = rate_of([*mirec, "train", "--model", args.model, "--data", args.data,
                            "--seed", str(args.seed), "--threads", "1", "--set", "train.epochs=1",
                            *[a for s in args.set for a in ("--set", s)], "--out", f"{tmp}/mirec-{r}"],
                           env)
            ratios.append(ours / peer)
            print(f"round {r}: peer {peer:,.0f} ex/s, mirec {ours:,.0f} ex/s, {ours / peer:.2f}x",
                  flush=True)
    print(f"{args.model} on {args.data}: mirec / peer {sum(ratios) / len(ratios):.2f}x "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
