"""YouTube DNN candidate generation (single interest, K = 1).

Covington, Adams and Sargin, "Deep Neural Networks for YouTube Recommendations", RecSys 2016:
the user vector is an MLP (ReLU tower) over the average of the watched items' embeddings, trained
with a softmax over the catalogue. Only the watch-history feature is kept here (no search tokens,
demographics or example age). The last layer is linear, so ``v_u`` can point anywhere in R^D.

Shapes: ``B`` batch, ``L`` history length (left-padded), ``D`` embedding size, ``N`` item ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import MAX_LEN, check_fields, setting, size
from mirec.models.base import Interests
from mirec.models.layers import check_item_features, item_table_embedding, items_weight, mlp


@dataclass
class YouTubeDNNConfig:
    dim: int = size(64)
    max_len: int = size(20, MAX_LEN)
    hidden: tuple[int, ...] = size((256,))  # hidden ReLU layers; a last linear layer maps to ``dim``
    dropout: float = setting(0.0, ge=0, lt=1)  # on the hidden layers

    # item side information in the item vectors: off | mean | sum (layers.AttributeItems)
    item_features: str = "off"

    def validate(self) -> None:
        check_fields(self, "model_args.")
        check_item_features(self.item_features)


def masked_mean(table: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor,
                sparse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the rows ``table[hist]`` over the real positions of ``mask`` (both (B, L)).

    Returns ``(mean (B, D), weights (B, L))`` with weights 1/n on the n real items and 0 on
    padding. An empty history gives a zero mean (n is clamped to 1), never NaN. One
    ``embedding_bag`` does the gather and the weighted sum without a (B, L, D) intermediate;
    ``sparse``: the table's gradient is sparse (its rows in ``hist``).
    """
    m = mask.to(table.dtype)  # (B, L)
    w = m / m.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, L)
    return F.embedding_bag(hist, table, per_sample_weights=w, mode="sum", sparse=sparse), w


class YouTubeDNN(nn.Module):
    def __init__(self, cfg: YouTubeDNNConfig, num_items: int, categories: tuple | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.emb = item_table_embedding(num_items, cfg.dim, cfg.item_features, categories)
        self.mlp = mlp((cfg.dim, *cfg.hidden, cfg.dim), dropout=cfg.dropout)

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests:
        """hist (B, L) long, mask (B, L) bool -> one interest per user (K = 1).

        The interest is always live, also for an empty history (it is then ``mlp(0)``).
        """
        hist = hist.masked_fill(~mask, 0)  # ids at masked positions never matter
        mean, w = masked_mean(items_weight(self.emb), hist, mask, self.emb.sparse)  # (B, D), (B, L)
        v = self.mlp(mean)  # (B, D)
        return Interests(v[:, None], torch.ones_like(mask[:, :1]), w[:, None])  # K = 1

    def item_embeddings(self) -> torch.Tensor:
        return items_weight(self.emb)  # (N, D)

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return out.vectors[:, 0]  # (B, D)
