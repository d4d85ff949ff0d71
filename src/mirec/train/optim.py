"""The optimiser of a retrieval run (``train.optimizer``), so that a step's cost does not grow
with the catalogue.

``"adam"``: dense Adam over every parameter. Each step reads and writes the whole (N, D) item
table, its gradient and both moments, although a batch touches a few thousand rows: at 1.7M
items that is most of a step.

``"sparse"``: the item table's gradient is sparse (the rows the batch read: history items,
targets, sampled negatives) and a row-wise lazy Adam (``torch.optim.SparseAdam``) steps only
those rows and their moments; the small dense parameters keep dense Adam. A row's moments
decay only on the steps that touch it (the "lazy" in lazy Adam); with every row touched on
every step it is Adam. ``train.weight_decay`` reaches the item table as L2 on the touched rows
only (an untouched row is not decayed), so no step walks the table.

The full softmax reads every item row on every step, so there the table steps with dense Adam
whatever ``train.optimizer`` says (:func:`make_optimizer` is told whether the loss samples).
A model whose :meth:`item_embeddings` is not an ``nn.Embedding``'s weight falls back to dense
Adam too. Either optimiser is one object with ``step``, ``zero_grad``, ``state_dict`` and
``load_state_dict``: the engine and its checkpoints do not know which it has.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

OPTIMIZERS = ("adam", "sparse")


def dense_adam(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over each parameter)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def item_table(model: nn.Module) -> nn.Embedding | None:
    """The ``nn.Embedding`` whose weight is ``model.item_embeddings()``, if there is one."""
    weight = model.item_embeddings()
    return next((m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is weight), None)


class RowwiseAdam:
    """Lazy Adam on the item table's touched rows plus dense Adam on everything else.

    The table's gradient should be sparse; a dense one (a model that runs the table through a
    dense op) is cut to its non-zero rows first, which costs O(N) as that op already did.
    """

    def __init__(self, model: nn.Module, table: nn.Parameter, lr: float, weight_decay: float) -> None:
        rest = [p for p in model.parameters() if p is not table]
        self.table, self.weight_decay = table, weight_decay
        self.dense = dense_adam(rest, lr, weight_decay)
        self.rows = torch.optim.SparseAdam([table], lr=lr)
        self.param_groups = self.dense.param_groups + self.rows.param_groups  # for schedulers

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.table.grad = None  # a sparse gradient is never zeroed in place

    def step(self) -> None:
        self.dense.step()
        g = self.table.grad
        if g is None:
            return
        if not g.is_sparse:
            g = g.to_sparse(1)  # (nnz rows, D) values
        g = g.coalesce()  # one entry per row: a row read twice in a batch sums its gradients
        if self.weight_decay:
            values = g.values() + self.weight_decay * self.table.detach()[g.indices()[0]]  # (R, D)
            g = torch.sparse_coo_tensor(g.indices(), values, g.shape, is_coalesced=True,
                                        check_invariants=False)
        self.table.grad = g
        self.rows.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "rows": self.rows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        self.rows.load_state_dict(state["rows"])


def make_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float,
                   sampled: bool, log: Callable[[str], None] = lambda s: None) -> Any:
    """The optimiser ``train.optimizer`` names for ``model``; marks the item table sparse
    (``nn.Embedding.sparse``) when the row-wise optimiser steps it. ``sampled``: whether the
    loss samples negatives (the full softmax touches every row: dense Adam)."""
    table = item_table(model)
    if kind == "adam" or not sampled or table is None:
        if kind != "adam":
            why = "the full softmax updates every item row" if not sampled else \
                "its item_embeddings() is not an nn.Embedding's weight"
            log(f"train.optimizer={kind}: dense Adam ({why})")
        return dense_adam(list(model.parameters()), lr, weight_decay)
    table.sparse = True
    return RowwiseAdam(model, table.weight, lr, weight_decay)


def table_is_sparse(model: nn.Module) -> bool:
    """Whether the item table's gradient is to be sparse (see :func:`make_optimizer`)."""
    table = item_table(model)
    return table is not None and table.sparse
