"""Benchmark: training speed of the peer library torch-rechub 0.9.0 on this machine (examples/s).

The issues quote the peer's speeds measured on another machine; this script times the peer's own
model classes here, with the same torch as mirec, so that bench/train_speed.py and
bench/ranking_quality.py (--speed-only) can be compared like for like. Prints figures only.

Models and settings (the issues' protocol; one torch thread by default):

* retrieval, d = 64, K = 4 interests, history of 20 items (full windows, no padding), batch 256,
  10 uniform random negatives per example, list-wise loss (cross-entropy against column 0 of the
  (B, 1 + 10) scores, as MatchTrainer(mode=2) computes it):
  ``youtube-dnn`` (YoutubeDNN, user tower MLP dims [256, 64] over the profile + the mean-pooled
  history), ``mind`` (MIND), ``comirec-sa`` (ComirecSA), ``comirec-dr`` (ComirecDR);
* ranking on MovieLens-100K-shaped data, d = 32, user profile + target item + 50 earlier positive
  items (about 40% padding, right-padded as torch-rechub's generate_seq_feature and DIEN's packing
  expect), MLP 200-80, BCE loss: ``din`` (DIN, attention MLP [36]), ``dien`` (DIEN with its
  auxiliary loss, alpha 0.2, on one random negative item per real history position).

User profile: user id (943 users), age bucket, gender, occupation (21 values each); 1,682 items.
Id 0 is padding, so every vocabulary is one larger. Adam, lr 1e-3 (no weight decay), in both modes.

Two modes, each in a fresh child process per model (so that models do not disturb each other):

* ``step``: the peer's forward + loss + backward + Adam step on batches prepared in advance as
  tensors; ``--warmup`` untimed then ``--batches`` timed batches (``--dr-batches`` for ComiRec-DR,
  which is very slow).
* ``trainer``: the peer's own trainer (MatchTrainer mode=2 / CTRTrainer) ``fit`` for one epoch, no
  validation, over an in-memory data set of ``--examples`` examples (``--dr-examples`` for
  ComiRec-DR) fed through torch-rechub's MatchDataGenerator / DataGenerator (TorchDataset +
  DataLoader, batch 256, shuffled, ``--num-workers`` loader processes). The whole ``fit`` call is
  timed: data loading, the trainer's (zero) regularisation term, tqdm, and the final
  ``torch.save`` of the weights into a temporary directory (small); examples/s = examples / seconds.

Install the peer beside mirec's venv, without touching its packages (pandas is needed at import):

    .venv/bin/pip install --no-deps --target /tmp/rechub-0.9.0 torch-rechub==0.9.0 pandas

(or the downloaded wheel instead of ``torch-rechub==0.9.0``), then run with it on PYTHONPATH::

    PYTHONPATH=/tmp/rechub-0.9.0 .venv/bin/python bench/peer_speed.py
    PYTHONPATH=/tmp/rechub-0.9.0 .venv/bin/python bench/peer_speed.py --models din,dien --modes step
    PYTHONPATH=/tmp/rechub-0.9.0 .venv/bin/python bench/peer_speed.py --batches 3 --warmup 1 \\
        --dr-batches 1 --examples 1024 --dr-examples 256          # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np

RETRIEVAL = ("youtube-dnn", "mind", "comirec-sa", "comirec-dr")
RANKING = ("din", "dien")
MODELS = RETRIEVAL + RANKING
MODES = ("step", "trainer")
# Quoted in the issues: torch-rechub 0.9.0 at one thread on ANOTHER machine (not comparable here).
ISSUE = {"youtube-dnn": 46_000, "mind": 16_000, "comirec-sa": 9_000, "comirec-dr": 300,
         "din": 10_800, "dien": 2_400}

NUM_USERS, NUM_ITEMS, NUM_PROFILE_VALUES = 943, 1_682, 21  # MovieLens-100K; ids from 1, 0 = padding
PROFILE = ("user_id", "age", "gender", "occupation")
BATCH, LR = 256, 1e-3
RET_DIM, K, RET_LEN, NEG = 64, 4, 20, 10  # retrieval
RANK_DIM, RANK_LEN, MLP_DIMS, ATT_DIMS = 32, 50, [200, 80], [36]  # ranking
YOUTUBE_DIMS = [256, 64]  # user tower: (4 profile + 1 pooled history) * 64 = 320 -> 256 -> 64
FULL_SHARE = 0.2  # ranking histories: 20% full, else uniform 1..50 long -> ~40% padding

INSTALL = ("torch-rechub is not importable. Install it beside the venv without touching its packages:\n"
           "  .venv/bin/pip install --no-deps --target /tmp/rechub-0.9.0 torch-rechub==0.9.0 pandas\n"
           "and run with it on the path:\n"
           "  PYTHONPATH=/tmp/rechub-0.9.0 .venv/bin/python bench/peer_speed.py (or peer_quality.py)")


# ---------------------------------------------------------------- synthetic MovieLens-shaped data

def item_ids(rng: np.random.Generator, size: Any) -> np.ndarray:
    """Item ids 1..NUM_ITEMS with a MovieLens-like popularity skew (p ~ 1 / (rank + 10))."""
    p = 1.0 / (np.arange(NUM_ITEMS) + 10.0)
    return rng.choice(NUM_ITEMS, size=size, p=p / p.sum()) + 1


def profile(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """User id, age bucket, gender, occupation: int64 arrays of shape (n,)."""
    x = {"user_id": rng.integers(1, NUM_USERS + 1, n)}
    for name in PROFILE[1:]:
        x[name] = rng.integers(1, NUM_PROFILE_VALUES + 1, n)
    return x


def retrieval_arrays(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """n list-wise examples: profile, positive ``movie_id`` (n,), ``hist_movie_id`` (n, 20) full
    windows, ``neg_items`` (n, 10) uniform; label 0 (= the positive is column 0 of the scores)."""
    rng = np.random.default_rng(seed)
    x = profile(rng, n)
    x["movie_id"] = item_ids(rng, n)
    x["hist_movie_id"] = item_ids(rng, (n, RET_LEN))
    x["neg_items"] = rng.integers(1, NUM_ITEMS + 1, (n, NEG))
    return x, np.zeros(n, dtype=np.int64)


def ranking_arrays(n: int, seed: int, neg_history: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """n CTR examples: profile, ``target_item_id`` (n,), ``hist_item_id`` (n, 50) right-padded with
    0 (~40% padding); for DIEN also ``neg_hist_item_id`` (n, 50): a random item at every real
    position, 0 at padding. Labels: half clicks, as float32 0/1."""
    rng = np.random.default_rng(seed)
    x = profile(rng, n)
    x["target_item_id"] = item_ids(rng, n)
    lengths = np.where(rng.random(n) < FULL_SHARE, RANK_LEN, rng.integers(1, RANK_LEN + 1, n))
    real = np.arange(RANK_LEN)[None, :] < lengths[:, None]  # (n, 50): True on real items
    x["hist_item_id"] = np.where(real, item_ids(rng, (n, RANK_LEN)), 0)
    if neg_history:
        x["neg_hist_item_id"] = np.where(real, rng.integers(1, NUM_ITEMS + 1, (n, RANK_LEN)), 0)
    return x, (rng.random(n) < 0.5).astype(np.float32)


def make_arrays(name: str, n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if name in RETRIEVAL:
        return retrieval_arrays(n, seed)
    return ranking_arrays(n, seed, neg_history=name == "dien")


# ---------------------------------------------------------------- the peer's models

def retrieval_model(name: str) -> Any:
    """A torch-rechub matching model built as its MovieLens examples build them, at d = 64."""
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.matching import MIND, ComirecDR, ComirecSA, YoutubeDNN

    vocab = {"user_id": NUM_USERS + 1, **{p: NUM_PROFILE_VALUES + 1 for p in PROFILE[1:]}}
    user = [SparseFeature(p, vocab_size=vocab[p], embed_dim=RET_DIM) for p in PROFILE]
    item = [SparseFeature("movie_id", vocab_size=NUM_ITEMS + 1, embed_dim=RET_DIM)]
    neg = [SequenceFeature("neg_items", vocab_size=NUM_ITEMS + 1, embed_dim=RET_DIM,
                           pooling="concat", shared_with="movie_id")]

    def history(pooling: str) -> list:  # the history shares the item table, as in the examples
        return [SequenceFeature("hist_movie_id", vocab_size=NUM_ITEMS + 1, embed_dim=RET_DIM,
                                pooling=pooling, shared_with="movie_id")]

    if name == "youtube-dnn":  # temperature 0.02 as its example (MIND / ComiRec have none in effect)
        return YoutubeDNN(user + history("mean"), item, neg, user_params={"dims": YOUTUBE_DIMS},
                          temperature=0.02)
    if name == "mind":
        return MIND(user, history("concat"), item, neg, max_length=RET_LEN, interest_num=K)
    if name == "comirec-sa":
        return ComirecSA(user, history("concat"), item, neg, interest_num=K)
    return ComirecDR(user, history("concat"), item, neg, max_length=RET_LEN, interest_num=K)


def ranking_model(name: str) -> Any:
    """DIN or DIEN at d = 32: profile -> top MLP, history attends to the target (shared table)."""
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.ranking import DIEN, DIN

    vocab = {"user_id": NUM_USERS + 1, **{p: NUM_PROFILE_VALUES + 1 for p in PROFILE[1:]}}
    features = [SparseFeature(p, vocab_size=vocab[p], embed_dim=RANK_DIM) for p in PROFILE]
    target = [SparseFeature("target_item_id", vocab_size=NUM_ITEMS + 1, embed_dim=RANK_DIM,
                            padding_idx=0)]

    def seq(feature: str) -> list:
        return [SequenceFeature(feature, vocab_size=NUM_ITEMS + 1, embed_dim=RANK_DIM,
                                pooling="concat", shared_with="target_item_id", padding_idx=0)]

    if name == "din":  # DIN's top MLP activation is fixed to Dice (mlp_params may not set it)
        return DIN(features, seq("hist_item_id"), target, mlp_params={"dims": MLP_DIMS},
                   attention_mlp_params={"dims": ATT_DIMS})
    return DIEN(features, seq("hist_item_id"), seq("neg_hist_item_id"), target,
                mlp_params={"dims": MLP_DIMS})


def build_model(name: str) -> Any:
    return retrieval_model(name) if name in RETRIEVAL else ranking_model(name)


def batch_loss(name: str, model: Any, x: dict, y: Any) -> Any:
    """The loss the peer's trainer computes for one batch (without its zero regularisation)."""
    import torch.nn.functional as F

    if name in RETRIEVAL:  # scores (B, 1 + NEG); the positive is column 0 (y == 0)
        return F.cross_entropy(model(x), y)
    if name == "dien":  # (prediction (B,), alpha * auxiliary loss)
        pred, aux = model(x)
        return F.binary_cross_entropy(pred, y) + aux
    return F.binary_cross_entropy(model(x), y)  # DIN: sigmoid probabilities (B,)


def sanity_notes(name: str, model: Any) -> list[str]:
    """Facts worth printing about the freshly built peer model."""
    if name != "comirec-dr":
        return []
    w = model.capsule.w  # allocated with torch.Tensor(...), never initialised
    return [f"capsule W uninitialised at build: {int((~w.isfinite()).sum())} non-finite, "
            f"{int((w == 0).sum())}/{w.numel()} zero"]


# ---------------------------------------------------------------- the two timed modes

def time_steps(name: str, a: argparse.Namespace) -> dict:
    """Forward + loss + backward + Adam on batches prepared in advance as tensors."""
    import torch

    timed = a.dr_batches if name == "comirec-dr" else a.batches
    distinct = min(a.warmup + timed, 64)  # cycled when more batches are asked for
    x, y = make_arrays(name, distinct * BATCH, seed=1)
    batches = [({k: torch.from_numpy(v[i * BATCH:(i + 1) * BATCH].copy()) for k, v in x.items()},
                torch.from_numpy(y[i * BATCH:(i + 1) * BATCH].copy())) for i in range(distinct)]
    model = build_model(name)
    notes = sanity_notes(name, model)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()

    def step(b: int) -> float:
        xb, yb = batches[b % distinct]
        loss = batch_loss(name, model, xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for b in range(a.warmup):
        step(b)
    t0 = time.perf_counter()
    for b in range(a.warmup, a.warmup + timed):
        last = step(b)
    dt = time.perf_counter() - t0
    if not math.isfinite(last):
        notes.append(f"last loss {last}")
    return {"examples": timed * BATCH, "batches": timed, "seconds": dt, "notes": notes}


def trainer_loader(name: str, n: int, num_workers: int) -> Any:
    """torch-rechub's own data path: numpy dict -> (Match)DataGenerator -> shuffled DataLoader."""
    from torch_rechub.utils.data import DataGenerator, MatchDataGenerator

    x, y = make_arrays(name, n, seed=2)
    small = {k: v[:BATCH] for k, v in x.items()}  # its API wants val/test sets; never iterated
    if name in RETRIEVAL:
        users = {k: v for k, v in small.items() if k in PROFILE or k == "hist_movie_id"}
        items = {"movie_id": np.arange(1, NUM_ITEMS + 1)}
        loader, _, _ = MatchDataGenerator(x=x, y=y).generate_dataloader(
            users, items, batch_size=BATCH, num_workers=num_workers)
        return loader
    loader, _, _ = DataGenerator(x, y).generate_dataloader(
        x_val=small, y_val=y[:BATCH], x_test=small, y_test=y[:BATCH], batch_size=BATCH,
        num_workers=num_workers)
    return loader


def time_trainer(name: str, a: argparse.Namespace) -> dict:
    """One epoch of the peer's own trainer ``fit`` (no validation), timed wall-clock."""
    from torch_rechub.trainers import CTRTrainer, MatchTrainer

    n = a.dr_examples if name == "comirec-dr" else a.examples
    loader = trainer_loader(name, n, a.num_workers)
    model = build_model(name)
    notes = sanity_notes(name, model)
    with tempfile.TemporaryDirectory(prefix="peer_speed_") as tmp:
        common = {"optimizer_params": {"lr": LR}, "n_epoch": 1, "device": "cpu", "model_path": tmp}
        if name in RETRIEVAL:  # mode 2: list-wise, CrossEntropyLoss on (B, 1 + NEG) scores
            trainer = MatchTrainer(model, mode=2, **common)
        else:  # DIEN returns (prediction, auxiliary loss): loss_mode=False adds the second
            trainer = CTRTrainer(model, loss_mode=name != "dien", **common)
        t0 = time.perf_counter()
        trainer.fit(loader)  # prints "epoch: 0"; tqdm goes to stderr
        dt = time.perf_counter() - t0
    return {"examples": n, "batches": math.ceil(n / BATCH), "seconds": dt, "notes": notes}


def child(a: argparse.Namespace) -> None:
    """Time one (model, mode) in this process; print one JSON line (with "error" on failure)."""
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    try:
        r = (time_steps if a.modes == "step" else time_trainer)(a.models, a)
    except Exception as e:  # reported in the table instead of crashing the whole run
        traceback.print_exc()
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        raise SystemExit(1) from e
    r.update(ex_s=r["examples"] / r["seconds"], ms_batch=1000 * r["seconds"] / r["batches"],
             torch_threads=torch.get_num_threads())
    print(json.dumps(r))


# ---------------------------------------------------------------- parent: one child per row

def peer_version() -> str:
    """torch-rechub's version, or exit non-zero with how to install it."""
    try:
        import torch_rechub
    except ImportError as e:
        print(f"{INSTALL}\n(import error: {e})", file=sys.stderr)
        raise SystemExit(2) from e
    return torch_rechub.__version__


def run_child(a: argparse.Namespace, model: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--models", model, "--modes", mode,
           "--threads", str(a.threads), "--batches", str(a.batches), "--warmup", str(a.warmup),
           "--dr-batches", str(a.dr_batches), "--examples", str(a.examples),
           "--dr-examples", str(a.dr_examples), "--num-workers", str(a.num_workers)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = p.stdout.strip().splitlines()
    try:
        r = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        r = {"error": f"exit {p.returncode}: {tail}"}
    if "error" in r and p.stderr:
        print(f"--- {model} {mode} failed; stderr tail:\n{p.stderr[-1500:]}")
    return r


def settings(model: str) -> str:
    if model in RETRIEVAL:
        extra = f", MLP {'-'.join(map(str, YOUTUBE_DIMS))}" if model == "youtube-dnn" else f", K={K}"
        return f"d={RET_DIM}, L={RET_LEN}, {NEG} neg{extra}"
    extra = f", att {ATT_DIMS[0]}" if model == "din" else ", aux loss"
    return f"d={RANK_DIM}, L={RANK_LEN}, MLP {'-'.join(map(str, MLP_DIMS))}{extra}"


def table(results: dict[tuple[str, str], dict], models: list[str], a: argparse.Namespace) -> Any:
    """One row per model: both modes' examples/s side by side; failures named in the cell."""
    from rich.table import Table

    t = Table(title=f"torch-rechub training speed, {a.threads} thread{'s' * (a.threads > 1)}, "
                    f"batch {BATCH}")
    for h in ("model", "step ex/s", "ms/batch", "trainer ex/s", "epoch s (examples)", "issue ex/s*"):
        t.add_column(h, justify="left" if h == "model" else "right")
    for m in models:
        cells = []
        for mode in MODES:
            r = results.get((m, mode))
            if r is None:
                cells += ["-", "-"]
            elif "error" in r:
                cells += ["FAILED", "see below"]
            elif mode == "step":
                cells += [f"{r['ex_s']:,.0f}", f"{r['ms_batch']:.1f}"]
            else:
                cells += [f"{r['ex_s']:,.0f}", f"{r['seconds']:.1f} ({r['examples']:,})"]
        t.add_row(m, *cells, f"{ISSUE[m]:,}")
    return t


def footnotes(results: dict[tuple[str, str], dict], models: list[str]) -> list[str]:
    """Each model's settings, then any failure or note of its runs."""
    lines = [f"{m}: {settings(m)}" for m in models]
    for (m, mode), r in results.items():
        for note in ([r["error"]] if "error" in r else r["notes"]):
            lines.append(f"{m} {mode}: {note}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated; default all")
    ap.add_argument("--modes", default=",".join(MODES), help="step and/or trainer (default both)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and OMP/MKL threads)")
    ap.add_argument("--batches", type=int, default=100, help="step mode: timed batches")
    ap.add_argument("--warmup", type=int, default=10, help="step mode: untimed batches first")
    ap.add_argument("--dr-batches", type=int, default=20, help="step mode: timed batches for comirec-dr")
    ap.add_argument("--examples", type=int, default=20_000, help="trainer mode: examples in the epoch")
    ap.add_argument("--dr-examples", type=int, default=1_000, help="trainer mode: examples for comirec-dr")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="trainer mode: DataLoader worker processes (0 = load in the training process; "
                         "MatchDataGenerator's own default is 8)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:  # --models and --modes hold one value each here
        return child(a)
    models, modes = a.models.split(","), a.modes.split(",")
    bad = [m for m in models if m not in MODELS] + [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown model or mode: {', '.join(bad)}")
    if min(a.threads, a.batches, a.dr_batches, a.examples, a.dr_examples) < 1 or a.warmup < 0:
        raise SystemExit("--threads, --batches, --dr-batches, --examples, --dr-examples must be >= 1")
    version = peer_version()

    import torch
    from machine import machine_line  # bench/machine.py, beside this script
    from rich.console import Console

    console = Console()
    console.print(machine_line())
    console.print(f"torch {torch.__version__}, torch-rechub {version}; step: {a.warmup} warm-up + "
                  f"{a.batches} timed batches ({a.dr_batches} for comirec-dr); trainer: one epoch of "
                  f"{a.examples:,} examples ({a.dr_examples:,} for comirec-dr), "
                  f"{a.num_workers} loader workers")
    if version != "0.9.0":
        console.print(f"[yellow]warning: torch-rechub {version}, the issues' figures are 0.9.0[/]")
    results: dict[tuple[str, str], dict] = {}
    for m in models:
        for mode in modes:
            r = results[(m, mode)] = run_child(a, m, mode)
            msg = r["error"] if "error" in r else f"{r['ex_s']:,.0f} ex/s ({r['seconds']:.1f} s)"
            console.print(f"  {m:11} {mode:7}: {msg}")
    console.print(table(results, models, a))
    for line in footnotes(results, models):
        console.print(f"  {line}", highlight=False)
    console.print("step: forward + loss + backward + Adam on prepared tensors. trainer: the peer's "
                  "fit for one epoch, data loading included. *issue ex/s: quoted in the issues, "
                  "measured on ANOTHER machine; compare only figures taken on the same machine.")
    if any("error" in r for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
