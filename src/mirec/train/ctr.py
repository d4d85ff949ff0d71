"""Ranking (click-through prediction) as a task of the engine (:mod:`mirec.train.engine`): Adam
on the model's loss, early stopping on validation AUC, the same run directory as retrieval.

A run directory holds ``metrics.jsonl`` (one line per epoch), ``last.pt`` (everything needed to
``--resume``), ``best.pt`` (the best validation AUC: weights, config, the feature space and the
users' profile codes, so that a pipeline can rank with it without the data set) and, from
:func:`mirec.experiment.train_ctr_seeds`, ``results.json``.

Each seed sets the initialisation, the batch order and (for logs without ratings) the sampled
negatives; the time split itself does not depend on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mirec import __version__
from mirec.checkpoint import check_resume as check_resume_settings
from mirec.checkpoint import check_resume_model_args, legacy_model_args, saved_config
from mirec.data.ctr import TEST, TRAIN, VALID, CTRBatch, CTRData, build_ctr
from mirec.data.dataset import Dataset
from mirec.errors import MirecConfigError
from mirec.eval.ctr_metrics import ctr_metrics
from mirec.models.base import model_device
from mirec.models.base import streams as _streams
from mirec.runs import (  # noqa: F401 (re-exported: the ranking run's settings)
    RankRunConfig,
    RankTrainConfig,
    build_ranker,
    features_to_dict,
    load_ranker,
    model_config,
)
from mirec.train.distributed import World, any_process, data_parallel, my_part, world
from mirec.train.engine import Placement, compiled, fit, placement, setup_threads
from mirec.train.warm import Parent, warm_ranker


def streams(model: torch.nn.Module, cfg: RankTrainConfig) -> bool:
    return _streams(model, cfg.stream)


def user_groups(data: CTRData, idx: np.ndarray, users_per_batch: int,
                rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """The examples ``idx`` grouped by user, ``users_per_batch`` users a group (users in
    ``rng``'s random order, else by sequence length so that a group's rows are alike)."""
    idx = idx[np.argsort(data.user[idx], kind="stable")]
    users, starts = np.unique(data.user[idx], return_index=True)
    ends = np.r_[starts[1:], len(idx)].astype(np.int64)
    if rng is not None:
        order = rng.permutation(len(users))
    else:
        order = np.argsort(data.pos_offsets[users + 1] - data.pos_offsets[users], kind="stable")
    return [np.concatenate([idx[starts[j]:ends[j]] for j in order[i:i + users_per_batch]])
            for i in range(0, len(order), users_per_batch)]


def stream_inputs(data: CTRData, ex: np.ndarray) -> dict[str, torch.Tensor]:
    """Tensors for ``model.stream_logits``: the users of examples ``ex`` with their behaviours
    (right-padded, each user's cut after the last one its examples need) and each example's row
    and stop."""
    users = np.unique(data.user[ex])
    starts = data.pos_offsets[users]
    row = np.searchsorted(users, data.user[ex])  # (X,)
    stop = data.hist_stop[ex] - data.hist_start[ex]  # (X,) behaviours before the example
    lens = np.zeros(len(users), dtype=np.int64)
    np.maximum.at(lens, row, stop)  # (B,) behaviours the user's examples need
    T = int(lens.max(initial=0))
    cols = np.arange(T)
    mask = cols[None, :] < lens[:, None]  # (B, T)
    seq = np.where(mask, data.pos_item[np.minimum(starts[:, None] + cols, max(len(data.pos_item) - 1, 0))], 0)
    out = {"seq": torch.from_numpy(seq.astype(np.int64)), "seq_mask": torch.from_numpy(mask),
           "user": torch.from_numpy(users.astype(np.int64)),
           "profile": torch.from_numpy(data.profile[users]), "ex_row": torch.from_numpy(row),
           "ex_stop": torch.from_numpy(stop.astype(np.int64)), "ex_item": torch.from_numpy(data.item[ex])}
    if data.dense is not None:  # candidate features (mirec.train.candidates)
        out["ex_dense"] = torch.from_numpy(data.dense[ex])
    return out


def to_device(x: CTRBatch | dict[str, torch.Tensor], place: Placement) -> Any:
    """A batch (or :func:`stream_inputs`) made on the host, on ``place``'s device."""
    if isinstance(x, dict):
        return {k: place.batch(v) for k, v in x.items()}
    return CTRBatch(**{f.name: None if getattr(x, f.name) is None else place.batch(getattr(x, f.name))
                       for f in dataclasses.fields(x)})


@torch.no_grad()
def predict(model: torch.nn.Module, data: CTRData, idx: np.ndarray, batch_size: int = 2048,
            cfg: RankTrainConfig | None = None) -> np.ndarray:
    """Logits of the examples ``idx`` (eval mode), in the order of ``idx``."""
    model.eval()
    cfg = cfg or RankTrainConfig()
    place = placement(model_device(model), "fp32")  # on the model's device, in float32
    if streams(model, cfg):
        out = np.zeros(len(idx), dtype=np.float32)
        where = {int(e): j for j, e in enumerate(idx)}
        for ex in user_groups(data, idx, cfg.users_per_batch):
            logits, _ = model.stream_logits(**to_device(stream_inputs(data, ex), place))
            out[[where[int(e)] for e in ex]] = logits.cpu().numpy()
        return out
    out = [model(to_device(data.batch(idx[i:i + batch_size]), place)).cpu().numpy()
           for i in range(0, len(idx), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate_ctr(model: torch.nn.Module, data: CTRData, part: int,
                 cfg: RankTrainConfig | None = None) -> dict[str, float]:
    """AUC, GAUC and log-loss of one part (TRAIN, VALID or TEST); under split.protocol=time
    also ``new_item_share``, the share of the window's events left out as new items."""
    cfg = cfg or RankTrainConfig()
    idx = data.indices(part)
    logit = predict(model, data, idx, cfg.eval_batch_size, cfg)
    out = {**ctr_metrics(data.user[idx], data.label[idx], logit), "examples": int(len(idx))}
    if data.new_item_share is not None and part in data.new_item_share:
        out["new_item_share"] = data.new_item_share[part]
    return out


@dataclass
class RankTrainResult:
    run_dir: Path
    model: torch.nn.Module
    best_epoch: int
    best_valid: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    data: CTRData
    warm_start: dict[str, Any] | None = None  # the parent run (mirec.train.warm)


def epoch_batches(model: torch.nn.Module, data: CTRData, idx: np.ndarray, tc: RankTrainConfig,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of the examples ``idx`` in ``rng``'s order: ``batch_size`` examples
    each, or, for a streaming ranker, ``users_per_batch`` users' whole sequences."""
    if streams(model, tc):
        return user_groups(data, idx, tc.users_per_batch, rng)
    perm = idx[rng.permutation(len(idx))]
    return [perm[i:i + tc.batch_size] for i in range(0, len(perm), tc.batch_size)]


@dataclass
class IdCounts:
    """How often each item and each user is the subject of a training example (+1), the
    ``n_j`` of :func:`embedding_penalty`."""

    item: torch.Tensor  # (N,) float
    user: torch.Tensor  # (U + 1,) float, the last row the unknown user

    @classmethod
    def of(cls, data: CTRData) -> IdCounts:
        idx = data.indices(TRAIN)
        f = data.features
        item = np.bincount(data.item[idx], minlength=f.num_items) + 1.0
        user = np.bincount(data.user[idx], minlength=f.num_users + 1) + 1.0
        return cls(torch.from_numpy(item).float(), torch.from_numpy(user).float())

    def to(self, device: torch.device) -> IdCounts:
        return IdCounts(self.item.to(device), self.user.to(device))


def embedding_penalty(model: torch.nn.Module, items: torch.Tensor, users: torch.Tensor,
                      counts: IdCounts, w: World = World()) -> torch.Tensor:
    """``sum_j ||e_j||^2 / n_j`` over the distinct ``items`` and ``users`` (any shape) of the
    model's item-id and user-id embeddings (the user part only when the model has one). Under
    ``torchrun`` the ids are those every process's slice of the batch reads (the whole batch's).

    Computed over the whole table with weight 0 on the rows not read: a pass over (N, D), as
    Adam's step takes anyway, instead of sorting the batch's ids to find the distinct ones."""
    def part(table: torch.Tensor, ids: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        read = any_process(torch.zeros_like(n).index_fill_(0, ids.reshape(-1), 1.0), w)  # (N,) 1 on rows read
        return table.square().sum(1) @ (read / n)

    total = part(model.items.item.weight, items, counts.item)
    if model.profile.user is not None:
        total = total + part(model.profile.user.weight, users, counts.user)
    return total


class RankLoss(torch.nn.Module):
    """The training loss of the examples ``idx`` (one of :func:`epoch_batches`) as a module's
    ``forward`` (what ``DistributedDataParallel`` wraps): the model's mean loss and
    ``tc.embedding_l2`` times :func:`embedding_penalty` of the ids they read (0 when that is
    off; its counts come from ``train_data``, which it then needs).

    With ``tc.compile`` the model's loss goes through ``torch.compile`` with dynamic shapes, so
    batches of any size and history length reuse the compiled code instead of recompiling; it
    computes the same loss and gradients as the plain model. Batches go to the model's device;
    ``tc.precision`` may run the model's loss under bf16 autocast."""

    def __init__(self, model: torch.nn.Module, tc: RankTrainConfig, train_data: CTRData | None = None,
                 w: World = World()) -> None:
        super().__init__()
        self.model, self.w, self.stream = model, w, streams(model, tc)
        self.place = placement(model_device(model), tc.precision)
        self.fn = model.stream_loss if self.stream else model.loss
        if tc.compile:
            if not getattr(model, "compilable", True):
                raise MirecConfigError(f"train.compile: not supported for {type(model).__name__}, whose "
                                       "time is spent in Python-level recurrences that torch.compile "
                                       "would unroll; set train.compile=false")
            self.fn = compiled(self.fn, dynamic=True)
        self.lam = tc.embedding_l2
        if self.lam and train_data is None:
            raise ValueError("make_loss: train.embedding_l2 > 0 needs the training data for its id counts")
        self.counts = IdCounts.of(train_data).to(self.place.device) if self.lam else None

    def forward(self, data: CTRData, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        place = self.place
        label = place.batch(torch.from_numpy(data.label[idx]))
        if self.stream:
            x = to_device(stream_inputs(data, idx), place)
            with place.autocast():
                out = self.fn(**x, label=label).float()  # a no-op in fp32
            read = (x["seq"], x["seq_mask"], x["ex_item"], x["user"])
        else:
            batch = to_device(data.batch(idx), place)
            with place.autocast():
                out = self.fn(batch, label).float()
            read = (batch.hist, batch.mask, batch.item, batch.user)
        if not self.lam:
            return out, out.new_zeros(())
        hist, mask, item, user = read  # the live history items, the candidates and the users read
        return out, self.lam * embedding_penalty(self.model, torch.cat([hist[mask], item]), user,
                                                 self.counts, self.w)


def make_loss(model: torch.nn.Module, tc: RankTrainConfig,
              train_data: CTRData | None = None) -> Callable[[CTRData, np.ndarray], torch.Tensor]:
    """``loss(data, idx)``: :class:`RankLoss`'s two parts summed, in one process."""
    parts = RankLoss(model, tc, train_data)
    return lambda data, idx: torch.add(*parts(data, idx))


def make_optimizer(model: torch.nn.Module, tc: RankTrainConfig) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over each parameter, ~3x faster than the per-op
    form on CPU for these small models)."""
    return torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)


class RankingTask:
    """Click-through ranking for the engine: batches of examples (or of whole user sequences for
    a streaming ranker), validation AUC."""

    score_name = "auc"

    def __init__(self, cfg: RankRunConfig, data: CTRData, data_path: str = "", data_checksum: str = "",
                 log: Callable[[str], None] = lambda s: None, warm: tuple[Parent, Dataset] | None = None,
                 warm_record: dict[str, Any] | None = None) -> None:
        """``warm``: the parent run every parameter starts from and the data set ``data`` was built
        from (:mod:`mirec.train.warm`); ``warm_record``: what the checkpoints say of it."""
        cfg.validate()
        tc = cfg.train
        tc.validate()
        setup_threads(tc.threads, tc.keep_freed_memory)
        self.w = world()
        device = placement(tc.device, tc.precision, self.w.size > 1).device
        self.cfg, self.data = cfg, data
        torch.manual_seed(tc.seed)
        self.model = build_ranker(cfg, data.features, training=True).to(device)  # initialised on the CPU
        if warm is not None:  # every process maps the same checkpoint the same way
            warm_ranker(self.model, cfg, warm[0], data, warm[1], log)
        if device.type != "cpu":
            log(f"training on {device}")
        self.optimizer = make_optimizer(self.model, tc)
        self.loss = data_parallel(RankLoss(self.model, tc, data, self.w), self.w, log)
        if tc.compile:
            log("train.compile: the first batches compile the loss (~35 s, less from the on-disk cache)")
        self.train_idx = data.indices(TRAIN)
        if len(self.train_idx) == 0 or len(data.indices(VALID)) == 0:
            raise MirecConfigError(f"{data_path or 'data'}: no training or validation examples "
                                   f"(users need at least 3 events)")
        self.train_idx = since(self.train_idx, data, tc.since)
        self._saved = {"config": saved_config(cfg, model_config(cfg)),
                       "features": features_to_dict(data.features),
                       "profile": torch.from_numpy(data.profile), "profile_names": data.profile_names,
                       "user_raw_ids": data.user_raw_ids,
                       "data": data_path, "dataset_checksum": data_checksum, "mirec_version": __version__}
        if warm_record is not None:
            self._saved["warm_start"] = warm_record

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return epoch_batches(self.model, self.data, self.train_idx, self.cfg.train, rng)

    def step(self, idx: np.ndarray) -> tuple[float, int]:
        idx, weight, n = my_part(idx, self.w)  # this process's slice (one process: the batch)
        loss, penalty = self.loss(self.data, idx)
        self.optimizer.zero_grad(set_to_none=True)
        # averaged over the processes, the weighted slice losses give the batch's gradient; the
        # penalty is of the ids the whole batch reads, the same in every process
        (loss * weight + penalty).backward()
        self.optimizer.step()
        return (loss + penalty).item(), n

    def validate(self) -> dict[str, float]:
        return evaluate_ctr(self.model, self.data, VALID, self.cfg.train)

    def saved(self) -> dict[str, Any]:
        return self._saved

    def check_resume(self, path: Path, st: dict[str, Any]) -> None:
        check_resume_settings(path, st, {"config": self._saved["config"],
                                "dataset_checksum": self._saved["dataset_checksum"]})
        check_resume_model_args(path, legacy_model_args(st["config"]), model_config(self.cfg))


def train_ctr(cfg: RankRunConfig, ds: Dataset | CTRData, run_dir: str | Path, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] = lambda s: None,
              stop_after_epoch: int | None = None, data_path: str = "",
              data_checksum: str = "", warm: Parent | None = None) -> RankTrainResult:
    """Train ranker ``cfg.model`` into ``run_dir`` and test the best epoch; ``resume``
    continues from ``last.pt``.

    ``ds`` is a prepared data set (its CTR examples are built with ``cfg.ctr`` and ``cfg.split``)
    or ready :class:`CTRData` (e.g. built with some events held out). ``warm``: start every parameter
    from that ranking run (:mod:`mirec.train.warm`; ``ds`` must be a data set).
    """
    if isinstance(ds, Dataset):
        data_path, data_checksum = str(ds.path), ds.checksum
        data = build_ctr(ds, cfg.ctr, split=cfg.split)
    elif warm is not None:
        raise MirecConfigError("--warm-start: a ranker warm-starts on a prepared data set "
                               "(not with --candidates)")
    else:
        data = ds
    record = None if warm is None or resume else warm.record(cfg.train.since)
    task = RankingTask(cfg, data, data_path, data_checksum, log,
                       warm=None if warm is None or resume else (warm, ds), warm_record=record)
    r = fit(task, run_dir, cfg.train, resume, progress, log, stop_after_epoch)
    # a candidate-trained ranker has no test examples: its test is the pipeline's
    # (`mirec evaluate --run RETRIEVAL --ranker RUN`)
    test = evaluate_ctr(task.model, data, TEST, cfg.train) if len(data.indices(TEST)) else {"examples": 0}
    return RankTrainResult(Path(run_dir), task.model, r.best_epoch, r.best_valid, test, r.history, data,
                           r.warm_start)


def since(idx: np.ndarray, data: CTRData, ts: int | str) -> np.ndarray:
    """The training examples ``idx`` whose event happens after ``train.since`` ``ts`` ("auto" and 0:
    all of them)."""
    if ts == "auto" or ts <= 0:
        return idx
    if data.ts is None:
        raise MirecConfigError("train.since: these ranker examples (--candidates) carry no times")
    kept = idx[data.ts[idx] > ts]
    if not len(kept):
        raise MirecConfigError(f"train.since: no training example happens after ts {ts}: nothing new to "
                               f"train on")
    return kept
