"""GRU4Rec (single interest, K = 1): the user vector is the GRU's last hidden state.

Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016. Here
the GRU's hidden size is ``dim`` and its last hidden state is used directly as ``v_u`` (no output
layer), so it is scored against the same item table as every other retriever.

Padding: histories are left-padded, and a GRU started on leading padding would carry a state
that depends on how much padding there is (biases move the state even on zero inputs). We
rotate each row so that its real items come first (right padding), run the GRU over all L steps
and read the output at step n - 1. The output at step t depends only on steps 0..t, so trailing
padding cannot reach it. This keeps one dense cuDNN call with no packing, sorting or Python loop
(pack_padded_sequence would save the padded steps but costs a sort and unsort and lengths on
the CPU; zeroing the state per step needs a step-by-step loop).

Shapes: ``B`` batch, ``L`` history length, ``D`` embedding size, ``N`` item ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mirec.config import MAX_COUNT, MAX_LEN, check_fields, setting, size
from mirec.models.base import Interests
from mirec.models.layers import check_item_features, item_table_embedding, items_weight


@dataclass
class GRU4RecConfig:
    dim: int = size(64)
    max_len: int = size(20, MAX_LEN)
    num_layers: int = size(1, MAX_COUNT)
    dropout: float = setting(0.0, ge=0, lt=1)  # on the input embeddings and between GRU layers

    # item side information in the item vectors: off | mean | sum (layers.AttributeItems)
    item_features: str = "off"

    def validate(self) -> None:
        check_fields(self, "model_args.")
        check_item_features(self.item_features)


def left_to_right_padded(hist: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Rotate each left-padded row (B, L) left by L - n so its n real items come first."""
    L = hist.shape[1]
    idx = (torch.arange(L, device=hist.device)[None, :] + (L - lens)[:, None]) % L  # (B, L)
    return hist.gather(1, idx)


class GRU4Rec(nn.Module):
    def __init__(self, cfg: GRU4RecConfig, num_items: int, categories: tuple | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.emb = item_table_embedding(num_items, cfg.dim, cfg.item_features, categories)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.dim, cfg.dim, cfg.num_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests:
        """hist (B, L) long, mask (B, L) bool -> one interest per user (K = 1).

        ``weights`` are uniform (1/n) over the real items: every real item feeds the last
        state and the GRU has no attention to report. An empty history reads the state after
        one padding step (a constant vector), never NaN; the interest stays live.
        """
        lens = mask.sum(dim=1)  # (B,)
        x = left_to_right_padded(hist.masked_fill(~mask, 0), lens)  # (B, L)
        h, _ = self.gru(self.drop(self.emb(x)))  # (B, L, D)
        last = (lens - 1).clamp(min=0)  # (B,)
        v = h[torch.arange(len(lens), device=h.device), last]  # (B, D)
        m = mask.to(v.dtype)
        w = m / m.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, L)
        return Interests(v[:, None], torch.ones_like(mask[:, :1]), w[:, None])  # K = 1

    def item_embeddings(self) -> torch.Tensor:
        return items_weight(self.emb)  # (N, D)

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return out.vectors[:, 0]  # (B, D)
