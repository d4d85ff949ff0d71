"""The machine a benchmark ran on, printed with its figures (timings move with the CPU)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """``<cpu>; <n> cores (<m> usable), load average a/b/c``."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{cpu_name()}; {os.cpu_count()} cores ({usable} usable), load average {load}"


def matmul_peak(n: int = 1024, reps: int = 8) -> float:
    """Best FLOP/s of an n x n float32 matmul at the current torch thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def matmul_flops(run: Callable[[], T]) -> tuple[int, T]:
    """The multiply-add FLOPs (2 per multiply-add) of every matmul that ``run()`` executes,
    forward and backward, counted from the operands' shapes as the ops are dispatched, and
    what ``run()`` returned."""
    from torch.utils._python_dispatch import TorchDispatchMode

    total = 0

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total
            name = func.__name__  # "mm.default", "addmm.out", "bmm.default", ...
            if name.split(".")[0] in ("mm", "addmm", "bmm", "baddbmm"):
                a, b = (args[1], args[2]) if name.startswith(("addmm", "baddbmm")) else (args[0], args[1])
                total += 2 * a.numel() * b.shape[-1]  # (.., M, K) x (.., K, N): 2 M K N per batch
            return func(*args, **(kwargs or {}))

    with Count():
        result = run()
    return total, result
