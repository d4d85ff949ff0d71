"""Building blocks shared by the models. Shape alphabet as in :mod:`mirec.models.base`:
``B`` batch, ``L`` history length, ``K`` interests, ``D`` embedding size, ``N`` items.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mirec.errors import MirecConfigError


def item_embedding(num_items: int, dim: int) -> nn.Embedding:
    """Item table with row 0 = padding (kept at zero), rows ~ N(0, 1/D) so that |e| ~ 1.

    PyTorch's default N(0, 1) makes inner products ~ D at the start and saturates every softmax.
    """
    return _init_items(nn.Embedding(num_items, dim, padding_idx=0), dim)


def _init_items(emb: nn.Embedding, dim: int) -> nn.Embedding:
    nn.init.normal_(emb.weight, std=dim**-0.5)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


ITEM_FEATURES = ("off", "mean", "sum")
Categories = tuple  # (indptr (N + 1,), category ids, category names): Dataset.category_index()


def check_item_features(value: str) -> None:
    """``model_args.item_features``: off | mean | sum."""
    if value not in ITEM_FEATURES:
        raise MirecConfigError(f"model_args.item_features: expected off, mean or sum, got {value!r}")


class AttributeItems(nn.Embedding):
    """The item table with side information: item i's vector is

        e_i = w_i + pool_{a in A(i)} c_a,      pool = mean or sum (``model_args.item_features``)

    ``w`` the item-id embedding (this module's ``weight``, row 0 = padding, zero), ``c`` one
    embedding per attribute (a category or brand id of the catalogue; ``attr``), ``A(i)`` the
    item's attributes. An item without any gets ``w_i`` alone; padding stays zero. Used for the
    history inputs (``self(ids)``) and the output table (:meth:`table`) alike, so training, the
    exported vectors and the serving index share one representation. The item -> attribute
    table is a buffer built from the catalogue at construction (not saved: the data set or the
    bundle's items give it again); ``names`` keeps the attribute vocabulary, so a new item's
    attribute names map to their embeddings (:meth:`cold_rows`)."""

    def __init__(self, num_items: int, dim: int, categories: Categories, mode: str) -> None:
        from mirec.data.ctr import padded_categories

        super().__init__(num_items, dim, padding_idx=0)
        _init_items(self, dim)
        indptr, ids, names = categories
        table = padded_categories(np.asarray(indptr), np.asarray(ids))  # (N', C)
        if table.shape[0] != num_items:
            raise MirecConfigError(f"model_args.item_features: the catalogue's categories cover "
                                   f"{table.shape[0]} item ids, the model {num_items}")
        self.mode, self.names = mode, list(names)
        self.register_buffer("item_attrs", table, persistent=False)
        self.attr = item_embedding(len(self.names) + 1, dim)  # row 0: no attribute

    def attributes(self, attrs: torch.Tensor) -> torch.Tensor:
        """(M, C) attribute ids + 1 (0 = none) -> the pooled attribute part (M, D)."""
        return F.embedding_bag(attrs, self.attr.weight, mode=self.mode, padding_idx=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        part = self.attributes(self.item_attrs[ids.reshape(-1)]).reshape(*ids.shape, -1)
        return super().forward(ids) + part  # (..., D)

    def table(self) -> torch.Tensor:
        """Every item's vector, (N, D): row i equals ``self(i)``."""
        return self.weight + self.attributes(self.item_attrs)

    @torch.no_grad()
    def cold_rows(self, categories: Sequence[Sequence[str]]) -> torch.Tensor | None:
        """(M, D) vectors of new items from their attribute names: the mean item-id embedding of
        the trained items plus the pooled embeddings of the names this model knows; None for an
        entry where it knows none (the caller falls back)."""
        index = {c: j + 1 for j, c in enumerate(self.names)}
        known = [[index[c] for c in cats if c in index] for cats in categories]
        width = max([len(k) for k in known] + [1])
        attrs = torch.tensor([k + [0] * (width - len(k)) for k in known], dtype=torch.long,
                             device=self.weight.device).reshape(len(known), width)
        return self.weight[1:].mean(0) + self.attributes(attrs)  # (M, D)


def item_table_embedding(num_items: int, dim: int, features: str = "off",
                         categories: Categories | None = None) -> nn.Embedding:
    """A retriever's item table: :func:`item_embedding` (``features`` off, exactly as before)
    or :class:`AttributeItems` over the catalogue's ``categories``."""
    check_item_features(features)
    if features == "off":
        return item_embedding(num_items, dim)
    if categories is None:
        raise MirecConfigError("model_args.item_features: needs the catalogue's categories "
                               "(build the model with its data set)")
    return AttributeItems(num_items, dim, categories, features)


def items_weight(emb: nn.Embedding) -> torch.Tensor:
    """The (N, D) item vectors of a table made by :func:`item_table_embedding`."""
    return emb.table() if isinstance(emb, AttributeItems) else emb.weight


def attribute_items(model: nn.Module) -> AttributeItems | None:
    """The model's :class:`AttributeItems` table, if it has one (``item_features`` on)."""
    return next((m for m in model.modules() if isinstance(m, AttributeItems)), None)


def history_encoder(dim: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """Transformer blocks over a history (SASRec's: pre-norm, one head, GELU, feed-forward width
    D), without a causal mask: the multi-interest models' ``encoder_layers``, which let every
    history item see the others before the interests pool them. Call it as
    ``enc(x, src_key_padding_mask=~mask)``: (B, L, D) -> (B, L, D)."""
    block = nn.TransformerEncoderLayer(dim, 1, dim_feedforward=dim, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(block, layers, enable_nested_tensor=False, norm=nn.LayerNorm(dim))


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-9) -> torch.Tensor:
    """Capsule non-linearity ``|s|^2 / (1 + |s|^2) * s / |s|``: keeps the direction, maps the
    length into [0, 1). ``eps`` under the square root makes it (and its gradient) 0 at s = 0."""
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) / torch.sqrt(n2 + eps) * s


class _Tanh(torch.autograd.Function):
    """``tanh(x) = 2 sigmoid(2x) - 1`` with the backward ``g (1 - y^2)`` of ``torch.tanh``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # |2x| <= 40 keeps sigmoid's output normal (denormals stall some Intel CPUs); the
        # result is exactly +-1 in float32 beyond |x| ~ 9 either way.
        y = torch.mul(x, 2.0).clamp_(-40.0, 40.0).sigmoid_().mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(g, y)


class _Sigmoid(torch.autograd.Function):
    """``sigmoid(x)`` computed in place over ``x`` (which the caller no longer needs), with its
    input clamped to [-40, 40] first, as in :class:`_Tanh`; the backward is sigmoid's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        x.clamp_(-40.0, 40.0).sigmoid_()
        ctx.save_for_backward(x)
        return x  # the dirtied input itself (torch.compile needs it returned as such)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.sigmoid_backward(g, y)


def sigmoid_(x: torch.Tensor) -> torch.Tensor:
    """In-place ``sigmoid`` of a temporary activation: one pass over it instead of two."""
    return _Sigmoid.apply(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``torch.tanh`` for big activations: the same values (to ~1e-7) and gradient, computed
    through ``sigmoid``, which is ~3.7x faster on some CPUs (AMD Zen 4: 0.9 ms against 3.4 ms on
    a (256, 20, 256) tensor, one thread)."""
    return _Tanh.apply(x)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` where ``mask`` (broadcastable bool) is True; masked entries get
    exactly 0, and a row with nothing live gives all zeros (not NaN, and finite gradients)."""
    mask = mask.expand_as(logits)
    # The dtype's lowest finite value rather than -inf: exp underflows to an exact 0 next to any
    # live entry, and an all-masked row becomes a harmless uniform row that the mask then zeroes.
    x = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(x, dim=dim) * mask


def dynamic_routing(
    u: torch.Tensor, b: torch.Tensor, link_mask: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Capsule dynamic routing from L behaviour capsules to K interest capsules.

    Parameters
    ----------
    u : (B, K, L, D) predictions ``u_{j|i}`` of item i for interest j, or (B, 1, L, D) when
        one map is shared by all interests (MIND): then nothing is expanded K times.
    b : (B, K, L) initial routing logits (zeros for ComiRec-DR, Gaussian for MIND).
    link_mask : (B, K, L) bool, the live (interest, item) pairs: padding items and masked
        interests are False.
    iters : number of routing iterations r.

    Each iteration: ``c_i = softmax over live interests of b_i`` (each item shares one unit of
    weight among the interests, so interests compete for items as in Sabour et al. 2017),
    ``s_j = sum_i c_ij u_{j|i}``, ``v_j = squash(s_j)``, ``b_ij += v_j . u_{j|i}``.
    As in the ComiRec authors' code, every iteration but the last runs on a detached ``u``, so
    the coupling coefficients are constants for autograd and gradients reach the maps only
    through the last iteration's ``s_j = sum_i c_ij u_{j|i}``.

    Returns
    -------
    v : (B, K, D) interest capsules; c : (B, K, L) final coupling coefficients (0 where masked).
    """
    u_const = u.detach()
    for it in range(iters):
        c = masked_softmax(b, link_mask, dim=1)  # (B, K, L), sums to 1 over live interests
        last = it == iters - 1
        s = _route_sum(c, u if last else u_const)  # (B, K, D)
        v = squash(s, dim=-1)  # (B, K, D)
        if not last:
            b = b + _agreement(v, u_const)  # (B, K, L)
    return v, c


def _route_sum(c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``s_j = sum_i c_ij u_{j|i}``: (B, K, L) x (B, K or 1, L, D) -> (B, K, D)."""
    if u.shape[1] == 1:  # shared map: one (K, L) x (L, D) product per user
        return torch.bmm(c, u.squeeze(1))  # squeeze, not u[:, 0]: its backward is a view
    return torch.matmul(c.unsqueeze(2), u).squeeze(2)  # (B, K, 1, L) @ (B, K, L, D)


def _agreement(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``v_j . u_{j|i}``: (B, K, D) x (B, K or 1, L, D) -> (B, K, L)."""
    if u.shape[1] == 1:
        return torch.bmm(v, u.squeeze(1).transpose(1, 2))  # (B, K, D) @ (B, D, L)
    return torch.matmul(u, v.unsqueeze(-1)).squeeze(-1)  # (B, K, L, D) @ (B, K, D, 1)


def label_aware_attention(
    V: torch.Tensor, mask_k: torch.Tensor, target_emb: torch.Tensor, p: float
) -> torch.Tensor:
    """MIND's training readout ``v = V softmax(pow(V e_t, p))`` over live interests.

    (B, K, D), (B, K) bool, (B, D) -> (B, D).

    We use the numerically safe form ``softmax(p * V e_t)`` = the attention weights
    ``softmax(V e_t)`` raised to the power p and renormalised. The paper's ``pow`` on the raw
    product is undefined for negative products with non-integer p and, for even p, ranks a
    strongly negative interest first; this form is defined everywhere, keeps the order of the
    interests, gives uniform attention at p = 0 and hard attention (argmax) as p -> infinity,
    which is what the paper uses p for. ``p = math.inf`` selects the argmax exactly.
    """
    # Broadcast products and sums, not einsum: einsum's batched matmuls with an inner size of
    # 1 or K cost 3x as much here, forward and backward (0.9 ms against 0.3 ms at B = 256).
    sim = (V * target_emb[:, None]).sum(-1)  # (B, K)
    if math.isinf(p):
        k = sim.masked_fill(~mask_k, float("-inf")).argmax(dim=1)  # (B,)
        att = F.one_hot(k, V.shape[1]).to(V.dtype)  # (B, K)
    else:
        att = masked_softmax(p * sim, mask_k, dim=1)  # (B, K)
    return (att[..., None] * V).sum(1)  # (B, D)


def mlp(
    sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with activation and dropout
    between them, none after the last (the output is an embedding, so it stays linear)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Ranking (CTR) layers. Extra shape letters: ``F`` profile fields, ``C`` categories per item,
# ``H`` hidden units.
# ---------------------------------------------------------------------------------------------


class Dice(nn.Module):
    """DIN's data-adaptive activation: ``p = sigmoid(BN(x))``, ``f(x) = p x + (1 - p) alpha x``.

    BatchNorm (no affine part) runs over the last dimension, whatever the leading shape. With
    ``p`` fixed at ``[x > 0]`` this is PReLU, which Dice generalises.
    """

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape))
        return x * (p + (1 - p) * self.alpha)


class PReLU(nn.PReLU):
    """PReLU with one slope per unit of the *last* dimension (torch's own takes dim 1 as the
    channel, which is wrong for (B, L, H) activations)."""


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            # inference (serving): torch's fused kernel over (M, H) rows, whose channel dim 1 is
            # the last one here; one pass instead of the form below's four (~10x faster on a
            # (10000, 36) activation, one thread)
            return F.prelu(x.reshape(-1, x.shape[-1]), self.weight).view(x.shape)
        # relu(x) - a relu(-x) equals prelu(x); its backward is ~3x faster than torch's fused
        # prelu backward on CPU (measured on a (12800, 80) activation, one thread).
        return torch.relu(x) - self.weight * torch.relu(-x)


def activation(name: str, dim: int) -> nn.Module:
    """``prelu`` (one slope per unit) or ``dice`` (see :class:`Dice`)."""
    if name == "prelu":
        return PReLU(dim, init=0.25)
    if name == "dice":
        return Dice(dim)
    raise ValueError(f"activation: expected prelu or dice, got {name!r}")


def ctr_mlp(in_dim: int, hidden: Sequence[int], act: str = "prelu", dropout: float = 0.0) -> nn.Sequential:
    """The ranking head: ``in_dim -> hidden... -> 1`` with ``act`` (and dropout) after each
    hidden layer; the output is a logit."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise([in_dim, *hidden]):
        layers += [nn.Linear(n_in, n_out), activation(act, n_out)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden[-1] if hidden else in_dim, 1))
    return nn.Sequential(*layers)


def register_dense(module: nn.Module, num_dense: int, mean: torch.Tensor | None,
                   std: torch.Tensor | None) -> int:
    """A ranker trained on a retriever's candidates (:mod:`mirec.train.candidates`) reads
    ``num_dense`` = F candidate features, standardised with their training mean and std (F,),
    which this keeps as the buffers ``dense_mean``, ``dense_std`` (saved in the checkpoint).
    Sets and returns ``module.num_dense`` (0: the ranker reads none)."""
    module.num_dense = num_dense
    if num_dense:
        module.register_buffer("dense_mean", mean.float().clone())  # (F,)
        module.register_buffer("dense_std", std.float().clone())  # (F,)
    return num_dense


def dense_part(module: nn.Module, dense: torch.Tensor | None) -> list[torch.Tensor]:
    """``[(dense - mean) / std]`` (B, F) for a ranker with candidate features (see
    :func:`register_dense`), ``[]`` for one without: what its head concatenates."""
    if not module.num_dense:
        return []
    if dense is None:
        raise ValueError(f"{type(module).__name__}: this ranker was trained on candidate features; "
                         "the batch has none")
    return [(dense - module.dense_mean) / module.dense_std]


class ItemEncoder(nn.Module):
    """An item as ``[item embedding, mean of its category embeddings]``: (...) -> (..., 2D).

    ``item_categories`` (N, C) holds category ids + 1 with 0 as padding, so items with several
    categories (MovieLens genres) are mean-pooled and an item without any gets a zero half.
    Padding item 0 encodes to all zeros.
    """

    def __init__(self, num_items: int, item_categories: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.item = item_embedding(num_items, dim)
        n_cat = int(item_categories.max()) + 1 if item_categories.numel() else 1
        self.category = item_embedding(n_cat, dim)
        self.register_buffer("item_categories", item_categories.long(), persistent=False)
        self.dim = 2 * dim

    def pooled_categories(self, ids: torch.Tensor) -> torch.Tensor:
        """The mean of each item's category embeddings (padding 0 left out): (...) -> (..., D)."""
        cats = self.item_categories[ids.reshape(-1)]  # (M, C)
        w = self.category.weight
        pooled = F.embedding_bag(cats, w, mode="mean", padding_idx=0)  # (M, D), 0 for no category
        return pooled.reshape(*ids.shape, w.shape[1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item(ids), self.pooled_categories(ids)], dim=-1)  # (..., 2D)

    def table(self) -> torch.Tensor:
        """Every item's encoding at once, (N, 2D): row ``i`` equals ``self(i)``. Cheaper than
        encoding a batch's history positions one by one when they outnumber the catalogue."""
        w = self.category.weight
        pooled = F.embedding_bag(self.item_categories, w, mode="mean", padding_idx=0)  # (N, D)
        return torch.cat([self.item.weight, pooled], dim=-1)  # (N, 2D)

    def lookup(self, *ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A table of encodings and ``ids`` as row numbers into it: all items (:meth:`table`)
        when the catalogue is no larger than the ids given, else only the distinct ids among
        them, so a batch never encodes a catalogue of millions. -> (U, 2D), ids' shapes."""
        if self.item.num_embeddings <= sum(x.numel() for x in ids):
            return self.table(), list(ids)
        uniq, inv = torch.unique(torch.cat([x.reshape(-1) for x in ids]), return_inverse=True)
        rows = [r.reshape(x.shape) for r, x in zip(inv.split([x.numel() for x in ids]), ids)]
        return self(uniq), rows


class ProfileEncoder(nn.Module):
    """The user side: one embedding per profile field (code 0 = unknown), and the user id's
    own embedding when ``use_user_id`` (id ``num_users`` = a user not seen in training):
    (B,), (B, F) -> (B, (F [+ 1]) D)."""

    def __init__(self, num_users: int, profile_sizes: Sequence[int], dim: int,
                 use_user_id: bool = True) -> None:
        super().__init__()
        self.fields = nn.ModuleList(nn.Embedding(n, dim) for n in profile_sizes)
        # rows 0..num_users-1 are the users (user 0 is real), row num_users an unknown user
        self.user = nn.Embedding(num_users + 1, dim) if use_user_id else None
        for e in self.modules():
            if isinstance(e, nn.Embedding):
                nn.init.normal_(e.weight, std=dim**-0.5)
        self.dim = dim * (len(self.fields) + (1 if use_user_id else 0))

    def forward(self, user: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        parts = [e(profile[:, f]) for f, e in enumerate(self.fields)]  # F x (B, D)
        if self.user is not None:
            parts.append(self.user(user))
        if not parts:
            return profile.new_zeros((len(user), 0), dtype=torch.float32)
        return torch.cat(parts, dim=-1)  # (B, F' D)


class _PackedAUGRU(torch.autograd.Function):
    """The AUGRU time loop over packed steps, with a hand-written backward.

    Forward, for the ``n = sizes[t]`` rows live at step t (gate order r, u, n as in
    ``torch.nn.GRU``, with ``u = 1 - z``)::

        g = h W_hh^T + b_hh                          # the only matmul in the loop
        r = sigmoid(x_r + g_r),  u = sigmoid(x_u + g_u)
        n = tanh(x_n + r * g_n)
        h' = h + a u (n - h)                         # = (1 - a u) h + a u n

    ``x`` are the input projections ``x W_ih^T + b_ih``, made for all steps before the loop.
    The loop runs outside autograd (which would record ~10 nodes per step), on views made
    once per buffer (``split``) rather than sliced per step. The backward is a loop of six
    tensor operations per step, the matmul included. Everything that does not feed the
    recurrence is done for all steps at once, outside the loops: the per-step factors
    (functions of the forward's gates), ``dW_hh`` (one matmul), ``db_hh`` and the attention's
    gradient. The whole-array passes write contiguous (T, H) arrays; strided writes
    (into a column block of a wider buffer) measured several times slower.
    """

    @staticmethod
    def forward(ctx, xp: torch.Tensor, att: torch.Tensor | None, w_hh: torch.Tensor,
                b_hh: torch.Tensor, sizes: list[int], train: bool) -> torch.Tensor:
        T, H3 = xp.shape  # (T, 3H) packed
        H = H3 // 3
        gh = xp.new_empty(T, H3)  # h W_hh^T + b_hh
        ru = xp.new_empty(T, 2 * H)  # r, u
        n = xp.new_empty(T, H)  # candidate state
        ud = xp.new_empty(T, H)  # u (n - h)
        h_prev = xp.new_empty(T, H) if train else None  # the state each step started from
        out = xp.new_empty(T, H)
        h = xp.new_zeros(max(sizes, default=0), H)  # running state; rows not started yet are 0
        views = [xp[:, :2 * H], xp[:, 2 * H:], gh, gh[:, :2 * H], gh[:, 2 * H:], ru, ru[:, :H],
                 ru[:, H:], n, ud, out, att[:, None] if att is not None else xp.new_ones(T, 1)]
        views += [h_prev] if train else []
        w_t = w_hh.t()
        for size, x_ru, x_n, g, g_ru, g_n, ru_t, r_t, u_t, n_t, ud_t, out_t, a_t, *hp_t in zip(
                sizes, *(v.split(sizes) for v in views)):
            if size == 0:
                continue
            hs = h[:size]
            if hp_t:
                hp_t[0].copy_(hs)
            torch.addmm(b_hh, hs, w_t, out=g)
            torch.add(x_ru, g_ru, out=ru_t).sigmoid_()
            torch.addcmul(x_n, r_t, g_n, out=n_t).tanh_()
            torch.sub(n_t, hs, out=ud_t).mul_(u_t)
            hs.addcmul_(a_t, ud_t)
            out_t.copy_(hs)
        ctx.sizes = sizes
        ctx.save_for_backward(att, w_hh, gh, ru, n, ud, h_prev)
        return out  # (T, H)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: torch.Tensor):
        att, w_hh, gh, ru, n, ud, h_prev = ctx.saved_tensors
        sizes = ctx.sizes
        T, H = n.shape
        r, u, g_n = ru[:, :H], ru[:, H:], gh[:, 2 * H:]
        # d(pre-activation)/dh', per unit: k_n for x_n; k_r, k_u, k_h for r, u and g_n (the
        # three blocks of h W_hh^T)
        au = u.contiguous() if att is None else att[:, None] * u  # dh'/d(n - h)
        k_n = torch.addcmul(au, au * n, n, value=-1)  # a u (1 - n^2)
        k_h = k_n * r
        k_r = k_h * g_n
        k_r.addcmul_(k_r, r, value=-1)  # ... g_n r (1 - r)
        k_u = ud.clone() if att is None else att[:, None] * ud
        k_u.addcmul_(k_u, u, value=-1)  # a (n - h) u (1 - u)
        grad_h = torch.empty_like(n)  # dLoss/dh' through all paths
        d_gh = n.new_empty(T, 3 * H)  # dLoss/d(h W_hh^T + b_hh)
        views = (d_out.contiguous(), grad_h, k_r, k_u, k_h, au,
                 d_gh, d_gh[:, :H], d_gh[:, H:2 * H], d_gh[:, 2 * H:])
        steps = list(zip(sizes, *(v.split(sizes) for v in views)))
        carry = n.new_zeros(max(sizes, default=0), H)  # dLoss/dh' from the later steps
        for t in range(len(sizes) - 1, -1, -1):
            size, d_out_t, grad_t, kr_t, ku_t, kh_t, au_t, d_gh_t, d_r, d_u, d_h = steps[t]
            if size == 0:
                break  # sizes never decrease: no earlier step has live rows
            g = torch.add(d_out_t, carry, out=grad_t)
            torch.mul(kr_t, g, out=d_r)
            torch.mul(ku_t, g, out=d_u)
            torch.mul(kh_t, g, out=d_h)
            prev = steps[t - 1][0] if t else 0  # rows live before; the others started from h = 0
            if prev:
                g = g[:prev]
                carry = torch.addmm(torch.addcmul(g, g, au_t[:prev], value=-1), d_gh_t[:prev], w_hh)
        d_w = d_gh.t() @ h_prev  # (3H, H); rows at their first step have h_prev = 0
        d_b = d_gh.sum(0)
        d_att = (grad_h * ud).sum(-1) if ctx.needs_input_grad[1] else None  # (T,)
        d_xp = None
        if ctx.needs_input_grad[0]:
            torch.mul(grad_h, k_n, out=d_gh[:, 2 * H:])  # x_n enters outside r's product
            d_xp = d_gh
        return d_xp, d_att, d_w, d_b, None, None


class AUGRU(nn.Module):
    """GRU with attentional update gate (Zhou et al., "Deep Interest Evolution Network", AAAI 2019).

    ``u'_t = a_t u_t``, ``h'_t = (1 - u'_t) h'_{t-1} + u'_t h~_t``: with ``a_t = 0`` the state is
    carried over exactly; with ``a_t = 1``, or ``att=None``, this is a GRU step
    (``torch.nn.GRUCell`` with its update gate negated, ``u = 1 - z``).

    It runs on packed sequences (:class:`LeftPacked`, :func:`pack_left_padded`): step t holds the
    ``sizes[t]`` rows live at t, rows sorted by decreasing length, ``sizes`` non-decreasing
    (left-padded histories: a row, once started, stays live). Rows start from ``h = 0``.
    ``x`` (T, I), ``att`` (T,) or None -> states (T, H), T = sum(sizes). The input projections
    for all steps are one matmul (:meth:`project`); only ``h W_hh`` stays in the loop.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))  # rows: r, u, n
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H))
        self.bias_ih = nn.Parameter(torch.empty(3 * H))
        self.bias_hh = nn.Parameter(torch.empty(3 * H))
        for p in self.parameters():  # torch.nn.GRU's initialisation
            nn.init.uniform_(p, -H**-0.5, H**-0.5)
        self.hidden_size = H

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Input projections ``x W_ih^T + b_ih``: (..., I) -> (..., 3H)."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def scan(self, xp: torch.Tensor, att: torch.Tensor | None, sizes: list[int]) -> torch.Tensor:
        """The recurrence on projected inputs: (T, 3H), (T,) or None -> (T, H)."""
        if any(b < a for a, b in itertools.pairwise(sizes)) or sum(sizes) != len(xp):
            raise ValueError(f"AUGRU: sizes must be non-decreasing and sum to {len(xp)}, got {sizes}")
        if att is not None:
            att = att.to(xp.dtype)
        args = (xp, att, self.weight_hh, self.bias_hh)
        train = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in args)
        return _PackedAUGRU.apply(*args, sizes, train)

    def forward(self, x: torch.Tensor, att: torch.Tensor | None, sizes: list[int]) -> torch.Tensor:
        return self.scan(self.project(x), att, sizes)


@dataclass
class LeftPacked:
    """Left-padded rows packed step by step, the layout :class:`AUGRU` runs on.

    Rows are ranked by decreasing length; step t holds the ``sizes[t]`` longest rows (those
    live at t), so ``sizes`` never decreases and the last ``sizes[-1]`` positions (step L - 1)
    are the final steps of the non-empty rows. Position p comes from row ``row[p]`` of the
    (B, L) batch, at flat index ``src[p]`` (= row * L + step) of a (B, L) tensor.
    """

    sizes: list[int]  # (L,)
    row: torch.Tensor  # (T,) long
    src: torch.Tensor  # (T,) long

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The packed positions of a (B, L, ...) tensor: -> (T, ...)."""
        return x.reshape(-1, *x.shape[2:])[self.src]


def pack_left_padded(mask: torch.Tensor) -> LeftPacked:
    """Pack a left-padded (B, L) mask. Row b's live positions are taken to be its last
    ``mask[b].sum()`` ones (the padding is on the left)."""
    B, L = mask.shape
    lens = mask.sum(1)  # (B,)
    order = torch.argsort(lens, descending=True, stable=True)
    steps = torch.arange(L, device=mask.device)
    live = steps[:, None] >= L - lens[order][None, :]  # (L, B) ranked rows; a prefix at each step
    flat = live.reshape(-1).nonzero().squeeze(1)  # (T,) step-major: step * B + rank
    row = order[flat % B] if B else flat
    return LeftPacked(live.sum(1).tolist(), row, row * L + flat // max(B, 1))
