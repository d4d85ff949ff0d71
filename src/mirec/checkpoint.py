"""Checkpoints written atomically: model, optimiser, RNG states, epoch, best metric, config."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mirec.config import from_dict, to_dict
from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import atomic_write_bytes


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` with torch.save into memory, then write it atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise MirecDataError(f"{path}: no checkpoint") from None
    except Exception as e:  # a truncated or foreign file
        raise MirecDataError(f"{path}: not a readable mirec checkpoint ({e})") from None


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
