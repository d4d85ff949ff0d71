"""Catalogue changes after training: unavailable items and new (cold-start) items.

``--unavailable FILE``: one raw item id per line (blank lines and ``#`` comments skipped), for
example items out of stock. They are never recommended; ids not in the catalogue are ignored.

``--new-items FILE``: items added after training, CSV (header ``item_id,title,categories``,
categories separated by ``|``) or JSONL (``{"item_id": ..., "title": ..., "categories": [...]}``),
read by :func:`mirec.data.new_items.read_new_items` (``mirec data append`` reads it too). A
new item has no trained vector; it gets the mean of the item vectors of every catalogue item
that shares one of its categories (a model with ``model_args.item_features`` on: its own vector
from the categories it knows, :func:`cold_vectors`) (re-normalised to unit length when the model scores by
cosine). An item none of whose categories is known gets the mean of all item vectors. The
tower never sees a new item (it has no embedding row): histories keep them for exclusion only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from mirec.coldstart import category_mean_vectors
from mirec.data.dataset import category_csr
from mirec.data.new_items import read_new_items
from mirec.data.text import lines
from mirec.models.layers import attribute_items
from mirec.serve.bundle import Bundle


def read_unavailable(path: str | Path, bundle: Bundle) -> np.ndarray:
    """(N,) bool mask of the items listed in ``path``."""
    mask = np.zeros(bundle.num_items, dtype=bool)
    for _, line in lines(path):  # UTF-8, no BOM, CRLF or LF (mirec.data.text)
        raw = line.strip()
        if raw and not raw.startswith("#") and raw in bundle.item_ids:
            mask[bundle.item_ids[raw]] = True
    return mask


def cold_vectors(bundle: Bundle, categories: list[list[str]],
                 pool: np.ndarray | None = None) -> np.ndarray:
    """(len(categories), D) vectors: the mean of the vectors of the catalogue items sharing a
    category with each new item (all items when none is shared), unit length under cosine
    (:func:`mirec.coldstart.category_mean_vectors`). ``pool``: (N,) bool, the items that may
    contribute (default: every real item). A model with item features
    (``model_args.item_features``) gives an item with a category it knows its own vector instead:
    the mean trained item-id embedding plus the pooled embeddings of its known categories
    (:meth:`mirec.models.layers.AttributeItems.cold_rows`), the representation its trained
    items have."""
    out = category_mean_vectors(bundle.item_vectors, bundle.category_indptr, bundle.category_ids,
                                 bundle.category_names, categories, bundle.cosine, pool)
    table = attribute_items(bundle.model)
    if table is not None:
        known = [any(c in table.names for c in cats) for cats in categories]
        rows = table.cold_rows(categories).cpu().numpy()  # (M, D)
        if bundle.cosine:
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        out[known] = rows[known]
    return out


def add_new_items(bundle: Bundle, path: str | Path) -> Bundle:
    """The bundle with the items of ``path`` appended (dense ids N, N+1, ...), marked new."""
    new = read_new_items(path, bundle.item_ids)  # a known or repeated id: an error
    if not new:
        return bundle
    vectors = np.ascontiguousarray(np.concatenate(
        [bundle.item_vectors, cold_vectors(bundle, [c for _, _, c in new])]), dtype=np.float32)
    N = bundle.num_items
    items = pl.DataFrame({
        "item": np.arange(1, N + len(new), dtype=np.int64),
        "raw_id": bundle.item_raw[1:] + [r for r, _, _ in new],
        "title": bundle.item_title[1:] + [t for _, t, _ in new],
        "categories": pl.Series([list(c) for c in bundle.item_categories[1:]] + [c for _, _, c in new],
                                dtype=pl.List(pl.String))})
    indptr, cat_ids, names = category_csr(items)
    raw = bundle.item_raw + [r for r, _, _ in new]
    return replace(bundle, item_vectors=vectors, item_ids={r: i for i, r in enumerate(raw) if i},
                   category_indptr=indptr, category_ids=cat_ids, category_names=names, item_raw=raw,
                   item_title=bundle.item_title + [t for _, t, _ in new],
                   item_categories=bundle.item_categories + [c for _, _, c in new], new_from=N)
