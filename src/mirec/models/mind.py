"""MIND: Multi-Interest Network with Dynamic routing.

Li et al., "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall",
CIKM 2019, Sec. 4 (B2I dynamic routing, label-aware attention)::

    u_i = S e_i                          one shared bilinear map S (D x D)
    b_ij ~ N(0, sigma^2), not trained; repeat r times:
        w_ij = softmax over live interests j of b_ij;   padding items weight 0
        z_j = sum_i w_ij u_i;  c_j = squash(z_j);  b_ij += c_j . u_i
    K_u = max(1, min(K, floor(log2 n_u)))      interests beyond K_u are masked
    V_u = MLP(c_j) for each capsule (shared ReLU MLP, D -> hidden -> D)
    training readout: v_u = V_u softmax(pow(V_u e_t, p))   (label-aware attention)

Routing softmax axis: over *interests*, per item (as in capsule routing, Sabour et al. 2017,
and the ComiRec authors' MIND code). Each behaviour hands out one unit of weight, so the
interests compete for behaviours and routing acts as a soft clustering. Normalising over items
instead (DeepMatch) lets every interest drift independently towards the same dominant items.
Dead capsules (k >= K_u) take no part in the softmax, so behaviours are shared among the K_u
live ones only. As for ComiRec-DR, the logit updates run on a detached ``u``.

The Gaussian logits come from the global RNG in training (fresh every step) and, in eval mode,
from a generator seeded with ``cfg.seed`` on every call, drawn once and shared by the whole
batch, so a user's interests do not depend on the call, the batch or its position in it.
Positions are counted from the most recent item, so left padding never shifts the logits.
The label-aware attention uses the numerically safe ``softmax(p * V e_t)``
(see :func:`mirec.models.layers.label_aware_attention`).

Shapes: ``B`` batch, ``L`` history length, ``K`` interests, ``D`` dim, ``N`` items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import MAX_COUNT, MAX_LEN, check_fields, setting, size
from mirec.models.base import Interests
from mirec.models.layers import (
    check_item_features,
    dynamic_routing,
    history_encoder,
    item_table_embedding,
    items_weight,
    label_aware_attention,
    mlp,
)


@dataclass
class MINDConfig:
    dim: int = size(64)
    num_interests: int = size(4, MAX_COUNT)
    max_len: int = size(20, MAX_LEN)
    routing_iters: int = size(3, MAX_COUNT)
    routing_sigma: float = setting(1.0, gt=0)  # std of the initial routing logits
    pow_p: float = setting(2.0, ge=0, finite=False)  # label-aware attention power; inf = hard attention
    dynamic_k: bool = True
    hidden: int = size(128)  # the capsule MLP: D -> hidden -> D
    seed: int = setting(0, ge=0)  # routing logits in eval mode
    # Transformer blocks (ComiRec-SA's encoder_layers, layers.history_encoder) over the history
    # + position vectors before S and routing; 0 = the paper's model.
    encoder_layers: int = size(0, MAX_COUNT, least=0)
    encoder_dropout: float = setting(0.2, ge=0, lt=1)

    # item side information in the item vectors: off | mean | sum (layers.AttributeItems)
    item_features: str = "off"

    def validate(self) -> None:
        check_fields(self, "model_args.")
        check_item_features(self.item_features)


class MIND(nn.Module):
    def __init__(self, cfg: MINDConfig, num_items: int, categories: tuple | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.item_emb = item_table_embedding(num_items, D, cfg.item_features, categories)
        self.S = nn.Linear(D, D, bias=False)  # shared bilinear map
        # Hook for user profile features: embed them, concatenate to every capsule (the first
        # size becomes D + profile dim) and pass them to interests(); not used yet.
        self.mlp = mlp([D, cfg.hidden, D])
        self.encoder = None
        if cfg.encoder_layers:
            self.pos_emb = nn.Parameter(torch.randn(cfg.max_len, D) * D**-0.5)  # (max_len, D)
            self.encoder = history_encoder(D, cfg.encoder_layers, cfg.encoder_dropout)

    def num_live(self, mask: torch.Tensor) -> torch.Tensor:
        """K_u = max(1, min(K, floor(log2 n_u))) per user: (B, L) bool -> (B,) long."""
        K = self.cfg.num_interests
        if not self.cfg.dynamic_k:
            return torch.full((mask.shape[0],), K, device=mask.device)
        n = mask.sum(1).clamp(min=1).double()  # float64: exact log2 at powers of two
        return torch.log2(n).floor().long().clamp(1, K)

    def routing_logits(self, B: int, L: int, device: torch.device) -> torch.Tensor:
        """Initial logits b (B, K, L) ~ N(0, sigma^2); fixed by cfg.seed in eval mode."""
        K, sigma = self.cfg.num_interests, self.cfg.routing_sigma
        if self.training:
            return torch.randn(B, K, L, device=device) * sigma
        g = torch.Generator().manual_seed(self.cfg.seed)
        b = torch.randn(K, self.cfg.max_len, generator=g)[:, -L:] * sigma  # (K, L)
        return b.to(device).expand(B, K, L)

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests:
        """(B, L) item ids and (B, L) bool mask -> K capsules, the first K_u of them live."""
        B, L = hist.shape
        K = self.cfg.num_interests
        hist = hist.masked_fill(~mask, 0)  # padding -> item 0, whose embedding row is zero
        if self.encoder is not None:  # u_i = S h_i, h_i: item i in the context of the others
            H = self.encoder(self.item_emb(hist) + self.pos_emb[-L:], src_key_padding_mask=~mask)
            u = self.S(H * mask[..., None])  # (B, L, D), zero on padding
        # u_i = S e_i. S is linear, so when the catalogue has fewer rows than the batch has
        # positions, mapping the item table once and gathering its rows is the same product
        # for fewer multiply-adds (not with a sparse table: its gradient stays on the rows read).
        elif not self.item_emb.sparse and self.item_emb.num_embeddings < B * L:
            u = F.embedding(hist, self.S(items_weight(self.item_emb)))  # (B, L, D)
        else:
            u = self.S(self.item_emb(hist))  # (B, L, D)
        u = u[:, None]  # (B, 1, L, D): one u_i shared by every interest j
        live = torch.arange(K, device=hist.device) < self.num_live(mask)[:, None]  # (B, K)
        link = live[:, :, None] & mask[:, None, :]  # (B, K, L)
        b = self.routing_logits(B, L, hist.device).to(u.dtype)
        caps, w = dynamic_routing(u, b, link, self.cfg.routing_iters)  # (B, K, D), (B, K, L)
        V = self.mlp(caps) * live[..., None]  # (B, K, D), dead capsules zeroed
        return Interests(vectors=V, mask=live, weights=w)

    def item_embeddings(self) -> torch.Tensor:
        return items_weight(self.item_emb)  # (N, D)

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return label_aware_attention(out.vectors, out.mask, target_emb, self.cfg.pow_p)  # (B, D)
