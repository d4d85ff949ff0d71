"""Files and training guarantees (docs/guarantees.md): no --out deletes what mirec did not write,
checkpoints load without running code and are checksummed, resume keeps the run, and every
user error on the command line is one line on stderr with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mirec.checkpoint import check_resume, load_checkpoint, save_checkpoint
from mirec.cli import main
from mirec.data.dataset import load_dataset
from mirec.data.synth import SynthConfig, synth_dataset
from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import atomic_dir, atomic_write_bytes, check_output_dir, is_stale_tmp, written_by_mirec
from mirec.train.loop import RunConfig, TrainConfig, train

torch.set_num_threads(1)
TINY = ["--set", "train.epochs=2", "--set", "model_args.dim=8", "--set", "train.batch_size=128",
        "--set", "train.max_batches_per_epoch=2"]


def mirec(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["mirec", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args: str, says: str) -> str:
    """The command exits 2 with one line on stderr that contains ``says``."""
    code, _, err = mirec(capsys, *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert says in err, err
    return err


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(num_users=150, num_categories=4, items_per_category=20, min_len=8,
                      mean_len=12, seed=1)
    return load_dataset(synth_dataset(cfg, tmp_path_factory.mktemp("s") / "ds", progress=False))


@pytest.fixture(scope="module")
def run_dir(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = RunConfig(model="comirec-sa", model_args={"dim": 8, "num_interests": 2},
                    train=TrainConfig(epochs=1, batch_size=128, max_batches_per_epoch=2))
    train(cfg, synth, out, progress=False)
    return out


def victim(tmp_path):
    d = tmp_path / "victim"
    d.mkdir()
    (d / "important.txt").write_text("precious")
    return d


# ------------------------------------------------------------------------------ data loss


def test_out_never_replaces_a_directory_mirec_did_not_write(capsys, tmp_path, synth, run_dir):
    csv = tmp_path / "log.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "".join(f"u{i % 3},i{i % 5},{i}\n" for i in range(30)))
    v = victim(tmp_path)
    commands = [
        ["data", "prepare", "csv", csv, "--k-core", "1", "--out", v],
        ["data", "fetch", "ml-100k", "--out", v, "--cache-dir", tmp_path / "dl"],  # before any download
        ["data", "synth", "--set", "num_users=20", "--out", v],
        ["data", "append", synth.path, csv, "--source", "csv", "--out", v],
        ["export", run_dir, "--out", v],
        ["train", "--data", synth.path, "--out", v, *TINY],
    ]
    for cmd in commands:
        refused(capsys, *cmd, says=f"--out {v}: directory exists and is not")
        assert (v / "important.txt").read_text() == "precious", cmd
    assert sorted(os.listdir(tmp_path)) == ["log.csv", "victim"]  # no .tmp-* or downloads left
    # a mirec artefact of the same kind is replaced as before
    out = tmp_path / "ds"
    assert mirec(capsys, "data", "prepare", "csv", csv, "--k-core", "1", "--out", out)[0] == 0
    assert mirec(capsys, "data", "prepare", "csv", csv, "--k-core", "2", "--out", out)[0] == 0
    assert json.loads((out / "meta.json").read_text())["filters"]["k_core"] == 2
    refused(capsys, "export", run_dir, "--out", out, says="is not a mirec bundle")  # a data set


def test_fetch_into_a_folder_of_data_sets_keeps_the_others(tmp_path, synth):
    from mirec.data.fetch import fetch

    data = tmp_path / "data"
    synth_dataset(SynthConfig(num_users=20, num_categories=2, items_per_category=5, max_interests=1), data / "synth",
                  progress=False)
    with pytest.raises(MirecConfigError, match=f"--out {data}: directory exists"):
        fetch("ml-100k", data, data / "downloads")
    assert os.listdir(data) == ["synth"] and load_dataset(data / "synth").num_users == 20


def test_out_dot_is_a_clear_error_and_leaves_nothing(capsys, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    refused(capsys, "data", "synth", "--set", "num_users=20", "--out", ".",
            says="is the current directory")
    refused(capsys, "data", "synth", "--set", "num_users=20", "--out", "..",
            says="is the current directory or one above it")
    assert os.listdir(work) == [] and os.listdir(tmp_path) == ["work"]


def test_artefact_directories_get_the_umask_mode(tmp_path, run_dir):
    from mirec.serve.bundle import export_bundle

    old = os.umask(0o022)
    try:
        ds = synth_dataset(SynthConfig(num_users=20, num_categories=2, items_per_category=5, max_interests=1),
                           tmp_path / "ds", progress=False)
        bundle = export_bundle(run_dir, tmp_path / "b")
    finally:
        os.umask(old)
    for d in (ds, bundle):
        assert (os.stat(d).st_mode & 0o777) == 0o755, d
        assert (os.stat(d / "items.parquet").st_mode & 0o777) == 0o644


def test_check_output_dir_rules(tmp_path):
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    (tmp_path / "f").write_text("x")
    with pytest.raises(MirecConfigError, match="is not a directory"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(MirecConfigError, match="is a directory"):  # data synth --raw --out DIR
        atomic_write_bytes(tmp_path / "empty", b"x")
    assert os.listdir(tmp_path / "empty") == []


def test_file_out_never_replaces_a_file_mirec_did_not_write(capsys, tmp_path, run_dir):
    """report training / data synth --raw: a user's file at --out is refused (exit 2, one line,
    untouched) unless --overwrite; a file mirec wrote there is replaced."""
    png, csv = tmp_path / "plot.png", tmp_path / "log.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\nsomeone's picture")
    csv.write_text("precious\n")
    refused(capsys, "report", "training", "--run", run_dir, "--out", png, says="--overwrite")
    refused(capsys, "data", "synth", "--set", "num_users=20", "--raw", "csv", "--out", csv,
            says="a file mirec did not write")
    assert png.read_bytes().endswith(b"someone's picture") and csv.read_text() == "precious\n"
    assert mirec(capsys, "report", "training", "--run", run_dir, "--out", png, "--overwrite")[0] == 0
    assert written_by_mirec(png)
    assert mirec(capsys, "report", "training", "--run", run_dir, "--out", png)[0] == 0  # mirec's own
    assert mirec(capsys, "data", "synth", "--set", "num_users=20", "--raw", "csv", "--out", csv,
                 "--overwrite")[0] == 0
    assert csv.read_text().startswith("user,item,category,timestamp\n")
    parquet = tmp_path / "log.parquet"
    assert mirec(capsys, "data", "synth", "--set", "num_users=20", "--raw", "parquet", "--out",
                 parquet)[0] == 0
    assert mirec(capsys, "data", "synth", "--set", "num_users=20", "--raw", "parquet", "--out",
                 parquet)[0] == 0  # marked as mirec's: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "log.parquet", "plot.png"]


def _hold_tmp(final, kill: bool):
    """A subprocess that opens an atomic write of ``final`` and waits in it; ``kill``: then
    kill -9 it. Returns the process and its temporary sibling."""
    code = ("import sys, time; from mirec.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half'); print(tmp, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(final)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists() and tmp.name.startswith(f".{final.name}.tmp-")
    if kill:
        proc.kill()
        proc.wait()
    return proc, tmp


def test_stale_tmp_siblings_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    final = tmp_path / "recs.parquet"
    _, dead = _hold_tmp(final, kill=True)  # kill -9 mid-write: its temporary sibling stays
    live_proc, live = _hold_tmp(final, kill=False)
    try:
        old = tmp_path / ".recs.parquet.tmp-k2j4_x9a"  # an older mirec's name (no pid), days old
        old.write_bytes(b"x")
        os.utime(old, (time.time() - 3 * 86400,) * 2)
        fresh_old = tmp_path / ".recs.parquet.tmp-a8b7c6d5"  # same, but just written: kept
        fresh_old.write_bytes(b"x")
        mine = [tmp_path / ".recs.parquet.tmp-notes.txt", tmp_path / ".recs.parquet.bak",
                tmp_path / ".other.parquet.tmp-k2j4_x9a"]  # not mirec's pattern for this name
        for p in mine:
            p.write_bytes(b"keep")
            os.utime(p, (time.time() - 3 * 86400,) * 2)
        atomic_write_bytes(final, b"new")
        assert not dead.exists() and not old.exists()
        assert live.exists() and fresh_old.exists() and all(p.exists() for p in mine)
    finally:
        live_proc.kill()
        live_proc.wait()
    assert is_stale_tmp(live, final.name) and not is_stale_tmp(mine[0], final.name)
    (tmp_path / "ds").mkdir()
    stale_dir = tmp_path / ".ds.tmp-k2j4_x9a0b1c"  # a directory artefact's (atomic_dir) sibling
    stale_dir.mkdir()
    (stale_dir / "meta.json").write_text("{}")
    os.utime(stale_dir, (time.time() - 3 * 86400,) * 2)
    with atomic_dir(tmp_path / "ds") as d:
        (d / "x").write_text("x")
    assert not stale_dir.exists() and (tmp_path / "ds" / "x").exists()


# ---------------------------------------------------------------------- code execution


class Payload:
    """Unpickling this calls os.system (what a crafted checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_run(tmp_path, run_dir) -> tuple:
    """A copy of a real run whose best.pt also holds a payload that writes ``marker``."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil"
    evil.mkdir()
    ck = torch.load(run_dir / "best.pt", weights_only=False)  # the test trusts its own file
    torch.save({**ck, "x": Payload(marker)}, evil / "best.pt")
    return evil, marker


def test_a_checkpoint_that_runs_code_is_refused(capsys, tmp_path, run_dir):
    from mirec.serve.bundle import export_bundle

    evil, marker = evil_run(tmp_path, run_dir)
    refused(capsys, "export", evil, "--out", tmp_path / "b", says="refused: it asks for posix.system")
    bundle = export_bundle(run_dir, tmp_path / "good")
    refused(capsys, "recommend", bundle, "--history", "1,2", "--ranker", evil,
            says=f"{evil / 'best.pt'}: refused")
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_checkpoints_written_before_with_numpy_scalars_still_load(tmp_path):
    p = tmp_path / "old.pt"
    torch.save({"history": [{"valid": {"auc": np.float64(0.75)}}], "model": {"w": torch.ones(2)}}, p)
    ck = load_checkpoint(p)  # no checksum trailer either: as written before
    assert ck["history"][0]["valid"]["auc"] == 0.75 and type(ck["history"][0]["valid"]["auc"]) is float
    save_checkpoint(p, {**ck, "n": np.int64(3), "a": np.arange(3)})
    again = torch.load(p, weights_only=True)  # plain now: loads with no allow-list at all
    assert again["n"] == 3 and torch.equal(again["a"], torch.arange(3))


# ---------------------------------------------------------------------------- integrity


def test_a_bit_flip_in_best_pt_is_refused_on_export(capsys, tmp_path, run_dir):
    bad = tmp_path / "flipped"
    bad.mkdir()
    data = bytearray((run_dir / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "best.pt").write_bytes(bytes(data))
    refused(capsys, "export", bad, "--out", tmp_path / "b",
            says=f"{bad / 'best.pt'}: checksum mismatch")
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------- resume


def test_resume_keeps_the_runs_settings_and_refuses_another_run(capsys, tmp_path, synth):
    out = tmp_path / "r"
    cfg = RunConfig(model="comirec-sa", model_args={"dim": 8, "num_interests": 2},
                    train=TrainConfig(epochs=3, patience=10, batch_size=128, max_batches_per_epoch=2,
                                      lr=0.005))
    train(cfg, synth, out, progress=False, stop_after_epoch=0)  # as if killed after epoch 0
    other = synth_dataset(SynthConfig(num_users=150, num_categories=4, items_per_category=20,
                                      min_len=8, mean_len=12, seed=2), tmp_path / "other", progress=False)
    refused(capsys, "train", "--resume", "--out", out, "--data", other, says="--data: ")
    ck = load_checkpoint(out / "last.pt")
    save_checkpoint(out / "last.pt", {k: v for k, v in ck.items() if k not in ("dataset_checksum", "data")})
    refused(capsys, "train", "--resume", "--out", out, "--data", other,  # a last.pt saved before
            says="--data: ")  # it recorded the data set: best.pt's checksum decides
    refused(capsys, "train", "--resume", "--out", out, "--data", synth.path, "--model", "mind",
            says="--model: ")
    refused(capsys, "train", "--resume", "--out", out, "--data", synth.path, "--set", "train.lr=0.1",
            says="was started with train.lr=0.005, this run has 0.1")
    code, _, err = mirec(capsys, "train", "--resume", "--out", out, "--data", synth.path)
    assert code == 0, err
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]  # the run's train.epochs=3, not the default 50
    assert load_checkpoint(out / "last.pt")["config"]["train"]["lr"] == 0.005
    code, _, err = mirec(capsys, "train", "--resume", "--out", out, "--data", synth.path,
                         "--set", "train.epochs=4")  # allowed: the run goes on one more epoch
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def test_check_resume_names_the_field():
    saved = {"config": {"model": "din", "train": {"epochs": 5, "lr": 0.1}}, "dataset_checksum": "a"}
    check_resume("p", saved, {"config": {"model": "din", "train": {"epochs": 9, "lr": 0.1}},
                              "dataset_checksum": "a"})
    with pytest.raises(MirecConfigError, match=r"train\.lr=0\.1, this run has 0\.2"):
        check_resume("p", saved, {"config": {"model": "din", "train": {"epochs": 5, "lr": 0.2}},
                                  "dataset_checksum": "a"})
    with pytest.raises(MirecConfigError, match="--data"):
        check_resume("p", saved, {**saved, "dataset_checksum": "b"})


def test_corrupt_checkpoint_errors_are_data_errors(tmp_path):
    p = tmp_path / "x.pt"
    save_checkpoint(p, {"a": 1})
    p.write_bytes(p.read_bytes()[:-1] + b"0")
    with pytest.raises(MirecDataError, match="checksum mismatch"):
        load_checkpoint(p)


# ------------------------------------------------------------------------- CLI contract


def leaf_commands() -> list[str]:
    """Every runnable command of the Typer app, as its words ("data prepare", "train", ...)."""
    import typer

    from mirec.cli import app

    def walk(cmd, words):
        subs = getattr(cmd, "commands", None)
        if subs is None:
            return [" ".join(words)]
        return [leaf for name, sub in subs.items() for leaf in walk(sub, [*words, name])]

    return walk(typer.main.get_command(app), [])


def user_errors(tmp_path) -> dict[str, list[list[str]]]:
    """Per command, invocations a user can get wrong: a missing file, a bad value."""
    csv = tmp_path / "log.csv"
    csv.write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    gone, out = str(tmp_path / "missing"), str(tmp_path / "out")
    return {
        "data prepare": [["csv", gone + ".csv", "--out", out], ["csv", str(csv), "--k-core", "0", "--out", out],
                         ["csv", str(csv), "--separator", ";;", "--out", out], ["nope", str(csv)],
                         ["parquet", str(tmp_path), "--out", out]],  # a directory without parts
        "data fetch": [["nope", "--out", out], ["ml-100k", "--source", "nope", "--out", out]],
        "data synth": [["--set", "num_users=-1", "--out", out], ["--config", gone + ".toml"],
                       ["--raw", "xml", "--out", out + ".xml"], ["--preset", "tmall", "--out", out]],
        "data info": [[gone]],
        "data append": [[gone, gone + ".sqlite", "--out", out], [str(csv), gone + ".sqlite", "--out", out]],
        "refresh": [["--run", gone, "--events", gone + ".sqlite", "--data", gone, "--out", out],
                    ["--run", gone, "--events", gone, "--data", gone, "--out", out, "--min-recall", "high"],
                    ["--run", gone, "--events", gone, "--data", gone]],  # no --out
        "train": [["--data", gone, "--out", out], ["--task", "nope"], ["--seeds", "a,b", "--data", gone],
                  ["--set", "train.lr=fast", "--data", gone], ["--resume", "--data", gone, "--out", out],
                  ["--set", "train.optimizer=lazy", "--data", gone],
                  ["--candidates", gone, "--out", out],
                  ["--task", "ctr", "--candidates", gone, "--data", gone, "--out", out]],
        "evaluate": [["--data", gone, "--out", out], ["--model", "nope", "--data", gone], ["--run", gone],
                     ["--run", gone, "--ranker", gone], ["--ranker", gone],
                     ["--index", "annoy", "--data", gone]],
        "demo": [["--threads", "many"]],
        "export": [[gone, "--out", out]],
        "index build": [[gone], [gone, "--index", "nope"]],
        "recommend": [[gone, "--user", "1"], [gone], [gone, "--all-users"],
                      [gone, "--all-users", "--out", out + ".parquet"],
                      [gone, "--user", "1", "--new-items", gone + ".csv"]],
        "serve": [[gone, "--store", str(tmp_path / "s.sqlite")], [gone, "--port", "http"],
                  [gone, "--log-format", "xml"], [gone, "--unavailable", gone + ".txt"]],
        "report diversity": [["--run", gone], ["--run", gone, "--lambdas", "a,b"],
                             ["--run", gone, "--ranker", gone]],
        "report training": [["--run", gone]],
        "report interests": [["--bundle", gone, "--user", "1"]],
        "data sources": [],
        "tune": [["--data", gone, "--out", out], ["--model", "din", "--data", gone, "--out", out],
                 ["--trials", "0", "--data", gone, "--out", out], ["--seed", "-1", "--data", gone, "--out", out],
                 ["--heartbeat", "0", "--data", gone, "--out", out]],  # takes no arguments: only the unknown option below
    }


def test_every_command_user_error_is_one_line_and_exit_2(capsys, tmp_path):
    """The CLI's contract, over the whole command set: a user error (missing file, bad value,
    unknown option) exits 2 with exactly one line on stderr and no traceback; nothing is
    written. A new command must add its cases to user_errors."""
    cases = user_errors(tmp_path)
    assert sorted(cases) == sorted(leaf_commands())
    for command, invocations in cases.items():
        for args in [*invocations, ["--no-such-option"]]:
            code, out, err = mirec(capsys, *command.split(), *args)
            assert code == 2, (command, args, err)
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (command, args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


HOSTILE_SETTINGS = [  # (arguments, what the one line says): each refused before anything is allocated
    (["--set", "train.lr=nan"], "train.lr: must be > 0 and finite, got nan"),
    (["--set", "train.weight_decay=-5"], "train.weight_decay: must be >= 0 and finite, got -5.0"),
    (["--set", "train.temperature=inf"], "train.temperature: must be > 0 and finite, got inf"),
    (["--set", "model_args.dim=10000000000"], "model_args.dim: must be in [1, 16384], got 10000000000"),
    (["--set", "split.max_len=1000000"], "split.max_len: must be in [1, 16384]"),
    (["--set", "train.num_negatives=100000000000"], "train.num_negatives: must be in [1, 1048576]"),
    (["--set", "train.seed=99999999999999999999"], "train.seed: must be >= 0, got 99999999999999999999"),
    # every size within its maximum, but 88 TB of parameters, gradients and Adam's moments
    (["--model", "comirec-dr", "--set", "model_args.dim=16384", "--set", "model_args.num_interests=1024"],
     "model_args: comirec-dr at these settings over 81 items needs 88.0 TB for its parameters"),
    (["--task", "ctr", "--model", "din", "--set", "model_args.dropout=nan"],
     "model_args.dropout: must be in [0, 1), got nan"),
    (["--task", "ctr", "--model", "dien", "--set", "model_args.hidden=80,1000000000"],
     "model_args.hidden[1]: must be in [1, 16384], got 1000000000"),
]


@pytest.mark.parametrize("args, says", HOSTILE_SETTINGS, ids=[" ".join(a[-1:]) for a, _ in HOSTILE_SETTINGS])
def test_hostile_settings_are_one_line_and_exit_2_before_anything_is_allocated(capsys, tmp_path, synth,
                                                                                args, says):
    """Non-finite, negative and allocation-sized values (`mirec train --set ...`) stop with one line
    naming the key, exit 2, and leave no run directory; none gets as far as a traceback or a run."""
    out = tmp_path / "run"
    refused(capsys, "train", "--data", str(synth.path), "--out", str(out), *args, *TINY[:2], says=says)
    assert not out.exists()


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(capsys, tmp_path, synth):
    bad = tmp_path / "bad.toml"
    bad.write_bytes('model = "comirec-sa"\n# caf\u00e9\n[train]\nepochs = 1\n'.encode("latin-1"))
    refused(capsys, "train", "--data", str(synth.path), "--out", str(tmp_path / "run"), "--config", str(bad),
            says=f"{bad}: not UTF-8 text (line 2, byte 26: b'\\xe9'); TOML config files are UTF-8")
    refused(capsys, "tune", "--data", str(synth.path), "--out", str(tmp_path / "run"), "--set", "train.lr=inf",
            says="train.lr: must be > 0 and finite, got inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


# ------------------------------------------------------------------------------- crash


@pytest.mark.slow
def test_kill_9_during_an_epoch_then_resume_is_the_uninterrupted_run(tmp_path, synth):
    """`mirec train` killed with SIGKILL during an epoch leaves whole checkpoints; --resume then
    ends with the parameters and test metrics of a run that was never interrupted."""
    import signal
    import subprocess
    import time

    from mirec.config import load
    from mirec.experiment import train_seeds

    sets = ["train.epochs=6", "train.patience=10", "model_args.dim=8", "train.batch_size=32"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mirec.cli", "train", "--data", str(synth.path), "--out", str(out)]
    p = subprocess.Popen([*cmd, *[a for s in sets for a in ("--set", s)]],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)  # epoch 0 is saved: the run is in epoch 1 now
    assert p.wait() == -signal.SIGKILL
    assert not (out / "results.json").exists()
    killed_at = load_checkpoint(out / "last.pt")["epoch"]  # whole, checksum verified
    assert killed_at < 5
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    cfg = load(RunConfig, None, ["model=comirec-sa", *sets])
    full = train_seeds(cfg, synth, [2020], tmp_path / "full", progress=False).seeds[0]
    resumed = load_checkpoint(out / "best.pt")
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed["model"][name]), name
    got = json.loads((out / "results.json").read_text())
    want = json.loads((tmp_path / "full" / "results.json").read_text())
    assert got["metrics"] == want["metrics"] and got["best_epochs"] == want["best_epochs"]
