"""Benchmark: the peer library torch-rechub 0.9.0's retrieval quality under mirec's protocol.

The peer's own model classes (their forward code untouched) are trained on exactly the examples
mirec trains on and measured by mirec's evaluator, so their figures sit beside mirec's:

* split: :func:`mirec.data.split.split_users` with mirec's split config for the seed
  (``SplitConfig(seed=seed)``: 80/10/10 users, evaluation users' first 80% as history), as
  ``mirec train --seeds`` sets it; training examples are every training user's cut points, each
  the left-padded window of the last 20 items before the target (:func:`windows`);
* the peer's model: d = 64, K = 4 interests, one constant user feature (held-out users are unknown
  to training, so there is no user id to look up; the peer's towers need at least one user
  feature), the history sharing the item table (``padding_idx=0`` marks padding for YouTube DNN's
  mean pooling), YouTube DNN's user MLP [256, 64];
* loss: list-wise cross-entropy on the (B, 1 + S) scores with the positive in column 0, as the
  peer's MatchTrainer(mode=2) computes it; S = ``--negatives`` uniform random items drawn afresh
  for every example (the peer's ``negative_sample`` method 0, there drawn once before training);
  scores divided by ``--temperature`` (YouTube DNN divides inside its forward; ComiRec and MIND
  keep a ``temperature`` attribute their forward never reads, so it is applied to their output);
* Adam (lr ``--lr``), batch 256, one torch thread; after each epoch mirec's evaluator computes
  validation Recall@50 (exact top-N over the catalogue, history excluded, a user's score for an
  item the max over its interests of the peer's unit interest vector . unit item vector); early
  stopping with patience 3; the best epoch's weights are evaluated on the test users.

ComiRec-DR's capsule bilinear weight is allocated but never initialised by the peer
(``torch.Tensor(...)``); it is filled with N(0, 1) here, as the ComiRec paper's code does.
The peer's MIND starts its routing logits from ``torch.randn`` at every forward, at inference
too (the adapter's scores of a training pair match the peer's training scores for ComiRec-SA and
YouTube DNN to 1e-7, not for MIND); the runs are seeded, so they repeat.

One JSON line per finished (data, model, seed, settings) is appended to
``--out/results.jsonl`` (test and validation metrics, best epoch, training examples/s, wall time);
a combination already recorded is skipped, so an interrupted run, started again, continues.
Run one at a time: two at once distort each other's examples/s.

Install the peer beside mirec's venv, without touching its packages (pandas is needed at import):

    .venv/bin/pip install --no-deps --target /tmp/rechub-0.9.0 torch-rechub==0.9.0 pandas

then run with it on the path::

    export PYTHONPATH=/tmp/rechub-0.9.0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    .venv/bin/python bench/peer_quality.py --data data/ml-100k --epochs 1   # smoke run
    nice -n 19 .venv/bin/python bench/peer_quality.py --data /tmp/beauty --seeds 1,2,3 \\
        --models comirec-sa,youtube-dnn >> runs/peer_quality/beauty.log 2>&1
    .venv/bin/python bench/peer_quality.py --markdown          # the table of what is recorded
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from peer_speed import peer_version  # bench/ is on sys.path when a bench script runs

MODELS = ("comirec-sa", "youtube-dnn", "mind", "comirec-dr")
DIM, K, MAX_LEN, YOUTUBE_DIMS = 64, 4, 20, [256, 64]
METRICS = ("recall@20", "recall@50", "ndcg@50", "hit_rate@50")


@dataclass(frozen=True)
class Settings:
    """What a recorded run depends on besides (data, model, seed)."""

    negatives: int = 50
    temperature: float = 0.2
    lr: float = 1e-3
    batch_size: int = 256
    epochs: int = 50
    patience: int = 3
    max_batches: int = 0  # 0 = every batch of an epoch (smoke runs cut it)


# ---------------------------------------------------------------- the peer's models

def peer_model(name: str, num_items: int, temperature: float) -> Any:
    """A torch-rechub matching model over item ids 0..num_items-1 (0 = padding), d = 64."""
    import torch
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.matching import MIND, ComirecDR, ComirecSA, YoutubeDNN

    user = [SparseFeature("user", vocab_size=1, embed_dim=DIM)]  # one constant value
    item = [SparseFeature("item", vocab_size=num_items, embed_dim=DIM)]
    neg = [SequenceFeature("neg_items", vocab_size=num_items, embed_dim=DIM, pooling="concat",
                           shared_with="item")]

    def history(pooling: str) -> list:
        return [SequenceFeature("hist", vocab_size=num_items, embed_dim=DIM, pooling=pooling,
                                shared_with="item", padding_idx=0)]

    if name == "youtube-dnn":
        return YoutubeDNN(user + history("mean"), item, neg, user_params={"dims": YOUTUBE_DIMS},
                          temperature=temperature)
    if name == "mind":
        return MIND(user, history("concat"), item, neg, max_length=MAX_LEN, interest_num=K)
    if name == "comirec-sa":
        return ComirecSA(user, history("concat"), item, neg, interest_num=K)
    model = ComirecDR(user, history("concat"), item, neg, max_length=MAX_LEN, interest_num=K)
    torch.nn.init.normal_(model.capsule.w)  # the peer leaves it uninitialised
    return model


def peer_inputs(hist: np.ndarray, **more: np.ndarray) -> dict[str, Any]:
    """The peer's input dict for a batch of left-padded histories (B, L) (+ items, negatives)."""
    import torch

    x = {"user": torch.zeros(len(hist), dtype=torch.long), "hist": torch.from_numpy(hist)}
    return x | {k: torch.from_numpy(v) for k, v in more.items()}


class PeerScorer:
    """mirec's evaluation contract (``score(hist, mask) -> (B, N)``) over the peer's towers:
    its user embedding (``mode="user"``: (B, K, D), or (B, D) for YouTube DNN) against its item
    embedding (``mode="item"``: (N, D)), max over interests."""

    def __init__(self, model: Any, num_items: int) -> None:
        import torch

        self.model = model.eval()
        with torch.no_grad():
            model.mode = "item"
            self.items = model({"item": torch.arange(num_items)})  # (N, D)
            model.mode = None

    def score(self, hist: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            self.model.mode = "user"
            u = self.model(peer_inputs(hist))  # (B, K, D) or (B, D)
            self.model.mode = None
        u = u if u.dim() == 3 else u[:, None]  # (B, K, D)
        return torch.einsum("bkd,nd->bkn", u, self.items).max(dim=1).values.numpy()  # (B, N)


# ---------------------------------------------------------------- one run

def epoch(model: Any, opt: Any, ds: Any, split: Any, rng: np.random.Generator, s: Settings,
          divide: bool) -> tuple[float, int, float]:
    """One pass over the shuffled training examples; returns (mean loss, examples, seconds)."""
    import torch
    import torch.nn.functional as F

    from mirec.data.split import windows

    model.train()
    perm = rng.permutation(split.num_examples)
    starts = range(0, len(perm), s.batch_size)
    if s.max_batches:
        starts = starts[:s.max_batches]
    total, n, t0 = 0.0, 0, time.perf_counter()
    for i in starts:
        idx = perm[i:i + s.batch_size]
        start, pos = split.examples[idx]  # (B,) each: history start, target position
        hist, _ = windows(ds.item, start, pos, MAX_LEN)  # (B, L)
        target = ds.item[pos].astype(np.int64)  # (B,)
        neg = rng.integers(1, ds.num_items, (len(idx), s.negatives))  # (B, S) uniform
        scores = model(peer_inputs(hist, item=target, neg_items=neg))  # (B, 1 + S)
        if divide:
            scores = scores / s.temperature
        loss = F.cross_entropy(scores, torch.zeros(len(idx), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item() * len(idx), n + len(idx)
    return total / max(n, 1), n, time.perf_counter() - t0


def run_one(ds: Any, model_name: str, seed: int, s: Settings) -> dict[str, Any]:
    """Train the peer's model on seed ``seed``'s split with early stopping on validation
    Recall@50; evaluate the best epoch on the test users."""
    import torch

    from mirec.data.split import SplitConfig, split_users
    from mirec.eval.evaluate import evaluate

    t_start = time.perf_counter()
    split = split_users(ds, SplitConfig(seed=seed, max_len=MAX_LEN))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = peer_model(model_name, ds.num_items, s.temperature)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    examples, train_s = 0, 0.0
    for e in range(1, s.epochs + 1):
        loss, n, dt = epoch(model, opt, ds, split, rng, s, divide=model_name != "youtube-dnn")
        examples, train_s = examples + n, train_s + dt
        valid = evaluate(PeerScorer(model, ds.num_items), ds, split.valid, MAX_LEN).metrics
        history.append({"epoch": e, "loss": loss, "valid_recall@50": valid["recall@50"],
                        "examples_per_s": n / dt})
        print(f"  epoch {e}: loss {loss:.4f}, valid R@50 {valid['recall@50']:.4f}, "
              f"{n / dt:,.0f} ex/s, {time.perf_counter() - t_start:.0f} s", flush=True)
        if valid["recall@50"] > best:
            best, best_valid, best_epoch, bad = valid["recall@50"], valid, e, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= s.patience:
                break
    model.load_state_dict(best_state)
    test = evaluate(PeerScorer(model, ds.num_items), ds, split.test, MAX_LEN).metrics
    return {"best_epoch": best_epoch, "epochs_run": len(history), "test": test, "valid": best_valid,
            "train_examples_per_s": examples / train_s, "train_examples": split.num_examples,
            "wall_s": time.perf_counter() - t_start, "num_test_users": len(split.test),
            "history": history}


# ---------------------------------------------------------------- the results file

def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_key(r: dict[str, Any]) -> tuple:
    return r["data"], r["model"], r["seed"], json.dumps(r["settings"], sort_keys=True)


def settings_cell(st: dict[str, Any]) -> str:
    cut = f", {st['max_batches']} batches/epoch" if st["max_batches"] else ""
    return f"S {st['negatives']}, T {st['temperature']}, lr {st['lr']}, <= {st['epochs']} epochs{cut}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (data, model, settings): test metrics mean +- std (population, as mirec's
    results.json) over its seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["model"], json.dumps(r["settings"], sort_keys=True)), []).append(r)
    head = ["data", "model", "settings", "seeds", *(m.replace("hit_rate", "HR") for m in METRICS),
            "best epochs", "train ex/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (data, model, sets), rs in sorted(groups.items()):
        st = json.loads(sets)
        cells = [f"{np.mean(v):.4f} ± {np.std(v):.4f}"
                 for v in ([r["test"][m] for r in rs] for m in METRICS)]
        speed = [r["train_examples_per_s"] for r in rs]
        lines.append("| " + " | ".join([
            Path(data).name, model, settings_cell(st),
            ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"])), *cells,
            ",".join(str(r["best_epoch"]) for r in rs), f"{np.mean(speed):,.0f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-100k", help="a prepared mirec data set (directory)")
    ap.add_argument("--models", default="comirec-sa,youtube-dnn",
                    help=f"comma-separated of {', '.join(MODELS)}")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated; each sets split, init and batches")
    ap.add_argument("--negatives", type=int, default=Settings.negatives, help="uniform negatives per example")
    ap.add_argument("--temperature", type=float, default=Settings.temperature, help="scores / T in the loss")
    ap.add_argument("--lr", type=float, default=Settings.lr, help="Adam learning rate")
    ap.add_argument("--epochs", type=int, default=Settings.epochs, help="at most this many epochs")
    ap.add_argument("--patience", type=int, default=Settings.patience,
                    help="stop after this many epochs without a better validation Recall@50")
    ap.add_argument("--max-batches", type=int, default=0, help="batches per epoch (0 = all; smoke runs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default="runs/peer_quality", help="directory of results.jsonl")
    ap.add_argument("--markdown", action="store_true", help="print the recorded runs' table and exit")
    a = ap.parse_args(argv)
    log = Path(a.out) / "results.jsonl"
    if a.markdown:
        print(markdown(read_results(log)))
        return
    models, seeds = a.models.split(","), [int(x) for x in a.seeds.split(",")]
    if bad := [m for m in models if m not in MODELS]:
        raise SystemExit(f"--models: unknown {', '.join(bad)} (choose from {', '.join(MODELS)})")
    if min(a.negatives, a.epochs, a.patience, a.threads) < 1 or a.temperature <= 0 or a.lr <= 0:
        raise SystemExit("--negatives, --epochs, --patience, --threads must be >= 1; "
                         "--temperature and --lr > 0")
    version = peer_version()

    import torch
    from machine import machine_line  # bench/machine.py, beside this script

    from mirec.data.dataset import load_dataset

    torch.set_num_threads(a.threads)
    s = Settings(a.negatives, a.temperature, a.lr, Settings.batch_size, a.epochs, a.patience, a.max_batches)
    ds = load_dataset(a.data)
    data = str(Path(a.data).resolve())
    print(f"{machine_line()}\ntorch {torch.__version__}, torch-rechub {version}, {torch.get_num_threads()} "
          f"thread(s); {a.data}: {ds.num_users:,} users, {ds.num_items - 1:,} items; {asdict(s)}", flush=True)
    done = {run_key(r) for r in read_results(log)}
    log.parent.mkdir(parents=True, exist_ok=True)
    for model in models:
        for seed in seeds:
            row = {"data": data, "model": model, "seed": seed, "settings": asdict(s)}
            if run_key(row) in done:
                print(f"{model} seed {seed}: recorded, skipped")
                continue
            print(f"{model} seed {seed}:", flush=True)
            row |= run_one(ds, model, seed, s) | {"torch_rechub": version, "torch": torch.__version__,
                                                  "machine": machine_line()}
            with open(log, "a") as f:  # one whole line per finished run
                f.write(json.dumps(row) + "\n")
            t = row["test"]
            print(f"{model} seed {seed}: test R@50 {t['recall@50']:.4f}, NDCG@50 {t['ndcg@50']:.4f} "
                  f"(best epoch {row['best_epoch']}), {row['train_examples_per_s']:,.0f} ex/s, "
                  f"{row['wall_s']:.0f} s", flush=True)
    print(markdown([r for r in read_results(log) if r["data"] == data]))


if __name__ == "__main__":
    main()
