"""Training throughput with one process and with data-parallel processes under ``torchrun``.

Runs ``mirec train`` for ``--epochs`` epochs per setting (one at a time, nothing else should
run): one process with 1 and with 2 torch threads, then ``torchrun --nproc-per-node P`` with
one thread each; prints the examples/s the trainer logged for each epoch (``metrics.jsonl``,
training time only, validation excluded) and the mean. A global batch of ``train.batch_size``
examples is split across the processes, so every setting takes the same steps.

    python bench/ddp_speed.py                              # comirec-sa on data/ml-100k
    python bench/ddp_speed.py --model mind --nproc 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def run(label: str, launcher: list[str], threads: int, a: argparse.Namespace, tmp: Path) -> None:
    out = tmp / label.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, *launcher, "-m", "mirec.cli", "train", "--model", a.model, "--data", a.data,
           "--out", str(out), "--threads", str(threads), "--set", f"train.epochs={a.epochs}",
           "--set", f"train.patience={a.epochs}", *sum((["--set", s] for s in a.set), [])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{label}: failed\n{p.stdout}\n{p.stderr}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in rows]
    mean = sum(rates) / len(rates)
    print(f"{label:<28} {' '.join(f'{r:>9,.0f}' for r in rates)}   mean {mean:>9,.0f} ex/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="comirec-sa")
    p.add_argument("--data", default="data/ml-100k")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="override, e.g. train.loss=sampled")
    a = p.parse_args()
    print(f"{a.model} on {a.data}, {a.epochs} epochs each; examples/s per epoch (training only)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run("1 process x 1 thread", [], 1, a, tmp)
        run("1 process x 2 threads", [], 2, a, tmp)
        run(f"{a.nproc} processes x 1 thread", ["-m", "torch.distributed.run", "--standalone",
                                                "--nproc-per-node", str(a.nproc)], 1, a, tmp)


if __name__ == "__main__":
    main()
