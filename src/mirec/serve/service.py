"""Glue between a bundle and its index: open (load or build) and build-with-a-report.

An index saved by ``mirec index build`` lives in the bundle as ``index-<kind>.faiss``, its
checksum in the manifest; serving loads it when present (HNSW over a million items takes minutes
to build: build it offline), after checking the checksum, and builds it in memory otherwise.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mirec.serve.bundle import Bundle, add_checksum, verify_checksum
from mirec.serve.index import IndexConfig, ItemIndex, recall_at, recommend_recall, tune_nprobe
from mirec.serve.store import Store, open_store

if TYPE_CHECKING:
    from mirec.serve.recommender import Recommender

log = logging.getLogger("mirec")


def index_path(bundle: Bundle, kind: str) -> Path:
    return bundle.path / f"index-{kind}.faiss"


def open_recommender(bundle: str | Path, kind: str = "auto", hnsw_above: int = 50_000,
                     store: str | Path | None = None, ranker: str | Path | None = None,
                     keep_events: int | None = None, create_store: bool = True,
                     unavailable: str | Path | None = None, new_items: str | Path | None = None,
                     events: Store | None = None) -> Recommender:
    """Bundle [+ new items] + index (saved one if present) + event store [+ ranking run]
    [+ unavailable items] -> a Recommender. ``store``: a SQLite file or a ``postgresql://``
    URL (:func:`mirec.serve.store.open_store`); ``keep_events``: per-user retention in it;
    ``create_store=False``: the store must exist (reading only); ``events``: an open store to
    use instead of ``store`` (a reload keeps the server's). The options are kept on the
    recommender (``rec.options``) so that :func:`reopen` can load a new bundle the same way."""
    from mirec.serve.bundle import load_bundle
    from mirec.serve.catalogue import add_new_items, read_unavailable
    from mirec.serve.pipeline import RankStage
    from mirec.serve.recommender import Recommender

    options = dict(kind=kind, hnsw_above=hnsw_above, store=store, ranker=ranker,
                   keep_events=keep_events, create_store=create_store, unavailable=unavailable,
                   new_items=new_items)
    cfg = IndexConfig(kind=kind, hnsw_above=hnsw_above)
    cfg.validate()
    b = load_bundle(bundle)
    if new_items:
        b = add_new_items(b, new_items)
    if events is None and store:
        events = open_store(store, keep_events, create_store)
    stage = RankStage.from_run(ranker, b) if ranker else None
    blocked = read_unavailable(unavailable, b) if unavailable else None
    rec = Recommender(b, open_index(b, cfg), events, ranker=stage, unavailable=blocked)
    rec.options = options
    return rec


def open_index(bundle: Bundle, cfg: IndexConfig) -> ItemIndex:
    """The saved index of the bundle when present (checksum verified), else built in memory.
    With new items the saved index lacks them: it is built in memory."""
    kind = cfg.resolved_kind(bundle.num_items - 1)
    path = index_path(bundle, kind)
    if path.exists() and bundle.new_from is None:
        verify_checksum(bundle, path.name, f"rebuild it with `mirec index build {bundle.path} "
                                           f"--index {kind}` (or delete it)")
        return ItemIndex.load(path, cfg)
    return ItemIndex.build(bundle.item_vectors, replace(cfg, kind=kind))


def reopen(rec: Recommender, bundle: str | Path | None = None) -> Recommender:
    """A new recommender for ``bundle`` (default: the same path again, e.g. after a new export)
    with ``rec``'s options and event store; every file is verified before anything is returned."""
    path = bundle if bundle is not None else rec.bundle.path
    if rec.options is None:  # built by hand (tests, benchmarks): the index kind and ranker only
        opts = {"kind": rec.index.kind, "ranker": getattr(rec.ranker, "run_dir", None)}
    else:
        opts = dict(rec.options)
    rec2 = open_recommender(path, **opts, events=rec.store)
    rec2.cfg = rec.cfg
    return rec2


class Live:
    """The recommender being served, swapped whole by :meth:`reload` (one reference
    assignment: a request that already took ``live.rec`` finishes on the old one)."""

    def __init__(self, rec: Recommender) -> None:
        self.rec = rec
        self.loaded_at = time.time()  # when ``rec`` began to be served (epoch seconds)
        self.lock = threading.Lock()  # one reload at a time
        self.on_swap: list = []  # callables(rec) run after a successful swap (metrics)

    def load(self, bundle: str | Path | None = None) -> Recommender:
        """Load and verify ``bundle`` (default: the served path) with the served options; nothing
        is swapped."""
        return reopen(self.rec, bundle)

    def swap(self, new: Recommender) -> None:
        """Serve ``new`` from now on (requests already running finish on the old one)."""
        self.rec, self.loaded_at = new, time.time()
        for f in self.on_swap:
            f(new)
        log.info("reloaded %s (version %s)", new.bundle.path, new.bundle.version)

    def reload(self, bundle: str | Path | None = None) -> Recommender:
        """Load and verify, then swap; on any error the old recommender stays and it raises."""
        with self.lock:
            new = self.load(bundle)
            self.swap(new)
        return new


def reload_on_sighup(live: Live) -> None:
    """SIGHUP reloads the bundle from its path in a background thread (a failed load is logged
    and the old bundle stays). Only from the main thread, where Python allows handlers."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return

    def reload() -> None:
        try:
            live.reload()
        except Exception as e:  # noqa: BLE001  any failure keeps the old bundle; say why
            log.error("reload on SIGHUP failed, still serving %s: %s", live.rec.bundle.path, e)

    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload, daemon=True).start())


@torch.no_grad()
def user_queries(bundle: Bundle, num_users: int, seed: int = 0, owners: bool = False):
    """Live interest vectors of up to ``num_users`` random known users: (Q, D) float32 (and,
    with ``owners``, the (Q,) user number of each row)."""
    from mirec.serve.recommender import Recommender

    users = sorted(bundle.user_histories)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(users), size=min(num_users, len(users)), replace=False)
    rec = Recommender(bundle, index=None)  # only the tower is used
    qs = []
    for p in pick:
        V, live, _, _ = rec.interests(bundle.user_histories[users[p]].tolist())
        qs.append(V[live])
    q = np.ascontiguousarray(np.concatenate(qs), dtype=np.float32)
    return (q, np.repeat(np.arange(len(qs)), [len(x) for x in qs])) if owners else q


def build_index_report(bundle: Bundle, cfg: IndexConfig, num_users: int = 200,
                       m: int = 50) -> dict[str, Any]:
    """Build, save into the bundle, and measure: build seconds, bytes, recall@m vs exact (per
    interest query, and per recommendation: max over a user's interests). An IVF index without
    a configured nprobe gets the smallest one reaching ``cfg.target_recall`` per recommendation
    on these users, saved in the file."""
    kind = cfg.resolved_kind(bundle.num_items - 1)
    t = time.perf_counter()
    index = ItemIndex.build(bundle.item_vectors, replace(cfg, kind=kind))
    build_s = time.perf_counter() - t
    queries, owner = user_queries(bundle, num_users, owners=True)
    exact = index if kind == "exact" else ItemIndex.build(bundle.item_vectors, replace(cfg, kind="exact"))
    nprobe = None
    if kind == "ivf":
        nprobe = int(index.index.nprobe)
        if not cfg.ivf_nprobe:
            nprobe, _ = tune_nprobe(index, exact, queries, owner, cfg.target_recall, m)
    path = index_path(bundle, kind)
    index.save(path)
    add_checksum(bundle, path.name)
    return {"kind": kind, "items": bundle.num_items - 1, "build_s": build_s,
            "bytes": path.stat().st_size, "recall@50": recall_at(index, exact, queries, m),
            "recommend_recall@50": recommend_recall(index, exact, queries, owner, m),
            "nlist": int(index.index.nlist) if kind == "ivf" else None, "nprobe": nprobe,
            "queries": len(queries), "users": int(len(np.unique(owner))), "path": str(path)}
