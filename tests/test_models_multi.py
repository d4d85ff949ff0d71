"""Multi-interest retrievers (ComiRec-SA, ComiRec-DR, MIND) and their shared layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mirec.models.base import max_over_interests
from mirec.models.comirec_dr import ComiRecDR, ComiRecDRConfig
from mirec.models.comirec_sa import ComiRecSA, ComiRecSAConfig
from mirec.models.layers import (
    dynamic_routing,
    label_aware_attention,
    masked_softmax,
    mlp,
    sigmoid_,
    squash,
    tanh,
)
from mirec.models.mind import MIND, MINDConfig
from mirec.train.losses import routing_penalty

torch.set_num_threads(1)

N, D, K, MAX_LEN = 30, 8, 4, 8
MODELS = {
    "comirec-sa": lambda **kw: ComiRecSA(
        ComiRecSAConfig(dim=D, num_interests=K, max_len=MAX_LEN, **kw), N
    ),
    "comirec-dr": lambda **kw: ComiRecDR(
        ComiRecDRConfig(dim=D, num_interests=K, max_len=MAX_LEN, **kw), N
    ),
    "mind": lambda **kw: MIND(MINDConfig(dim=D, num_interests=K, max_len=MAX_LEN, **kw), N),
}


def make(name, **kw):
    torch.manual_seed(0)
    return MODELS[name](**kw).eval()


def left_pad(seqs, L):
    """Left-pad lists of item ids to width L: (B, L) long ids, (B, L) bool mask."""
    hist = torch.zeros(len(seqs), L, dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            hist[r, L - len(s) :] = torch.tensor(s)
    return hist, hist > 0


SEQS = [[3, 7, 7, 12, 5, 9], [4, 20], [1, 2, 3, 4, 5, 6, 7, 8]]


# ---- layers ----------------------------------------------------------------------------------


def assert_table_path_matches(make, mapped: str) -> None:
    """``make(num_items)`` builds a model twice: with 1000 items (N > B L: the map is applied
    to the batch's embeddings) and with 21 (N < B L: the item table is mapped once and its rows
    gathered). With the same weights both give the same interests, weights and gradients (of
    the item table and of the parameter ``mapped``), so the choice is only about speed."""
    hist, mask = left_pad(SEQS, 8)
    big, small = make(1000).eval(), make(21).eval()
    with torch.no_grad():
        small.item_emb.weight.copy_(big.item_emb.weight[:21])
        for name, p in big.named_parameters():
            if name != "item_emb.weight":
                small.get_parameter(name).copy_(p)
    hist = hist.clamp(max=20)
    a, b = big.interests(hist, mask), small.interests(hist, mask)
    assert torch.allclose(a.vectors, b.vectors, atol=1e-6)
    assert torch.allclose(a.weights, b.weights, atol=1e-6)
    a.vectors.sum().backward(), b.vectors.sum().backward()
    grad = big.get_parameter(mapped).grad
    assert grad is not None and torch.allclose(grad, small.get_parameter(mapped).grad, atol=1e-5)
    assert torch.allclose(big.item_emb.weight.grad[:21], small.item_emb.weight.grad, atol=1e-5)


def test_sa_projects_the_item_table_or_the_batch_alike():
    """W1 (H + P) from the projected item table (when N < B L) or from the batch."""
    assert_table_path_matches(
        lambda n: ComiRecSA(ComiRecSAConfig(dim=D, num_interests=K, max_len=MAX_LEN), n), "W1.weight")


def test_mind_maps_the_item_table_or_the_batch_alike():
    """MIND's u_i = S e_i from the mapped item table (when N < B L) or from the batch."""
    assert_table_path_matches(lambda n: MIND(MINDConfig(dim=D, num_interests=K, max_len=MAX_LEN), n),
                              "S.weight")


def test_squash_length_and_zero():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    v = squash(s, dim=-1)
    assert torch.allclose(v[0].norm(), torch.tensor(25 / 26), atol=1e-6)
    assert torch.allclose(v[0] / v[0].norm(), torch.tensor([0.6, 0.8]))
    assert torch.equal(v[1], torch.zeros(2))
    v.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_tanh_matches_torch_in_value_and_gradient():
    """layers.tanh (through sigmoid) against torch.tanh, saturated and tiny inputs included."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(4000) * 4, torch.tensor([0.0, 1e-8, -1e-8, 9.0, -9.0, 60.0, -60.0,
                                                        1e30, -1e30])]).requires_grad_()
    y, ref = tanh(x), torch.tanh(x)
    assert (y - ref).abs().max() < 5e-7
    assert y[-4:].tolist() == [1.0, -1.0, 1.0, -1.0]  # exactly saturated, no NaN from the clamp
    g = torch.randn_like(x)
    (gx,), (gref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(ref, x, g)
    assert (gx - gref).abs().max() < 5e-6
    assert torch.autograd.gradcheck(tanh, torch.randn(30, dtype=torch.float64, requires_grad=True))


def test_inplace_sigmoid_matches_torch_and_overwrites_its_input():
    """layers.sigmoid_ against torch.sigmoid (values within float rounding, gradients), on a
    temporary it overwrites, and saturated inputs give exact 0/1-side values without NaN."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(4000) * 6, torch.tensor([0.0, 45.0, -45.0, 1e30, -1e30])]).requires_grad_()
    tmp = x * 1.0  # the temporary that sigmoid_ overwrites
    y = sigmoid_(tmp)
    assert y.data_ptr() == tmp.data_ptr()  # in place: no second (B, L, 4D) array
    ref = torch.sigmoid(x)
    assert (y[:-4] - ref[:-4]).abs().max() < 1e-7
    assert y[-2].item() == 1.0 and 0 < y[-1].item() < 1e-17  # clamped at -40, not a denormal
    g = torch.randn_like(x)
    (gx,), (gref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(ref, x, g)
    assert (gx - gref).abs().max() < 1e-7
    assert torch.autograd.gradcheck(lambda v: sigmoid_(v * 1.0), torch.randn(30, dtype=torch.float64,
                                                                           requires_grad=True))


def test_masked_softmax_zero_on_padding_and_empty_rows():
    logits = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    p = masked_softmax(logits, mask, dim=-1)
    assert torch.equal(p[~mask], torch.zeros(int((~mask).sum())))
    assert torch.allclose(p.sum(-1), torch.tensor([1.0, 0.0, 1.0]))
    ref = torch.softmax(logits[0, [0, 1, 3]], -1)
    assert torch.allclose(p[0, [0, 1, 3]], ref)
    (p * torch.randn(3, 5)).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_label_aware_attention_limits():
    V = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-3.0, 0.0]]])  # (1, 3, 2)
    t = torch.tensor([[2.0, 1.0]])  # products 2, 1, -6
    live = torch.ones(1, 3, dtype=torch.bool)
    assert torch.allclose(label_aware_attention(V, live, t, 0.0), V.mean(1))
    assert torch.equal(label_aware_attention(V, live, t, math.inf), V[:, 0])
    # a strongly negative product must not win (pow(-6, 2) = 36 would pick it)
    assert torch.allclose(label_aware_attention(V, live, t, 50.0), V[:, 0], atol=1e-6)
    # a masked interest takes no part even when it is the best match
    dead0 = torch.tensor([[False, True, True]])
    assert torch.allclose(label_aware_attention(V, dead0, t, math.inf), V[:, 1])
    assert torch.allclose(label_aware_attention(V, dead0, t, 50.0), V[:, 1], atol=1e-6)


def test_mlp_layout():
    net = mlp([4, 16, 8, 2], torch.nn.ReLU, dropout=0.1)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert net(torch.randn(5, 4)).shape == (5, 2)


# ---- the contract, shared by the three models ------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_shapes(name):
    model = make(name)
    hist, mask = left_pad(SEQS, 8)
    out = model.interests(hist, mask)
    assert out.vectors.shape == (3, K, D)
    assert out.mask.shape == (3, K) and out.mask.dtype == torch.bool
    assert out.weights.shape == (3, K, 8)
    assert model.item_embeddings().shape == (N, D)
    target = model.item_embeddings()[torch.tensor([1, 2, 3])]
    assert model.readout(out, target).shape == (3, D)
    assert max_over_interests(out, model.item_embeddings()).shape == (3, N)


@pytest.mark.parametrize("name", MODELS)
def test_padding_changes_nothing(name):
    model = make(name)
    short = left_pad(SEQS[:2], 6)
    long = left_pad(SEQS[:2], 8)
    a, b = model.interests(*short), model.interests(*long)
    assert torch.allclose(a.vectors, b.vectors, atol=1e-5)
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.weights, b.weights[:, :, 2:], atol=1e-6)
    assert torch.equal(b.weights[:, :, :2], torch.zeros(2, K, 2))
    # garbage item ids under the mask change nothing either
    hist, mask = long
    noisy = hist.masked_fill(~mask, 17)
    c = model.interests(noisy, mask)
    assert torch.equal(c.vectors, b.vectors) and torch.equal(c.weights, b.weights)


@pytest.mark.parametrize("name", MODELS)
def test_parameters_initialised_and_loss_finite(name):
    model = make(name).train()
    for pname, p in model.named_parameters():
        assert torch.isfinite(p).all(), pname
        assert p.std() > 0, f"{pname} is constant"
    hist, mask = left_pad(SEQS, 8)
    target = torch.tensor([9, 2, 11])
    items = model.item_embeddings()
    user = model.readout(model.interests(hist, mask), items[target])
    loss = F.cross_entropy(user @ items.T, target)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MODELS)
def test_batch_equals_single(name):
    model = make(name)
    hist, mask = left_pad(SEQS, 8)
    batch = model.interests(hist, mask)
    for r in range(len(SEQS)):
        one = model.interests(hist[r : r + 1], mask[r : r + 1])
        assert torch.allclose(one.vectors[0], batch.vectors[r], atol=1e-5)


# ---- model specifics -------------------------------------------------------------------------


def test_sa_attention_is_a_distribution_over_real_positions():
    model = make("comirec-sa")
    hist, mask = left_pad(SEQS, 8)
    A = model.interests(hist, mask).weights  # (B, K, L)
    assert torch.equal(A[~mask[:, None, :].expand_as(A)], torch.zeros(int((~mask).sum()) * K))
    assert torch.allclose(A.sum(-1), torch.ones(3, K))
    assert (A[mask[:, None, :].expand_as(A)] > 0).all()


@pytest.mark.parametrize("n_items", [N, 10_000])  # the projected-table path and the batch path
def test_sa_attention_and_interests_are_the_papers_formula(n_items):
    """A = softmax over live positions of W2 tanh(W1 (H + P)), V = A H, written out with
    torch.tanh and plain products: the model (item-table projection, its own tanh) gives the
    same, and the same gradients."""
    torch.manual_seed(3)
    model = ComiRecSA(ComiRecSAConfig(dim=D, num_interests=K, max_len=MAX_LEN), n_items)
    with torch.no_grad():
        model.W1.weight.mul_(8)  # large pre-activations, so that tanh saturates somewhere
    hist, mask = left_pad(SEQS, 8)
    out = model.interests(hist, mask)
    H = model.item_emb(hist)  # (B, L, D)
    logits = torch.tanh((H + model.pos_emb[-8:]) @ model.W1.weight.T) @ model.W2.weight.T
    logits = logits.transpose(1, 2).masked_fill(~mask[:, None, :], float("-inf"))  # (B, K, L)
    A = torch.softmax(logits, dim=-1)
    V = A @ H  # (B, K, D)
    assert torch.allclose(out.weights, A, atol=1e-6)
    assert torch.allclose(out.vectors, V, atol=1e-6)
    g = torch.randn_like(V)
    params = [model.item_emb.weight, model.pos_emb, model.W1.weight, model.W2.weight]
    got = torch.autograd.grad(out.vectors, params, g)
    want = torch.autograd.grad(V, params, g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("n_items", [N, 10_000])  # N: fewer items than real positions (the table path)
def test_sa_encoder_feeds_the_attention_items_in_context(n_items):
    """``encoder_layers`` > 0: the paper's formula on the Transformer's outputs H' (padding
    masked out of its keys and zeroed), A = softmax W2 tanh(W1 (H' + P)), V = A H' (not the
    item table's rows, even where projecting the table would be cheaper); the amount of left
    padding and the ids under it change nothing, and the order of the history does."""
    torch.manual_seed(5)
    model = ComiRecSA(ComiRecSAConfig(dim=D, num_interests=K, max_len=12, encoder_layers=1), n_items)
    model.eval()
    hist, mask = left_pad(SEQS * 3, 8)  # 48 real positions > N items
    out = model.interests(hist, mask)
    P = model.pos_emb[-8:]
    Hc = model.encoder(model.item_emb(hist) + P, src_key_padding_mask=~mask) * mask[..., None]
    logits = torch.tanh((Hc + P) @ model.W1.weight.T) @ model.W2.weight.T
    A = torch.softmax(logits.transpose(1, 2).masked_fill(~mask[:, None, :], float("-inf")), dim=-1)
    torch.testing.assert_close(out.weights, A, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.vectors, A @ Hc, atol=1e-5, rtol=0)
    wide, wide_mask = left_pad(SEQS * 3, 12)
    junk = torch.where(wide_mask, wide, 9)
    torch.testing.assert_close(model.interests(junk, wide_mask).vectors, out.vectors, atol=1e-5, rtol=0)
    swapped = hist.clone()
    swapped[0, -2:] = hist[0, -2:].flip(0)  # the two newest items of user 0 trade places
    assert not torch.allclose(model.interests(swapped, mask).vectors[0], out.vectors[0], atol=1e-4)


def test_sa_dropout_acts_in_training_only_and_eval_keeps_the_formula():
    """With dropout on the attention's hidden layer (the tanh branch), training draws differ
    from eval, and eval, where dropout is off, takes the sigmoid branch and still gives the
    paper's formula: guards the choice of branch."""
    torch.manual_seed(4)
    model = ComiRecSA(ComiRecSAConfig(dim=D, num_interests=K, max_len=MAX_LEN, dropout=0.5), N)
    hist, mask = left_pad(SEQS, 8)
    model.eval()
    A = model.interests(hist, mask).weights
    H = model.item_emb(hist)
    logits = torch.tanh((H + model.pos_emb[-8:]) @ model.W1.weight.T) @ model.W2.weight.T
    ref = torch.softmax(logits.transpose(1, 2).masked_fill(~mask[:, None, :], float("-inf")), dim=-1)
    assert torch.allclose(A, ref, atol=1e-6)
    model.train()
    A_train = model.interests(hist, mask).weights
    assert not torch.allclose(A_train, A, atol=1e-3)
    assert torch.allclose(A_train.sum(-1), torch.ones(3, K))  # still a distribution
    assert torch.equal(A_train[~mask[:, None, :].expand_as(A_train)], torch.zeros(int((~mask).sum()) * K))


@pytest.mark.parametrize("name", ["comirec-dr", "mind"])
def test_routing_weights_zero_on_padding(name):
    model = make(name)
    hist, mask = left_pad(SEQS, 8)
    out = model.interests(hist, mask)
    c = out.weights  # (B, K, L)
    assert torch.equal(c * ~mask[:, None, :], torch.zeros_like(c))
    # each real item shares one unit of weight among the live interests only
    assert torch.allclose(c.sum(1), mask.float(), atol=1e-6)
    assert torch.equal(c * ~out.mask[:, :, None], torch.zeros_like(c))


def _dr_reference(model, hist, mask, detach):
    """ComiRec-DR written out by hand: with ``detach`` the routing logits come from no_grad."""
    B, L = hist.shape
    H = model.item_emb(hist) * mask[..., None]
    u = torch.einsum("lkde,ble->blkd", model.W[-L:], H)  # (B, L, K, D)
    link = mask[:, None, :].expand(B, K, L)
    b = torch.zeros(B, K, L)
    with torch.set_grad_enabled(not detach):
        for _ in range(model.cfg.routing_iters - 1):
            c = masked_softmax(b, link, dim=1)
            v = squash(torch.einsum("bkl,blkd->bkd", c, u))
            b = b + torch.einsum("bkd,blkd->bkl", v, u)
    c = masked_softmax(b, link, dim=1)
    return squash(torch.einsum("bkl,blkd->bkd", c, u)), c


def test_dr_gradients_skip_the_routing_updates():
    model = make("comirec-dr")
    hist, mask = left_pad(SEQS, 8)
    R = torch.randn(3, K, D)
    out = model.interests(hist, mask)
    (g,) = torch.autograd.grad((out.vectors * R).sum(), model.W)
    v_ref, c_ref = _dr_reference(model, hist, mask, detach=True)
    (g_ref,) = torch.autograd.grad((v_ref * R).sum(), model.W)
    assert torch.allclose(out.vectors, v_ref, atol=1e-6)
    assert torch.allclose(out.weights, c_ref, atol=1e-6)
    assert torch.allclose(g, g_ref, atol=1e-6)
    # control: backpropagating through the routing updates gives a different gradient
    v_full, _ = _dr_reference(model, hist, mask, detach=False)
    (g_full,) = torch.autograd.grad((v_full * R).sum(), model.W)
    assert not torch.allclose(g, g_full, atol=1e-4)


def test_dr_weights_are_routing_coefficients_not_uniform():
    model = make("comirec-dr")
    hist, mask = left_pad(SEQS, 8)
    c = model.interests(hist, mask).weights
    assert c[mask[:, None, :].expand_as(c)].std() > 1e-3  # routing moved away from 1/K


def test_mind_dynamic_interest_number():
    model = MIND(MINDConfig(dim=D, num_interests=4, max_len=16), N).eval()
    lengths = [1, 2, 3, 4, 8, 16]
    hist, mask = left_pad([list(range(1, n + 1)) for n in lengths], 16)
    out = model.interests(hist, mask)
    assert out.mask.sum(1).tolist() == [1, 1, 1, 2, 3, 4]
    assert torch.equal(out.mask, torch.arange(4) < out.mask.sum(1, keepdim=True))
    dead = ~out.mask
    assert torch.equal(out.vectors[dead], torch.zeros(int(dead.sum()), D))
    static = MIND(MINDConfig(dim=D, num_interests=4, max_len=16, dynamic_k=False), N).eval()
    assert static.interests(hist, mask).mask.all()


def test_mind_eval_is_deterministic_and_training_is_not():
    model = make("mind")
    hist, mask = left_pad(SEQS, 8)
    a, b = model.interests(hist, mask), model.interests(hist, mask)
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.weights, b.weights)
    other = make("mind", seed=1)
    assert not torch.allclose(other.interests(hist, mask).weights, a.weights)
    model.train()
    assert not torch.allclose(model.interests(hist, mask).weights, a.weights)


# ---- a tiny learning check -------------------------------------------------------------------


def two_cluster_batch(gen, B=64, L=8, size=8):
    """Each history and its next item come from one of two disjoint clusters of ``size`` ids."""
    cluster = torch.randint(0, 2, (B,), generator=gen)
    ids = 1 + cluster[:, None] * size + torch.randint(0, size, (B, L + 1), generator=gen)
    n = torch.randint(2, L + 1, (B,), generator=gen)
    mask = torch.arange(L) >= (L - n)[:, None]
    return ids[:, :L] * mask, mask, ids[:, L]


@pytest.mark.parametrize("name", MODELS)
def test_learns_two_clusters(name):
    size = 8
    torch.manual_seed(0)
    cfg = {"comirec-sa": ComiRecSAConfig, "comirec-dr": ComiRecDRConfig, "mind": MINDConfig}[name]
    model = {"comirec-sa": ComiRecSA, "comirec-dr": ComiRecDR, "mind": MIND}[name](
        cfg(dim=16, num_interests=2, max_len=8), 1 + 2 * size
    ).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        hist, mask, target = two_cluster_batch(gen, size=size)
        items = model.item_embeddings()
        logits = model.readout(model.interests(hist, mask), items[target]) @ items.T
        loss = F.cross_entropy(logits[:, 1:], target - 1)  # padding is never a target
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    start, end = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    floor = math.log(size)  # the cluster is known, the item within it is not
    assert start > math.log(2 * size) - 0.2
    assert end < floor + 0.4 * (start - floor), (start, end)


@pytest.mark.compile
def test_sa_attention_traces_into_one_graph_for_torch_compile():
    """train.compile fuses SA's attention only if dynamo traces it whole: the in-place sigmoid
    (a custom autograd Function) must not break the graph."""
    torch.manual_seed(0)
    model = ComiRecSA(ComiRecSAConfig(dim=D, num_interests=K, max_len=MAX_LEN), N)
    hist, mask = left_pad(SEQS, 8)
    explained = torch._dynamo.explain(lambda h, m: model.interests(h, m).vectors.sum())(hist, mask)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("encoder_layers", [0, 1])
def test_sa_sequential_interest_is_the_newest_positions_vector(encoder_layers):
    """``sequential_interest``: the K pooled interests unchanged, plus one more, the newest
    position's vector (the encoder's output there, SASRec's user vector; without an encoder the
    newest item's embedding), reported with uniform weights over the real items, so REMI's
    routing penalty (a variance) adds nothing for it."""
    torch.manual_seed(6)
    cfg = dict(dim=D, num_interests=K, max_len=12, encoder_layers=encoder_layers)
    base = ComiRecSA(ComiRecSAConfig(**cfg), N).eval()
    model = ComiRecSA(ComiRecSAConfig(**cfg, sequential_interest=True), N).eval()
    model.load_state_dict(base.state_dict())  # the option adds no parameter
    hist, mask = left_pad(SEQS, 8)
    out, ref = model.interests(hist, mask), base.interests(hist, mask)
    assert out.vectors.shape == (len(SEQS), K + 1, D) and out.mask.all()
    torch.testing.assert_close(out.vectors[:, :K], ref.vectors, atol=1e-6, rtol=0)
    if encoder_layers:
        newest = model.encoder(model.item_emb(hist) + model.pos_emb[-8:], src_key_padding_mask=~mask)[:, -1]
    else:
        newest = model.item_emb(hist[:, -1])
    torch.testing.assert_close(out.vectors[:, K], newest, atol=1e-5, rtol=0)
    n = mask.sum(1, keepdim=True)
    torch.testing.assert_close(out.weights[:, K], mask / n, atol=1e-7, rtol=0)
    assert routing_penalty(out.weights[:, K:], mask) == 0


def test_sa_input_dropout_drops_the_encoders_input_in_training_only():
    """``input_dropout``: the item + position vectors entering the encoder are dropped (and
    rescaled) in training, as SASRec drops its input embeddings; evaluation sees them whole, and
    without an encoder there is nothing to drop, which the config says."""
    from mirec.errors import MirecConfigError

    torch.manual_seed(7)
    cfg = dict(dim=D, num_interests=K, max_len=12, encoder_layers=1, encoder_dropout=0.0)
    base = ComiRecSA(ComiRecSAConfig(**cfg), N)
    model = ComiRecSA(ComiRecSAConfig(**cfg, input_dropout=0.5), N)
    model.load_state_dict(base.state_dict())  # the option adds no parameter
    hist, mask = left_pad(SEQS, 8)
    torch.testing.assert_close(model.eval().interests(hist, mask).vectors,
                               base.eval().interests(hist, mask).vectors)
    model.train()
    torch.manual_seed(0)
    got = model.interests(hist, mask).vectors
    torch.manual_seed(0)  # the same mask by hand: dropout's draw on the (B, L, D) input
    x = model.item_emb(hist) * mask[..., None] + model.pos_emb[-8:]
    keep = F.dropout(torch.ones_like(x), 0.5, training=True)
    h = model.encoder(x * keep, src_key_padding_mask=~mask) * mask[..., None]
    model.in_drop.p = 0.0  # the rest of the model on those encoder outputs
    model.encoder.forward = lambda *a, **k: h
    want = model.interests(hist, mask).vectors
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(got, base.train().interests(hist, mask).vectors)
    with pytest.raises(MirecConfigError, match="model_args.input_dropout"):
        ComiRecSAConfig(input_dropout=0.5).validate()


@pytest.mark.parametrize("name", ["comirec-dr", "mind"])
def test_dr_and_mind_encoder_routes_the_items_in_context(name):
    """``encoder_layers`` > 0 for ComiRec-DR and MIND: the routing runs on the Transformer's
    outputs H' over item + position vectors (padding masked out of its keys and zeroed), each
    model's own formula after that (DR: u = W_ij h'_i; MIND: u = S h'_i, then its MLP); left
    padding and the ids under it change nothing, the order of the history does, and training
    reaches the encoder and the positions."""
    model = make(name, encoder_layers=1)
    hist, mask = left_pad(SEQS, 8)
    out = model.interests(hist, mask)
    L = hist.shape[1]
    Hc = model.encoder(model.item_emb(hist) + model.pos_emb[-L:], src_key_padding_mask=~mask) * mask[..., None]
    if name == "comirec-dr":
        u = torch.einsum("lkde,ble->bkld", model.W[-L:], Hc)
        link = mask[:, None, :].expand(len(hist), K, L)
        V, _ = dynamic_routing(u, torch.zeros(len(hist), K, L), link, model.cfg.routing_iters)
    else:
        live = torch.arange(K) < model.num_live(mask)[:, None]
        link = live[:, :, None] & mask[:, None, :]
        caps, _ = dynamic_routing(model.S(Hc)[:, None], model.routing_logits(len(hist), L, hist.device),
                                  link, model.cfg.routing_iters)
        V = model.mlp(caps) * live[..., None]
    torch.testing.assert_close(out.vectors, V, atol=1e-5, rtol=0)
    junk = torch.where(mask, hist, 9)  # other ids under the padding
    plain = make(name)  # the same seed: the shared weights equal, no encoder
    assert not torch.allclose(plain.interests(hist, mask).vectors, out.vectors, atol=1e-3)
    torch.testing.assert_close(model.interests(junk, mask).vectors, out.vectors, atol=1e-5, rtol=0)
    swapped = hist.clone()
    swapped[0, -2:] = hist[0, -2:].flip(0)  # the two newest items of user 0 trade places
    assert not torch.allclose(model.interests(swapped, mask).vectors[0], out.vectors[0], atol=1e-4)
    model.train()
    model.interests(hist, mask).vectors.square().sum().backward()
    assert model.pos_emb.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
