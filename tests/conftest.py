"""Shared fixtures: small prepared data sets built from in-memory logs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from mirec.data.dataset import load_dataset
from mirec.data.prepare import PrepareConfig, RawLog, build_dataset


def make_dataset(path, users, items, ts, categories=None, k_core=1):
    """Prepare a data set from parallel lists of raw user ids, item ids and times."""
    ev = pl.DataFrame({"user": users, "item": items, "ts": ts},
                      schema={"user": pl.Int64, "item": pl.Int64, "ts": pl.Int64})
    meta = None
    if categories is not None:
        meta = pl.DataFrame({"item": list(categories), "title": [f"t{i}" for i in categories],
                             "categories": list(categories.values())},
                            schema={"item": pl.Int64, "title": pl.String,
                                    "categories": pl.List(pl.String)})
    build_dataset(RawLog(ev, {"name": "test"}, items=meta), path, PrepareConfig(k_core=k_core))
    return load_dataset(path)


@pytest.fixture
def random_dataset(tmp_path):
    """200 users with 6..30 events over 60 items in 5 categories, fixed seed."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(200):
        n = int(rng.integers(6, 31))
        users += [u] * n
        items += rng.choice(np.arange(1, 61), size=n, replace=False).tolist()
        ts += sorted(rng.integers(0, 10_000, size=n).tolist())
    cats = {i: [f"c{i % 5}"] for i in range(1, 61)}
    return make_dataset(tmp_path / "ds", users, items, ts, cats)


def prepare_small(raw, tmp_path):
    """Prepare a loader's RawLog with k-core 1 (tiny test files) and load it."""
    return load_dataset(build_dataset(raw, tmp_path / "ds", PrepareConfig(k_core=1)))


def sequences(ds):
    """Raw user id -> [(raw item id, ts, rating)] in stored order."""
    out = {}
    for u in range(ds.num_users):
        lo, hi = ds.offsets[u], ds.offsets[u + 1]
        out[ds.users["raw_id"][u]] = [
            (ds.items["raw_id"][int(i) - 1], int(t), float(r))
            for i, t, r in zip(ds.item[lo:hi], ds.ts[lo:hi], ds.rating[lo:hi])
        ]
    return out


def left_pad(rows, length, fill=0):
    """Left-padded (hist, mask) tensors; ``fill`` is the id written at masked positions."""
    hist = torch.full((len(rows), length), fill, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            hist[b, -len(r):] = torch.tensor(r)
            mask[b, -len(r):] = True
    return hist, mask


def write_lines(path, lines):
    """A text file of ``lines``, newline-terminated."""
    path.write_text("\n".join(lines) + "\n")
    return path


def planted_comirec_run(root, seeds, epochs, seed):
    """A small planted log (150 users, 6 categories x 12 items) and ComiRec-SA (d 16, K 2)
    trained on it into ``root / "run"``; returns the data set's path."""
    from mirec.data.synth import SynthConfig, synth_dataset
    from mirec.experiment import train_seeds
    from mirec.runs import RunConfig, TrainConfig

    synth_dataset(SynthConfig(num_users=150, num_categories=6, items_per_category=12, max_interests=2,
                              stickiness=0.9, noise=0.0, min_len=8, mean_len=14, seed=seed),
                  root / "ds", progress=False)
    rc = RunConfig(model="comirec-sa", model_args={"dim": 16, "num_interests": 2},
                   train=TrainConfig(epochs=epochs, batch_size=128, lr=0.01, temperature=0.2,
                                     patience=epochs))
    train_seeds(rc, root / "ds", seeds, root / "run", progress=False)
    return root / "ds"


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server on loopback for the whole session (bench/pg.py), stopped
    at the end; the tests that use it skip, with the reason, where none can be started."""
    from bench import pg

    try:
        server = pg.start()
    except pg.Unavailable as e:
        pytest.skip(f"no PostgreSQL server could be started: {e}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.new_database()
