"""The training loop for rankers (click-through prediction): Adam on the model's loss, early
stopping on validation AUC, the same run directory as retrieval.

A run directory holds ``metrics.jsonl`` (one line per epoch), ``last.pt`` (everything needed to
``--resume``), ``best.pt`` (the best validation AUC: weights, config, the feature space and the
users' profile codes, so that a pipeline can rank with it without the data set) and, from
:func:`train_ctr_seeds`, ``results.json``.

Each seed sets the initialisation, the batch order and (for logs without ratings) the sampled
negatives; the time split itself does not depend on it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mirec import __version__
from mirec.config import from_dict, to_dict
from mirec.data.ctr import TEST, TRAIN, VALID, CTRConfig, CTRData, build_ctr
from mirec.data.dataset import Dataset, load_dataset
from mirec.errors import MirecConfigError
from mirec.eval.ctr_metrics import ctr_metrics
from mirec.io import atomic_write_json
from mirec.models.base import RankFeatures
from mirec.train.checkpoint import (
    best_checkpoint,
    check_resume,
    check_resume_model_args,
    load_checkpoint,
    save_checkpoint,
    saved_config,
)
from mirec.train.loop import compiled, keep_freed_memory


@dataclass
class RankTrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    # DIN's mini-batch aware regularisation (Zhou et al., KDD 2018, section 4.3): each step adds
    # embedding_l2 * sum_j ||e_j||^2 / n_j over the distinct item-id and user-id embedding rows
    # the batch reads, n_j the id's count among the training examples (+1). Rare ids are held
    # nearer 0, and rows a batch does not read get no update from it. 0 = off. 0.1 had the best
    # validation GAUC on MovieLens-100K for Embedding + MLP, DIN and MIMN (DIEN: 0.03; README,
    # Ranking, has the grid).
    embedding_l2: float = 0.1
    patience: int = 2
    threads: int = 1  # torch threads; see TrainConfig.threads
    keep_freed_memory: bool = True
    seed: int = 2020
    max_batches_per_epoch: int = 0  # 0 = all; for smoke tests and benchmarks
    eval_batch_size: int = 2048
    # Rankers with a per-user state (MIMN) train and predict on whole user sequences:
    # each user's behaviours are read once for all of the user's examples.
    stream: bool = True
    users_per_batch: int = 32
    # torch.compile the training loss (inductor fuses the elementwise work between the matmuls).
    # Needs a C++ compiler; compiling takes ~35 s once per process (less from the on-disk
    # cache). Pays off for DIN on one thread on long runs (1.2-1.4x measured; with two threads it
    # was slower, and Embedding + MLP gained ~3%); refused for DIEN and MIMN,
    # whose time is in Python-level recurrences (bench/ranking_quality.py --speed-only
    # --set train.compile=true).
    compile: bool = False

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "patience", "threads", "eval_batch_size", "users_per_batch"):
            if getattr(self, name) < 1:
                raise MirecConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise MirecConfigError(f"train.lr: must be > 0, got {self.lr}")
        if self.embedding_l2 < 0:
            raise MirecConfigError(f"train.embedding_l2: must be >= 0, got {self.embedding_l2}")


@dataclass
class RankRunConfig:
    """Everything a ranking run needs; saved into every checkpoint and results.json."""

    model: str = "din"
    model_args: dict[str, Any] = field(default_factory=dict)
    train: RankTrainConfig = field(default_factory=RankTrainConfig)
    ctr: CTRConfig = field(default_factory=CTRConfig)

    def validate(self) -> None:
        from mirec.models.registry import RANKERS

        if self.model not in RANKERS:
            raise MirecConfigError(f"model: unknown ranker {self.model!r} "
                                   f"(known: {', '.join(sorted(RANKERS))})")


def model_config(cfg: RankRunConfig) -> Any:
    """The ranker's own config dataclass: its defaults with ``cfg.model_args`` over them."""
    from mirec.models.registry import RANKERS

    return from_dict(RANKERS[cfg.model][0], dict(cfg.model_args), prefix="model_args.")


def build_ranker(cfg: RankRunConfig, features: RankFeatures) -> torch.nn.Module:
    from mirec.models.registry import RANKERS

    return RANKERS[cfg.model][1](model_config(cfg), features)


def features_to_dict(f: RankFeatures) -> dict[str, Any]:
    return {"num_items": f.num_items, "num_users": f.num_users, "profile_sizes": list(f.profile_sizes),
            "item_categories": f.item_categories.clone()}


def features_from_dict(d: dict[str, Any]) -> RankFeatures:
    return RankFeatures(num_items=d["num_items"], num_users=d["num_users"],
                        profile_sizes=list(d["profile_sizes"]), item_categories=d["item_categories"])


def streams(model: torch.nn.Module, cfg: RankTrainConfig) -> bool:
    return cfg.stream and hasattr(model, "stream_logits")


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
    return {"seq": torch.from_numpy(seq.astype(np.int64)), "seq_mask": torch.from_numpy(mask),
            "user": torch.from_numpy(users.astype(np.int64)),
            "profile": torch.from_numpy(data.profile[users]), "ex_row": torch.from_numpy(row),
            "ex_stop": torch.from_numpy(stop.astype(np.int64)), "ex_item": torch.from_numpy(data.item[ex])}


@torch.no_grad()
def predict(model: torch.nn.Module, data: CTRData, idx: np.ndarray, batch_size: int = 2048,
            cfg: RankTrainConfig | None = None) -> np.ndarray:
    """Logits of the examples ``idx`` (eval mode), in the order of ``idx``."""
    model.eval()
    cfg = cfg or RankTrainConfig()
    if streams(model, cfg):
        out = np.zeros(len(idx), dtype=np.float32)
        where = {int(e): j for j, e in enumerate(idx)}
        for ex in user_groups(data, idx, cfg.users_per_batch):
            logits, _ = model.stream_logits(**stream_inputs(data, ex))
            out[[where[int(e)] for e in ex]] = logits.numpy()
        return out
    out = [model(data.batch(idx[i:i + batch_size])).numpy() for i in range(0, len(idx), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate_ctr(model: torch.nn.Module, data: CTRData, part: int,
                 cfg: RankTrainConfig | None = None) -> dict[str, float]:
    """AUC, GAUC and log-loss of one part (TRAIN, VALID or TEST)."""
    cfg = cfg or RankTrainConfig()
    idx = data.indices(part)
    logit = predict(model, data, idx, cfg.eval_batch_size, cfg)
    return {**ctr_metrics(data.user[idx], data.label[idx], logit), "examples": int(len(idx))}


@dataclass
class RankTrainResult:
    run_dir: Path
    model: torch.nn.Module
    best_epoch: int
    best_valid: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    data: CTRData


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


def embedding_penalty(model: torch.nn.Module, items: torch.Tensor, users: torch.Tensor,
                      counts: IdCounts) -> torch.Tensor:
    """``sum_j ||e_j||^2 / n_j`` over the distinct ``items`` and ``users`` (any shape) of the
    model's item-id and user-id embeddings (the user part only when the model has one).

    Computed over the whole table with weight 0 on the rows not read: a pass over (N, D), as
    Adam's step takes anyway, instead of sorting the batch's ids to find the distinct ones."""
    def part(table: torch.Tensor, ids: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        read = torch.zeros_like(n).index_fill_(0, ids.reshape(-1), 1.0)  # (N,) 1 on rows read
        return table.square().sum(1) @ (read / n)

    total = part(model.items.item.weight, items, counts.item)
    if model.profile.user is not None:
        total = total + part(model.profile.user.weight, users, counts.user)
    return total


def make_loss(model: torch.nn.Module, tc: RankTrainConfig,
              train_data: CTRData | None = None) -> Callable[[CTRData, np.ndarray], torch.Tensor]:
    """``loss(data, idx)``: the training loss of the examples ``idx`` (one of
    :func:`epoch_batches`), plus ``tc.embedding_l2`` times :func:`embedding_penalty` of the
    ids they read when that is on (its counts from ``train_data``, which it then needs). With
    ``tc.compile`` the model's loss goes through ``torch.compile``
    with dynamic shapes, so batches of any size and history length reuse the compiled code
    instead of recompiling; it computes the same loss and gradients as the plain model."""
    stream = streams(model, tc)
    fn = model.stream_loss if stream else model.loss
    if tc.compile:
        if not getattr(model, "compilable", True):
            raise MirecConfigError(f"train.compile: not supported for {type(model).__name__}, whose time "
                                   "is spent in Python-level recurrences that torch.compile would unroll; "
                                   "set train.compile=false")
        fn = compiled(fn, dynamic=True)
    lam = tc.embedding_l2
    if lam and train_data is None:
        raise ValueError("make_loss: train.embedding_l2 > 0 needs the training data for its id counts")
    counts = IdCounts.of(train_data) if lam else None

    def loss(data: CTRData, idx: np.ndarray) -> torch.Tensor:
        label = torch.from_numpy(data.label[idx])
        if stream:
            x = stream_inputs(data, idx)
            out = fn(**x, label=label)
            read = (x["seq"], x["seq_mask"], x["ex_item"], x["user"])
        else:
            batch = data.batch(idx)
            out = fn(batch, label)
            read = (batch.hist, batch.mask, batch.item, batch.user)
        if lam:  # the live history items, the candidates and the users the batch reads
            hist, mask, item, user = read
            out = out + lam * embedding_penalty(model, torch.cat([hist[mask], item]), user, counts)
        return out

    return loss


def make_optimizer(model: torch.nn.Module, tc: RankTrainConfig) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over each parameter, ~3x faster than the per-op
    form on CPU for these small models)."""
    return torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)


def train_ctr(cfg: RankRunConfig, ds: Dataset | CTRData, run_dir: str | Path, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] = lambda s: None,
              stop_after_epoch: int | None = None, data_path: str = "",
              data_checksum: str = "") -> RankTrainResult:
    """Train ranker ``cfg.model`` into ``run_dir``; ``resume`` continues from ``last.pt``.

    ``ds`` is a prepared data set (its CTR examples are built with ``cfg.ctr``) or ready
    :class:`CTRData` (e.g. built with some events held out).
    """
    cfg.validate()
    tc = cfg.train
    tc.validate()
    torch.set_num_threads(tc.threads)
    if tc.keep_freed_memory:
        keep_freed_memory()
    if isinstance(ds, Dataset):
        data_path, data_checksum = str(ds.path), ds.checksum
        data = build_ctr(ds, cfg.ctr)
    else:
        data = ds
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    model = build_ranker(cfg, data.features)
    opt = make_optimizer(model, tc)
    batch_loss = make_loss(model, tc, data)
    if tc.compile:
        log("train.compile: the first batches compile the loss (~35 s, less from the on-disk cache)")
    train_idx = data.indices(TRAIN)
    if len(train_idx) == 0 or len(data.indices(VALID)) == 0:
        raise MirecConfigError(f"{data_path or 'data'}: no training or validation examples "
                               f"(users need at least 3 events)")
    start_epoch, best, best_epoch, bad, history = 0, -1.0, -1, 0, []
    last = run_dir / "last.pt"
    if resume:
        if not last.exists():
            raise MirecConfigError(f"--resume: {last} does not exist")
        st = load_checkpoint(last)
        check_resume(last, st, {"config": saved_config(cfg, model_config(cfg)),
                                "dataset_checksum": data_checksum})
        check_resume_model_args(last, saved_model_args(st["config"]), model_config(cfg))
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start_epoch, best, best_epoch, bad = st["epoch"] + 1, st["best"], st["best_epoch"], st["bad"]
        history = st["history"]
        log(f"resumed from {last} after epoch {st['epoch']}")
    elif (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    saved = {"config": saved_config(cfg, model_config(cfg)),
             "features": features_to_dict(data.features),
             "profile": torch.from_numpy(data.profile), "profile_names": data.profile_names,
             "user_raw_ids": data.user_raw_ids,
             "data": data_path, "dataset_checksum": data_checksum, "mirec_version": __version__}
    for epoch in range(start_epoch, tc.epochs):
        if bad >= tc.patience:
            break
        torch.manual_seed(tc.seed * 100_003 + epoch)
        batches = epoch_batches(model, data, train_idx, tc, np.random.default_rng([tc.seed, epoch]))
        n_batches = len(batches)
        if tc.max_batches_per_epoch:
            n_batches = min(n_batches, tc.max_batches_per_epoch)
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch",
                   disable=None if progress else True, leave=False)
        for b in bar:
            idx = batches[b]
            loss = batch_loss(data, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if b % 20 == 0:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{total / seen:.4f}", ex_s=f"{rate:,.0f}")
        train_s = time.perf_counter() - t0
        valid = evaluate_ctr(model, data, VALID, tc)
        row = {"epoch": epoch, "loss": total / max(seen, 1), "examples": seen,
               "train_seconds": round(train_s, 3), "examples_per_s": round(seen / train_s, 1),
               "valid": valid}
        history.append(row)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if valid["auc"] > best:
            best, best_epoch, bad = valid["auc"], epoch, 0
            save_checkpoint(run_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch, **saved})
        else:
            bad += 1
        log(f"epoch {epoch}: loss {row['loss']:.4f}, {row['examples_per_s']:,.0f} ex/s, "
            f"valid AUC {valid['auc']:.4f} (best {best:.4f} @ {best_epoch})")
        save_checkpoint(last, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "epoch": epoch, "best": best, "best_epoch": best_epoch, "bad": bad,
                               "history": history, "torch_rng": torch.get_rng_state(), **saved})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    test = evaluate_ctr(model, data, TEST, tc)
    return RankTrainResult(run_dir, model, best_epoch, history[best_epoch]["valid"], test, history, data)


def train_ctr_seeds(cfg: RankRunConfig, data: str | Path | Dataset, seeds: list[int], out: str | Path,
                    resume: bool = False, progress: bool = True,
                    log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Train once per seed (``out`` itself for one seed, ``out/seed-<s>`` for several) and write
    ``out/results.json``: test AUC/GAUC/log-loss mean and std over seeds, speed, config."""
    if not seeds:
        raise MirecConfigError("--seeds: need at least one seed")
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    out = Path(out)
    t0 = time.perf_counter()
    per_seed = []
    for seed in seeds:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                ctr=dataclasses.replace(cfg.ctr, seed=seed))
        run_dir = out if len(seeds) == 1 else out / f"seed-{seed}"
        log(f"training {cfg.model} seed {seed} -> {run_dir}")
        r = train_ctr(c, ds, run_dir, resume=resume, progress=progress, log=log)
        epochs = r.history[: r.best_epoch + 1]
        per_seed.append({"seed": seed, "test": r.test, "valid": r.best_valid, "best_epoch": r.best_epoch,
                         "examples_per_s": float(np.median([h["examples_per_s"] for h in r.history])),
                         "seconds_per_epoch": float(np.median([h["train_seconds"] for h in epochs]))})
    keys = ("auc", "gauc", "logloss", "examples_per_s", "seconds_per_epoch")

    def col(k: str) -> list[float]:
        return [s["test"][k] if k in s["test"] else s[k] for s in per_seed]

    doc = {
        "task": "ctr", "model": cfg.model, "data": str(ds.path), "dataset_checksum": ds.checksum,
        "mirec_version": __version__,
        "protocol": {"labels": f"rating >= {cfg.ctr.positive_rating}" if ds.rating is not None
                     else f"{cfg.ctr.negatives} uniform negative(s) per positive",
                     "split": f"per user by time: last {cfg.ctr.test_fraction:.0%} test, "
                              f"{cfg.ctr.valid_fraction:.0%} before it validation"},
        "seeds": list(seeds),
        "metrics": {k: float(np.mean(col(k))) for k in keys},
        "std": {k: float(np.std(col(k))) for k in keys},
        "test_examples": per_seed[0]["test"]["examples"],
        "per_seed": per_seed, "config": to_dict(cfg),
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(out / "results.json", doc)
    return doc


def saved_model_args(conf: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``model_args`` as the run was trained. Checkpoints saved before they kept
    every model field hold only the fields a user set; of those, DIEN's lack ``activation``
    while its head defaulted to PReLU (now Dice), so that is filled in."""
    args = dict(conf.get("model_args", {}))
    if conf.get("model") == "dien" and "activation" not in args:
        args["activation"] = "prelu"
    return args


def load_ranker(run_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The best checkpoint of a ranking run (its first seed when it has several), in eval mode,
    and the checkpoint dict (config, features, profile codes)."""
    path = best_checkpoint(run_dir)
    if path is None:
        raise MirecConfigError(f"--ranker: {run_dir} has no best.pt (not a ranking run directory)")
    ck = load_checkpoint(path)
    if "features" not in ck:
        raise MirecConfigError(f"--ranker: {path} is not a ranking checkpoint (train one with --task ctr)")
    cfg = from_dict(RankRunConfig, {**ck["config"], "model_args": saved_model_args(ck["config"])})
    model = build_ranker(cfg, features_from_dict(ck["features"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck
