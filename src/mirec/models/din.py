"""DIN: Deep Interest Network (Zhou et al., KDD 2018).

For a candidate t and the user's earlier positives h_1..h_L, DIN's activation unit scores each
history item, ``a_i = MLP([h_i, t, h_i - t, h_i * t])``, and pools ``sum_i a_i h_i``. There is
no softmax over i: the weights need not sum to 1, so the pooled vector's size keeps how
strongly the history speaks for this candidate. Padding positions get weight exactly 0.
The pooled interest, the candidate, their product (``product``; the paper's head has none) and
the user's profile go through an MLP to one logit.

Shapes: ``B`` batch, ``L`` history, ``D`` embedding size, ``E = 2D`` item encoding
(item + pooled categories), ``P`` profile encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import check_fields, setting, size
from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.layers import ItemEncoder, ProfileEncoder, activation, ctr_mlp, dense_part, register_dense


@dataclass
class DINConfig:
    dim: int = size(32)
    attention_hidden: list[int] = size(factory=lambda: [36])  # the peer's; the paper used 80-40
    hidden: list[int] = size(factory=lambda: [200, 80])
    activation: str = "prelu"  # prelu | dice (head and activation unit)
    dropout: float = setting(0.0, ge=0, lt=1)
    use_user_id: bool = True
    product: bool = True  # the head also gets candidate * pooled interest (the paper's has not)

    def validate(self) -> None:
        check_fields(self, "model_args.")
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

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first layer's weights on ``h``, ``t`` and ``h * t``, each (H, E)."""
        E = self.dim
        W = self.first.weight  # (H, 4E) over [h, t, h - t, h * t]
        w_h, w_t, w_d, w_p = W[:, :E], W[:, E:2 * E], W[:, 2 * E:3 * E], W[:, 3 * E:]
        return w_h + w_d, w_t - w_d, w_p

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(..., E) history items and their rows' candidates -> (...) weights."""
        w_h, w_t, w_p = self.parts()
        z = F.linear(h, w_h) + F.linear(t, w_t, self.first.bias) + F.linear(h * t, w_p)
        return self.rest(z).squeeze(-1)

    def from_table(self, table: torch.Tensor, h: torch.Tensor, hist: torch.Tensor, t: torch.Tensor,
                   row: torch.Tensor) -> torch.Tensor:
        """The same weights with the ``h`` part computed once per item of ``table`` (N, E), the
        encodings of all items, instead of once per history position.
        h (P, E) = table[hist], hist (P,) item ids, t (B, E) candidates, row (P,) each position's
        batch row -> (P,). (``index_select`` rather than ``[]``: its backward is a fast
        ``index_add_``, not an accumulating ``index_put_``.)"""
        w_h, w_t, w_p = self.parts()
        z = (F.linear(table, w_h).index_select(0, hist)
             + F.linear(t, w_t, self.first.bias).index_select(0, row)
             + F.linear(h * t.index_select(0, row), w_p))  # (P, H)
        return self.rest(z).squeeze(-1)


class DIN(nn.Module):
    def __init__(self, cfg: DINConfig, features: RankFeatures) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = ItemEncoder(features.num_items, features.item_categories, cfg.dim)
        self.profile = ProfileEncoder(features.num_users, features.profile_sizes, cfg.dim, cfg.use_user_id)
        E = self.items.dim
        self.attention = ActivationUnit(E, cfg.attention_hidden, cfg.activation)
        # a ranker trained on a retriever's candidates also reads F standardised dense features
        register_dense(self, features.num_dense, features.dense_mean, features.dense_std)
        self.head = ctr_mlp(self.profile.dim + (3 if cfg.product else 2) * E + self.num_dense, cfg.hidden,
                            cfg.activation, cfg.dropout)

    def interest(self, table: torch.Tensor, hist: torch.Tensor, row: torch.Tensor,
                 t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled interest (B, E) and the activation weights (P,) of the ``P`` live history
        positions, given as rows ``hist`` (P,) of ``table`` (U, E) and their batch rows ``row``.

        Only live positions are scored: on MovieLens with 50 positions about 40% are padding,
        and the activation unit is most of the cost. Through ``table`` a position costs a row
        lookup, not an encoding, and the ``h`` part of the first layer is per item.
        """
        h = table.index_select(0, hist)  # (P, E)
        a = self.attention.from_table(table, h, hist, t, row)  # (P,), no softmax
        pooled = t.new_zeros(t.shape).index_add_(0, row, a[:, None] * h)  # (B, E)
        return pooled, a

    def encode(self, batch: CTRBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Item table (U, E), candidates (B, E), live history rows into the table (P,) and their
        batch rows (P,)."""
        row, col = batch.mask.nonzero(as_tuple=True)  # (P,) each
        table, (hist, item) = self.items.lookup(batch.hist[row, col], batch.item)
        return table, table.index_select(0, item), hist, row

    def weights(self, batch: CTRBatch) -> torch.Tensor:
        """The activation weights (B, L) over history positions, 0 on padding."""
        table, t, hist, row = self.encode(batch)
        _, a = self.interest(table, hist, row, t)
        return a.new_zeros(batch.mask.shape).masked_scatter_(batch.mask, a)  # (B, L)

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        table, t, hist, row = self.encode(batch)  # (U, E), (B, E), (P,), (P,)
        pooled, _ = self.interest(table, hist, row, t)
        parts = [self.profile(batch.user, batch.profile), t, pooled]
        parts += [t * pooled] if self.cfg.product else []
        x = torch.cat(parts + dense_part(self, batch.dense), dim=-1)  # (B, F) candidate features last
        return self.head(x).squeeze(-1)  # (B,) logits

    def score_one_user(self, batch: CTRBatch) -> torch.Tensor:
        """:meth:`forward` for a batch whose rows all share row 0's user, profile and history
        (serving: one user's C candidates): (C,) logits.

        The activation unit's first layer over ``[h, t, h - t, h * t]`` is linear, so for history
        item l and candidate c it is ``t_c (W_t + diag(h_l) W_p)^T + (h_l W_h^T + b)``: the matrix
        and the bias are made once per history item, and the pairs are L batched matmuls of all C
        candidates (C x L gathered rows and the 4E-wide concat are never built)."""
        live = batch.hist[0][batch.mask[0]]  # (L,) the shared history's items
        h = self.items(live)  # (L, E)
        t = self.items(batch.item)  # (C, E)
        w_h, w_t, w_p = self.attention.parts()  # each (H, E)
        per_item = torch.addcmul(w_t.t()[None], h[:, :, None], w_p.t()[None])  # (L, E, H)
        bias = F.linear(h, w_h, self.attention.first.bias)[:, None]  # (L, 1, H)
        z = torch.baddbmm(bias, t[None].expand(len(h), -1, -1), per_item)  # (L, C, H)
        a = self.attention.rest(z).squeeze(-1)  # (L, C), no softmax
        pooled = a.t() @ h  # (C, E)
        parts = [self.profile(batch.user, batch.profile), t, pooled]
        parts += [t * pooled] if self.cfg.product else []
        return self.head(torch.cat(parts + dense_part(self, batch.dense), dim=-1)).squeeze(-1)

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(batch), label)
