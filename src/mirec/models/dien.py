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
product term is the explicit candidate-interest interaction DIN's head also gets. A ranker
trained on a retriever's candidates (``--candidates``) also feeds the head its standardised
candidate features (:mod:`mirec.data.cand_features`), as DIN does.

The seed notes write the AUGRU with ``h_t = z~_t h_{t-1} + (1 - z~_t) h~_t``, so that
``a_t = 0`` would *replace* the state; we follow the paper, where ``a_t = 0`` keeps it.

Padding: histories are left-padded, and only the T real positions are computed: they are
packed step by step, rows sorted by length (:func:`mirec.models.layers.pack_left_padded`), so
each row's recurrences start from 0 at its first real item and padding never enters (nor do
the ids written at padded positions). A row's logit does not depend on how much padding it
has. Row b's real items are taken to be its last ``mask[b].sum()`` positions.

Speed: the two recurrences dominate. Besides packing (on MovieLens with 50 positions about 40%
are padding), each distinct item in the batch is encoded and projected into the extractor's
gates once, and the AUGRU loops run with a hand-written backward (see
:class:`mirec.models.layers.AUGRU`).

Shapes: ``B`` batch, ``L`` history, ``T`` real history positions in the batch, ``U`` distinct
items in the batch, ``D`` embedding size, ``E = 2D`` item encoding (item + pooled categories)
and GRU state size, ``P`` profile encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import check_fields, setting, size
from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.layers import (
    AUGRU,
    ItemEncoder,
    ProfileEncoder,
    ctr_mlp,
    dense_part,
    pack_left_padded,
    register_dense,
)


@dataclass
class DIENConfig:
    dim: int = size(32)
    hidden: list[int] = size(factory=lambda: [200, 80])
    # prelu | dice (head). Dice, as in the DIEN authors' code: it raised validation GAUC on each
    # of seeds 1-3 (docs/benchmarks.md, Ranking)
    activation: str = "dice"
    dropout: float = setting(0.0, ge=0, lt=1)
    use_user_id: bool = True
    aux_weight: float = setting(1.0, ge=0)  # weight of the auxiliary next-behaviour loss; 0 turns it off

    def validate(self) -> None:
        check_fields(self, "model_args.")
        if self.activation not in ("prelu", "dice"):
            raise MirecConfigError(f"model_args.activation: expected prelu or dice, got {self.activation!r}")


class DIEN(nn.Module):
    # train.compile: torch.compile would unroll the Python-level time loops (minutes of
    # compiling for no measured gain), so the trainer refuses it for this model.
    compilable = False

    def __init__(self, cfg: DIENConfig, features: RankFeatures) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items = features.num_items
        self.items = ItemEncoder(features.num_items, features.item_categories, cfg.dim)
        self.profile = ProfileEncoder(features.num_users, features.profile_sizes, cfg.dim, cfg.use_user_id)
        E = self.items.dim
        self.extractor = AUGRU(E, E)  # run with no attention: a plain GRU
        self.attention = nn.Linear(E, E, bias=False)  # W in h_t W e_target
        self.evolution = AUGRU(E, E)
        F_ = register_dense(self, features.num_dense, features.dense_mean, features.dense_std)
        self.head = ctr_mlp(self.profile.dim + 3 * E + F_, cfg.hidden, cfg.activation, cfg.dropout)

    def scores_and_aux(self, batch: CTRBatch, with_aux: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and the auxiliary loss (a scalar; 0 without ``with_aux`` or when no row
        has two real items). The auxiliary negatives come from torch's global RNG.

        Only the ``T`` real history positions are computed, packed step by step
        (:func:`pack_left_padded`), and each distinct item is encoded and projected into the
        extractor's gates once (``U`` items, the candidates and negatives included).
        """
        B, L = batch.hist.shape
        pk = pack_left_padded(batch.mask)
        T, last = len(pk.row), (pk.sizes[-1] if pk.sizes else 0)
        n_pairs = T - last  # positions with a next one: all but each row's last
        ids = [pk.take(batch.hist), batch.item]  # (T,), (B,)
        if with_aux:
            nxt = batch.hist.reshape(-1)[pk.src[:n_pairs] + 1]  # the item after each of them
            ids += [nxt, torch.randint(1, max(self.num_items, 2), (n_pairs,), device=nxt.device)]
        uniq, inv = torch.unique(torch.cat(ids), return_inverse=True)
        enc = self.items(uniq)  # (U, E)
        inv = inv.split([T, B, n_pairs, n_pairs] if with_aux else [T, B])
        h = self.extractor.scan(F.embedding(inv[0], self.extractor.project(enc)), None, pk.sizes)  # (T, E)
        t = F.embedding(inv[1], enc)  # (B, E)
        scores = (h * self.attention(t)[pk.row]).sum(-1)  # (T,) h_t W e_target
        dense = scores.new_full((B * L,), torch.finfo(scores.dtype).min).index_put((pk.src,), scores)
        a = torch.softmax(dense.view(B, L), dim=1).view(-1)[pk.src]  # (T,), over each row's real steps
        evolved = self.evolution(h, a, pk.sizes)  # (T, E)
        final = t.new_zeros(B, t.shape[1]).index_copy(0, pk.row[n_pairs:], evolved[n_pairs:])  # h'_L
        logits = self.logits(batch, t, final)  # (B,)
        aux = logits.new_zeros(())
        if with_aux and n_pairs:
            pos = (h[:n_pairs] * F.embedding(inv[2], enc)).sum(-1)  # (n_pairs,)
            neg = (h[:n_pairs] * F.embedding(inv[3], enc)).sum(-1)
            aux = (F.softplus(-pos) + F.softplus(neg)).mean()  # BCE with labels 1 and 0
        return logits, aux

    def logits(self, batch: CTRBatch, t: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """The head on candidates t (B, E) and final evolved interests h'_L (B, E): (B,) logits."""
        z = torch.cat([self.profile(batch.user, batch.profile), t, final, t * final,
                       *dense_part(self, batch.dense)], dim=-1)
        return self.head(z).squeeze(-1)

    def score_one_user(self, batch: CTRBatch) -> torch.Tensor:
        """:meth:`forward` for a batch whose rows all share row 0's user, profile and history
        (serving: one user's C candidates): the interest extractor runs once on the shared
        history; only the attention and the AUGRU depend on the candidate. -> (C,) logits."""
        C = len(batch.item)
        live = batch.hist[0][batch.mask[0]]  # (T,) the shared history's items
        T = len(live)
        t = self.items(batch.item)  # (C, E)
        if T == 0:
            return self.logits(batch, t, torch.zeros_like(t))
        h = self.extractor.scan(self.extractor.project(self.items(live)), None, [1] * T)  # (T, E)
        a = torch.softmax(self.attention(t) @ h.T, dim=1)  # (C, T)
        E = h.shape[1]
        xp = self.evolution.project(h)[:, None].expand(T, C, 3 * E).reshape(T * C, 3 * E)  # step-major
        evolved = self.evolution.scan(xp, a.T.reshape(-1), [C] * T)  # (T C, E)
        return self.logits(batch, t, evolved[-C:])

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        return self.scores_and_aux(batch, with_aux=False)[0]  # (B,) logits

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor:
        w = self.cfg.aux_weight
        logits, aux = self.scores_and_aux(batch, with_aux=w > 0)
        main = F.binary_cross_entropy_with_logits(logits, label)
        return main + w * aux if w > 0 else main
