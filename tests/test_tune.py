"""`mirec tune`: Optuna on validation users, resumable, a TOML `mirec train --config` takes."""

from __future__ import annotations

import csv
import json

import pytest

from mirec.config import load
from mirec.errors import MirecConfigError
from mirec.runs import RunConfig
from mirec.train.engine import fit
from mirec.train.loop import RetrievalTask
from mirec.tune import search_space, tune

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
