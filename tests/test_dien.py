"""DIEN and its AUGRU: shapes, padding invariance, the AUGRU update against a GRU cell and
autograd, the auxiliary loss, and training on toy data."""

import pytest
import torch
import torch.nn.functional as F

from mirec.errors import MirecConfigError
from mirec.models.base import CTRBatch, RankFeatures
from mirec.models.dien import DIEN, DIENConfig
from mirec.models.layers import AUGRU, pack_left_padded

torch.set_num_threads(1)

N = 50  # item ids 0..49, 0 = padding


def features(num_items=N):
    cats = torch.randint(1, 6, (num_items, 2), generator=torch.Generator().manual_seed(0))
    cats[0] = 0
    return RankFeatures(num_items=num_items, num_users=10, profile_sizes=[3, 4], item_categories=cats)


def make_batch(rows, length, items, fill=0, users=None):
    """Left-padded histories; ``fill`` is the id written at padded positions."""
    B = len(rows)
    hist = torch.full((B, length), fill, dtype=torch.long)
    mask = torch.zeros(B, length, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            hist[b, -len(r):] = torch.tensor(r)
            mask[b, -len(r):] = True
    user = torch.arange(B) % 10 if users is None else torch.tensor(users)
    return CTRBatch(user, torch.stack([user % 3, user % 4], 1), torch.tensor(items), hist, mask)


def make_model(**kw):
    torch.manual_seed(0)
    return DIEN(DIENConfig(dim=8, hidden=[16], **kw), features())


ROWS = [[3, 7, 2], [5], [], [1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 9, 4, 4]]
ITEMS = [4, 8, 15, 16, 23]


def test_output_shape_and_finite():
    model = make_model()
    out = model(make_batch(ROWS, 10, ITEMS))
    assert out.shape == (5,)
    assert torch.isfinite(out).all()  # the empty history too


def test_padding_invariance():
    model = make_model().eval()
    with torch.no_grad():
        ref = model(make_batch(ROWS, 10, ITEMS))
        for length, fill in [(30, 0), (10, 11), (30, 42)]:
            other = model(make_batch(ROWS, length, ITEMS, fill))
            assert torch.allclose(ref, other, atol=1e-5), (length, fill)


def test_rows_do_not_depend_on_each_other():
    """Packing sorts the rows by length; each row's logit must still be its own."""
    model = make_model().eval()
    with torch.no_grad():
        together = model(make_batch(ROWS, 10, ITEMS))
        alone = torch.cat([model(make_batch([r], 10, [i], users=[b])) for b, (r, i) in enumerate(zip(ROWS, ITEMS))])
    assert torch.allclose(together, alone, atol=1e-5)
    assert together.std() > 1e-4  # the rows differ, so a mix-up would show


def test_history_changes_the_logit():
    model = make_model().eval()
    with torch.no_grad():
        a = model(make_batch([[3, 7, 2]], 5, [4]))
        b = model(make_batch([[3, 2, 7]], 5, [4]))  # same items, other order: a GRU sees it
    assert not torch.allclose(a, b, atol=1e-6)


def test_pack_left_padded_layout():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]]).bool()
    pk = pack_left_padded(mask)  # lengths 2, 4, 0, 1 -> rows ranked 1, 0, 3, 2
    assert pk.sizes == [1, 1, 2, 3]
    assert pk.row.tolist() == [1, 1, 1, 0, 1, 0, 3]
    assert pk.src.tolist() == [4, 5, 6, 2, 7, 3, 15]  # row * L + step
    assert pk.take(torch.arange(16).view(4, 4)).tolist() == pk.src.tolist()


# --- AUGRU -------------------------------------------------------------------------------------

def grucell_like(augru):
    """A torch.nn.GRUCell with the AUGRU's weights: its update gate z = 1 - u, so the u rows
    of the weights and biases are negated (sigmoid(-x) = 1 - sigmoid(x))."""
    H = augru.hidden_size
    cell = torch.nn.GRUCell(augru.weight_ih.shape[1], H)
    with torch.no_grad():
        for src, dst in [(augru.weight_ih, cell.weight_ih), (augru.weight_hh, cell.weight_hh),
                         (augru.bias_ih, cell.bias_ih), (augru.bias_hh, cell.bias_hh)]:
            w = src.clone()
            w[H:2 * H] *= -1
            dst.copy_(w)
    return cell


@pytest.mark.parametrize("att", ["ones", "none"])
def test_augru_with_unit_attention_is_a_gru(att):
    torch.manual_seed(0)
    m = AUGRU(5, 6)
    cell = grucell_like(m)
    B, L = 3, 4
    x = torch.randn(L, B, 5)  # packed with all rows live: position t * B + b
    a = torch.ones(L * B) if att == "ones" else None
    out = m(x.reshape(L * B, 5), a, [B] * L).view(L, B, 6)
    h = torch.zeros(B, 6)
    for t in range(L):
        h = cell(x[t], h)
        assert torch.allclose(out[t], h, atol=1e-6), t


def test_augru_with_zero_attention_keeps_the_state_exactly():
    torch.manual_seed(0)
    m = AUGRU(5, 6)
    B, L = 2, 4
    x = torch.randn(L * B, 5)
    a = torch.rand(L, B) + 0.1
    a[2, 0] = 0.0  # row 0 ignores step 2
    out = m(x, a.reshape(-1), [B] * L).view(L, B, 6)
    assert torch.equal(out[2, 0], out[1, 0])
    assert not torch.allclose(out[2, 1], out[1, 1])
    assert not torch.allclose(out[3, 0], out[2, 0])


def test_augru_attention_scales_the_update():
    """h' - h = a u (n - h): halving a halves the step from the same state."""
    torch.manual_seed(0)
    m = AUGRU(3, 4)
    x = torch.randn(1, 3)
    full = m(x, torch.ones(1), [1])
    half = m(x, torch.full((1,), 0.5), [1])
    assert torch.allclose(half, full / 2, atol=1e-6)  # from h = 0


@pytest.mark.parametrize("sizes", [[1, 2, 2, 3], [0, 3, 3], [2]])
def test_augru_backward_matches_numerical_gradient(sizes):
    torch.manual_seed(0)
    m = AUGRU(3, 4).double()
    T = sum(sizes)
    x = torch.randn(T, 3, dtype=torch.double, requires_grad=True)
    a = torch.rand(T, dtype=torch.double, requires_grad=True)
    params = list(m.parameters())

    def f(x, a, *p):
        return m(x, a, sizes)

    assert torch.autograd.gradcheck(f, (x, a, *params))
    assert torch.autograd.gradcheck(lambda x, *p: m(x, None, sizes), (x, *params))


def test_augru_rejects_decreasing_sizes():
    m = AUGRU(3, 4)
    with pytest.raises(ValueError, match="non-decreasing"):
        m(torch.randn(3, 3), None, [2, 1])


# --- losses and training -----------------------------------------------------------------------

def test_loss_adds_the_weighted_auxiliary_loss():
    batch = make_batch(ROWS, 10, ITEMS)
    label = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    for w in (1.0, 0.5):
        model = make_model(aux_weight=w).eval()
        bce = F.binary_cross_entropy_with_logits(model(batch), label)
        torch.manual_seed(1)
        loss = model.loss(batch, label)
        torch.manual_seed(1)  # the same negatives
        _, aux = model.scores_and_aux(batch)
        assert aux > 0
        assert loss > bce
        assert torch.allclose(loss, bce + w * aux)
    model = make_model(aux_weight=0.0).eval()
    assert torch.equal(model.loss(batch, label), F.binary_cross_entropy_with_logits(model(batch), label))


def test_aux_loss_is_zero_without_two_real_items():
    model = make_model()
    _, aux = model.scores_and_aux(make_batch([[5], [], [7]], 4, [1, 2, 3]))
    assert aux.item() == 0.0


def test_gradients_are_finite_and_reach_every_part():
    model = make_model()
    loss = model.loss(make_batch(ROWS, 10, ITEMS), torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in (model.extractor, model.evolution, model.attention):
        for name, p in part.named_parameters():
            assert p.grad.abs().sum() > 0, name
    assert model.items.item.weight.grad[0].abs().sum() == 0  # padding row untouched


def successor_batch(g, B=64, length=8):
    """Histories of consecutive ids s, s+1, ..., of random lengths 2..length."""
    rows = []
    for _ in range(B):
        n = int(torch.randint(2, length + 1, (1,), generator=g))
        s = int(torch.randint(1, N - n, (1,), generator=g))
        rows.append(list(range(s, s + n)))
    return rows


def test_aux_loss_learns_the_next_item():
    """Item i is always followed by i + 1: the extractor learns to tell the next item from a
    random one, so the auxiliary loss falls well below its starting value (2 log 2)."""
    g = torch.Generator().manual_seed(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    batches = [make_batch(rows, 8, [1] * len(rows)) for rows in (successor_batch(g) for _ in range(4))]

    def aux_on(batch, seed):
        torch.manual_seed(seed)
        return model.scores_and_aux(batch)[1]

    before = sum(aux_on(b, 100 + i).item() for i, b in enumerate(batches)) / len(batches)
    for step in range(80):
        opt.zero_grad()
        aux_on(batches[step % 4], step).backward()
        opt.step()
    after = sum(aux_on(b, 100 + i).item() for i, b in enumerate(batches)) / len(batches)
    assert before > 1.2
    assert after < 0.5 * before


def test_adam_lowers_the_main_loss():
    """Candidates that continue the history (last + 1) are clicked, random ones are not."""
    g = torch.Generator().manual_seed(1)
    rows = successor_batch(g, B=96)
    label = (torch.arange(96) % 2 == 0).float()
    items = [r[-1] + 1 if y else int(torch.randint(1, N, (1,), generator=g)) for r, y in zip(rows, label)]
    batch = make_batch(rows, 8, items)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def main_loss():
        return F.binary_cross_entropy_with_logits(model(batch), label)

    with torch.no_grad():
        before = main_loss().item()
    for _ in range(40):
        opt.zero_grad()
        model.loss(batch, label).backward()
        opt.step()
    with torch.no_grad():
        after = main_loss().item()
    assert after < 0.7 * before


def test_config_errors_name_the_field():
    with pytest.raises(MirecConfigError, match="model_args.activation"):
        DIENConfig(activation="relu").validate()
    with pytest.raises(MirecConfigError, match="model_args.aux_weight"):
        DIENConfig(aux_weight=-1).validate()
    with pytest.raises(MirecConfigError, match="model_args.dim"):
        DIENConfig(dim=0).validate()
