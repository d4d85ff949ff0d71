"""The one training engine: the epoch loop every task runs through.

A task (retrieval in :mod:`mirec.train.loop`, ranking in :mod:`mirec.train.ctr`) supplies
the model, its optimiser, an epoch's batches, one optimisation step, a validation score and
what its checkpoints record. The engine does everything around that, the same way for every
task:

    for epoch:                       reseed torch and NumPy from (seed, epoch)
        for batch in task.batches:   task.step(batch) -> (mean loss, examples); progress bar
            every checkpoint_minutes: last.pt mid-epoch (atomic), a row in steps.jsonl
        task.validate()              -> metrics; one row in metrics.jsonl (on the weights'
                                        moving average when train.weight_average > 0)
        best so far? -> best.pt      (atomic) ; last.pt every epoch (atomic, for --resume)
        no better? -> lr *= plateau_decay; stop after `patience` such epochs
    reload best.pt

Repeatability: every epoch reseeds from ``(seed, epoch)``, so a run resumed from ``last.pt``
takes exactly the steps an uninterrupted run takes. A step checkpoint (``last.pt`` written
mid-epoch) adds where the epoch stands: batches done, the loss and examples so far and the
torch generators, so a run killed mid-epoch continues from that batch as if never stopped.
Under ``torchrun`` every process runs the loop on the same parameters; process 0 alone writes
files and its validation score decides (:mod:`mirec.train.distributed`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from mirec.checkpoint import load_checkpoint, save_checkpoint
from mirec.errors import MirecConfigError
from mirec.io import atomic_write_bytes
from mirec.train.distributed import World, all_sum, barrier, from_main, world
from mirec.train.optim import learning_rate, scale_learning_rate


class Task(Protocol):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    score_name: str  # the validation metric that picks the best epoch, e.g. "recall@50"

    def batches(self, rng: np.random.Generator) -> Sequence[Any]:
        """One epoch's batches in ``rng``'s order."""

    def step(self, batch: Any) -> tuple[float, int]:
        """One optimisation step: (mean loss, examples this process counted)."""

    def validate(self) -> dict[str, float]:
        """Validation metrics (``score_name`` among them)."""

    def saved(self) -> dict[str, Any]:
        """What both checkpoints record besides weights: config, data set checksum, ..."""

    def check_resume(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse to resume ``state`` (from ``path``) with other settings, naming the field."""


@dataclass
class Fitted:
    best_epoch: int
    history: list[dict[str, Any]]  # one row per epoch, from epoch 0
    warm_start: dict[str, Any] | None = None  # the parent run of a warm start (mirec.train.warm)

    @property
    def best_valid(self) -> dict[str, float]:
        return self.history[self.best_epoch]["valid"]


@dataclass
class Standing:
    """The run's record across epochs: the best validation score so far, its epoch, the epochs
    since it (early stopping) and one metrics row per finished epoch."""

    best: float = -1.0
    best_epoch: int = -1
    bad: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class WeightAverage:
    """An exponential moving average of a model's parameters (Polyak averaging), updated after
    every optimisation step: ``avg <- decay avg + (1 - decay) w``, starting at the first step's
    weights (:class:`torch.optim.swa_utils.AveragedModel`). Buffers are the model's own."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = model
        self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    def update(self) -> None:
        self.avg.update_parameters(self.model)

    @contextlib.contextmanager
    def swapped_in(self) -> Any:
        """The model holds the averaged weights inside the block, its own again after it."""
        own = [p.detach().clone() for p in self.model.parameters()]
        avg = list(self.avg.module.parameters())
        with torch.no_grad():
            if int(self.avg.n_averaged):  # before the first step the average is not yet set
                for p, a in zip(self.model.parameters(), avg):
                    p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.model.parameters(), own):
                    p.copy_(o)


@dataclass
class EpochSoFar:
    """How far an epoch has got: what a step checkpoint records so that ``--resume`` continues
    the epoch exactly. The batch order itself is not stored: it is redrawn from ``(seed, epoch)``
    and the first ``batches`` are skipped."""

    epoch: int
    batches: int = 0  # batches done
    loss_sum: float = 0.0  # sum of loss x examples over them (every process's)
    examples: int = 0  # every process's
    train_seconds: float = 0.0  # without the time spent writing checkpoints
    rng: dict[str, Any] = field(default_factory=dict)  # torch generators: negatives, dropout


def rng_state() -> dict[str, Any]:
    """The torch generators a step draws from (negative samples, dropout masks)."""
    st = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["cpu"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class StepClock:
    """When a step checkpoint is due: every ``checkpoint_every_steps`` batches of an epoch and
    every ``checkpoint_minutes`` since the last checkpoint (0 turns either off). Under
    ``torchrun`` process 0's clock decides for all (one scalar broadcast a step), since all join
    in summing the counts."""

    def __init__(self, lc: Any, w: World) -> None:
        self.every, self.seconds, self.w = lc.checkpoint_every_steps, lc.checkpoint_minutes * 60, w
        self.since = time.monotonic()

    def due(self, done: int) -> bool:
        """Whether to checkpoint after ``done`` batches of the epoch."""
        if self.every and done % self.every == 0:
            return True  # the same batch in every process
        if not self.seconds:
            return False
        late = time.monotonic() - self.since >= self.seconds
        return from_main(float(late), self.w) > 0 if self.w.size > 1 else late

    def reset(self) -> None:
        self.since = time.monotonic()


def fit(task: Task, run_dir: str | Path, lc: Any, resume: bool = False, progress: bool = True,
        log: Callable[[str], None] = lambda s: None, stop_after_epoch: int | None = None,
        on_epoch: Callable[[int, float], None] | None = None) -> Fitted:
    """Train ``task`` into ``run_dir``; ``lc`` (a task's train config) gives ``epochs``,
    ``patience``, ``seed``, ``max_batches_per_epoch``, ``checkpoint_minutes`` and
    ``checkpoint_every_steps``. ``on_epoch(epoch, score)`` is called after every epoch's
    checkpoints with its validation score (tuning prunes from there by raising).

    ``resume`` continues from ``run_dir/last.pt``, at the batch its last step checkpoint
    reached when it has one. ``stop_after_epoch`` ends the run after that epoch as if killed
    (tests of resuming use it). Ends with the best epoch's weights loaded.
    """
    w = world()
    if not w.main:
        log = lambda s: None  # noqa: E731 (process 0 reports)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model, opt = task.model, task.optimizer
    run, so_far, start_epoch, carried = Standing(), None, 0, {}
    average = WeightAverage(model, lc.weight_average) if lc.weight_average else None
    last, metrics, steps = run_dir / "last.pt", run_dir / "metrics.jsonl", run_dir / "steps.jsonl"
    if w.main:
        drop_unfinished_writes(run_dir)
    if resume:
        if not last.exists():
            raise MirecConfigError(f"--resume: {last} does not exist")
        st = load_checkpoint(last)
        task.check_resume(last, st)
        model.load_state_dict(st["model"])
        if average is not None:
            if "average" not in st:
                raise MirecConfigError(f"--resume: {last} was trained without train.weight_average; "
                                       f"resume with train.weight_average=0 or train into a new directory")
            average.avg.load_state_dict(st["average"])
        try:
            opt.load_state_dict(st["optimizer"])
        except (KeyError, ValueError):  # dense Adam's state for the row-wise optimiser, or back
            raise MirecConfigError(f"{last}: its optimiser state is not this run's optimiser's; "
                                   f"resume with the train.optimizer the run was started with") from None
        start_epoch = st["epoch"] + 1
        run = Standing(st["best"], st["best_epoch"], st["bad"], st["history"])
        so_far = EpochSoFar(**st["partial"]) if "partial" in st else None
        if "warm_start" in st:  # a warm-started run goes on naming its parent, never reloads it
            carried = {"warm_start": st["warm_start"]}
        if w.main:  # the epochs last.pt holds, whatever a kill left after them
            atomic_write_bytes(metrics, "".join(json.dumps(r) + "\n" for r in run.history).encode())
        where = f", batch {so_far.batches} of epoch {so_far.epoch}" if so_far else ""
        log(f"resumed from {last} after epoch {st['epoch']}{where}")
    elif w.main:
        for f in (metrics, steps):
            f.unlink(missing_ok=True)
    saved = {**carried, **task.saved()}

    def save_last(epoch_done: int, part: EpochSoFar | None = None) -> None:
        if w.main:
            st = {"model": on_cpu(model.state_dict()), "optimizer": on_cpu(opt.state_dict()),
                  "epoch": epoch_done, "best": run.best, "best_epoch": run.best_epoch,
                  "bad": run.bad, "history": run.history, **saved}
            if average is not None:
                st["average"] = on_cpu(average.avg.state_dict())
            save_checkpoint(last, st if part is None else {**st, "partial": dataclasses.asdict(part)})

    clock = StepClock(lc, w)
    for epoch in range(start_epoch, lc.epochs):
        if run.bad >= lc.patience:
            break
        torch.manual_seed(lc.seed * 100_003 + epoch)
        batches = task.batches(np.random.default_rng([lc.seed, epoch]))
        if lc.max_batches_per_epoch:
            batches = batches[:lc.max_batches_per_epoch]
        part = so_far if so_far is not None and so_far.epoch == epoch else EpochSoFar(epoch)
        so_far = None
        if part.rng:
            set_rng_state(part.rng)  # where the killed run's generators were
        model.train()
        # the accounting so far is every process's: process 0 carries it on
        total, seen = (part.loss_sum, part.examples) if w.main else (0.0, 0)
        t0, paused = time.perf_counter() - part.train_seconds, 0.0
        bar = tqdm(batches[part.batches:], desc=f"epoch {epoch}", unit="batch", initial=part.batches,
                   total=len(batches), disable=None if progress and w.main else True, leave=False)
        for b, batch in enumerate(bar, start=part.batches + 1):  # b: batches done after this one
            loss, n = task.step(batch)
            if average is not None:
                average.update()
            total += loss * n
            seen += n
            if b % 20 == 1 and seen:
                rate = seen * w.size / max(time.perf_counter() - t0 - paused, 1e-9)
                bar.set_postfix(loss=f"{total / seen:.4f}", ex_s=f"{rate:,.0f}")
            if b < len(batches) and clock.due(b):
                t = time.perf_counter()
                sums = all_sum([total, seen], w)
                part = EpochSoFar(epoch, b, sums[0], int(sums[1]), t - t0 - paused, rng_state())
                save_last(epoch - 1, part)
                paused += time.perf_counter() - t
                clock.reset()
                if w.main:
                    append_row(steps, step_row(part, len(batches), time.perf_counter() - t))
        train_s = time.perf_counter() - t0 - paused
        total, seen = all_sum([total, seen], w)  # every process's examples and loss
        seen = int(seen)
        with average.swapped_in() if average is not None else contextlib.nullcontext():
            valid = task.validate()
            # Every process holds the same parameters; process 0's score decides, so all stop together.
            score = from_main(valid[task.score_name], w)
            if score > run.best and w.main:
                save_checkpoint(run_dir / "best.pt", {"model": on_cpu(model.state_dict()), "epoch": epoch,
                                                      **saved})
        row = {"epoch": epoch, "loss": total / max(seen, 1), "examples": seen,
               "lr": learning_rate(opt), "train_seconds": round(train_s, 3),
               "examples_per_s": round(seen / train_s, 1), "valid": valid}
        if w.size > 1:
            row["processes"] = w.size
        run.history.append(row)
        if w.main:
            append_row(metrics, row)
        if score > run.best:
            run.best, run.best_epoch, run.bad = score, epoch, 0
        else:
            run.bad += 1
            if lc.plateau_decay != 1:
                scale_learning_rate(opt, lc.plateau_decay)
        log(f"epoch {epoch}: loss {row['loss']:.4f}, {row['examples_per_s']:,.0f} ex/s, "
            f"valid {task.score_name} {score:.4f} (best {run.best:.4f} @ {run.best_epoch})")
        save_last(epoch)
        clock.reset()
        if on_epoch is not None:
            on_epoch(epoch, score)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    barrier(w)  # process 0 has written best.pt
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    return Fitted(run.best_epoch, run.history, saved.get("warm_start"))


def step_row(part: EpochSoFar, batches: int, write_s: float) -> dict[str, Any]:
    """A line of ``steps.jsonl``: where a step checkpoint was taken and the epoch's figures so far."""
    return {"epoch": part.epoch, "batch": part.batches, "batches": batches,
            "loss": part.loss_sum / max(part.examples, 1), "examples": part.examples,
            "train_seconds": round(part.train_seconds, 3),
            "examples_per_s": round(part.examples / max(part.train_seconds, 1e-9), 1),
            "checkpoint_seconds": round(write_s, 3)}


def append_row(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def drop_unfinished_writes(run_dir: Path) -> None:
    """Remove the temporary files a run killed while writing left (``.last.pt.tmp-*``, as big as a
    checkpoint); the files under their final names are whole (:func:`mirec.io.atomic_path`)."""
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        for tmp in run_dir.glob(f".{name}.tmp-*"):
            tmp.unlink(missing_ok=True)


def on_cpu(state: Any) -> Any:
    """``state`` (a state dict, maybe nested) with every tensor on the CPU, so checkpoints written
    on a GPU load, export and serve anywhere. CPU tensors are returned as they are (no copy)."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(on_cpu(v) for v in state)
    return state


def resolve_device(name: str, distributed: bool = False) -> torch.device:
    """``train.device`` as a torch device: ``auto`` is CUDA when torch finds a GPU, else the CPU.

    Asking for ``cuda`` or ``cuda:N`` without such a GPU is a configuration error naming the
    setting. Data-parallel runs (``torchrun``) all-reduce over gloo on the CPU: there ``auto``
    is the CPU and a GPU is refused."""
    if name == "cpu" or (name == "auto" and (distributed or not torch.cuda.is_available())):
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda")
    if distributed:
        raise MirecConfigError(f"train.device: {name!r} is not supported under torchrun (data-parallel "
                               f"training runs on the CPU over gloo); set train.device=cpu")
    if not torch.cuda.is_available():
        raise MirecConfigError(f"train.device: {name!r} asked for, but torch finds no CUDA GPU "
                               f"(torch {torch.__version__}); set train.device=cpu or auto")
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MirecConfigError(f"train.device: {name!r} asked for, but torch finds "
                               f"{torch.cuda.device_count()} CUDA GPU(s)")
    return dev


@dataclass(frozen=True)
class Placement:
    """Where a task's model, batches and losses live, and the autocast precision of its loss."""

    device: torch.device
    bf16: bool  # the loss runs under bf16 autocast; parameters and the optimiser stay float32

    def batch(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor (from NumPy) on the device: pinned and copied without blocking on CUDA."""
        if self.device.type == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def placement(device: str | torch.device, precision: str, distributed: bool = False) -> Placement:
    """``train.device`` (or a device already resolved) and ``train.precision``: ``auto``
    precision is bf16 on a CUDA GPU that supports it and float32 everywhere else (the CPU
    included)."""
    dev = device if isinstance(device, torch.device) else resolve_device(device, distributed)
    if precision == "auto":
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    else:
        bf16 = precision == "bf16"
    return Placement(dev, bf16)


def setup_threads(threads: int, keep_freed: bool) -> None:
    torch.set_num_threads(threads)
    if keep_freed:
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks instead of returning them to the system.

    A training step allocates and frees the same few-MB activations every batch; by default
    glibc serves each from a fresh ``mmap`` and unmaps it on free, so every step page-faults
    its activations in again. Raising the mmap and trim thresholds makes the freed blocks
    reusable (the process keeps its peak heap). Measured 20-40% faster steps for the models
    here (bench/train_speed.py). Returns False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31))


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use (``$CXX``, else g++, c++, clang++
    on ``PATH``), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((p for p in map(shutil.which, names) if p), None)


def compiled(fn: Callable, dynamic: bool) -> Callable:
    """``torch.compile(fn)``, or a clear error naming ``train.compile`` without a compiler."""
    if cxx_compiler() is None:
        raise MirecConfigError("train.compile: torch.compile on CPU needs a C++ compiler and none "
                               "was found ($CXX, g++, c++, clang++); install one or set "
                               "train.compile=false")
    return torch.compile(fn, dynamic=dynamic)
