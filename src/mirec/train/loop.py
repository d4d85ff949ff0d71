"""Retrieval training as a task of the engine (:mod:`mirec.train.engine`).

One epoch shuffles the training examples (``(start, pos)`` pairs into the flat item array);
each batch's left-padded histories come from one gather, and a step is Adam on the softmax
loss (full or sampled) of the model's readout vector against the target. Validation is exact
top-N on the validation users; the best epoch by validation Recall@50 is kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from mirec.checkpoint import check_resume as check_resume_settings
from mirec.checkpoint import check_resume_model_args, legacy_model_args, saved_config
from mirec.data.dataset import Dataset
from mirec.data.split import Split, permutation, split_users, windows
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import evaluate, sample_users
from mirec.models.base import VectorScorer, model_device, unit_interests
from mirec.runs import RunConfig, TrainConfig, build_model, model_config  # noqa: F401 (re-exported)
from mirec.train.distributed import World, data_parallel, my_part, world
from mirec.train.engine import (  # noqa: F401
    Placement,
    compiled,
    cxx_compiler,
    fit,
    keep_freed_memory,
    placement,
    setup_threads,
)
from mirec.train.losses import (
    NegativeSampler,
    full_softmax_loss,
    interest_overlap,
    routing_penalty,
    sampled_softmax_loss,
    view_contrast,
)
from mirec.train.optim import make_optimizer, table_is_sparse
from mirec.train.warm import Parent, warm_retriever

AUTO = {"lr": 1e-3, "routing_reg": 0.0}  # what "auto" means for a model without its own default
WARM_LR_SCALE = 0.1  # train.warm_lr "auto": this times train.lr (mirec.runs.TrainConfig)


def auto_setting(cfg: TrainConfig, model: torch.nn.Module, name: str) -> float:
    """``train.<name>`` (lr, routing_reg); "auto" is the model's own ``default_<name>`` (ComiRec-SA
    has both), else :data:`AUTO`'s value."""
    value = getattr(cfg, name)
    return getattr(model, f"default_{name}", AUTO[name]) if value == "auto" else value


def learning_rate(cfg: TrainConfig, model: torch.nn.Module, warm: bool) -> float:
    """The optimiser's lr: ``train.lr`` (resolved), or for a warm-started run ``train.warm_lr``
    ("auto": :data:`WARM_LR_SCALE` times the resolved ``train.lr``)."""
    lr = auto_setting(cfg, model, "lr")
    if not warm:
        return lr
    return WARM_LR_SCALE * lr if cfg.warm_lr == "auto" else cfg.warm_lr


def batch_loss(model: torch.nn.Module, hist: torch.Tensor, mask: torch.Tensor,
               target: torch.Tensor, cfg: TrainConfig, sampler: NegativeSampler | None,
               num_items: int, sparse: bool = False) -> torch.Tensor:
    """The training loss of one batch (full or sampled softmax on the readout vector).
    ``sparse``: the item table's gradient is sparse (only the rows gathered here and by the
    model; :mod:`mirec.train.optim`)."""
    B = len(target)
    neg = None if sampler is None else sampler.sample(cfg.num_negatives)  # (S,)
    ids = target if neg is None else torch.cat([target, neg])  # (B [+ S],)
    items = model.item_embeddings()  # (N, D)
    if getattr(model, "gathers_also", False):  # the rows come from the model's own lookup
        out = model.interests(hist, mask, also=ids)
        rows = out.rows  # (B [+ S], D)
    else:
        out = model.interests(hist, mask)
        # One gather for the targets and the negatives: the backward of every dense gather
        # zero-fills a whole (N, D) gradient table; a sparse one holds just these rows.
        rows = F.embedding(ids, items, sparse=sparse)  # (B [+ S], D)
    weight = auto_setting(cfg, model, "routing_reg")
    reg = weight * routing_penalty(out.weights, mask) if weight else None
    if cfg.interest_overlap and out.vectors.shape[1] > 1:
        apart = cfg.interest_overlap * interest_overlap(out.vectors, out.mask)
        reg = apart if reg is None else reg + apart
    if cfg.view_contrast:  # the same histories again, other dropout draws
        other = model.interests(hist, mask)
        views = cfg.view_contrast * view_contrast(out.vectors, other.vectors, out.mask, cfg.temperature)
        reg = views if reg is None else reg + views
    if cfg.cosine and out.vectors.shape[1] > 1:  # one interest: the readout is the vector
        # Serving ranks items by each interest's cosine: the readout must compare the same unit
        # vectors to pick the interest that answers for the target, or it favours long ones.
        out = unit_interests(out)
    live = None
    if cfg.negative_score == "max" and out.vectors.shape[1] > 1:
        user, live = out.vectors, out.mask  # (B, K, D): every item by its best live interest
    else:
        user = model.readout(out, rows[:B])  # (B, D)
        if cfg.cosine:
            user = F.normalize(user, dim=-1)
    if neg is None:
        table = F.normalize(items, dim=-1) if cfg.cosine else items
        loss = full_softmax_loss(user, table, target, cfg.temperature, live)
    else:
        if cfg.cosine:
            rows = F.normalize(rows, dim=-1)
        loss = sampled_softmax_loss(user, rows[:B], rows[B:], target, neg, sampler.log_q,
                                    cfg.temperature, cfg.hard_negative_beta, live)
    return loss if reg is None else loss + reg


def use_sampled(cfg: TrainConfig, num_items: int) -> bool:
    return cfg.loss == "sampled" or (cfg.loss == "auto" and num_items > cfg.full_softmax_max_items)


def setup(cfg: RunConfig, ds: Dataset, distributed: bool = False, warm: bool = False) -> tuple[
        Split, torch.nn.Module, Any, NegativeSampler | None]:
    """Threads, split, seeded model on ``train.device``, the optimiser ``train.optimizer``
    names (:mod:`mirec.train.optim`; at :func:`learning_rate`, ``warm``: a warm-started run's),
    and the negative sampler (drawing on the device) when the loss samples."""
    tc = cfg.train
    setup_threads(tc.threads, tc.keep_freed_memory)
    device = placement(tc.device, tc.precision, distributed).device
    split = split_users(ds, cfg.split)
    torch.manual_seed(tc.seed)
    # initialised on the CPU: the same anywhere
    model = build_model(cfg, ds.num_items, training=True, categories=ds.category_index()).to(device)
    opt = make_optimizer(model, tc.optimizer, learning_rate(tc, model, warm), tc.weight_decay,
                         use_sampled(tc, ds.num_items), averaged=tc.weight_average > 0)
    sampler = None
    if tc.hard_negative_beta and not use_sampled(tc, ds.num_items):
        raise MirecConfigError("train.hard_negative_beta: weights the sampled negatives; set "
                               "train.loss=sampled (this catalogue trains with the full softmax)")
    if use_sampled(tc, ds.num_items):  # popularity over every training example, before train.since
        counts = split.target_counts(ds.item, ds.num_items)
        sampler = NegativeSampler(ds.num_items, tc.sampler, counts, device)
    return since(split, ds, tc), model, opt, sampler


def since(split: Split, ds: Dataset, tc: TrainConfig) -> Split:
    """``split`` with only the training examples whose target happens after ``train.since``
    (histories still reach back to the sequence's start); "auto" and 0 keep them all."""
    if tc.since == "auto" or tc.since <= 0:
        return split
    kept = split.examples.after(ds.ts, tc.since)
    if not len(kept):
        raise MirecConfigError(f"train.since: no training example's target happens after ts {tc.since} "
                               f"(the last event of {ds.path} is at {int(ds.ts.max(initial=0))}): "
                               f"nothing new to train on")
    return dataclasses.replace(split, examples=kept)


class LossModule(torch.nn.Module):
    """The training loss as a module's ``forward``: what ``DistributedDataParallel`` wraps (it
    hooks ``forward``, while the models expose ``interests``/``readout``)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, sampler: NegativeSampler | None,
                 num_items: int) -> None:
        super().__init__()
        self.model, self.cfg, self.sampler, self.num_items = model, cfg, sampler, num_items
        self.place = placement(model_device(model), cfg.precision)  # the model's device
        self.sparse = table_is_sparse(model)

    def forward(self, hist: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with self.place.autocast():
            loss = batch_loss(self.model, hist, mask, target, self.cfg, self.sampler, self.num_items,
                              self.sparse)
        return loss.float()  # a no-op in fp32


def train_step(opt: Any, ds: Dataset, split: Split, idx: np.ndarray, cfg: RunConfig,
               loss_fn: Callable, weight: float | None = None, place: Placement | None = None) -> float:
    """One optimiser step on the training examples ``idx``; returns their mean loss.

    ``loss_fn(hist, mask, target)`` is the :class:`LossModule`, maybe compiled or in
    ``DistributedDataParallel``. Under ``torchrun`` ``idx`` is this process's slice of the
    batch and ``weight`` scales its loss (see :func:`mirec.train.distributed.shard`). The
    batch goes to ``place``'s device (the CPU when None)."""
    start, pos = split.examples[idx]  # (B,) each
    hist, mask = windows(ds.item, start, pos, cfg.split.max_len)  # (B, L) each
    target = ds.item[pos].astype(np.int64)  # (B,)
    move = place.batch if place is not None else lambda t: t
    loss = loss_fn(*(move(torch.from_numpy(a)) for a in (hist, mask, target)))
    scaled = loss if weight is None else loss * weight  # the averaged gradient is the batch's
    opt.zero_grad(set_to_none=True)
    scaled.backward()
    opt.step()
    return loss.item()


def selected_metric(cfg: RunConfig) -> str:
    """The validation metric that picks the best epoch (``train.select``; see TrainConfig)."""
    ns, name = cfg.eval.ns, cfg.train.select
    if name == "auto":
        return "recall@50" if 50 in ns else f"recall@{ns[0]}"
    if int(name.split("@")[1]) not in ns:
        raise MirecConfigError(f"train.select: {name} needs {name.split('@')[1]} among eval.ns "
                               f"{list(ns)}: add it there or pick another train.select")
    return name


class RetrievalTask:
    """Next-item retrieval for the engine: batches of training examples, validation Recall@50."""

    def __init__(self, cfg: RunConfig, ds: Dataset, log: Callable[[str], None] = lambda s: None,
                 w: World | None = None, warm: Parent | None = None,
                 warm_record: dict[str, Any] | None = None) -> None:
        """``warm``: the parent run every parameter starts from (:mod:`mirec.train.warm`; None
        when resuming, whose last.pt has them and whose optimiser state keeps the lr it ran at);
        ``warm_record``: what the checkpoints say of it."""
        cfg.validate()
        cfg.train.validate()
        self.cfg, self.ds, self.w = cfg, ds, w or world()
        self.split, self.model, self.optimizer, sampler = setup(cfg, ds, self.w.size > 1,
                                                                warm=warm is not None)
        if warm is not None:  # every process maps the same checkpoint the same way
            warm_retriever(self.model, cfg, warm, ds, log)
        self.warm_record = warm_record
        self.loss_fn = LossModule(self.model, cfg.train, sampler, ds.num_items)
        self.place = self.loss_fn.place
        if self.place.device.type != "cpu":
            log(f"training on {self.place.device}" + (" (bf16 autocast)" if self.place.bf16 else ""))
        self.loss_fn = data_parallel(self.loss_fn, self.w, log)
        self.full_fn = self.loss_fn  # for full batches
        if cfg.train.compile:
            self.full_fn = compiled(self.loss_fn, dynamic=False)
            log("train.compile: the first batch compiles the loss (~20 s)")
        # validation ranks a seeded sample (eval.max_users): the same users every epoch and resume
        self.valid_users = sample_users(self.split.valid, cfg.eval.max_users, cfg.split.seed)
        self.score_name = selected_metric(cfg)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        perm = permutation(rng, self.split.num_examples)  # int32: rng.permutation's order
        bs = self.cfg.train.batch_size
        return [perm[i:i + bs] for i in range(0, len(perm), bs)]

    def step(self, idx: np.ndarray) -> tuple[float, int]:
        fn = self.full_fn if len(idx) == self.cfg.train.batch_size else self.loss_fn
        idx, weight, n = my_part(idx, self.w)  # this process's slice (one process: the batch)
        return train_step(self.optimizer, self.ds, self.split, idx, self.cfg, fn, weight, self.place), n

    def scorer(self) -> VectorScorer:
        return VectorScorer(self.model, self.cfg.train.cosine)

    def validate(self) -> dict[str, float]:
        if hasattr(self.optimizer, "flush"):  # the row-wise optimiser's skipped steps, applied
            self.optimizer.flush()
        # every process evaluates the same users on identical parameters
        return evaluate(self.scorer(), self.ds, self.valid_users, self.cfg.split.max_len,
                        self.cfg.eval).metrics

    def saved(self) -> dict[str, Any]:
        out = {"config": saved_config(self.cfg, model_config(self.cfg)), "data": str(self.ds.path),
               "dataset_checksum": self.ds.checksum}
        return out if self.warm_record is None else {**out, "warm_start": self.warm_record}

    def check_resume(self, path: Path, st: dict[str, Any]) -> None:
        cfg = self.cfg
        check_resume_settings(path, st, {"config": saved_config(cfg, model_config(cfg)),
                                         "dataset_checksum": self.ds.checksum})
        # (check_resume_settings compares split.max_len too) max_len follows split.max_len,
        # whatever model_args said
        check_resume_model_args(path, legacy_model_args(st["config"]), model_config(cfg),
                                skip=("max_len",))


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
    warm_start: dict[str, Any] | None = None  # the parent run (mirec.train.warm)


def train(cfg: RunConfig, ds: Dataset, run_dir: str | Path, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = lambda s: None,
          stop_after_epoch: int | None = None, on_epoch: Callable[[int, float], None] | None = None,
          run_test: bool = True, warm: Parent | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``ds`` into ``run_dir`` and test the best epoch on the test users
    (``run_test=False``: not at all, as tuning does: its choice sees validation users only).
    ``warm``: start every parameter from that run (:mod:`mirec.train.warm`; a resumed run
    continues from its last.pt instead).

    Launched by ``torchrun``, the processes train data-parallel (:mod:`mirec.train.distributed`)
    and process 0 writes the files."""
    record = None if warm is None or resume else warm.record(cfg.train.since)
    task = RetrievalTask(cfg, ds, log, warm=None if resume else warm, warm_record=record)
    r = fit(task, run_dir, cfg.train, resume, progress, log, stop_after_epoch, on_epoch)
    if not run_test:
        return TrainResult(Path(run_dir), task.model, task.split, r.best_epoch, r.best_valid, {},
                           np.zeros((0, 0), dtype=np.int64), r.history, r.warm_start)
    test = evaluate(task.scorer(), ds, task.split.test, cfg.split.max_len, cfg.eval)
    return TrainResult(Path(run_dir), task.model, task.split, r.best_epoch, r.best_valid,
                       test.metrics, test.topn, r.history, r.warm_start)
