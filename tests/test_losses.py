"""Full and sampled softmax losses and the negative sampler: exact identities and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from mirec.models.base import Interests, argmax_readout
from mirec.models.layers import label_aware_attention
from mirec.train.loop import TrainConfig, batch_loss
from mirec.train.losses import NegativeSampler, full_softmax_loss, sampled_softmax_loss

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def _problem(n=12, d=5, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n, d, generator=g, dtype=torch.float64)
    user = torch.randn(b, d, generator=g, dtype=torch.float64)
    target = torch.randint(1, n, (b,), generator=g)
    return items, user, target


def _sampled(user, items, target, negatives, log_q, temperature=1.0):
    """The sampled loss with the embeddings gathered from one table (as batch_loss does)."""
    return sampled_softmax_loss(user, items[target], items[negatives], target, negatives, log_q,
                                temperature)


def _zipf_counts(n, seed):
    """Made-up training counts over items 1..n-1 (Zipf-like, shuffled so id != rank)."""
    counts = np.zeros(n, dtype=np.int64)
    counts[1:] = np.random.default_rng(seed).permutation(1000 // np.arange(1, n))
    return counts


# ---------------------------------------------------------------------------------------------
# full softmax


def test_full_softmax_by_hand():
    items = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    user = torch.tensor([[2.0, 0.0]])
    # logits over items 1..3 at T = 0.5: [4, 0, 4]; target 3
    expect = -(4.0 - math.log(2 * math.exp(4.0) + 1.0))
    got = full_softmax_loss(user, items, torch.tensor([3]), temperature=0.5)
    assert got.item() == pytest.approx(expect, rel=1e-6)


def test_full_softmax_padding_is_never_a_candidate():
    items, user, target = _problem()
    base = full_softmax_loss(user, items, target)
    # item 0 made overwhelmingly attractive to every user: if it were a candidate the loss
    # would explode (its logit ~1e6); as -inf it changes nothing
    huge = items.clone()
    huge[0] = 1e6 * user.sum(0)
    it = _leaf(huge)
    loss = full_softmax_loss(user, it, target)
    torch.testing.assert_close(loss, base, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(it.grad[0] == 0)  # no gradient reaches the padding row
    assert torch.isfinite(it.grad).all()


# ---------------------------------------------------------------------------------------------
# sampled == full when the whole catalogue is sampled once under uniform Q


@pytest.mark.parametrize("temperature", [1.0, 0.3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_sampled_equals_full_when_every_item_sampled_once(temperature, shuffle):
    n = 12
    items, user, target = _problem(n=n, b=8)
    target[:3] = torch.tensor([1, n - 1, 5])  # the extremes of the id range included
    negatives = torch.arange(1, n)
    if shuffle:
        negatives = negatives[torch.randperm(n - 1, generator=torch.Generator().manual_seed(1))]
    # every target is among the negatives: each row has exactly one accidental hit to remove
    assert (negatives[None, :] == target[:, None]).sum(1).eq(1).all()
    log_q = NegativeSampler(n, "uniform").log_q.double()

    u1, i1 = _leaf(user), _leaf(items)
    full = full_softmax_loss(u1, i1, target, temperature)
    full.backward()
    u2, i2 = _leaf(user), _leaf(items)
    samp = _sampled(u2, i2, target, negatives, log_q, temperature)
    samp.backward()

    # log(S) + log_q is 0 only up to float32 rounding of the sampler's log_q (~1e-7)
    torch.testing.assert_close(samp, full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(u2.grad, u1.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(i2.grad, i1.grad, rtol=1e-6, atol=1e-7)
    assert u1.grad.abs().sum() > 0 and i1.grad[1:].abs().sum() > 0  # not a vacuous 0 == 0


def test_sampled_differs_from_full_without_hit_removal():
    # control for the test above: a duplicate of the target among the negatives (what an
    # unmasked accidental hit is) must change the loss, so the equality is not automatic
    n = 12
    items, user, target = _problem(n=n)
    log_q = NegativeSampler(n, "uniform").log_q.double()
    negatives = torch.arange(1, n)
    full = full_softmax_loss(user, items, target)
    logits = user @ items[1:].T  # (B, N-1), corrections are all 0 here
    pos = (user * items[target]).sum(-1)
    unmasked = -(pos - torch.logsumexp(torch.cat([pos[:, None], logits], 1), 1)).mean()
    assert unmasked.item() > full.item() + 0.01
    assert _sampled(user, items, target, negatives, log_q).item() == pytest.approx(full.item())


# ---------------------------------------------------------------------------------------------
# temperature


def test_temperature_is_scaling_the_user_vector():
    n = 20
    items, user, target = _problem(n=n, seed=3)
    sampler = NegativeSampler(n, "log-uniform", _zipf_counts(n, 3))
    negatives = sampler.sample(15, torch.Generator().manual_seed(0))
    log_q = sampler.log_q.double()
    for t in (0.5, 0.1, 2.0):
        f_t = full_softmax_loss(user, items, target, t)
        f_1 = full_softmax_loss(user, items, target, 1.0)
        torch.testing.assert_close(f_t, full_softmax_loss(user / t, items, target, 1.0))
        assert abs(f_t.item() - f_1.item()) > 1e-3
        s_t = _sampled(user, items, target, negatives, log_q, t)
        s_1 = _sampled(user, items, target, negatives, log_q, 1.0)
        # the logQ correction must not be divided by T: only the scores are
        torch.testing.assert_close(s_t, _sampled(user / t, items, target, negatives, log_q, 1.0))
        assert abs(s_t.item() - s_1.item()) > 1e-3


def test_sampled_correction_is_not_scaled_by_temperature():
    # one row, one negative, everything by hand: logits [pos/T, neg/T - log(1 * Q(j))]
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    user = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    log_q = torch.log(torch.tensor([0.0, 0.2, 0.3, 0.5], dtype=torch.float64))
    target, negatives = torch.tensor([1]), torch.tensor([3])
    t = 0.25
    pos, neg = 0.5 / t, 2.5 / t - math.log(0.5)
    expect = -(pos - math.log(math.exp(pos) + math.exp(neg)))
    got = _sampled(user, items, target, negatives, log_q, t)
    assert got.item() == pytest.approx(expect, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# accidental hits


def test_accidental_hit_is_masked():
    n = 15
    items, user, _ = _problem(n=n, b=3, seed=5)
    sampler = NegativeSampler(n, "log-uniform", _zipf_counts(n, 5))
    log_q = sampler.log_q.double()
    target = torch.tensor([4, 7, 9])
    negatives = torch.tensor([3, 4, 11, 4, 2, 7, 1])  # row 0's target twice, row 1's once
    s = len(negatives)

    def row_loss(b, emb=items):
        return sampled_softmax_loss(user[b:b + 1], emb[target[b:b + 1]], emb[negatives],
                                    target[b:b + 1], negatives, log_q).item()

    for b in range(3):
        # by hand with the same S in log(S Q): the hit negatives are simply absent
        keep = negatives[negatives != target[b]]
        pos = user[b] @ items[target[b]]
        neg = items[keep] @ user[b] - (math.log(s) + log_q[keep])
        expect = -(pos - torch.logsumexp(torch.cat([pos[None], neg]), 0)).item()
        assert row_loss(b) == pytest.approx(expect, rel=1e-12)

    # equivalently: what a hit's negative slot holds does not matter to its row (the positive
    # keeps its own embedding), while for a row where the item is a true negative it does
    neg_emb = items[negatives].clone()
    neg_emb[negatives == 4] = 50.0 * user[2]  # whatever; for row 2 a huge logit
    l0 = sampled_softmax_loss(user[:1], items[target[:1]], neg_emb, target[:1], negatives, log_q)
    assert l0.item() == pytest.approx(row_loss(0), rel=1e-12)
    l2 = sampled_softmax_loss(user[2:], items[target[2:]], neg_emb, target[2:], negatives, log_q)
    assert l2.item() > row_loss(2) + 1.0  # for row 2 item 4 is a real negative: it counts

    # and no gradient flows into a masked slot from its own row
    ne = _leaf(items[negatives])
    sampled_softmax_loss(user[:1], items[target[:1]], ne, target[:1], negatives, log_q).backward()
    assert torch.all(ne.grad[negatives == 4] == 0)
    assert ne.grad[negatives != 4].abs().sum() > 0


def test_all_negatives_hits_leaves_only_the_positive():
    items, user, _ = _problem(n=10, b=2)
    target = torch.tensor([3, 3])
    negatives = torch.tensor([3, 3, 3])
    loss = _sampled(user, items, target, negatives, NegativeSampler(10, "uniform").log_q)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)  # -log(1): nothing to compete with


# ---------------------------------------------------------------------------------------------
# logQ correction, statistically


N_CAT, DIM = 30, 8


def _stat_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(N_CAT, DIM, generator=g, dtype=torch.float64)
    user = torch.randn(4, DIM, generator=g, dtype=torch.float64)
    sampler = NegativeSampler(N_CAT, "log-uniform", _zipf_counts(N_CAT, seed))
    # targets from the head, the middle and the tail of the popularity ranking
    target = sampler.rank_to_item[torch.tensor([0, 3, 15, 28])]
    # one row the model already fits well (p_target ~ 0.4): its gradient is the one a wrong
    # treatment of the positive distorts most
    user[0] = 0.5 * items[target[0]] + 0.5 * user[0]
    return g, items, user, sampler, target


def _mean_sampled_grad(items, user, target, negs, log_q):
    """The sampled loss's gradient w.r.t. the user vectors, averaged over draws (rows of negs)."""
    def f(u, neg):
        return sampled_softmax_loss(u, items[target], items[neg], target, neg, log_q)
    return vmap(grad(f), in_dims=(None, 0))(user, negs).mean(0)


def _errors(g_est, g_ref):
    cos = F.cosine_similarity(g_est.flatten(), g_ref.flatten(), dim=0).item()
    rel = ((g_est - g_ref).norm() / g_ref.norm()).item()
    return cos, rel


def _full_grad(items, user, target):
    u = _leaf(user)
    full_softmax_loss(u, items, target).backward()
    return u.grad


def test_logq_correction_makes_the_expected_gradient_the_full_one():
    """Average of 2000 sampled-softmax gradients (S = 100 log-uniform negatives over N = 30).

    Tolerance: the Monte-Carlo error of a mean of 2000 draws is a few percent of the gradient
    norm at most; what remains is the O(1/S) bias of the self-normalised estimate. Over 20 seeds
    of this set-up (measured when the test was written) the corrected estimate had cosine >=
    0.993 and relative error <= 0.13 to the full gradient; uncorrected (the draws treated as
    uniform) the error was >= 0.09 and >= 1.5x the corrected one. At this seed: 0.04 corrected,
    0.22 treated as uniform, 0.30 with log_q = 0. (At S = 20 the finite-S bias is as large as
    the missing correction for some seeds, hence S = 100.)
    """
    g, items, user, sampler, target = _stat_problem(0)
    g_full = _full_grad(items, user, target)
    negs = torch.stack([sampler.sample(100, g) for _ in range(2000)])  # (R, S)

    cos, rel = _errors(_mean_sampled_grad(items, user, target, negs, sampler.log_q.double()),
                       g_full)
    assert cos > 0.98 and rel < 0.2, (cos, rel)

    # the same draws without the right correction: treated as uniform draws, or log_q = 0
    for wrong in (NegativeSampler(N_CAT, "uniform").log_q.double(),
                  torch.zeros(N_CAT, dtype=torch.float64)):
        cos0, rel0 = _errors(_mean_sampled_grad(items, user, target, negs, wrong), g_full)
        assert rel0 > 0.15 and rel0 > 2 * rel, (rel0, rel)
        assert cos0 < cos


def test_sampled_gradient_converges_to_the_full_one_as_s_grows():
    """With S = 2000 draws (N = 30) the corrected estimate is consistent: error -> 0.

    Over 20 seeds the relative error was <= 0.015 (20 draws averaged); uncorrected it stays
    >= 0.07 however large S is (0.22 / 0.29 at this seed), and it did too when the positive's
    logit was also corrected
    while hits are masked (up to 0.5: that row's term vanishes and the row's gradient is
    inflated by 1 / (1 - p_target)), which is what this test guards against.
    """
    g, items, user, sampler, target = _stat_problem(0)
    g_full = _full_grad(items, user, target)
    negs = torch.stack([sampler.sample(2000, g) for _ in range(20)])
    cos, rel = _errors(_mean_sampled_grad(items, user, target, negs, sampler.log_q.double()),
                       g_full)
    assert cos > 0.999 and rel < 0.05, (cos, rel)
    for wrong in (NegativeSampler(N_CAT, "uniform").log_q.double(),
                  torch.zeros(N_CAT, dtype=torch.float64)):
        _, rel0 = _errors(_mean_sampled_grad(items, user, target, negs, wrong), g_full)
        assert rel0 > 0.1, rel0
    # the loss value converges as well
    full = full_softmax_loss(user, items, target).item()
    vals = [_sampled(user, items, target, negs[r], sampler.log_q.double()).item()
            for r in range(20)]
    assert np.mean(vals) == pytest.approx(full, rel=0.02)


# ---------------------------------------------------------------------------------------------
# the sampler


def test_uniform_sampler_never_pads_and_covers_the_catalogue():
    n = 50
    sampler = NegativeSampler(n, "uniform")
    draws = sampler.sample(100_000, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.int64
    assert draws.min().item() == 1 and draws.max().item() == n - 1
    freq = np.bincount(draws.numpy(), minlength=n) / len(draws)
    assert freq[0] == 0
    # binomial sd of each frequency is sqrt(q(1-q)/100k) ~ 4.4e-4; 5 sd
    assert np.abs(freq[1:] - 1 / (n - 1)).max() < 5 * math.sqrt((1 / 49) * (48 / 49) / 1e5)
    assert sampler.log_q[0] == float("-inf")
    assert torch.exp(sampler.log_q[1:].double()).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_log_uniform_sampler_matches_its_q():
    n = 40
    counts = _zipf_counts(n, 7)
    counts[5] = counts[9] = 17  # a tie: broken by id, stably
    sampler = NegativeSampler(n, "log-uniform", counts)
    log_q = sampler.log_q
    assert log_q[0] == float("-inf")
    q = torch.exp(log_q[1:].double()).numpy()
    assert q.sum() == pytest.approx(1.0, abs=1e-6)
    # the ranking: a permutation of 1..n-1 by decreasing count; Q follows the ranking exactly
    order = sampler.rank_to_item.numpy()
    assert sorted(order.tolist()) == list(range(1, n))
    assert np.all(np.diff(counts[order]) <= 0)
    assert order.tolist().index(5) < order.tolist().index(9)
    ranks = np.arange(n - 1)
    np.testing.assert_allclose(q[order - 1], np.log((ranks + 2) / (ranks + 1)) / math.log(n),
                               rtol=1e-5)

    m = 200_000
    draws = sampler.sample(m, torch.Generator().manual_seed(0)).numpy()
    freq = np.bincount(draws, minlength=n) / m
    assert freq[0] == 0 and draws.min() >= 1 and draws.max() <= n - 1
    # per-item binomial tolerance, 5 sd (40 items: a false alarm is practically impossible)
    sd = np.sqrt(q * (1 - q) / m)
    assert np.all(np.abs(freq[1:] - q) < 5 * sd + 1e-6), np.abs(freq[1:] - q) / sd
    top = int(np.argmax(counts))
    assert int(np.argmax(freq)) == top
    assert freq[top] == pytest.approx(math.log(2) / math.log(n), abs=5 * sd.max())
    # the least popular item is drawn least often (in expectation ~ 1/4 of a percent here)
    assert freq[order[-1]] < freq[order[0]] / 10


def test_sampler_is_repeatable_and_validates():
    sampler = NegativeSampler(30, "log-uniform", _zipf_counts(30, 1))
    a = sampler.sample(64, torch.Generator().manual_seed(3))
    b = sampler.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        NegativeSampler(30, "log-uniform")
    with pytest.raises(ValueError):
        NegativeSampler(30, "zipf")


# ---------------------------------------------------------------------------------------------
# how the training loop uses them


class _MeanPool(torch.nn.Module):
    """A one-interest model: the mean of the history's embeddings."""

    def __init__(self, n, d):
        super().__init__()
        self.emb = torch.nn.Embedding(n, d)

    def item_embeddings(self):
        return self.emb.weight

    def interests(self, hist, mask):
        h = self.emb(hist) * mask[..., None]
        v = h.sum(1) / mask.sum(1, keepdim=True)
        return Interests(v[:, None], torch.ones(len(v), 1, dtype=torch.bool),
                         mask[:, None].float())

    def readout(self, out, target_emb):
        return out.vectors[:, 0]


@pytest.mark.parametrize("cosine", [True, False])
def test_batch_loss_sampled_path_matches_full_path(cosine):
    """With the whole catalogue as negatives under uniform Q the two paths of batch_loss agree
    (so both normalise embeddings the same way when ``cosine``)."""
    n, d = 25, 6
    torch.manual_seed(0)
    model = _MeanPool(n, d)
    g = torch.Generator().manual_seed(1)
    hist = torch.randint(1, n, (5, 4), generator=g)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[0, :2] = False
    hist[0, :2] = 0
    target = torch.randint(1, n, (5,), generator=g)
    cfg = TrainConfig(cosine=cosine, temperature=0.2)

    full = batch_loss(model, hist, mask, target, cfg, None, n)
    (g_full,) = torch.autograd.grad(full, model.emb.weight)

    sampler = NegativeSampler(n, "uniform")
    sampler.sample = lambda s, generator=None: torch.arange(1, n)  # every item exactly once
    samp = batch_loss(model, hist, mask, target, cfg, sampler, n)
    (g_samp,) = torch.autograd.grad(samp, model.emb.weight)

    torch.testing.assert_close(samp, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_samp, g_full, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_comirec_sa_shared_lookup_gives_the_separate_lookups_loss_and_gradient(loss):
    """ComiRec-SA reads the loss's targets and negatives in its own history lookup (one item
    table gradient instead of two); the loss and every gradient are those of separate lookups."""
    from mirec.models.comirec_sa import ComiRecSA, ComiRecSAConfig

    n = 30
    torch.manual_seed(0)
    model = ComiRecSA(ComiRecSAConfig(dim=8, num_interests=3, max_len=5), n)
    g = torch.Generator().manual_seed(2)
    hist = torch.randint(1, n, (6, 5), generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.4
    mask[:, -1] = True
    target = torch.randint(1, n, (6,), generator=g)
    cfg = TrainConfig(temperature=0.2, loss=loss)
    sampler = None
    if loss == "sampled":
        sampler = NegativeSampler(n, "uniform")
        negs = torch.randint(1, n, (12,), generator=g)
        sampler.sample = lambda s, generator=None: negs

    def loss_and_grads():
        out = batch_loss(model, hist, mask, target, cfg, sampler, n)
        return out, torch.autograd.grad(out, list(model.parameters()))

    shared, g_shared = loss_and_grads()
    model.gathers_also = False  # this instance takes batch_loss's own lookup
    separate, g_separate = loss_and_grads()
    torch.testing.assert_close(shared, separate)
    for a, b in zip(g_shared, g_separate):
        torch.testing.assert_close(a, b)


class _TwoInterests(torch.nn.Module):
    """Two fixed interests: a long one pointing one way and a unit one pointing another."""

    def __init__(self, items: torch.Tensor, long: torch.Tensor, unit: torch.Tensor):
        super().__init__()
        self.items = torch.nn.Parameter(items)
        self.vectors = torch.stack([long, unit])[None]  # (1, 2, D)

    def interests(self, hist, mask):
        B = len(hist)
        return Interests(self.vectors.expand(B, -1, -1), torch.ones(B, 2, dtype=torch.bool),
                         torch.ones(B, 2, hist.shape[1]) / hist.shape[1])

    def item_embeddings(self):
        return self.items

    def readout(self, out, target_emb):
        return argmax_readout(out, target_emb)


@pytest.mark.parametrize("cosine", [True, False])
def test_readout_compares_the_vectors_that_are_scored(cosine):
    """With cosine scores the argmax readout picks the interest of highest cosine with the
    target (the one serving would retrieve it with), not the longest; with raw inner products
    it keeps the highest inner product."""
    items = torch.tensor([[0.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    long, unit = 10 * torch.tensor([0.8, 0.6]), torch.tensor([0.6, 0.8])
    target = torch.tensor([1])  # item 1 = (0.6, 0.8): inner products 9.6 and 1.0, cosines 0.96 and 1
    model = _TwoInterests(items, long, unit)
    hist, mask = torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)
    cfg = TrainConfig(cosine=cosine, temperature=0.5)
    got = batch_loss(model, hist, mask, target, cfg, None, len(items))
    chosen = unit if cosine else long
    table = F.normalize(items, dim=-1) if cosine else items
    user = F.normalize(chosen, dim=-1) if cosine else chosen
    torch.testing.assert_close(got, full_softmax_loss(user[None], table, target, 0.5))
    other = long if cosine else unit
    user = F.normalize(other, dim=-1) if cosine else other
    assert not torch.isclose(got, full_softmax_loss(user[None], table, target, 0.5))


class _TwoInterestsMIND(_TwoInterests):
    """The same two interests read out by MIND's label-aware attention (p = 2)."""

    def readout(self, out, target_emb):
        return label_aware_attention(out.vectors, out.mask, target_emb, 2.0)


@pytest.mark.parametrize("cosine", [True, False])
def test_label_aware_attention_weighs_the_vectors_that_are_scored(cosine):
    """MIND's label-aware readout gets the interests at unit length under cosine scores:
    its weights softmax(p v_k . e_t) then follow the cosines and its output is a mix of unit
    vectors, so a long interest cannot take all the weight by its length alone."""
    items = torch.tensor([[0.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    long, unit = 10 * torch.tensor([0.8, 0.6]), torch.tensor([0.6, 0.8])
    target = torch.tensor([1])
    model = _TwoInterestsMIND(items, long, unit)
    hist, mask = torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)
    got = batch_loss(model, hist, mask, target, TrainConfig(cosine=cosine, temperature=0.5), None, len(items))

    e = items[1]
    V = torch.stack([long / long.norm(), unit]) if cosine else torch.stack([long, unit])  # (2, D)
    sim = V @ e  # cosine: 0.96 and 1.0; raw: 9.6 and 1.0
    w = torch.exp(2.0 * sim) / torch.exp(2.0 * sim).sum()
    if cosine:  # nearly even weights, the unit interest ahead
        assert 0.5 < w[1] < 0.6
    else:  # the long interest takes the weight
        assert w[0] > 0.99
    user = w @ V
    table = F.normalize(items, dim=-1) if cosine else items
    user = F.normalize(user, dim=-1) if cosine else user
    torch.testing.assert_close(got, full_softmax_loss(user[None], table, target, 0.5))


# ---------------------------------------------------------------------- REMI's training fixes


def test_hard_negative_weights_are_remis_formula_and_zero_is_the_plain_loss():
    """w_j = exp(beta s_j) / mean_k exp(beta s_k) multiplies negative j's term of the partition
    function (hits excluded from the mean); beta = 0 is the plain loss bit for bit."""
    g = torch.Generator().manual_seed(0)
    user, pos, neg_emb = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    target, negatives = torch.tensor([2, 7, 9]), torch.tensor([3, 7, 4, 4, 8])  # row 1 hits item 7
    log_q = torch.log(torch.full((10,), 0.1))
    plain = sampled_softmax_loss(user, pos, neg_emb, target, negatives, log_q, 0.5)
    assert torch.equal(sampled_softmax_loss(user, pos, neg_emb, target, negatives, log_q, 0.5, 0.0), plain)
    beta = 2.0
    got = sampled_softmax_loss(user, pos, neg_emb, target, negatives, log_q, 0.5, beta)
    losses = []
    for b in range(3):
        p = (user[b] @ pos[b]).item() / 0.5
        s = (neg_emb @ user[b]) / 0.5  # (S,) logits
        live = negatives != target[b]
        w = torch.exp(beta * s[live]) / torch.exp(beta * s[live]).mean()
        z = math.exp(p) + (w * torch.exp(s[live] - math.log(5) - log_q[negatives[live]])).sum().item()
        losses.append(math.log(z) - p)
    assert got.item() == pytest.approx(np.mean(losses), rel=1e-5)
    assert got.item() > plain.item()  # hard negatives weigh more: the loss is larger


def test_routing_penalty_is_the_squared_diagonal_of_the_attention_covariance():
    from mirec.train.losses import routing_penalty

    mask = torch.tensor([[False, True, True, True, True]])  # 4 real positions
    collapsed = torch.tensor([[[0, 1.0, 0, 0, 0], [0, 0.25, 0.25, 0.25, 0.25]]])  # (1, K=2, L)
    var_one_hot = np.var([1.0, 0, 0, 0])  # population variance over the real positions
    assert routing_penalty(collapsed, mask).item() == pytest.approx(var_one_hot ** 2 + 0.0)
    cfg = TrainConfig(routing_reg=0.5)
    torch.manual_seed(0)
    from mirec.models.comirec_sa import ComiRecSA, ComiRecSAConfig

    model = ComiRecSA(ComiRecSAConfig(dim=8, num_interests=2, max_len=5), 12)
    hist = torch.tensor([[0, 3, 4, 5, 6]])
    base = batch_loss(model, hist, hist > 0, torch.tensor([7]), TrainConfig(routing_reg=0), None, 12)
    with_reg = batch_loss(model, hist, hist > 0, torch.tensor([7]), cfg, None, 12)
    out = model.interests(hist, hist > 0)
    assert with_reg.item() == pytest.approx(base.item() + 0.5 * routing_penalty(out.weights, hist > 0).item(),
                                            rel=1e-6)


def test_routing_reg_auto_is_ten_for_comirec_sa_and_off_for_the_other_models():
    """The default ``train.routing_reg = "auto"``: ComiRec-SA's loss is the loss at 10, MIND's
    (whose routing weights the penalty would also move) the plain one; config strings parse."""
    from mirec.config import load
    from mirec.errors import MirecConfigError
    from mirec.models.comirec_sa import ComiRecSA, ComiRecSAConfig
    from mirec.models.mind import MIND, MINDConfig
    from mirec.runs import RunConfig

    torch.manual_seed(0)
    hist, target = torch.tensor([[0, 3, 4, 5, 6], [0, 0, 2, 9, 3]]), torch.tensor([7, 1])
    auto = TrainConfig()
    assert auto.routing_reg == "auto"
    for model, expected in ((ComiRecSA(ComiRecSAConfig(dim=8, num_interests=2, max_len=5), 12), 10.0),
                            (MIND(MINDConfig(dim=8, num_interests=2, max_len=5), 12), 0.0)):
        losses = []
        for cfg in (auto, TrainConfig(routing_reg=expected)):
            torch.manual_seed(1)  # MIND draws its initial routing logits
            losses.append(batch_loss(model, hist, hist > 0, target, cfg, None, 12).item())
        assert losses[0] == losses[1]
    sa = ComiRecSA(ComiRecSAConfig(dim=8, num_interests=2, max_len=5), 12)
    assert batch_loss(sa, hist, hist > 0, target, auto, None, 12).item() != \
        batch_loss(sa, hist, hist > 0, target, TrainConfig(routing_reg=0), None, 12).item()
    assert load(RunConfig, None, ["train.routing_reg=2.5"]).train.routing_reg == 2.5
    assert load(RunConfig, None, ["train.routing_reg=auto"]).train.routing_reg == "auto"
    with pytest.raises(MirecConfigError, match="train.routing_reg"):
        load(RunConfig, None, ["train.routing_reg=lots"])


def test_lr_auto_is_comirec_sas_own_and_1e_3_for_the_other_models(random_dataset):
    """The default ``train.lr = "auto"`` reaches the optimiser as the model's ``default_lr``
    (ComiRec-SA 3.75e-3) or 1e-3; a number overrides it; config strings parse and are checked."""
    from mirec.config import load
    from mirec.errors import MirecConfigError
    from mirec.runs import RunConfig
    from mirec.train.loop import setup

    def lr(model: str, **train) -> float:
        opt = setup(RunConfig(model=model, model_args={"dim": 8},
                              train=TrainConfig(**train)), random_dataset)[2]
        return opt.param_groups[0]["lr"]

    assert TrainConfig().lr == "auto"
    assert lr("comirec-sa") == 3.75e-3
    assert lr("youtube-dnn") == lr("mind") == 1e-3
    assert lr("comirec-sa", lr=0.02) == lr("youtube-dnn", lr=0.02) == 0.02
    assert load(RunConfig, None, ["train.lr=auto"]).train.lr == "auto"
    assert load(RunConfig, None, ["train.lr=0.002"]).train.lr == 0.002
    for bad in ("train.lr=fast", "train.lr=0"):
        with pytest.raises(MirecConfigError, match="train.lr"):
            load(RunConfig, None, [bad]).train.validate()


def test_hard_negatives_need_the_sampled_softmax(random_dataset):
    from mirec.errors import MirecConfigError
    from mirec.train.loop import RunConfig, setup

    with pytest.raises(MirecConfigError, match="train.hard_negative_beta"):
        setup(RunConfig(train=TrainConfig(hard_negative_beta=1.0)), random_dataset)
    setup(RunConfig(train=TrainConfig(hard_negative_beta=1.0, loss="sampled", num_negatives=10)), random_dataset)
    with pytest.raises(MirecConfigError, match="train.routing_reg"):
        TrainConfig(routing_reg=-1).validate()


def test_max_scored_negatives_by_hand():
    """``train.negative_score=max``: every item is scored by its best live interest. Two
    interests [2, 0] and [0, 2] at T 0.5, items 1 = [1, 0], 2 = [0, 1], 3 = [1, 1]: each item's
    logit is the larger of its two, [4, 4, 4] (the readout interest [2, 0] alone gives
    [4, 0, 4]); a dead interest counts for nothing."""
    items = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    two = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # (1, K=2, D)
    live = torch.ones(1, 2, dtype=torch.bool)
    target = torch.tensor([1])
    expect = -(4.0 - math.log(3 * math.exp(4.0)))
    assert full_softmax_loss(two, items, target, 0.5, live).item() == pytest.approx(expect, rel=1e-6)
    dead = torch.tensor([[True, False]])  # only [2, 0]: the readout's logits [4, 0, 4]
    assert full_softmax_loss(two, items, target, 0.5, dead).item() == pytest.approx(
        full_softmax_loss(two[:, 0], items, target, 0.5).item(), rel=1e-6)
    # the sampled loss with every item sampled once under uniform Q is the full one
    negs = torch.arange(1, 4)
    log_q = torch.full((4,), -math.log(3))
    two.requires_grad_(True)
    samp = sampled_softmax_loss(two, items[target], items[negs], target, negs, log_q, 0.5, live=live)
    assert samp.item() == pytest.approx(expect, rel=1e-5)
    full = full_softmax_loss(two, items, target, 0.5, live)
    torch.testing.assert_close(torch.autograd.grad(samp, two)[0], torch.autograd.grad(full, two)[0])


def test_max_scored_negatives_push_back_the_interest_that_ranks_a_wrong_item():
    """The readout loss gives the interest that does not answer for the target no gradient, so
    a negative it scores high is never pushed back; with ``negative_score=max`` it is, through
    batch_loss, and for one interest both settings are the same loss."""
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    model = _TwoInterests(items.clone(), torch.tensor([1.0, 0.1]), torch.tensor([0.1, 1.0]))
    model.vectors = torch.nn.Parameter(model.vectors.clone())
    hist, mask, target = torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool), torch.tensor([1])
    grads = {}
    for how in ("readout", "max"):
        cfg = TrainConfig(temperature=0.5, cosine=False, negative_score=how)
        loss = batch_loss(model, hist, mask, target, cfg, None, 4)
        (grads[how],) = torch.autograd.grad(loss, model.vectors)
    assert grads["readout"][0, 1].abs().sum() == 0  # interest 2 (towards item 2) untouched
    assert grads["max"][0, 1].abs().sum() > 0
    one = _MeanPool(25, 6)
    hist = torch.randint(1, 25, (5, 4))
    target = torch.randint(1, 25, (5,))
    losses = [batch_loss(one, hist, torch.ones(5, 4, dtype=torch.bool), target,
                         TrainConfig(negative_score=how), None, 25) for how in ("readout", "max")]
    torch.testing.assert_close(losses[0], losses[1])


def test_interest_overlap_is_the_mean_squared_cosine_of_two_live_interests():
    """[1, 0], [0, 1], [1, 1]: squared cosines 0, 1/2, 1/2 -> 1/3; a dead interest's pairs count
    for nothing; one vector repeated gives 1; and through batch_loss (train.interest_overlap) the
    term pulls two interests apart."""
    from mirec.train.losses import interest_overlap

    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    every = torch.ones(1, 3, dtype=torch.bool)
    assert interest_overlap(v, every).item() == pytest.approx(1 / 3)
    assert interest_overlap(v, torch.tensor([[True, True, False]])).item() == pytest.approx(0.0)
    assert interest_overlap(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)).item() == pytest.approx(1.0)
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    model = _TwoInterests(items, torch.tensor([1.0, 0.2]), torch.tensor([0.8, 1.0]))
    model.vectors = torch.nn.Parameter(model.vectors.clone())
    hist, mask, target = torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool), torch.tensor([1])
    losses = {}
    for w in (0.0, 1.0):
        cfg = TrainConfig(temperature=0.5, interest_overlap=w)
        losses[w] = batch_loss(model, hist, mask, target, cfg, None, 4)
    cos2 = F.cosine_similarity(model.vectors[0, 0], model.vectors[0, 1], dim=0) ** 2
    torch.testing.assert_close(losses[1.0] - losses[0.0], cos2)
    (g,) = torch.autograd.grad(losses[1.0] - losses[0.0], model.vectors)
    v = model.vectors.detach()[0]
    step = v - 0.1 * g[0]
    assert F.cosine_similarity(step[0], step[1], dim=0) < F.cosine_similarity(v[0], v[1], dim=0)


def test_view_contrast_is_the_symmetric_infonce_of_each_interest_across_two_views():
    """Two users, one interest each, cosines by hand: user 0's views agree (cos 1), user 1's
    views are orthogonal; each direction's cross-entropy is the log-softmax of the row (a_i
    against every b_j, and b_i against every a_j) at the user's own column; dead interests count
    for nothing; through batch_loss (train.view_contrast) the term is the weight times it, from
    a second pass over the same histories."""
    from mirec.train.losses import view_contrast

    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (B 2, K 1, D 2)
    b = torch.tensor([[[2.0, 0.0]], [[1.0, 0.0]]])  # user 1's second view points elsewhere
    T = 0.5
    live = torch.ones(2, 1, dtype=torch.bool)
    cos = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # a_i . b_j, unit vectors
    ab = -torch.log_softmax(cos / T, 1).diagonal()  # (2,)
    ba = -torch.log_softmax(cos.T / T, 1).diagonal()
    want = ((ab + ba) / 2).mean()
    torch.testing.assert_close(view_contrast(a, b, live, T), want)
    # a second, dead interest changes nothing
    a2, b2 = torch.cat([a, -a], 1), torch.cat([b, a], 1)
    torch.testing.assert_close(view_contrast(a2, b2, torch.tensor([[True, False], [True, False]]), T), want)
    agreeing = view_contrast(a, a, live, T)
    assert agreeing < want  # views that agree cost less than views that do not
    torch.manual_seed(0)
    model = _MeanPool(25, 6)  # no dropout: the second pass gives the same vectors
    hist, mask, target = torch.randint(1, 25, (5, 4)), torch.ones(5, 4, dtype=torch.bool), torch.randint(1, 25, (5,))
    out = model.interests(hist, mask)
    calls = []
    model.interests = lambda hist, mask, f=model.interests: calls.append(1) or f(hist, mask)
    base = batch_loss(model, hist, mask, target, TrainConfig(), None, 25)
    assert len(calls) == 1
    with_views = batch_loss(model, hist, mask, target, TrainConfig(view_contrast=0.5), None, 25)
    assert len(calls) == 3
    torch.testing.assert_close(with_views - base, 0.5 * view_contrast(out.vectors, out.vectors, out.mask, 0.1))
