"""DIN: Deep Interest Network (Zhou et al., KDD 2018).

For a candidate t and the user's earlier positives h_1..h_L, DIN's activation unit scores each
history item, ``a_i = MLP([h_i, t, h_i - t, h_i * t])``, and pools ``sum_i a_i h_i``. There is
no softmax over i: the weights need not sum to 1, so the pooled vector's size keeps how
strongly the history speaks for this candidate. Padding positions get weight exactly 0.
The pooled interest, the candidate and the user's profile go through an MLP to one logit.

Shapes: ``B`` batch, ``L`` history, ``D`` embedding size, ``E = 2D`` item encoding
(item + pooled categories), ``P`` profile encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.layers import ItemEncoder, ProfileEncoder, activation, ctr_mlp


@dataclass
class DINConfig:
    dim: int = 32
    attention_hidden: list[int] = field(default_factory=lambda: [80, 40])
    hidden: list[int] = field(default_factory=lambda: [200, 80])
    activation: str = "prelu"  # prelu | dice (head and activation unit)
    dropout: float = 0.0
    use_user_id: bool = True

    def validate(self) -> None:
        if self.dim < 1:
            raise MirecConfigError(f"model_args.dim: must be >= 1, got {self.dim}")
        if self.activation not in ("prelu", "dice"):
            raise MirecConfigError(f"model_args.activation: expected prelu or dice, got {self.activation!r}")


class ActivationUnit(nn.Module):
    """``a_i = MLP([h_i, t, h_i - t, h_i * t])``: (..., E), (..., E) -> (...) weights.

    The first layer is linear in the four parts, so it is applied as ``h W_h + t W_t +
    (h * t) W_p`` with ``W_h``, ``W_t`` absorbing the difference term: the 4E-wide concat is
    never built.
    """

    def __init__(self, dim: int, hidden: list[int], act: str) -> None:
        super().__init__()
        self.first = nn.Linear(4 * dim, hidden[0])
        self.rest = nn.Sequential(activation(act, hidden[0]), ctr_mlp(hidden[0], hidden[1:], act))
        self.dim = dim

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(..., E) history items and their rows' candidates -> (...) weights."""
        E = self.dim
        W = self.first.weight  # (H, 4E) over [h, t, h - t, h * t]
        w_h, w_t, w_d, w_p = W[:, :E], W[:, E:2 * E], W[:, 2 * E:3 * E], W[:, 3 * E:]
        z = F.linear(h, w_h + w_d) + F.linear(t, w_t - w_d, self.first.bias) + F.linear(h * t, w_p)
        return self.rest(z).squeeze(-1)


class DIN(nn.Module):
    def __init__(self, cfg: DINConfig, features: RankFeatures) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = ItemEncoder(features.num_items, features.item_categories, cfg.dim)
        self.profile = ProfileEncoder(features.num_users, features.profile_sizes, cfg.dim, cfg.use_user_id)
        E = self.items.dim
        self.attention = ActivationUnit(E, cfg.attention_hidden, cfg.activation)
        self.head = ctr_mlp(self.profile.dim + 3 * E, cfg.hidden, cfg.activation, cfg.dropout)

    def interest(self, batch: CTRBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled interest (B, E) and the activation weights (B, L), 0 on padding.

        Only the live history positions are encoded and scored (``P`` of them): on MovieLens
        with 50 positions about 40% are padding, and the activation unit is most of the cost.
        """
        row, col = batch.mask.nonzero(as_tuple=True)  # (P,) each
        h = self.items(batch.hist[row, col])  # (P, E)
        a = self.attention(h, t[row])  # (P,), no softmax
        pooled = t.new_zeros(t.shape).index_add_(0, row, a[:, None] * h)  # (B, E)
        weights = t.new_zeros(batch.mask.shape).index_put_((row, col), a)  # (B, L)
        return pooled, weights

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        t = self.items(batch.item)  # (B, E)
        pooled, _ = self.interest(batch, t)
        x = torch.cat([self.profile(batch.user, batch.profile), t, pooled, t * pooled], dim=-1)
        return self.head(x).squeeze(-1)  # (B,) logits

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(batch), label)
