"""What a training run is: its typed settings, how its model is built, and how a finished run
directory is loaded again.

A run directory holds ``metrics.jsonl`` (one row per epoch), ``last.pt`` (everything
``--resume`` needs), ``best.pt`` (the best validation epoch's weights with the run's config
and data set checksum) and ``results.json``; a multi-seed run holds one such directory per
seed (``seed-<s>/``) and the shared ``results.json``. :func:`load_run` is the one loader that
evaluation, export, serving and the pipeline use; training lives in :mod:`mirec.train`, and
nothing here imports it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from mirec.checkpoint import best_checkpoint, legacy_model_args, load_checkpoint
from mirec.config import MAX_BATCH, MAX_COUNT, check_fields, from_dict, setting, size
from mirec.data.ctr import CTRConfig, RankFeatures, RankSplitConfig
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.split import SplitConfig
from mirec.errors import MirecConfigError, MirecDataError
from mirec.eval.evaluate import EvalConfig
from mirec.models.registry import SPECS, spec


def check_device(train: Any) -> None:
    """``train.device`` and ``train.precision`` are well-formed (whether the GPU exists is checked
    when a run starts, so a run trained on a GPU still loads where there is none)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", train.device):
        raise MirecConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {train.device!r}")
    if train.precision not in ("auto", "fp32", "bf16"):
        raise MirecConfigError(f"train.precision: expected auto, fp32 or bf16, got {train.precision!r}")


def check_since(train: Any) -> None:
    """``train.since`` is "auto" or a timestamp >= 0."""
    if train.since != "auto" and train.since < 0:
        raise MirecConfigError(f"train.since: expected a Unix timestamp >= 0 or auto, got {train.since}")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every neural retrieval model."""

    epochs: int = setting(50, ge=1)
    batch_size: int = size(256, MAX_BATCH)
    # "auto" is the model's own default_lr: 3.75e-3 for ComiRec-SA (docs/benchmarks.md,
    # "Defaults against the tuned settings"), 1e-3 for the others.
    lr: float | Literal["auto"] = setting("auto", gt=0)
    weight_decay: float = setting(0.0, ge=0)
    temperature: float = setting(0.1, gt=0)
    cosine: bool = True  # score cos(v, e) / T instead of v . e / T
    loss: str = "auto"  # auto | full | sampled
    num_negatives: int = size(1000, MAX_BATCH)
    sampler: str = "log-uniform"  # uniform | log-uniform
    # auto: full softmax up to this many items. Above it the full softmax's (batch, items) logits
    # outweigh the encoder; on Amazon Beauty (12,101 items) the sampled one trained ~10x faster,
    # with test Recall@50 no lower (docs/models.md, "train.full_softmax_max_items is 10,000").
    full_softmax_max_items: int = setting(10_000, ge=0)
    # REMI (Xie et al., RecSys 2023): interest-aware hard negatives weight the sampled
    # negatives' terms by exp(beta s_j) / mean_k exp(beta s_k) (sampled softmax only; off), and
    # routing_reg times sum_k var_k^2 of each interest's attention over the history penalises an
    # interest that collapses onto one item (not the serving diversity lambda). routing_reg
    # "auto" is the model's own default_routing_reg: 10 for ComiRec-SA, chosen on the validation
    # users of four data sets (docs/benchmarks.md, "The routing regulariser"), 0 for the others.
    hard_negative_beta: float = setting(0.0, ge=0)
    routing_reg: float | Literal["auto"] = setting("auto", ge=0)
    # How a multi-interest model's loss scores the other items: readout (ComiRec's: by the one
    # interest the readout picks for the target) | max (each item by its best interest, the
    # score serving ranks by). max lifted accuracy on three logs, but by folding the interests
    # into one vector (docs/benchmarks.md, "Scoring the negatives by every interest"): ComiRec-SA
    # takes it under split.protocol=loo only.
    negative_score: str = "readout"
    # This times the mean squared cosine between two interests of a user (losses.interest_overlap):
    # with negative_score=max the interests otherwise drift into one vector. 0 = off.
    interest_overlap: float = setting(0.0, ge=0)
    # This times losses.view_contrast: a second pass over the batch's histories (other dropout
    # draws) whose interests must find the first pass's among the batch's (DuoRec's unsupervised
    # contrast, at train.temperature). 0 = off; on, a step runs the model twice.
    view_contrast: float = setting(0.0, ge=0)
    patience: int = setting(3, ge=1)
    # After an epoch that does not beat the best validation score, the learning rate is
    # multiplied by this (1 = constant): the steps after a plateau are smaller ones.
    plateau_decay: float = setting(1.0, gt=0, le=1)
    # Validate, keep (best.pt) and serve an exponential moving average of the weights, updated
    # after every step with this decay (torch.optim.swa_utils; 0 = off, the weights as trained).
    # Costs a pass over every parameter a step, the item table's included.
    weight_average: float = setting(0.0, ge=0, lt=1)
    # The validation metric that picks the best epoch and stops early: recall@N, ndcg@N or
    # hit_rate@N with N among eval.ns; auto = recall@50 when eval.ns has 50, else recall at its
    # first N. split.protocol=loo selects on ndcg@10, the tables' headline (docs/benchmarks.md).
    select: str = "auto"
    threads: int = size(1, MAX_COUNT)  # torch threads; 2 on a 2-core box stalls when anything else runs
    keep_freed_memory: bool = True  # see mirec.train.engine.keep_freed_memory: 20-40% faster steps
    # torch.compile the training loss (inductor fuses the element-wise work between the
    # matmuls) for full batches; an epoch's last, smaller batch runs uncompiled, so nothing
    # recompiles. Needs a C++ compiler; compiling takes ~20 s once per process. One thread,
    # MovieLens-100K (bench/train_speed.py --compile): ComiRec-SA ~1.3x, YouTube DNN ~1.1x,
    # MIND ~0.9x (its routing loop is unrolled).
    compile: bool = False
    # Where the model, batches and loss live (docs/gpu.md): auto = CUDA when torch finds a GPU.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # "bf16" runs the training loss under autocast: matmuls and the element-wise work on
    # their outputs in bfloat16, the cross-entropy, parameters and Adam in float32. On the CPU
    # faster only with native bf16 (AVX512-BF16 / AMX); elsewhere slower. "auto" is bf16 on a
    # CUDA GPU that supports it and fp32 on the CPU. Evaluation and serving stay float32.
    precision: str = "auto"  # auto | fp32 | bf16
    seed: int = setting(2020, ge=0)
    max_batches_per_epoch: int = setting(0, ge=0)  # 0 = all; for smoke tests and benchmarks
    # Step checkpoints (docs/models.md, "Long runs"): last.pt is also written mid-epoch every
    # checkpoint_minutes (0 = at epoch ends only) and every checkpoint_every_steps batches of an
    # epoch (0 = off; for tests and for runs that must lose at most N steps), so --resume after
    # a kill continues from that batch. Neither changes what the run computes.
    checkpoint_minutes: float = setting(10.0, ge=0)  # 0 = off
    checkpoint_every_steps: int = setting(0, ge=0)  # 0 = off
    # adam: dense Adam over every parameter; sparse: the item table's gradient holds the rows a
    # batch read and a row-wise Adam steps just those, catching up the steps each row skipped
    # (dense Adam for the rest), so a step costs the same at 12k or 1.7M items; auto: sparse
    # above optim.SPARSE_ABOVE items (50,000), where dense Adam's pass over the table starts to
    # dominate a step, adam below (as fast there, and the same quality). Sampled softmax only
    # (the full softmax reads every row: dense Adam there). mirec.train.optim;
    # docs/models.md#training-at-scale.
    optimizer: str = "auto"
    # Train only on the examples whose target happens after this Unix timestamp (in the data
    # set's ts unit); histories still reach back to everything before. "auto": with
    # --warm-start, the last timestamp of the parent run's data set (its new events only), else
    # 0 (everything). docs/production.md, "Keeping a model fresh".
    since: int | Literal["auto"] = "auto"
    # The Adam learning rate of a warm-started run (--warm-start; train.lr stays the from-scratch
    # run's, so a chain of warm starts keeps one rate). "auto" is WARM_LR_SCALE (0.1) times
    # train.lr: from a trained start the full rate overshoots. On the drift log validation chose
    # 3e-4 (0.08x ComiRec-SA's 3.75e-3) over 1e-3 and 3.75e-3 on each of three seeds
    # (docs/production.md, "Keeping a model fresh"; docs/benchmarks.md, "Freshness").
    warm_lr: float | Literal["auto"] = setting("auto", gt=0)

    def validate(self) -> None:
        check_fields(self, "train.")
        check_since(self)
        if self.loss not in ("auto", "full", "sampled"):
            raise MirecConfigError(f"train.loss: expected auto, full or sampled, got {self.loss!r}")
        check_device(self)
        if self.optimizer not in ("auto", "adam", "sparse"):
            raise MirecConfigError(f"train.optimizer: expected auto, adam or sparse, got {self.optimizer!r}")
        if self.negative_score not in ("readout", "max"):
            raise MirecConfigError(f"train.negative_score: expected readout or max, "
                                   f"got {self.negative_score!r}")
        if self.select != "auto" and not re.fullmatch(r"(recall|ndcg|hit_rate)@[1-9]\d*", self.select):
            raise MirecConfigError(f"train.select: expected auto or recall@N, ndcg@N or hit_rate@N, "
                                   f"got {self.select!r}")
        if self.sampler not in ("uniform", "log-uniform"):
            raise MirecConfigError(f"train.sampler: expected uniform or log-uniform, "
                                   f"got {self.sampler!r}")


@dataclass
class RunConfig:
    """Everything a retrieval run needs; saved into every checkpoint and results.json."""

    model: str = "comirec-sa"
    model_args: dict[str, Any] = field(default_factory=dict)  # the model's own config fields
    train: TrainConfig = field(default_factory=TrainConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        spec(self.model, "retrieval")
        model_config(self)  # model_args checked here, long before a model is built

    @staticmethod
    def defaults_for(given: dict[str, Any]) -> dict[str, Any]:
        """The defaults that follow from the settings a user ``given`` (a nested dict; what
        :func:`mirec.config.load` layers under them): under ``split.protocol=loo``, the
        published tables' cut-offs and ties and the model's own leave-one-out recipe."""
        split = given.get("split")
        if not isinstance(split, dict) or split.get("protocol") != "loo":
            return {}
        model = SPECS.get(str(given.get("model", RunConfig.model)))
        recipe = getattr(model.build, "loo_defaults", {}) if model is not None else {}
        out = copy.deepcopy(LOO_DEFAULTS)
        for section, values in recipe.items():  # the model's recipe over the protocol's, per key
            out.setdefault(section, {}).update(copy.deepcopy(values))
        return out


# What split.protocol=loo changes in the defaults besides each model's ``loo_defaults`` (its recipe,
# chosen on Amazon Beauty's validation users: docs/benchmarks.md): HR and NDCG at the papers'
# cut-offs, a tie counted against the target (docs/protocol.md#ties), the best epoch picked by
# validation NDCG@10, the tables' headline, and the learning rate cut to 0.3x after each epoch that
# does not improve it (ComiRec-SA's validation NDCG@10 +3.6% on Beauty).
LOO_DEFAULTS = {"eval": {"ns": [5, 10, 20], "ties": "pessimistic"},
                "train": {"select": "ndcg@10", "plateau_decay": 0.3}}


@dataclass
class RankTrainConfig:
    epochs: int = setting(20, ge=1)
    batch_size: int = size(256, MAX_BATCH)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    # DIN's mini-batch aware regularisation (Zhou et al., KDD 2018, section 4.3): each step adds
    # embedding_l2 * sum_j ||e_j||^2 / n_j over the distinct item-id and user-id embedding rows
    # the batch reads, n_j the id's count among the training examples (+1). Rare ids are held
    # nearer 0, and rows a batch does not read get no update from it. 0 = off. 0.1 had the best
    # validation GAUC on MovieLens-100K for Embedding + MLP, DIN and MIMN (DIEN: 0.03;
    # docs/benchmarks.md, Ranking, has the grid).
    embedding_l2: float = setting(0.1, ge=0)
    patience: int = setting(2, ge=1)
    plateau_decay: float = setting(1.0, gt=0, le=1)  # see TrainConfig.plateau_decay
    weight_average: float = setting(0.0, ge=0, lt=1)  # see TrainConfig.weight_average
    threads: int = size(1, MAX_COUNT)  # torch threads; see TrainConfig.threads
    keep_freed_memory: bool = True
    seed: int = setting(2020, ge=0)
    max_batches_per_epoch: int = setting(0, ge=0)  # 0 = all; for smoke tests and benchmarks
    eval_batch_size: int = size(2048, MAX_BATCH)
    # Rankers with a per-user state (MIMN) train and predict on whole user sequences:
    # each user's behaviours are read once for all of the user's examples.
    stream: bool = True
    users_per_batch: int = size(32, MAX_BATCH)
    # torch.compile the training loss (inductor fuses the elementwise work between the matmuls).
    # Needs a C++ compiler; compiling takes ~35 s once per process (less from the on-disk
    # cache). Pays off for DIN on one thread on long runs (1.2-1.4x measured; with two threads it
    # was slower, and Embedding + MLP gained ~3%); refused for DIEN and MIMN,
    # whose time is in Python-level recurrences (bench/ranking_quality.py --speed-only
    # --set train.compile=true).
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N; see TrainConfig.device
    # auto: bf16 autocast on a CUDA GPU that supports it, fp32 on the CPU (where bf16 measured
    # no faster for the rankers: docs/benchmarks.md, Ranking)
    precision: str = "auto"  # auto | fp32 | bf16
    checkpoint_minutes: float = setting(10.0, ge=0)  # see TrainConfig.checkpoint_minutes
    checkpoint_every_steps: int = setting(0, ge=0)

    since: int | Literal["auto"] = "auto"  # see TrainConfig.since: the examples' events' ts

    def validate(self) -> None:
        check_fields(self, "train.")
        check_since(self)
        check_device(self)


# the rankers whose heads read the candidate features (mirec.data.cand_features)
CANDIDATE_RANKERS = ("din", "dien", "mimn")


@dataclass
class CandConfig:
    """Training a ranker on a retrieval run's own candidates (``--candidates RUN``;
    docs/ranking.md, "Trained on the retriever's candidates")."""

    run: str = ""  # the retrieval run; "" = the plain CTR task
    # candidates per interest, as serving retrieves (serve.candidates_per_interest)
    m: int = size(200, MAX_BATCH)
    # negatives from the top `top` of their union by retrieval score (serving ranks the top
    # serve.rank_candidates = 200); 0 = the whole union, the default: on MovieLens-100K, 3 seeds,
    # top 200 gave pipeline NDCG@20 1.003x retrieval alone against the union's 1.112x
    top: int = setting(0, ge=0)
    # defaults: the best validation AUC on MovieLens-100K among a few tried (docs/benchmarks.md)
    negatives: int = size(16, MAX_BATCH)  # negatives per positive
    random_share: float = setting(0.1, ge=0, le=1)  # share of them drawn uniformly from the catalogue
    # the rest: sampled from the candidates with P ~ exp(f / temperature)
    temperature: float = setting(1.0, gt=0)
    examples_per_user: int = setting(0, ge=0)  # a user's last cut points used (0 = every one)
    # whose states the ranker learns from: the retriever's training users (whose next items it
    # was trained on, so their retrieval scores are optimistic), the validation users' history
    # parts (states the retriever never trained on, like the served ones), or both
    states: str = "valid"  # train | valid | both
    # positives per state: the next `horizon` items (1 = the next one); the protocol's Recall
    # counts every held-out item, not only the next
    horizon: int = size(1, MAX_BATCH)
    # all: every positive; candidates: only positives the retriever found (a served ranker only
    # ever orders candidates; where retrieval misses most next items, as on Amazon Beauty, the
    # others teach it what out-of-reach items look like), states without one dropped
    positives: str = "all"  # all | candidates

    def validate(self) -> None:
        check_fields(self, "cand.")
        if self.positives not in ("all", "candidates"):
            raise MirecConfigError(f"cand.positives: expected all or candidates, got {self.positives!r}")
        if self.states not in ("train", "valid", "both"):
            raise MirecConfigError(f"cand.states: expected train, valid or both, got {self.states!r}")


@dataclass
class RankRunConfig:
    """Everything a ranking run needs; saved into every checkpoint and results.json."""

    model: str = "din"
    model_args: dict[str, Any] = field(default_factory=dict)
    train: RankTrainConfig = field(default_factory=RankTrainConfig)
    ctr: CTRConfig = field(default_factory=CTRConfig)
    cand: CandConfig = field(default_factory=CandConfig)
    split: RankSplitConfig = field(default_factory=RankSplitConfig)  # per-user | time (data/ctr.py)

    def validate(self) -> None:
        spec(self.model, "ranking")
        self.cand.validate()
        self.split.validate()
        model_config(self)
        if self.cand.run and self.split.protocol != "per-user":
            raise MirecConfigError(f"split.protocol: --candidates follows the retrieval run's split; "
                                   f"drop split.protocol={self.split.protocol}")
        if self.cand.run and self.model not in CANDIDATE_RANKERS:
            raise MirecConfigError(f"--candidates: only {', '.join(CANDIDATE_RANKERS)} read the candidate "
                                   f"features, got --model {self.model}")


def model_config(cfg: RunConfig | RankRunConfig) -> Any:
    """The model's own config dataclass: its defaults with ``cfg.model_args`` over them; a
    retriever's ``max_len`` always follows the split's window."""
    task = "ranking" if isinstance(cfg, RankRunConfig) else "retrieval"
    cfg_cls = spec(cfg.model, task).config
    args = dict(cfg.model_args)
    if task == "retrieval" and "max_len" in {f.name for f in dataclasses.fields(cfg_cls)}:
        args["max_len"] = cfg.split.max_len
    return from_dict(cfg_cls, args, prefix="model_args.")


def build_model(cfg: RunConfig, num_items: int, training: bool = False,
                categories: tuple | None = None) -> torch.nn.Module:
    """The configured retriever over ``num_items`` item ids (0 = padding); ``categories``: the
    catalogue's item categories (``Dataset.category_index()``), which a model with
    ``model_args.item_features`` on needs. For ``training``, first refused with a clear message
    if its parameters, their gradients and Adam's moments would not fit in the memory available
    (a trained run's model is not checked again when it loads)."""
    args, spec_build = model_config(cfg), spec(cfg.model, "retrieval").build

    def build() -> torch.nn.Module:  # a model without item features keeps the (cfg, N) contract
        if getattr(args, "item_features", "off") == "off":
            return spec_build(args, num_items)
        return spec_build(args, num_items, categories)

    if training:
        check_memory(build, cfg.model, f"{num_items:,} items")
    return build()


def build_ranker(cfg: RankRunConfig, features: RankFeatures, training: bool = False) -> torch.nn.Module:
    """The configured ranker over ``features``; refused first as :func:`build_model` says."""
    args, build = model_config(cfg), spec(cfg.model, "ranking").build
    if training:
        check_memory(lambda: build(args, features), cfg.model,
                     f"{features.num_items:,} items and {features.num_users:,} users")
    return build(args, features)


# training holds each parameter 4 times: the weights, their gradient and Adam's two moments
TRAINING_COPIES = 4


def check_memory(build: Callable[[], torch.nn.Module], model: str, over: str) -> None:
    """Refuse to train a model whose parameters and buffers, x TRAINING_COPIES, exceed the memory
    available, before anything is allocated: ``build()`` runs on the meta device, which
    allocates nothing (and leaves the random generators as they were). Its first call imports
    the part of torch that initialises meta tensors, which training imports anyway."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        module = build()
    tensors = [*module.parameters(), *module.buffers()]
    need = sum(t.numel() * t.element_size() for t in tensors) * TRAINING_COPIES
    have = available_memory()
    if have is not None and need > have:
        raise MirecConfigError(f"model_args: {model} at these settings over {over} needs {_gb(need)} "
                               f"for its parameters, gradients and Adam's moments, more than the "
                               f"{_gb(have)} of memory available; lower model_args.dim (or the other sizes)")


def available_memory() -> int | None:
    """Bytes of memory this process may still take: Linux's MemAvailable, lowered to the room
    left under the cgroup's limit; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _gb(n: int) -> str:
    return f"{n / 1e12:,.1f} TB" if n >= 1e12 else f"{n / 1e9:,.1f} GB"


def features_to_dict(f: RankFeatures) -> dict[str, Any]:
    d = {"num_items": f.num_items, "num_users": f.num_users, "profile_sizes": list(f.profile_sizes),
         "item_categories": f.item_categories.clone()}
    if f.num_dense:  # a candidate-trained ranker
        window = {k: torch.from_numpy(v) if hasattr(v, "dtype") else v for k, v in f.window.items()}
        d.update(num_dense=f.num_dense, dense_mean=f.dense_mean, dense_std=f.dense_std, window=window)
    return d


def features_from_dict(d: dict[str, Any]) -> RankFeatures:
    window = d.get("window")
    if window is not None:
        window = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in window.items()}
    return RankFeatures(num_items=d["num_items"], num_users=d["num_users"],
                        profile_sizes=list(d["profile_sizes"]), item_categories=d["item_categories"],
                        num_dense=d.get("num_dense", 0), dense_mean=d.get("dense_mean"),
                        dense_std=d.get("dense_std"), window=window)


def seed_dirs(run_dir: str | Path) -> list[Path]:
    """The per-seed directories of a run: ``seed-*`` of a multi-seed run, else the run itself."""
    run_dir = Path(run_dir)
    return sorted(run_dir.glob("seed-*")) or [run_dir]


@dataclass
class LoadedRun:
    """A finished retrieval run's best checkpoint, rebuilt: the model is in eval mode."""

    checkpoint_path: Path
    checkpoint: dict[str, Any]
    config: RunConfig
    dataset: Dataset
    model: torch.nn.Module


def load_run(run_dir: str | Path, data: str | Path | Dataset | None = None) -> LoadedRun:
    """A finished retrieval run (``run_dir/best.pt``, or a seed directory's), with its data set
    (``data`` if it moved; the checksum is verified) and its model in eval mode."""
    path = best_checkpoint(run_dir)
    if path is None:
        raise MirecDataError(f"{run_dir}: no best.pt (is this a finished `mirec train` run?)")
    ck = load_checkpoint(path)
    if "features" in ck:
        raise MirecConfigError(f"{path}: a ranking run (--task ctr), not a retrieval run")
    cfg = from_dict(RunConfig, {**ck["config"], "model_args": legacy_model_args(ck["config"])})
    ds = data if isinstance(data, Dataset) else load_dataset(data or ck["data"])
    if ds.checksum != ck["dataset_checksum"]:
        raise MirecDataError(f"{ds.path}: not the data set {path} was trained on "
                             f"(checksum {ds.checksum[:12]} != {ck['dataset_checksum'][:12]})")
    model = build_model(cfg, ds.num_items, categories=ds.category_index())
    model.load_state_dict(ck["model"])
    model.eval()
    return LoadedRun(path, ck, cfg, ds, model)


def load_ranker(run_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The best checkpoint of a ranking run (its first seed when it has several), in eval mode,
    and the checkpoint dict (config, features, profile codes; ``parsed_config`` the
    :class:`RankRunConfig`)."""
    path = best_checkpoint(run_dir)
    if path is None:
        raise MirecConfigError(f"--ranker: {run_dir} has no best.pt (not a ranking run directory)")
    ck = load_checkpoint(path)
    if "features" not in ck:
        raise MirecConfigError(f"--ranker: {path} is not a ranking checkpoint (train one with --task ctr)")
    ck["parsed_config"] = cfg = ranker_config(ck)  # parsed once; the pipeline reads it too
    model = build_ranker(cfg, features_from_dict(ck["features"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def ranker_config(ck: dict[str, Any]) -> RankRunConfig:
    """A ranking checkpoint's config, parsed once (old runs' model settings filled in)."""
    return from_dict(RankRunConfig, {**ck["config"], "model_args": legacy_model_args(ck["config"])})
