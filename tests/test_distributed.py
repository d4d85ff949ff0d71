"""Data-parallel training under torchrun: two processes take the steps one process takes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mirec
from mirec.config import from_dict
from mirec.data.ctr import build_ctr
from mirec.data.dataset import load_dataset
from mirec.data.synth import SynthConfig, synth_dataset
from mirec.io import sha256_file
from mirec.train.ctr import RankingTask, RankRunConfig
from mirec.train.distributed import World, shard
from mirec.train.loop import RetrievalTask, RunConfig, setup
from mirec.train.warm import load_parent, warm_config


@pytest.mark.parametrize("n,size", [(256, 2), (255, 2), (7, 3), (1, 2), (2, 4)])
def test_shard_weights_give_the_whole_batch_mean(n, size):
    """Averaging the processes' weighted slice means gives the mean over the whole batch, also
    with unequal slices and with processes that get no example."""
    loss = np.random.default_rng(n).normal(size=1000)
    idx = np.arange(100, 100 + n)
    parts = [shard(idx, World(r, size)) for r in range(size)]
    covered = np.concatenate([p for p, wt in parts if wt > 0])
    assert np.array_equal(np.sort(covered), idx)  # every example once
    averaged = sum(wt * loss[p].mean() for p, wt in parts) / size
    assert averaged == pytest.approx(loss[idx].mean(), rel=1e-12)


def run_cli(args, launcher):
    """``mirec ARGS`` in a subprocess, under ``launcher`` (e.g. torchrun's module) if given."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "COLUMNS": "150",
           **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}  # the code under test
    p = subprocess.run([sys.executable, *launcher, "-m", "mirec.cli", *args], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def train_cli(data, out, launcher, optimizer="sparse"):
    args = ["train", "--model", "comirec-sa", "--data", str(data), "--out", str(out),
            "--set", f"train.optimizer={optimizer}", "--set", "train.epochs=2", "--set", "train.batch_size=50", "--set", "train.patience=5",
            "--set", "train.loss=sampled", "--set", "train.num_negatives=20",
            "--set", "model_args.dim=16", "--set", "model_args.num_interests=2"]
    return run_cli(args, launcher)


def one_and_two(tmp_path, printed: str) -> tuple[dict, dict, list[dict], list[dict]]:
    """The last checkpoints and metrics.jsonl rows of the single-process run (``one``) and the
    two-process one (``two``), after checking that only process 0 of the two printed."""
    assert "data-parallel over 2 processes" in printed
    assert printed.count("wrote") == 1  # process 1 prints nothing
    ck = [torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("one", "two")]
    rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    return ck[0], ck[1], rows[0], rows[1]


@pytest.mark.distributed
@pytest.mark.parametrize("optimizer", ["sparse", "adam"])
def test_two_processes_under_torchrun_match_one_process(tmp_path, optimizer):
    """Two processes (gloo over loopback) split each batch, average the gradients and end with
    the parameters of a single-process run (up to float order); process 0 alone writes. With
    the row-wise optimiser DDP all-reduces the item table's sparse gradients (gloo)."""
    data = tmp_path / "ds"
    synth_dataset(SynthConfig(num_users=150, num_categories=6, items_per_category=10,
                              max_interests=2, min_len=8, mean_len=15, seed=5), data, progress=False)
    train_cli(data, tmp_path / "one", [], optimizer)
    two = train_cli(data, tmp_path / "two", ["-m", "torch.distributed.run", "--standalone",
                                             "--nproc-per-node", "2"], optimizer)
    a, b, rows_a, rows_b = one_and_two(tmp_path, two.stdout)
    assert [r["epoch"] for r in rows_b] == [0, 1]  # one line per epoch, not one per process
    assert [r["examples"] for r in rows_b] == [r["examples"] for r in rows_a]
    assert rows_b[0]["processes"] == 2
    assert rows_b[1]["loss"] == pytest.approx(rows_a[1]["loss"], rel=1e-5)
    for name, pa in a["model"].items():
        torch.testing.assert_close(b["model"][name], pa, atol=2e-5, rtol=1e-4, msg=name)
    assert rows_a[0]["examples"] % 50 != 0  # the last, smaller batch is split too
    # the parameters moved far more than the tolerance from where both runs started
    start = setup(from_dict(RunConfig, a["config"]), load_dataset(data))[1].state_dict()
    assert (a["model"]["item_emb.weight"] - start["item_emb.weight"]).abs().max() > 1e-2
    assert json.loads((tmp_path / "two" / "results.json").read_text())["seeds"] == [2020]


@pytest.mark.distributed
def test_two_processes_train_a_ranker_as_one_process(tmp_path):
    """`--task ctr` under torchrun: two processes split each batch of DIN's examples and end with
    a single process's parameters, the embedding penalty (train.embedding_l2, on by default)
    taken over the ids the whole batch reads; process 0 alone writes."""
    data = tmp_path / "ds"
    synth_dataset(SynthConfig(num_users=120, num_categories=6, items_per_category=10,
                              max_interests=2, min_len=8, mean_len=15, seed=5), data, progress=False)
    args = ["train", "--task", "ctr", "--model", "din", "--data", str(data), "--set", "train.epochs=2",
            "--set", "train.batch_size=64", "--set", "train.patience=5", "--set", "model_args.dim=8"]
    run_cli([*args, "--out", str(tmp_path / "one")], [])
    two = run_cli([*args, "--out", str(tmp_path / "two")],
                  ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])
    a, b, rows_a, rows_b = one_and_two(tmp_path, two.stdout)
    assert [r["epoch"] for r in rows_b] == [0, 1] and rows_b[0]["processes"] == 2
    assert [r["examples"] for r in rows_b] == [r["examples"] for r in rows_a]
    assert rows_a[0]["examples"] % 64 != 0  # the last, smaller batch is split too
    assert rows_b[1]["loss"] == pytest.approx(rows_a[1]["loss"], rel=1e-5)
    assert a["config"]["train"]["embedding_l2"] > 0
    for name, pa in a["model"].items():
        torch.testing.assert_close(b["model"][name], pa, atol=2e-5, rtol=1e-4, msg=name)
    # the parameters moved far more than the tolerance from where both runs started
    cfg = from_dict(RankRunConfig, a["config"])
    start = RankingTask(cfg, build_ctr(load_dataset(data), cfg.ctr)).model.state_dict()
    assert (a["model"]["items.item.weight"] - start["items.item.weight"]).abs().max() > 1e-2
    assert json.loads((tmp_path / "two" / "results.json").read_text())["seeds"] == [2020]


@pytest.mark.distributed
@pytest.mark.slow
def test_a_warm_start_under_torchrun_starts_from_the_parent_as_one_process(tmp_path):
    """`torchrun ... mirec train --warm-start PARENT --data DATA2`: both processes start from the
    parent's rows mapped by raw id (new items from the cold-start vector), train the events after
    the parent's last one with the row-wise optimiser and end with the parameters of the same
    warm start in one process; results.json names the parent."""
    torch.set_num_threads(1)
    data = tmp_path / "ds"
    synth_dataset(SynthConfig(num_users=150, num_categories=6, items_per_category=10,
                              max_interests=2, min_len=8, mean_len=15, seed=5), data, progress=False)
    small = {"model_args.dim": 16, "model_args.num_interests": 2, "train.optimizer": "sparse",
             "train.loss": "sampled", "train.num_negatives": 20, "train.batch_size": 50, "train.epochs": 1}
    mirec.fit("comirec-sa", data, tmp_path / "parent", progress=False, settings=small)
    base = load_dataset(data)
    last = int(base.ts.max())
    # 120 known users each click a new item (4 new ids) and a known one after the parent's last event
    rows = [f"{u},new-{u % 4},{last + 10 + u}\n{u},{1 + u % 60},{last + 20 + u}\n" for u in range(120)]
    (tmp_path / "new.csv").write_text("user_id,item_id,timestamp\n" + "".join(rows))
    data2 = mirec.append(data, tmp_path / "new.csv", tmp_path / "ds2", source="csv")
    sets = {"train.epochs": 2, "train.batch_size": 32, "train.patience": 5}
    mirec.fit(data=data2, out=tmp_path / "one", warm_start=tmp_path / "parent", progress=False, settings=sets)
    two = run_cli(["train", "--warm-start", str(tmp_path / "parent"), "--data", str(data2),
                   "--out", str(tmp_path / "two"), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]],
                  ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])
    a, b, rows_a, rows_b = one_and_two(tmp_path, two.stdout)
    doc = json.loads((tmp_path / "two" / "results.json").read_text())
    parent_best = tmp_path / "parent" / "best.pt"
    assert doc["warm_start"] == {"run": str(tmp_path / "parent"), "checkpoint": str(parent_best),
                                 "checksum": sha256_file(parent_best), "since": last}
    assert doc["config"] == json.loads((tmp_path / "one" / "results.json").read_text())["config"]
    assert [r["examples"] for r in rows_b] == [r["examples"] for r in rows_a]
    assert 0 < rows_a[0]["examples"] <= 240  # the appended events only (train.since=auto)
    assert rows_b[0]["processes"] == 2 and rows_b[1]["loss"] == pytest.approx(rows_a[1]["loss"], rel=1e-5)
    # the start both runs share: the parent's rows by raw id, new items from the category mean
    ds2 = load_dataset(data2)
    cfg = warm_config(RunConfig, load_parent(tmp_path / "parent", "retrieval"), None,
                      [f"{k}={v}" for k, v in sets.items()])
    start = RetrievalTask(cfg, ds2, warm=load_parent(tmp_path / "parent", "retrieval")).model.state_dict()
    old = torch.load(parent_best, weights_only=False)["model"]["item_emb.weight"]
    known = np.arange(1, base.num_items)  # appended data keeps known items' ids, new ones come after
    torch.testing.assert_close(start["item_emb.weight"][known], old[known], rtol=0, atol=0)
    for name, pa in a["model"].items():  # two processes took one process's steps from that start
        torch.testing.assert_close(b["model"][name], pa, atol=2e-5, rtol=1e-4, msg=name)
    new = np.arange(base.num_items, ds2.num_items)
    assert len(new) == 4 and ds2.items["raw_id"].to_list()[-4:] == [f"new-{k}" for k in range(4)]
    # the new items' rows moved from their cold-start start (they are the appended events' targets)
    moved = (b["model"]["item_emb.weight"][new] - start["item_emb.weight"][new]).abs().amax(1)
    assert (moved > 1e-3).all() and (start["item_emb.weight"][new].norm(dim=1) > 0.5).all()
