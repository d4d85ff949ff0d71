"""ComiRec-DR: multi-interest extraction by capsule dynamic routing.

Cen et al., "Controllable Multi-Interest Framework for Recommendation", KDD 2020, Sec. 3.2 and
Algorithm 1 (routing from Sabour et al., "Dynamic Routing Between Capsules", NeurIPS 2017)::

    u_{j|i} = W_ij e_i                  one bilinear map per (position i, interest j)
    b_ij = 0; repeat r times:
        c_i = softmax_j(b_i)            over interests, per item; padding items weight 0
        s_j = sum_i c_ij u_{j|i};  v_j = squash(s_j);  b_ij += v_j . u_{j|i}

The logit updates run on a detached ``u`` (see :func:`mirec.models.layers.dynamic_routing`), as
in the authors' code. Positions are counted from the most recent item (histories are
left-padded, most recent last), so W_ij for "the i-th most recent item" does not move with the
amount of padding. W ~ N(0, 1/D) keeps |u| ~ |e| (the authors' N(0, 1) scales it by sqrt(D)).

Shapes: ``B`` batch, ``L`` history length, ``K`` interests, ``D`` dim, ``N`` items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mirec.config import MAX_COUNT, MAX_LEN, check_fields, setting, size
from mirec.models.base import Interests, argmax_readout
from mirec.models.layers import (
    check_item_features,
    dynamic_routing,
    history_encoder,
    item_table_embedding,
    items_weight,
)


@dataclass
class ComiRecDRConfig:
    dim: int = size(64)
    num_interests: int = size(4, MAX_COUNT)
    max_len: int = size(20, MAX_LEN)
    routing_iters: int = size(3, MAX_COUNT)
    # Transformer blocks (ComiRec-SA's encoder_layers, layers.history_encoder) over the history
    # + position vectors before routing: the capsules route items seen in context; 0 = the paper's.
    encoder_layers: int = size(0, MAX_COUNT, least=0)
    encoder_dropout: float = setting(0.2, ge=0, lt=1)

    # item side information in the item vectors: off | mean | sum (layers.AttributeItems)
    item_features: str = "off"

    def validate(self) -> None:
        check_fields(self, "model_args.")
        check_item_features(self.item_features)


class ComiRecDR(nn.Module):
    # The defaults under split.protocol=loo (RunConfig.defaults_for): ComiRec-SA's recipe there
    # (attributes, train.negative_score=max, one encoder block at dropout 0.5). The encoder was
    # measured on ComiRec-DR itself, Amazon Beauty's validation users: NDCG@10 0.0532 against
    # 0.0442 without it after 12 epochs (docs/benchmarks.md, "Amazon Beauty, leave-one-out").
    loo_defaults = {"model_args": {"encoder_layers": 1, "encoder_dropout": 0.5, "item_features": "mean"},
                    "train": {"negative_score": "max"}}

    def __init__(self, cfg: ComiRecDRConfig, num_items: int, categories: tuple | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        D, K = cfg.dim, cfg.num_interests
        self.item_emb = item_table_embedding(num_items, D, cfg.item_features, categories)
        self.W = nn.Parameter(torch.randn(cfg.max_len, K, D, D) * D**-0.5)  # (max_len, K, D, D)
        self.encoder = None
        if cfg.encoder_layers:
            self.pos_emb = nn.Parameter(torch.randn(cfg.max_len, D) * D**-0.5)  # (max_len, D)
            self.encoder = history_encoder(D, cfg.encoder_layers, cfg.encoder_dropout)

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests:
        """(B, L) item ids and (B, L) bool mask -> K interests (all live)."""
        B, L = hist.shape
        K = self.cfg.num_interests
        H = self.item_emb(hist) * mask[..., None]  # (B, L, D), zero on padding
        if self.encoder is not None:  # each item in the context of the others, (B, L, D)
            H = self.encoder(H + self.pos_emb[-L:], src_key_padding_mask=~mask) * mask[..., None]
        # u_{j|i} = W_ij e_i, contracted directly: never builds a (B, L, K*D, D) tensor.
        u = torch.einsum("lkde,ble->bkld", self.W[-L:], H)  # (B, K, L, D)
        b = torch.zeros(B, K, L, device=H.device, dtype=H.dtype)  # routing logits
        link = mask[:, None, :].expand(B, K, L)  # (B, K, L)
        V, c = dynamic_routing(u, b, link, self.cfg.routing_iters)  # (B, K, D), (B, K, L)
        live = torch.ones(B, K, dtype=torch.bool, device=hist.device)
        return Interests(vectors=V, mask=live, weights=c)

    def item_embeddings(self) -> torch.Tensor:
        return items_weight(self.item_emb)  # (N, D)

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return argmax_readout(out, target_emb)  # (B, D)
