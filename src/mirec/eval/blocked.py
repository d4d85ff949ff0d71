"""Exact top-n over a whole catalogue in blocks: user blocks x item blocks, running top-n merge.

Memory is O(B K C) for a block of ``B`` users and ``C`` items, however large the catalogue: one
matmul per (user block, item block) gives the (C, K, B) interest scores, and only items that beat
a user's current n-th best score ever leave the block. Finding them is cheap: the block's maxima
per chunk of 64 items (a fast reduction) say which chunks can hold one, and only those chunks are
looked at item by item. The first block of a user block is ranked exactly with ``torch.topk``.

Scores are ``f(u, i) = max over live k of v_k . e_i``. Ties are broken by the lower item id
(:func:`topn_exact`), on every path: the blocked lists are the full-score lists exactly.

Shapes: ``B`` users, ``K`` interests, ``D`` dim, ``N`` items (0 = padding), ``C`` items in a
block, ``n`` list length.
"""

from __future__ import annotations

from typing import Iterator

import torch

CHUNK = 64  # items per chunk maximum: a block's hot chunks are looked at item by item
ITEM_BLOCK = 1_024  # items per block: the (C, K B) float block (2 MB) stays in the cache
USER_BLOCK = 128  # users per matmul: K * 128 rows of scores per item block


def topn_exact(s: torch.Tensor, n: int, lo: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) scores of items ``lo..lo+C-1`` -> their top ``n`` (scores, ids), each (B, n), best
    first; equal scores rank by the lower id (``torch.topk`` alone leaves ties in any order)."""
    val, at = torch.topk(s, n, dim=1)  # (B, n): the right scores; tied ids may be any of them
    t = val[:, -1:]  # (B, 1) n-th best score
    extra = (s == t).sum(1) > (val == t).sum(1)  # rows with more items at t than were kept
    if extra.any():  # keep the lowest ids among the ties at t (n - #above of them)
        r = extra.nonzero()[:, 0]
        sr, tr = s[r], t[r]
        above = sr > tr
        tied = (sr == tr) & ((sr == tr).cumsum(1) <= n - above.sum(1, keepdim=True))
        at[r] = (above | tied).nonzero()[:, 1].view(len(r), n)  # row-major: ascending ids
        val[r] = sr.gather(1, at[r])
    at, val = _by_score_then_id(val, at)
    return val, at + lo


def _by_score_then_id(val: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort (B, m) entries by score descending, equal scores by ascending id."""
    by_id = at.argsort(dim=1)
    val, at = val.gather(1, by_id), at.gather(1, by_id)
    order = torch.sort(val, dim=1, descending=True, stable=True).indices
    return at.gather(1, order), val.gather(1, order)


def merge_block(best: torch.Tensor, ids: torch.Tensor, s: torch.Tensor, lo: int) -> None:
    """Merge a block's (C, K, B) scores of items ``lo..lo+C-1`` into the running top-n
    (``best``, ``ids``: (B, n), best first, ties by id) in place. Only items scoring above a
    user's n-th best can enter; an item tied with it loses, having the larger id."""
    C, K, B = s.shape
    n = best.shape[1]
    pad = -C % CHUNK
    if pad:  # a ragged last block: -inf rows never enter
        s = torch.cat([s, s.new_full((pad, K, B), float("-inf"))])
    chunks = s.view(-1, CHUNK, K, B)  # (C / 64, 64, K, B)
    thr = best[:, -1]  # (B,)
    # item-major scores: both maxima reduce over a middle axis, i.e. elementwise over rows
    hot = (chunks.amax(1).amax(1) > thr).T.nonzero()  # (H, 2): (user, chunk), grouped by user
    if len(hot) == 0:
        return
    b, c = hot[:, 0], hot[:, 1]
    vals = chunks[c, :, :, b].amax(2)  # (H, 64): max over interests
    h, j = (vals > thr[b, None]).nonzero(as_tuple=True)  # (M,): grouped by user, ids ascending
    row, cand, cid = b[h], vals[h, j], lo + c[h] * CHUNK + j  # (M,) each
    users, inv, counts = torch.unique_consecutive(row, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts  # (R,)
    pos = torch.arange(len(row), device=s.device) - start[inv]  # place within the user's entrants
    padded = s.new_full((len(users), int(counts.max())), float("-inf"))  # (R, m)
    padded_id = torch.zeros(padded.shape, dtype=torch.long, device=s.device)
    padded[inv, pos], padded_id[inv, pos] = cand, cid
    # the running list first: a stable sort keeps its lower ids ahead on equal scores
    both = torch.cat([best[users], padded], 1)  # (R, n + m)
    both_id = torch.cat([ids[users], padded_id], 1)
    order = torch.sort(both, dim=1, descending=True, stable=True).indices[:, :n]
    best[users], ids[users] = both.gather(1, order), both_id.gather(1, order)


def running_topn(blocks: Iterator[tuple[int, torch.Tensor]], n: int) -> torch.Tensor:
    """Top-``n`` ids (B, n) over ``(lo, scores (C, K, B))`` blocks in ascending item order (the
    max over K taken here); the first block must hold at least ``n`` items (:func:`edges`)."""
    best = ids = None
    for lo, s in blocks:
        if best is None:
            best, ids = topn_exact(s.amax(1).T, n, lo)
        else:
            merge_block(best, ids, s, lo)
    assert ids is not None, "no blocks"
    return ids


def seen_in_blocks(rows: torch.Tensor, items: torch.Tensor):
    """The (row, item) pairs never ranked, sorted by item so that a block's pairs are a slice:
    returns ``pairs(lo, hi) -> (rows, items - lo)``."""
    order = items.argsort()
    rows, items = rows[order], items[order]

    def pairs(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, z = torch.searchsorted(items, torch.tensor([lo, hi], device=items.device)).tolist()
        return rows[a:z], items[a:z] - lo

    return pairs


def edges(N: int, block: int, n: int) -> list[tuple[int, int]]:
    """Item ranges ``[lo, hi)`` of ``block`` items; the first has at least ``n`` (it fills the
    running list)."""
    first = min(max(block, n), N)
    return [(0, first)] + [(lo, min(lo + block, N)) for lo in range(first, N, block)]


def vector_blocks(vectors: torch.Tensor, live: torch.Tensor, items: torch.Tensor,
                  seen_rows: torch.Tensor, seen_items: torch.Tensor, block: int,
                  n: int, never: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(C, K, B) interest scores of ``block`` items at a time (see :func:`edges`), one matmul
    each; item 0, the seen (row, item) pairs and the sorted item ids ``never`` score -inf. A
    dead interest (``live`` false) is replaced by one of the user's live interests, which
    leaves the max unchanged."""
    B, K, D = vectors.shape
    first = live.float().argmax(1)  # (B,) a live interest per user
    fill = vectors[torch.arange(B, device=vectors.device), first]  # (B, D)
    v = torch.where(live[:, :, None], vectors, fill[:, None])  # (B, K, D)
    u = v.transpose(0, 1).reshape(K * B, D)  # (K B, D): interest-major rows
    pairs = seen_in_blocks(seen_rows, seen_items)
    for lo, hi in edges(items.shape[0], block, n):
        # item-major (C, K B): on one CPU thread twice as fast as (K B, C) here, and the
        # maxima in merge_block vectorise over it
        s = (items[lo:hi] @ u.T).view(hi - lo, K, B)  # (C, K, B)
        if lo == 0:
            s[0] = float("-inf")
        r, i = pairs(lo, hi)
        s[i, :, r] = float("-inf")
        if never is not None:  # items never ranked for any user (sorted): this block's slice
            a, z = torch.searchsorted(never, torch.tensor([lo, hi], device=never.device)).tolist()
            s[never[a:z] - lo] = float("-inf")
        yield lo, s


def blocked_topn(vectors: torch.Tensor, live: torch.Tensor, items: torch.Tensor, n: int,
                 seen_rows: torch.Tensor, seen_items: torch.Tensor, item_block: int = ITEM_BLOCK,
                 user_block: int = USER_BLOCK, never: torch.Tensor | None = None) -> torch.Tensor:
    """Exact top-``n`` ids (B, n) by max over live interests: ``vectors`` (B, K, D), ``live``
    (B, K) bool, ``items`` (N, D); item 0, the ``(seen_rows[j], seen_items[j])`` pairs and the
    item ids ``never`` (sorted, for every user) are never ranked. Memory
    O(user_block K item_block + B n) for any N."""
    B = vectors.shape[0]
    out = torch.zeros((B, n), dtype=torch.long, device=items.device)
    for a in range(0, B, user_block):
        z = min(a + user_block, B)
        hit = (seen_rows >= a) & (seen_rows < z)
        blocks = vector_blocks(vectors[a:z], live[a:z], items, seen_rows[hit] - a, seen_items[hit],
                               item_block, n, never)
        out[a:z] = running_topn(blocks, n)
    return out


def scores_topn(scores: torch.Tensor, n: int, block: int = ITEM_BLOCK * 16) -> torch.Tensor:
    """Top-``n`` ids (B, n) of a full (B, N) score matrix (already -inf where never ranked),
    ``block`` columns at a time, with the blocked path's tie rule."""
    return running_topn(((lo, scores[:, lo:hi].T.contiguous()[:, None])
                         for lo, hi in edges(scores.shape[1], block, n)), n)
