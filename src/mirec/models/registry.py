"""The explicit list of models: name -> (config class, model class)."""

from __future__ import annotations

from mirec.models.most_popular import MostPopular, MostPopularConfig

MODELS: dict[str, tuple[type, type]] = {
    "most-popular": (MostPopularConfig, MostPopular),
}


def model_names() -> list[str]:
    return sorted(MODELS)
