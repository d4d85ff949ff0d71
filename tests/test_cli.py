"""The command line end to end on small files: prepare -> info -> evaluate, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args, ok=True):
    p = subprocess.run([sys.executable, "-m", "mirec.cli", *args], capture_output=True,
                       text=True, env={"COLUMNS": "150", "PATH": "/usr/bin:/bin"})
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture
def log_csv(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["uid,iid,when,genre"]
    for u in range(60):
        for t, i in enumerate(rng.choice(80, size=15, replace=False)):
            lines.append(f"u{u},m{i},{1000 + t},g{i % 4}")
    p = tmp_path / "log.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_prepare_evaluate_roundtrip(tmp_path, log_csv):
    out = tmp_path / "ds"
    p = run("data", "prepare", "csv", str(log_csv), "--out", str(out), "--user-col", "uid",
            "--item-col", "iid", "--time-col", "when", "--category-col", "genre")
    assert f"wrote {out}" in p.stdout.replace("\n", "")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"]["after_k_core"]["users"] == 60
    assert meta["counts"]["after_k_core"]["items"] > 50
    runs = tmp_path / "runs"
    p = run("evaluate", "--model", "most-popular", "--data", str(out), "--out", str(runs),
            "--seeds", "1,2")
    assert "most-popular" in p.stdout and "Recall" in p.stdout
    res = json.loads((runs / "results.json").read_text())
    assert res["seeds"] == [1, 2] and 0 <= res["metrics"]["recall@20"] <= 1


def test_bad_row_names_file_line_column(tmp_path, log_csv):
    text = log_csv.read_text().splitlines()
    text[5] = "u0,m1,yesterday-ish,g1"
    log_csv.write_text("\n".join(text) + "\n")
    out = tmp_path / "ds"
    p = run("data", "prepare", "csv", str(log_csv), "--out", str(out), "--user-col", "uid",
            "--item-col", "iid", "--time-col", "when", ok=False)
    assert p.returncode == 2
    msg = " ".join(p.stderr.split())
    assert f"{log_csv.name}:6: column 'when': cannot read 'yesterday-ish'" in msg
    assert not out.exists()
    p = run("data", "prepare", "csv", str(log_csv), "--out", str(out), "--user-col", "uid",
            "--item-col", "iid", "--time-col", "when", "--on-bad-rows", "skip")
    assert json.loads((out / "meta.json").read_text())["counts"]["bad_rows_skipped"] == 1


def test_every_command_has_help():
    for cmd in (["--help"], ["data", "--help"], ["data", "prepare", "--help"],
                ["data", "fetch", "--help"], ["data", "synth", "--help"],
                ["data", "info", "--help"], ["evaluate", "--help"], ["demo", "--help"]):
        p = run(*cmd)
        assert "Usage" in p.stdout


def test_train_help_names_every_trainable_model():
    """The --model help is written by hand; it must list what the registry trains."""
    from mirec.models.registry import of_task

    text = " ".join(run("train", "--help").stdout.replace("│", " ").split())
    for task in ("retrieval", "ranking"):
        for name in of_task(task):
            assert name in text, name


def test_unknown_model_is_a_clear_error(tmp_path):
    p = run("evaluate", "--model", "nope", "--data", str(tmp_path), ok=False)
    assert p.returncode == 2
    assert "no such data set directory" in p.stderr or "unknown model" in p.stderr
