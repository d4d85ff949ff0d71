"""The point of multiple interests, shown: multi-interest models vs YouTube DNN on planted data.

For each ``Kmax`` (users have 1..Kmax planted interests, see :mod:`mirec.data.synth`) a data
set is generated and every model is trained under the protocol with the same settings; the
table gives test Recall@50 and the relative gap of each multi-interest model over YouTube DNN.
With Kmax = 1 every user has one interest, so there is nothing for K > 1 interests to add; the
gap should grow with Kmax.

    python bench/synth_gap.py                                  # Kmax 1,2,4,8; 1 seed
    python bench/synth_gap.py --kmax 4 --seeds 1,2,3 --models youtube-dnn,comirec-sa
    python bench/synth_gap.py --kmax 4 --seeds 1,2,3 --tune    # each model picks its T first

Every model gets the same settings (20 epochs, lr 3e-3, T 0.1), or with ``--tune`` the same
budget: each temperature of :data:`TUNE_GRID` trained on every seed, the best mean validation
Recall@50 kept (``bench/quality.py``'s rule; test users play no part in the choice).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from quality import tune  # noqa: E402  (bench/quality.py, beside this script)
from rich.console import Console  # noqa: E402

from mirec.config import load  # noqa: E402
from mirec.data.dataset import load_dataset  # noqa: E402
from mirec.data.synth import SynthConfig, synth_dataset  # noqa: E402
from mirec.experiment import train_seeds  # noqa: E402
from mirec.train.loop import RunConfig  # noqa: E402

SETTINGS = ["train.epochs=20", "train.lr=0.003", "train.temperature=0.1"]
TUNE_GRID = {"train.temperature": ["0.05", "0.1", "0.2"]}


def synth_config(kmax: int, a: argparse.Namespace) -> SynthConfig:
    """Defaults: 2,000 users, 50 categories x 100 items, weakly sticky walks (targets span
    interests); the flags change the generator (the data directory's name says which)."""
    return SynthConfig(num_users=a.users, num_categories=a.categories,
                       items_per_category=a.items_per_category, zipf_a=a.zipf, max_interests=kmax,
                       stickiness=a.stickiness, noise=a.noise, min_len=10, mean_len=a.mean_len, seed=kmax)


def data_name(kmax: int, a: argparse.Namespace) -> str:
    default = (a.users, a.categories, a.items_per_category, a.zipf, a.stickiness, a.noise, a.mean_len) == (
        2000, 50, 100, 1.1, 0.5, 0.05, 40)
    if default:
        return f"synth-gap-k{kmax}"
    return (f"synth-gap-k{kmax}-u{a.users}-c{a.categories}x{a.items_per_category}-z{a.zipf}"
            f"-s{a.stickiness}-n{a.noise}-l{a.mean_len}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kmax", default="1,2,4,8")
    p.add_argument("--models", default="youtube-dnn,comirec-sa,mind,comirec-dr")
    p.add_argument("--seeds", default="1")
    g = p.add_argument_group("generator (mirec.data.synth.SynthConfig)")
    g.add_argument("--users", type=int, default=2000)
    g.add_argument("--categories", type=int, default=50)
    g.add_argument("--items-per-category", type=int, default=100)
    g.add_argument("--zipf", type=float, default=1.1)
    g.add_argument("--stickiness", type=float, default=0.5)
    g.add_argument("--noise", type=float, default=0.05)
    g.add_argument("--mean-len", type=float, default=40)
    p.add_argument("--out", default="runs/synth-gap")
    p.add_argument("--set", action="append", default=[],
                   help="overrides for every model, after the defaults: 20 epochs, lr 3e-3, T 0.1")
    p.add_argument("--tune", action="store_true",
                   help="pick each model's temperature on validation users first (0.05, 0.1, 0.2)")
    a = p.parse_args()
    settings = [s for s in SETTINGS if not (a.tune and s.split("=")[0] in TUNE_GRID)] + a.set
    out, seeds = Path(a.out), [int(s) for s in a.seeds.split(",")]
    models = a.models.split(",")
    rows = []
    for kmax in (int(k) for k in a.kmax.split(",")):
        path = ROOT / "data" / data_name(kmax, a)
        if not (path / "meta.json").exists():
            synth_dataset(synth_config(kmax, a), path, progress=False)
        ds = load_dataset(path)
        r50 = {}
        for m in models:
            t = time.perf_counter()
            chosen = []
            if a.tune:
                chosen, doc = tune(m, ds, seeds, out / data_name(kmax, a), Console(), settings, TUNE_GRID)
                r50[m] = (doc["metrics"]["recall@50"], doc["std"]["recall@50"])
            else:
                cfg = load(RunConfig, None, [f"model={m}", *settings])
                run = train_seeds(cfg, ds, seeds, out / data_name(kmax, a) / m, progress=False)
                r50[m] = (run.mean["recall@50"], run.std["recall@50"])
            print(f"Kmax {kmax} {m:12} {' '.join(chosen)} R@50 {r50[m][0]:.4f} ± {r50[m][1]:.4f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        rows.append((kmax, r50))
    base = "youtube-dnn"
    print(f"\nTest Recall@50, mean ± std over seeds {a.seeds}; gap = relative to {base}")
    print(f"{'Kmax':>4}  " + "  ".join(f"{m:>22}" for m in models))
    for kmax, r50 in rows:
        cells = []
        for m in models:
            mean, std = r50[m]
            gap = f" ({100 * (mean / r50[base][0] - 1):+.0f}%)" if base in r50 and m != base else ""
            cells.append(f"{mean:.3f} ± {std:.3f}{gap}")
        print(f"{kmax:>4}  " + "  ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
