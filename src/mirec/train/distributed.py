"""Data-parallel training over several processes or machines, on ``torch.distributed``.

Launch the ordinary ``mirec train`` command (retrieval, or a ranker with ``--task ctr``) with
``torchrun``; nothing else changes::

    torchrun --standalone --nproc-per-node 2 -m mirec.cli train --model comirec-sa ...
    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m mirec.cli train ...                       # the same command on each machine

Every process holds the whole model and reads the same prepared data set (a shared or copied
directory). Each global batch of ``train.batch_size`` examples is cut into one contiguous
slice per process; ``DistributedDataParallel`` averages the gradients, and each slice's loss is
weighted by its share of the batch, so the step is the one a single process takes on the
whole batch (up to floating-point order). Every process draws the same shared negatives (the
torch RNG is reseeded per epoch on all of them). Validation runs in every process on the
identical parameters; process 0 alone writes checkpoints, metrics and results.

The backend is gloo (CPU). ``WORLD_SIZE``, ``RANK`` and the rendezvous address come from the
environment that ``torchrun`` sets; without them training runs in one process as usual.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0


def launched() -> bool:
    """Whether ``torchrun`` started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """This process's place in a ``torchrun`` launch, joining the process group on first use;
    ``World(0, 1)`` when not launched by ``torchrun``."""
    if not launched():
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return World(dist.get_rank(), dist.get_world_size())


def shard(idx: np.ndarray, w: World) -> tuple[np.ndarray, float]:
    """This process's contiguous slice of the global batch ``idx`` and the weight of its loss.

    With the slice's mean loss times ``len(slice) * size / len(idx)``, the average of the
    processes' gradients is the gradient of the global batch's mean loss, also when the slices
    differ in size. A batch smaller than the world leaves some processes without an example:
    they compute one with weight 0 (every process must take part in each step).
    """
    mine = np.array_split(idx, w.size)[w.rank]
    if len(mine) == 0:
        return idx[:1], 0.0
    return mine, len(mine) * w.size / len(idx)


def my_part(idx: np.ndarray, w: World) -> tuple[np.ndarray, float, int]:
    """:func:`shard` and the examples this process counts (none for a weight-0 stand-in); in one
    process, the whole batch with weight 1."""
    mine, weight = shard(idx, w)
    return mine, weight, len(mine) if weight else 0


def data_parallel(loss: torch.nn.Module, w: World,
                  log: Callable[[str], None] = lambda s: None) -> torch.nn.Module:
    """A task's loss module (its ``forward`` runs the model) in ``DistributedDataParallel``
    when several processes train, else itself.

    Buffers are not broadcast before each step: the models' buffers are constants (a ranker's
    category table, (N, C), would cost a broadcast of that size a step) or BatchNorm statistics
    that only evaluation reads, where process 0's are saved and decide."""
    if w.size == 1:
        return loss
    log(f"data-parallel over {w.size} processes (torch.distributed, gloo)")
    return torch.nn.parallel.DistributedDataParallel(loss, broadcast_buffers=False)


def any_process(mask: torch.Tensor, w: World) -> torch.Tensor:
    """``mask`` (0/1 floats) with a 1 wherever any process has one (in place)."""
    if w.size > 1:
        dist.all_reduce(mask, op=dist.ReduceOp.MAX)
    return mask


def all_sum(values: list[float], w: World) -> list[float]:
    """Element-wise sum of ``values`` over the processes (itself in one process)."""
    if w.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def from_main(value: float, w: World) -> float:
    """Process 0's ``value`` in every process (so that all take the same decisions)."""
    if w.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()
