"""SASRec (single interest, K = 1): causal self-attention over the history; the user vector is
the output at the most recent position.

Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018: item embeddings
(scaled by sqrt(D)) plus learned position embeddings, ``num_layers`` pre-norm Transformer
blocks whose attention at position t sees only positions <= t, a final layer norm. Here the
output is scored against the same item table as every other retriever (full or sampled
softmax, as the trainer's ``train.loss`` says); the RecSys 2023 study of Klenitskiy and
Vasilev found that loss choice matters more than the architecture.

Padding: histories are left-padded, so the most recent item is at position L - 1 for every
row. A padded position attends only to itself and is zeroed after every block, and no real
position attends to a padded one, so neither the amount of padding nor the ids under it change
the output.

Shapes: ``B`` batch, ``L`` history length, ``D`` embedding size, ``H`` heads, ``N`` item ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mirec.config import MAX_COUNT, MAX_LEN, check_fields, setting, size
from mirec.errors import MirecConfigError
from mirec.models.base import Interests
from mirec.models.layers import check_item_features, item_table_embedding, items_weight


@dataclass
class SASRecConfig:
    dim: int = size(64)
    max_len: int = size(20, MAX_LEN)
    num_layers: int = size(2, MAX_COUNT)
    num_heads: int = size(1, MAX_COUNT)
    dropout: float = setting(0.2, ge=0, lt=1)  # on the inputs, attention and feed-forward outputs

    # item side information in the item vectors: off | mean | sum (layers.AttributeItems)
    item_features: str = "off"

    def validate(self) -> None:
        check_fields(self, "model_args.")
        check_item_features(self.item_features)
        if self.dim % self.num_heads:
            raise MirecConfigError(f"model_args.num_heads: must divide model_args.dim={self.dim}, "
                                   f"got {self.num_heads}")


def newest_position(block: nn.TransformerEncoderLayer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The pre-norm block's output at the newest position (L - 1) alone, the only one the readout
    uses: its query attends over every position's keys and values, but the other L - 1 queries,
    the output projection and the feed-forward layer are not computed for the other positions
    (training on Amazon Beauty at the defaults: 3.9k -> 5.5k ex/s, docs/benchmarks.md).
    x (B, L, D), attn (B * H, L, L) -> (B, D)."""
    h = block.norm1(x)  # (B, L, D)
    a = block.self_attn(h[:, -1:], h, h, attn_mask=attn[:, -1:], need_weights=False)[0]  # (B, 1, D)
    y = x[:, -1] + block.dropout1(a[:, 0])  # (B, D)
    ff = block.linear2(block.dropout(block.activation(block.linear1(block.norm2(y)))))
    return y + block.dropout2(ff)


class SASRec(nn.Module):
    # The defaults under split.protocol=loo (RunConfig.defaults_for): the item attributes lifted
    # validation NDCG@10 by 7.5% on Amazon Beauty (docs/benchmarks.md, "Amazon Beauty,
    # leave-one-out"); a data set without attributes keeps its id vectors alone.
    loo_defaults = {"model_args": {"item_features": "mean"}}

    def __init__(self, cfg: SASRecConfig, num_items: int, categories: tuple | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.emb = item_table_embedding(num_items, cfg.dim, cfg.item_features, categories)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.pos.weight, std=cfg.dim**-0.5)
        self.drop = nn.Dropout(cfg.dropout)
        block = nn.TransformerEncoderLayer(cfg.dim, cfg.num_heads, dim_feedforward=cfg.dim,
                                           dropout=cfg.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B * H, L, L) bool, True where query t may NOT look at key s: s > t, or s padding
        (a padded query looks at itself only, so no row is empty)."""
        L = mask.shape[1]
        t = torch.arange(L, device=mask.device)
        allowed = (t[None, :] <= t[:, None])[None] & (mask[:, None, :] | torch.eye(L, dtype=torch.bool,
                                                                                 device=mask.device))
        return (~allowed).repeat_interleave(self.cfg.num_heads, dim=0)

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests:
        """hist (B, L) long, mask (B, L) bool -> one interest per user (K = 1): the last position.

        ``weights`` are uniform (1/n) over the real items (the attention of several layers and
        heads has no single per-item weight to report). A window longer than ``max_len`` (the
        positions learned) is read as its last ``max_len`` items."""
        full = mask
        hist, mask = hist[:, -self.cfg.max_len:], mask[:, -self.cfg.max_len:]
        B, L = hist.shape
        keep = mask[..., None].to(self.emb.weight.dtype)  # (B, L, 1)
        x = self.emb(hist.masked_fill(~mask, 0)) * math.sqrt(self.cfg.dim)
        x = self.drop(x + self.pos.weight[-L:]) * keep  # (B, L, D); the newest item at slot L - 1
        attn = self.attention_mask(mask)
        *inner, last = self.blocks.layers
        for block in inner:
            x = block(x, src_mask=attn) * keep
        v = self.norm(newest_position(last, x, attn))  # (B, D)
        m = (full & (torch.arange(full.shape[1], device=full.device) >= full.shape[1] - L)).to(v.dtype)
        w = m / m.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, L)
        return Interests(v[:, None], torch.ones_like(mask[:, :1]), w[:, None])

    def item_embeddings(self) -> torch.Tensor:
        return items_weight(self.emb)  # (N, D)

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return out.vectors[:, 0]  # (B, D)
