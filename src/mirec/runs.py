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

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mirec.checkpoint import best_checkpoint, legacy_model_args, load_checkpoint
from mirec.config import from_dict
from mirec.data.ctr import CTRConfig, RankFeatures
from mirec.data.dataset import Dataset, load_dataset
from mirec.data.split import SplitConfig
from mirec.errors import MirecConfigError, MirecDataError
from mirec.eval.evaluate import EvalConfig
from mirec.models.registry import spec


def check_device(train: Any) -> None:
    """``train.device`` and ``train.precision`` are well-formed (whether the GPU exists is checked
    when a run starts, so a run trained on a GPU still loads where there is none)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", train.device):
        raise MirecConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {train.device!r}")
    if train.precision not in ("auto", "fp32", "bf16"):
        raise MirecConfigError(f"train.precision: expected auto, fp32 or bf16, got {train.precision!r}")


def check_checkpoints(train: Any) -> None:
    """``train.checkpoint_minutes`` and ``train.checkpoint_every_steps`` are >= 0."""
    for name in ("checkpoint_minutes", "checkpoint_every_steps"):
        if getattr(train, name) < 0:
            raise MirecConfigError(f"train.{name}: must be >= 0 (0 = off), got {getattr(train, name)}")


def check_since(train: Any) -> None:
    """``train.since`` is "auto" or a timestamp >= 0."""
    if train.since != "auto" and train.since < 0:
        raise MirecConfigError(f"train.since: expected a Unix timestamp >= 0 or auto, got {train.since}")


def _positive(section: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise MirecConfigError(f"{section}.{name}: must be >= 1, got {getattr(obj, name)}")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every neural retrieval model."""

    epochs: int = 50
    batch_size: int = 256
    # "auto" is the model's own default_lr: 3.75e-3 for ComiRec-SA (docs/benchmarks.md,
    # "Defaults against the tuned settings"), 1e-3 for the others.
    lr: float | Literal["auto"] = "auto"
    weight_decay: float = 0.0
    temperature: float = 0.1
    cosine: bool = True  # score cos(v, e) / T instead of v . e / T
    loss: str = "auto"  # auto | full | sampled
    num_negatives: int = 1000
    sampler: str = "log-uniform"  # uniform | log-uniform
    # auto: full softmax up to this many items. Above it the full softmax's (batch, items) logits
    # outweigh the encoder; on Amazon Beauty (12,101 items) the sampled one trained ~10x faster,
    # with test Recall@50 no lower (docs/models.md, "train.full_softmax_max_items is 10,000").
    full_softmax_max_items: int = 10_000
    # REMI (Xie et al., RecSys 2023): interest-aware hard negatives weight the sampled
    # negatives' terms by exp(beta s_j) / mean_k exp(beta s_k) (sampled softmax only; off), and
    # routing_reg times sum_k var_k^2 of each interest's attention over the history penalises an
    # interest that collapses onto one item (not the serving diversity lambda). routing_reg
    # "auto" is the model's own default_routing_reg: 10 for ComiRec-SA, chosen on the validation
    # users of four data sets (docs/benchmarks.md, "The routing regulariser"), 0 for the others.
    hard_negative_beta: float = 0.0
    routing_reg: float | Literal["auto"] = "auto"
    patience: int = 3
    threads: int = 1  # torch threads; 2 on a 2-core box stalls when anything else runs
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
    seed: int = 2020
    max_batches_per_epoch: int = 0  # 0 = all; for smoke tests and benchmarks
    # Step checkpoints (docs/models.md, "Long runs"): last.pt is also written mid-epoch every
    # checkpoint_minutes (0 = at epoch ends only) and every checkpoint_every_steps batches of an
    # epoch (0 = off; for tests and for runs that must lose at most N steps), so --resume after
    # a kill continues from that batch. Neither changes what the run computes.
    checkpoint_minutes: float = 10.0
    checkpoint_every_steps: int = 0
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

    def validate(self) -> None:
        check_since(self)
        if self.loss not in ("auto", "full", "sampled"):
            raise MirecConfigError(f"train.loss: expected auto, full or sampled, got {self.loss!r}")
        check_device(self)
        if self.optimizer not in ("auto", "adam", "sparse"):
            raise MirecConfigError(f"train.optimizer: expected auto, adam or sparse, got {self.optimizer!r}")
        if self.sampler not in ("uniform", "log-uniform"):
            raise MirecConfigError(f"train.sampler: expected uniform or log-uniform, "
                                   f"got {self.sampler!r}")
        _positive("train", self, ("epochs", "batch_size", "num_negatives", "threads", "patience"))
        if self.temperature <= 0:
            raise MirecConfigError(f"train.temperature: must be > 0, got {self.temperature}")
        if self.lr != "auto" and self.lr <= 0:
            raise MirecConfigError(f"train.lr: must be > 0, got {self.lr}")
        for name in ("hard_negative_beta", "routing_reg"):
            value = getattr(self, name)
            if value != "auto" and value < 0:
                raise MirecConfigError(f"train.{name}: must be >= 0, got {value}")
        check_checkpoints(self)


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
    # validation GAUC on MovieLens-100K for Embedding + MLP, DIN and MIMN (DIEN: 0.03;
    # docs/benchmarks.md, Ranking, has the grid).
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
    device: str = "auto"  # auto | cpu | cuda | cuda:N; see TrainConfig.device
    # auto: bf16 autocast on a CUDA GPU that supports it, fp32 on the CPU (where bf16 measured
    # no faster for the rankers: docs/benchmarks.md, Ranking)
    precision: str = "auto"  # auto | fp32 | bf16
    checkpoint_minutes: float = 10.0  # see TrainConfig.checkpoint_minutes
    checkpoint_every_steps: int = 0
    since: int | Literal["auto"] = "auto"  # see TrainConfig.since: the examples' events' ts

    def validate(self) -> None:
        check_since(self)
        check_device(self)
        _positive("train", self, ("epochs", "batch_size", "patience", "threads", "eval_batch_size",
                                  "users_per_batch"))
        if self.lr <= 0:
            raise MirecConfigError(f"train.lr: must be > 0, got {self.lr}")
        if self.embedding_l2 < 0:
            raise MirecConfigError(f"train.embedding_l2: must be >= 0, got {self.embedding_l2}")
        check_checkpoints(self)


# the rankers whose heads read the candidate features (mirec.data.cand_features)
CANDIDATE_RANKERS = ("din", "dien", "mimn")


@dataclass
class CandConfig:
    """Training a ranker on a retrieval run's own candidates (``--candidates RUN``;
    docs/ranking.md, "Trained on the retriever's candidates")."""

    run: str = ""  # the retrieval run; "" = the plain CTR task
    m: int = 200  # candidates per interest, as serving retrieves (serve.candidates_per_interest)
    # negatives from the top `top` of their union by retrieval score (serving ranks the top
    # serve.rank_candidates = 200); 0 = the whole union, the default: on MovieLens-100K, 3 seeds,
    # top 200 gave pipeline NDCG@20 1.003x retrieval alone against the union's 1.112x
    top: int = 0
    # defaults: the best validation AUC on MovieLens-100K among a few tried (docs/benchmarks.md)
    negatives: int = 16  # negatives per positive
    random_share: float = 0.1  # share of them drawn uniformly from the catalogue
    temperature: float = 1.0  # the rest: sampled from the candidates with P ~ exp(f / temperature)
    examples_per_user: int = 0  # a user's last cut points used (0 = every one)
    # whose states the ranker learns from: the retriever's training users (whose next items it
    # was trained on, so their retrieval scores are optimistic), the validation users' history
    # parts (states the retriever never trained on, like the served ones), or both
    states: str = "valid"  # train | valid | both
    # positives per state: the next `horizon` items (1 = the next one); the protocol's Recall
    # counts every held-out item, not only the next
    horizon: int = 1
    # all: every positive; candidates: only positives the retriever found (a served ranker only
    # ever orders candidates; where retrieval misses most next items, as on Amazon Beauty, the
    # others teach it what out-of-reach items look like), states without one dropped
    positives: str = "all"  # all | candidates

    def validate(self) -> None:
        _positive("cand", self, ("m", "negatives", "horizon"))
        if not 0 <= self.random_share <= 1:
            raise MirecConfigError(f"cand.random_share: must be in [0, 1], got {self.random_share}")
        if self.temperature <= 0:
            raise MirecConfigError(f"cand.temperature: must be > 0, got {self.temperature}")
        if self.positives not in ("all", "candidates"):
            raise MirecConfigError(f"cand.positives: expected all or candidates, got {self.positives!r}")
        if self.states not in ("train", "valid", "both"):
            raise MirecConfigError(f"cand.states: expected train, valid or both, got {self.states!r}")
        if self.examples_per_user < 0:
            raise MirecConfigError(f"cand.examples_per_user: must be >= 0, got {self.examples_per_user}")
        if self.top < 0:
            raise MirecConfigError(f"cand.top: must be >= 0 (0 = every candidate), got {self.top}")


@dataclass
class RankRunConfig:
    """Everything a ranking run needs; saved into every checkpoint and results.json."""

    model: str = "din"
    model_args: dict[str, Any] = field(default_factory=dict)
    train: RankTrainConfig = field(default_factory=RankTrainConfig)
    ctr: CTRConfig = field(default_factory=CTRConfig)
    cand: CandConfig = field(default_factory=CandConfig)

    def validate(self) -> None:
        spec(self.model, "ranking")
        self.cand.validate()
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


def build_model(cfg: RunConfig, num_items: int) -> torch.nn.Module:
    """The configured retriever over ``num_items`` item ids (0 = padding)."""
    return spec(cfg.model, "retrieval").build(model_config(cfg), num_items)


def build_ranker(cfg: RankRunConfig, features: RankFeatures) -> torch.nn.Module:
    return spec(cfg.model, "ranking").build(model_config(cfg), features)


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
    model = build_model(cfg, ds.num_items)
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
