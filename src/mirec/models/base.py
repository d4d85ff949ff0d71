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
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mirec.data.ctr import CTRBatch, RankFeatures  # noqa: F401 (the ranker contract's types)
from mirec.eval.blocked import ITEM_BLOCK, USER_BLOCK, blocked_topn


@dataclass
class Interests:
    vectors: torch.Tensor  # (B, K, D)
    mask: torch.Tensor  # (B, K) bool
    weights: torch.Tensor  # (B, K, L)
    rows: torch.Tensor | None = None  # (R, D): the item rows of ``interests(..., also=ids)``


class Retriever(Protocol):
    """What the engine's retrieval task, evaluation and serving call on a retriever."""

    def __init__(self, cfg: Any, num_items: int) -> None: ...

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests: ...

    def item_embeddings(self) -> torch.Tensor: ...  # (N, D), row 0 = padding

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor: ...  # (B, D)


def unit_interests(out: Interests) -> Interests:
    """The same interests scaled to length 1: what cosine scores compare."""
    return Interests(F.normalize(out.vectors, dim=-1), out.mask, out.weights, out.rows)


@torch.no_grad()
def user_interests(model: torch.nn.Module, hist: torch.Tensor, mask: torch.Tensor,
                   cosine: bool) -> Interests:
    """A retriever's interests at inference (the model in eval mode), unit length when it scores
    by cosine: what evaluation and serving compare with the item table."""
    out = model.interests(hist, mask)
    return unit_interests(out) if cosine else out


@torch.no_grad()
def item_table(model: torch.nn.Module, cosine: bool) -> torch.Tensor:
    """The (N, D) item vectors that interests are compared with: unit rows under cosine."""
    items = model.item_embeddings()
    return F.normalize(items, dim=-1) if cosine else items


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters live (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


class VectorScorer:
    """Evaluation adapter: a retriever scores items by max over its interests (exact search),
    on the model's device. ``blocked`` (the default) makes the evaluation loop call
    :meth:`topn`: exact top-n in blocks of users x items (:mod:`mirec.eval.blocked`), memory
    bounded whatever the catalogue; ``blocked=False`` scores the whole (B, N) matrix."""

    def __init__(self, model: torch.nn.Module, cosine: bool, blocked: bool = True) -> None:
        self.model, self.cosine = model.eval(), cosine
        self.device = model_device(model)
        self.items = item_table(model, cosine)  # (N, D), on the model's device
        self.blocked = blocked
        # items per block: cache-sized on the CPU, larger on an accelerator (fewer launches)
        self.block = ITEM_BLOCK if self.device.type == "cpu" else 32_768
        self.user_block = USER_BLOCK if self.device.type == "cpu" else 4_096

    def interests(self, hist: np.ndarray, mask: np.ndarray) -> Interests:
        return user_interests(self.model, torch.from_numpy(hist).to(self.device),
                              torch.from_numpy(mask).to(self.device), self.cosine)

    @torch.no_grad()
    def score(self, hist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return max_over_interests(self.interests(hist, mask), self.items).cpu().numpy()  # (B, N)

    @torch.no_grad()
    def score_items(self, hist: np.ndarray, mask: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The scores ``max_k v_k . e_i`` of the (B, M) item ``ids`` of each row: (B, M). An
        elementwise product summed over D, not a matmul: equal item rows give equal scores
        (a matmul kernel may round a remainder column differently)."""
        out = self.interests(hist, mask)
        rows = self.items[torch.from_numpy(ids).to(self.device)]  # (B, M, D)
        s = (out.vectors[:, :, None] * rows[:, None]).sum(-1)  # (B, K, M)
        return s.masked_fill(~out.mask[:, :, None], float("-inf")).amax(1).cpu().numpy()

    @torch.no_grad()
    def topn(self, hist: np.ndarray, mask: np.ndarray, n: int,
             seen: tuple[np.ndarray, np.ndarray], never: np.ndarray | None = None) -> np.ndarray:
        """Top-``n`` item ids (B, n), best first; padding, the ``seen`` (row, item) pairs and the
        item ids ``never`` (sorted) are never ranked. See :func:`mirec.eval.blocked.blocked_topn`."""
        rows, items = (torch.from_numpy(a).to(self.device) for a in seen)
        drop = None if never is None else torch.from_numpy(never).to(self.device)
        out = self.interests(hist, mask)
        return blocked_topn(out.vectors, out.mask, self.items, n, rows, items, self.block,
                            self.user_block, drop).cpu().numpy()  # (B, n)


def max_over_interests(out: Interests, items: torch.Tensor) -> torch.Tensor:
    """``f(u, i) = max_k v_k . e_i`` over live interests: (B, K, D) x (N, D) -> (B, N)."""
    return best_interest_scores(out.vectors, out.mask, items)


def best_interest_scores(vectors: torch.Tensor, live: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """:func:`max_over_interests` on bare tensors (the training loss's negatives use it too):
    vectors (B, K, D), live (B, K) bool, items (N, D) -> (B, N). ``max`` keeps the argmax
    indices for its backward, not its output, so a caller may edit the result in place."""
    scores = torch.einsum("bkd,nd->bkn", vectors, items)  # (B, K, N)
    scores = scores.masked_fill(~live[:, :, None], float("-inf"))
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


class Ranker(Protocol):
    """What the engine's ranking task and serving call on a ranker.

    ``items`` (an ``ItemEncoder``) and ``profile`` (a ``ProfileEncoder``) hold the id
    embeddings that the mini-batch aware regulariser reads. ``compilable = False`` tells
    ``train.compile`` to refuse (time spent in Python-level recurrences). A ranker with a
    per-user state may also define ``stream_logits(seq, seq_mask, user, profile, ex_row,
    ex_stop, ex_item) -> (logits, aux)`` and ``stream_loss(..., label)``: the engine then feeds
    it whole user sequences (``train.stream``).
    """

    items: torch.nn.Module
    profile: torch.nn.Module
    compilable: bool

    def __init__(self, cfg: Any, features: RankFeatures) -> None: ...

    def __call__(self, batch: CTRBatch) -> torch.Tensor: ...  # (B,) logits

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor: ...


def streams(model: torch.nn.Module, stream: bool = True) -> bool:
    """Whether ``model`` is fed whole user sequences (it has ``stream_logits`` and ``stream`` is on)."""
    return stream and hasattr(model, "stream_logits")
