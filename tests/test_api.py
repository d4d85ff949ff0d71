"""The Python API: the README's example runs as written, and the layers import one way."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "mirec.fit(" in b)


def write_ml100k(d: Path) -> None:
    """A MovieLens-100K-shaped directory: 60 users x 25 ratings over 50 films, user 196 among them."""
    rng = np.random.default_rng(0)
    d.mkdir()
    rows = []
    for u in list(range(1, 60)) + [196]:
        for t, i in enumerate(rng.choice(np.arange(1, 51), 25, replace=False)):
            rows.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + 1000 * t}")
    (d / "u.data").write_text("\n".join(rows) + "\n")
    zeros = "|".join(["0"] * 18)
    (d / "u.item").write_text("".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x|1|{zeros}\n"
                                      for i in range(1, 51)), encoding="latin-1")
    (d / "u.user").write_text("".join(f"{u}|30|M|other|00000\n" for u in list(range(1, 60)) + [196]))


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    write_ml100k(tmp_path / "ml")
    code = readme_example().replace("path/to/ml-100k", str(tmp_path / "ml"))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert 0 <= float(lines[0]) <= 1  # run.metrics["recall@50"]
    assert "RecommendResult" in lines[1] and "user_id='196'" in lines[1]
    assert (tmp_path / "runs/sa/results.json").exists() and (tmp_path / "bundles/sa/manifest.json").exists()


def test_import_mirec_is_light_and_the_api_survives_subpackage_imports():
    code = ("import sys, mirec; heavy = {'torch', 'polars', 'faiss'} & set(sys.modules); "
            "assert not heavy, heavy; import mirec.train.engine; help(mirec.fit); mirec.Recommender; "
            "assert callable(mirec.fit) and callable(mirec.evaluate) and callable(mirec.export)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (relative imports resolved), with its line."""
    pkg = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts[:-1])
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - n.level + 1] + ([base] if base else []))
            out += [(n.lineno, base)] + [(n.lineno, f"{base}.{a.name}") for a in n.names]
    return out


def test_layers_import_one_way():
    rules = {"data": ("mirec.models", "mirec.train", "mirec.serve", "mirec.eval", "mirec.experiment",
                      "mirec.runs", "mirec.api"),
             "models": ("mirec.train", "mirec.serve", "mirec.experiment", "mirec.api"),
             "serve": ("mirec.train", "mirec.experiment", "mirec.api"),
             "eval": ("mirec.train", "mirec.experiment", "mirec.api")}
    bad = [f"{f.relative_to(ROOT)}:{line} -> {m}" for d, banned in rules.items()
           for f in (ROOT / "src/mirec" / d).rglob("*.py") for line, m in imports(f)
           if m.startswith(banned)]
    assert not bad, bad
    # runs.py is what serving and evaluation load runs with: it must not pull in training
    assert not [m for _, m in imports(ROOT / "src/mirec/runs.py") if m.startswith("mirec.train")]


def test_opening_a_bundle_reads_one_way():
    """The serving modules in data-path order: each imports only modules before it (issue 41:
    recommender.py no longer imports service.py to open a bundle)."""
    order = ["index", "store", "bundle", "catalogue", "pipeline", "recommender", "service", "app"]
    serve = ROOT / "src/mirec/serve"
    back = [f"{name}.py:{line} -> {m}" for i, name in enumerate(order) for line, m in imports(serve / f"{name}.py")
            if any(m == f"mirec.serve.{later}" for later in order[i:])]
    assert not back, back


SMALL = {"model_args": {"dim": 8, "num_interests": 2}, "train": {"epochs": 1, "batch_size": 64}}


def test_resuming_a_multi_seed_run_takes_its_seeds_and_starts_a_seed_never_begun(random_dataset, tmp_path):
    import mirec

    out = tmp_path / "run"
    mirec.fit(model="comirec-sa", data=random_dataset, out=out, seeds=[1, 2], progress=False, **SMALL)
    for f in (out / "seed-2").iterdir():  # as if killed before seed 2 began: its directory is empty
        f.unlink()
    with open(out / "seed-1" / "metrics.jsonl", "a") as f:  # a row written after last.pt
        f.write('{"epoch": 0, "loss": 1.0, "valid": {}}\n')
    run = mirec.fit(data=random_dataset, out=out, resume=True, progress=False, train={"epochs": 2})
    assert [s.seed for s in run.seeds] == [1, 2] and (out / "seed-2" / "best.pt").exists()
    epochs = [json.loads(line)["epoch"] for line in (out / "seed-1" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # rewritten from last.pt's history, then the resumed epoch


def test_a_new_run_replaces_an_old_runs_files(random_dataset, tmp_path):
    import mirec

    out = tmp_path / "run"
    mirec.fit(model="comirec-sa", data=random_dataset, out=out, seeds=[1], progress=False, **SMALL)
    assert (out / "best.pt").exists()
    run = mirec.fit(model="comirec-sa", data=random_dataset, out=out, seeds=[1, 2], progress=False, **SMALL)
    assert not (out / "best.pt").exists() and not (out / "metrics.jsonl").exists()
    assert mirec.evaluate(run=out).metrics == pytest.approx(run.metrics)
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["model_args"]["hidden_factor"] == 1  # the full config, defaults included


def test_settings_may_be_dotted_or_nested_and_evaluate_keeps_the_runs_eval(random_dataset, tmp_path):
    import mirec

    a = mirec.evaluate(model="most-popular", data=random_dataset, **{"split.max_len": 5, "eval.ns": "5,10"})
    b = mirec.evaluate(model="most-popular", data=random_dataset, split={"max_len": 5}, eval={"ns": [5, 10]})
    assert a.metrics == b.metrics and set(a.metrics) >= {"recall@5", "recall@10"}
    run = mirec.fit(model="comirec-sa", data=random_dataset, out=tmp_path / "r", seeds=[1], progress=False,
                    eval={"ns": [10]}, **SMALL)
    assert set(mirec.evaluate(run=run.path).metrics) == set(run.metrics)  # the run's eval.ns
    assert "recall@10" in mirec.evaluate(run=run.path, eval={"exclude_history": False}).metrics
    with pytest.raises(mirec.MirecConfigError, match="re-evaluating a run takes eval settings only"):
        mirec.evaluate(run=run.path, train={"epochs": 3})


def test_a_set_model_key_is_the_model_not_a_crash(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mirec.cli", "train", "--set", "model=nope", "--data",
                        str(tmp_path / "none"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "nope" in p.stderr, p.stderr
