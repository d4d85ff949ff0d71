"""Accelerator settings exercised on the CPU: train.device and train.precision, the blocked
top-N that a GPU evaluates with, device-free checkpoints, imports without the data and web
stacks, and bench/gpu_check.py's smoke run. Tests that need a GPU skip without one."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mirec.config import load
from mirec.data.split import SplitConfig, split_users
from mirec.errors import MirecConfigError
from mirec.eval.evaluate import EvalConfig, evaluate, rank_topn
from mirec.models.base import VectorScorer
from mirec.runs import RankRunConfig, RankTrainConfig, RunConfig, TrainConfig, build_model, load_run
from mirec.train.ctr import RankingTask, train_ctr
from mirec.train.engine import Placement, on_cpu, placement, resolve_device
from mirec.train.loop import train
from mirec.train.losses import NegativeSampler
from tests.test_ranking import toy_dataset

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
without_gpu = pytest.mark.skipif(CUDA, reason="checks the behaviour without a CUDA GPU")

# Runs before anything else in a fresh interpreter: importing these packages fails.
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"polars", "faiss", "fastapi", "uvicorn", "pyarrow", "optuna"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
"""


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code, *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_core_modules_import_without_polars_faiss_or_the_web_stack():
    p = python("""
import mirec.models.registry, mirec.train.losses, mirec.train.engine, mirec.train.loop, mirec.runs
import mirec.train.ctr
try:
    import polars
except ImportError:
    print("imported; polars blocked")
""")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "imported; polars blocked"


@pytest.mark.slow  # ~12 s: a fresh interpreter builds and trains four small models
def test_gpu_check_smoke_runs_on_the_cpu_with_torch_and_numpy_alone(tmp_path):
    out = tmp_path / "gpu.json"
    p = python("import runpy; runpy.run_path('bench/gpu_check.py', run_name='__main__')",
               "--device", "cpu", "--items", "3000", "--steps", "3", "--cpu-steps", "2",
               "--match-steps", "3", "--users", "40", "--cpu-users", "10", "--json", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    got = json.loads(out.read_text())
    assert set(got["train"]) == {"comirec-sa", "din"}
    assert got["match"]["ok"] and got["match"]["max_rel_diff"] == 0.0  # the same device twice
    assert got["topn"]["cpu_overlap"] == 1.0 and got["checkpoint"]["ok"]


@pytest.mark.parametrize("cls", [TrainConfig, RankTrainConfig])
def test_device_and_precision_settings_are_validated(cls):
    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        cls(device=ok).validate()  # well-formed; whether the GPU exists is checked at the start
    for bad in ("gpu", "cuda:", "cuda:x", "CPU"):
        with pytest.raises(MirecConfigError, match=r"^train\.device: expected auto, cpu, cuda or cuda:N"):
            cls(device=bad).validate()
    with pytest.raises(MirecConfigError, match=r"^train\.precision: expected auto, fp32 or bf16"):
        cls(precision="fp16").validate()


@without_gpu
def test_auto_is_the_cpu_in_float32_and_cuda_is_a_clear_error():
    assert placement("auto", "auto") == Placement(torch.device("cpu"), bf16=False)
    assert placement("cpu", "bf16").bf16  # an explicit bf16 still runs CPU autocast
    for name in ("cuda", "cuda:0"):
        with pytest.raises(MirecConfigError, match=rf"^train\.device: '{name}' asked for, but torch finds no "
                                                   r"CUDA GPU .*set train.device=cpu or auto$"):
            resolve_device(name)
    with pytest.raises(MirecConfigError, match=r"^train\.device"):
        RankingTask(load(RankRunConfig, None, ["train.device=cuda"]), None)


def test_torchrun_keeps_auto_on_the_cpu_and_refuses_a_gpu():
    assert resolve_device("auto", distributed=True) == torch.device("cpu")
    with pytest.raises(MirecConfigError, match=r"^train\.device: 'cuda' is not supported under torchrun"):
        resolve_device("cuda", distributed=True)


@pytest.mark.slow
@without_gpu
def test_cli_train_on_cuda_without_a_gpu_exits_2_naming_the_setting(random_dataset, tmp_path):
    p = subprocess.run([sys.executable, "-m", "mirec.cli", "train", "--data", str(random_dataset.path),
                        "--out", str(tmp_path / "run"), "--set", "train.device=cuda"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert p.returncode == 2, p.stdout + p.stderr
    errors = [x for x in (p.stdout + p.stderr).splitlines() if x.startswith("error:")]
    assert errors == ["error: train.device: 'cuda' asked for, but torch finds no CUDA GPU "
                      f"(torch {torch.__version__}); set train.device=cpu or auto"], p.stdout + p.stderr
    assert not (tmp_path / "run" / "best.pt").exists()


def small_run(device: str = "auto", precision: str = "auto") -> RunConfig:
    return load(RunConfig, None, ["model_args.dim=8", "model_args.num_interests=2", "train.epochs=2",
                                  "train.batch_size=64", "train.loss=sampled", "train.num_negatives=20",
                                  "train.max_batches_per_epoch=4", f"train.device={device}",
                                  f"train.precision={precision}"])


def test_device_cpu_in_fp32_trains_exactly_as_the_defaults_do_on_the_cpu(random_dataset, tmp_path):
    """On a machine without a GPU the defaults (auto device, auto precision) are the CPU in
    float32: the same weights and metrics as asking for them explicitly."""
    runs = [train(small_run(*s), random_dataset, tmp_path / s[0], progress=False)
            for s in (("cpu", "fp32"), ("auto", "auto"))]
    if CUDA:
        return  # auto is the GPU there: covered by test_a_run_trained_on_the_gpu_loads_on_the_cpu
    for (name, a), (_, b) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items()):
        assert torch.equal(a, b), name
    assert runs[0].test == runs[1].test


def test_ranking_on_device_cpu_trains_and_its_checkpoint_is_device_free(tmp_path):
    ds = toy_dataset(tmp_path / "data", users=40, per_user=20)
    cfg = load(RankRunConfig, None, ["model=din", "model_args.dim=8", "train.epochs=1", "train.batch_size=64",
                                     "ctr.max_len=10", "train.device=cpu"])
    r = train_ctr(cfg, ds, tmp_path / "run", progress=False)
    assert 0.0 <= r.test["auc"] <= 1.0 and next(r.model.parameters()).device.type == "cpu"
    ck = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)
    assert ck["config"]["train"]["device"] == "cpu" and all(t.device.type == "cpu" for t in ck["model"].values())


@pytest.mark.parametrize("exclude", [True, False])
def test_blocked_topn_equals_the_full_score_path(random_dataset, exclude):
    """The top-N a GPU computes (scores cut per block of items with torch.topk and merged) is the
    NumPy path's, here on the CPU with blocks of 7 items (N = 20 spans several blocks)."""
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    torch.manual_seed(0)
    model = build_model(small_run(), ds.num_items)
    full = VectorScorer(model, cosine=True)
    full.blocked = False  # the whole (B, N) score matrix
    blocked = VectorScorer(model, cosine=True, blocked=True)
    blocked.block = 7
    want = rank_topn(full, ds, sp.test, 20, 20, exclude, batch_size=16)
    got = rank_topn(blocked, ds, sp.test, 20, 20, exclude, batch_size=16)
    np.testing.assert_array_equal(got, want)
    cfg = EvalConfig(ns=(5, 20), exclude_history=exclude)
    assert evaluate(blocked, ds, sp.test, 20, cfg).metrics == evaluate(full, ds, sp.test, 20, cfg).metrics


def test_checkpoint_state_is_moved_to_the_cpu_keeping_its_structure():
    state = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}},
                                                          "param_groups": [{"lr": 0.1, "params": [0]}]},
             "history": [{"epoch": 0}], "pair": (torch.zeros(1), "x")}
    got = on_cpu(state)
    assert got["model"]["w"] is state["model"]["w"]  # CPU tensors are not copied
    assert got["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert isinstance(got["pair"], tuple) and got["pair"][1] == "x" and got["history"] == [{"epoch": 0}]


def test_sampler_draws_on_its_device_as_before_on_the_cpu():
    counts = np.arange(50)[::-1].copy()
    for kind in ("uniform", "log-uniform"):
        a, b = NegativeSampler(50, kind, counts), NegativeSampler(50, kind, counts, device="cpu")
        torch.manual_seed(1)
        x = a.sample(100)
        torch.manual_seed(1)
        assert torch.equal(x, b.sample(100)) and x.device.type == "cpu"


@needs_gpu
def test_a_run_trained_on_the_gpu_loads_on_the_cpu(random_dataset, tmp_path):
    r = train(small_run("cuda"), random_dataset, tmp_path / "gpu", progress=False)
    assert next(r.model.parameters()).device.type == "cuda"
    ck = torch.load(tmp_path / "gpu" / "last.pt", weights_only=False)  # tensors where they were saved
    assert all(t.device.type == "cpu" for t in ck["model"].values())  # ... on the CPU, from the GPU
    run = load_run(tmp_path / "gpu")  # rebuilt on the CPU
    assert next(run.model.parameters()).device.type == "cpu"
    sp = split_users(random_dataset, SplitConfig())
    cpu = evaluate(VectorScorer(run.model, True), random_dataset, sp.test, 20).metrics
    assert cpu == pytest.approx(r.test, abs=0.02)  # float differences may swap near ties


@needs_gpu
def test_sampler_on_the_gpu_draws_there():
    s = NegativeSampler(50, "log-uniform", np.arange(50), device="cuda")
    assert s.sample(10).device.type == "cuda" and s.log_q.device.type == "cuda"
