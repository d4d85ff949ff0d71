"""The contract every registered model keeps, checked for the whole registry.

Parametrised over ``mirec.models.registry.SPECS``: a model added with one file and one registry
line goes through these tests without editing them. The last test walks the "how to add a
model" recipe (DEVELOPERS.md) with a toy mean-pooling retriever.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import mirec
from mirec.checkpoint import load_checkpoint
from mirec.data.ctr import CTRBatch, RankFeatures
from mirec.data.split import SplitConfig, split_users
from mirec.errors import MirecConfigError
from mirec.models.base import Interests
from mirec.models.registry import SPECS, ModelSpec, of_task
from mirec.runs import CANDIDATE_RANKERS, RankRunConfig, RankTrainConfig, RunConfig, TrainConfig
from mirec.train.ctr import train_ctr
from mirec.train.loop import train

torch.set_num_threads(1)
N, L, B = 40, 8, 5


def small_args(cfg_cls: type) -> dict:
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    return {k: v for k, v in {"dim": 8, "max_len": L}.items() if k in names}


def build(spec: ModelSpec, *args):
    torch.manual_seed(0)
    return spec.build(spec.config(**small_args(spec.config)), *args)


def histories(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([L, 3, 1, 6, 2])
    mask = torch.arange(L)[None, :] >= (L - lens)[:, None]  # left-padded
    return torch.randint(1, N, (B, L), generator=g) * mask, mask


def features() -> RankFeatures:
    cats = torch.randint(0, 4, (N, 2), generator=torch.Generator().manual_seed(1))
    cats[0] = 0
    return RankFeatures(num_items=N, num_users=6, profile_sizes=[3], item_categories=cats)


def ctr_batch() -> CTRBatch:
    hist, mask = histories()
    return CTRBatch(user=torch.arange(B) % 6, profile=torch.ones(B, 1, dtype=torch.long),
                    item=torch.arange(1, B + 1), hist=hist, mask=mask)


def params_finite_and_reproducible(make) -> None:
    a, b = make(), make()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.isfinite(p.float()).all(), f"{name} holds non-finite values"
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{name} is not set by the seed")


def check_retriever(model: nn.Module) -> None:
    model.eval()
    hist, mask = histories()
    out = model.interests(hist, mask)
    K, D = out.vectors.shape[1], out.vectors.shape[2]
    assert isinstance(out, Interests) and out.vectors.shape == (B, K, D)
    assert out.mask.shape == (B, K) and out.mask.dtype == torch.bool and out.mask.any(1).all()
    assert out.weights.shape == (B, K, L)
    assert (out.weights[~mask[:, None, :].expand(-1, K, -1)] == 0).all(), "weight on padding"
    assert model.item_embeddings().shape == (N, D)
    assert model.readout(out, model.item_embeddings()[hist[:, -1]]).shape == (B, D)
    junk = torch.where(mask, hist, 7)  # ids under the padding must not matter
    torch.testing.assert_close(model.interests(junk, mask).vectors, out.vectors, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.interests(hist, mask).vectors, out.vectors, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(of_task("retrieval")))
def test_retriever_contract(name):
    spec = SPECS[name]
    check_retriever(build(spec, N))
    params_finite_and_reproducible(lambda: build(spec, N))


@pytest.mark.parametrize("name", sorted(of_task("ranking")))
def test_ranker_contract(name):
    spec = SPECS[name]
    model = build(spec, features()).eval()
    b = ctr_batch()
    out = model(b)
    assert out.shape == (B,) and torch.isfinite(out).all()
    loss = model.loss(b, torch.tensor([1.0, 0, 1, 0, 1]))
    assert loss.shape == () and torch.isfinite(loss)
    junk = CTRBatch(b.user, b.profile, b.item, torch.where(b.mask, b.hist, 7), b.mask)
    torch.testing.assert_close(model(junk), out, rtol=0, atol=1e-5)
    z = torch.zeros(B, 4, dtype=torch.long)
    wider = CTRBatch(b.user, b.profile, b.item, torch.cat([z, b.hist], 1), torch.cat([z.bool(), b.mask], 1))
    torch.testing.assert_close(model(wider), out, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(b), out, rtol=0, atol=0)
    assert hasattr(model, "items") and hasattr(model, "profile")  # read by the regulariser
    params_finite_and_reproducible(lambda: build(spec, features()))


NUM_DENSE = 3


def dense_features() -> RankFeatures:
    """The feature space of a ranker trained on a retriever's candidates: NUM_DENSE features."""
    return dataclasses.replace(features(), num_dense=NUM_DENSE, dense_mean=torch.tensor([0.5, -1.0, 2.0]),
                               dense_std=torch.tensor([1.0, 2.0, 0.5]))


def one_user_batch(C: int, n_hist: int, dense: torch.Tensor, seed: int = 0) -> CTRBatch:
    """C candidates of one user: every row the same user, profile and history of n_hist items."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.zeros(L, dtype=torch.long)
    hist[L - n_hist:] = torch.randint(1, N, (n_hist,), generator=g)
    return CTRBatch(user=torch.full((C,), 2), profile=torch.full((C, 1), 2), item=torch.randint(1, N, (C,), generator=g),
                    hist=hist[None].expand(C, -1), mask=(hist > 0)[None].expand(C, -1), dense=dense)


@pytest.mark.parametrize("name", CANDIDATE_RANKERS)
def test_candidate_rankers_read_the_candidate_features(name):
    """A ranker built for candidate features: its logits move with each feature of a row (and
    only that row's), it refuses a batch without them, and its one-user serving path equals the
    batch path."""
    spec = SPECS[name]
    model = build(spec, dense_features()).eval()
    b = ctr_batch()
    dense = torch.randn(B, NUM_DENSE, generator=torch.Generator().manual_seed(3))
    out = model(dataclasses.replace(b, dense=dense))
    assert out.shape == (B,) and torch.isfinite(out).all()
    for f in range(NUM_DENSE):
        moved = dense.clone()
        moved[1, f] += 3.0
        diff = model(dataclasses.replace(b, dense=moved)) - out
        assert diff[1].abs() > 1e-4, f"feature {f} does not reach the logit"
        torch.testing.assert_close(diff[[0, 2, 3, 4]], torch.zeros(4), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="candidate features"):
        model(b)
    for n_hist in (0, 1, L):
        one = one_user_batch(7, n_hist, torch.randn(7, NUM_DENSE, generator=torch.Generator().manual_seed(n_hist)))
        with torch.no_grad():
            torch.testing.assert_close(model.score_one_user(one), model(one), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(of_task("baseline")))
def test_baseline_contract(name, random_dataset):
    spec = SPECS[name]
    sp = split_users(random_dataset, SplitConfig(max_len=L))
    model = spec.build(spec.config()).fit(random_dataset, sp)
    hist, mask = (t.numpy() for t in histories())
    hist = np.minimum(hist, random_dataset.num_items - 1)
    s = model.score(hist, mask)
    assert s.shape == (B, random_dataset.num_items)
    np.testing.assert_array_equal(model.score(np.where(mask, hist, 7), mask), s)


def last_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def retrieval_cfg(name: str, loss: str = "auto") -> RunConfig:
    spec = SPECS[name]
    return RunConfig(model=name, model_args={k: v for k, v in small_args(spec.config).items() if k != "max_len"},
                     train=TrainConfig(epochs=2, batch_size=32, max_batches_per_epoch=3, patience=10,
                                       loss=loss, num_negatives=10, optimizer="sparse"),
                     split=SplitConfig(max_len=L))


@pytest.mark.parametrize("loss", ["auto", "sampled"])  # sampled: the row-wise optimiser's sparse table
@pytest.mark.parametrize("name", sorted(of_task("retrieval")))
def test_retriever_resume_equals_uninterrupted(name, loss, random_dataset, tmp_path):
    cfg = retrieval_cfg(name, loss)
    train(cfg, random_dataset, tmp_path / "a", progress=False)
    train(cfg, random_dataset, tmp_path / "b", progress=False, stop_after_epoch=0)
    train(cfg, random_dataset, tmp_path / "b", progress=False, resume=True)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))


def test_weight_average_resumes_as_uninterrupted_and_needs_dense_adam(random_dataset, tmp_path):
    """``train.weight_average`` on a real retriever: best.pt holds the average, not the weights
    as trained, a resumed run ends where an uninterrupted one does, and the row-wise optimiser
    (whose rows lag their steps) is refused naming the setting."""
    cfg = retrieval_cfg("comirec-sa", "sampled")
    cfg.train.optimizer, cfg.train.weight_average = "adam", 0.9
    train(cfg, random_dataset, tmp_path / "a", progress=False)
    train(cfg, random_dataset, tmp_path / "b", progress=False, stop_after_epoch=0)
    train(cfg, random_dataset, tmp_path / "b", progress=False, resume=True)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))
    one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
    train(one, random_dataset, tmp_path / "one", progress=False)
    best = load_checkpoint(tmp_path / "one" / "best.pt")["model"]  # its one epoch's
    avg = load_checkpoint(tmp_path / "one" / "last.pt")["average"]
    assert_same_weights(best, {k.removeprefix("module."): v for k, v in avg.items() if k != "n_averaged"})
    assert not torch.allclose(best["W1.weight"], last_weights(tmp_path / "one")["W1.weight"])
    cfg.train.optimizer = "sparse"
    with pytest.raises(MirecConfigError, match="train.weight_average"):
        train(cfg, random_dataset, tmp_path / "c", progress=False)


@pytest.mark.parametrize("name", sorted(of_task("ranking")))
def test_ranker_resume_equals_uninterrupted(name, random_dataset, tmp_path):
    cfg = RankRunConfig(model=name, model_args={"dim": 8},
                        train=RankTrainConfig(epochs=2, max_batches_per_epoch=3, patience=10))
    train_ctr(cfg, random_dataset, tmp_path / "a", progress=False)
    train_ctr(cfg, random_dataset, tmp_path / "b", progress=False, stop_after_epoch=0)
    train_ctr(cfg, random_dataset, tmp_path / "b", progress=False, resume=True)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))


# ------------------------------------------------------------------- the recipe, walked once


@dataclasses.dataclass
class MeanPoolConfig:
    dim: int = 8
    max_len: int = 20

    def validate(self) -> None:
        pass


class MeanPool(nn.Module):
    """A toy one-interest retriever: the mean of the history's item vectors."""

    def __init__(self, cfg: MeanPoolConfig, num_items: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_items, cfg.dim, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=0.1)
        with torch.no_grad():
            self.emb.weight[0] = 0

    def interests(self, hist: torch.Tensor, mask: torch.Tensor) -> Interests:
        w = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)  # (B, L)
        v = torch.einsum("bl,bld->bd", w, self.emb(hist))[:, None]  # (B, 1, D)
        return Interests(v, torch.ones(len(hist), 1, dtype=torch.bool), w[:, None])

    def item_embeddings(self) -> torch.Tensor:
        return self.emb.weight

    def readout(self, out: Interests, target_emb: torch.Tensor) -> torch.Tensor:
        return out.vectors[:, 0]


def test_a_new_model_is_one_class_and_one_registry_line(monkeypatch, random_dataset, tmp_path):
    monkeypatch.setitem(SPECS, "mean-pool", ModelSpec("mean-pool", "retrieval", MeanPoolConfig, MeanPool))
    model = MeanPool(MeanPoolConfig(max_len=L), N)
    check_retriever(model)  # the contract the parametrised tests check
    run = mirec.fit(model="mean-pool", data=random_dataset.path, out=tmp_path / "run", seeds=[1],
                    train={"epochs": 2, "batch_size": 32}, progress=False)
    assert set(run.metrics) >= {"recall@20", "recall@50"} and 0 <= run.metrics["recall@50"] <= 1
    assert mirec.evaluate(run=run.path).metrics == pytest.approx(run.metrics)
    bundle = mirec.export(run.path, out=tmp_path / "bundle")
    user = str(random_dataset.users["raw_id"][0])
    items = mirec.Recommender.open(bundle).recommend(user_id=user, n=5).items
    assert len(items) == 5


# ---- model_args.item_features: item vector = id embedding + pooled attribute embeddings ----


def small_categories() -> tuple:
    """Items 1..N-1 with 0, 1 or 2 of 5 attributes (as Dataset.category_index() gives them)."""
    lists = [[]] + [[j for j in range(5) if (i * (j + 1)) % 3 == 0][:2] for i in range(1, N)]
    indptr = np.cumsum([0] + [len(c) for c in lists])
    return indptr, np.array(sum(lists, []), dtype=np.int64), [f"a{j}" for j in range(5)]


def build_with_features(spec: ModelSpec, mode: str = "mean"):
    torch.manual_seed(0)
    return spec.build(spec.config(**small_args(spec.config), item_features=mode), N, small_categories())


@pytest.mark.parametrize("name", sorted(of_task("retrieval")))
def test_retriever_contract_with_item_features(name):
    """Padding invariance, shapes and determinism with item features on; the item table is
    w_i + mean of the item's attribute embeddings (by hand), and off is the plain table."""
    spec = SPECS[name]
    model = build_with_features(spec)
    check_retriever(model)
    params_finite_and_reproducible(lambda: build_with_features(spec))
    from mirec.models.layers import attribute_items

    t = attribute_items(model)
    indptr, ids, _ = small_categories()
    with torch.no_grad():
        table = model.item_embeddings()
        for i in (0, 1, 3, 6, N - 1):
            attrs = ids[indptr[i]:indptr[i + 1]]
            want = t.weight[i] + (t.attr.weight[torch.from_numpy(attrs + 1)].mean(0) if len(attrs) else 0)
            torch.testing.assert_close(table[i], want, rtol=0, atol=1e-6)
        summed = build_with_features(spec, "sum")
        attrs = ids[indptr[6]:indptr[7]]
        assert len(attrs) == 2
        torch.testing.assert_close(summed.item_embeddings()[6], attribute_items(summed).weight[6]
                                   + attribute_items(summed).attr.weight[torch.from_numpy(attrs + 1)].sum(0))
    off = build(spec, N)
    assert attribute_items(off) is None
    assert any(off.item_embeddings() is p for p in off.parameters())  # the plain table, as before


@pytest.mark.parametrize("name", sorted(of_task("retrieval")))
def test_retriever_with_item_features_resumes_as_uninterrupted(name, random_dataset, tmp_path):
    cfg = retrieval_cfg(name)
    cfg.model_args["item_features"] = "mean"
    cfg.train.optimizer = "adam"  # the sparse row-wise optimiser needs a plain item table
    train(cfg, random_dataset, tmp_path / "a", progress=False)
    train(cfg, random_dataset, tmp_path / "b", progress=False, stop_after_epoch=0)
    train(cfg, random_dataset, tmp_path / "b", progress=False, resume=True)
    a = last_weights(tmp_path / "a")
    assert any(".attr." in k for k in a)
    assert_same_weights(a, last_weights(tmp_path / "b"))
