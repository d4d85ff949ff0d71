"""Every model mirec knows, in one table: name, task, config class and how to build it.

Adding a model is one file in ``mirec/models/`` plus one line in :data:`SPECS`; the contract
tests (``tests/test_model_contracts.py``) are parametrised over this table and pick it up.

Tasks:
    ``baseline``   needs no training loop: ``Model(cfg).fit(ds, split)``, then ``score``
    ``retrieval``  a :class:`~mirec.models.base.Retriever`, trained by the engine's retrieval
                   task: ``Model(cfg, num_items)``
    ``ranking``    a :class:`~mirec.models.base.Ranker`, trained by the engine's ranking task:
                   ``Model(cfg, RankFeatures)``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mirec.errors import MirecConfigError
from mirec.models.comirec_dr import ComiRecDR, ComiRecDRConfig
from mirec.models.comirec_sa import ComiRecSA, ComiRecSAConfig
from mirec.models.dien import DIEN, DIENConfig
from mirec.models.din import DIN, DINConfig
from mirec.models.embedding_mlp import EmbeddingMLP, EmbeddingMLPConfig
from mirec.models.gru4rec import GRU4Rec, GRU4RecConfig
from mirec.models.item_cf import ItemCF, ItemCFConfig
from mirec.models.mimn import MIMN, MIMNConfig
from mirec.models.mind import MIND, MINDConfig
from mirec.models.most_popular import MostPopular, MostPopularConfig
from mirec.models.sasrec import SASRec, SASRecConfig
from mirec.models.youtube_dnn import YouTubeDNN, YouTubeDNNConfig

TASKS = ("baseline", "retrieval", "ranking")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # one of TASKS
    config: type  # the model's own settings (a dataclass with validate())
    build: Callable[..., Any]  # build(cfg) | build(cfg, num_items) | build(cfg, RankFeatures)


SPECS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("most-popular", "baseline", MostPopularConfig, MostPopular),
    ModelSpec("item-cf", "baseline", ItemCFConfig, ItemCF),
    ModelSpec("youtube-dnn", "retrieval", YouTubeDNNConfig, YouTubeDNN),
    ModelSpec("gru4rec", "retrieval", GRU4RecConfig, GRU4Rec),
    ModelSpec("sasrec", "retrieval", SASRecConfig, SASRec),
    ModelSpec("mind", "retrieval", MINDConfig, MIND),
    ModelSpec("comirec-dr", "retrieval", ComiRecDRConfig, ComiRecDR),
    ModelSpec("comirec-sa", "retrieval", ComiRecSAConfig, ComiRecSA),
    ModelSpec("embedding-mlp", "ranking", EmbeddingMLPConfig, EmbeddingMLP),
    ModelSpec("din", "ranking", DINConfig, DIN),
    ModelSpec("dien", "ranking", DIENConfig, DIEN),
    ModelSpec("mimn", "ranking", MIMNConfig, MIMN),
)}


def of_task(task: str) -> dict[str, ModelSpec]:
    return {n: s for n, s in SPECS.items() if s.task == task}


def spec(name: str, task: str, field: str = "model") -> ModelSpec:
    """The spec of ``name``, which must be a model of ``task``; else one line naming ``field``."""
    s = SPECS.get(name)
    if s is None or s.task != task:
        what, known = {"baseline": ("model", model_names()), "retrieval": ("trainable model", sorted(NEURAL)),
                       "ranking": ("ranker", sorted(RANKERS))}[task]
        raise MirecConfigError(f"{field}: unknown {what} {name!r} (known: {', '.join(known)})")
    return s


# Views by task (name -> (config class, model class)), as earlier code reads them.
BASELINES = {n: (s.config, s.build) for n, s in of_task("baseline").items()}
NEURAL = {n: (s.config, s.build) for n, s in of_task("retrieval").items()}
RANKERS = {n: (s.config, s.build) for n, s in of_task("ranking").items()}
MODELS = BASELINES  # models `mirec evaluate --model` fits without training


def model_names() -> list[str]:
    return sorted(BASELINES) + sorted(NEURAL)
