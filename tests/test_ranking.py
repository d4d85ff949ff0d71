"""Click-through data, metrics, DIN / Embedding+MLP and the ranking trainer."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from mirec.config import load
from mirec.data.ctr import TEST, TRAIN, VALID, CTRConfig, build_ctr, profile_codes, time_parts
from mirec.data.dataset import Dataset
from mirec.errors import MirecConfigError
from mirec.eval.ctr_metrics import auc, ctr_metrics, gauc, log_loss
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.din import DIN, DINConfig
from mirec.models.embedding_mlp import EmbeddingMLP, EmbeddingMLPConfig
from mirec.train.ctr import (
    IdCounts,
    RankRunConfig,
    RankTrainConfig,
    embedding_penalty,
    load_ranker,
    make_loss,
    predict,
    train_ctr,
)
from mirec.train.loop import cxx_compiler

torch.set_num_threads(1)


def toy_dataset(tmp_path, users: int = 30, items: int = 40, per_user: int = 20, ratings: bool = True,
                seed: int = 0) -> Dataset:
    """A small prepared-like data set: users like items of their own parity (rating 5) and
    dislike the others (rating 1), so the label is learnable from the history."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), per_user).astype(np.int32)
    item = rng.integers(1, items + 1, size=len(user)).astype(np.int32)
    rating = np.where((item % 2) == (user % 2), 5.0, 1.0).astype(np.float32)
    ts = np.tile(np.arange(per_user), users).astype(np.int64)
    offsets = np.arange(0, len(user) + 1, per_user, dtype=np.int64)
    cats = [["odd" if i % 2 else "even"] + (["x"] if i % 3 == 0 else []) for i in range(1, items + 1)]
    items_df = pl.DataFrame({"item": np.arange(1, items + 1, dtype=np.int32),
                             "raw_id": [str(i) for i in range(1, items + 1)],
                             "title": [f"t{i}" for i in range(1, items + 1)], "categories": cats})
    users_df = pl.DataFrame({"user": np.arange(users, dtype=np.int32),
                             "raw_id": [f"u{u}" for u in range(users)],
                             "age": [str(15 + u) for u in range(users)],
                             "gender": ["M" if u % 2 else "F" for u in range(users)],
                             "zip_code": [f"{10000 + u}" for u in range(users)]})
    return Dataset(path=tmp_path, meta={"dataset_checksum": "toy"}, user=user, item=item, ts=ts,
                   offsets=offsets, items=items_df, users=users_df, rating=rating if ratings else None)


# --------------------------------------------------------------------------------- metrics


def test_auc_hand_computed_and_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4), (0.8>0.1), (0.4=0.4 -> 1/2), (0.4>0.1)
    assert auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == pytest.approx(3.5 / 4)
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding makes ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    p = 1 / (1 + np.exp(-s))
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), abs=1e-9)


def test_gauc_weights_users_by_events_and_skips_one_class_users():
    user = np.array([0, 0, 0, 1, 1, 2, 2])
    y = np.array([1, 0, 0, 1, 0, 1, 1])  # user 2 has one class: left out
    s = np.array([0.9, 0.1, 0.95, 0.2, 0.3, 0.5, 0.6])
    a0 = roc_auc_score(y[:3], s[:3])  # 0.5
    a1 = roc_auc_score(y[3:5], s[3:5])  # 0.0
    assert gauc(user, y, s) == pytest.approx((3 * a0 + 2 * a1) / 5)
    m = ctr_metrics(user, y, np.log(s / (1 - s)))
    assert m["gauc"] == pytest.approx((3 * a0 + 2 * a1) / 5)


# ------------------------------------------------------------------------------------ data


def test_time_parts_last_tenth_is_test_and_at_least_one():
    offsets = np.array([0, 3, 23])  # users with 3 and 20 events
    part = time_parts(offsets, 0.1, 0.1)
    assert part[:3].tolist() == [TRAIN, VALID, TEST]
    assert part[3:].tolist() == [TRAIN] * 16 + [VALID] * 2 + [TEST] * 2


def test_ctr_labels_from_ratings_and_history_is_earlier_positives(tmp_path):
    ds = toy_dataset(tmp_path)
    d = build_ctr(ds, CTRConfig(max_len=5))
    assert d.sampled_negatives == 0
    np.testing.assert_array_equal(d.label, (ds.rating >= 4).astype(np.float32))
    b = d.batch(np.arange(len(d.label)))
    for e in [0, 7, 19, 20, 45, 599]:
        u = ds.user[e]
        seq, lab = ds.item[ds.offsets[u]:e], ds.rating[ds.offsets[u]:e] >= 4
        want = seq[lab][-5:]
        got = b.hist[e][b.mask[e]].numpy()
        np.testing.assert_array_equal(got, want)
        assert not b.mask[e][: 5 - len(want)].any()  # left padding
    assert d.profile_names == ["age", "gender"]  # zip_code looks like an id: left out
    assert d.features.item_categories.shape == (41, 2)
    assert d.features.item_categories[0].tolist() == [0, 0]


def test_ctr_sampled_negatives_without_ratings(tmp_path):
    ds = toy_dataset(tmp_path, ratings=False)
    d = build_ctr(ds, CTRConfig(negatives=2, seed=3))
    E = len(ds.item)
    assert len(d.label) == 3 * E and d.label[:E].all() and not d.label[E:].any()
    neg = d.item[E:].reshape(E, 2)
    assert (neg != ds.item[:, None]).all() and neg.min() >= 1 and neg.max() <= 40
    np.testing.assert_array_equal(d.hist_stop[E:].reshape(E, 2)[:, 0], d.hist_stop[:E])
    again = build_ctr(ds, CTRConfig(negatives=2, seed=3))
    np.testing.assert_array_equal(again.item, d.item)


def test_profile_codes_bucket_age_and_code_categories():
    users = pl.DataFrame({"user": [0, 1, 2, 3], "raw_id": list("abcd"), "age": ["10", "30", None, "60"],
                          "occupation": ["x", "y", "x", ""]})
    codes, names, sizes = profile_codes(users)
    assert names == ["age", "occupation"]
    assert codes[:, 0].tolist() == [1, 3, 0, 7] and sizes[0] == 8
    assert codes[:, 1].tolist() == [1, 2, 1, 0] and sizes[1] == 3


def test_ctr_config_errors_name_the_field():
    with pytest.raises(MirecConfigError, match="ctr.max_len"):
        load(RankRunConfig, None, ["ctr.max_len=0"])
    with pytest.raises(MirecConfigError, match="model: 'comirec-sa' is a retrieval model, not a ranking one"):
        load(RankRunConfig, None, ["model=comirec-sa"])
    with pytest.raises(MirecConfigError, match=r"model: unknown ranker 'nope' \(known: dien, din, "):
        load(RankRunConfig, None, ["model=nope"])


# ---------------------------------------------------------------------------------- models


def features(num_items: int = 30, num_users: int = 8) -> RankFeatures:
    g = torch.Generator().manual_seed(0)
    cats = torch.randint(0, 5, (num_items, 2), generator=g)
    cats[0] = 0
    return RankFeatures(num_items=num_items, num_users=num_users, profile_sizes=[3, 4], item_categories=cats)


def random_batch(B: int = 6, L: int = 7, num_items: int = 30, seed: int = 0) -> CTRBatch:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lens)[:, None]
    hist = torch.randint(1, num_items, (B, L), generator=g) * mask
    return CTRBatch(user=torch.randint(0, 8, (B,), generator=g), profile=torch.randint(0, 3, (B, 2), generator=g),
                    item=torch.randint(1, num_items, (B,), generator=g), hist=hist, mask=mask)


def pad_left(b: CTRBatch, extra: int) -> CTRBatch:
    z = torch.zeros(len(b.item), extra, dtype=torch.long)
    return CTRBatch(b.user, b.profile, b.item, torch.cat([z, b.hist], 1),
                    torch.cat([z.bool(), b.mask], 1))


@pytest.mark.parametrize("make", [lambda f: DIN(DINConfig(dim=8, activation="dice"), f),
                                  lambda f: DIN(DINConfig(dim=8), f),
                                  lambda f: DIN(DINConfig(dim=8, product=False), f),
                                  lambda f: EmbeddingMLP(EmbeddingMLPConfig(dim=8), f)])
def test_rankers_padding_invariant(make):
    torch.manual_seed(0)
    m = make(features()).eval()
    b = random_batch()
    out = m(b)
    assert out.shape == (6,)
    torch.testing.assert_close(m(pad_left(b, 9)), out, rtol=0, atol=1e-5)
    # garbage under the padding changes nothing either
    junk = CTRBatch(b.user, b.profile, b.item, torch.where(b.mask, b.hist, 5), b.mask)
    torch.testing.assert_close(m(junk), out, rtol=0, atol=1e-6)


def test_din_activation_weights_are_not_softmaxed():
    torch.manual_seed(0)
    m = DIN(DINConfig(dim=8), features()).eval()
    b = random_batch(B=16, seed=2)
    a = m.weights(b)
    assert (a[~b.mask] == 0).all()
    sums = a.sum(1)[b.mask.any(1)]
    assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-3)


def test_item_table_rows_equal_item_encodings():
    """ItemEncoder.table() (all items at once) equals encoding ids one by one, padding 0 -> 0,
    and an item without categories gets a zero category half."""
    from mirec.models.layers import ItemEncoder
    torch.manual_seed(0)
    cats = torch.tensor([[0, 0], [1, 2], [3, 0], [0, 0], [2, 2]])  # item 3 has none
    enc = ItemEncoder(5, cats, 4)
    ids = torch.arange(5)
    torch.testing.assert_close(enc.table(), enc(ids))
    # lookup: the whole table for many ids, only the distinct ones for few; same encodings
    many, few = torch.tensor([[1, 4, 4], [0, 2, 1]]), torch.tensor([4, 2])
    for x in (many, few):
        table, (rows,) = enc.lookup(x)
        torch.testing.assert_close(table[rows], enc(x))
    assert len(enc.lookup(few)[0]) == 2 and len(enc.lookup(many)[0]) == 5
    assert (enc(ids)[0] == 0).all() and (enc(ids)[3, 4:] == 0).all()
    want = torch.cat([enc.item.weight[1], (enc.category.weight[1] + enc.category.weight[2]) / 2])
    torch.testing.assert_close(enc(torch.tensor(1)), want)


def test_din_table_path_equals_direct_activation_unit():
    """DIN scores history positions through the item table (the h part once per item); the
    weights equal the activation unit applied to each position's encoding."""
    torch.manual_seed(0)
    m = DIN(DINConfig(dim=4), features()).eval()
    b = random_batch(B=5, seed=3)
    t = m.items(b.item)  # (B, E)
    direct = m.attention(m.items(b.hist), t[:, None].expand(-1, b.hist.shape[1], -1))  # (B, L)
    torch.testing.assert_close(m.weights(b), torch.where(b.mask, direct, 0.0), rtol=1e-5, atol=1e-6)


def test_din_activation_unit_equals_concat_form():
    """The split first layer equals MLP([h, t, h - t, h * t]) on the explicit concat."""
    torch.manual_seed(0)
    m = DIN(DINConfig(dim=4), features())
    au = m.attention
    h, t = torch.randn(3, 5, 8), torch.randn(3, 8)
    x = torch.cat([h, t[:, None].expand_as(h), h - t[:, None], h * t[:, None]], -1)
    want = au.rest(au.first(x)).squeeze(-1)
    torch.testing.assert_close(au(h, t[:, None].expand_as(h)), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- trainer


@pytest.mark.parametrize("model", ["din", "embedding-mlp"])
def test_train_ctr_learns_and_writes_run(tmp_path, model):
    ds = toy_dataset(tmp_path / "data", users=60, per_user=30)
    cfg = load(RankRunConfig, None, [f"model={model}", "model_args.dim=8", "train.epochs=6",
                                     "train.batch_size=64", "train.lr=0.01", "ctr.max_len=10"])
    r = train_ctr(cfg, ds, tmp_path / "run", progress=False)
    assert r.test["auc"] > 0.75  # the label is a function of (user parity, item parity)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(r.history) and "auc" in json.loads(lines[0])["valid"]
    m, ck = load_ranker(tmp_path / "run")
    idx = r.data.indices(TEST)
    np.testing.assert_allclose(predict(m, r.data, idx), predict(r.model, r.data, idx), atol=1e-6)
    assert ck["profile"].shape == (60, 2)


def test_checkpoint_keeps_every_model_field_and_old_dien_runs_still_load(tmp_path):
    """A run saves its model's whole config, defaults included, so a later change of a default
    cannot change what it rebuilds into; a DIEN run saved before that (model_args without
    ``activation``, from when DIEN's default was PReLU) still loads."""
    from mirec.checkpoint import load_checkpoint, save_checkpoint

    ds = toy_dataset(tmp_path / "data", users=30, per_user=20)
    cfg = load(RankRunConfig, None, ["model=dien", "model_args.dim=4", "model_args.activation=prelu",
                                     "train.epochs=1", "ctr.max_len=6"])
    r = train_ctr(cfg, ds, tmp_path / "run", progress=False)
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck["config"]["model_args"]["aux_weight"] == 1.0  # a default nobody set is saved too
    ck["config"]["model_args"] = {"dim": 4}  # as runs were saved before
    save_checkpoint(tmp_path / "run" / "best.pt", ck)
    m, _ = load_ranker(tmp_path / "run")
    assert m.cfg.activation == "prelu"
    idx = r.data.indices(TEST)
    np.testing.assert_allclose(predict(m, r.data, idx), predict(r.model, r.data, idx), atol=1e-6)


def test_resume_with_other_model_settings_names_the_field(tmp_path):
    """Resuming with model settings other than the run's is refused with the field named, also
    for a DIEN run saved before checkpoints kept every field (its PReLU head), and resumes once
    the setting is given as it was."""
    from mirec.checkpoint import load_checkpoint, save_checkpoint
    from mirec.errors import MirecConfigError

    ds = toy_dataset(tmp_path / "data", users=30, per_user=20)
    base = ["model=dien", "model_args.dim=4", "train.epochs=2", "ctr.max_len=6"]
    cfg = load(RankRunConfig, None, base + ["model_args.activation=prelu"])
    train_ctr(cfg, ds, tmp_path / "run", progress=False, stop_after_epoch=0)
    last = tmp_path / "run" / "last.pt"
    ck = load_checkpoint(last)
    ck["config"]["model_args"] = {"dim": "4"}  # as runs were saved before: the --set string
    save_checkpoint(last, ck)
    with pytest.raises(MirecConfigError, match=r"model_args\.activation=prelu, this run has dice"):
        train_ctr(load(RankRunConfig, None, base), ds, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(MirecConfigError, match=r"model_args\.dim=4, this run has 8"):
        train_ctr(load(RankRunConfig, None, base + ["model_args.dim=8", "model_args.activation=prelu"]),
                  ds, tmp_path / "run", resume=True, progress=False)
    r = train_ctr(cfg, ds, tmp_path / "run", resume=True, progress=False)
    assert [h["epoch"] for h in r.history] == [0, 1]


def test_train_ctr_resume_equals_uninterrupted(tmp_path):
    ds = toy_dataset(tmp_path / "data")
    cfg = load(RankRunConfig, None, ["model=din", "model_args.dim=8", "train.epochs=3",
                                     "train.patience=5", "ctr.max_len=6"])
    full = train_ctr(cfg, ds, tmp_path / "full", progress=False)
    train_ctr(cfg, ds, tmp_path / "cut", progress=False, stop_after_epoch=0)
    resumed = train_ctr(cfg, ds, tmp_path / "cut", resume=True, progress=False)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.test == full.test
    assert [len(x) for x in (full.data.indices(TRAIN), full.data.indices(VALID))] == [480, 60]


def test_mimn_streaming_equals_per_example_windows(tmp_path):
    """One pass over each user's sequence scores every example exactly as running the state
    over that example's own history window does (the window holding the whole history)."""
    from mirec.models.mimn import MIMN, MIMNConfig
    from mirec.train.ctr import RankTrainConfig, stream_inputs, user_groups

    ds = toy_dataset(tmp_path, users=9, per_user=15)
    d = build_ctr(ds, CTRConfig(max_len=15))
    torch.manual_seed(0)
    m = MIMN(MIMNConfig(dim=8), d.features).eval()
    idx = np.arange(len(d.label))
    windowed = predict(m, d, idx, cfg=RankTrainConfig(stream=False))
    streamed = predict(m, d, idx, cfg=RankTrainConfig(users_per_batch=4))
    np.testing.assert_allclose(streamed, windowed, rtol=1e-4, atol=1e-5)
    groups = user_groups(d, idx, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(groups).tolist()) == idx.tolist()
    ex = groups[0]
    inp = stream_inputs(d, ex)
    label = torch.from_numpy(d.label[ex])
    loss = m.stream_loss(**inp, label=label)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in m.head.parameters())


@pytest.mark.compile
@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_loss_equals_plain_loss_and_gradients(tmp_path):
    """train.compile changes how the loss is computed, not what: same loss and gradients on
    batches of different sizes and history lengths (compiled with dynamic shapes)."""
    data = build_ctr(toy_dataset(tmp_path), CTRConfig(max_len=8))
    tc = load(RankRunConfig, None, ["train.compile=true"]).train
    torch.manual_seed(0)
    model = DIN(DINConfig(dim=8), data.features)
    plain, compiled = make_loss(model, RankTrainConfig(), data), make_loss(model, tc, data)
    idx = data.indices(TRAIN)
    for batch in (idx[:64], idx[64:101], idx[200:203]):
        grads = []
        for fn in (plain, compiled):
            model.zero_grad(set_to_none=True)
            loss = fn(data, batch)
            loss.backward()
            grads.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_without_a_compiler_names_the_setting(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-mirec")
    model = EmbeddingMLP(EmbeddingMLPConfig(dim=8), features())
    with pytest.raises(MirecConfigError, match="train.compile"):
        make_loss(model, RankTrainConfig(compile=True))


def test_compile_refused_for_recurrent_rankers():
    from mirec.models.dien import DIEN, DIENConfig

    with pytest.raises(MirecConfigError, match="train.compile: not supported for DIEN"):
        make_loss(DIEN(DIENConfig(dim=8), features()), RankTrainConfig(compile=True))


# ------------------------------------------------------------- mini-batch aware regularisation


def test_id_counts_are_training_examples_per_id_plus_one(tmp_path):
    data = build_ctr(toy_dataset(tmp_path), CTRConfig(max_len=8))
    c = IdCounts.of(data)
    tr = data.indices(TRAIN)
    item, user = data.item[tr], data.user[tr]
    for j in (0, 1, 7, int(item[0])):
        assert c.item[j] == (item == j).sum() + 1
    for u in (0, 3, data.features.num_users):  # the last row: the unknown user, never trained on
        assert c.user[u] == (user == u).sum() + 1
    assert c.item[0] == 1  # padding is never a candidate


def test_embedding_penalty_is_the_weighted_l2_of_distinct_rows_read():
    """sum_j ||e_j||^2 / n_j over the distinct ids a batch reads: a repeated id counts once, and
    the gradient reaches exactly the rows read, 2 e_j / n_j each."""
    f = features()
    torch.manual_seed(0)
    model = DIN(DINConfig(dim=4), f)
    counts = IdCounts(item=torch.arange(1, f.num_items + 1).float(), user=torch.full((f.num_users + 1,), 2.0))
    items, users = torch.tensor([[3, 5], [5, 0]]), torch.tensor([1, 1, 4])
    pen = embedding_penalty(model, items, users, counts)
    E, U = model.items.item.weight, model.profile.user.weight
    want = sum(E[j].square().sum() / (j + 1) for j in (0, 3, 5)) + sum(U[u].square().sum() / 2 for u in (1, 4))
    torch.testing.assert_close(pen, want)
    pen.backward()
    read = torch.zeros(f.num_items, dtype=torch.bool)
    read[[0, 3, 5]] = True
    torch.testing.assert_close(E.grad[read], 2 * E[read].detach() / counts.item[read, None])
    assert E.grad[~read].abs().max() == 0
    assert U.grad[[0, 2, 3]].abs().max() == 0


@pytest.mark.parametrize("stream", [False, True])
def test_embedding_l2_adds_the_penalty_of_the_batch_ids(tmp_path, stream):
    """The training loss with train.embedding_l2 = lam is the plain loss plus lam times the
    penalty of the candidates, live history items and users of the batch (MIMN's streamed
    batches too)."""
    from mirec.models.mimn import MIMN, MIMNConfig

    data = build_ctr(toy_dataset(tmp_path), CTRConfig(max_len=8))
    torch.manual_seed(0)
    model = MIMN(MIMNConfig(dim=8), data.features) if stream else DIN(DINConfig(dim=8), data.features)
    counts = IdCounts.of(data)
    idx = data.indices(TRAIN)[:40]
    plain = make_loss(model, RankTrainConfig(embedding_l2=0))(data, idx)
    reg = make_loss(model, RankTrainConfig(embedding_l2=0.5), data)(data, idx)
    b = data.batch(idx)
    users = torch.from_numpy(data.user[idx])
    if stream:  # a user's whole sequence is read, not a window of it
        hist = torch.from_numpy(data.pos_item[np.concatenate(
            [np.arange(data.pos_offsets[u], data.pos_offsets[u] + data.hist_stop[e] - data.hist_start[e])
             for u, e in zip(data.user[idx], idx)])])
    else:
        hist = b.hist[b.mask]
    want = plain + 0.5 * embedding_penalty(model, torch.cat([hist, b.item]), users, counts)
    torch.testing.assert_close(reg, want)
    assert reg > plain


def test_embedding_l2_config_errors():
    with pytest.raises(MirecConfigError, match="train.embedding_l2: must be >= 0"):
        load(RankRunConfig, None, ["train.embedding_l2=-1"])
    with pytest.raises(ValueError, match="needs the training data"):
        make_loss(EmbeddingMLP(EmbeddingMLPConfig(dim=8), features()), RankTrainConfig(embedding_l2=0.1))


def test_prelu_inference_kernel_equals_the_training_form():
    """Without autograd PReLU runs torch's fused kernel over the last dimension; it equals the
    relu form that training differentiates, slopes per unit of the last dim, on 3-d input."""
    from mirec.models.layers import PReLU

    act = PReLU(5, init=0.25)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.1, -0.5, 0.0, 2.0, 0.25]))
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    trained = act(x)
    with torch.no_grad():
        served = act(x)
    expect = torch.where(x > 0, x, act.weight * x)
    torch.testing.assert_close(trained, expect, rtol=0, atol=1e-7)
    torch.testing.assert_close(served, expect, rtol=0, atol=1e-7)
