"""Glue between a bundle and its index: open (load or build) and build-with-a-report.

An index saved by ``mirec index build`` lives in the bundle as ``index-<kind>.faiss``, its
checksum in the manifest; serving loads it when present (HNSW over a million items takes minutes
to build: build it offline), after checking the checksum, and builds it in memory otherwise.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirec.serve.bundle import Bundle, add_checksum, verify_checksum
from mirec.serve.index import IndexConfig, ItemIndex, recall_at


def index_path(bundle: Bundle, kind: str) -> Path:
    return bundle.path / f"index-{kind}.faiss"


def open_index(bundle: Bundle, cfg: IndexConfig) -> ItemIndex:
    kind = cfg.resolved_kind(bundle.num_items - 1)
    path = index_path(bundle, kind)
    if path.exists():
        verify_checksum(bundle, path.name, f"rebuild it with `mirec index build {bundle.path} "
                                           f"--index {kind}` (or delete it)")
        return ItemIndex.load(path, cfg)
    return ItemIndex.build(bundle.item_vectors, replace(cfg, kind=kind))


def open_recommender(bundle: str | Path, kind: str = "auto", hnsw_above: int = 50_000,
                     store: str | Path | None = None, ranker: str | Path | None = None,
                     keep_events: int | None = None, create_store: bool = True):
    """Bundle + index (saved one if present) + event store [+ ranking run] -> a Recommender.
    ``keep_events``: per-user retention in the store; ``create_store=False``: the store must
    exist (reading only)."""
    from mirec.serve.bundle import load_bundle
    from mirec.serve.pipeline import RankStage
    from mirec.serve.recommender import Recommender
    from mirec.serve.store import EventStore

    cfg = IndexConfig(kind=kind, hnsw_above=hnsw_above)
    cfg.validate()
    b = load_bundle(bundle)
    events = EventStore(store, keep_events, create_store) if store else None
    stage = RankStage.from_run(ranker, b) if ranker else None
    return Recommender(b, open_index(b, cfg), events, ranker=stage)


@torch.no_grad()
def user_queries(bundle: Bundle, num_users: int, seed: int = 0) -> np.ndarray:
    """Live interest vectors of up to ``num_users`` random known users: (Q, D) float32."""
    from mirec.serve.recommender import Recommender

    users = sorted(bundle.user_histories)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(users), size=min(num_users, len(users)), replace=False)
    rec = Recommender(bundle, index=None)  # only the tower is used
    qs = []
    for p in pick:
        V, live, _, _ = rec.interests(bundle.user_histories[users[p]].tolist())
        qs.append(V[live])
    return np.ascontiguousarray(np.concatenate(qs), dtype=np.float32)


def build_index_report(bundle: Bundle, cfg: IndexConfig, num_users: int = 200,
                       m: int = 50) -> dict[str, Any]:
    """Build, save into the bundle, and measure: build seconds, bytes, recall@m vs exact."""
    kind = cfg.resolved_kind(bundle.num_items - 1)
    t = time.perf_counter()
    index = ItemIndex.build(bundle.item_vectors, replace(cfg, kind=kind))
    build_s = time.perf_counter() - t
    path = index_path(bundle, kind)
    index.save(path)
    add_checksum(bundle, path.name)
    queries = user_queries(bundle, num_users)
    exact = index if kind == "exact" else ItemIndex.build(bundle.item_vectors, replace(cfg, kind="exact"))
    return {"kind": kind, "items": bundle.num_items - 1, "build_s": build_s,
            "bytes": path.stat().st_size, "recall@50": recall_at(index, exact, queries, m),
            "queries": len(queries), "path": str(path)}
