"""Step checkpoints (docs/models.md, "Long runs"): last.pt written mid-epoch, atomically, and a run
killed with SIGKILL mid-epoch resumes from it to the parameters of a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mirec.checkpoint import load_checkpoint
from mirec.data.dataset import load_dataset
from mirec.data.synth import SynthConfig, synth_dataset
from mirec.errors import MirecConfigError
from mirec.train.loop import RunConfig, TrainConfig, train
from tests.test_guarantees import mirec, refused

torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(num_users=200, num_categories=4, items_per_category=20, min_len=8,
                      mean_len=16, seed=5)
    return load_dataset(synth_dataset(cfg, tmp_path_factory.mktemp("s") / "ds", progress=False))


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def start_train(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mirec.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)


def kill_when(p: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL ``p`` as soon as ``ready()`` holds (polled every half millisecond)."""
    deadline = time.monotonic() + timeout
    while not ready() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "the run ended before it could be killed"


# The retrieval and the ranking task through the one engine: many small batches, so that an
# epoch lasts long enough to be killed after its first step checkpoint; sampled negatives and
# dropout, so that the rest of the epoch depends on the torch generator's state.
TASKS = {  # the first two words are what --resume needs
    "retrieval": ["--model", "comirec-sa", *sets("model_args.dim=8", "train.batch_size=8", "train.lr=0.005",
                                                 "train.loss=sampled", "train.num_negatives=20",
                                                 "model_args.dropout=0.2")],
    "ctr": ["--task", "ctr", "--model", "din", *sets("model_args.dim=8", "train.batch_size=16",
                                                     "ctr.max_len=6", "model_args.dropout=0.2")],
}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_kill_9_mid_epoch_resumes_from_the_step_checkpoint(task, capsys, tmp_path, synth):
    """`mirec train` killed with SIGKILL mid-epoch, after a step checkpoint: --resume refuses
    another learning rate, then continues from that batch and ends with the parameters, the
    per-epoch loss and examples and the validation metrics of a run never interrupted."""
    common = ["--data", str(synth.path), *TASKS[task], *sets("train.epochs=2", "train.patience=5")]
    out = tmp_path / "killed"
    p = start_train([*common, "--out", str(out), *sets("train.checkpoint_every_steps=20")])
    kill_when(p, lambda: (out / "steps.jsonl").exists())  # its row follows the checkpoint
    ck = load_checkpoint(out / "last.pt")  # whole: checksum verified
    assert ck["partial"]["epoch"] == 0 and ck["epoch"] == -1, "not killed mid-epoch 0"
    assert ck["partial"]["batches"] % 20 == 0 and ck["partial"]["examples"] > 0
    assert not (out / "metrics.jsonl").exists()  # no epoch ended
    again = ["train", "--resume", "--out", out, "--data", synth.path, *TASKS[task][:2]]
    refused(capsys, *again, "--set", "train.lr=0.1", says="this run has 0.1")
    code, _, err = mirec(capsys, *again, "--set", "train.checkpoint_every_steps=0")  # allowed: not what it computes
    assert code == 0, err
    code, _, err = mirec(capsys, "train", *common, "--out", tmp_path / "whole")
    assert code == 0, err
    got, want = (load_checkpoint(d / "last.pt") for d in (out, tmp_path / "whole"))
    assert "partial" not in got and got["epoch"] == want["epoch"] == 1
    for name, value in want["model"].items():
        assert torch.equal(value, got["model"][name]), name
    keys = ("epoch", "loss", "examples", "valid")
    assert [{k: r[k] for k in keys} for r in rows(out / "metrics.jsonl")] == \
        [{k: r[k] for k in keys} for r in rows(tmp_path / "whole" / "metrics.jsonl")]
    assert all(r["examples_per_s"] > 0 for r in rows(out / "metrics.jsonl"))


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_leaves_the_last_whole_one(capsys, tmp_path, synth):
    """SIGKILL while last.pt is being written (its temporary file open) leaves the previous
    last.pt whole; --resume removes the temporary file and continues from that checkpoint."""
    common = ["--data", str(synth.path), *TASKS["retrieval"],
              *sets("train.epochs=1", "train.max_batches_per_epoch=60")]
    out = tmp_path / "killed"
    p = start_train([*common, "--out", str(out), *sets("train.checkpoint_every_steps=1")])

    def writing() -> bool:
        return len(rows(out / "steps.jsonl")) >= 3 and any(out.glob(".last.pt.tmp-*"))

    kill_when(p, writing)
    ck = load_checkpoint(out / "last.pt")  # the one before: whole, checksum verified
    assert ck["partial"]["batches"] >= 3
    code, _, err = mirec(capsys, "train", "--resume", "--out", out, "--data", synth.path)
    assert code == 0, err
    assert not list(out.glob(".*.tmp-*"))  # what the kill left is gone
    whole = tmp_path / "whole"
    code, _, err = mirec(capsys, "train", *common, "--out", whole)
    assert code == 0, err
    for name, value in load_checkpoint(whole / "last.pt")["model"].items():
        assert torch.equal(value, load_checkpoint(out / "last.pt")["model"][name]), name


def small(**train_args) -> RunConfig:
    t = dict(epochs=2, batch_size=32, patience=5, max_batches_per_epoch=5, lr=0.005)
    return RunConfig(model="comirec-sa", model_args={"dim": 8}, train=TrainConfig(**{**t, **train_args}))


def test_step_rows_go_to_steps_jsonl_and_metrics_keep_one_row_per_epoch(tmp_path, synth):
    train(small(checkpoint_every_steps=2), synth, tmp_path / "a", progress=False, run_test=False)
    assert [(r["epoch"], r["batch"]) for r in rows(tmp_path / "a" / "steps.jsonl")] == \
        [(0, 2), (0, 4), (1, 2), (1, 4)]  # none at an epoch's end: last.pt is written there anyway
    step = rows(tmp_path / "a" / "steps.jsonl")[1]
    assert step["examples"] == 4 * 32 and step["batches"] == 5 and step["examples_per_s"] > 0
    epochs = rows(tmp_path / "a" / "metrics.jsonl")
    assert [r["epoch"] for r in epochs] == [0, 1] and all(r["examples"] == 5 * 32 for r in epochs)
    assert "partial" not in load_checkpoint(tmp_path / "a" / "last.pt")  # the epoch-end one
    # by the clock: every batch is "checkpoint_minutes" after the one before
    train(small(checkpoint_minutes=1e-9), synth, tmp_path / "b", progress=False, run_test=False)
    assert [r["batch"] for r in rows(tmp_path / "b" / "steps.jsonl")] == [1, 2, 3, 4] * 2
    train(small(checkpoint_minutes=0), synth, tmp_path / "c", progress=False, run_test=False)
    assert not (tmp_path / "c" / "steps.jsonl").exists()  # 0: at epoch ends only


@pytest.mark.parametrize("field", ["checkpoint_minutes", "checkpoint_every_steps"])
def test_negative_checkpoint_intervals_are_refused(field):
    with pytest.raises(MirecConfigError, match=f"train.{field}: must be >= 0"):
        TrainConfig(**{field: -1}).validate()
    from mirec.runs import RankTrainConfig

    with pytest.raises(MirecConfigError, match=f"train.{field}: must be >= 0"):
        RankTrainConfig(**{field: -1}).validate()


def test_a_new_run_clears_the_step_log_of_the_one_before(tmp_path):
    """`mirec train --out` over an earlier run removes its files, steps.jsonl too, so that a seed
    directory the new run does not use goes (none is left holding a stale step log)."""
    from mirec.api import clear_run

    for d in (tmp_path, tmp_path / "seed-2"):
        d.mkdir(exist_ok=True)
        for name in ("last.pt", "metrics.jsonl", "steps.jsonl"):
            (d / name).write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_run_killed_in_its_first_checkpoint_write_can_be_trained_over(tmp_path):
    """All a kill during the first write of last.pt leaves is its temporary file: `--out` still
    takes the directory as a run's (instead of refusing it as someone else's files)."""
    from mirec.checkpoint import is_run_dir
    from mirec.io import check_output_dir

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".last.pt.tmp-abc123").write_bytes(b"PK\x03\x04")
    assert check_output_dir(tmp_path / "run", may_hold=is_run_dir) == tmp_path / "run"
    (tmp_path / "seeds" / "seed-1").mkdir(parents=True)  # a multi-seed run killed the same way
    (tmp_path / "seeds" / "seed-1" / ".last.pt.tmp-abc123").write_bytes(b"PK\x03\x04")
    assert check_output_dir(tmp_path / "seeds", may_hold=is_run_dir) == tmp_path / "seeds"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(MirecConfigError, match="is not written by mirec"):
        check_output_dir(tmp_path / "other", may_hold=is_run_dir)
