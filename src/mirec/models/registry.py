"""The explicit list of models.

``BASELINES`` need no training loop: ``Model(cfg).fit(ds, split)`` then ``score``.
``NEURAL`` are trained by :mod:`mirec.train.loop`: ``Model(cfg, num_items)``.
``RANKERS`` score (user, candidate) pairs, trained by :mod:`mirec.train.ctr`.
"""

from __future__ import annotations

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
from mirec.models.youtube_dnn import YouTubeDNN, YouTubeDNNConfig

BASELINES: dict[str, tuple[type, type]] = {
    "most-popular": (MostPopularConfig, MostPopular),
    "item-cf": (ItemCFConfig, ItemCF),
}

NEURAL: dict[str, tuple[type, type]] = {
    "youtube-dnn": (YouTubeDNNConfig, YouTubeDNN),
    "gru4rec": (GRU4RecConfig, GRU4Rec),
    "mind": (MINDConfig, MIND),
    "comirec-dr": (ComiRecDRConfig, ComiRecDR),
    "comirec-sa": (ComiRecSAConfig, ComiRecSA),
}

RANKERS: dict[str, tuple[type, type]] = {  # click-through models: Model(cfg, RankFeatures)
    "embedding-mlp": (EmbeddingMLPConfig, EmbeddingMLP),
    "din": (DINConfig, DIN),
    "dien": (DIENConfig, DIEN),
    "mimn": (MIMNConfig, MIMN),
}

MODELS = BASELINES  # models `mirec evaluate --model` fits without training


def model_names() -> list[str]:
    return sorted(BASELINES) + sorted(NEURAL)
