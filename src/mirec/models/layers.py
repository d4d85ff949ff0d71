"""Building blocks shared by the models. Shape alphabet as in :mod:`mirec.models.base`:
``B`` batch, ``L`` history length, ``K`` interests, ``D`` embedding size, ``N`` items.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def item_embedding(num_items: int, dim: int) -> nn.Embedding:
    """Item table with row 0 = padding (kept at zero), rows ~ N(0, 1/D) so that |e| ~ 1.

    PyTorch's default N(0, 1) makes inner products ~ D at the start and saturates every softmax.
    """
    emb = nn.Embedding(num_items, dim, padding_idx=0)
    nn.init.normal_(emb.weight, std=dim**-0.5)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-9) -> torch.Tensor:
    """Capsule non-linearity ``|s|^2 / (1 + |s|^2) * s / |s|``: keeps the direction, maps the
    length into [0, 1). ``eps`` under the square root makes it (and its gradient) 0 at s = 0."""
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) / torch.sqrt(n2 + eps) * s


class _Tanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with the backward ``g (1 - y^2)`` from the saved output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return g - g * y * y


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``torch.tanh`` to within 2e-7, about 3x faster on CPU: PyTorch's float32 CPU tanh kernel
    is several times slower than its sigmoid (measured 4.8 ms vs 0.8 ms on a (256, 20, 256)
    tensor with one thread), and ComiRec-SA's attention spends most of its time in it."""
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
        return torch.bmm(c, u[:, 0])
    return torch.matmul(c.unsqueeze(2), u).squeeze(2)  # (B, K, 1, L) @ (B, K, L, D)


def _agreement(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``v_j . u_{j|i}``: (B, K, D) x (B, K or 1, L, D) -> (B, K, L)."""
    if u.shape[1] == 1:
        return torch.bmm(v, u[:, 0].transpose(1, 2))  # (B, K, D) @ (B, D, L)
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
    sim = torch.einsum("bkd,bd->bk", V, target_emb)  # (B, K)
    if math.isinf(p):
        k = sim.masked_fill(~mask_k, float("-inf")).argmax(dim=1)  # (B,)
        att = F.one_hot(k, V.shape[1]).to(V.dtype)  # (B, K)
    else:
        att = masked_softmax(p * sim, mask_k, dim=1)  # (B, K)
    return torch.einsum("bk,bkd->bd", att, V)


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
        count = (item_categories > 0).sum(1, keepdim=True).clamp(min=1).float()  # (N, 1)
        self.register_buffer("inv_count", 1.0 / count, persistent=False)
        self.dim = 2 * dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cats = self.category(self.item_categories[ids])  # (..., C, D)
        pooled = cats.sum(-2) * self.inv_count[ids]  # (..., D)
        return torch.cat([self.item(ids), pooled], dim=-1)  # (..., 2D)


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


class _AUGRUScan(torch.autograd.Function):
    """The AUGRU time loop with a hand-written backward.

    Forward, per step (gate order r, u, n as in ``torch.nn.GRU``, with ``u = 1 - z``)::

        g = h W_hh^T + b_hh                          # the only matmul in the loop
        r = sigmoid(x_r + g_r),  u = sigmoid(x_u + g_u)
        n = tanh(x_n + r * g_n)
        h' = h + a u (n - h)                         # = (1 - a u) h + a u n

    ``x`` are the input projections ``x W_ih^T + b_ih``, computed for all steps before the loop.
    Autograd would record about ten nodes per step; here the loop runs outside autograd and the
    backward is its own loop of four tensor operations per step, whose per-step factors (which
    depend only on the forward's gates) are computed for all steps at once beforehand.
    """

    @staticmethod
    def forward(ctx, xp: torch.Tensor, att: torch.Tensor, w_hh: torch.Tensor,
                b_hh: torch.Tensor) -> torch.Tensor:
        L, B, H3 = xp.shape  # (L, B, 3H) time-major
        H = H3 // 3
        a = att.unsqueeze(-1)  # (L, B, 1)
        xn2 = 2 * xp[:, :, 2 * H:]  # (L, B, H): tanh(y) = 2 sigmoid(2y) - 1, see ``tanh`` above
        gh = xp.new_empty(L, B, H3)  # h W_hh^T + b_hh per step
        ru = xp.new_empty(L, B, 2 * H)  # r, u
        n = xp.new_empty(L, B, H)
        out = xp.new_empty(L, B, H)
        h = xp.new_zeros(B, H)
        w_t = w_hh.t()
        for t in range(L):
            torch.addmm(b_hh, h, w_t, out=gh[t])
            torch.add(xp[t, :, :2 * H], gh[t, :, :2 * H], out=ru[t]).sigmoid_()
            torch.addcmul(xn2[t], ru[t, :, :H], gh[t, :, 2 * H:], value=2, out=n[t])
            n[t].sigmoid_().mul_(2).sub_(1)
            h = torch.addcmul(h, a[t] * ru[t, :, H:], n[t] - h, out=out[t])
        ctx.save_for_backward(att, w_hh, gh, ru, n, out)
        return out  # (L, B, H)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: torch.Tensor):
        att, w_hh, gh, ru, n, out = ctx.saved_tensors
        L, B, H = out.shape
        a = att.unsqueeze(-1)  # (L, B, 1)
        r, u, g_n = ru[:, :, :H], ru[:, :, H:], gh[:, :, 2 * H:]
        h_prev = torch.cat([out.new_zeros(1, B, H), out[:-1]])  # (L, B, H)
        au = a * u
        diff = n - h_prev
        # d(pre-activation)/dh' for each gate, per step: n's, then r's, u's and W_hh g_n's.
        k_n = au * (1 - n * n)
        k = torch.stack([k_n * g_n * r * (1 - r), a * diff * u * (1 - u), k_n * r], dim=2)  # (L, B, 3, H)
        keep = 1 - au  # dh'/dh along the direct path
        grad_h = torch.empty_like(out)  # dLoss/dh'_t, all paths
        d_gh = torch.empty_like(k)  # dLoss/d(h W_hh^T + b_hh) per step
        carry = out.new_zeros(B, H)
        for t in range(L - 1, -1, -1):
            g = torch.add(d_out[t], carry, out=grad_h[t])
            torch.mul(k[t], g[:, None], out=d_gh[t])
            if t:  # h_0 = 0 is a constant, so the carry out of step 0 is not needed
                carry = torch.addmm(g * keep[t], d_gh[t].view(B, 3 * H), w_hh)
        d_xp = None
        if ctx.needs_input_grad[0]:
            d_xp = d_gh.clone()
            d_xp[:, :, 2] = grad_h * k_n  # x_n enters outside r's product
            d_xp = d_xp.view(L, B, 3 * H)
        d_att = (grad_h * u * diff).sum(-1) if ctx.needs_input_grad[1] else None  # (L, B)
        d_flat = d_gh.view(L * B, 3 * H)
        d_w = d_flat.t() @ h_prev.reshape(L * B, H)  # (3H, H)
        return d_xp, d_att, d_w, d_flat.sum(0)


class AUGRU(nn.Module):
    """GRU with attentional update gate (Zhou et al., "Deep Interest Evolution Network", AAAI 2019).

    ``u'_t = a_t u_t``, ``h'_t = (1 - u'_t) h'_{t-1} + u'_t h~_t``: with ``a_t = 0`` the state is
    carried over exactly, with ``a_t = 1`` this is a GRU step (``torch.nn.GRUCell`` with its
    update gate negated: ``u = 1 - z``). With ``a`` = a 0/1 mask it is a GRU that skips the
    masked steps, which is how DIEN's interest extractor ignores left padding.

    Time-major: ``x`` (L, B, I), ``att`` (L, B) -> states (L, B, H), starting from ``h_0 = 0``.
    The input projections for all L steps are one matmul; only ``h W_hh`` stays in the loop.
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

    def forward(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        xp = F.linear(x, self.weight_ih, self.bias_ih)  # (L, B, 3H)
        return _AUGRUScan.apply(xp, att.to(xp.dtype), self.weight_hh, self.bias_hh)
