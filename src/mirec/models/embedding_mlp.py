"""Embedding + MLP: the ranking baseline that DIN improves on (DIN paper, section 4.1).

The user's earlier positives are sum-pooled into one vector whatever the candidate is, then
profile, candidate and pooled history go through an MLP to one logit. Shapes as in
:mod:`mirec.models.din`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import check_fields, setting, size
from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.layers import ItemEncoder, ProfileEncoder, ctr_mlp


@dataclass
class EmbeddingMLPConfig:
    dim: int = size(32)
    hidden: list[int] = size(factory=lambda: [200, 80])
    activation: str = "prelu"  # prelu | dice
    dropout: float = setting(0.0, ge=0, lt=1)
    use_user_id: bool = True

    def validate(self) -> None:
        check_fields(self, "model_args.")
        if self.activation not in ("prelu", "dice"):
            raise MirecConfigError(f"model_args.activation: expected prelu or dice, got {self.activation!r}")


class EmbeddingMLP(nn.Module):
    def __init__(self, cfg: EmbeddingMLPConfig, features: RankFeatures) -> None:
        super().__init__()
        self.items = ItemEncoder(features.num_items, features.item_categories, cfg.dim)
        self.profile = ProfileEncoder(features.num_users, features.profile_sizes, cfg.dim, cfg.use_user_id)
        E = self.items.dim
        self.head = ctr_mlp(self.profile.dim + 2 * E, cfg.hidden, cfg.activation, cfg.dropout)

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        t = self.items(batch.item)  # (B, E)
        pooled = (self.items(batch.hist) * batch.mask[..., None]).sum(1)  # (B, E)
        x = torch.cat([self.profile(batch.user, batch.profile), t, pooled], dim=-1)
        return self.head(x).squeeze(-1)

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(batch), label)
