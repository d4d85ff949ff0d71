"""The contract every retrieval model keeps.

Shape alphabet: ``B`` batch, ``L`` history length (left-padded, most recent item last), ``K``
interests, ``D`` embedding size, ``N`` item ids (0 = padding).

A retriever turns a batch of histories into K interest vectors::

    out = model.interests(hist, mask)      # hist (B, L) long, mask (B, L) bool
    out.vectors   (B, K, D)                # one vector per interest
    out.mask      (B, K) bool              # live interests (MIND's dynamic K masks some)
    out.weights   (B, K, L)                # how much each history position formed interest k
                                           # (attention or routing weights; 0 on padding)

``model.item_embeddings()`` is the (N, D) table the serving index holds (row 0 = padding), and
``model.readout(out, target_emb)`` picks the training user vector (B, D) for a target: argmax
for ComiRec, label-aware attention for MIND, identity for K = 1. Scores are always
``f(u, i) = max over live k of v_k . e_i`` (divided by the temperature in training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass
class Interests:
    vectors: torch.Tensor  # (B, K, D)
    mask: torch.Tensor  # (B, K) bool
    weights: torch.Tensor  # (B, K, L)


class Retriever(Protocol):
    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests: ...

    def item_embeddings(self) -> torch.Tensor: ...

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor: ...


def unit_interests(out: Interests) -> Interests:
    """The same interests scaled to length 1: what cosine scores compare."""
    return Interests(F.normalize(out.vectors, dim=-1), out.mask, out.weights)


def max_over_interests(out: Interests, items: torch.Tensor) -> torch.Tensor:
    """``f(u, i) = max_k v_k . e_i`` over live interests: (B, K, D) x (N, D) -> (B, N)."""
    scores = torch.einsum("bkd,nd->bkn", out.vectors, items)  # (B, K, N)
    scores = scores.masked_fill(~out.mask[:, :, None], float("-inf"))
    return scores.max(dim=1).values


def argmax_readout(out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
    """ComiRec's readout: the live interest with the highest inner product with the target."""
    sim = (out.vectors * target_emb[:, None]).sum(-1)  # (B, K); cheaper than einsum's bmm
    sim = sim.masked_fill(~out.mask, float("-inf"))
    k = sim.argmax(dim=1)  # (B,)
    return out.vectors[torch.arange(len(k), device=k.device), k]  # (B, D)


# ---------------------------------------------------------------------------------------------
# Rankers (click-through prediction): one user x one candidate -> probability of interaction.
#
#     logit = ranker(batch)                  # (B,) logits; sigmoid gives the probability
#     loss = ranker.loss(batch, label)       # BCE + the model's own auxiliary terms
#
# Rankers are built from a ``RankFeatures`` (sizes and the item -> categories table as a
# tensor), never from files.
# ---------------------------------------------------------------------------------------------


@dataclass
class RankFeatures:
    """What a ranker needs to know about the feature space (saved in every CTR checkpoint)."""

    num_items: int  # item ids 0..num_items-1, 0 = padding
    num_users: int  # dense user ids 0..num_users-1
    profile_sizes: list[int]  # cardinality of each profile field, code 0 = unknown
    item_categories: torch.Tensor  # (N, C) long, category ids + 1, 0 = padding; row 0 all 0

    @property
    def num_categories(self) -> int:
        """Category id space including padding 0."""
        return int(self.item_categories.max()) + 1 if self.item_categories.numel() else 1


@dataclass
class CTRBatch:
    """A batch of (user, candidate) pairs with the user's earlier positive items."""

    user: torch.Tensor  # (B,) long, dense user id
    profile: torch.Tensor  # (B, F) long, profile codes (0 = unknown)
    item: torch.Tensor  # (B,) long, candidate item id
    hist: torch.Tensor  # (B, L) long, earlier positives, left-padded with 0, most recent last
    mask: torch.Tensor  # (B, L) bool, True on real history items


class Ranker(Protocol):
    def __call__(self, batch: CTRBatch) -> torch.Tensor: ...

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor: ...
