"""Warm start (`mirec train --warm-start RUN`): every parameter from the parent's best checkpoint,
rows mapped by raw id, new items from the category mean, training on the events after
train.since, and resume / rankers / refusals."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mirec
from mirec.checkpoint import load_checkpoint
from mirec.data.split import Examples
from mirec.errors import MirecConfigError
from mirec.io import sha256_file
from mirec.models.layers import ItemEncoder, ProfileEncoder
from mirec.models.registry import SPECS
from mirec.runs import RankRunConfig, RunConfig, load_ranker, load_run
from mirec.train.ctr import RankingTask, build_ctr
from mirec.train.loop import RetrievalTask, train
from mirec.train.warm import load_parent, warm_config
from tests.conftest import make_dataset

torch.set_num_threads(1)

OLD_ITEMS = list(range(101, 131))  # 30 items in 3 categories
NEW_ITEMS = [1, 2, 3]  # raw ids sorting before every old one: DATA2's dense ids all shift
CATS = {**{i: [f"c{i % 3}"] for i in OLD_ITEMS}, 1: ["c0"], 2: ["c1", "c2"], 3: ["brand-new"]}
LAST_TS = 9_999  # the parent data set's last timestamp
SMALL = {"model_args": {"dim": 8, "num_interests": 2}, "train": {"epochs": 1, "batch_size": 32},
         "eval": {"ns": [5, 10]}}


def logs(new_events: bool):
    """60 users, 6..14 events each over the old items with ts <= LAST_TS; with ``new_events`` each
    user gets 2 more events after it (new items among them) and item 101 disappears."""
    rng = np.random.default_rng(1)
    users, items, ts = [], [], []
    for u in range(60):
        n = int(rng.integers(6, 15))
        its = rng.choice(OLD_ITEMS, size=n, replace=False).tolist()
        times = sorted(rng.integers(0, LAST_TS, size=n - 1).tolist()) + [LAST_TS]
        if new_events:
            its += [NEW_ITEMS[u % 3], int(rng.choice(OLD_ITEMS[1:]))]
            times += [LAST_TS + 10 + u, LAST_TS + 100 + u]
        keep = [i != 101 or not new_events for i in its]
        users += [u for k in keep if k]
        items += [i for i, k in zip(its, keep) if k]
        ts += [t for t, k in zip(times, keep) if k]
    return users, items, ts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The parent data set, DATA2 (events appended, new items, item 101 gone) and a finished
    retrieval run on the parent."""
    root = tmp_path_factory.mktemp("warm")
    ds1 = make_dataset(root / "d1", *logs(False), categories={i: CATS[i] for i in OLD_ITEMS})
    ds2 = make_dataset(root / "d2", *logs(True), categories=CATS)
    mirec.fit("comirec-sa", ds1.path, root / "parent", progress=False, **SMALL)
    return root, ds1, ds2


def raw_to_dense(ds):
    return {r: i + 1 for i, r in enumerate(ds.items["raw_id"].cast(str).to_list())}


def warm_task(ds2, parent_dir, *sets, task=RetrievalTask, cls=RunConfig, build=None):
    parent = load_parent(parent_dir, "ranking" if cls is RankRunConfig else "retrieval")
    cfg = warm_config(cls, parent, None, list(sets))
    if cls is RankRunConfig:
        return task(cfg, build_ctr(ds2, cfg.ctr), warm=(parent, ds2)), parent
    return task(cfg, ds2, warm=parent), parent


def test_examples_after_keep_the_later_targets_with_full_histories():
    # two sequences: [0, 4) with ts 1 2 3 4 and [4, 7) with ts 1 5 6
    ex = Examples.of(np.array([0, 4]), np.array([4, 7]))
    ts = np.array([1, 2, 3, 4, 1, 5, 6])
    kept = ex.after(ts, 2)
    start, pos = kept[np.arange(len(kept))]
    assert len(kept) == 4 and pos.tolist() == [2, 3, 5, 6] and start.tolist() == [0, 0, 4, 4]
    assert len(ex.after(ts, 6)) == 0 and len(kept.after(ts, 3)) == 3  # and again from a filtered one


@pytest.mark.parametrize("optimizer", ["adam", "sparse"])  # sparse: the row-wise item-table optimiser
def test_known_items_score_as_in_the_parent_and_new_items_start_from_the_category_mean(world, optimizer):
    root, ds1, ds2 = world
    task, parent = warm_task(ds2, root / "parent", f"train.optimizer={optimizer}", "train.loss=sampled",
                             "train.num_negatives=5")
    old = load_run(root / "parent").model
    new = task.model.eval()
    d1, d2 = raw_to_dense(ds1), raw_to_dense(ds2)
    assert d1["102"] != d2["102"]  # the dense ids differ: rows are mapped by raw id
    known = [str(i) for i in OLD_ITEMS[1:]]
    hist_raw = ["105", "110", "120", "102"]
    with torch.no_grad():
        def scores(model, lut):
            hist = torch.tensor([[lut[r] for r in hist_raw]])
            v = model.interests(hist, torch.ones_like(hist, dtype=torch.bool)).vectors[0]  # (K, D)
            return v @ model.item_embeddings()[[lut[r] for r in known]].T  # (K, known)
        torch.testing.assert_close(scores(new, d2), scores(old, d1), rtol=0, atol=1e-6)
    # new items: the serving cold-start formula over the parent's rows (unit length: cosine)
    table = F.normalize(old.item_embeddings().detach(), dim=-1)  # (N1, D) served vectors

    def mean_of(rows):
        m = table[rows].mean(0)
        return m / m.norm()

    c0 = [d1[str(i)] for i in OLD_ITEMS if i % 3 == 0]
    c12 = [d1[str(i)] for i in OLD_ITEMS if i % 3 in (1, 2)]
    every = list(range(1, ds1.num_items))
    got = new.item_embeddings().detach()
    for raw, rows in (("1", c0), ("2", c12), ("3", every)):
        torch.testing.assert_close(got[d2[raw]], mean_of(rows), rtol=0, atol=1e-6)
    assert torch.equal(got[0], torch.zeros_like(got[0]))  # padding stays padding


def test_only_examples_after_since_are_trained(world):
    root, ds1, ds2 = world
    task, _ = warm_task(ds2, root / "parent")
    sp = task.split
    start, pos = sp.examples[np.arange(sp.num_examples)]
    by_hand = sum(int((ds2.ts[ds2.offsets[u] + 1:end] > LAST_TS).sum())
                  for u, end in zip(sp.train_users, sp.train_end))
    assert sp.num_examples == by_hand == 2 * len(sp.train_users)  # each training user's 2 new events
    assert (ds2.ts[pos] > LAST_TS).all() and np.array_equal(start, ds2.offsets[ds2.user[pos]])
    everything, _ = warm_task(ds2, root / "parent", "train.since=0")
    assert everything.split.num_examples == sum(int(e - ds2.offsets[u]) - 1
                                                for u, e in zip(sp.train_users, sp.train_end))


def lrs(optimizer) -> list[float]:
    """Every learning rate ``optimizer`` steps with (the row-wise one: its table's and the rest's)."""
    groups = getattr(optimizer, "dense", optimizer).param_groups
    return sorted({g["lr"] for g in groups} | ({optimizer.lr} if hasattr(optimizer, "dense") else set()))


@pytest.mark.parametrize("optimizer", ["adam", "sparse"])
def test_a_warm_start_trains_at_a_tenth_of_the_lr_unless_train_warm_lr_says(world, optimizer):
    root, ds1, ds2 = world
    sets = [f"train.optimizer={optimizer}", "train.loss=sampled", "train.num_negatives=5"]
    task, _ = warm_task(ds2, root / "parent", *sets)
    assert lrs(task.optimizer) == pytest.approx([3.75e-4])  # ComiRec-SA's lr "auto" is 3.75e-3
    task, _ = warm_task(ds2, root / "parent", *sets, "train.lr=0.002")
    assert lrs(task.optimizer) == pytest.approx([2e-4])
    task, _ = warm_task(ds2, root / "parent", *sets, "train.warm_lr=0.002")
    assert lrs(task.optimizer) == [0.002]
    cfg = warm_config(RunConfig, load_parent(root / "parent", "retrieval"), None, sets)
    assert lrs(RetrievalTask(cfg, ds2).optimizer) == [3.75e-3]  # not warm-started: train.lr


@pytest.mark.parametrize("optimizer", ["adam", "sparse"])  # sparse: its table's lr must come back from last.pt
def test_results_name_the_parent_and_a_resumed_run_equals_the_uninterrupted_one(world, tmp_path, optimizer):
    root, ds1, ds2 = world
    parent = tmp_path / "parent"
    shutil.copytree(root / "parent", parent)
    more = {"optimizer": optimizer, "loss": "sampled", "num_negatives": 5} if optimizer == "sparse" else {}
    sets = {"train": {"epochs": 2, "patience": 5, "since": 0, **more}}
    full = mirec.fit(data=ds2.path, out=tmp_path / "full", warm_start=parent, progress=False, settings=sets)
    doc = json.loads((tmp_path / "full" / "results.json").read_text())
    assert doc["warm_start"] == {"run": str(parent), "checkpoint": str(parent / "best.pt"),
                                 "checksum": sha256_file(parent / "best.pt"), "since": 0}
    assert doc["config"]["model_args"]["dim"] == 8  # the parent's config is the base
    # interrupted after epoch 0, then resumed with the parent gone: last.pt has everything
    cfg = warm_config(RunConfig, load_parent(parent, "retrieval"), None,
                      ["train.epochs=2", "train.patience=5", "train.since=0",
                       *(f"train.{k}={v}" for k, v in more.items())])
    train(cfg, ds2, tmp_path / "cut", progress=False, stop_after_epoch=0, warm=load_parent(parent, "retrieval"))
    shutil.rmtree(parent)
    resumed = mirec.fit(data=ds2.path, out=tmp_path / "cut", resume=True, progress=False)
    for name, a in load_checkpoint(tmp_path / "full" / "last.pt")["model"].items():
        torch.testing.assert_close(load_checkpoint(tmp_path / "cut" / "last.pt")["model"][name], a,
                                   rtol=0, atol=1e-6, msg=name)
    assert resumed.to_json()["warm_start"] == doc["warm_start"]
    assert full.metrics == resumed.metrics


def test_a_ranker_warm_starts_with_items_users_and_categories_mapped(world, tmp_path):
    root, ds1, ds2 = world
    mirec.fit("din", ds1.path, tmp_path / "rparent", progress=False,
              settings={"model_args": {"dim": 8}, "train": {"epochs": 1}})
    # the ranker's own split holds each user's last events out: the 2 new ones are valid and test
    with pytest.raises(MirecConfigError, match="train.since: no training example happens after ts 9999"):
        warm_task(ds2, tmp_path / "rparent", task=RankingTask, cls=RankRunConfig)
    task, _ = warm_task(ds2, tmp_path / "rparent", "train.since=5000", task=RankingTask, cls=RankRunConfig)
    assert len(task.train_idx) and (task.data.ts[task.train_idx] > 5000).all()
    assert len(task.train_idx) < len(task.data.indices(0))
    old, _ = load_ranker(tmp_path / "rparent")
    enc = lambda m, cls: next(x for x in m.modules() if isinstance(x, cls))  # noqa: E731
    oi, ni = enc(old, ItemEncoder), enc(task.model, ItemEncoder)
    d1, d2 = raw_to_dense(ds1), raw_to_dense(ds2)
    for raw in ("102", "117", "130"):
        assert torch.equal(ni.item.weight[d2[raw]], oi.item.weight[d1[raw]])
    c0 = [d1[str(i)] for i in OLD_ITEMS if i % 3 == 0]
    torch.testing.assert_close(ni.item.weight[d2["1"]], oi.item.weight[c0].mean(0), rtol=0, atol=1e-6)
    # categories by name: "brand-new" sorts first in DATA2, so c0 c1 c2 moved one row down
    assert torch.equal(ni.category.weight[2:], oi.category.weight[1:])
    ou, nu = enc(old, ProfileEncoder).user, enc(task.model, ProfileEncoder).user
    assert torch.equal(nu.weight, ou.weight)  # the same users; the unknown-user row last
    # trained end to end: results name the parent, only the new events' examples trained
    mirec.fit(data=ds2.path, out=tmp_path / "rwarm", task="ranking", warm_start=tmp_path / "rparent",
              progress=False, train={"since": 5000})
    assert json.loads((tmp_path / "rwarm" / "results.json").read_text())["warm_start"]["since"] == 5000


def test_the_architecture_may_not_change(world, tmp_path):
    root, _, ds2 = world
    with pytest.raises(MirecConfigError, match="model_args.dim: .* dim=8, this run asks for 16"):
        mirec.fit(data=ds2.path, out=tmp_path / "w", warm_start=root / "parent", model_args={"dim": 16})
    with pytest.raises(MirecConfigError, match="split.max_len"):
        mirec.fit(data=ds2.path, out=tmp_path / "w", warm_start=root / "parent", split={"max_len": 7})
    with pytest.raises(MirecConfigError, match="--model: .* comirec-sa run"):
        mirec.fit("mind", ds2.path, tmp_path / "w", warm_start=root / "parent")
    with pytest.raises(MirecConfigError, match="is a retrieval run, this run is ranking"):
        mirec.fit(data=ds2.path, out=tmp_path / "w", task="ranking", warm_start=root / "parent")


def test_a_run_that_is_not_finished_is_refused_on_one_line(world, tmp_path):
    root, _, ds2 = world
    (tmp_path / "empty").mkdir()
    with pytest.raises(MirecConfigError, match="not a finished `mirec train` run .no best.pt"):
        mirec.fit(data=ds2.path, out=tmp_path / "w", warm_start=tmp_path / "empty")
    stopped = tmp_path / "stopped"
    shutil.copytree(root / "parent", stopped)
    (stopped / "results.json").unlink()
    with pytest.raises(MirecConfigError, match="no results.json"):
        mirec.fit(data=ds2.path, out=tmp_path / "w", warm_start=stopped)


@pytest.mark.slow
def test_the_cli_refuses_an_unfinished_parent_on_one_line(world, tmp_path):
    root, _, ds2 = world
    stopped = tmp_path / "stopped"
    shutil.copytree(root / "parent", stopped)
    (stopped / "results.json").unlink()
    p = subprocess.run([sys.executable, "-m", "mirec.cli", "train", "--data", str(ds2.path), "--out",
                        str(tmp_path / "w"), "--warm-start", str(stopped)], capture_output=True, text=True)
    assert p.returncode == 2 and "no results.json" in p.stdout + p.stderr
    assert len((p.stdout + p.stderr).strip().splitlines()) == 1


@pytest.mark.parametrize("name", sorted(n for n, s in SPECS.items() if s.task in ("retrieval", "ranking")))
def test_every_model_warm_starts_with_known_rows_copied_exactly(name, world, tmp_path):
    """Over the whole registry: the tables indexed by item are found by shape and their known rows
    copied by raw id; every other tensor is the parent's exactly."""
    root, ds1, ds2 = world
    ranking = SPECS[name].task == "ranking"
    args = {"dim": 8} if "dim" in {f.name for f in dataclasses.fields(SPECS[name].config)} else {}
    mirec.fit(name, ds1.path, tmp_path / "p", progress=False,
              settings={"model_args": args, "train": {"epochs": 1, "max_batches_per_epoch": 1},
                        **({} if ranking else {"eval": {"ns": [5]}})})
    cls, task = (RankRunConfig, RankingTask) if ranking else (RunConfig, RetrievalTask)
    t, parent = warm_task(ds2, tmp_path / "p", "train.since=0", task=task, cls=cls)
    old, new = parent.ck["model"], t.model.state_dict()
    d1, d2 = raw_to_dense(ds1), raw_to_dense(ds2)
    src = [d1[r] for r in d2 if r in d1]
    dst = [d2[r] for r in d2 if r in d1]
    mapped = 0
    for key, a in old.items():
        if a.shape == new[key].shape:
            assert torch.equal(new[key], a), key
        elif a.shape[0] == ds1.num_items:  # (a ranker's category table grew too: the DIN test)
            assert new[key].shape[0] == ds2.num_items, key
            assert torch.equal(new[key][dst], a[src]), key
            mapped += 1
    assert mapped >= 1
