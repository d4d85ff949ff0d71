"""Check mirec's accelerator paths on synthetic batches: training speed, loss agreement with the
CPU, blocked top-N and a device-free checkpoint (docs/gpu.md).

Needs only torch and NumPy and this repository's src/ (no data files, no Polars, Faiss, FastAPI
or Optuna), so it runs on a machine without network or mirec installed::

    python bench/gpu_check.py                       # on the GPU: ~1.7M items, a few minutes
    python bench/gpu_check.py --device cpu --steps 5 --items 20000   # smoke test, seconds

Sections (each prints one or more lines, and --json writes them all):
  train   ComiRec-SA (sampled softmax) and DIN steps on --device at batch 2,048 and 256, and on
          the CPU (one thread, batch 256, --cpu-steps steps): examples/s and the ratio.
  match   the same --match-steps fp32 steps from the same weights on the same batches (negatives
          drawn in NumPy) on the CPU and on --device: the losses must agree to float tolerance.
  topn    blocked exact top-N for --users users on --device, checked against the CPU's for some.
  ckpt    a checkpoint written from the device model, reloaded with map_location="cpu": the CPU
          model scores as the device model did.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mirec.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mirec.data.ctr import CTRBatch, RankFeatures  # noqa: E402
from mirec.models.base import VectorScorer  # noqa: E402
from mirec.models.registry import spec  # noqa: E402
from mirec.runs import TrainConfig  # noqa: E402
from mirec.train.ctr import IdCounts, embedding_penalty, to_device  # noqa: E402
from mirec.train.engine import on_cpu, placement  # noqa: E402
from mirec.train.loop import LossModule  # noqa: E402
from mirec.train.losses import NegativeSampler  # noqa: E402

L = 20  # history length (the retrieval protocol's max_len)
PROFILE = [8, 4]  # DIN's profile fields' sizes


def zipf_ids(rng: np.random.Generator, n: int, size: Any) -> np.ndarray:
    """Item ids 1..n-1 with a long tail, as real logs have."""
    return np.minimum(rng.zipf(1.2, size=size), n - 1).astype(np.int64)


def sa_batch(rng: np.random.Generator, n: int, B: int) -> tuple[np.ndarray, ...]:
    """(hist (B, L), mask (B, L), target (B,)): left-padded histories of 1..L items."""
    lens = rng.integers(1, L + 1, size=B)
    mask = np.arange(L)[None, :] >= L - lens[:, None]
    hist = np.where(mask, zipf_ids(rng, n, (B, L)), 0)
    return hist, mask, zipf_ids(rng, n, B)


def din_batch(rng: np.random.Generator, n: int, users: int, B: int) -> tuple[CTRBatch, np.ndarray]:
    hist, mask, item = sa_batch(rng, n, B)
    profile = np.stack([rng.integers(0, s, size=B) for s in PROFILE], 1)
    b = CTRBatch(user=torch.from_numpy(rng.integers(0, users, size=B)), profile=torch.from_numpy(profile),
                 item=torch.from_numpy(item), hist=torch.from_numpy(hist), mask=torch.from_numpy(mask))
    return b, rng.integers(0, 2, size=B).astype(np.float32)


class NumpyNegatives:
    """The negative sampler's contract (``sample``, ``log_q``) with uniform negatives drawn in
    NumPy per step, so that runs on two devices see the same ones."""

    def __init__(self, n: int, device: torch.device, seed: int) -> None:
        self.n, self.rng = n, np.random.default_rng(seed)
        self.log_q = NegativeSampler(n, "uniform", device=device).log_q
        self.device = device

    def sample(self, s: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.integers(1, self.n, size=s)).to(self.device)


def sa_model(n: int, device: torch.device) -> torch.nn.Module:
    s = spec("comirec-sa", "retrieval")
    torch.manual_seed(0)  # initialised on the CPU: the same weights on every device
    return s.build(s.config(dim=64, num_interests=4, max_len=L), n).to(device)


def din_model(n: int, users: int, device: torch.device) -> torch.nn.Module:
    cats = torch.from_numpy(np.random.default_rng(0).integers(1, 50, size=(n, 1)))
    cats[0] = 0
    s = spec("din", "ranking")
    torch.manual_seed(0)
    return s.build(s.config(), RankFeatures(n, users, PROFILE, cats)).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sa_steps(model: torch.nn.Module, device: torch.device, precision: str, n: int, B: int, steps: int,
             negatives: Any = None, seed: int = 1) -> tuple[list[float], float]:
    """``steps`` Adam steps of ComiRec-SA's sampled softmax (1,000 negatives): (losses, ex/s
    after the first steps' warm-up)."""
    tc = TrainConfig(loss="sampled", num_negatives=1000, sampler="log-uniform", device=str(device),
                     precision=precision)
    counts = np.bincount(zipf_ids(np.random.default_rng(0), n, 100_000), minlength=n)
    sampler = negatives or NegativeSampler(n, "log-uniform", counts, device)
    fn = LossModule(model, tc, sampler, n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    rng = np.random.default_rng(seed)
    batches = [sa_batch(rng, n, B) for _ in range(min(steps, 20))]  # made once, reused in turn

    def step(i: int) -> float:
        hist, mask, target = (fn.place.batch(torch.from_numpy(a)) for a in batches[i % len(batches)])
        loss = fn(hist, mask, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return timed(step, steps, B, device)


def din_steps(model: torch.nn.Module, device: torch.device, precision: str, n: int, users: int, B: int,
              steps: int) -> tuple[list[float], float]:
    """``steps`` Adam steps of DIN's loss plus its mini-batch aware L2 (0.1)."""
    place = placement(device, precision)
    seen = np.bincount(zipf_ids(np.random.default_rng(0), n, 100_000), minlength=n) + 1.0  # n_j
    counts = IdCounts(torch.from_numpy(seen).float(), torch.full((users + 1,), 10.0)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    rng = np.random.default_rng(2)
    batches = [din_batch(rng, n, users, B) for _ in range(min(steps, 20))]

    def step(i: int) -> float:
        b, label = batches[i % len(batches)]
        b, label = to_device(b, place), place.batch(torch.from_numpy(label))
        with place.autocast():
            loss = model.loss(b, label).float()
        loss = loss + 0.1 * embedding_penalty(model, torch.cat([b.hist[b.mask], b.item]), b.user, counts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return timed(step, steps, B, device)


def timed(step: Callable[[int], float], steps: int, B: int,
          device: torch.device) -> tuple[list[float], float]:
    warm = min(3, steps - 1)
    losses = [step(i) for i in range(warm)]
    sync(device)
    t0 = time.perf_counter()
    losses += [step(i) for i in range(warm, steps)]
    sync(device)
    return losses, (steps - warm) * B / max(time.perf_counter() - t0, 1e-9)


def check_train(a: argparse.Namespace, dev: torch.device, cpu: torch.device, out: dict) -> None:
    n, users = a.items, 10_000
    for name in ("comirec-sa", "din"):
        runs: dict[str, float] = {}
        for label, device, B, steps in ((f"{dev} b2048", dev, 2048, a.steps),
                                        (f"{dev} b256", dev, 256, a.steps),
                                        ("cpu b256 1 thread", cpu, 256, a.cpu_steps)):
            if name == "comirec-sa":
                losses, rate = sa_steps(sa_model(n, device), device, "auto", n, B, steps)
            else:
                losses, rate = din_steps(din_model(n, users, device), device, "auto", n, users, B, steps)
            runs[label] = rate
            print(f"train  {name:10s} {label:18s} {steps:4d} steps  {rate:12,.0f} ex/s  "
                  f"loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
        ratio = runs[f"{dev} b2048"] / runs["cpu b256 1 thread"]
        print(f"train  {name:10s} {dev} b2048 / cpu b256 (1 thread): {ratio:.1f}x", flush=True)
        out["train"][name] = {**runs, "ratio_b2048_vs_cpu_b256": ratio}


def check_match(a: argparse.Namespace, dev: torch.device, cpu: torch.device, out: dict) -> None:
    """The same fp32 steps from the same weights and batches on both devices."""
    n, B, got = a.items, 256, {}
    for device in (cpu, dev):
        neg = NumpyNegatives(n, device, seed=7)
        got[device.type] = sa_steps(sa_model(n, device), device, "fp32", n, B, a.match_steps, neg)[0]
    c, g = np.array(got["cpu"]), np.array(got[dev.type])
    rel = float(np.max(np.abs(c - g) / np.abs(c)))
    ok = rel < 1e-3
    print(f"match  comirec-sa fp32 b256 {a.match_steps} steps: cpu {c[-1]:.6f} {dev} {g[-1]:.6f} "
          f"max rel diff {rel:.2e} {'OK' if ok else 'MISMATCH'}", flush=True)
    out["match"] = {"cpu_loss": c.tolist(), "device_loss": g.tolist(), "max_rel_diff": rel, "ok": ok}


def topn_inputs(n: int, users: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    hist, mask, _ = sa_batch(np.random.default_rng(3), n, users)
    rows, cols = np.nonzero(mask)
    return hist, mask, (rows.astype(np.int64), hist[rows, cols].astype(np.int64))


def check_topn(a: argparse.Namespace, dev: torch.device, cpu: torch.device, out: dict) -> None:
    n, k = a.items, 50
    model = sa_model(n, dev)
    hist, mask, seen = topn_inputs(n, a.users)
    scorer = VectorScorer(model, cosine=True, blocked=True)
    scorer.topn(hist[:8], mask[:8], k, topn_inputs(n, 8)[2])  # warm-up
    sync(dev)
    t0 = time.perf_counter()
    top = np.concatenate([scorer.topn(hist[i:i + 500], mask[i:i + 500], k,
                                      _rows(seen, i, i + 500)) for i in range(0, a.users, 500)])
    sync(dev)
    secs = time.perf_counter() - t0
    m = min(a.cpu_users, a.users)
    ref = VectorScorer(sa_model(n, cpu), cosine=True, blocked=True)
    ref = ref.topn(hist[:m], mask[:m], k, _rows(seen, 0, m))
    same = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top[:m], ref)]))
    print(f"topn   {a.users} users top-{k} of {n:,} items on {dev}: {secs:.2f} s "
          f"({a.users / secs:,.0f} users/s); overlap with the cpu on {m} users {same:.4f}", flush=True)
    out["topn"] = {"users": a.users, "seconds": secs, "cpu_overlap": same}


def _rows(seen: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``seen`` pairs of users ``lo..hi-1``, rows renumbered from 0."""
    rows, items = seen
    keep = (rows >= lo) & (rows < hi)
    return rows[keep] - lo, items[keep]


def check_checkpoint(a: argparse.Namespace, dev: torch.device, cpu: torch.device, out: dict) -> None:
    n = a.items
    model = sa_model(n, dev)
    hist, mask, _ = topn_inputs(n, 64)
    want = VectorScorer(model, cosine=True).score(hist, mask)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "best.pt"
        save_checkpoint(path, {"model": on_cpu(model.state_dict())})
        raw = Path(d) / "raw.pt"
        save_checkpoint(raw, {"model": model.state_dict()})  # as it lives on the device
        ck = load_checkpoint(path)
        dev_free = all(t.device.type == "cpu" for t in torch.load(path, weights_only=True)["model"].values())
        again = sa_model(n, cpu)
        again.load_state_dict(ck["model"])
        got = VectorScorer(again, cosine=True).score(hist, mask)
        sa_model(n, cpu).load_state_dict(torch.load(raw, map_location="cpu", weights_only=True)["model"])
    diff = float(np.max(np.abs(got - want)))
    ok = dev_free and diff < 1e-4
    print(f"ckpt   written on {dev}, tensors on the cpu: {dev_free}; reloaded on the cpu, max score "
          f"diff {diff:.2e} {'OK' if ok else 'MISMATCH'}", flush=True)
    out["checkpoint"] = {"device_free": dev_free, "max_score_diff": diff, "ok": ok}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--items", type=int, default=1_700_000)
    p.add_argument("--steps", type=int, default=300, help="training steps on --device")
    p.add_argument("--cpu-steps", type=int, default=10, help="training steps on the CPU (speed)")
    p.add_argument("--match-steps", type=int, default=20, help="fp32 steps compared CPU vs --device")
    p.add_argument("--users", type=int, default=1000, help="users of the top-N check")
    p.add_argument("--cpu-users", type=int, default=100, help="of those, checked against the CPU")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    a.steps, a.cpu_steps, a.match_steps = max(a.steps, 2), max(a.cpu_steps, 2), max(a.match_steps, 1)
    torch.set_num_threads(1)  # the CPU figures are one thread's
    dev, cpu = torch.device(a.device), torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    bf16 = placement(dev, "auto").bf16
    print(f"device {dev}: {name}; torch {torch.__version__}, numpy {np.__version__}, python "
          f"{platform.python_version()}; default precision {'bf16' if bf16 else 'fp32'}", flush=True)
    out: dict[str, Any] = {"device": str(dev), "name": name, "torch": torch.__version__, "items": a.items,
                           "bf16": bf16, "train": {}}
    for check in (check_train, check_match, check_topn, check_checkpoint):
        check(a, dev, cpu, out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    bad = [k for k in ("match", "checkpoint") if not out[k]["ok"]]
    if bad:
        sys.exit(f"gpu_check: {', '.join(bad)} failed")


if __name__ == "__main__":
    main()
