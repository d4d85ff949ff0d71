"""Click-through metrics of the protocol ("Ranking (CTR) evaluation"), pure NumPy.

- ``AUC``: the probability that a random positive scores above a random negative, ties counted
  one half (Mann-Whitney U over average ranks).
- ``GAUC``: per-user AUC, averaged with weights = the user's number of evaluated events, over
  the users that have both classes.
- ``log-loss``: mean binary cross-entropy of the predicted probabilities (clipped to [1e-7,
  1 - 1e-7]).
"""

from __future__ import annotations

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    label = np.asarray(label) > 0.5
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((r[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(user: np.ndarray, label: np.ndarray, score: np.ndarray) -> float:
    """Per-user AUC weighted by the user's number of events, over users with both classes."""
    order = np.argsort(user, kind="stable")
    u, y, s = np.asarray(user)[order], np.asarray(label)[order], np.asarray(score)[order]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    total, weight = 0.0, 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        a_u = auc(y[a:b], s[a:b])
        if not np.isnan(a_u):
            total += a_u * (b - a)
            weight += b - a
    return total / weight if weight else float("nan")


def log_loss(label: np.ndarray, prob: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(label, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ctr_metrics(user: np.ndarray, label: np.ndarray, logit: np.ndarray) -> dict[str, float]:
    """``auc``, ``gauc`` and ``logloss`` of logits."""
    logit = np.asarray(logit, dtype=np.float64)
    prob = 0.5 * (1.0 + np.tanh(0.5 * logit))  # the sigmoid, without overflow; AUCs use logits:
    # a saturated float sigmoid would turn distinct scores into ties
    return {"auc": auc(label, logit), "gauc": gauc(user, label, logit), "logloss": log_loss(label, prob)}
