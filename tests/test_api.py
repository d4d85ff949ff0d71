"""The Python API: the README's example runs as written, and the layers import one way."""

from __future__ import annotations

import ast
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
