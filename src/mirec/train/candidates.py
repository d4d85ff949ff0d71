"""Ranker training data from a retrieval run's own candidates (``--candidates RUN``).

The ranker is asked at serving time which of the retrieved candidates the user takes next, so
it is trained on that question (YouTube DNN's ranking on impressions; CoRR, WWW 2023; RankFlow,
SIGIR 2022). Per example, a user state (a history) and:

    the retriever on the last split.max_len items -> K interests -> top-m per live interest,
        union, minus the whole history, f = max over live interests (as serving: exact
        index; with cand.top, only the top cand.top by f, as ServeConfig.rank_candidates)
    positive   the real next item
    negatives  cand.negatives: a share cand.random_share uniform over the catalogue (never the
               positive or a history item), the rest sampled from the candidates without
               replacement with P ~ exp(f / cand.temperature): hard, but not only the exact top,
               whose items are often unlabelled positives
    features   mirec.data.cand_features for each, the same function serving calls

Examples follow the retrieval run's split (its seed), with the protocol's leakage rules:
training users give their last ``cand.examples_per_user`` cut points (TRAIN); validation users
their history part with the first target as the positive (VALID, for early stopping); test
users nothing. The item statistics come from the window the retriever may see (training users'
events, held-out users' history parts). :func:`check_leakage` verifies all of it.

Shapes: ``B`` user states, ``K`` interests, ``D`` dim, ``N`` item ids, ``C`` candidates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mirec.data import cand_features
from mirec.data.cand_features import ItemWindow
from mirec.data.ctr import TRAIN, VALID, CTRData, RankFeatures, category_table, profile_codes
from mirec.data.dataset import Dataset
from mirec.data.split import Split, split_users, training_examples, windows
from mirec.errors import MirecConfigError, MirecDataError
from mirec.models.base import item_table, user_interests
from mirec.runs import CandConfig, LoadedRun, RankRunConfig, load_run, seed_dirs


def retrieval_seed_run(run: str | Path, seed: int, data: Dataset | None = None) -> LoadedRun:
    """The retrieval run whose candidates the ranker of ``seed`` learns from: ``RUN/seed-<s>`` of
    a multi-seed run (the same split), or a single run itself."""
    dirs = seed_dirs(run)
    if dirs == [Path(run)]:
        return load_run(run, data)
    want = Path(run) / f"seed-{seed}"
    if want not in dirs:
        raise MirecConfigError(f"--candidates: {run} has no seed-{seed} (it has "
                               f"{', '.join(d.name for d in dirs)}); give the same --seeds")
    return load_run(want, data)


def window_mask(ds: Dataset, split: Split) -> np.ndarray:
    """(E,) bool: the events the retriever may see (False on held-out users' targets)."""
    keep = np.ones(len(ds.item), dtype=bool)
    for users in (split.valid, split.test):
        lens = users.end - users.cut
        keep[np.repeat(users.cut - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())] = False
    return keep


@dataclass
class Searched:
    """The retriever's candidates for one user state, as serving computes them."""

    cand: np.ndarray  # (C,) item ids, ascending
    f: np.ndarray  # (C,) max over live interests
    k: np.ndarray  # (C,) the interest attaining it
    sims: np.ndarray  # (K_live, N) every item's score under each live interest
    live: np.ndarray  # (K,) bool

    def top(self, r: int) -> Searched:
        """The top ``r`` candidates by f, as the server hands them to the ranker
        (``ServeConfig.rank_candidates``; ties by position, ids kept ascending)."""
        if r <= 0 or len(self.cand) <= r:
            return self
        keep = cand_features.top_positions(self.f, r)
        return dataclasses.replace(self, cand=self.cand[keep], f=self.f[keep], k=self.k[keep])


class CandidateSearch:
    """Batched exact per-interest search over a retrieval run's item table."""

    def __init__(self, run: LoadedRun, m: int) -> None:
        self.model, self.cfg = run.model, run.config
        self.items = item_table(run.model, self.cfg.train.cosine).float()  # (N, D)
        self.m = min(m, self.items.shape[0] - 1)

    @torch.no_grad()
    def search(self, item: np.ndarray, start: np.ndarray, stop: np.ndarray) -> list[Searched]:
        """Candidates of the histories ``item[start[b]:stop[b]]``; each history is excluded."""
        hist, mask = windows(item, start, stop, self.cfg.split.max_len)  # (B, L)
        h, msk = torch.from_numpy(hist), torch.from_numpy(mask)
        out = user_interests(self.model, h, msk, self.cfg.train.cosine)
        sims = torch.einsum("bkd,nd->bkn", out.vectors.float(), self.items).numpy()  # (B, K, N)
        sims[:, :, 0] = -np.inf  # padding is never retrieved
        live = out.mask.numpy()
        found = []
        for b in range(len(start)):
            s = sims[b, live[b]]  # (K_live, N)
            top = np.argpartition(-s, self.m - 1, axis=1)[:, :self.m]  # (K_live, m)
            cand = np.setdiff1d(np.unique(top), item[start[b]:stop[b]])  # (C,) minus the history
            best = s[:, cand].argmax(0)
            found.append(Searched(cand, s[best, cand], np.flatnonzero(live[b])[best], s, live[b]))
        return found


def sample_negatives(got: Searched, pos: np.ndarray, hist: np.ndarray, num_items: int, cc: CandConfig,
                     rng: np.random.Generator) -> np.ndarray:
    """``cc.negatives`` item ids per positive of one state (see the module docstring)."""
    want = cc.negatives * len(pos)
    n_rand = int(round(want * cc.random_share))
    other = ~np.isin(got.cand, pos)
    pool = got.cand[other]
    n_cand = min(want - n_rand, len(pool))
    keys = got.f[other] / cc.temperature + rng.gumbel(size=len(pool))  # Gumbel top-k
    hard = pool[np.argpartition(-keys, n_cand - 1)[:n_cand]] if n_cand else pool[:0]
    banned = np.concatenate([hist, pos, hard])
    rand = rng.integers(1, num_items, size=4 * (want - n_cand) + 8)
    rand = rand[~np.isin(rand, banned)]
    _, first = np.unique(rand, return_index=True)
    return np.concatenate([hard, rand[np.sort(first)][:want - n_cand]]).astype(np.int64)


def example_states(ds: Dataset, split: Split, per_user: int,
                   states: str = "valid") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, cut, part) of every example state: TRAIN, the last ``per_user`` cut points t
    (history item[start:t], positive item[t]) of training users' sequences and/or validation
    users' history parts (``states``); VALID, a validation user's whole history part."""
    v = split.valid
    ends = np.zeros(ds.num_users, dtype=np.int64)  # one past the last event a positive may be
    ends[split.train_users] = ds.offsets[split.train_users + 1]
    ends[v.users] = v.cut
    users = {"train": split.train_users, "valid": v.users,
             "both": np.concatenate([split.train_users, v.users])}[states]
    # (start, end) of each user interleaved: training_examples reads them as offsets[u], offsets[u + 1]
    start, pos = training_examples(np.c_[ds.offsets[users], ends[users]].reshape(-1),
                                   np.arange(0, 2 * len(users), 2))
    u = ds.user[pos].astype(np.int64)
    if per_user:
        from_end = ends[u] - 1 - pos  # 0 = the last event the user may contribute
        u, pos = u[from_end < per_user], pos[from_end < per_user]
    users = np.concatenate([u, v.users.astype(np.int64)])
    cuts = np.concatenate([pos, v.cut])
    part = np.concatenate([np.full(len(u), TRAIN, np.int8), np.full(len(v), VALID, np.int8)])
    return users, cuts, part


def build_candidate_data(cfg: RankRunConfig, run: LoadedRun, batch: int = 256) -> CTRData:
    """The ranker's examples from ``run``'s candidates under ``run``'s split (module docstring)."""
    ds, cc = run.dataset, cfg.cand
    split = split_users(ds, run.config.split)
    keep = window_mask(ds, split)
    window = ItemWindow.of(ds.user[keep], ds.item[keep], ds.ts[keep], ds.num_items)
    cat_indptr, cat_ids, _ = ds.category_index()
    search = CandidateSearch(run, cc.m)
    users, cuts, parts = example_states(ds, split, cc.examples_per_user, cc.states)
    valid_end = dict(zip(split.valid.users.tolist(), split.valid.cut.tolist()))
    rng = np.random.default_rng(cfg.train.seed)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "item", "label", "part", "stop", "source",
                                                                 "dense")}
    for s in range(0, len(users), batch):
        u, t = users[s:s + batch], cuts[s:s + batch]
        start = ds.offsets[u]
        for b, got in enumerate(search.search(ds.item, start, t)):
            got = got.top(cc.top)  # cand.top: only the top by f (0: the whole union)
            uu, tt = int(u[b]), int(t[b])
            hist = ds.item[start[b]:tt].astype(np.int64)
            own_stop = valid_end.get(uu, int(ds.offsets[uu + 1]))  # the user's events in the window
            # positives: the next cand.horizon items (a VALID state's come from its targets)
            lim = own_stop if parts[s + b] == TRAIN else int(ds.offsets[uu + 1])
            at = np.arange(tt, min(tt + cc.horizon, lim))
            pos, first = np.unique(ds.item[at], return_index=True)
            at = np.sort(at[first])
            if cc.positives == "candidates":  # only what the served ranker could be asked about
                at = at[np.isin(ds.item[at], got.cand)]
                if not len(at):
                    continue
            pos = ds.item[at].astype(np.int64)
            neg = sample_negatives(got, pos, hist, ds.num_items, cc, rng)
            items = np.concatenate([pos, neg])
            f_all = got.sims[:, items]  # (K_live, X)
            K = len(got.live)
            dense = cand_features.features(items, f_all.max(0), np.flatnonzero(got.live)[f_all.argmax(0)],
                                           got.f, got.k, K, hist, ds.item[start[b]:own_stop], uu, window,
                                           cat_indptr, cat_ids)
            X = len(items)
            cols["user"].append(np.full(X, uu))
            cols["item"].append(items)
            cols["label"].append((np.arange(X) < len(pos)).astype(np.float32))
            cols["part"].append(np.full(X, parts[s + b], np.int8))
            cols["stop"].append(np.full(X, tt))
            cols["source"].append(np.r_[at, np.full(len(neg), tt)])
            cols["dense"].append(dense)
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    train_dense = cat["dense"][cat["part"] == TRAIN]
    std = train_dense.std(0)
    codes, names, sizes = profile_codes(ds.users)
    features = RankFeatures(num_items=ds.num_items, num_users=ds.num_users, profile_sizes=sizes,
                            item_categories=category_table(ds), num_dense=train_dense.shape[1],
                            dense_mean=torch.from_numpy(train_dense.mean(0)),
                            dense_std=torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)),
                            window=window.to_dict())
    user = cat["user"].astype(np.int64)
    return CTRData(user=user, item=cat["item"], label=cat["label"], part=cat["part"],
                   hist_start=ds.offsets[user].astype(np.int64), hist_stop=cat["stop"].astype(np.int64),
                   pos_item=ds.item.astype(np.int32), pos_offsets=ds.offsets.astype(np.int64),
                   profile=codes, profile_names=names,
                   user_raw_ids=[str(x) for x in ds.users["raw_id"].to_list()], features=features,
                   max_len=cfg.ctr.max_len, sampled_negatives=cc.negatives, dense=cat["dense"],
                   source=cat["source"].astype(np.int64))


def check_leakage(data: CTRData, ds: Dataset, split: Split) -> None:
    """Refuse ranker data that breaks the protocol's leakage rules: an example of a test user; a
    training example whose user is not a training user or whose history reaches its positive; a
    validation example whose history reaches past the user's history part; item statistics
    that count a held-out target."""
    def bad(what: str, mask: np.ndarray) -> None:
        if mask.any():
            j = int(np.flatnonzero(mask)[0])
            raise MirecDataError(f"ranker data: {what} (example {j}, user {int(data.user[j])})")

    bad("a test user's example", np.isin(data.user, split.test.users))
    own_start = ds.offsets[data.user]
    bad("history outside the user's own events", data.hist_start != own_start)
    tr = data.part == TRAIN
    known = np.r_[split.train_users, split.valid.users]
    bad("a training example of a test user", tr & ~np.isin(data.user, known))
    bad("a training example whose history reaches its positive", tr & (data.hist_stop > data.source))
    cut = ds.offsets[1:].copy()  # one past the last event a user's examples may read
    cut[split.valid.users] = split.valid.cut
    bad("a training example whose positive is a held-out target", tr & (data.source >= cut[data.user]))
    va = data.part == VALID
    bad("a validation example outside a validation user", va & ~np.isin(data.user, split.valid.users))
    bad("a validation example whose history reaches a target", va & (data.hist_stop > cut[data.user]))
    counts = np.bincount(ds.item[window_mask(ds, split)], minlength=ds.num_items)
    window = data.features.window
    if window is not None and not np.array_equal(np.asarray(window["count"]), counts):
        raise MirecDataError("ranker data: the item statistics count events outside the training "
                             "window (a held-out target)")


def candidate_data(cfg: RankRunConfig, seed: int, data: Dataset | None = None) -> tuple[CTRData, Dataset]:
    """The checked candidate data of the ranker of ``seed`` (``cfg.cand.run``'s seed-<s>)."""
    run = retrieval_seed_run(cfg.cand.run, seed, data)
    protocol = run.config.split.protocol
    if protocol != "comirec":  # its users are train, validation or test users, never several
        raise MirecConfigError(f"--candidates: {cfg.cand.run} was trained under split.protocol={protocol}; "
                               f"the ranker's candidate data needs the comirec split (users in one "
                               f"part each)")
    c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    out = build_candidate_data(c, run)
    check_leakage(out, run.dataset, split_users(run.dataset, run.config.split))
    return out, run.dataset
