"""The report plots: training curves (one line per seed), a user's interests, accuracy-diversity.

A two-seed ComiRec-SA run of a few epochs on a small planted set is trained here; every command
is run through the CLI and its PNG checked: the magic bytes, a non-trivial size, and that
Matplotlib decodes it into an image of the figure's size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mirec.cli import app
from mirec.errors import MirecConfigError, MirecDataError
from mirec.plots import interests_figure, pca_2d, training_figure
from mirec.serve.bundle import export_bundle, load_bundle
from tests.conftest import planted_comirec_run

torch.set_num_threads(1)
SEEDS = [1, 2]
EPOCHS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    planted_comirec_run(root, SEEDS, EPOCHS, seed=4)
    return root


def png_ok(path, min_bytes=5000) -> np.ndarray:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.01  # something is drawn, not a blank canvas
    return img


def test_training_figure_has_one_line_per_seed_on_every_panel(run):
    fig = training_figure(run / "run")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "validation recall@50", "validation ndcg@50"]
    for ax in fig.axes:
        lines = ax.get_lines()
        assert len(lines) == len(SEEDS)
        for line in lines:
            assert list(line.get_xdata()) == list(range(EPOCHS))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["seed 1", "seed 2"]
    # the loss panel plots what metrics.jsonl says
    rows = [json.loads(x) for x in (run / "run" / "seed-2" / "metrics.jsonl").read_text().splitlines()]
    assert np.allclose(fig.axes[0].get_lines()[1].get_ydata(), [r["loss"] for r in rows])


def test_training_figure_of_a_one_seed_run_and_bad_files(run, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "metrics.jsonl").write_text((run / "run" / "seed-1" / "metrics.jsonl").read_text())
    assert [len(ax.get_lines()) for ax in training_figure(one).axes] == [1, 1, 1]
    (one / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.0, "valid": {}}\n{"epoch": 1}\n')
    with pytest.raises(MirecDataError, match=r"metrics.jsonl:2: not a metrics row"):
        training_figure(one)
    with pytest.raises(MirecDataError, match="no metrics.jsonl"):
        training_figure(tmp_path)


def test_pca_2d_finds_the_plane_of_the_points():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(200, 2)) * [5.0, 2.0]  # spread along two axes of a 6-D space
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0][:, :2]  # (6, 2) orthonormal
    points = plane @ basis.T + 3.0  # (200, 6), shifted
    xy = pca_2d(points, points)
    # a rotation/reflection of the original plane: same pairwise distances
    d = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    assert np.allclose(d(xy), d(plane), atol=1e-8)


def test_interests_figure_places_each_live_interest(run):
    bundle = load_bundle(export_bundle(run / "run", run / "bundle"))
    user = sorted(bundle.user_histories)[0]
    fig = interests_figure(bundle, user)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels and all(t.startswith("interest ") for t in labels)
    with pytest.raises(MirecConfigError, match="'nobody' is not a user"):
        interests_figure(bundle, "nobody")


def test_report_commands_write_valid_pngs(run, tmp_path):
    cli = CliRunner()
    out = tmp_path / "training.png"
    r = cli.invoke(app, ["report", "training", "--run", str(run / "run"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert str(out) in r.output.replace("\n", "")
    png_ok(out, 20_000)

    bundle = run / "bundle-cli"
    export_bundle(run / "run", bundle)
    user = sorted(load_bundle(bundle).user_histories)[0]
    out = tmp_path / "interests.png"
    r = cli.invoke(app, ["report", "interests", "--bundle", str(bundle), "--user", user, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert str(out) in r.output.replace("\n", "")
    png_ok(out, 20_000)

    r = cli.invoke(app, ["report", "diversity", "--run", str(run / "run"), "--lambdas", "0,1",
                         "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    png_ok(tmp_path / "diversity.png", 10_000)
