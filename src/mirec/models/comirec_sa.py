"""ComiRec-SA: multi-interest extraction by self-attention.

Cen et al., "Controllable Multi-Interest Framework for Recommendation", KDD 2020, Sec. 3.2
(the attention is Lin et al., "A Structured Self-Attentive Sentence Embedding", ICLR 2017)::

    A = softmax_over_positions( W2^T tanh(W1 (H + P)^T) )     # (L, K), padding -> weight 0
    V = A^T H                                                  # (K, D)

Positional embeddings P only steer the attention; the interests mix the raw item embeddings.
Positions are counted from the most recent item (histories are left-padded, most recent last),
so the amount of left padding never shifts them. The authors' code adds biases to W1 and W2;
we follow the paper's bias-free form (a bias on W2 cancels in the softmax anyway).

Shapes: ``B`` batch, ``L`` history length, ``K`` interests, ``D`` dim, ``N`` items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mirec.errors import MirecConfigError
from mirec.models.base import Interests, argmax_readout
from mirec.models.layers import item_embedding, masked_softmax, sigmoid_, tanh


@dataclass
class ComiRecSAConfig:
    dim: int = 64
    num_interests: int = 4
    max_len: int = 20
    hidden_factor: int = 4  # W1 is (hidden_factor * D) x D
    dropout: float = 0.0  # on the attention's hidden layer

    def validate(self) -> None:
        for name in ("dim", "num_interests", "max_len", "hidden_factor"):
            if getattr(self, name) < 1:
                raise MirecConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise MirecConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


class ComiRecSA(nn.Module):
    def __init__(self, cfg: ComiRecSAConfig, num_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        D, K = cfg.dim, cfg.num_interests
        self.item_emb = item_embedding(num_items, D)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_len, D) * D**-0.5)  # P, (max_len, D)
        self.W1 = nn.Linear(D, cfg.hidden_factor * D, bias=False)
        self.W2 = nn.Linear(cfg.hidden_factor * D, K, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests:
        """(B, L) item ids and (B, L) bool mask -> K interests (all live)."""
        B, L = hist.shape
        hist = hist.masked_fill(~mask, 0)  # padding -> item 0, whose embedding row is zero
        H = self.item_emb(hist)  # (B, L, D), zero on padding
        P = self.pos_emb[-L:]  # (L, D), aligned to the most recent item
        if self.drop.p > 0 and self.training:
            hidden = self.drop(tanh(self._pre(H, hist, P, self.W1.weight)))  # (B, L, 4D)
            logits = self.W2(hidden).transpose(1, 2)  # (B, K, L)
        else:
            # W2 tanh(x) = W2 (2 sigmoid(2x) - 1) = 2 W2 sigmoid(2x) - W2 1. The last term is
            # the same at every position, so it cancels in the softmax over positions: the
            # same A from one in-place sigmoid instead of tanh's four passes over (B, L, 4D).
            s = sigmoid_(self._pre(H, hist, P, 2.0 * self.W1.weight))  # (B, L, 4D)
            logits = F.linear(s, 2.0 * self.W2.weight).transpose(1, 2)  # (B, K, L)
        A = masked_softmax(logits, mask[:, None, :], dim=-1)  # (B, K, L), sums to 1 over L
        V = torch.einsum("bkl,bld->bkd", A, H)  # (B, K, D)
        live = torch.ones(B, self.cfg.num_interests, dtype=torch.bool, device=hist.device)
        return Interests(vectors=V, mask=live, weights=A)

    def _pre(self, H: torch.Tensor, hist: torch.Tensor, P: torch.Tensor, W1: torch.Tensor) -> torch.Tensor:
        """``W1 (H + P)``, (B, L, 4D), for item embeddings H (B, L, D) of ids hist (B, L) and
        positions P (L, D). W1 (H + P) = W1 H + W1 P. When the catalogue has fewer rows than
        the batch has positions, projecting the whole item table once and gathering its rows
        is the same product for fewer multiply-adds (N x D x 4D instead of B x L x D x 4D);
        not with a sparse item table (``train.optimizer=sparse``), whose gradient must stay on
        the rows the batch read."""
        if not self.item_emb.sparse and self.item_emb.num_embeddings < hist.numel():
            return F.embedding(hist, F.linear(self.item_emb.weight, W1)).add_(F.linear(P, W1))
        return F.linear(H + P, W1)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight  # (N, D)

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return argmax_readout(out, target_emb)  # (B, D)
