"""bench/quality.py's table helpers on real (tiny) training runs."""

import json
import statistics

import pytest
import torch
from rich.console import Console

from bench.quality import LOO_SETS, epoch_seconds, tune
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


def test_tune_under_leave_one_out_keeps_the_best_validation_ndcg_at_10(synth, tmp_path):
    """Under ``--protocol loo`` there is no Recall@50 (eval.ns 5, 10, 20): the grid is chosen
    on the validation NDCG@10 averaged over the seeds, and the kept run is that setting's; a
    grid value wins over a ``--set`` of the same key."""
    extra = [*LOO_SETS, "model_args.dim=8", "model_args.num_interests=2", "train.epochs=2",
             "train.batch_size=64", "train.max_batches_per_epoch=3", "train.temperature=0.5"]
    grid = {"train.temperature": ["0.05", "1.0"]}
    sets, doc = tune("comirec-sa", synth, [1, 2], tmp_path, Console(quiet=True), extra, grid, "ndcg@10")
    scores = {}
    for t in grid["train.temperature"]:
        runs = json.loads((tmp_path / "tune" / "comirec-sa" / t / "results.json").read_text())["per_seed"]
        scores[t] = sum(r["valid"]["ndcg@10"] for r in runs) / len(runs)
    assert scores["0.05"] != scores["1.0"]
    best = max(scores, key=scores.get)
    assert sets == [f"train.temperature={best}"]
    assert doc["config"]["train"]["temperature"] == float(best) and doc["seeds"] == [1, 2]
