"""Approximate nearest-neighbour index over item vectors (Faiss, inner product).

Item id 0 is padding and is never indexed: rows 1..N-1 of an (N, D) item matrix are added, so
Faiss position ``p`` is item ``p + 1``. Small catalogues get exact search (``IndexFlatIP``),
large ones an approximate index: an inverted file (``IndexIVFFlat``: k-means lists, ``nprobe``
of them scanned per query, nprobe tuned to a recall target at build) by default, or HNSW
(``IndexHNSWFlat``), both inner product. On the 1M-item serving benchmark IVF built in 19 s
against HNSW's 521 s and reached recall@50 0.9997 at nprobe 16 in 0.4 ms for 4 queries
(bench/serve.py; clustered synthetic vectors); on the books preset's 240k trained item vectors
HNSW (M 32, efSearch 128) took 5.3 ms for 4 queries at recall@50 0.938 (bench/scale.py).

Shapes: ``N`` item id space (padding included), ``D`` dim, ``Q`` queries, ``m`` results per query.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import atomic_path

KINDS = ("auto", "exact", "hnsw", "ivf")
DEFAULT_NPROBE = 16  # an IVF index built without tuning


@dataclass
class IndexConfig:
    """Which index to build and how many threads search uses."""

    kind: str = "auto"  # auto | exact | hnsw | ivf
    hnsw_above: int = 50_000  # auto: exact search up to this many real items, `approximate` above
    approximate: str = "ivf"  # what auto means above the threshold: ivf | hnsw
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    ivf_nlist: int = 0  # inverted lists; 0 = about 4 sqrt(items)
    # lists scanned per query; 0 = the index's own: tuned at `mirec index build` to reach
    # target_recall (saved in the file), DEFAULT_NPROBE for an index built without tuning
    ivf_nprobe: int = 0
    # One thread by default: on a 2-core machine under load, two OpenMP threads turned 1-2 ms
    # searches into 8-20 ms stalls.
    threads: int = 1
    # Building (k-means, HNSW's graph) is a one-off batch job: every core by default (0)
    build_threads: int = 0
    # auto builds IVF above this many items even where `approximate` is hnsw: HNSW's build took
    # 521 s at 1M items against IVF's 19 s (module docstring)
    ivf_above: int = 500_000
    # recall@50 per recommendation (max over interests) against exact that tuning nprobe aims at
    target_recall: float = 0.95

    def resolved_kind(self, num_real_items: int) -> str:
        """``exact``, ``hnsw`` or ``ivf``: what ``auto`` means for a catalogue of this size."""
        if self.kind != "auto":
            return self.kind
        if num_real_items <= self.hnsw_above:
            return "exact"
        return "ivf" if num_real_items > self.ivf_above else self.approximate

    def nlist(self, num_real_items: int) -> int:
        """Inverted lists for ``ivf``: the configured number, or about 4 sqrt(N), never more
        than N / 39 (k-means wants >= 39 training points per centroid)."""
        if self.ivf_nlist:
            return self.ivf_nlist
        return max(1, min(int(4 * num_real_items**0.5), num_real_items // 39))

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise MirecConfigError(f"index.kind: expected one of {list(KINDS)}, got {self.kind!r}")
        if self.approximate not in ("hnsw", "ivf"):
            raise MirecConfigError(f"index.approximate: expected hnsw or ivf, got {self.approximate!r}")
        if self.ivf_nlist < 0 or self.ivf_nprobe < 0:
            raise MirecConfigError(f"index.ivf_nlist/ivf_nprobe: need nlist >= 0 and nprobe >= 0, "
                                   f"got {self.ivf_nlist}, {self.ivf_nprobe}")
        if self.hnsw_above < 0:
            raise MirecConfigError(f"index.hnsw_above: must be >= 0, got {self.hnsw_above}")
        if self.hnsw_m < 2:
            raise MirecConfigError(f"index.hnsw_m: must be >= 2, got {self.hnsw_m}")
        if self.ef_construction < 1:
            raise MirecConfigError(f"index.ef_construction: must be >= 1, got {self.ef_construction}")
        if self.ef_search < 1:
            raise MirecConfigError(f"index.ef_search: must be >= 1, got {self.ef_search}")
        if self.threads < 1:
            raise MirecConfigError(f"index.threads: must be >= 1, got {self.threads}")
        if self.build_threads < 0:
            raise MirecConfigError(f"index.build_threads: must be >= 0 (0 = every core), "
                                   f"got {self.build_threads}")
        if not 0 < self.target_recall <= 1:
            raise MirecConfigError(f"index.target_recall: must be in (0, 1], got {self.target_recall}")


def _as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """C-contiguous float32 (rows, D) view or copy of ``x``; wrong rank or dim raises naming both."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise MirecDataError(f"{name}: expected a 2-d (rows, D) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise MirecDataError(f"{name}: dim {x.shape[1]} does not match the index dim {dim}")
    return x


class ItemIndex:
    """A Faiss inner-product index over items 1..N-1 that returns item ids (never padding 0)."""

    def __init__(self, index: faiss.Index, cfg: IndexConfig) -> None:
        self.index = index
        self.cfg = cfg
        # search-time settings: the config wins over the file
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = cfg.ef_search
        if isinstance(index, faiss.IndexIVFFlat) and cfg.ivf_nprobe:
            index.nprobe = cfg.ivf_nprobe

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: IndexConfig) -> ItemIndex:
        """Index rows 1..N-1 of ``vectors``, an (N, D) matrix whose row 0 is padding.

        ``vectors`` should be C-contiguous float32; anything else is copied into that layout.
        """
        cfg.validate()
        vectors = _as_matrix(vectors, "item vectors")
        if vectors.shape[0] < 1:
            raise MirecDataError("item vectors: need at least the padding row 0, got 0 rows")
        items = vectors[1:]  # (N-1, D): padding row 0 is never indexed
        d = vectors.shape[1]
        kind = cfg.resolved_kind(len(items))
        faiss.omp_set_num_threads(cfg.build_threads or os.cpu_count() or 1)  # search sets cfg.threads
        if kind == "exact":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
        else:
            nlist = cfg.nlist(len(items))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on a fixed-seed sample of 64 points per list (all items when fewer)
            sample = np.random.default_rng(0).permutation(len(items))[: 64 * nlist]
            index.train(items[np.sort(sample)])
            index.nprobe = cfg.ivf_nprobe or DEFAULT_NPROBE
        index.add(items)
        return cls(index, cfg)

    @property
    def kind(self) -> str:
        """``"exact"``, ``"hnsw"`` or ``"ivf"``."""
        if isinstance(self.index, faiss.IndexHNSWFlat):
            return "hnsw"
        return "ivf" if isinstance(self.index, faiss.IndexIVFFlat) else "exact"

    @property
    def num_items(self) -> int:
        """Size of the item id space, padding included (the N of the matrix it was built from)."""
        return int(self.index.ntotal) + 1

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``m`` items by inner product for each query.

        Parameters
        ----------
        queries : (Q, D) array, C-contiguous float32 (anything else is copied into that layout).
        m : results per query, >= 1.

        Returns
        -------
        scores : (Q, m) float32, best first; ``-inf`` where fewer than ``m`` items were found.
        ids : (Q, m) int64 item ids in 1..N-1; ``-1`` where fewer than ``m`` items were found.
        """
        if m < 1:
            raise ValueError(f"m: must be >= 1, got {m}")
        queries = _as_matrix(queries, "queries", self.dim)
        # Faiss's thread count is process-wide state; setting it per call is cheap and makes the
        # configured count hold even when other code changed it.
        faiss.omp_set_num_threads(self.cfg.threads)
        scores, pos = self.index.search(queries, m)  # (Q, m), (Q, m)
        missing = pos < 0
        ids = np.where(missing, -1, pos + 1).astype(np.int64)
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return scores, ids

    def save(self, path: str | Path) -> None:
        """Write the Faiss index to ``path`` atomically; kind and size are read back from it."""
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: str | Path, cfg: IndexConfig) -> ItemIndex:
        """Read an index written by :meth:`save`; a missing or corrupt file raises MirecDataError."""
        cfg.validate()
        path = Path(path)
        if not path.is_file():
            raise MirecDataError(f"{path}: index file not found")
        try:
            # read_index already returns the concrete class and owns it; wrapping it in
            # downcast_index would leave a non-owning proxy to a freed object.
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MirecDataError(f"{path}: not a readable Faiss index ({first})") from e
        if not isinstance(index, (faiss.IndexFlatIP, faiss.IndexHNSWFlat, faiss.IndexIVFFlat)):
            raise MirecDataError(f"{path}: expected IndexFlatIP, IndexHNSWFlat or IndexIVFFlat, got "
                                 f"{type(index).__name__}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise MirecDataError(f"{path}: index metric is not inner product")
        return cls(index, cfg)


def recall_at(index: ItemIndex, exact_index: ItemIndex, queries: np.ndarray, m: int) -> float:
    """Mean over queries of |approx top-m ∩ exact top-m| / m.

    Where the catalogue has fewer than ``m`` items the denominator is the number the exact index
    returned, so a complete answer still scores 1.
    """
    _, approx = index.search(queries, m)  # (Q, m)
    _, exact = exact_index.search(queries, m)  # (Q, m)
    q = np.arange(len(exact), dtype=np.int64)[:, None]
    # One isin over (query, item) keys instead of a per-query intersection.
    span = max(index.num_items, exact_index.num_items) + 1
    keys_a = np.where(approx >= 0, q * span + approx, -1)
    keys_e = np.where(exact >= 0, q * span + exact, -2)
    found = np.isin(keys_e, keys_a).sum(1)  # (Q,)
    total = np.maximum((exact >= 0).sum(1), 1)
    return float(np.mean(found / total)) if len(exact) else 0.0


def merged_topm(index: ItemIndex, queries: np.ndarray, owner: np.ndarray, m: int) -> list[np.ndarray]:
    """One recommendation per user from its interest queries, as serving forms it: each query's
    top ``m``, merged by max over the user's interests, top ``m`` ids best first.
    ``queries`` (Q, D), ``owner`` (Q,) the user of each query (grouped)."""
    scores, ids = index.search(queries, m)  # (Q, m) each
    out = []
    for u in np.unique(owner):
        s, i = scores[owner == u].ravel(), ids[owner == u].ravel()
        order = np.argsort(-s, kind="stable")
        i = i[order][i[order] >= 0]
        _, first = np.unique(i, return_index=True)  # an item's best score is its first place
        out.append(i[np.sort(first)][:m])
    return out


def recommend_recall(index: ItemIndex, exact: ItemIndex, queries: np.ndarray, owner: np.ndarray,
                     m: int = 50) -> float:
    """Mean over users of |approx top-m ∩ exact top-m| / |exact top-m| for one recommendation
    (max over the user's interests). The exact max-over-interests top m is the merge of each
    interest's exact top m: an item in it is in the top m of the interest that gives its max."""
    return list_recall(merged_topm(index, queries, owner, m), merged_topm(exact, queries, owner, m))


def list_recall(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Mean over users of |got ∩ want| / |want|."""
    return float(np.mean([np.isin(w, g).sum() / max(len(w), 1) for g, w in zip(got, want)]))


def tune_nprobe(index: ItemIndex, exact: ItemIndex, queries: np.ndarray, owner: np.ndarray,
                target: float, m: int = 50) -> tuple[int, float]:
    """Set an IVF index's nprobe to the smallest power of two whose recommendation recall@m
    (:func:`recommend_recall`) reaches ``target`` (all lists at worst); returns (nprobe, recall)."""
    ivf = index.index
    want = merged_topm(exact, queries, owner, m)  # searched once
    nprobe, recall = 1, 0.0
    while True:
        ivf.nprobe = min(nprobe, ivf.nlist)
        recall = list_recall(merged_topm(index, queries, owner, m), want)
        if recall >= target or ivf.nprobe == ivf.nlist:
            return int(ivf.nprobe), recall
        nprobe *= 2
