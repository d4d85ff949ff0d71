"""The served recommender over time: open, reopen, swap on reload; and the index build report.

Opening reads one way (:meth:`mirec.serve.recommender.Recommender.open`): ``load_bundle``
validates the whole bundle once, then the index, ranker and store are opened and the
recommender is built; nothing here is swapped before all of that succeeded. An index saved by
``mirec index build`` lives in the bundle as ``index-<kind>.faiss``, its checksum in the
manifest; serving loads it when present (HNSW over a million items takes minutes to build: build
it offline), after checking it, and builds it in memory otherwise.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirec.errors import MirecDataError
from mirec.serve.bundle import Bundle, add_checksum, index_path
from mirec.serve.index import IndexConfig, ItemIndex, recall_at, recommend_recall, tune_nprobe
from mirec.serve.recommender import Recommender
from mirec.serve.store import Store

log = logging.getLogger("mirec")


def open_recommender(bundle: str | Path, kind: str = "auto", hnsw_above: int = 50_000,
                     store: str | Path | None = None, ranker: str | Path | None = None,
                     keep_events: int | None = None, create_store: bool = True,
                     unavailable: str | Path | None = None, new_items: str | Path | None = None,
                     events: Store | None = None) -> Recommender:
    """Bundle [+ new items] + index (saved one if present) + event store [+ ranking run]
    [+ unavailable items] -> a Recommender: :meth:`Recommender.open` with the options in the
    order the CLI and the HTTP workers give them (the option names are the keys of
    ``rec.options``, which :func:`reopen` passes back here). ``store``: a SQLite file or a
    ``postgresql://`` URL (:func:`mirec.serve.store.open_store`)."""
    return Recommender.open(bundle, kind, store, ranker, hnsw_above, unavailable, new_items,
                            keep_events=keep_events, create_store=create_store, events=events)


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


RELOAD_TIMEOUT_S = 1800.0  # a load never takes this long (a 1.7M-item HNSW build takes ~20 min)


class Live:
    """The recommender being served, swapped whole by :meth:`reload` (one reference
    assignment: a request that already took ``live.rec`` finishes on the old one).

    A reload loads in a helper thread and waits for it at most ``reload_timeout`` seconds: a
    load that never ends (a hung network mount, a FIFO given as the ranker's checkpoint or the
    unavailable-items file) is refused after that and frees the reload lock; its thread is
    abandoned and whatever it loads is never served. Bundle files cannot block: each must be a
    regular file before it is opened (:func:`mirec.serve.bundle.open_regular`)."""

    def __init__(self, rec: Recommender, reload_timeout: float = RELOAD_TIMEOUT_S) -> None:
        self.rec = rec
        self.loaded_at = time.time()  # when ``rec`` began to be served (epoch seconds)
        self.lock = threading.Lock()  # one reload at a time
        self.on_swap: list = []  # callables(rec) run after a successful swap (metrics)
        self.reload_timeout = reload_timeout

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

    def load(self, bundle: str | Path | None = None) -> Recommender:
        """:func:`reopen` within ``reload_timeout`` seconds, or MirecDataError naming the path."""
        done: dict[str, Any] = {}

        def work() -> None:
            try:
                done["rec"] = reopen(self.rec, bundle)
            except BaseException as e:  # noqa: BLE001  handed to the caller below
                done["error"] = e

        worker = threading.Thread(target=work, name="mirec-reload", daemon=True)
        worker.start()
        worker.join(self.reload_timeout)
        if worker.is_alive():
            raise MirecDataError(f"{bundle or self.rec.bundle.path}: loading took over "
                                 f"{self.reload_timeout:g} s (a file that never ends? a hung "
                                 f"mount?); reload abandoned, still serving {self.rec.bundle.path}")
        if "error" in done:
            raise done["error"]
        return done["rec"]


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
