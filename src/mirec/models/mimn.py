"""MIMN: Multi-channel user Interest Memory Network (Pi et al., "Practice on Long Sequential User
Behavior Modeling for Click-Through Rate Prediction", KDD 2019).

MIMN keeps, per user, a fixed-size state that each new behaviour updates in place, so serving
reads the state and never the raw sequence (the paper's UIC server). Two parts:

* **UIC** (User Interest Center), a neural Turing machine. A GRU controller reads the behaviour
  ``e_t`` and the last read vector ``r_{t-1}`` and emits a read and a write head. Each head's
  key ``k`` addresses the m slots by content, ``w(i) = softmax_i(beta K(k, M(i)))`` with
  ``beta = 1 + softplus(.)``; as in the authors' code ``K`` is the mean of the cosine to the slot
  content and the cosine to a learned per-slot key (with the memory starting at zero, the keys
  are what tells the slots apart at first). The read vector is ``r_t = sum_i w_r(i) M(i)``; the
  write is ``M_t = M_{t-1} * (1 - w_w e^T) + w_w a^T`` with erase ``e = sigmoid(.)`` and add
  ``a = tanh(.)``.
* **Memory utilisation regularisation** (section 4.2). The write weights are re-balanced by how
  much each slot has been written so far, ``w~_t = w_t P_t`` with ``P_t = softmax(W_g g_{t-1})``
  and ``g_t = sum_{c <= t} w~_c``. The paper calls ``P_t`` a weight transfer matrix without
  saying how ``W_g g`` becomes one; here ``W_g`` maps ``g`` to m x m logits softmaxed per row,
  so ``P_t`` moves weight between slots and ``w~_t`` still sums to 1. ``g`` enters as shares
  ``g / n`` (n = behaviours so far) so that ``W_g`` sees one scale at every history length, and
  ``P`` starts close to the identity (a uniform ``P`` would write every behaviour to all slots
  alike). The loss adds ``util_weight * sum_i (g_T(i)/n - 1/m)^2``, the paper's squared
  deviation of the accumulated write weights across slots, also on shares: on raw sums it grows
  with n^2 and long histories would outweigh the click loss. (The authors' code differs: it
  feeds ``g`` to the heads and sharpens the write weights NTM-style; we follow the paper.)
* **MIU** (Memory Induction Unit): an interest state ``S(i)`` per slot evolved by one GRU
  shared by all slots from ``[M_t(i), e_t]``. The paper updates only the top-k slots by read
  weight (the authors' code: top 1). Here, by default, every slot is updated with its update
  gate scaled by its write weight ``w~_t(i)`` (AUGRU-style, ``S' = S + w~ u (n - S)``): the
  slot written is the one whose content changed, a slot not written keeps its interest state,
  the gate is differentiable (the addressing learns from the MIU too), and with near one-hot
  write weights it approaches a top-1 choice. ``miu_top_k = k`` updates only the k slots with
  the largest write weights (still gated by them): closer to the paper, and the MIU then costs
  about k/m as much.

Prediction: the candidate attends over the m memory slots and over the m MIU states
(``softmax_i(q . M(i) / sqrt(E))`` with a learned query per part); the pooled vectors, their
products with the candidate, the mean history encoding (a running sum in the state, as the
authors' model also feeds the summed history), the candidate and the profile go through an
MLP to one logit. A ranker trained on a retriever's candidates (``--candidates``) also feeds the
head its standardised candidate features (:mod:`mirec.data.cand_features`), as DIN does.

Padding: a step with ``live`` False leaves the state exactly unchanged, so left padding (and
whatever ids sit under the mask) cannot reach the logits.

Cost: the behaviours are read one step at a time (the memory is a recurrence), so the input
projections of all behaviours are computed before the loop with one matmul each and the loop
does only what depends on the previous state; columns where every row is padding are skipped.

Shapes: ``B`` batch, ``L`` history, ``D`` embedding size, ``E = 2D`` item encoding (item +
pooled categories; also the memory, controller and MIU width), ``m`` slots, ``P`` profile
encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import MAX_COUNT, check_fields, setting, size
from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.layers import ItemEncoder, ProfileEncoder, ctr_mlp, dense_part, register_dense


@dataclass
class MIMNConfig:
    dim: int = size(32)
    slots: int = size(4, MAX_COUNT)  # memory slots m (also MIU channels)
    hidden: list[int] = size(factory=lambda: [200, 80])
    activation: str = "prelu"  # prelu | dice (head)
    dropout: float = setting(0.0, ge=0, lt=1)
    use_user_id: bool = True
    util_weight: float = setting(0.1, ge=0)  # weight of the memory utilisation regulariser
    rebalance: bool = True  # re-balance write weights by slot utilisation (w~ = w P)
    use_miu: bool = True  # Memory Induction Unit on/off (off = UIC only)
    miu_top_k: int = 0  # MIU updates the k slots written most per step; 0 = all slots

    def validate(self) -> None:
        check_fields(self, "model_args.")
        if self.activation not in ("prelu", "dice"):
            raise MirecConfigError(f"model_args.activation: expected prelu or dice, got {self.activation!r}")
        if not 0 <= self.miu_top_k <= self.slots:
            raise MirecConfigError(f"model_args.miu_top_k: must be in [0, slots = {self.slots}], "
                                   f"got {self.miu_top_k}")


@dataclass
class MIMNState:
    """Everything MIMN keeps per user; its size does not depend on the history length."""

    memory: torch.Tensor  # (B, m, E) UIC memory M_t
    controller: torch.Tensor  # (B, E) controller GRU hidden state
    read: torch.Tensor  # (B, E) last read vector r_t (the controller's next input)
    interest: torch.Tensor  # (B, m, E) MIU interest states S_t
    usage: torch.Tensor  # (B, m) accumulated write weights g_t
    hist_sum: torch.Tensor  # (B, E) sum of the behaviour encodings
    count: torch.Tensor  # (B,) float, behaviours so far n

    def keep(self, live: torch.Tensor, old: MIMNState) -> MIMNState:
        """Rows where ``live`` (B,) is True from ``self``, the others exactly from ``old``."""
        out = {}
        for f in fields(self):
            new, prev = getattr(self, f.name), getattr(old, f.name)
            out[f.name] = torch.where(live.view(-1, *[1] * (new.dim() - 1)), new, prev)
        return MIMNState(**out)


def utilisation_penalty(usage: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``sum_i (g(i)/n - mean_i g(i)/n)^2`` averaged over users: (B, m), (B,) -> scalar.

    0 when every slot got the same share of the writes, ``1 - 1/m`` when one slot got them all;
    a user without history (n = 0, g = 0) adds 0.
    """
    share = usage / count.clamp(min=1)[:, None]  # (B, m), sums to 1 once n > 0
    return (share - share.mean(-1, keepdim=True)).pow(2).sum(-1).mean()


def _gru_gates(gi: torch.Tensor, gh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU update gate u and candidate n from input and hidden projections (..., 3H) in the
    gate order (r, u, n): ``r, u = sigmoid(gi + gh)``, ``n = tanh(gi_n + r * gh_n)``."""
    H = gi.shape[-1] // 3
    ru = torch.sigmoid(gi[..., :2 * H] + gh[..., :2 * H])
    n = torch.tanh(torch.addcmul(gi[..., 2 * H:], ru[..., :H], gh[..., 2 * H:]))
    return ru[..., H:], n


class MIMN(nn.Module):
    # train.compile: torch.compile would unroll the Python-level time loops (minutes of
    # compiling for no measured gain), so the trainer refuses it for this model.
    compilable = False

    def __init__(self, cfg: MIMNConfig, features: RankFeatures) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.items = ItemEncoder(features.num_items, features.item_categories, cfg.dim)
        self.profile = ProfileEncoder(features.num_users, features.profile_sizes, cfg.dim, cfg.use_user_id)
        E, m = self.items.dim, cfg.slots
        self.E, self.m = E, m
        # UIC controller: a GRU on [e_t, r_{t-1}]; e_t's projection is done for all steps at once.
        self.ctrl_x = nn.Linear(E, 3 * E)
        self.ctrl_r = nn.Linear(E, 3 * E, bias=False)
        self.ctrl_h = nn.Linear(E, 3 * E)
        # Heads: read key, write key (2E), read beta, write beta (2), erase, add (2E).
        self.heads = nn.Linear(E, 4 * E + 2)
        with torch.no_grad():  # beta = 1 + softplus(.) starts at 5: soft but not uniform writes
            self.heads.bias[2 * E:2 * E + 2] = math.log(math.expm1(4.0))
        self.slot_keys = nn.Parameter(torch.randn(m, E))
        if cfg.rebalance:  # W_g: utilisation shares (m) -> transfer matrix logits (m x m)
            self.transfer = nn.Linear(m, m * m)
            with torch.no_grad():  # P_0 ~ identity: row i keeps ~95% of its weight
                self.transfer.weight.zero_()
                self.transfer.bias.copy_((math.log(m) + 3.0) * torch.eye(m).flatten())
        if cfg.use_miu:  # one GRU shared by the slots, on [M_t(i), e_t]
            self.miu_x = nn.Linear(E, 3 * E)
            self.miu_m = nn.Linear(E, 3 * E, bias=False)
            self.miu_h = nn.Linear(E, 3 * E)
        self.query_mem = nn.Linear(E, E, bias=False)
        self.query_miu = nn.Linear(E, E, bias=False) if cfg.use_miu else None
        parts = 4 + (2 if cfg.use_miu else 0)  # t, mean history, memory read, t * read (+ MIU)
        F_ = register_dense(self, features.num_dense, features.dense_mean, features.dense_std)
        self.head = ctr_mlp(self.profile.dim + parts * E + F_, cfg.hidden, cfg.activation, cfg.dropout)

    # -- the per-user state -------------------------------------------------------------------

    def init_state(self, batch_size: int) -> MIMNState:
        """The state of users with no behaviour yet: zero memory, controller and interests."""
        z = self.slot_keys.new_zeros
        B, m, E = batch_size, self.m, self.E
        return MIMNState(memory=z(B, m, E), controller=z(B, E), read=z(B, E), interest=z(B, m, E),
                         usage=z(B, m), hist_sum=z(B, E), count=z(B))

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input projections of behaviour encodings (..., E) for the controller and the MIU."""
        return self.ctrl_x(x), (self.miu_x(x) if self.cfg.use_miu else None)

    def _step(self, s: MIMNState, x: torch.Tensor, gx: torch.Tensor, sx: torch.Tensor | None,
              live: torch.Tensor | None, key_n: torch.Tensor) -> MIMNState:
        """One behaviour: encoding x (B, E), its controller projection gx (B, 3E) and MIU
        projection sx (B, 3E); key_n (m, E) the unit slot keys. ``live`` None: all rows live."""
        B, m, E = x.shape[0], self.m, self.E
        # Controller.
        gi = torch.addmm(gx, s.read, self.ctrl_r.weight.t())  # (B, 3E)
        u, n = _gru_gates(gi, self.ctrl_h(s.controller))
        h = torch.addcmul(s.controller, u, n - s.controller)  # (B, E) = (1 - u) h + u n
        # Heads and content addressing of both heads at once.
        p = self.heads(h)  # (B, 4E + 2)
        keys = F.normalize(p[:, :2 * E].view(B, 2, E), dim=-1)  # (B, 2, E)
        half_beta = 0.5 + 0.5 * F.softplus(p[:, 2 * E:2 * E + 2])  # (B, 2); the 0.5 of the mean
        erase, add = torch.sigmoid(p[:, 2 * E + 2:3 * E + 2]), torch.tanh(p[:, 3 * E + 2:])  # (B, E)
        mem_n = F.normalize(s.memory, dim=-1)  # (B, m, E), zero slots stay 0
        sim = torch.baddbmm(keys @ key_n.t(), keys, mem_n.transpose(1, 2))  # (B, 2, m): cos + cos
        w = torch.softmax(half_beta[:, :, None] * sim, dim=-1)  # (B, 2, m)
        w_read, w_write = w[:, 0], w[:, 1]  # (B, m)
        if self.cfg.rebalance:
            share = s.usage / s.count.clamp(min=1)[:, None]  # (B, m)
            P = torch.softmax(self.transfer(share).view(B, m, m), dim=-1)  # (B, m, m), rows sum to 1
            w_write = torch.bmm(w_write[:, None], P)[:, 0]  # (B, m), still sums to 1
        read = torch.bmm(w_read[:, None], s.memory)[:, 0]  # (B, E), reads M_{t-1}
        ww = w_write[:, :, None]  # (B, m, 1)
        # M (1 - w e^T) + w a^T = M + w (a - e M)
        memory = torch.addcmul(s.memory, ww, add[:, None] - erase[:, None] * s.memory)  # (B, m, E)
        # MIU: each slot's interest state, update gate scaled by the slot's write weight.
        interest = s.interest
        k = self.cfg.miu_top_k
        if sx is not None and (k == 0 or k >= m):
            gi = self.miu_m(memory) + sx[:, None]  # (B, m, 3E)
            u, n = _gru_gates(gi, self.miu_h(interest))
            interest = torch.addcmul(interest, ww * u, n - interest)  # (B, m, E)
        elif sx is not None:  # only the k slots written most
            idx = w_write.topk(k, dim=-1).indices  # (B, k)
            g = idx[:, :, None].expand(B, k, E)
            s_k, w_k = interest.gather(1, g), w_write.gather(1, idx)[:, :, None]  # (B, k, E), (B, k, 1)
            gi = self.miu_m(memory.gather(1, g)) + sx[:, None]  # (B, k, 3E)
            u, n = _gru_gates(gi, self.miu_h(s_k))
            interest = interest.scatter(1, g, torch.addcmul(s_k, w_k * u, n - s_k))  # (B, m, E)
        new = MIMNState(memory=memory, controller=h, read=read, interest=interest,
                        usage=s.usage + w_write, hist_sum=s.hist_sum + x, count=s.count + 1)
        return new if live is None else new.keep(live, s)

    def step(self, state: MIMNState, item_ids: torch.Tensor, live: torch.Tensor) -> MIMNState:
        """Feed one behaviour per user: item_ids (B,) long, live (B,) bool. Rows with ``live``
        False keep their state exactly (their item id is ignored)."""
        x = self.items(item_ids.masked_fill(~live, 0))  # (B, E)
        gx, sx = self._inputs(x)
        return self._step(state, x, gx, sx, live, F.normalize(self.slot_keys, dim=-1))

    def state_from_history(self, hist: torch.Tensor, mask: torch.Tensor,
                           state: MIMNState | None = None) -> MIMNState:
        """Run the steps over a left-padded history hist (B, L) long, mask (B, L) bool, from
        ``state`` (default: :meth:`init_state`). Same result as :meth:`step` per column."""
        B, L = hist.shape
        state = self.init_state(B) if state is None else state
        any_live, all_live = mask.any(0).tolist(), mask.all(0).tolist()
        cols = [t for t in range(L) if any_live[t]]  # all-padding columns change nothing
        if not cols:
            return state
        x = self.items(hist.masked_fill(~mask, 0).t()[cols])  # (L', B, E), time-major
        gx, sx = self._inputs(x)  # (L', B, 3E) each: one matmul for all steps
        # unbind, not x[j]: each indexing op's backward would build a zero (L', B, .) gradient.
        xs, gxs = x.unbind(0), gx.unbind(0)
        sxs = sx.unbind(0) if sx is not None else [None] * len(cols)
        key_n = F.normalize(self.slot_keys, dim=-1)  # (m, E)
        for j, t in enumerate(cols):
            state = self._step(state, xs[j], gxs[j], sxs[j], None if all_live[t] else mask[:, t], key_n)
        return state

    # -- prediction ---------------------------------------------------------------------------

    def _attend(self, query: nn.Linear, t: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Candidate attention over slots: t (B, E), slots (B, m, E) -> pooled (B, E)."""
        logits = torch.bmm(slots, query(t)[:, :, None]) / math.sqrt(self.E)  # (B, m, 1)
        return (torch.softmax(logits, dim=1) * slots).sum(1)  # (B, E)

    def score_state(self, state: MIMNState, user: torch.Tensor, profile: torch.Tensor,
                    item: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) of candidates item (B,) for users (B,), profile (B, F) in ``state``;
        ``dense`` (B, F') their candidate features, for a ranker trained on them."""
        t = self.items(item)  # (B, E)
        mean_hist = state.hist_sum / state.count.clamp(min=1)[:, None]  # (B, E)
        mem = self._attend(self.query_mem, t, state.memory)  # (B, E)
        parts = [self.profile(user, profile), t, mean_hist, mem, t * mem]
        if self.query_miu is not None:
            miu = self._attend(self.query_miu, t, state.interest)  # (B, E)
            parts += [miu, t * miu]
        return self.head(torch.cat(parts + dense_part(self, dense), dim=-1)).squeeze(-1)  # (B,) logits

    def score_one_user(self, batch: CTRBatch) -> torch.Tensor:
        """:meth:`forward` for a batch whose rows all share row 0's user, profile and history
        (serving: one user's C candidates): the memory is read from the history once, and only
        the candidate attention runs per candidate. -> (C,) logits."""
        C = len(batch.item)
        one = self.state_from_history(batch.hist[:1], batch.mask[:1])
        state = MIMNState(**{f.name: getattr(one, f.name).expand(C, *getattr(one, f.name).shape[1:])
                             for f in fields(one)})
        return self.score_state(state, batch.user, batch.profile, batch.item, batch.dense)

    # -- training on whole user sequences ------------------------------------------------------

    def stream_logits(self, seq: torch.Tensor, seq_mask: torch.Tensor, user: torch.Tensor,
                      profile: torch.Tensor, ex_row: torch.Tensor, ex_stop: torch.Tensor,
                      ex_item: torch.Tensor, ex_dense: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score many events of a few users with one pass over each user's sequence.

        ``seq`` (B, T) are B users' behaviours, *right*-padded (``seq_mask`` (B, T)); example x
        belongs to row ``ex_row[x]``, sees the state after its user's first ``ex_stop[x]``
        behaviours (0..T) and scores candidate ``ex_item[x]`` (with its candidate features
        ``ex_dense[x]``, for a ranker trained on them). This is what the per-user state
        is for: a user's T behaviours are read once for all of the user's examples, instead of
        once per example, and the state covers the whole sequence rather than a window.
        Returns logits (X,) and the utilisation penalty of the final states.
        """
        B, T = seq.shape
        state = self.init_state(B)
        keep = ("memory", "interest", "hist_sum", "count")
        trail = {k: [getattr(state, k)] for k in keep}  # state after 0, 1, ..., T behaviours
        if T:
            x = self.items(seq.masked_fill(~seq_mask, 0).t())  # (T, B, E), time-major
            gx, sx = self._inputs(x)
            xs, gxs = x.unbind(0), gx.unbind(0)
            sxs = sx.unbind(0) if sx is not None else [None] * T
            key_n = F.normalize(self.slot_keys, dim=-1)
            all_live = seq_mask.all(0).tolist()
            for t in range(T):
                state = self._step(state, xs[t], gxs[t], sxs[t], None if all_live[t] else seq_mask[:, t],
                                   key_n)
                for k in keep:
                    trail[k].append(getattr(state, k))
        at = {k: torch.stack(v)[ex_stop, ex_row] for k, v in trail.items()}  # (X, ...) each
        z = at["hist_sum"].new_zeros
        picked = MIMNState(memory=at["memory"], controller=z(0), read=z(0), interest=at["interest"],
                           usage=z(0), hist_sum=at["hist_sum"], count=at["count"])
        logits = self.score_state(picked, user[ex_row], profile[ex_row], ex_item, ex_dense)
        return logits, utilisation_penalty(state.usage, state.count)

    def stream_loss(self, seq: torch.Tensor, seq_mask: torch.Tensor, user: torch.Tensor,
                    profile: torch.Tensor, ex_row: torch.Tensor, ex_stop: torch.Tensor,
                    ex_item: torch.Tensor, label: torch.Tensor, ex_dense: torch.Tensor | None = None,
                    ) -> torch.Tensor:
        logits, penalty = self.stream_logits(seq, seq_mask, user, profile, ex_row, ex_stop, ex_item, ex_dense)
        return F.binary_cross_entropy_with_logits(logits, label) + self.cfg.util_weight * penalty

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        state = self.state_from_history(batch.hist, batch.mask)
        return self.score_state(state, batch.user, batch.profile, batch.item, batch.dense)

    def loss(self, batch: CTRBatch, label: torch.Tensor) -> torch.Tensor:
        state = self.state_from_history(batch.hist, batch.mask)
        logits = self.score_state(state, batch.user, batch.profile, batch.item, batch.dense)
        bce = F.binary_cross_entropy_with_logits(logits, label)
        if self.cfg.util_weight == 0:
            return bce
        return bce + self.cfg.util_weight * utilisation_penalty(state.usage, state.count)
