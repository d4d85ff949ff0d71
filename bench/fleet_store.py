"""Benchmark: two servers sharing one PostgreSQL event store, killed with -9 under load.

Two ``mirec serve`` processes on one PostgreSQL store take a mixed load (POST /events and POST
/recommend from ``--clients`` threads against both); every ``--kill-every`` seconds one of them
is killed with -9 and restarted on the same store, for ``--duration`` seconds (the issue's
target: 60 s, 0 acknowledged events lost). Then every event that got a 200 is looked up in the
store. Prints events acknowledged and lost, kills, recommendations served. The test suite runs
the same for 15 s (tests/test_store.py); both call ``crash_run`` (bench/processes.py).

The store is ``--store URL`` or, by default, a throwaway PostgreSQL server on loopback
(bench/pg.py: initdb in a temporary directory; as root it runs as an unprivileged user). The
bundle is ``--bundle DIR`` (``mirec export``) or a small ComiRec-SA trained for one epoch on a
planted synthetic set (seconds).

Usage::

    python bench/fleet_store.py                      # 60 s, throwaway PostgreSQL
    python bench/fleet_store.py --duration 20 --store postgresql://me@db/events --bundle bundles/sa
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT):  # mirec, and bench.pg / bench.processes (shared with the tests)
    if p.is_dir() and str(p) not in sys.path:
        sys.path.insert(0, str(p))


def small_bundle(root: Path) -> Path:
    """A ComiRec-SA trained for one epoch on a small planted set, exported to ``root/bundle``."""
    import torch

    from mirec.data.dataset import load_dataset
    from mirec.data.synth import SynthConfig, synth_dataset
    from mirec.serve.bundle import export_bundle
    from mirec.train.loop import RunConfig, TrainConfig, train

    torch.set_num_threads(1)
    synth_dataset(SynthConfig(num_users=300, num_categories=6, items_per_category=12, max_interests=2,
                              seed=5), root / "ds", progress=False)
    rc = RunConfig(model="comirec-sa", model_args={"dim": 16, "num_interests": 2},
                   train=TrainConfig(epochs=1, batch_size=128))
    train(rc, load_dataset(root / "ds"), root / "run", progress=False)
    return export_bundle(root / "run", root / "bundle")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load and kills")
    ap.add_argument("--kill-every", type=float, default=3.0, help="seconds between two kill -9")
    ap.add_argument("--clients", type=int, default=4, help="client threads")
    ap.add_argument("--store", default=None, help="a postgresql:// URL (default: a throwaway server)")
    ap.add_argument("--bundle", default=None, help="an exported bundle (default: a small trained one)")
    a = ap.parse_args(argv)

    from machine import machine_line  # bench/machine.py, beside this script

    from bench import pg
    from bench.processes import crash_run
    from mirec.serve.bundle import load_bundle

    print(machine_line())
    server = None
    with tempfile.TemporaryDirectory(prefix="fleet-store-") as tmp:
        bundle_dir = Path(a.bundle) if a.bundle else small_bundle(Path(tmp))
        b = load_bundle(bundle_dir)
        raw = [b.raw_id(i) for i in range(1, b.num_items)]
        url = a.store
        try:
            if url is None:
                try:
                    server = pg.start()
                except pg.Unavailable as e:
                    raise SystemExit(f"no PostgreSQL server could be started: {e}") from None
                url = server.new_database()
            counts = crash_run(bundle_dir, raw, url, a.duration, a.kill_every, a.clients)
        finally:
            if server is not None:
                server.stop()
    print("target: 0 acknowledged events lost: " + ("met" if counts["lost"] == 0 else "NOT met"))
    sys.exit(0 if counts["lost"] == 0 else 1)


if __name__ == "__main__":
    main()
