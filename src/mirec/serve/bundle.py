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

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch

import mirec
from mirec.config import from_dict, to_dict
from mirec.data.dataset import Dataset, category_csr
from mirec.errors import MirecDataError, MirecError
from mirec.io import BUNDLE, atomic_dir, atomic_write_json, sha256_file
from mirec.models.base import item_table
from mirec.runs import RunConfig, build_model, load_run
from mirec.serve.index import IndexConfig, ItemIndex

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
    """Load a bundle directory, validated as a whole before anything is returned: the manifest's
    schema (:func:`read_manifest`), every file regular and matching its checksum, and each
    file's shape and types against the manifest and the other files (:func:`read_vectors`,
    :func:`read_items`, :func:`read_users`, :func:`read_tower`). Each file is opened once: its
    checksum and its content are read from the same open file. Every refusal is one
    :class:`MirecDataError` naming the file and the field."""
    path = Path(path)
    manifest = read_manifest(path / "manifest.json")
    n, d = manifest["num_items"], manifest["dim"]
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(open_regular(path / name)) for name in FILES}
        for name, f in files.items():
            check_digest(f, path / name, manifest["checksums"][name], "export the bundle again")
        vectors = read_vectors(files["item_vectors.npy"], path / "item_vectors.npy", n, d)
        items = read_items(files["items.parquet"], path / "items.parquet", n)
        users = read_users(files["users.parquet"], path / "users.parquet", n)
        cfg, model = read_tower(files["tower.pt"], path / "tower.pt", manifest, category_csr(items))
    return assemble(path, manifest, cfg, model, vectors, items, users)


# ---- validation: each reader refuses with one MirecDataError naming the file and the field ----


@contextlib.contextmanager
def open_regular(path: Path, missing: str = "missing from the bundle") -> Iterator[BinaryIO]:
    """``path`` opened for binary reading if it is a regular file. Anything else (a FIFO, a
    device, a directory) is refused before it is opened, and the open itself does not block, so
    no bundle file can make a load wait forever or read without end."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise MirecDataError(f"{path}: not a regular file (a FIFO, device or directory is "
                                 f"never read)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise MirecDataError(f"{path}: {missing}") from None
    except OSError as e:
        raise MirecDataError(f"{path}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the stat and the open
            raise MirecDataError(f"{path}: not a regular file (a FIFO, device or directory is "
                                 f"never read)")
        yield f


def check_digest(f: BinaryIO, path: Path, want: str, remedy: str) -> None:
    """Refuse an open file whose SHA-256 is not ``want``; leaves it at its start for reading."""
    if hashlib.file_digest(f, "sha256").hexdigest() != want:
        raise MirecDataError(f"{path}: checksum does not match manifest.json (file changed or "
                             f"corrupt); {remedy}")
    f.seek(0)


def _show(value: Any) -> str:
    """A value for a message: its repr, cut to 80 characters."""
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def _first_line(e: BaseException) -> str:
    """An exception's first line (its type when it has no message)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


# field -> (test, what it must be); FILES must each have a checksum (checked apart)
MANIFEST_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (lambda v: v == FORMAT, repr(FORMAT)),
    "format_version": (lambda v: _is_int(v, 0), "an integer"),
    "model": (lambda v: isinstance(v, str) and bool(v), "a model name"),
    "config": (lambda v: isinstance(v, dict), "an object (the run's config)"),
    "num_items": (lambda v: _is_int(v, 2), "an integer >= 2 (items + padding)"),
    "dim": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "versions": (lambda v: isinstance(v, dict) and isinstance(v.get("mirec"), str),
                 "an object with the 'mirec' version"),
    "checksums": (lambda v: isinstance(v, dict) and all(_is_digest(x) for x in v.values()),
                  "an object of file name -> SHA-256 (64 hex digits)"),
}


def read_manifest(mpath: Path) -> dict[str, Any]:
    """``manifest.json``: a JSON object with every field of :data:`MANIFEST_FIELDS` of the
    right type, and a checksum for every file of :data:`FILES`."""
    with open_regular(mpath, f"missing; {mpath.parent} is not a mirec bundle (make one with "
                             f"`mirec export`)") as f:
        raw = f.read()
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise MirecDataError(f"{mpath}: invalid JSON: {_first_line(e)}") from None
    if not isinstance(manifest, dict):
        raise MirecDataError(f"{mpath}: expected a JSON object, got a {type(manifest).__name__}")
    for name, (ok, want) in MANIFEST_FIELDS.items():
        if name not in manifest:
            raise MirecDataError(f"{mpath}: field {name!r}: missing")
        if not ok(manifest[name]):
            raise MirecDataError(f"{mpath}: field {name!r}: expected {want}, got {_show(manifest[name])}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise MirecDataError(f"{mpath}: field 'format_version': {manifest['format_version']} is not "
                             f"{FORMAT_VERSION}; export the bundle again with this mirec")
    for name in FILES:
        if name not in manifest["checksums"]:
            raise MirecDataError(f"{mpath}: field 'checksums': no checksum of {name}")
    if manifest["config"].get("model") != manifest["model"]:
        raise MirecDataError(f"{mpath}: field 'model': {_show(manifest['model'])} is not the "
                             f"config's model {_show(manifest['config'].get('model'))}")
    return manifest


def read_vectors(f: BinaryIO, path: Path, n: int, d: int) -> np.ndarray:
    """``item_vectors.npy``: (num_items, dim) float32, every value finite. The header is checked
    before the data is read, so a header claiming a huge array allocates nothing."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version}")
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = header(f)
    except (ValueError, EOFError, OSError) as e:
        raise MirecDataError(f"{path}: not a NumPy .npy array ({_first_line(e)})") from None
    if dtype != np.float32:
        raise MirecDataError(f"{path}: dtype {dtype} is not float32")
    if shape != (n, d):
        raise MirecDataError(f"{path}: shape {shape} is not (num_items, dim) = {(n, d)} of "
                             f"manifest.json")
    if os.fstat(f.fileno()).st_size - f.tell() != n * d * 4:
        raise MirecDataError(f"{path}: holds {os.fstat(f.fileno()).st_size - f.tell()} bytes of "
                             f"data, not the {n * d * 4} of its shape {shape}")
    f.seek(0)
    vectors = np.ascontiguousarray(np.load(f, allow_pickle=False))  # (N, D)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise MirecDataError(f"{path}: row {bad[0]} holds a non-finite value ({len(bad)} such rows)")
    return vectors


def _read_parquet(f: BinaryIO, path: Path, columns: dict[str, Callable[[pl.DataType], bool]],
                  want: str) -> pl.DataFrame:
    """A Parquet file with ``columns`` (name -> dtype test), ``want`` saying what they must be."""
    try:
        frame = pl.read_parquet(f)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError, ValueError) as e:
        raise MirecDataError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    for name, ok in columns.items():
        if name not in frame.columns:
            raise MirecDataError(f"{path}: column {name!r}: missing (expected {want})")
        if not ok(frame.schema[name]):
            raise MirecDataError(f"{path}: column {name!r}: type {frame.schema[name]} (expected {want})")
    return frame


def _raw_ids(frame: pl.DataFrame, path: Path) -> None:
    """Refuse null or repeated raw ids (each would map two rows to one id)."""
    ids = frame["raw_id"]
    if ids.null_count():
        raise MirecDataError(f"{path}: column 'raw_id': {ids.null_count()} null values")
    if ids.n_unique() != len(ids):
        dup = ids.filter(ids.is_duplicated())[0]
        raise MirecDataError(f"{path}: column 'raw_id': {_show(dup)} appears more than once")


def _is_string_list(t: pl.DataType) -> bool:
    return t == pl.Null or (isinstance(t, pl.List) and t.inner in (pl.String, pl.Null))


def read_items(f: BinaryIO, path: Path, n: int) -> pl.DataFrame:
    """``items.parquet``: item (integer), raw_id (string), title (string), categories (list of
    strings); exactly num_items - 1 rows, numbered 1..num_items - 1, each raw id once."""
    items = _read_parquet(f, path, {"item": lambda t: t.is_integer(), "raw_id": lambda t: t == pl.String,
                                    "title": lambda t: t in (pl.String, pl.Null),
                                    "categories": _is_string_list},
                          "item: integer, raw_id: string, title: string, categories: list of strings")
    if items.height != n - 1:
        raise MirecDataError(f"{path}: {items.height} rows, not num_items - 1 = {n - 1} of manifest.json")
    numbers = items["item"].sort()
    if numbers.null_count() or not (numbers == pl.int_range(1, n, eager=True)).all():
        raise MirecDataError(f"{path}: column 'item': items are not numbered 1..{n - 1}")
    _raw_ids(items, path)
    return items


def read_users(f: BinaryIO, path: Path, n: int) -> pl.DataFrame:
    """``users.parquet``: raw_id (string, each once), history (list of item ids in 1..num_items-1)."""
    users = _read_parquet(f, path, {"raw_id": lambda t: t == pl.String,
                                    "history": lambda t: isinstance(t, pl.List) and t.inner.is_integer()},
                          "raw_id: string, history: list of item ids")
    _raw_ids(users, path)
    flat = pc.list_flatten(users["history"].to_arrow())  # (E,) every stored history id
    if flat.null_count:
        raise MirecDataError(f"{path}: column 'history': {flat.null_count} null item ids")
    bad = pc.filter(flat, pc.or_(pc.less(flat, 1), pc.greater(flat, n - 1)))
    if len(bad):
        raise MirecDataError(f"{path}: column 'history': item id {bad[0]} is not in 1..{n - 1} "
                             f"(num_items of manifest.json)")
    return users


def read_tower(f: BinaryIO, path: Path, manifest: dict[str, Any],
               categories: tuple | None = None) -> tuple[RunConfig, torch.nn.Module]:
    """``tower.pt``: a state dict of finite tensors (loaded without pickle) that fits the model
    of the manifest's config over num_items items, whose item table is dim wide; ``categories``
    (the items' categories as CSR) for a model with ``model_args.item_features`` on."""
    mpath = path.parent / "manifest.json"
    n, d = manifest["num_items"], manifest["dim"]
    try:
        cfg = from_dict(RunConfig, manifest["config"])
        model = build_model(cfg, n, categories=categories)
    except MirecError as e:
        raise MirecDataError(f"{mpath}: field 'config': {e}") from None
    except (RuntimeError, ValueError, TypeError, MemoryError) as e:  # sizes torch cannot build
        raise MirecDataError(f"{mpath}: field 'config': cannot build the model ({_first_line(e)})"
                             ) from None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001  a foreign file: torch raises many types
        raise MirecDataError(f"{path}: does not fit model {cfg.model!r} ({_first_line(e)})") from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise MirecDataError(f"{path}: tensor {bad[0]!r} holds a non-finite value")
    width = tuple(model.item_embeddings().shape)
    if width != (n, d):
        raise MirecDataError(f"{path}: the model's item table is {width}, not (num_items, dim) = "
                             f"{(n, d)} of manifest.json")
    return cfg, model.eval()


def add_checksum(bundle: Bundle, name: str) -> None:
    """Record the SHA-256 of a file added to the bundle (an index) in manifest.json, atomically."""
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["checksums"][name] = sha256_file(bundle.path / name)
    atomic_write_json(bundle.path / "manifest.json", manifest)
    bundle.manifest = manifest


def verify_checksum(bundle: Bundle, name: str, remedy: str) -> None:
    """Refuse a bundle file whose checksum is not the one in the manifest (or is not listed, or
    is not a regular file)."""
    want = bundle.manifest.get("checksums", {}).get(name)
    f = bundle.path / name
    if want is None:
        raise MirecDataError(f"{f}: not listed in manifest.json (not made by `mirec index build` "
                             f"of this bundle); {remedy}")
    with open_regular(f) as fh:
        check_digest(fh, f, want, remedy)


def index_path(bundle: Bundle, kind: str) -> Path:
    return bundle.path / f"index-{kind}.faiss"


def open_index(bundle: Bundle, cfg: IndexConfig) -> ItemIndex:
    """The saved index of the bundle when present (a regular file, its checksum verified, as
    many items and as wide as the bundle's vectors), else built in memory. With new items the
    saved index lacks them: it is built in memory."""
    kind = cfg.resolved_kind(bundle.num_items - 1)
    path = index_path(bundle, kind)
    if not path.exists() or bundle.new_from is not None:
        return ItemIndex.build(bundle.item_vectors, replace(cfg, kind=kind))
    remedy = f"rebuild it with `mirec index build {bundle.path} --index {kind}` (or delete it)"
    verify_checksum(bundle, path.name, remedy)
    index = ItemIndex.load(path, cfg)
    if (index.num_items, index.dim) != bundle.item_vectors.shape:
        raise MirecDataError(f"{path}: holds {index.num_items - 1} items of dim {index.dim}, not the "
                             f"bundle's {bundle.num_items - 1} of dim {bundle.item_vectors.shape[1]}; "
                             f"{remedy}")
    return index


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
