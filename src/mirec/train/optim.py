"""The optimiser of a retrieval run (``train.optimizer``), so that a step's cost does not grow
with the catalogue.

``"adam"``: dense Adam over every parameter. Each step reads and writes the whole (N, D) item
table, its gradient and both moments, although a batch touches a few thousand rows: at 1.7M
items that is most of a step.

``"sparse"``: the item table's gradient is sparse (the rows the batch read: history items,
targets, sampled negatives) and a row-wise Adam (:class:`RowwiseAdam`) steps only those rows
and their moments; the small dense parameters keep dense Adam. Between two touches of a row
dense Adam keeps moving it with its decaying momentum; the row-wise optimiser applies those
skipped steps in closed form when the row is next touched (and for every row before
validation), so it follows dense Adam's trajectory instead of plain lazy Adam's, which moves a
rarely touched row about a tenth as far per gradient. ``train.weight_decay`` reaches the item
table as L2 on the touched rows only (an untouched row is not decayed), so no step walks the
table.

At a million rows the touched rows are scattered over hundreds of MB, and with 4 KiB pages
nearly every row read misses the TLB: on this machine a gather, an add and a write-back of
6,000 random rows took 5.2 ms in a 1.7M-row table against 1.6 ms in a 12k-row one. So the
table and both moments live in memory advised for transparent huge pages
(:func:`hugepage_copy`, Linux), where the same three took 1.6 ms.

The full softmax reads every item row on every step, so there the table steps with dense Adam
whatever ``train.optimizer`` says (:func:`make_optimizer` is told whether the loss samples).
A model whose :meth:`item_embeddings` is not an ``nn.Embedding``'s weight falls back to dense
Adam too. Either optimiser is one object with ``step``, ``zero_grad``, ``state_dict`` and
``load_state_dict``: the engine and its checkpoints do not know which it has.
"""

from __future__ import annotations

import math
import mmap
from typing import Any, Callable

import torch
from torch import nn

from mirec.errors import MirecConfigError

OPTIMIZERS = ("auto", "adam", "sparse")
# train.optimizer=auto steps the item table row-wise above this many items. Dense Adam's pass
# over the table costs about 0.19 us a row a step here (a step of batch 256: 18.7 ms at 12k
# items, 331 ms at 1.7M), a third of a step at 50,000 items; below that dense Adam is as fast
# (the two trained equally well on MovieLens-100K and Amazon Beauty: docs/models.md).
SPARSE_ABOVE = 50_000


def dense_adam(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over each parameter)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def item_table(model: nn.Module) -> nn.Embedding | None:
    """The ``nn.Embedding`` whose weight is ``model.item_embeddings()``, if there is one."""
    weight = model.item_embeddings()
    return next((m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is weight), None)


HUGEPAGE_MIN_BYTES = 1 << 24  # smaller tables fit the caches' reach anyway


def hugepage_copy(t: torch.Tensor, min_bytes: int | None = None) -> torch.Tensor:
    """A copy of CPU tensor ``t`` in anonymous memory advised ``MADV_HUGEPAGE`` (transparent
    huge pages: one TLB entry per 2 MiB instead of per 4 KiB), or a plain clone where that is
    not available (not Linux, another device, or under ``min_bytes``, by default
    ``HUGEPAGE_MIN_BYTES``). Same values either way; the tensor keeps the mapping alive."""
    min_bytes = HUGEPAGE_MIN_BYTES if min_bytes is None else min_bytes
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < max(min_bytes, 1) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return t.clone()
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    out = torch.frombuffer(buf, dtype=t.dtype).view(t.shape)
    return out.copy_(t)


class RowwiseAdam:
    """Adam on the item table's touched rows plus dense Adam on everything else.

    Per touched row r at step t, last touched at step s (``d = t - s - 1`` steps skipped), with
    ``c_t = lr sqrt(1 - b2^t) / (1 - b1^t)`` (Adam's bias correction)::

        catch-up: w_r -= c_{s+1} S(d) m_r / (sqrt(v_r) + eps),   S(d) = sum_{j=1..d} (b1 / sqrt(b2))^j
                  m_r *= b1^d;  v_r *= b2^d
        g_r = grad_r + weight_decay * w_r
        m_r = b1 m_r + (1 - b1) g_r;   v_r = b2 v_r + (1 - b2) g_r^2
        w_r = w_r - c_t m_r / (sqrt(v_r) + eps)

    The catch-up is what dense Adam did to the row on the d steps that had no gradient for it
    (its momentum m b1^j over sqrt(v b2^j)), summed in closed form; it is exact but for eps and
    for the bias correction, taken at the first skipped step (it is 1 after a few thousand
    steps). :meth:`flush` catches every row up (before validation), so the table then is what
    dense Adam's would be. With every row touched on every step it is Adam.

    Gathering the touched rows, updating them as dense (R, D) blocks and writing them back is
    much cheaper than SparseAdam's sparse-tensor arithmetic at a few thousand rows. The table's
    gradient should be sparse; a dense one (a model that runs the table through a dense op) is
    cut to its non-zero rows first, which costs O(N) as that op already did.
    """

    def __init__(self, model: nn.Module, table: nn.Parameter, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.dense = dense_adam([p for p in model.parameters() if p is not table], lr, weight_decay)
        self.table, self.lr, self.weight_decay, self.betas, self.eps = table, lr, weight_decay, betas, eps
        self.steps = 0
        zeros = torch.zeros_like(table, requires_grad=False)
        self.exp_avg, self.exp_avg_sq = hugepage_copy(zeros), hugepage_copy(zeros)  # (N, D) m, v
        big = table.numel() * table.element_size() >= HUGEPAGE_MIN_BYTES  # then its row steps too
        last = torch.zeros(table.shape[0], dtype=torch.int64)  # (N,) step of each row's last update
        self.last = hugepage_copy(last, min_bytes=1 if big else None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.table.grad = None  # a sparse gradient is never zeroed in place

    def _catch_up(self, rows: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                  upto: int) -> torch.Tensor | None:
        """What the steps after ``rows``' last update up to and including step ``upto``, which
        had no gradient for them, moved them by: (R, D), or None if no row skipped a step. Their
        gathered moments m, v (R, D) are decayed in place as those steps decayed them."""
        b1, b2 = self.betas
        s = self.last.index_select(0, rows)  # (R,)
        d = (upto - s).clamp_(min=0).to(torch.float64)  # (R,) steps skipped
        if not bool((d > 0).any()):
            return None
        r = b1 / math.sqrt(b2)
        first = (s + 1).to(torch.float64)  # the first skipped step's bias correction
        c = self.lr * torch.sqrt(1 - b2**first) / (1 - b1**first)
        total = c * r * (1 - r**d) / (1 - r)  # (R,) sum_{j=1..d} c r^j
        denom = v.sqrt().add_(self.eps)
        moved = torch.div(m, denom, out=denom).mul_((-total).to(m.dtype)[:, None])
        m.mul_((b1**d).to(m.dtype)[:, None])
        v.mul_((b2**d).to(v.dtype)[:, None])
        return moved

    @torch.no_grad()
    def step(self) -> None:
        self.dense.step()
        g = self.table.grad
        if g is None:
            return
        g = (g if g.is_sparse else g.to_sparse(1)).coalesce()  # one entry per row read
        rows, grad = g.indices()[0], g.values()  # (R,), (R, D): a row read twice sums its gradients
        w = self.table.detach()
        (b1, b2), self.steps = self.betas, self.steps + 1
        m = self.exp_avg.index_select(0, rows)  # (R, D)
        v = self.exp_avg_sq.index_select(0, rows)
        moved = self._catch_up(rows, m, v, self.steps - 1)
        if self.weight_decay:
            grad = grad + self.weight_decay * w.index_select(0, rows)  # L2 on the touched rows only
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.exp_avg.index_copy_(0, rows, m)
        self.exp_avg_sq.index_copy_(0, rows, v)
        self.last.index_fill_(0, rows, self.steps)
        step = self.lr * math.sqrt(1 - b2**self.steps) / (1 - b1**self.steps)
        update = m.div_(v.sqrt_().add_(self.eps)).mul_(-step)  # (R, D)
        w.index_add_(0, rows, update if moved is None else update.add_(moved))  # one pass over the table

    @torch.no_grad()
    def flush(self, block: int = 1 << 16) -> None:
        """Catch every row up to the last step (O(N D), once per validation): the table is then
        what dense Adam's would be, and the next steps go on from there."""
        w = self.table.detach()
        for start in range(0, w.shape[0], block):
            rows = torch.arange(start, min(start + block, w.shape[0]))
            m, v = self.exp_avg[rows], self.exp_avg_sq[rows]
            moved = self._catch_up(rows, m, v, self.steps)
            if moved is not None:
                w.index_add_(0, rows, moved)
                self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
            self.last[rows] = self.steps

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(),
                "rows": {"steps": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                         "last": self.last, "lr": self.lr}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        rows = state["rows"]
        self.steps = int(rows["steps"])
        # the table's lr, as dense Adam's param groups keep theirs (a state saved before: unchanged)
        self.lr = float(rows.get("lr", self.lr))
        self.exp_avg.copy_(rows["exp_avg"])
        self.exp_avg_sq.copy_(rows["exp_avg_sq"])
        # a state saved before the catch-up: every row counts as updated on the last step
        self.last.copy_(rows["last"] if "last" in rows else torch.full_like(self.last, self.steps))


def make_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float,
                   sampled: bool, log: Callable[[str], None] = lambda s: None,
                   averaged: bool = False) -> Any:
    """The optimiser ``train.optimizer`` names for ``model``; marks the item table sparse
    (``nn.Embedding.sparse``) when the row-wise optimiser steps it. ``sampled``: whether the
    loss samples negatives (the full softmax touches every row: dense Adam). ``averaged``: the
    run keeps a moving average of the weights (``train.weight_average``), which passes over the
    whole table every step anyway: ``auto`` is dense Adam then, and ``sparse`` is refused (its
    rows lag their steps until a flush, so the average would read stale rows)."""
    table, asked = item_table(model), kind
    if kind == "auto":  # the row-wise optimiser where dense Adam's pass over the table costs
        big = table is not None and table.num_embeddings - 1 > SPARSE_ABOVE
        kind = "sparse" if big and not averaged else "adam"
    if kind == "adam" or not sampled or table is None:
        if asked == "sparse":
            why = "the full softmax updates every item row" if not sampled else \
                "its item_embeddings() is not an nn.Embedding's weight"
            log(f"train.optimizer={kind}: dense Adam ({why})")
        return dense_adam(list(model.parameters()), lr, weight_decay)
    if averaged:
        raise MirecConfigError("train.weight_average: needs dense Adam, and this run steps the item "
                               "table row-wise; set train.optimizer=adam or train.weight_average=0")
    table.sparse = True
    table.weight.data = hugepage_copy(table.weight.data)  # the same parameter, in huge pages
    return RowwiseAdam(model, table.weight, lr, weight_decay)


def learning_rate(opt: Any) -> float:
    """The rate ``opt`` steps at now (the item table's, for :class:`RowwiseAdam`)."""
    return opt.lr if isinstance(opt, RowwiseAdam) else opt.param_groups[0]["lr"]


def scale_learning_rate(opt: Any, factor: float) -> None:
    """Multiply every rate of ``opt`` by ``factor``. :class:`RowwiseAdam` first applies the steps
    its rows skipped, at the rate they were taken at."""
    if isinstance(opt, RowwiseAdam):
        opt.flush()
        opt.lr *= factor
        opt = opt.dense
    for group in opt.param_groups:
        group["lr"] *= factor


def table_is_sparse(model: nn.Module) -> bool:
    """Whether the item table's gradient is to be sparse (see :func:`make_optimizer`)."""
    table = item_table(model)
    return table is not None and table.sparse
