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

from mirec.config import MAX_COUNT, MAX_LEN, check_fields, setting, size
from mirec.errors import MirecConfigError
from mirec.models.base import Interests, argmax_readout
from mirec.models.layers import (
    check_item_features,
    history_encoder,
    item_table_embedding,
    items_weight,
    masked_softmax,
    sigmoid_,
    tanh,
)


@dataclass
class ComiRecSAConfig:
    dim: int = size(64)
    # K 3, hidden_factor 1 and lr 3.75e-3 (default_lr) came within 3.6% of the best setting
    # found on the validation users of MovieLens-100K, ml-1m-half, Amazon Beauty and two planted
    # logs; the paper's K 4, hidden 4, lr 1e-3 was 6.9% short on ml-1m-half, and K 2 6.8% on
    # the 200-category planted log (docs/benchmarks.md, "Defaults against the tuned settings").
    num_interests: int = size(3, MAX_COUNT)
    max_len: int = size(20, MAX_LEN)
    hidden_factor: int = size(1, MAX_COUNT)  # W1 is (hidden_factor * D) x D
    dropout: float = setting(0.0, ge=0, lt=1)  # on the attention's hidden layer
    # Transformer blocks (SASRec's: pre-norm, one head, dropout encoder_dropout) that first let
    # every history item see the others, so the interests mix items in context rather than a
    # bag of items; 0 = the paper's model.
    encoder_layers: int = size(0, MAX_COUNT, least=0)
    encoder_dropout: float = setting(0.2, ge=0, lt=1)
    # Dropout on the item + position vectors entering the encoder (SASRec's dropout of its
    # input embeddings); 0 = none, as before it existed.
    input_dropout: float = setting(0.0, ge=0, lt=1)
    # One more interest, the newest position's vector (the encoder's output there, which is what
    # SASRec's user vector is; without an encoder the newest item's own embedding): K + 1
    # interests, the sequence's next step beside the K pooled ones.
    sequential_interest: bool = False

    # item side information in the item vectors: off | mean | sum (layers.AttributeItems)
    item_features: str = "off"

    def validate(self) -> None:
        check_fields(self, "model_args.")
        check_item_features(self.item_features)
        if self.input_dropout and not self.encoder_layers:
            raise MirecConfigError(f"model_args.input_dropout: {self.input_dropout} drops the encoder's "
                                   f"input, and model_args.encoder_layers is 0")


class ComiRecSA(nn.Module):
    gathers_also = True  # interests(..., also=ids) returns their rows from the same lookup
    # train.routing_reg "auto": REMI's routing regulariser at 10 was the best or level on the
    # validation users of MovieLens-100K, ml-1m-half, Amazon Beauty and a planted log
    # (docs/benchmarks.md, "The routing regulariser").
    default_routing_reg = 10.0
    default_lr = 3.75e-3  # train.lr "auto"
    # The defaults under split.protocol=loo (RunConfig.defaults_for), each chosen on Amazon
    # Beauty's validation users (docs/benchmarks.md, "Amazon Beauty, leave-one-out"). Scoring
    # every item by its best interest there lifts validation NDCG@10 by 8%, but the pooled
    # interests then fold into one vector (pairwise cosine 0.99): the top of a next-item
    # ranking, not several interests; the ComiRec protocol keeps readout. The moving average of
    # the weights (about four epochs' steps at 0.9995) lifted validation NDCG@10 a little and
    # HR@20 more, over three seeds at 0.999; 0.9995 was level with 0.999, a hair above on seed 1.
    loo_defaults = {"model_args": {"encoder_layers": 1, "encoder_dropout": 0.5, "item_features": "mean",
                                   "sequential_interest": True},
                    "train": {"negative_score": "max", "weight_average": 0.9995}}

    def __init__(self, cfg: ComiRecSAConfig, num_items: int, categories: tuple | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        D, K = cfg.dim, cfg.num_interests
        self.item_emb = item_table_embedding(num_items, D, cfg.item_features, categories)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_len, D) * D**-0.5)  # P, (max_len, D)
        self.W1 = nn.Linear(D, cfg.hidden_factor * D, bias=False)
        self.W2 = nn.Linear(cfg.hidden_factor * D, K, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder, self.in_drop = None, nn.Dropout(cfg.input_dropout)
        if cfg.encoder_layers:
            self.encoder = history_encoder(D, cfg.encoder_layers, cfg.encoder_dropout)

    def interests(self, hist: torch.Tensor, mask: torch.Tensor,
                  also: torch.Tensor | None = None) -> Interests:
        """(B, L) item ids and (B, L) bool mask -> K interests (all live). ``also`` (R,): item
        ids whose embeddings come back as ``rows`` (R, D), read in the same lookup as the
        history's (the training loss's targets and negatives: one gradient table, not two)."""
        B, L = hist.shape
        # The attention's hidden layer, (B, L, 4D), is most of a step's work: compute it at the
        # M real positions only (a third of them on Amazon Beauty, whose histories are short).
        if torch.compiler.is_compiling():  # one fixed-shape graph: every position (M = B L)
            live = torch.arange(B * L, device=hist.device)
        else:
            live = mask.reshape(-1).nonzero().squeeze(1)  # (M,) flat indices of real positions
        ids = hist.masked_fill(~mask, 0).reshape(-1)[live]  # (M,), padding -> item 0 (a zero row)
        rows = None
        if also is None:
            H_live = self.item_emb(ids)  # (M, D)
        else:
            H_live, rows = self.item_emb(torch.cat([ids, also])).split([len(ids), len(also)])
        H = H_live.new_zeros(B * L, H_live.shape[1]).index_copy(0, live, H_live)
        H = H.view(B, L, -1)  # (B, L, D), zero on padding
        P = self.pos_emb[-L:]  # (L, D), aligned to the most recent item
        if self.encoder is not None:  # each item in the context of the others, (B, L, D)
            H = self.encoder(self.in_drop(H + P), src_key_padding_mask=~mask) * mask[..., None]
            H_live = H.reshape(B * L, -1)[live]  # (M, D)
        if self.drop.p > 0 and self.training:
            hidden = self.drop(tanh(self._pre(H_live, ids, P, self.W1.weight, live, L)))  # (M, 4D)
            scores = self.W2(hidden)  # (M, K)
        else:
            # W2 tanh(x) = W2 (2 sigmoid(2x) - 1) = 2 W2 sigmoid(2x) - W2 1. The last term is
            # the same at every position, so it cancels in the softmax over positions: the
            # same A from one in-place sigmoid instead of tanh's four passes over (M, 4D).
            s = sigmoid_(self._pre(H_live, ids, P, 2.0 * self.W1.weight, live, L))  # (M, 4D)
            scores = F.linear(s, 2.0 * self.W2.weight)  # (M, K)
        logits = scores.new_zeros(B * L, scores.shape[1]).index_copy(0, live, scores)  # (B*L, K)
        A = masked_softmax(logits.view(B, L, -1), mask[:, :, None], dim=1)  # (B, L, K), sum 1 over L
        A = A.transpose(1, 2)  # (B, K, L)
        V = torch.einsum("bkl,bld->bkd", A, H)  # (B, K, D)
        if self.cfg.sequential_interest:  # the newest position's output; its weights uniform
            m = mask.to(A.dtype)
            u = m / m.sum(1, keepdim=True).clamp(min=1.0)  # (B, L), no routing penalty (variance 0)
            V = torch.cat([V, H[:, -1:]], dim=1)  # (B, K + 1, D)
            A = torch.cat([A, u[:, None]], dim=1)  # (B, K + 1, L)
        live_k = torch.ones(B, V.shape[1], dtype=torch.bool, device=hist.device)
        return Interests(vectors=V, mask=live_k, weights=A, rows=rows)

    def _pre(self, H: torch.Tensor, ids: torch.Tensor, P: torch.Tensor, W1: torch.Tensor,
             live: torch.Tensor, L: int) -> torch.Tensor:
        """``W1 (H + P)`` at the real positions: (M, 4D), for the embeddings H (M, D) of their
        item ids (M,) (with an encoder, its outputs there), at flat indices ``live`` (M,) into
        the (B, L) batch, and the positions' embeddings P (L, D). W1 (H + P) = W1 H + W1 P. When
        the catalogue has fewer rows than the batch has real positions, projecting the whole
        item table once and gathering its rows is the same product for fewer multiply-adds
        (N x D x 4D instead of M x D x 4D); not with a sparse item table
        (``train.optimizer=sparse``), whose gradient must stay on the rows the batch read, nor
        behind an encoder, whose outputs are not the table's rows."""
        pos = live % L  # (M,) position of each real item
        if self.encoder is None and not self.item_emb.sparse and self.item_emb.num_embeddings < len(live):
            table = F.linear(items_weight(self.item_emb), W1)  # (N, 4D)
            return F.embedding(ids, table).add_(F.linear(P, W1)[pos])
        return F.linear(H + P[pos], W1)

    def item_embeddings(self) -> torch.Tensor:
        return items_weight(self.item_emb)  # (N, D)

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return argmax_readout(out, target_emb)  # (B, D)
