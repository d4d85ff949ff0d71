"""Softmax losses over the catalogue, full and sampled.

Logits are ``v_u . e_i / T`` with temperature ``T``. Item 0 is padding and never a candidate.

Sampled softmax (Jean et al. 2015; Bengio & Senecal 2008): ``S`` negatives are drawn with
replacement from a proposal ``Q`` and shared by the whole batch. Every sampled logit is
corrected by ``- log(S * Q(j))`` (the log of its expected count), and a sampled item equal to
a row's positive ("accidental hit") is masked out of that row. The positive's own logit is not
corrected: it is always present exactly once, so ``exp(pos) + sum_k exp(neg_k) / (S Q(j_k))``
is an unbiased estimate of the full partition function and the loss and its gradient converge
to the full softmax as ``S`` grows. (Correcting the positive as well while masking hits does
not: its term vanishes as ``S`` grows, leaving a leave-the-target-out softmax.)
When every item is sampled exactly once under a uniform ``Q`` the corrections are all 0 and
the loss equals the full softmax.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mirec.models.base import best_interest_scores


def scores(user: torch.Tensor, rows: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
    """Inner products of users with item rows (M, D): user (B, D) -> (B, M); or every user's K
    interests (B, K, D), ``live`` (B, K) bool -> each item's best live interest, max_k v_k . e,
    (B, M), the score serving ranks by."""
    return user @ rows.T if user.dim() == 2 else best_interest_scores(user, live, rows)


def full_softmax_loss(user: torch.Tensor, items: torch.Tensor, target: torch.Tensor,
                      temperature: float = 1.0, live: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``target`` over all items. user (B, D) (or (B, K, D) with ``live``:
    :func:`scores`), items (N, D), target (B,)."""
    # Scale the (B, D) user side, not the (B, N) logits; leave padding column 0 out instead of
    # writing -inf into it (an in-place write copies the whole logit gradient in backward).
    logits = scores(user / temperature, items[1:], live)  # (B, N - 1), column j is item j + 1
    return F.cross_entropy(logits, target - 1)


class NegativeSampler:
    """Draws shared negatives from a fixed proposal over items ``1..N-1``.

    ``"uniform"``: ``Q(j) = 1/(N-1)``. ``"log-uniform"``: items ranked by training popularity
    (rank r = 0 the most popular), ``Q(rank r) = log((r + 2)/(r + 1)) / log(N)``, sampled in
    O(S) by inverting the CDF.
    """

    def __init__(self, num_items: int, kind: str = "uniform",
                 counts: np.ndarray | None = None, device: torch.device | str = "cpu") -> None:
        self.n = num_items - 1  # real items
        self.kind = kind
        self.device = torch.device(device)  # where the tables live and the draws are made
        if kind == "uniform":
            self.log_q = torch.full((num_items,), -math.log(self.n))
        elif kind == "log-uniform":
            if counts is None:
                raise ValueError("log-uniform sampling needs item counts")
            order = np.argsort(-counts[1:], kind="stable") + 1  # rank -> item id
            self.rank_to_item = torch.from_numpy(order.astype(np.int64))
            rank = np.empty(num_items, dtype=np.int64)
            rank[order] = np.arange(self.n)
            r = torch.from_numpy(rank[1:]).double()
            log_q = torch.zeros(num_items, dtype=torch.float64)
            log_q[1:] = torch.log(torch.log((r + 2) / (r + 1)) / math.log(self.n + 1))
            self.log_q = log_q.float()
        else:
            raise ValueError(f"sampler: unknown kind {kind!r} (uniform, log-uniform)")
        self.log_q[0] = float("-inf")
        self.log_q = self.log_q.to(self.device)
        if kind == "log-uniform":
            self.rank_to_item = self.rank_to_item.to(self.device)

    def sample(self, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``s`` item ids (with replacement), drawn on the sampler's device (``generator``, if
        given, must be on that device)."""
        if self.kind == "uniform":
            return torch.randint(1, self.n + 1, (s,), generator=generator, device=self.device)
        u = torch.rand(s, generator=generator, dtype=torch.float64, device=self.device)
        r = (torch.exp(u * math.log(self.n + 1)) - 1).long().clamp_(0, self.n - 1)
        return self.rank_to_item[r]


def sampled_softmax_loss(user: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor,
                         target: torch.Tensor, negatives: torch.Tensor, log_q: torch.Tensor,
                         temperature: float = 1.0, hard_beta: float = 0.0,
                         live: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled softmax with logQ correction and accidental hits removed.

    user (B, D); pos_emb (B, D) the targets' embeddings; neg_emb (S, D) the sampled items'
    embeddings; target (B,) and negatives (S,) their ids; log_q (N,) the proposal's
    log-probabilities. (Embeddings are passed gathered so a caller may normalise just these.)
    ``user`` may also be each row's K interests (B, K, D) with ``live`` (B, K): every item, the
    target and the negatives, is then scored by its best live interest (:func:`scores`).

    ``hard_beta`` > 0: REMI's interest-aware hard negatives (Xie et al., RecSys 2023): negative
    j's term of the partition function is weighted by ``w_j = exp(beta s_j) / mean_k exp(beta
    s_k)`` over the row's sampled negatives, ``s_j`` its logit; the weights are constants for
    the gradient. 0 leaves the loss exactly as without it.
    """
    s = negatives.shape[0]
    log_s = math.log(s)
    user = user / temperature  # (B, D): cheaper than dividing the (B, 1 + S) logits
    if user.dim() == 2:
        pos = (user * pos_emb).sum(-1)  # (B,), uncorrected: present exactly once
    else:
        pos = (user * pos_emb[:, None]).sum(-1).masked_fill(~live, float("-inf")).amax(1)  # (B,)
    neg = scores(user, neg_emb, live)  # (B, S)
    hit = negatives[None, :] == target[:, None]  # (B, S) accidental hits
    if hard_beta:
        score = (hard_beta * neg.detach()).masked_fill(hit, float("-inf"))  # (B, S)
        live = (~hit).sum(1, keepdim=True).clamp(min=1)
        neg = neg + score - (torch.logsumexp(score, 1, keepdim=True) - torch.log(live.to(neg.dtype)))
    # In place on the (B, S) logits, and log(exp(pos) + sum_j exp(neg_j)) from the negatives'
    # logsumexp rather than a log_softmax over a concatenated (B, 1 + S) copy: fewer passes over
    # the largest tensor of the loss. A hit gets the dtype's lowest value, whose exp is 0.
    neg = neg.sub_((log_s + log_q[negatives])[None, :]).masked_fill_(hit, torch.finfo(neg.dtype).min)
    return (torch.logaddexp(pos, torch.logsumexp(neg, dim=1)) - pos).mean()


def routing_penalty(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REMI's routing regulariser: the squared norm of the diagonal of each user's centred
    attention covariance, i.e. ``sum_k var_k^2`` where ``var_k`` is the variance over the real
    history positions of interest k's attention weights; mean over the batch. An interest whose
    attention collapses onto one item has the largest variance. weights (B, K, L), mask (B, L)."""
    m = mask[:, None, :].to(weights.dtype)  # (B, 1, L)
    n = m.sum(-1).clamp(min=1)  # (B, 1)
    mean = (weights * m).sum(-1) / n  # (B, K)
    var = ((weights - mean[..., None]) ** 2 * m).sum(-1) / n  # (B, K)
    return var.square().sum(-1).mean()


def interest_overlap(vectors: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """The mean squared cosine between two different live interests of a user, mean over the
    batch: 0 when a user's interests are orthogonal, 1 when they are one vector. vectors
    (B, K, D), live (B, K) bool."""
    v = F.normalize(vectors, dim=-1)
    c2 = (v @ v.transpose(1, 2)).square()  # (B, K, K)
    m = (live[:, :, None] & live[:, None, :]).to(c2.dtype)
    m = m * (1 - torch.eye(c2.shape[1], dtype=c2.dtype, device=c2.device))  # pairs k != j
    return ((c2 * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)).mean()


def view_contrast(a: torch.Tensor, b: torch.Tensor, live: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """The contrast of two dropout views of the same histories (DuoRec's unsupervised
    augmentation, Qiu et al., WSDM 2022): interest k of a user's view ``a`` should find the same
    interest of the user's view ``b`` among the batch's (cosine / T, InfoNCE, both directions).
    a, b (B, K, D) two passes' interests, live (B, K) bool; mean over the users' live interests."""
    B = a.shape[0]
    a = F.normalize(a, dim=-1).transpose(0, 1)  # (K, B, D)
    b = F.normalize(b, dim=-1).transpose(0, 1)  # (K, B, D)
    logits = a @ b.transpose(1, 2) / temperature  # (K, B, B): row i, column j = user i's a vs j's b
    same = torch.arange(B, device=a.device).expand(logits.shape[0], B)  # (K, B)
    ab = F.cross_entropy(logits.transpose(1, 2), same, reduction="none")  # (K, B): a_i over b_j
    ba = F.cross_entropy(logits, same, reduction="none")  # (K, B): b_i over a_j
    w = live.T.to(ab.dtype)  # (K, B)
    return ((ab + ba) / 2 * w).sum() / w.sum().clamp(min=1)
