"""Single-interest baselines: YouTube DNN, GRU4Rec (torch) and ItemCF (numpy)."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from mirec.data.split import SplitConfig, split_users, windows
from mirec.errors import MirecConfigError
from mirec.models.gru4rec import GRU4Rec, GRU4RecConfig
from mirec.models.item_cf import ItemCF, ItemCFConfig, _all_pairs
from mirec.models.sasrec import SASRec, SASRecConfig
from mirec.models.youtube_dnn import YouTubeDNN, YouTubeDNNConfig, masked_mean
from tests.conftest import left_pad, make_dataset

torch.set_num_threads(1)

NEURAL = {
    "youtube": lambda n: YouTubeDNN(YouTubeDNNConfig(dim=8, hidden=(16,)), n),
    "gru4rec": lambda n: GRU4Rec(GRU4RecConfig(dim=8, num_layers=2), n),
    "sasrec": lambda n: SASRec(SASRecConfig(dim=8, max_len=6, num_heads=2), n),
}


@pytest.mark.parametrize("name", NEURAL)
def test_shapes_and_weights(name):
    torch.manual_seed(0)
    model = NEURAL[name](12)
    hist, mask = left_pad([[3, 7, 2], [5], []], 6)
    out = model.interests(hist, mask)
    assert out.vectors.shape == (3, 1, 8)
    assert out.mask.shape == (3, 1) and out.mask.all()
    assert out.weights.shape == (3, 1, 6)
    assert torch.allclose(out.weights.sum(-1), torch.tensor([[1.0], [1.0], [0.0]]))
    assert (out.weights[~mask[:, None]] == 0).all()
    assert model.item_embeddings().shape == (12, 8)
    assert torch.equal(model.readout(out, torch.zeros(3, 8)), out.vectors[:, 0])
    assert torch.isfinite(out.vectors).all()  # the all-padding row too


@pytest.mark.parametrize("name", NEURAL)
def test_padding_invariance(name):
    torch.manual_seed(0)
    model = NEURAL[name](12).eval()
    rows = [[3, 7, 2], [5], [], [1, 2, 3, 4, 5, 6]]
    ref = model.interests(*left_pad(rows, 6)).vectors
    for length, fill in [(10, 0), (6, 11), (8, 4)]:
        other = model.interests(*left_pad(rows, length, fill)).vectors
        assert torch.allclose(ref, other, atol=1e-6), (length, fill)


def test_youtube_mean_ignores_padding():
    torch.manual_seed(0)
    model = YouTubeDNN(YouTubeDNNConfig(dim=4, hidden=()), 10)
    hist, mask = left_pad([[3, 7, 2], [5], []], 5)
    e = model.emb.weight
    expected = torch.stack([(e[3] + e[7] + e[2]) / 3, e[5], torch.zeros(4)])
    mean, w = masked_mean(model.emb.weight, hist, mask)
    assert torch.allclose(mean, expected, atol=1e-6)
    assert torch.allclose(w[0], torch.tensor([0, 0, 1 / 3, 1 / 3, 1 / 3]))
    model.mlp = nn.Identity()  # the model's vector is then the pooled mean itself
    assert torch.allclose(model.interests(hist, mask).vectors[:, 0], expected, atol=1e-6)


def test_gru4rec_equals_gru_on_real_items_only():
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(dim=8, num_layers=2), 12).eval()
    v = model.interests(*left_pad([[3, 7, 2], [5]], 6)).vectors[:, 0]
    for b, r in enumerate([[3, 7, 2], [5]]):
        h, _ = model.gru(model.emb(torch.tensor([r])))
        assert torch.allclose(v[b], h[0, -1], atol=1e-6)


def test_sasrec_is_causal_attention_over_the_real_items_only():
    """Left-padded to L = 6, SASRec's output equals the plain pre-norm Transformer run on the
    real items alone under the standard causal mask, with their positions (the last ones)."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(dim=8, max_len=6, num_heads=2, dropout=0.0), 12).eval()
    v = model.interests(*left_pad([[3, 7, 2], [5]], 6)).vectors[:, 0]
    for b, r in enumerate([[3, 7, 2], [5]]):
        n = len(r)
        x = model.emb(torch.tensor([r])) * 8 ** 0.5 + model.pos.weight[-n:]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # True: may not look
        for block in model.blocks.layers:
            x = block(x, src_mask=causal)
        assert torch.allclose(v[b], model.norm(x[0, -1]), atol=1e-5)
    # the newest item is read through attention: changing the oldest one changes the output
    w = model.interests(*left_pad([[4, 7, 2]], 6)).vectors[0, 0]
    assert not torch.allclose(w, v[0], atol=1e-4)


@pytest.mark.parametrize("name", NEURAL)
def test_learns_two_clusters(tmp_path, name):
    """Users live in one of two disjoint item clusters; training must find the cluster."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(40):
        base = 1 if u < 20 else 6  # cluster A: items 1..5, cluster B: 6..10
        users += [u] * 8
        items += (base + rng.integers(0, 5, size=8)).tolist()
        ts += list(range(8))
    ds = make_dataset(tmp_path / "ds", users, items, ts)
    sp = split_users(ds, SplitConfig(seed=0, max_len=5))
    start, pos = sp.examples[np.arange(sp.num_examples)]
    hist, mask = windows(ds.item, start, pos, 5)
    hist, mask = torch.from_numpy(hist), torch.from_numpy(mask)
    target = torch.from_numpy(ds.item[pos].astype(np.int64))
    model = NEURAL[name](ds.num_items)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def logits():
        user = model.readout(model.interests(hist, mask), None)  # (X, D)
        z = user @ model.item_embeddings().T  # (X, N)
        return z.masked_fill(torch.arange(ds.num_items) == 0, float("-inf"))

    first = nn.functional.cross_entropy(logits(), target).item()
    for _ in range(100):
        loss = nn.functional.cross_entropy(logits(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = logits().softmax(-1)  # (X, N)
    same = (torch.arange(ds.num_items)[None, :] > 5) == (target[:, None] > 5)
    assert first > np.log(10) - 0.3
    assert loss.item() < first - 0.5
    assert (p * same).sum(-1).mean() > 0.9  # probability mass on the target's own cluster


# ItemCF. Raw items 1..5 become ids 1..5 (sorted raw ids); user 3 is held out.
SEQS = {0: [1, 2, 3], 1: [2, 3, 4, 2], 2: [4, 5], 3: [1, 5, 1, 5]}
ALL_PAIRS = {(1, 2): 1, (1, 3): 1, (2, 3): 2, (2, 4): 1, (3, 4): 1, (4, 5): 1}
WINDOW_1 = {(1, 2): 1, (2, 3): 2, (2, 4): 1, (3, 4): 1, (4, 5): 1}  # (1, 3) is 2 apart


def tiny(tmp_path, seqs=SEQS, train=(0, 1, 2)):
    users = [u for u, s in seqs.items() for _ in s]
    items = [i for s in seqs.values() for i in s]
    ts = [t for s in seqs.values() for t in range(len(s))]
    ds = make_dataset(tmp_path, users, items, ts)
    sp = split_users(ds, SplitConfig(seed=0))
    return ds, dataclasses.replace(sp, train_users=np.array(train, dtype=np.int32))


def dense(pairs, n=6):
    c = np.zeros((n, n), dtype=np.float32)
    for (i, j), v in pairs.items():
        c[i, j] = c[j, i] = v
    return c


@pytest.mark.parametrize("window, expected", [(None, ALL_PAIRS), (1, WINDOW_1), (3, ALL_PAIRS)])
def test_item_cf_counts(tmp_path, window, expected):
    ds, sp = tiny(tmp_path / "ds")
    cf = ItemCF(ItemCFConfig(window=window)).fit(ds, sp)
    np.testing.assert_array_equal(cf.sim, dense(expected))


def test_item_cf_cosine(tmp_path):
    ds, sp = tiny(tmp_path / "ds")
    cf = ItemCF(ItemCFConfig(normalize="cosine")).fit(ds, sp)
    users_with = np.array([1, 1, 2, 2, 2, 1], dtype=np.float32)  # n_i (item 0: none, kept 1)
    expected = dense(ALL_PAIRS) / np.sqrt(users_with[:, None] * users_with[None, :])
    np.testing.assert_allclose(cf.sim, expected, rtol=1e-6)
    assert cf.sim[2, 3] == pytest.approx(1.0)  # 2 / sqrt(2 * 2)


def test_item_cf_scores_are_row_sums(tmp_path):
    ds, sp = tiny(tmp_path / "ds")
    cf = ItemCF().fit(ds, sp)
    c = dense(ALL_PAIRS)
    hist = np.array([[0, 0, 1, 2], [4, 4, 4, 4], [3, 5, 3, 4]])  # masked ids must not count
    mask = np.array([[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=bool)
    s = cf.score(hist, mask)
    assert s.shape == (3, 6) and s.dtype == np.float32
    np.testing.assert_array_equal(s, np.stack([c[1] + c[2], np.zeros(6), c[5] + c[3] + c[4]]))


def test_item_cf_uses_training_users_only(tmp_path):
    ds, sp = tiny(tmp_path / "a")
    base = ItemCF().fit(ds, sp).sim
    changed = {**SEQS, 3: [2, 5, 3, 1, 4]}  # only the held-out user's events change
    ds2, sp2 = tiny(tmp_path / "b", changed)
    np.testing.assert_array_equal(ItemCF().fit(ds2, sp2).sim, base)
    with_test_user = ItemCF().fit(*tiny(tmp_path / "c", train=(0, 1, 2, 3))).sim
    assert with_test_user[1, 5] == 1 and base[1, 5] == 0  # the check above can fail


def test_item_cf_matches_naive_count(random_dataset):
    ds = random_dataset
    sp = split_users(ds, SplitConfig(seed=0))
    n = ds.num_items
    naive = np.zeros((n, n), dtype=np.float32)
    for u in sp.train_users:
        s = sorted(set(ds.item[ds.offsets[u]:ds.offsets[u + 1]].tolist()))
        for a in s:
            for b in s:
                naive[a, b] += a != b
    np.testing.assert_array_equal(ItemCF().fit(ds, sp).sim, naive)
    np.testing.assert_array_equal(ItemCF(ItemCFConfig(window=100)).fit(ds, sp).sim, naive)
    # several user chunks give the same matrix as one
    keep = np.isin(ds.user, sp.train_users)
    user, item = ds.user[keep].astype(np.int64), ds.item[keep].astype(np.int64)
    chunked = _all_pairs(user, item, n, chunk=7)
    np.fill_diagonal(chunked, 0)
    np.testing.assert_array_equal(chunked, naive)


def test_item_cf_config_errors(tmp_path):
    with pytest.raises(MirecConfigError, match="normalize"):
        ItemCF(ItemCFConfig(normalize="jaccard"))
    with pytest.raises(MirecConfigError, match="window"):
        ItemCF(ItemCFConfig(window=0))
    ds, sp = tiny(tmp_path / "ds")
    with pytest.raises(MirecConfigError, match="max_items"):
        ItemCF(ItemCFConfig(max_items=3)).fit(ds, sp)
