"""Hyper-parameter search on validation users: ``mirec tune`` (Optuna, TPE with median pruning).

Each trial trains the model once (seed ``seed``: one split, one initialisation) with settings
drawn from :func:`search_space` and reports its validation Recall@50 after every epoch; the
median pruner stops a trial whose curve falls below the median of earlier trials at the same
epoch. The trial's value is its best validation Recall@50. Test users never enter the choice:
trials do not evaluate them at all.

The study lives in ``OUT/optuna.sqlite`` (Optuna's storage), so running the same command again
continues it until ``trials`` trials have completed or been pruned. A continued study draws new
settings: its sampler is seeded with (``seed``, the number of trials already in the study), so its
random start-up trials do not repeat the first run's. A running trial records a heartbeat in
the study every ``heartbeat`` seconds (Optuna's ``heartbeat_interval``); a trial left running
by a process that died (kill -9, a lost machine) stops beating, and once it has been silent for
twice that long, the next run marks it failed (Optuna's ``fail_stale_trials``) and does not
count it. ``OUT/trials.csv`` lists every trial and ``OUT/best.toml`` holds the best trial's
settings in the form ``mirec train --config`` takes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from mirec.config import apply_overrides, load, to_dict
from mirec.data.dataset import Dataset, load_dataset
from mirec.errors import MirecConfigError
from mirec.io import atomic_write_bytes, check_output_dir
from mirec.models.registry import spec
from mirec.runs import RunConfig
from mirec.train.loop import train

# (kind, low, high) per setting: "log" and "float" ranges, "int" ranges, "cat" choices
COMMON: dict[str, tuple] = {
    "train.temperature": ("log", 0.03, 0.5),
    "train.lr": ("log", 3e-4, 1e-2),
    "train.weight_decay": ("cat", (0.0, 1e-6, 1e-5, 1e-4)),
}
MODEL_SPACE: dict[str, dict[str, tuple]] = {  # each model's own settings
    "comirec-sa": {"model_args.num_interests": ("int", 2, 8), "model_args.hidden_factor": ("cat", (1, 2, 4)),
                   "train.routing_reg": ("cat", (0.0, 3.0, 10.0, 30.0)),
                   "model_args.encoder_layers": ("cat", (0, 1)),
                   "model_args.encoder_dropout": ("cat", (0.2, 0.5))},
    "comirec-dr": {"model_args.num_interests": ("int", 2, 8), "model_args.routing_iters": ("int", 2, 4)},
    "mind": {"model_args.num_interests": ("int", 2, 8), "model_args.routing_iters": ("int", 2, 4)},
    "youtube-dnn": {"model_args.dropout": ("float", 0.0, 0.5)},
    "gru4rec": {"model_args.num_layers": ("int", 1, 2), "model_args.dropout": ("float", 0.0, 0.5)},
    "sasrec": {"model_args.num_layers": ("int", 1, 3), "model_args.dropout": ("float", 0.0, 0.5)},
}


def search_space(model: str) -> dict[str, tuple]:
    return {**COMMON, **MODEL_SPACE.get(model, {})}


def suggest(trial: optuna.Trial, space: dict[str, tuple]) -> dict[str, Any]:
    out = {}
    for name, (kind, *args) in space.items():
        if kind == "log":
            out[name] = trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, args[0], args[1])
        elif kind == "int":
            out[name] = trial.suggest_int(name, args[0], args[1])
        else:
            out[name] = trial.suggest_categorical(name, list(args[0]))
    return out


HEARTBEAT_SECONDS = 30  # a trial silent for twice this long is taken for dead


def tune(model: str, data: str | Path | Dataset, out: str | Path, trials: int = 20, seed: int = 2020,
         overrides: list[str] | None = None, log: Callable[[str], None] = lambda s: None,
         heartbeat: int = HEARTBEAT_SECONDS) -> optuna.Study:
    """Run (or continue) the study in ``out`` until ``trials`` trials have completed or been
    pruned; returns it. ``overrides`` (``--set``) fix settings for every trial, e.g.
    ``train.epochs=20``. Trials left running by a dead process (silent for ``2 * heartbeat``
    seconds) are marked failed first."""
    spec(model, "retrieval", field="--model")
    for name, value, least in (("--trials", trials, 1), ("--seed", seed, 0), ("--heartbeat", heartbeat, 1)):
        if value < least:
            raise MirecConfigError(f"{name}: must be >= {least}, got {value}")
    out = Path(out)
    check_output_dir(out, may_hold=lambda p: (p / "optuna.sqlite").exists())
    fixed = [f"model={model}", *(overrides or [])]
    load(RunConfig, None, fixed)  # a bad --set fails here, before any trial
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    out.mkdir(parents=True, exist_ok=True)
    space = search_space(model)
    study = open_study(out / "optuna.sqlite", model, seed, heartbeat)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        cfg = load(RunConfig, None, [*fixed, *(f"{k}={v}" for k, v in params.items())])
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                  split=dataclasses.replace(cfg.split, seed=seed))

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        r = train(cfg, ds, out / "trials" / f"trial-{trial.number}", progress=False, on_epoch=report,
                  run_test=False)
        return r.best_valid["recall@50"]

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = study.best_trial if any(t.value is not None for t in study.trials) else None
        log(f"trial {trial.number} {trial.state.name.lower()}: valid recall@50 "
            f"{'-' if trial.value is None else f'{trial.value:.4f}'}"
            + (f" (best {best.value:.4f}, trial {best.number})" if best else ""))
        write_reports(study, out, fixed)

    done = len(study.get_trials(deepcopy=False, states=COUNTED))
    if done < trials:
        study.optimize(objective, n_trials=trials - done, callbacks=[progress], catch=())
    write_reports(study, out, fixed)
    return study


COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts; failed trials do not


def open_study(path: Path, model: str, seed: int, heartbeat: int) -> optuna.Study:
    """The study in SQLite file ``path`` (created if new), with its stale trials failed and its
    sampler seeded for the trials it already holds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 3-5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}", heartbeat_interval=heartbeat)
        study = optuna.create_study(
            study_name=model, storage=storage, load_if_exists=True, direction="maximize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
        optuna.storages.fail_stale_trials(study)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, len(study.trials)))
    return study


def sampler_seed(seed: int, existing: int) -> int:
    """The sampler's seed for a study that holds ``existing`` trials: ``seed`` for a new study (as
    before resuming existed), else one drawn from (seed, existing), so a continued study does not
    replay the random start-up trials of its first run."""
    return seed if existing == 0 else int(np.random.SeedSequence([seed, existing]).generate_state(1)[0])


def write_reports(study: optuna.Study, out: Path, fixed: list[str]) -> None:
    """``trials.csv`` (every trial) and ``best.toml`` (the best trial, for ``mirec train --config``)."""
    names = sorted({k for t in study.trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", "valid_recall@50", "epochs", *names])
    for t in study.trials:
        w.writerow([t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6f}",
                    len(t.intermediate_values), *(t.params.get(k, "") for k in names)])
    atomic_write_bytes(out / "trials.csv", buf.getvalue().encode())
    if any(t.value is not None for t in study.trials):
        atomic_write_bytes(out / "best.toml", toml(fixed, study.best_trial).encode())


def toml(fixed: list[str], trial: optuna.trial.FrozenTrial) -> str:
    """The best trial's settings as TOML (the ``--set`` values the study fixed, then the searched
    ones), the form ``mirec train --config`` takes."""
    sections = apply_overrides({}, [s for s in fixed if not s.startswith("model=")])
    for key, value in trial.params.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    typed = to_dict(load(RunConfig, None, fixed))  # "20" -> 20 for the typed sections
    for section, values in sections.items():
        for name in values:
            if section in ("train", "split", "eval"):
                if f"{section}.{name}" not in trial.params:
                    values[name] = typed[section][name]
    model = next(s.split("=", 1)[1] for s in fixed if s.startswith("model="))
    lines = [f"# mirec tune: trial {trial.number}, valid recall@50 {trial.value:.4f}", f'model = "{model}"']
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)
