"""Checkpoints written atomically, without pickle and with a checksum: model, optimiser, epoch,
best metric, config; and the rules for resuming a run from one."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import re
import typing
from collections import OrderedDict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from mirec.config import from_dict, load, to_dict
from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import atomic_path

T = TypeVar("T")


# A checkpoint file is torch.save's bytes followed by this tag and the hex SHA-256 of those bytes:
# one file, written atomically, so a crash can never leave a checkpoint and its checksum apart.
TRAILER = b"\nmirec-sha256:"
TRAILER_LEN = len(TRAILER) + 64


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` (made plain: tensors, numbers, strings, lists, dicts) with torch.save
    straight into a temporary file, hashing the bytes on their way, append the checksum and move
    the file into place (:func:`mirec.io.atomic_path`). No copy of the serialised checkpoint is
    held in memory: a step checkpoint of a large item table and its optimiser state would
    otherwise double the process's peak for a moment, twice."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = HashingWriter(f)
        torch.save(plain(state), out)
        f.write(TRAILER + out.sha256.hexdigest().encode())


class HashingWriter:
    """A binary file's ``write`` that also feeds the SHA-256 of everything written."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def plain(x: Any) -> Any:
    """``x`` with NumPy scalars and arrays turned into Python numbers and tensors, so that it
    loads with ``weights_only=True``."""
    if isinstance(x, dict):
        return type(x)((k, plain(v)) for k, v in x.items()) if isinstance(x, OrderedDict) \
            else {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return x


# Checkpoints written before save_checkpoint made them plain hold NumPy scalars (metrics in
# ``history``); these rebuild a number from its dtype and bytes and call nothing else.
_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # NumPy 2 renamed it
_NUMPY_SCALARS = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType,
                  np.dtypes.Int32DType, np.dtypes.BoolDType, _NUMPY_CORE.multiarray.scalar]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint, its checksum verified (when it has one: files written since checkpoints
    carry it) and unpickled with ``weights_only=True``: a file that asks to run code is refused."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MirecDataError(f"{path}: no checkpoint") from None
    body, tail = data[:-TRAILER_LEN], data[-TRAILER_LEN:]
    if tail.startswith(TRAILER):
        if hashlib.sha256(body).hexdigest().encode() != tail[len(TRAILER):]:
            raise MirecDataError(f"{path}: checksum mismatch: the checkpoint is corrupted "
                                 f"(changed since it was written)")
        data = body
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALARS):
            return plain(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if not found:  # a truncated or foreign file
            raise MirecDataError(f"{path}: not a readable mirec checkpoint (no pickle of plain "
                                 f"values)") from None
        raise MirecDataError(f"{path}: refused: it asks for {found.group(1)[:80]}, which a mirec "
                             f"checkpoint (tensors and plain values) never does; not loaded") from None
    except Exception as e:  # a truncated or foreign file
        raise MirecDataError(f"{path}: not a readable mirec checkpoint ({_first(e)})") from None


def _first(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """``run_dir/best.pt``, or the first seed's of a multi-seed run (``seed-*/best.pt``); None
    when there is neither."""
    run_dir = Path(run_dir)
    if (run_dir / "best.pt").exists():
        return run_dir / "best.pt"
    seeds = sorted(run_dir.glob("seed-*/best.pt"))
    return seeds[0] if seeds else None


def saved_config(cfg: Any, model_cfg: Any) -> dict[str, Any]:
    """A run's config ``cfg`` for its checkpoints, with ``model_args`` replaced by every field of
    the model's resolved config ``model_cfg``, defaults included, so that a later change of a
    default cannot change what a saved run rebuilds into."""
    return {**to_dict(cfg), "model_args": to_dict(model_cfg)}


def check_resume_model_args(path: str | Path, saved: dict[str, Any], current: Any,
                            skip: tuple[str, ...] = ()) -> None:
    """Refuse to resume ``path`` with other model settings than it was trained with, naming the
    first field that differs (instead of a shape error from ``load_state_dict``).

    ``saved`` is the checkpoint's ``model_args``: every field for runs saved since checkpoints
    keep them all, only the fields a user set for older ones (and those as the strings ``--set``
    gave), so only the fields it has are compared, each read as ``current`` (the model's
    resolved config dataclass) reads it. ``skip``: fields that follow another setting."""
    now = to_dict(current)
    known = {k: v for k, v in saved.items() if k in now and k not in skip}
    was = to_dict(from_dict(type(current), {**now, **known}, prefix="model_args."))
    for name in known:
        if was[name] != now[name]:
            raise MirecConfigError(
                f"--resume: {path} was trained with model_args.{name}={setting(was[name])}, this "
                f"run has {setting(now[name])}; add --set model_args.{name}={setting(was[name])} "
                f"or train into a new directory")


def setting(v: Any) -> str:
    """A value as ``--set`` takes it: lists comma-separated."""
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


# Settings a resumed run may change: how long it goes on and how it runs, never what it computes.
SAFE_ON_RESUME = ("train.epochs", "train.patience", "train.threads", "train.keep_freed_memory",
                  "train.compile", "train.eval_batch_size", "eval.batch_size",
                  "train.checkpoint_minutes", "train.checkpoint_every_steps")


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"train.lr": 0.001, ...}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume(path: str | Path, saved: dict[str, Any], requested: dict[str, Any]) -> None:
    """Refuse to resume checkpoint ``path`` into another run, naming the first field that differs.

    ``saved`` is the checkpoint (its ``config`` and ``dataset_checksum``), ``requested`` the
    same two keys for this run. The model and the data set must be the same; every setting but
    those in :data:`SAFE_ON_RESUME` must be as saved (``model_args`` are compared by
    :func:`check_resume_model_args`, which knows older checkpoints' partial ones)."""
    was, now = saved["config"], requested["config"]
    check_same_model(path, was.get("model"), now.get("model"))
    if "dataset_checksum" not in saved and Path(path).with_name("best.pt").exists():
        saved = {**load_checkpoint(Path(path).with_name("best.pt")), **saved}  # older last.pt
    now_data = requested.get("dataset_checksum")  # "" when a caller gave ready data, unnamed
    if saved.get("dataset_checksum") and now_data and saved["dataset_checksum"] != now_data:
        raise MirecConfigError(f"--data: {path} was trained on another data set "
                               f"({saved.get('data') or 'checksum ' + saved['dataset_checksum'][:12]});"
                               f" resume with that --data or train into a new directory")
    before, after = flat(was), flat(now)
    for name, value in before.items():
        if name.startswith("model_args.") or name in SAFE_ON_RESUME or name not in after:
            continue
        if setting(value) != setting(after[name]):
            raise MirecConfigError(
                f"--resume: {path} was started with {name}={setting(value)}, this run has "
                f"{setting(after[name])}; only {', '.join(SAFE_ON_RESUME)} may change on resume")


def check_same_model(path: str | Path, was: Any, now: Any) -> None:
    if was != now:
        raise MirecConfigError(f"--model: {path} is a {was} run, this run asks for {now}; resume "
                               f"with --model {was} or train into a new directory")


# Settings added after runs were saved, with the value that reproduces what those runs did
# (a run saved before train.optimizer existed trained with dense Adam; its checkpoint holds
# dense Adam's state; one saved before train.routing_reg existed trained without the penalty,
# which ComiRec-SA now has by default).
LEGACY = {("train", "optimizer"): "adam", ("train", "routing_reg"): 0.0}
# Model defaults that changed after runs were saved holding only the model fields a user set:
# what those runs were built with (DIEN's head was PReLU; ComiRec-SA had K 4 and W1 4D x D).
LEGACY_MODEL_ARGS = {"dien": {"activation": "prelu"}, "comirec-sa": {"num_interests": 4, "hidden_factor": 4}}


def legacy_model_args(conf: dict[str, Any]) -> dict[str, Any]:
    """A saved config's ``model_args`` as the run was trained: a checkpoint that keeps every model
    field (all since then) is as it is; an older one gets :data:`LEGACY_MODEL_ARGS` under it."""
    return {**LEGACY_MODEL_ARGS.get(conf.get("model"), {}), **conf.get("model_args", {})}


def legacy_settings(cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the :data:`LEGACY` values filled in where ``cls`` has the setting and the
    run predates it."""
    hints = typing.get_type_hints(cls)
    for (section, key), value in LEGACY.items():
        sub = hints.get(section)
        if (isinstance(saved.get(section), dict) and key not in saved[section]
                and dataclasses.is_dataclass(sub) and key in {f.name for f in dataclasses.fields(sub)}):
            saved = {**saved, section: {**saved[section], key: value}}
    if "model_args" in hints and "model_args" in saved:
        saved = {**saved, "model_args": legacy_model_args(saved)}
    return saved


def resume_config(cls: type[T], run_dir: str | Path, file: str | Path | None,
                  overrides: list[str]) -> T:
    """The config to resume ``run_dir`` with: the settings its last checkpoint was started with,
    then the TOML ``file`` and ``overrides`` the user gave (:func:`check_resume` then refuses
    those that may not change). Without a checkpoint, the plain ``load``."""
    run_dir = Path(run_dir)
    lasts = [run_dir / "last.pt"] if (run_dir / "last.pt").exists() else \
        sorted(run_dir.glob("seed-*/last.pt"))
    if not lasts:
        return load(cls, file, overrides)
    saved = legacy_settings(cls, load_checkpoint(lasts[0])["config"])
    for o in overrides:  # another model's settings would not even load over this one's
        if o.startswith("model="):
            check_same_model(lasts[0], saved.get("model"), o.split("=", 1)[1])
    return load(cls, file, overrides, base=saved)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds what ``mirec train`` writes (checkpoints, metrics, results; or
    only the temporary file of a first checkpoint that a kill interrupted)."""
    names = ("last.pt", "best.pt", "metrics.jsonl", "results.json")
    return any((path / n).exists() for n in names) or any(path.glob("seed-*/last.pt")) \
        or any(path.glob(".last.pt.tmp-*")) or any(path.glob("seed-*/.last.pt.tmp-*"))
