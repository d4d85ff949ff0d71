"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019).

Three stages over the user's earlier positives ``e_1..e_L`` (most recent last):

1. Interest extractor: a GRU over the encoded history gives ``h_1..h_L``. An auxiliary loss
   makes each ``h_t`` predict the next behaviour: ``sigmoid(h_t . e_{t+1})`` against
   ``sigmoid(h_t . e_neg)`` for a negative drawn uniformly from items 1..N-1 (the paper uses a
   small MLP; the inner product needs no extra weights and costs nothing next to the loops),
   binary cross-entropy averaged over the steps where t and t + 1 are both real.
2. Attention of the candidate over the interests, bilinear as in the paper:
   ``a_t = softmax_t(h_t W e_target)`` over the real positions only.
3. Interest evolution: an AUGRU (:class:`mirec.models.layers.AUGRU`) whose update gate is
   scaled by ``a_t``: ``u'_t = a_t u_t``, ``h'_t = (1 - u'_t) h'_{t-1} + u'_t h~_t``.

``[profile, candidate, h'_L, candidate * h'_L]`` goes through an MLP to one logit; the
product term is the explicit candidate-interest interaction DIN's head also gets.

The seed notes write the AUGRU with ``h_t = z~_t h_{t-1} + (1 - z~_t) h~_t``, so that
``a_t = 0`` would *replace* the state; we follow the paper, where ``a_t = 0`` keeps it.

Padding: histories are left-padded. The extractor is the AUGRU with the 0/1 mask as its
attention, i.e. a GRU whose state stays exactly 0 through the padding, and the evolution
AUGRU gets attention exactly 0 there, so a row's logit does not depend on how much padding
it has (nor on the ids written at padded positions).

Shapes: ``B`` batch, ``L`` history, ``D`` embedding size, ``E = 2D`` item encoding
(item + pooled categories) and GRU state size, ``P`` profile encoding. The history is
encoded time-major, (L, B, E), which is the layout the recurrent loops step through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.layers import AUGRU, ItemEncoder, ProfileEncoder, ctr_mlp, masked_softmax


@dataclass
class DIENConfig:
    dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [200, 80])
    activation: str = "prelu"  # prelu | dice (head)
    dropout: float = 0.0
    use_user_id: bool = True
    aux_weight: float = 1.0  # weight of the auxiliary next-behaviour loss; 0 turns it off

    def validate(self) -> None:
        if self.dim < 1:
            raise MirecConfigError(f"model_args.dim: must be >= 1, got {self.dim}")
        if self.activation not in ("prelu", "dice"):
            raise MirecConfigError(f"model_args.activation: expected prelu or dice, got {self.activation!r}")
        if not 0 <= self.dropout < 1:
            raise MirecConfigError(f"model_args.dropout: must be in [0, 1), got {self.dropout}")
        if self.aux_weight < 0:
            raise MirecConfigError(f"model_args.aux_weight: must be >= 0, got {self.aux_weight}")


class DIEN(nn.Module):
    def __init__(self, cfg: DIENConfig, features: RankFeatures) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items = features.num_items
        self.items = ItemEncoder(features.num_items, features.item_categories, cfg.dim)
        self.profile = ProfileEncoder(features.num_users, features.profile_sizes, cfg.dim, cfg.use_user_id)
        E = self.items.dim
        self.extractor = AUGRU(E, E)  # driven by the 0/1 mask: a GRU that skips padding
        self.attention = nn.Linear(E, E, bias=False)  # W in h_t W e_target
        self.evolution = AUGRU(E, E)
        self.head = ctr_mlp(self.profile.dim + 3 * E, cfg.hidden, cfg.activation, cfg.dropout)

    def scores_and_aux(self, batch: CTRBatch, with_aux: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and the auxiliary loss (a scalar; 0 when ``with_aux`` is False or no row
        has two consecutive real items). The auxiliary negatives come from torch's global RNG."""
        mask = batch.mask.t()  # (L, B)
        x = self.items(batch.hist.t())  # (L, B, E)
        h = self.extractor(x, mask)  # (L, B, E), exactly 0 before each row's first real item
        t = self.items(batch.item)  # (B, E)
        a = masked_softmax(torch.einsum("lbe,be->lb", h, self.attention(t)), mask, dim=0)  # (L, B)
        final = self.evolution(h, a)[-1]  # (B, E)
        z = torch.cat([self.profile(batch.user, batch.profile), t, final, t * final], dim=-1)
        logits = self.head(z).squeeze(-1)  # (B,)
        aux = logits.new_zeros(())
        if with_aux and len(mask) > 1:
            aux = self.aux_loss(h[:-1], x[1:], mask[:-1] & mask[1:])
        return logits, aux

    def aux_loss(self, h: torch.Tensor, nxt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``-log sigmoid(h_t . e_{t+1}) - log(1 - sigmoid(h_t . e_neg))`` averaged over the valid
        steps: h, nxt (L-1, B, E), valid (L-1, B) bool."""
        neg_ids = torch.randint(1, max(self.num_items, 2), valid.shape, device=h.device)  # (L-1, B)
        pos = (h * nxt).sum(-1)  # (L-1, B)
        neg = (h * self.items(neg_ids)).sum(-1)
        per_step = F.softplus(-pos) + F.softplus(neg)  # BCE with labels 1 and 0
        return (per_step * valid).sum() / valid.sum().clamp(min=1)

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        return self.scores_and_aux(batch, with_aux=False)[0]  # (B,) logits

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor:
        w = self.cfg.aux_weight
        logits, aux = self.scores_and_aux(batch, with_aux=w > 0)
        main = F.binary_cross_entropy_with_logits(logits, label)
        return main + w * aux if w > 0 else main
