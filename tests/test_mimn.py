"""MIMN: the per-user state and its incremental updates, the utilisation regulariser, and the
ranker contract (shapes, padding, gradients, learning)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.mimn import MIMN, MIMNConfig, utilisation_penalty
from tests.conftest import left_pad

torch.set_num_threads(1)

CONFIGS = {
    "default": dict(dim=8, slots=4, hidden=[16]),
    "top1": dict(dim=8, slots=4, hidden=[16], miu_top_k=1),
    "uic-only": dict(dim=8, slots=3, hidden=[16], rebalance=False, use_miu=False),
}
ROWS = [[3, 7, 2, 9, 11], [5], [], [1, 2, 3, 4, 5, 6, 7, 8], [40, 40, 12]]


def features() -> RankFeatures:
    g = torch.Generator().manual_seed(0)
    cats = torch.randint(0, 5, (50, 2), generator=g)
    cats[0] = 0
    return RankFeatures(num_items=50, num_users=10, profile_sizes=[3, 4], item_categories=cats)


def make(name: str, seed: int = 0, **kw) -> MIMN:
    torch.manual_seed(seed)
    return MIMN(MIMNConfig(**{**CONFIGS[name], **kw}), features())


def batch_of(rows, length, fill=0) -> CTRBatch:
    g = torch.Generator().manual_seed(1)
    B = len(rows)
    hist, mask = left_pad(rows, length, fill)
    profile = torch.stack([torch.randint(0, 3, (B,), generator=g), torch.randint(0, 4, (B,), generator=g)], 1)
    return CTRBatch(user=torch.randint(0, 10, (B,), generator=g), profile=profile,
                    item=torch.randint(1, 50, (B,), generator=g), hist=hist, mask=mask)


def assert_states_close(a, b, atol=1e-6):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.shape == y.shape, f.name
        assert torch.allclose(x, y, atol=atol), (f.name, (x - y).abs().max())


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_and_state_size(name):
    model = make(name)
    batch = batch_of(ROWS, 8)
    logits = model(batch)
    assert logits.shape == (5,)
    assert torch.isfinite(logits).all()  # the empty history too
    state = model.state_from_history(batch.hist, batch.mask)
    m, E = model.cfg.slots, 2 * model.cfg.dim
    assert state.memory.shape == state.interest.shape == (5, m, E)
    assert state.usage.shape == (5, m) and state.count.tolist() == [5, 1, 0, 8, 3]


@pytest.mark.parametrize("name", CONFIGS)
def test_incremental_equals_batch(name):
    model = make(name).eval()
    batch = batch_of(ROWS, 8, fill=17)
    with torch.no_grad():
        whole = model.state_from_history(batch.hist, batch.mask)
        state = model.init_state(5)
        for t in range(8):  # one event at a time, as a serving process would
            state = model.step(state, batch.hist[:, t], batch.mask[:, t])
        assert_states_close(state, whole)
        first = model.state_from_history(batch.hist[:, :5], batch.mask[:, :5])  # saved state ...
        resumed = model.state_from_history(batch.hist[:, 5:], batch.mask[:, 5:], state=first)  # ... resumed
        assert_states_close(resumed, whole)
        ref = model(batch)
        for s in (state, resumed):
            assert torch.allclose(model.score_state(s, batch.user, batch.profile, batch.item), ref, atol=1e-6)
    assert (whole.memory[3] != whole.memory[2]).any()  # the history did move the state


@pytest.mark.parametrize("name", CONFIGS)
def test_left_padding_invariance(name):
    model = make(name).eval()
    ref = model(batch_of(ROWS, 8))
    for length, fill in [(20, 0), (8, 13), (20, 49)]:
        other = model(batch_of(ROWS, length, fill))
        assert torch.allclose(ref, other, atol=1e-6), (length, fill)


@pytest.mark.parametrize("name", CONFIGS)
def test_dead_step_keeps_state_exactly(name):
    model = make(name)
    batch = batch_of(ROWS, 8)
    state = model.state_from_history(batch.hist, batch.mask)
    live = torch.tensor([True, False, True, False, False])
    ids = torch.tensor([4, 9, 21, 33, 2])  # real ids under the dead rows too
    new = model.step(state, ids, live)
    for f in dataclasses.fields(state):
        old_f, new_f = getattr(state, f.name), getattr(new, f.name)
        assert torch.equal(new_f[~live], old_f[~live]), f.name
    assert not torch.equal(new.memory[live], state.memory[live])
    still = model.step(state, ids, torch.zeros(5, dtype=torch.bool))
    for f in dataclasses.fields(state):
        assert torch.equal(getattr(still, f.name), getattr(state, f.name)), f.name


@pytest.mark.parametrize("name", CONFIGS)
def test_write_weights_sum_to_one(name):
    model = make(name)
    batch = batch_of(ROWS, 8)
    state = model.init_state(5)
    for t in range(8):
        new = model.step(state, batch.hist[:, t], batch.mask[:, t])
        w = (new.usage - state.usage).detach()  # this step's write weights (B, m)
        live = batch.mask[:, t]
        assert (w >= 0).all() and (w <= 1).all()
        assert torch.allclose(w[live].sum(-1), torch.ones(int(live.sum())), atol=1e-6)
        assert (w[~live] == 0).all()
        state = new


def test_utilisation_penalty_values():
    usage = torch.tensor([[2.5, 2.5, 2.5, 2.5], [10.0, 0, 0, 0], [0, 0, 0, 0], [3.0, 1.0, 0, 0]])
    count = torch.tensor([10.0, 10.0, 0.0, 4.0])
    per_user = [utilisation_penalty(usage[i:i + 1], count[i:i + 1]).item() for i in range(4)]
    # uniform -> 0; all in one slot -> (3/4)^2 + 3 (1/4)^2 = 3/4; no history -> 0;
    # shares (3/4, 1/4, 0, 0) -> (1/2)^2 + 0^2 + 2 (1/4)^2 = 3/8
    assert per_user == pytest.approx([0.0, 0.75, 0.0, 0.375])
    assert utilisation_penalty(usage, count).item() == pytest.approx(sum(per_user) / 4)


def test_regulariser_zero_for_uniform_writes_and_in_the_loss():
    batch = batch_of(ROWS, 8)
    label = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    model = make("default", util_weight=0.5)
    state = model.state_from_history(batch.hist, batch.mask)
    skewed = utilisation_penalty(state.usage, state.count)
    assert skewed > 1e-4  # random keys and slot keys: some slots are written more
    bce = F.binary_cross_entropy_with_logits(model(batch), label)
    assert torch.allclose(model.loss(batch, label), bce + 0.5 * skewed)
    with torch.no_grad():  # zero write keys: cosine 0 to every slot, so uniform write weights
        E = model.E
        model.heads.weight[E:2 * E] = 0
        model.heads.bias[E:2 * E] = 0
    state = model.state_from_history(batch.hist, batch.mask)
    assert utilisation_penalty(state.usage, state.count) < 1e-10


@pytest.mark.parametrize("name", CONFIGS)
def test_finite_gradients_everywhere(name):
    model = make(name)
    batch = batch_of(ROWS, 8)
    model.loss(batch, torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert model.slot_keys.grad.abs().sum() > 0 and model.ctrl_r.weight.grad.abs().sum() > 0


def test_learns_a_toy_task():
    """Each user's history comes from 2 of 5 categories; a candidate from those is a click.
    Only the history can tell, so the loss drops only if the state carries it."""
    g = torch.Generator().manual_seed(3)
    n_items, B, L = 50, 64, 10
    cats = torch.zeros(n_items, 2, dtype=torch.long)
    cats[1:, 0] = torch.arange(1, n_items) % 5 + 1
    feats = RankFeatures(num_items=n_items, num_users=1, profile_sizes=[1], item_categories=cats)
    by_cat = [torch.nonzero(cats[:, 0] == c + 1).flatten() for c in range(5)]
    hist, item, label = [], [], []
    for b in range(B):
        liked = torch.randperm(5, generator=g)[:2]
        pool = torch.cat([by_cat[int(c)] for c in liked])
        hist.append(pool[torch.randint(0, len(pool), (L,), generator=g)])
        pos = b % 2 == 0
        c = int(liked[b % 4 // 2]) if pos else int([c for c in range(5) if c not in liked][b % 3])
        item.append(by_cat[c][torch.randint(0, len(by_cat[c]), (1,), generator=g)])
        label.append(float(pos))
    batch = CTRBatch(user=torch.zeros(B, dtype=torch.long), profile=torch.zeros(B, 1, dtype=torch.long),
                     item=torch.cat(item), hist=torch.stack(hist), mask=torch.ones(B, L, dtype=torch.bool))
    label = torch.tensor(label)
    torch.manual_seed(0)
    model = MIMN(MIMNConfig(dim=8, slots=4, hidden=[16], util_weight=0.0), feats)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model.loss(batch, label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_matches_the_equations():
    """The step against a direct transcription of the UIC, re-balancing and MIU equations."""
    model = make("default").double()
    batch = batch_of(ROWS[:1] + ROWS[3:4], 8)
    hist = batch.hist
    got = model.state_from_history(hist, batch.mask)
    B, m, E = 2, model.m, model.E
    M, S = torch.zeros(B, m, E, dtype=torch.double), torch.zeros(B, m, E, dtype=torch.double)
    h, r = torch.zeros(B, E, dtype=torch.double), torch.zeros(B, E, dtype=torch.double)
    g, n = torch.zeros(B, m, dtype=torch.double), torch.zeros(B, 1, dtype=torch.double)

    def gru(gi, gh, prev, gate=1.0):
        reset = torch.sigmoid(gi[..., :E] + gh[..., :E])
        z = torch.sigmoid(gi[..., E:2 * E] + gh[..., E:2 * E]) * gate
        cand = torch.tanh(gi[..., 2 * E:] + reset * gh[..., 2 * E:])
        return (1 - z) * prev + z * cand

    for t in range(8):
        live = batch.mask[:, t:t + 1]
        x = model.items(hist[:, t])
        h2 = gru(model.ctrl_x(x) + model.ctrl_r(r), model.ctrl_h(h), h)
        p = model.heads(h2)
        w = []
        for k in range(2):  # read head, write head
            key, beta = p[:, k * E:(k + 1) * E], 1 + F.softplus(p[:, 2 * E + k])
            cos_m = torch.stack([F.cosine_similarity(key, M[:, i], dim=-1) if M[:, i].abs().sum() > 0
                                 else torch.zeros(B, dtype=torch.double) for i in range(m)], 1)
            cos_k = F.cosine_similarity(key[:, None], model.slot_keys[None], dim=-1)
            w.append(torch.softmax(beta[:, None] * (cos_m + cos_k) / 2, dim=-1))
        P = torch.softmax(model.transfer(g / n.clamp(min=1)).view(B, m, m), dim=-1)
        ww = torch.einsum("bi,bij->bj", w[1], P)[:, :, None]
        erase, add = torch.sigmoid(p[:, 2 * E + 2:3 * E + 2]), torch.tanh(p[:, 3 * E + 2:])
        r2 = torch.einsum("bi,bie->be", w[0], M)
        M2 = M * (1 - ww * erase[:, None]) + ww * add[:, None]
        S2 = gru(model.miu_m(M2) + model.miu_x(x)[:, None], model.miu_h(S), S, gate=ww)
        M, S = torch.where(live[:, :, None], M2, M), torch.where(live[:, :, None], S2, S)
        h, r = torch.where(live, h2, h), torch.where(live, r2, r)
        g, n = torch.where(live, g + ww[:, :, 0], g), n + live
    for name, ref in [("memory", M), ("controller", h), ("read", r), ("interest", S), ("usage", g)]:
        assert torch.allclose(getattr(got, name), ref, atol=1e-10), name


def test_config_errors_name_the_field():
    with pytest.raises(MirecConfigError, match="model_args.slots"):
        MIMNConfig(slots=0).validate()
    with pytest.raises(MirecConfigError, match="model_args.miu_top_k"):
        MIMNConfig(slots=4, miu_top_k=5).validate()
    with pytest.raises(MirecConfigError, match="model_args.util_weight"):
        MIMNConfig(util_weight=-1.0).validate()
