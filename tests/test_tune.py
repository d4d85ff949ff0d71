"""`mirec tune`: Optuna on validation users, resumable, a TOML `mirec train --config` takes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mirec.config import load
from mirec.errors import MirecConfigError
from mirec.runs import RunConfig
from mirec.train.engine import fit
from mirec.train.loop import RetrievalTask
from mirec.tune import open_study, search_space, tune

SMALL = ["train.epochs=2", "train.batch_size=64", "model_args.dim=8"]


def test_tune_writes_trials_and_a_config_train_takes_and_continues(random_dataset, tmp_path):
    out = tmp_path / "study"
    study = tune("comirec-sa", random_dataset, out, trials=3, seed=1, overrides=SMALL)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and all(r["state"] == "complete" for r in rows)
    # each value is the trial's best *validation* Recall@50 (the trials never test)
    for r in rows:
        hist = [json.loads(line) for line in (out / "trials" / f"trial-{r['trial']}" / "metrics.jsonl").open()]
        assert float(r["valid_recall@50"]) == pytest.approx(max(h["valid"]["recall@50"] for h in hist), abs=1e-6)
        assert not (out / "trials" / f"trial-{r['trial']}" / "results.json").exists()
    cfg = load(RunConfig, out / "best.toml")  # what `mirec train --config best.toml` reads
    best = study.best_trial.params
    assert cfg.model == "comirec-sa" and cfg.train.epochs == 2
    assert cfg.train.temperature == pytest.approx(best["train.temperature"])
    assert int(cfg.model_args["num_interests"]) == best["model_args.num_interests"]
    assert set(best) == set(search_space("comirec-sa"))
    again = tune("comirec-sa", random_dataset, out, trials=4, seed=1, overrides=SMALL)  # continues
    assert len(again.trials) == 4 and [t.number for t in again.trials[:3]] == [0, 1, 2]


def test_tune_refuses_bad_input_before_any_trial(random_dataset, tmp_path):
    with pytest.raises(MirecConfigError, match="--model: 'din' is a ranking model"):
        tune("din", random_dataset, tmp_path / "a", trials=2)
    with pytest.raises(MirecConfigError, match="--trials"):
        tune("comirec-sa", random_dataset, tmp_path / "b", trials=0)
    with pytest.raises(MirecConfigError, match="train.lr"):
        tune("comirec-sa", random_dataset, tmp_path / "c", trials=1, overrides=["train.lr=fast"])
    assert not any((tmp_path / d).exists() for d in "abc")


def test_the_engine_calls_on_epoch_with_each_score_and_a_raise_stops_it(random_dataset, tmp_path):
    cfg = load(RunConfig, None, [*SMALL, "train.epochs=4", "train.patience=10"])
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(epoch, score):
        seen.append((epoch, score))
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(RetrievalTask(cfg, random_dataset), tmp_path / "r", cfg.train, progress=False, on_epoch=on_epoch)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert [e for e, _ in seen] == [0, 1] and [s for _, s in seen] == [r["valid"]["recall@50"] for r in rows]


@pytest.mark.slow
def test_a_continued_study_draws_new_settings_instead_of_replaying_its_first_trials(random_dataset, tmp_path):
    """Rerunning `mirec tune` continues the sampler's sequence: the trial it adds is not the first
    run's trial again (a sampler re-seeded with the same seed replays it: TPE's start-up trials
    are random draws); a new study with the same seed does start from the same draws."""
    out, small = tmp_path / "study", [*SMALL, "train.epochs=1", "train.max_batches_per_epoch=1"]
    tune("comirec-sa", random_dataset, out, trials=1, seed=1, overrides=small)
    study = tune("comirec-sa", random_dataset, out, trials=2, seed=1, overrides=small)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.trials[1].params != study.trials[0].params
    again = tune("comirec-sa", random_dataset, tmp_path / "again", trials=1, seed=1, overrides=small)
    assert again.trials[0].params == study.trials[0].params


@pytest.mark.slow
def test_a_trial_left_running_by_a_killed_process_is_failed_when_the_study_continues(random_dataset, tmp_path):
    """`mirec tune` killed with SIGKILL mid-trial leaves that trial RUNNING in the study; while its
    process lives a rerun leaves it alone, and once the process is gone (its heartbeat silent for
    twice --heartbeat) the rerun marks it FAIL, does not count it, and completes its trials."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "mirec.cli", "tune", "--data", str(random_dataset.path), "--out", str(out),
           "--trials", "2", "--seed", "1", "--heartbeat", "2"]
    slow = [*SMALL, "train.epochs=100000", "train.patience=100000"]  # trial 0 runs until killed
    log = (tmp_path / "stderr.txt").open("w")
    p = subprocess.Popen([*cmd, *[a for s in slow for a in ("--set", s)]], stdout=subprocess.DEVNULL,
                         stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    metrics = out / "trials" / "trial-0" / "metrics.jsonl"
    while not metrics.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metrics.exists(), (tmp_path / "stderr.txt").read_text()
    time.sleep(5)  # longer than the grace period of 2 heartbeats: a live trial keeps beating
    assert open_study(out / "optuna.sqlite", "comirec-sa", 1, heartbeat=2).trials[0].state == TrialState.RUNNING
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    study = optuna.load_study(study_name="comirec-sa", storage=f"sqlite:///{out / 'optuna.sqlite'}")
    assert [t.state for t in study.trials] == [TrialState.RUNNING]  # what kill -9 leaves
    time.sleep(5)  # the dead trial's heartbeat is now older than the grace period
    study = tune("comirec-sa", random_dataset, out, trials=2, seed=1, overrides=[*SMALL, "train.epochs=1"],
                 heartbeat=2)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["fail", "complete", "complete"]


def test_the_engine_multiplies_the_rate_by_plateau_decay_after_each_epoch_without_a_better_score(tmp_path):
    """``train.plateau_decay``: an epoch that does not beat the best score so far multiplies every
    group's learning rate by it; each metrics row records the rate its epoch trained at."""
    from mirec.runs import TrainConfig

    scores = iter([0.1, 0.2, 0.15, 0.1, 0.3])

    class Scripted:  # the engine's Task protocol with a validation score given in advance
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        score_name = "score"

        def batches(self, rng):
            return [0]

        def step(self, batch):
            return 0.0, 1

        def validate(self):
            return {"score": next(scores)}

        def saved(self):
            return {}

        def check_resume(self, path, state):
            pass

    task = Scripted()
    r = fit(task, tmp_path / "r", TrainConfig(epochs=5, patience=10, plateau_decay=0.5), progress=False)
    assert [row["lr"] for row in r.history] == [1.0, 1.0, 1.0, 0.5, 0.25]
    assert task.optimizer.param_groups[0]["lr"] == 0.25 and r.best_epoch == 4  # 0.3 beat 0.2: kept
    with pytest.raises(MirecConfigError, match="train.plateau_decay"):
        load(RunConfig, None, ["train.plateau_decay=0"])


def test_the_engine_validates_and_keeps_the_moving_average_of_the_weights(tmp_path):
    """``train.weight_average``: validation, best.pt and the fitted model hold the exponential
    moving average of the weights after each step (starting at the first step's weights), while
    training goes on from the weights as trained; a resumed run carries the average on."""
    from mirec.runs import TrainConfig

    class Counting:  # one weight w; each step adds 1; the validation score is the weight it sees
        def __init__(self):
            self.model = torch.nn.Linear(1, 1, bias=False)
            torch.nn.init.zeros_(self.model.weight)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
            self.score_name, self.stepped_from = "score", []

        def batches(self, rng):
            return [0, 1]

        def step(self, batch):
            self.stepped_from.append(self.model.weight.item())
            with torch.no_grad():
                self.model.weight.add_(1.0)
            return 0.0, 1

        def validate(self):
            return {"score": self.model.weight.item()}

        def saved(self):
            return {}

        def check_resume(self, path, state):
            pass

    lc = TrainConfig(epochs=2, patience=10, weight_average=0.5)
    task = Counting()
    r = fit(task, tmp_path / "r", lc, progress=False)
    # weights 1, 2 | 3, 4; average 1, 1.5 | 2.25, 3.125
    assert [row["valid"]["score"] for row in r.history] == [1.5, 3.125]
    assert task.stepped_from == [0.0, 1.0, 2.0, 3.0]  # the second epoch stepped from 2, not 1.5
    assert task.model.weight.item() == 3.125 and r.best_epoch == 1
    again = Counting()
    fit(again, tmp_path / "s", lc, progress=False, stop_after_epoch=0)
    resumed = Counting()
    r2 = fit(resumed, tmp_path / "s", lc, progress=False, resume=True)
    assert [row["valid"]["score"] for row in r2.history] == [1.5, 3.125]
    assert resumed.stepped_from == [2.0, 3.0]
    fit(Counting(), tmp_path / "plain", TrainConfig(epochs=1), progress=False)
    with pytest.raises(MirecConfigError, match="trained without train.weight_average"):
        fit(Counting(), tmp_path / "plain", lc, progress=False, resume=True)
