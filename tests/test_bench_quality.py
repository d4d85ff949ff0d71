"""bench/quality.py's table helpers on real (tiny) training runs."""

import json
import statistics

import pytest
import torch

from bench.quality import epoch_seconds
from mirec.data.dataset import load_dataset
from mirec.data.synth import SynthConfig, synth_dataset
from mirec.experiment import train_seeds
from mirec.train.loop import RunConfig, TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(num_users=200, num_categories=4, items_per_category=20, max_interests=2,
                      min_len=6, mean_len=12, seed=5)
    path = tmp_path_factory.mktemp("synth") / "ds"
    synth_dataset(cfg, path, progress=False)
    return load_dataset(path)


@pytest.mark.parametrize("seeds", [[1], [1, 2]])
def test_epoch_seconds_of_one_seed_and_of_several(synth, tmp_path, seeds):
    """One seed writes its metrics.jsonl in the run directory itself (no seed-N folder): the
    seconds an epoch must come out for it too, as each seed's median epoch up to its best,
    averaged over the seeds."""
    cfg = RunConfig(model="comirec-sa", model_args={"dim": 8, "num_interests": 2},
                    train=TrainConfig(epochs=3, batch_size=64, patience=5, max_batches_per_epoch=3))
    run = tmp_path / "run"
    train_seeds(cfg, synth, seeds, run, progress=False)
    doc = json.loads((run / "results.json").read_text())
    logs = [run / "metrics.jsonl"] if len(seeds) == 1 else [run / f"seed-{s}" / "metrics.jsonl" for s in seeds]
    medians = []
    for log, per_seed in zip(logs, doc["per_seed"]):
        secs = [json.loads(line)["train_seconds"] for line in log.read_text().splitlines()]
        medians.append(statistics.median(secs[: per_seed["best_epoch"] + 1]))
    got = epoch_seconds(doc)
    assert got is not None and got > 0
    assert got == pytest.approx(sum(medians) / len(medians))
    assert epoch_seconds({"per_seed": []}) is None
