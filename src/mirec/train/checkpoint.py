"""Checkpoints written atomically: model, optimiser, RNG states, epoch, best metric, config."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mirec.errors import MirecDataError
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
