"""Benchmark: data set preparation end to end, from a raw CSV log to a prepared directory.

Generates a synthetic raw CSV (``user,item,category,timestamp``) of about ``--events`` events
with :func:`mirec.data.synth.synth_raw` (or reuses one with ``--reuse``), then runs the
preparation in a fresh child process::

    raw = mirec.data.tabular.load_table(path, "csv", user_col="user", item_col="item",
                                        time_col="timestamp", category_col="category")
    mirec.data.prepare.build_dataset(raw, out)

and prints events/s, the per-stage wall times and the child's peak RSS (generation memory does
not count: it happens in this process, and the child's peak is read with
``resource.getrusage(RUSAGE_CHILDREN)``). Prints figures only; never asserts on timings.

With ``--preset books`` (or ``taobao``; ``--set key=value`` applies on top, as in
``mirec data synth``) it times the end-to-end path of a large log instead: generation into a
directory of Parquet part files (``synth_raw(cfg, dir, fmt="parts")``, in a child process of its
own) and the preparation of that directory (``load_table(dir, "parquet", ...)`` and
``build_dataset``), each child's peak RSS, and, when ``--set num_users`` takes a fraction of the
preset's users, the same figures scaled to the whole preset (time linear in events; memory: the
bytes an event above the interpreter's baseline, times the preset's events).

Usage::

    python bench/prepare.py --events 300000
    python bench/prepare.py --events 10000000 --threads 4 --reuse --keep
    python bench/prepare.py --preset books
    python bench/prepare.py --preset taobao --set num_users=100000   # then scaled to 85M events
    python bench/prepare.py --preset taobao                          # the whole 85M events
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))


def _rss_mib(ru_maxrss: int) -> float:
    """``ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def synth_config(events: int, seed: int) -> Any:
    """A synthetic configuration giving about ``events`` events (mean sequence length 50).

    Parameters
    ----------
    events : int
        Target number of events.
    seed : int
        Generator seed.

    Returns
    -------
    SynthConfig
        200 categories, about ``events / 4000`` items per category (at least 20), so that
        k-core filtering has rare items to drop as on a real log.
    """
    from mirec.data.synth import SynthConfig

    return SynthConfig(num_users=max(1, round(events / 50)), num_categories=200,
                       items_per_category=max(20, events // 4000), zipf_a=1.1,
                       max_interests=4, stickiness=0.8, noise=0.05, min_len=5, mean_len=50.0,
                       seed=seed, chunk_users=100_000)


def child(raw_path: str, out: str) -> None:
    """Run the preparation and print its stage timings as one JSON line (child process)."""
    t0 = time.perf_counter()
    from mirec.data.prepare import build_dataset
    from mirec.data.tabular import load_table

    t1 = time.perf_counter()
    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fmt = "parquet" if Path(raw_path).is_dir() else "csv"  # a directory of part files
    raw = load_table(raw_path, fmt, user_col="user", item_col="item", time_col="timestamp",
                     category_col="category")
    t2 = time.perf_counter()
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    build_dataset(raw, out)
    t3 = time.perf_counter()
    print(json.dumps({
        "import_s": t1 - t0, "load_table_s": t2 - t1, "build_dataset_s": t3 - t2,
        "rss_after_import": rss_import, "rss_after_load": rss_load,
        "rss_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "raw_events": raw.events.height,
    }))


def generate_child(preset: str, sets: list[str], out: str) -> None:
    """Generate the preset's raw part files and print time and peak RSS as JSON (child)."""
    from mirec.config import load
    from mirec.data.synth import SynthConfig, synth_raw
    from mirec.data.synth import preset as preset_fields

    cfg = load(SynthConfig, None, sets, base=preset_fields(preset))
    t = time.perf_counter()
    synth_raw(cfg, out, fmt="parts", progress=False)
    print(json.dumps({"generate_s": time.perf_counter() - t, "num_users": cfg.num_users,
                      "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _run_child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {args[0]} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def preset_main(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Generate a preset's part files, prepare them, print both stages and the scaled totals."""
    from mirec.data.synth import PRESETS

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mirec-bench-preset-"))
    work.mkdir(parents=True, exist_ok=True)
    raw, out = work / f"{args.preset}-parts", work / f"{args.preset}-prepared"
    try:
        t = time.perf_counter()
        gen = _run_child(["--generate-child", args.preset, str(raw), *sum(
            (["--set", kv] for kv in args.set or []), [])], env)
        gen_wall = time.perf_counter() - t
        t = time.perf_counter()
        prep = _run_child(["--child", str(raw), str(out)], env)
        prep_wall = time.perf_counter() - t
        meta = json.loads((out / "meta.json").read_text())
        n, after = prep["raw_events"], meta["counts"]["after_k_core"]
        scale = PRESETS[args.preset]["num_users"] / gen["num_users"]
        base = prep["rss_after_import"]
        print(f"preset      : {args.preset} {' '.join(args.set or [])} (threads: "
              f"{args.threads or 'default'} of {os.cpu_count()} cores)")
        print(f"events      : {n:,} raw -> {after['events']:,} after 5-core "
              f"({after['users']:,} users, {after['items']:,} items)")
        print(f"generate    : {gen_wall:8.2f} s  (child wall; {n / gen['generate_s']:,.0f} "
              f"events/s)  peak RSS {_rss_mib(gen['rss']):8.1f} MiB")
        print(f"prepare     : {prep_wall:8.2f} s  (child wall; load {prep['load_table_s']:.2f} s "
              f"+ build {prep['build_dataset_s']:.2f} s)  peak RSS "
              f"{_rss_mib(prep['rss_end']):8.1f} MiB")
        print(f"total       : {gen_wall + prep_wall:8.2f} s  generate + prepare")
        unit = 1 if sys.platform == "darwin" else 1024
        per_event = (prep["rss_end"] - base) * unit / n
        print(f"bytes/event : {per_event:8.1f}  (prepare: peak RSS above the imports' "
              f"{_rss_mib(base):.1f} MiB, per raw event)")
        if scale > 1.001:
            full = n * scale
            print(f"scaled x{scale:.2f} to the whole preset (~{full / 1e6:.1f}M events, linear): "
                  f"generate + prepare ~{(gen_wall + prep_wall) * scale / 60:.1f} min, prepare "
                  f"peak RSS ~{(base * unit + per_event * full) / 2**30:.2f} GiB")
    finally:
        if args.keep:
            print(f"kept        : {work}")
        else:
            shutil.rmtree(raw, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, generate or reuse the raw log, time the preparation, print figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000, help="about this many events")
    ap.add_argument("--threads", type=int, default=None,
                    help="POLARS_MAX_THREADS for the preparation (default: Polars' own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the raw CSV in --workdir if there (and keep it)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the raw CSV and the prepared data set go (default: a fresh "
                         "temp dir; with --reuse, $TMPDIR/mirec-bench-prepare)")
    ap.add_argument("--preset", choices=("books", "taobao"), default=None,
                    help="time generate + prepare of this synth preset (part files)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="with --preset: a SynthConfig override, e.g. num_users=100000")
    ap.add_argument("--child", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--generate-child", nargs=2, metavar=("PRESET", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    if args.generate_child:
        generate_child(args.generate_child[0], args.set or [], args.generate_child[1])
        return
    env = dict(os.environ)
    if args.threads is not None:
        env["POLARS_MAX_THREADS"] = str(args.threads)
    if args.preset:
        preset_main(args, env)
        return

    from mirec.data.synth import synth_raw

    fresh = args.workdir is None and not args.reuse  # a temp dir of our own: removed whole
    if args.workdir is not None:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    elif args.reuse:
        work = Path(tempfile.gettempdir()) / "mirec-bench-prepare"
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="mirec-bench-prepare-"))
    raw_path = work / f"synth-{args.events}-s{args.seed}.csv"
    out = work / f"prepared-{args.events}-s{args.seed}"
    try:
        if args.reuse and raw_path.exists():
            print(f"raw log     : reusing {raw_path}")
        else:
            cfg = synth_config(args.events, args.seed)
            t = time.perf_counter()
            synth_raw(cfg, raw_path, fmt="csv", progress=True)
            print(f"raw log     : generated {raw_path} in {time.perf_counter() - t:.2f} s")
        print(f"raw size    : {raw_path.stat().st_size / 2**20:.1f} MiB")

        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(raw_path), str(out)],
                              env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"preparation failed (exit {proc.returncode})")
        stages = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        meta = json.loads((out / "meta.json").read_text())
        n = stages["raw_events"]
        prep = stages["load_table_s"] + stages["build_dataset_s"]
        after = meta["counts"]["after_k_core"]
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**20

        print(f"threads     : {args.threads or 'default'} (of {os.cpu_count()} cores)")
        print(f"events      : {n:,} raw -> {after['events']:,} after 5-core "
              f"({after['users']:,} users, {after['items']:,} items)")
        print(f"import      : {stages['import_s']:8.2f} s")
        print(f"load_table  : {stages['load_table_s']:8.2f} s  "
              f"({n / stages['load_table_s']:,.0f} events/s)")
        print(f"build_data  : {stages['build_dataset_s']:8.2f} s  "
              f"({n / stages['build_dataset_s']:,.0f} events/s)")
        print(f"prepare     : {prep:8.2f} s  ({n / prep:,.0f} events/s, load + build)")
        print(f"child wall  : {wall:8.2f} s  (interpreter start and imports included)")
        print(f"peak RSS    : {_rss_mib(peak):8.1f} MiB  (child; after load_table: "
              f"{_rss_mib(stages['rss_after_load']):.1f} MiB)")
        unit = 1 if sys.platform == "darwin" else 1024
        print(f"bytes/event : {(peak - stages['rss_after_import']) * unit / n:8.1f}  "
              f"((peak RSS - RSS after imports {_rss_mib(stages['rss_after_import']):.1f} MiB) "
              f"/ raw events)")
        print(f"output      : {out} ({size:.1f} MiB)")
    finally:
        if args.keep:
            print(f"kept        : {work}")
        else:
            shutil.rmtree(out, ignore_errors=True)
            if fresh:
                shutil.rmtree(work, ignore_errors=True)
            elif not args.reuse:
                raw_path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
