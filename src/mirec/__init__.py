"""mirec: multi-interest recommendation, from a raw interaction log to served top-N lists.

    import mirec
    data = mirec.prepare("movielens", "path/to/ml-100k", out="data/ml-100k")
    run = mirec.fit(model="comirec-sa", data=data, out="runs/sa", train={"epochs": 5})
    bundle = mirec.export(run.path, out="bundles/sa")
    mirec.Recommender.open(bundle).recommend(user_id="196", n=10, diversity=0.3)

The names below are imported on first use, so ``import mirec`` stays fast (no torch, Faiss or
Polars until a function needs them).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from mirec.errors import MirecConfigError, MirecDataError, MirecError  # noqa: E402

_LAZY = {
    "prepare": "mirec.api", "append": "mirec.api", "load_dataset": "mirec.api", "fit": "mirec.api",
    "evaluate": "mirec.api",
    "export": "mirec.api", "RunResult": "mirec.api", "Recommender": "mirec.serve.recommender",
}

__all__ = ["__version__", "MirecError", "MirecDataError", "MirecConfigError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mirec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
