"""The model bundle: everything serving needs, in one self-contained directory.

``mirec export runs/<name> --out <bundle>`` writes::

    manifest.json        format, versions, model name and config, sizes, SHA-256 of every file
    tower.pt             the user tower's weights (a state dict; the code is mirec's model class)
    item_vectors.npy     (N, D) float32 vectors the index searches (row 0 = padding, zero);
                         unit length when the model was trained with cosine scores
    items.parquet        item (dense id), raw_id, title, categories
    users.parquet        raw_id, history (the last ``HISTORY_KEEP`` dense item ids, oldest first)
    index-<kind>.faiss   optional, from ``mirec index build``: its checksum is added to the
                         manifest, and serving refuses an index whose checksum differs

The directory is built in a temporary sibling and renamed into place, so a crash leaves no
half-written bundle. :func:`load_bundle` verifies every checksum first and names the file at
fault.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch

import mirec
from mirec.config import from_dict, to_dict
from mirec.data.dataset import Dataset, category_csr
from mirec.errors import MirecDataError
from mirec.io import BUNDLE, atomic_dir, atomic_write_json, sha256_file
from mirec.models.base import item_table
from mirec.runs import RunConfig, build_model, load_run

FORMAT, FORMAT_VERSION = "mirec.bundle", 1
FILES = ("tower.pt", "item_vectors.npy", "items.parquet", "users.parquet")
HISTORY_KEEP = 200  # per known user: enough for the tower (max_len) and history exclusion


class UserHistories(Mapping[str, np.ndarray]):
    """Raw user id -> that user's kept history, (<= HISTORY_KEEP,) int64 dense item ids.

    Held as one flat int32 array with offsets (CSR), not an array per user: at a million users
    that is 4 bytes an event and one dict entry a user, and opening the bundle builds no Python
    object per event."""

    def __init__(self, raw_ids: list[str], indptr: np.ndarray, items: np.ndarray) -> None:
        self.row = {u: i for i, u in enumerate(raw_ids)}
        self.indptr, self.flat = indptr, items  # (U + 1,) int64, (E,) int32: all histories

    def __getitem__(self, user: str) -> np.ndarray:
        i = self.row[user]
        return self.flat[self.indptr[i]:self.indptr[i + 1]].astype(np.int64)

    def __iter__(self) -> Iterator[str]:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def from_frame(cls, users: pl.DataFrame) -> UserHistories:
        """From ``users.parquet``'s columns: raw_id, history (a list of dense ids per user)."""
        hist = users.get_column("history").to_arrow()
        hist = hist.combine_chunks() if isinstance(hist, pa.ChunkedArray) else hist
        lengths = pc.list_value_length(hist).fill_null(0).to_numpy(zero_copy_only=False)
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = pc.list_flatten(hist).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        return cls(users.get_column("raw_id").cast(pl.String).to_list(), indptr, items)


@dataclass
class Bundle:
    """A loaded bundle. ``N`` item ids including padding 0, ``D`` vector size."""

    path: Path
    manifest: dict[str, Any]
    config: RunConfig
    model: torch.nn.Module  # eval mode
    item_vectors: np.ndarray  # (N, D) float32
    item_ids: dict[str, int]  # raw id -> dense id
    user_histories: UserHistories  # raw user id -> (<= HISTORY_KEEP,) dense item ids
    category_indptr: np.ndarray  # (N + 1,) CSR over items -> category ids
    category_ids: np.ndarray
    category_names: list[str]
    item_raw: list[str]  # dense id -> raw id, [0] = "" (padding); plain lists: O(1) lookups
    item_title: list[str]
    item_categories: list[list[str]]
    new_from: int | None = None  # dense ids >= this were added after training (serve/catalogue.py)

    @property
    def trained_items(self) -> int:
        """Item ids below this have a row in the tower's embedding table."""
        return self.new_from or self.num_items

    def is_new(self, item: int) -> bool:
        return self.new_from is not None and item >= self.new_from

    @property
    def version(self) -> str:
        """First 12 hex digits of the SHA-256 of the manifest (it lists every file's checksum)."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def num_items(self) -> int:
        return self.item_vectors.shape[0]

    @property
    def max_len(self) -> int:
        return self.config.split.max_len

    @property
    def cosine(self) -> bool:
        return self.config.train.cosine

    def raw_id(self, item: int) -> str:
        return self.item_raw[item]

    def item_info(self, item: int) -> dict[str, Any]:
        return {"item_id": self.item_raw[item], "title": self.item_title[item],
                "categories": list(self.item_categories[item])}


def item_vectors(model: torch.nn.Module, cosine: bool) -> np.ndarray:
    """The (N, D) float32 vectors the index holds: the item table, unit length under cosine."""
    return np.ascontiguousarray(item_table(model, cosine).numpy(), dtype=np.float32)


def bundle_from_run(run_dir: str | Path, data: str | Path | None = None) -> tuple[Bundle, Dataset]:
    """The bundle a run would export, in memory (for reports), and the run's data set."""
    run = load_run(run_dir, data)
    cfg, ds, model = run.config, run.dataset, run.model
    manifest = {"model": cfg.model, "config": to_dict(cfg), "source_run": str(run.checkpoint_path),
                "dataset_checksum": ds.checksum}
    return assemble(Path(run_dir), manifest, cfg, model, item_vectors(model, cfg.train.cosine),
                     ds.items, _user_histories(ds)), ds


def export_bundle(run_dir: str | Path, out: str | Path, data: str | Path | None = None) -> Path:
    """Write the bundle of a finished run (its ``best.pt``; the first seed of a multi-seed run)."""
    run = load_run(run_dir, data)
    cfg, ds, model, ckpt_path = run.config, run.dataset, run.model, run.checkpoint_path
    out = Path(out)
    with atomic_dir(out, BUNDLE) as tmp:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        (tmp / "tower.pt").write_bytes(buf.getvalue())
        np.save(tmp / "item_vectors.npy", item_vectors(model, cfg.train.cosine))
        ds.items.select("item", "raw_id", "title", "categories").write_parquet(tmp / "items.parquet")
        _user_histories(ds).write_parquet(tmp / "users.parquet")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {"mirec": mirec.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "model": cfg.model, "config": to_dict(cfg), "num_items": ds.num_items,
            "dim": int(model.item_embeddings().shape[1]), "source_run": str(ckpt_path),
            "best_epoch": run.checkpoint.get("epoch"), "dataset": str(ds.path),
            "dataset_checksum": ds.checksum,
            "checksums": {name: sha256_file(tmp / name) for name in FILES},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _user_histories(ds: Dataset) -> pl.DataFrame:
    """Each user's last HISTORY_KEEP items (dense ids, oldest first), gathered in one pass."""
    ends = np.asarray(ds.offsets[1:], dtype=np.int64)
    starts = np.maximum(np.asarray(ds.offsets[:-1], dtype=np.int64), ends - HISTORY_KEEP)
    lengths = ends - starts
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    pos = np.arange(indptr[-1]) + np.repeat(starts - indptr[:-1], lengths)  # event positions
    hist = pa.LargeListArray.from_arrays(pa.array(indptr), pa.array(ds.item[pos].astype(np.int32)))
    return pl.DataFrame({"raw_id": ds.users["raw_id"].cast(pl.String),
                         "history": pl.from_arrow(hist).cast(pl.List(pl.Int32))})


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle directory; every error names the file at fault."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise MirecDataError(f"{mpath}: missing; {path} is not a mirec bundle "
                             f"(make one with `mirec export`)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise MirecDataError(f"{mpath}: invalid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise MirecDataError(f"{mpath}: field 'format' is not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise MirecDataError(f"{mpath}: format_version {manifest.get('format_version')} is not "
                             f"{FORMAT_VERSION}; export the bundle again with this mirec")
    for name in FILES:
        f = path / name
        if not f.exists():
            raise MirecDataError(f"{f}: missing from the bundle")
        if sha256_file(f) != manifest["checksums"].get(name):
            raise MirecDataError(f"{f}: checksum does not match manifest.json (file changed or "
                                 f"corrupt); export the bundle again")
    cfg = from_dict(RunConfig, manifest["config"])
    model = build_model(cfg, manifest["num_items"])
    try:
        model.load_state_dict(torch.load(path / "tower.pt", map_location="cpu", weights_only=True))
    except Exception as e:  # a foreign state dict or a different model version
        raise MirecDataError(f"{path / 'tower.pt'}: does not fit model {cfg.model!r} ({e})") from None
    model.eval()
    return assemble(path, manifest, cfg, model, np.load(path / "item_vectors.npy"),
                     pl.read_parquet(path / "items.parquet"), pl.read_parquet(path / "users.parquet"))


def add_checksum(bundle: Bundle, name: str) -> None:
    """Record the SHA-256 of a file added to the bundle (an index) in manifest.json, atomically."""
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["checksums"][name] = sha256_file(bundle.path / name)
    atomic_write_json(bundle.path / "manifest.json", manifest)
    bundle.manifest = manifest


def verify_checksum(bundle: Bundle, name: str, remedy: str) -> None:
    """Refuse a bundle file whose checksum is not the one in the manifest (or is not listed)."""
    want = bundle.manifest.get("checksums", {}).get(name)
    f = bundle.path / name
    if want is None:
        raise MirecDataError(f"{f}: not listed in manifest.json (not made by `mirec index build` "
                             f"of this bundle); {remedy}")
    if sha256_file(f) != want:
        raise MirecDataError(f"{f}: checksum does not match manifest.json (file changed or "
                             f"corrupt); {remedy}")


def assemble(path: Path, manifest: dict[str, Any], cfg: RunConfig, model: torch.nn.Module,
              vectors: np.ndarray, items: pl.DataFrame, users: pl.DataFrame) -> Bundle:
    """A Bundle from its parts: ``items`` (item, raw_id, title, categories), ``users`` (raw_id,
    history). Used by loading, by reports, and by benchmarks that make synthetic bundles."""
    items = items.sort("item")
    histories = UserHistories.from_frame(users)
    raw = [""] + items["raw_id"].cast(pl.String).to_list()
    titles = [t or r for t, r in zip([""] + items["title"].to_list(), raw)]
    cats = [[]] + [c or [] for c in items["categories"].to_list()]
    if items["item"].to_list() != list(range(1, len(raw))):
        raise MirecDataError(f"{path}: items are not numbered 1..{len(raw) - 1}")
    item_ids = {r: i for i, r in enumerate(raw) if i}
    indptr, cat_ids, names = category_csr(items)
    return Bundle(path, manifest, cfg, model, vectors, item_ids, histories, indptr, cat_ids,
                  names, raw, titles, cats)
