"""The training loop for retrieval models: Adam, softmax loss, early stopping, checkpoints.

One epoch shuffles the training examples (``(start, pos)`` pairs into the flat item array),
builds each batch's left-padded histories with one gather, and takes an Adam step on the
softmax loss of the model's readout vector against the target. After each epoch the model is
evaluated on validation users (exact top-N); the best state by validation Recall@50 is kept
and training stops after ``patience`` epochs without improvement.

Repeatability: every epoch reseeds torch and NumPy from ``(seed, epoch)``, so a run resumed
from the last checkpoint takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mirec.config import from_dict
from mirec.data.dataset import Dataset
from mirec.data.split import Split, SplitConfig, split_users, windows
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import EvalConfig, evaluate
from mirec.models.base import Interests, max_over_interests, unit_interests
from mirec.train.checkpoint import (
    check_resume,
    check_resume_model_args,
    load_checkpoint,
    save_checkpoint,
    saved_config,
)
from mirec.train.distributed import all_sum, barrier, from_main, shard, world
from mirec.train.losses import NegativeSampler, full_softmax_loss, sampled_softmax_loss


@dataclass
class TrainConfig:
    """Optimisation settings shared by every neural retrieval model."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 0.1
    cosine: bool = True  # score cos(v, e) / T instead of v . e / T
    loss: str = "auto"  # auto | full | sampled
    num_negatives: int = 1000
    sampler: str = "log-uniform"  # uniform | log-uniform
    full_softmax_max_items: int = 20_000  # auto: full softmax up to this many items
    patience: int = 3
    threads: int = 1  # torch threads; 2 on a 2-core box stalls when anything else runs
    keep_freed_memory: bool = True  # see keep_freed_memory(): 20-40% faster steps on CPU
    # torch.compile the training loss (inductor fuses the element-wise work between the
    # matmuls) for full batches; an epoch's last, smaller batch runs uncompiled, so nothing
    # recompiles. Needs a C++ compiler; compiling takes ~20 s once per process. One thread,
    # MovieLens-100K (bench/train_speed.py --compile): ComiRec-SA ~1.3x, YouTube DNN ~1.1x,
    # MIND ~0.9x (its routing loop is unrolled).
    compile: bool = False
    # "bf16" runs the training loss under CPU autocast: matmuls and the element-wise work on
    # their outputs in bfloat16, the cross-entropy, parameters and Adam in float32. Faster only
    # on CPUs with native bf16 (AVX512-BF16 / AMX); elsewhere slower. Evaluation and serving
    # stay float32.
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 2020
    max_batches_per_epoch: int = 0  # 0 = all; for smoke tests and benchmarks

    def validate(self) -> None:
        if self.loss not in ("auto", "full", "sampled"):
            raise MirecConfigError(f"train.loss: expected auto, full or sampled, got {self.loss!r}")
        if self.precision not in ("fp32", "bf16"):
            raise MirecConfigError(f"train.precision: expected fp32 or bf16, got {self.precision!r}")
        if self.sampler not in ("uniform", "log-uniform"):
            raise MirecConfigError(f"train.sampler: expected uniform or log-uniform, "
                                   f"got {self.sampler!r}")
        for name in ("epochs", "batch_size", "num_negatives", "threads", "patience"):
            if getattr(self, name) < 1:
                raise MirecConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise MirecConfigError(f"train.temperature: must be > 0, got {self.temperature}")
        if self.lr <= 0:
            raise MirecConfigError(f"train.lr: must be > 0, got {self.lr}")


@dataclass
class RunConfig:
    """Everything a training run needs; saved into every checkpoint and results.json."""

    model: str = "comirec-sa"
    model_args: dict[str, Any] = field(default_factory=dict)  # the model's own config fields
    train: TrainConfig = field(default_factory=TrainConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        from mirec.models.registry import NEURAL

        if self.model not in NEURAL:
            raise MirecConfigError(f"model: unknown trainable model {self.model!r} "
                                   f"(known: {', '.join(sorted(NEURAL))})")


def model_config(cfg: RunConfig) -> Any:
    """The model's own config dataclass: its defaults with ``cfg.model_args`` over them;
    ``max_len`` always follows the split's window."""
    from mirec.models.registry import NEURAL

    cfg_cls = NEURAL[cfg.model][0]
    args = dict(cfg.model_args)
    if "max_len" in {f.name for f in dataclasses.fields(cfg_cls)}:
        args["max_len"] = cfg.split.max_len
    return from_dict(cfg_cls, args, prefix="model_args.")


def build_model(cfg: RunConfig, num_items: int) -> torch.nn.Module:
    """Instantiate the configured model."""
    from mirec.models.registry import NEURAL

    return NEURAL[cfg.model][1](model_config(cfg), num_items)


class VectorScorer:
    """Evaluation adapter: a retriever scores items by max over its interests (exact search)."""

    def __init__(self, model: torch.nn.Module, cosine: bool) -> None:
        self.model, self.cosine = model, cosine
        with torch.no_grad():
            items = model.item_embeddings()
            self.items = F.normalize(items, dim=-1) if cosine else items  # (N, D)

    @torch.no_grad()
    def interests(self, hist: np.ndarray, mask: np.ndarray) -> Interests:
        self.model.eval()
        out = self.model.interests(torch.from_numpy(hist), torch.from_numpy(mask))
        if self.cosine:
            out = unit_interests(out)
        return out

    @torch.no_grad()
    def score(self, hist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return max_over_interests(self.interests(hist, mask), self.items).numpy()  # (B, N)


def batch_loss(model: torch.nn.Module, hist: torch.Tensor, mask: torch.Tensor,
               target: torch.Tensor, cfg: TrainConfig, sampler: NegativeSampler | None,
               num_items: int) -> torch.Tensor:
    """The training loss of one batch (full or sampled softmax on the readout vector)."""
    out = model.interests(hist, mask)
    items = model.item_embeddings()  # (N, D)
    B = len(target)
    neg = None if sampler is None else sampler.sample(cfg.num_negatives)  # (S,)
    # One gather for the targets and the negatives: the backward of every gather zero-fills a
    # whole (N, D) gradient table, which dominates a step on a large catalogue.
    rows = items[target if neg is None else torch.cat([target, neg])]  # (B [+ S], D)
    if cfg.cosine and out.vectors.shape[1] > 1:  # one interest: the readout is the vector
        # Serving ranks items by each interest's cosine: the readout must compare the same unit
        # vectors to pick the interest that answers for the target, or it favours long ones.
        out = unit_interests(out)
    user = model.readout(out, rows[:B])  # (B, D)
    if cfg.cosine:
        user = F.normalize(user, dim=-1)
    if neg is None:
        table = F.normalize(items, dim=-1) if cfg.cosine else items
        return full_softmax_loss(user, table, target, cfg.temperature)
    if cfg.cosine:
        rows = F.normalize(rows, dim=-1)
    return sampled_softmax_loss(user, rows[:B], rows[B:], target, neg, sampler.log_q,
                                cfg.temperature)


def use_sampled(cfg: TrainConfig, num_items: int) -> bool:
    return cfg.loss == "sampled" or (cfg.loss == "auto" and num_items > cfg.full_softmax_max_items)


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


def setup(cfg: RunConfig, ds: Dataset) -> tuple[Split, torch.nn.Module, torch.optim.Optimizer,
                                                NegativeSampler | None]:
    """Threads, split, seeded model, Adam, and the negative sampler when the loss samples."""
    tc = cfg.train
    torch.set_num_threads(tc.threads)
    if tc.keep_freed_memory:
        keep_freed_memory()
    split = split_users(ds, cfg.split)
    torch.manual_seed(tc.seed)
    model = build_model(cfg, ds.num_items)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    sampler = None
    if use_sampled(tc, ds.num_items):
        counts = np.bincount(ds.item[split.example_pos], minlength=ds.num_items)
        sampler = NegativeSampler(ds.num_items, tc.sampler, counts)
    return split, model, opt, sampler


class LossModule(torch.nn.Module):
    """The training loss as a module's ``forward``: what ``DistributedDataParallel`` wraps (it
    hooks ``forward``, while the models expose ``interests``/``readout``)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, sampler: NegativeSampler | None,
                 num_items: int) -> None:
        super().__init__()
        self.model, self.cfg, self.sampler, self.num_items = model, cfg, sampler, num_items

    def forward(self, hist: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            loss = batch_loss(self.model, hist, mask, target, self.cfg, self.sampler, self.num_items)
        return loss.float()  # a no-op in fp32


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


def train_step(opt: torch.optim.Optimizer, ds: Dataset, split: Split, idx: np.ndarray, cfg: RunConfig,
               loss_fn: Callable, weight: float | None = None) -> float:
    """One Adam step on the training examples ``idx``; returns their mean loss.

    ``loss_fn(hist, mask, target)`` is the :class:`LossModule`, maybe compiled or in
    ``DistributedDataParallel``. Under ``torchrun`` ``idx`` is this process's slice of the
    batch and ``weight`` scales its loss (see :func:`mirec.train.distributed.shard`)."""
    hist, mask = windows(ds.item, split.example_start[idx], split.example_pos[idx],
                         cfg.split.max_len)  # (B, L) each
    target = torch.from_numpy(ds.item[split.example_pos[idx]].astype(np.int64))  # (B,)
    loss = loss_fn(torch.from_numpy(hist), torch.from_numpy(mask), target)
    scaled = loss if weight is None else loss * weight  # the averaged gradient is the batch's
    opt.zero_grad(set_to_none=True)
    scaled.backward()
    opt.step()
    return loss.item()


@dataclass
class TrainResult:
    run_dir: Path
    model: torch.nn.Module
    split: Split
    best_epoch: int
    best_valid: dict[str, float]
    test: dict[str, float]
    test_topn: np.ndarray
    history: list[dict[str, Any]]


def train(cfg: RunConfig, ds: Dataset, run_dir: str | Path, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = lambda s: None,
          stop_after_epoch: int | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``ds`` into ``run_dir`` (checkpoints, metrics.jsonl, results.json).

    ``resume`` continues from ``run_dir/last.pt``. ``stop_after_epoch`` ends the run after
    that epoch as if killed (tests of resuming use it). Launched by ``torchrun``, the processes
    train data-parallel (:mod:`mirec.train.distributed`) and process 0 writes the files.
    """
    cfg.validate()
    tc = cfg.train
    tc.validate()
    w = world()
    if not w.main:
        log = lambda s: None  # noqa: E731 (process 0 reports)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    split, model, opt, sampler = setup(cfg, ds)
    start_epoch, best, best_epoch, bad, history = 0, -1.0, -1, 0, []
    last = run_dir / "last.pt"
    if resume:
        if not last.exists():
            raise MirecConfigError(f"--resume: {last} does not exist")
        st = load_checkpoint(last)
        check_resume(last, st, {"config": saved_config(cfg, model_config(cfg)),
                                "dataset_checksum": ds.checksum})
        was_len = st["config"].get("split", {}).get("max_len", cfg.split.max_len)
        if was_len != cfg.split.max_len:
            raise MirecConfigError(f"--resume: {last} was trained with split.max_len={was_len}, this run "
                                   f"has {cfg.split.max_len}; add --set split.max_len={was_len} or "
                                   f"train into a new directory")
        # max_len follows split.max_len (checked above), whatever model_args said
        check_resume_model_args(last, st["config"].get("model_args", {}), model_config(cfg),
                                skip=("max_len",))
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start_epoch, best, best_epoch, bad = st["epoch"] + 1, st["best"], st["best_epoch"], st["bad"]
        history = st["history"]
        log(f"resumed from {last} after epoch {st['epoch']}")
    elif w.main and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    conf = saved_config(cfg, model_config(cfg))  # what both checkpoints record
    loss_fn = LossModule(model, tc, sampler, ds.num_items)
    if w.size > 1:
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn)
        log(f"data-parallel over {w.size} processes (torch.distributed, gloo)")
    full_fn = loss_fn  # for full batches
    if tc.compile:
        full_fn = compiled(loss_fn, dynamic=False)
        log("train.compile: the first batch compiles the loss (~20 s)")
    L = cfg.split.max_len
    n_ex = split.num_examples
    for epoch in range(start_epoch, tc.epochs):
        if bad >= tc.patience:
            break
        torch.manual_seed(tc.seed * 100_003 + epoch)
        perm = np.random.default_rng([tc.seed, epoch]).permutation(n_ex)
        n_batches = -(-n_ex // tc.batch_size)
        if tc.max_batches_per_epoch:
            n_batches = min(n_batches, tc.max_batches_per_epoch)
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch",
                   disable=None if progress and w.main else True, leave=False)
        for b in bar:
            idx = perm[b * tc.batch_size:(b + 1) * tc.batch_size]
            fn = full_fn if len(idx) == tc.batch_size else loss_fn
            weight, n = None, len(idx)
            if w.size > 1:
                idx, weight = shard(idx, w)  # this process's slice
                n = len(idx) if weight else 0  # a weight-0 stand-in example counts for nothing
            total += train_step(opt, ds, split, idx, cfg, fn, weight) * n
            seen += n
            if b % 20 == 0:
                rate = seen * w.size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{total / seen:.4f}", ex_s=f"{rate:,.0f}")
        train_s = time.perf_counter() - t0
        total, seen = all_sum([total, seen], w)  # every process's examples and loss
        seen = int(seen)
        # Every process holds the same parameters and evaluates the same users; process 0's
        # score decides, so all of them stop together.
        valid = evaluate(VectorScorer(model, tc.cosine), ds, split.valid, L, cfg.eval).metrics
        row = {"epoch": epoch, "loss": total / max(seen, 1), "examples": seen,
               "train_seconds": round(train_s, 3), "examples_per_s": round(seen / train_s, 1),
               "valid": valid}
        if w.size > 1:
            row["processes"] = w.size
        history.append(row)
        if w.main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        score = valid["recall@50"] if "recall@50" in valid else next(iter(valid.values()))
        score = from_main(score, w)
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            if w.main:
                save_checkpoint(run_dir / "best.pt", {
                    "model": model.state_dict(), "epoch": epoch, "config": conf,
                    "data": str(ds.path), "dataset_checksum": ds.checksum})
        else:
            bad += 1
        log(f"epoch {epoch}: loss {row['loss']:.4f}, {row['examples_per_s']:,.0f} ex/s, "
            f"valid recall@50 {score:.4f} (best {best:.4f} @ {best_epoch})")
        if w.main:
            save_checkpoint(last, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "best": best, "best_epoch": best_epoch, "bad": bad, "history": history,
                "config": conf, "torch_rng": torch.get_rng_state(), "dataset_checksum": ds.checksum,
                "data": str(ds.path)})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    barrier(w)  # process 0 has written best.pt
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    scorer = VectorScorer(model, tc.cosine)
    test = evaluate(scorer, ds, split.test, L, cfg.eval)
    best_valid = history[best_epoch]["valid"]  # history holds every epoch from 0
    return TrainResult(run_dir, model, split, best_epoch, best_valid, test.metrics, test.topn,
                       history)
