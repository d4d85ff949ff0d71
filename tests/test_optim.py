"""The row-wise optimiser (train.optimizer=sparse): a step touches only the rows a batch read,
follows Adam's rule on them, and the negative sampler draws from the distribution its logQ
correction assumes in O(S)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import mirec.train.optim as optim
from mirec.data.split import SplitConfig
from mirec.models.registry import of_task
from mirec.runs import RunConfig, TrainConfig
from mirec.train.loop import LossModule, setup, train_step
from mirec.train.losses import NegativeSampler
from mirec.train.optim import RowwiseAdam, hugepage_copy, item_table, make_optimizer

torch.set_num_threads(1)
S = 7  # negatives


def sparse_cfg(name: str, **train) -> RunConfig:
    return RunConfig(model=name, model_args={"dim": 8},
                     train=TrainConfig(loss="sampled", optimizer="sparse", num_negatives=S, batch_size=16,
                                       **train),
                     split=SplitConfig(max_len=8))


@pytest.mark.parametrize("name", sorted(of_task("retrieval")))
def test_one_sparse_step_changes_only_the_rows_the_batch_read(name, random_dataset):
    """Every retriever: the item table's gradient is sparse, and after one step the rows outside
    history + targets + negatives, and their Adam moments, are exactly as they were."""
    cfg = sparse_cfg(name, weight_decay=0.01)
    split, model, opt, sampler = setup(cfg, random_dataset)
    assert isinstance(opt, RowwiseAdam) and item_table(model).sparse
    fn = LossModule(model, cfg.train, sampler, random_dataset.num_items)
    idx = np.arange(16)
    ds = random_dataset
    start, pos = split.examples[idx]  # (B,) each
    read = {int(i) for s, p in zip(start, pos) for i in ds.item[max(s, p - 8):p + 1]}  # history + target
    draw, drawn = sampler.sample, []
    sampler.sample = lambda s, generator=None: drawn.append(draw(s, generator)) or drawn[-1]  # records
    before = model.item_embeddings().detach().clone()
    train_step(opt, ds, split, idx, cfg, fn)
    read |= set(torch.cat(drawn).tolist())  # the negatives the loss drew
    changed = set(torch.nonzero((model.item_embeddings().detach() != before).any(1)).flatten().tolist())
    assert changed and changed <= read
    untouched = sorted(set(range(ds.num_items)) - read)
    assert len(untouched) > 10
    assert (opt.exp_avg[untouched] == 0).all() and (opt.exp_avg_sq[untouched] == 0).all()
    assert (opt.exp_avg_sq[sorted(changed)] > 0).all()


class Table(nn.Module):
    def __init__(self, rows: int = 5, dim: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(rows, dim)
        self.w = nn.Parameter(torch.ones(2))

    def item_embeddings(self) -> torch.Tensor:
        return self.emb.weight


def test_rowwise_rule_on_touched_rows_matches_a_hand_computation():
    """Two steps of the row-wise rule with L2 on the touched rows: step 1 reads rows 1 and 2,
    step 2 reads rows 2 and 3 (no row read before skips a step, so there is nothing to catch
    up). Row 1 stays where step 1 left it until it is read again or flushed; row 3 takes its
    first update with the bias correction of step 2; rows 0 and 4 never move."""
    torch.manual_seed(0)
    m = Table()
    lr, wd, b1, b2, eps = 0.1, 0.5, 0.9, 0.999, 1e-8
    opt = make_optimizer(m, "sparse", lr, wd, sampled=True)
    assert isinstance(opt, RowwiseAdam) and m.emb.sparse
    w0 = m.emb.weight.detach().clone()
    c1, c2 = torch.tensor([[1.0, -2.0], [3.0, 0.5]]), torch.tensor([[-1.0, 1.0], [2.0, 2.0]])

    def step(rows: list[int], coef: torch.Tensor) -> None:
        opt.zero_grad()
        ((m.emb(torch.tensor(rows)) * coef).sum() + m.w.square().sum()).backward()  # d/d row = coef
        opt.step()
        assert m.emb.weight.grad is not None and m.emb.weight.grad.is_sparse

    step([1, 2], c1)
    w1 = m.emb.weight.detach().clone()
    step([2, 3], c2)
    w2 = m.emb.weight.detach()

    def adam(p: torch.Tensor, grads: list[torch.Tensor], steps: list[int]) -> torch.Tensor:
        """Adam on one row read on consecutive steps (global step numbers)."""
        mom, sq = torch.zeros_like(p), torch.zeros_like(p)
        for g, t in zip(grads, steps):
            g = g + wd * p  # L2 on a touched row
            mom, sq = b1 * mom + (1 - b1) * g, b2 * sq + (1 - b2) * g * g
            p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * mom / (sq.sqrt() + eps)
        return p

    torch.testing.assert_close(w1[1], adam(w0[1], [c1[0]], [1]))
    torch.testing.assert_close(w2[1], w1[1], rtol=0, atol=0)  # not read in step 2: unchanged
    torch.testing.assert_close(w2[2], adam(w0[2], [c1[1], c2[0]], [1, 2]))
    torch.testing.assert_close(w2[3], adam(w0[3], [c2[1]], [2]))
    torch.testing.assert_close(w2[[0, 4]], w0[[0, 4]], rtol=0, atol=0)
    # the dense parameter steps with dense Adam
    assert not torch.equal(m.w.detach(), torch.ones(2))


@pytest.mark.parametrize("cut", [None, 0.3])
def test_rowwise_adam_follows_dense_adam_on_rows_a_step_skips(cut):
    """Rows read on some steps only: after flush() the table is dense Adam's, whose momentum
    keeps moving a row on the steps without its gradient (lazy Adam would leave it behind).
    Both first take warm steps on every row, so that the bias correction is constant; eps is
    negligible; the gradients do not depend on the weights (no feedback to amplify rounding).
    ``cut``: the rate is multiplied by it mid-run (``scale_learning_rate``, train.plateau_decay):
    the row-wise optimiser first applies its rows' skipped steps at the old rate, as dense Adam
    took them, and ``learning_rate`` reports the new rate for both."""
    from mirec.train.optim import learning_rate, scale_learning_rate

    lr, betas, eps, rows, dim = 0.01, (0.9, 0.99), 1e-12, 40, 3
    torch.manual_seed(0)
    a, b = Table(rows, dim), Table(rows, dim)
    b.load_state_dict(a.state_dict())
    a.emb.sparse = True
    sparse = RowwiseAdam(a, a.emb.weight, lr, 0.0, betas=betas, eps=eps)
    dense = torch.optim.Adam(b.parameters(), lr=lr, betas=betas, eps=eps)
    coef = torch.randn(rows, dim)
    gen = torch.Generator().manual_seed(1)
    for t in range(2200):
        if cut and t == 2100:
            for opt in (sparse, dense):
                scale_learning_rate(opt, cut)
                assert learning_rate(opt) == pytest.approx(lr * cut)
        read = torch.arange(rows) if t < 2000 else torch.nonzero(torch.rand(rows, generator=gen) < 0.3).flatten()
        for m, opt in ((a, sparse), (b, dense)):
            opt.zero_grad()
            x = m.emb(read)  # (R, D)
            ((x * coef[read]).sum() * math.cos(t) + m.w.square().sum()).backward()
            opt.step()
    before = a.emb.weight.detach().clone()
    sparse.flush()
    moved = (a.emb.weight.detach() - before).abs().max()
    assert moved > 1e-4  # the skipped steps moved rows that lazy Adam would have left
    torch.testing.assert_close(a.emb.weight.detach(), b.emb.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse.exp_avg, dense.state[b.emb.weight]["exp_avg"], rtol=1e-4, atol=1e-9)


def test_state_dict_round_trip_continues_identically():
    """A fresh optimiser loaded from the state dict takes the same next step."""
    def run(reload: bool) -> torch.Tensor:
        torch.manual_seed(0)
        m = Table()
        opt = make_optimizer(m, "sparse", 0.1, 0.0, sampled=True)
        for t, rows in enumerate([[1, 2], [2, 3], [1, 4]]):
            if reload and t == 2:
                st = opt.state_dict()
                opt = make_optimizer(m, "sparse", 0.1, 0.0, sampled=True)
                opt.load_state_dict(st)
            opt.zero_grad()
            m.emb(torch.tensor(rows)).sum().mul(m.w.sum()).backward()
            opt.step()
        return torch.cat([m.emb.weight.detach().flatten(), m.w.detach()])

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=0)


def thp_eligible(t: torch.Tensor) -> bool:
    """Whether the kernel lists the memory under ``t`` as eligible for transparent huge pages."""
    addr, block = t.data_ptr(), None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(x, 16) for x in head.split("-"))
                block = lo <= addr < hi
            elif block and line.startswith("THPeligible:"):
                return line.split()[1] == "1"
    return False


def thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "none"
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.skipif(thp_mode() not in ("madvise", "always"), reason="no transparent huge pages here")
def test_sparse_table_and_moments_live_in_huge_page_memory_with_the_same_values(monkeypatch):
    """The row-wise optimiser moves the table (the same Parameter) and allocates both moments
    in memory advised for huge pages; the values, and every step after, are unchanged."""
    t = torch.randn(1024, 2048)  # 8 MiB: a region must hold a 2 MiB page to be eligible
    c = hugepage_copy(t, min_bytes=0)
    assert torch.equal(c, t) and c.data_ptr() != t.data_ptr() and thp_eligible(c)
    c[0] = 1.0  # writable, and a copy
    assert not torch.equal(c, t)

    def run(min_bytes: int) -> tuple[torch.Tensor, RowwiseAdam, nn.Parameter]:
        monkeypatch.setattr(optim, "HUGEPAGE_MIN_BYTES", min_bytes)
        torch.manual_seed(0)
        m = Table(1 << 16, 32)  # 8 MiB
        param = m.emb.weight
        opt = make_optimizer(m, "sparse", 0.1, 0.0, sampled=True)
        for rows in ([1, 2], [2, 3], [1, 4]):
            opt.zero_grad()
            m.emb(torch.tensor(rows)).sum().mul(m.w.sum()).backward()
            opt.step()
        assert m.emb.weight is param
        return torch.cat([m.emb.weight.detach().flatten(), m.w.detach()]), opt, m.emb.weight

    plain, _, _ = run(1 << 40)
    huge, opt, weight = run(0)
    torch.testing.assert_close(huge, plain, rtol=0, atol=0)
    if thp_mode() == "madvise":  # under "always" every large allocation is eligible anyway
        assert thp_eligible(weight) and thp_eligible(opt.exp_avg) and thp_eligible(opt.exp_avg_sq)


def test_auto_steps_the_table_row_wise_only_above_its_threshold(monkeypatch):
    """The default, auto: dense Adam for a small catalogue, the row-wise optimiser for a large
    one (with the sampled softmax; the full softmax and train.weight_average stay dense whatever
    the size)."""
    assert TrainConfig().optimizer == "auto"
    monkeypatch.setattr(optim, "SPARSE_ABOVE", 4)
    assert isinstance(make_optimizer(Table(5, 2), "auto", 0.1, 0.0, sampled=True), torch.optim.Adam)
    big = Table(6, 2)  # 5 real items
    assert isinstance(make_optimizer(big, "auto", 0.1, 0.0, sampled=True), RowwiseAdam)
    assert big.emb.sparse
    assert isinstance(make_optimizer(Table(6, 2), "auto", 0.1, 0.0, sampled=False), torch.optim.Adam)
    # a moving average of the weights passes over the whole table each step anyway: dense
    averaged = Table(6, 2)
    assert isinstance(make_optimizer(averaged, "auto", 0.1, 0.0, sampled=True, averaged=True), torch.optim.Adam)
    assert not averaged.emb.sparse


def test_full_softmax_and_adam_use_dense_adam():
    """The full softmax reads every row: the table keeps dense Adam (and a dense gradient)."""
    for kind, sampled in (("sparse", False), ("adam", True)):
        m = Table()
        opt = make_optimizer(m, kind, 0.1, 0.0, sampled=sampled)
        assert isinstance(opt, torch.optim.Adam) and not m.emb.sparse


@pytest.mark.parametrize("kind,threshold", [("uniform", 84.04), ("log-uniform", 84.04)])
def test_sampler_draws_follow_its_log_q(kind, threshold):
    """200k seeded draws over 49 real items: the chi-square statistic against exp(log_q) stays
    under chi2(48)'s 99.9% quantile; item 0 (padding) is never drawn."""
    n = 50
    counts = np.random.default_rng(0).zipf(1.5, n).astype(np.int64)
    s = NegativeSampler(n, kind, counts)
    draws = s.sample(200_000, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=n).double()
    assert freq[0] == 0
    expected = 200_000 * s.log_q[1:].double().exp()
    assert float(s.log_q[1:].double().exp().sum()) == pytest.approx(1.0, abs=1e-6)
    chi = float(((freq[1:] - expected) ** 2 / expected).sum())
    assert chi < threshold
