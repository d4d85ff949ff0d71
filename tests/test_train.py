"""The training loop: learning a planted structure, resuming, checkpoints, the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mirec.checkpoint import load_checkpoint
from mirec.data.dataset import load_dataset
from mirec.data.split import windows
from mirec.data.synth import SynthConfig, synth_dataset
from mirec.errors import MirecConfigError, MirecDataError
from mirec.experiment import evaluate_baseline, evaluate_run, train_seeds
from mirec.train.loop import LossModule, RunConfig, TrainConfig, compiled, cxx_compiler, setup, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(num_users=400, num_categories=8, items_per_category=15, max_interests=2,
                      stickiness=0.9, noise=0.0, min_len=8, mean_len=20, seed=3)
    path = tmp_path_factory.mktemp("synth") / "ds"
    synth_dataset(cfg, path, progress=False)
    return load_dataset(path)


def small(model="comirec-sa", **train):
    t = dict(epochs=4, batch_size=128, lr=0.01, patience=10, temperature=0.2)
    t.update(train)
    return RunConfig(model=model, model_args={"dim": 16, "num_interests": 2}
                     if model != "youtube-dnn" else {"dim": 16}, train=TrainConfig(**t))


@pytest.mark.parametrize("model", ["comirec-sa", "mind", "youtube-dnn"])
def test_planted_structure_is_learned(synth, tmp_path, model):
    r = train(small(model), synth, tmp_path / model, progress=False)
    mp = evaluate_baseline("most-popular", synth, [2020])
    assert r.test["recall@20"] > 1.5 * mp.mean["recall@20"], (r.test, mp.mean)
    lines = (tmp_path / model / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["loss"] > json.loads(lines[-1])["loss"]


def test_resume_gives_the_same_parameters(synth, tmp_path):
    cfg = small(epochs=3, max_batches_per_epoch=5)
    full = train(cfg, synth, tmp_path / "full", progress=False)
    train(cfg, synth, tmp_path / "cut", progress=False, stop_after_epoch=0)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    resumed = train(cfg, synth, tmp_path / "cut", resume=True, progress=False)
    for (name, a), (_, b) in zip(full.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.test == full.test
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


def test_checkpoints_keep_every_model_field(synth, tmp_path, monkeypatch):
    """A saved run records the model's defaults too, so that a later change of a default
    cannot change what it rebuilds into (here: the hidden factor's default changes after the
    run was saved, and re-evaluation still rebuilds the trained shapes)."""
    import dataclasses

    from mirec.models.comirec_sa import ComiRecSAConfig
    from mirec.models.registry import SPECS

    cfg = small(epochs=1, max_batches_per_epoch=2)
    train_seeds(cfg, synth, [1], tmp_path / "r", progress=False)
    for name in ("best.pt", "last.pt"):
        margs = load_checkpoint(tmp_path / "r" / name)["config"]["model_args"]
        assert margs["hidden_factor"] == 1 and margs["dropout"] == 0.0  # nobody set these
        assert margs["dim"] == 16 and margs["max_len"] == cfg.split.max_len
    before = evaluate_run(tmp_path / "r").mean
    @dataclasses.dataclass
    class NewDefault(ComiRecSAConfig):  # a later release changes a default
        hidden_factor: int = 2

    monkeypatch.setitem(SPECS, "comirec-sa", dataclasses.replace(SPECS["comirec-sa"], config=NewDefault))
    assert evaluate_run(tmp_path / "r").mean == before


def test_resume_with_another_model_setting_names_the_field(synth, tmp_path):
    """Other model settings (or another history window) than the run's are refused with the
    setting named; a run saved before checkpoints kept every field, its --set values as
    strings, still resumes with the same settings."""
    import dataclasses

    from mirec.checkpoint import save_checkpoint
    from mirec.data.split import SplitConfig

    cfg = small(epochs=2, max_batches_per_epoch=2)
    cfg.model_args["hidden_factor"] = 4  # as runs of that time had (test_a_comirec_sa_run_saved_...)
    train(cfg, synth, tmp_path / "r", progress=False, stop_after_epoch=0)
    other = small(epochs=2, max_batches_per_epoch=2)
    other.model_args.update(num_interests=3, hidden_factor=4)
    with pytest.raises(MirecConfigError, match=r"model_args\.num_interests=2, this run has 3"):
        train(other, synth, tmp_path / "r", resume=True, progress=False)
    longer = dataclasses.replace(cfg, split=SplitConfig(max_len=cfg.split.max_len + 5))
    with pytest.raises(MirecConfigError, match=r"split\.max_len=20, this run has 25"):
        train(longer, synth, tmp_path / "r", resume=True, progress=False)
    last = tmp_path / "r" / "last.pt"
    ck = load_checkpoint(last)
    ck["config"]["model_args"] = {"dim": "16", "num_interests": "2"}  # as older runs saved them
    save_checkpoint(last, ck)
    r = train(cfg, synth, tmp_path / "r", resume=True, progress=False)
    assert [h["epoch"] for h in r.history] == [0, 1]


def test_a_comirec_sa_run_saved_with_only_the_set_fields_keeps_k4_and_w1_4d(synth, tmp_path):
    """Runs saved before checkpoints kept every model field were built with ComiRec-SA's old
    defaults (K 4, W1 4D x D), not today's (K 3, D x D): evaluating and resuming them rebuild
    that model (without the fix: a size-mismatch traceback)."""
    from mirec.checkpoint import resume_config, save_checkpoint
    from mirec.runs import load_run

    cfg = small(epochs=2, max_batches_per_epoch=2)
    cfg.model_args = {"dim": 16, "num_interests": 4, "hidden_factor": 4}  # the old defaults
    train(cfg, synth, tmp_path / "r", progress=False, stop_after_epoch=0)
    for name in ("best.pt", "last.pt"):
        ck = load_checkpoint(tmp_path / "r" / name)
        ck["config"]["model_args"] = {"dim": "16"}  # as such runs saved them: the --set fields only
        save_checkpoint(tmp_path / "r" / name, ck)
    before = evaluate_run(tmp_path / "r").mean
    run = load_run(tmp_path / "r")
    assert (run.model.cfg.num_interests, run.model.cfg.hidden_factor) == (4, 4)
    again = resume_config(RunConfig, tmp_path / "r", None, [])
    assert (int(again.model_args["num_interests"]), int(again.model_args["hidden_factor"])) == (4, 4)
    r = train(again, synth, tmp_path / "r", resume=True, progress=False)
    assert [h["epoch"] for h in r.history] == [0, 1]
    assert set(before) == set(evaluate_run(tmp_path / "r").mean)


def test_a_run_saved_before_train_optimizer_resumes_with_dense_adam(synth, tmp_path):
    """Such a run trained (and checkpointed) dense Adam; resuming it must not switch to the
    row-wise optimiser, whose state it does not hold."""
    from mirec.checkpoint import resume_config, save_checkpoint

    cfg = small(epochs=2, max_batches_per_epoch=2, loss="sampled", optimizer="adam")
    train(cfg, synth, tmp_path / "r", progress=False, stop_after_epoch=0)
    last = tmp_path / "r" / "last.pt"
    ck = load_checkpoint(last)
    del ck["config"]["train"]["optimizer"]  # as runs saved before the setting existed
    save_checkpoint(last, ck)
    sparse = small(epochs=2, max_batches_per_epoch=2, loss="sampled", optimizer="sparse")
    with pytest.raises(MirecConfigError, match="train.optimizer the run was started with"):
        train(sparse, synth, tmp_path / "r", resume=True, progress=False)  # not a traceback
    again = resume_config(RunConfig, tmp_path / "r", None, [])
    assert again.train.optimizer == "adam"
    r = train(again, synth, tmp_path / "r", resume=True, progress=False)
    assert [h["epoch"] for h in r.history] == [0, 1]


def test_a_comirec_sa_run_saved_before_train_routing_reg_resumes_without_it(synth, tmp_path):
    """Such a run trained without the routing penalty; resuming it under today's default
    (auto: 10 for ComiRec-SA) must go on with the loss it started with."""
    from mirec.checkpoint import resume_config, save_checkpoint

    train(small(epochs=2, max_batches_per_epoch=2), synth, tmp_path / "r", progress=False,
          stop_after_epoch=0)
    last = tmp_path / "r" / "last.pt"
    ck = load_checkpoint(last)
    del ck["config"]["train"]["routing_reg"]  # as runs saved before the setting existed
    save_checkpoint(last, ck)
    again = resume_config(RunConfig, tmp_path / "r", None, [])
    assert again.train.routing_reg == 0.0
    r = train(again, synth, tmp_path / "r", resume=True, progress=False)
    assert [h["epoch"] for h in r.history] == [0, 1]
    assert load_checkpoint(last)["config"]["train"]["routing_reg"] == 0.0


def test_sampled_loss_trains_too(synth, tmp_path):
    r = train(small(loss="sampled", num_negatives=20, sampler="log-uniform"), synth,
              tmp_path / "s", progress=False)
    mp = evaluate_baseline("most-popular", synth, [2020])
    assert r.test["recall@20"] > 1.5 * mp.mean["recall@20"]


def test_several_seeds_and_reevaluation(synth, tmp_path):
    run = train_seeds(small(epochs=2), synth, [1, 2], tmp_path / "r", progress=False)
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["seeds"] == [1, 2] and set(res["config"]) >= {"model", "train", "split"}
    again = evaluate_run(tmp_path / "r")
    assert again.mean["recall@50"] == pytest.approx(run.mean["recall@50"])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "best.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(MirecDataError, match="not a readable mirec checkpoint"):
        load_checkpoint(p)


@pytest.mark.slow
def test_cli_train_and_evaluate_run(synth, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "mirec.cli", "train", "--model", "comirec-sa", "--data",
           str(synth.path), "--out", str(out), "--set", "train.epochs=1", "--set",
           "model_args.dim=8", "--set", "train.batch_size=256"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "results.json").exists() and (out / "best.pt").exists()
    p = subprocess.run([sys.executable, "-m", "mirec.cli", "evaluate", "--run", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "comirec-sa" in p.stdout
    bad = subprocess.run(cmd[:-1] + ["train.lr=fast"], capture_output=True, text=True)
    assert bad.returncode == 2 and "train.lr: expected float" in bad.stderr


@pytest.mark.compile
@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_loss_equals_plain_loss_and_gradients(synth):
    """train.compile changes how the loss is computed, not what (ComiRec-SA, full softmax)."""
    cfg = small("comirec-sa")
    split, model, _, _ = setup(cfg, synth)
    plain = LossModule(model, cfg.train, None, synth.num_items)
    fast = compiled(plain, dynamic=False)
    start, pos = split.examples[np.arange(96)]
    hist, mask = windows(synth.item, start, pos, cfg.split.max_len)
    target = torch.from_numpy(synth.item[pos].astype("int64"))
    out = []
    for fn in (plain, fast):
        model.zero_grad()
        loss = fn(torch.from_numpy(hist), torch.from_numpy(mask), target)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-6)
    for name, g in out[0][1].items():
        assert g.abs().max() > 0, name  # every parameter gets a gradient to compare
        torch.testing.assert_close(out[1][1][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("model,loss,compile", [
    ("comirec-sa", "full", False), ("mind", "full", False), ("comirec-dr", "full", False),
    ("youtube-dnn", "full", False), ("youtube-dnn", "sampled", False),
    pytest.param("comirec-sa", "full", True, marks=[pytest.mark.compile, pytest.mark.skipif(
        cxx_compiler() is None, reason="torch.compile on CPU needs a C++ compiler")])])
def test_bf16_precision_is_a_close_low_precision_copy_of_the_fp32_loss(synth, model, loss, compile):
    """train.precision=bf16 (also compiled, and with the logQ-corrected sampled loss): the loss
    and gradients are near the float32 ones, and the loss is further from them than float
    rounding alone moves it (~1e-7 relative), so the matmuls did run in bfloat16."""
    cfg = small(model, loss=loss, num_negatives=30)
    split, net, _, sampler = setup(cfg, synth)
    start, pos = split.examples[np.arange(96)]
    hist, mask = windows(synth.item, start, pos, cfg.split.max_len)
    target = torch.from_numpy(synth.item[pos].astype("int64"))
    out = []
    for precision in ("fp32", "bf16"):
        tc = TrainConfig(**{**vars(cfg.train), "precision": precision})
        net.zero_grad()
        torch.manual_seed(0)  # the same routing logits (MIND) and sampled negatives for both
        fn = LossModule(net, tc, sampler, synth.num_items)
        if compile and precision == "bf16":
            fn = compiled(fn, dynamic=False)
        value = fn(torch.from_numpy(hist), torch.from_numpy(mask), target)
        value.backward()
        out.append((value.item(), torch.cat([p.grad.to_dense().flatten() for p in net.parameters()])))  # sparse: the item table
    (l32, g32), (l16, g16) = out
    assert 3e-6 * abs(l32) < abs(l16 - l32) < 0.02 * abs(l32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_precision_must_be_fp32_or_bf16():
    with pytest.raises(MirecConfigError, match="train.precision"):
        TrainConfig(precision="fp16").validate()


def test_compile_without_a_compiler_names_the_setting(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-mirec")
    with pytest.raises(MirecConfigError, match="train.compile"):
        train(small(compile=True), synth, tmp_path / "c", progress=False)
