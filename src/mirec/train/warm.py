"""Warm start (``mirec train --warm-start RUN``): a new run whose every parameter starts from a
finished run's best checkpoint, trained on that run's data set with new events appended
(docs/production.md, "Keeping a model fresh").

The parent's saved config is the base: its model and ``model_args`` (the architecture) stay,
training settings may change. Rows of the tables indexed by item are mapped by raw item id
(the items tables of both data sets), whatever dense ids the new data set gave them: a known
item keeps its row exactly, an item the new data set adds starts from the cold-start vector
serving gives new items (:func:`mirec.coldstart.category_mean_vectors` over the parent's rows;
unit length for a cosine retriever's table, as served), an item of the parent the new data set
lacks is dropped. A ranker's per-user rows are mapped by raw user id (a new user starts from
the parent's unknown-user row), its category rows by category name and its profile-code rows
through the users both data sets know; a category or code the parent never saw keeps this
run's own seeded initialisation.

Which parameters are indexed by item (user, category, profile code) is found by building the
model twice on the ``meta`` device, once with one id more, and comparing the shapes: no model
needs to declare its tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from mirec.checkpoint import best_checkpoint, legacy_settings, load_checkpoint
from mirec.coldstart import category_mean_vectors
from mirec.config import from_dict, load, to_dict
from mirec.data.dataset import Dataset, load_dataset
from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import sha256_file
from mirec.runs import RankRunConfig, RunConfig, model_config


@dataclass
class Parent:
    """A finished run's best checkpoint and its data set: where a warm start starts."""

    run: Path
    checkpoint: Path
    checksum: str  # SHA-256 of the checkpoint file (what `sha256sum best.pt` prints)
    ck: dict[str, Any]
    dataset: Dataset

    @property
    def ranking(self) -> bool:
        return "features" in self.ck

    @property
    def last_ts(self) -> int:
        """The last timestamp of the parent's data set: ``train.since=auto``."""
        return int(self.dataset.ts.max()) if len(self.dataset.ts) else 0

    def record(self, since: int) -> dict[str, Any]:
        """What results.json and the checkpoints say of the parent (docs/results.md)."""
        return {"run": str(self.run), "checkpoint": str(self.checkpoint), "checksum": self.checksum,
                "since": since}


def finished(run: Path) -> bool:
    """Whether ``run`` (or the multi-seed run holding this ``seed-*`` directory) wrote results.json,
    its last file."""
    return (run / "results.json").exists() or (run.name.startswith("seed-")
                                               and (run.parent / "results.json").exists())


def load_parent(run: str | Path, task: str) -> Parent:
    """The finished ``task`` run ``run`` (retrieval or ranking): its best checkpoint (the first
    seed's of a multi-seed run), checksum and data set (verified against the checkpoint)."""
    run = Path(run)
    path = best_checkpoint(run)
    if path is None or not finished(run):
        what = "no best.pt" if path is None else "no results.json (still training, or stopped: finish it " \
                                                  "with `mirec train --resume`)"
        raise MirecConfigError(f"--warm-start: {run} is not a finished `mirec train` run ({what})")
    ck = load_checkpoint(path)
    kind = "ranking" if "features" in ck else "retrieval"
    if kind != task:
        hint = "add --task ctr" if kind == "ranking" else "drop --task ctr"
        raise MirecConfigError(f"--warm-start: {run} is a {kind} run, this run is {task}; {hint}")
    data = Path(ck["data"])
    if not data.exists():
        raise MirecDataError(f"--warm-start: {run} was trained on {data}, which is gone; warm start "
                             f"maps the parent's rows by raw id through that data set's items")
    ds = load_dataset(data)
    if ds.checksum != ck["dataset_checksum"]:
        raise MirecDataError(f"--warm-start: {data} is not the data set {path} was trained on (checksum "
                             f"{ds.checksum[:12]} != {ck['dataset_checksum'][:12]}): it changed since")
    return Parent(run, path, sha256_file(path), ck, ds)


def warm_config(cls: type, parent: Parent, file: str | Path | None, overrides: list[str]) -> Any:
    """The config of a run warm-started from ``parent``: the parent's saved settings, then the
    TOML ``file`` and ``overrides``; the model and its architecture may not change (a
    MirecConfigError names the key). ``train.since=auto`` resolves to the parent data set's
    last timestamp."""
    saved = legacy_settings(cls, parent.ck["config"])
    for o in overrides:
        if o.startswith("model=") and o.split("=", 1)[1] != saved["model"]:
            raise MirecConfigError(f"--model: {parent.run} is a {saved['model']} run; a warm start keeps "
                                   f"its model (drop --model or train a new run)")
    cfg = load(cls, file, overrides, base=saved)
    was, now = to_dict(model_config(from_dict(cls, saved))), to_dict(model_config(cfg))
    if cfg.model != saved["model"]:
        raise MirecConfigError(f"model: {parent.run} is a {saved['model']} run; a warm start keeps its model")
    for name in was:
        if was[name] != now.get(name):
            key = "split.max_len" if name == "max_len" and cls is RunConfig else f"model_args.{name}"
            raise MirecConfigError(f"{key}: {parent.run} was trained with {name}={was[name]}, this run asks "
                                   f"for {now.get(name)}; a warm start keeps the parent's architecture "
                                   f"(drop the setting, or train a new run)")
    if cfg.train.since == "auto":
        cfg.train.since = parent.last_ts
    return cfg


def recorded(out: Path) -> dict[str, Any] | None:
    """The parent a run directory's last checkpoint names (``warm_start``), None for a run that
    was not warm-started or has no checkpoint."""
    lasts = [out / "last.pt"] if (out / "last.pt").exists() else sorted(out.glob("seed-*/last.pt"))
    return load_checkpoint(lasts[0]).get("warm_start") if lasts else None


def resumed_parent(out: Path, seeds: list[int], record: dict[str, Any], asked: str | Path | None,
                   task: str) -> Parent | None:
    """Resuming warm-started run ``out``: its own last.pt holds every parameter, so the parent is
    loaded only when one of ``seeds`` has not begun (no last.pt); ``asked`` (--warm-start, if
    given) must be the parent it names."""
    if asked is not None and Path(asked).resolve() != Path(record["run"]).resolve():
        raise MirecConfigError(f"--warm-start: {out} was warm-started from {record['run']}, not {asked}; "
                               f"resume without --warm-start")
    dirs = [out] if len(seeds) == 1 else [out / f"seed-{s}" for s in seeds]
    if all((d / "last.pt").exists() for d in dirs):
        return None
    parent = load_parent(record["run"], task)
    if parent.checksum != record["checksum"]:
        raise MirecDataError(f"--resume: {parent.checkpoint} changed since {out} was warm-started from it "
                             f"(checksum {parent.checksum[:12]} != {record['checksum'][:12]})")
    return parent


# ---------------------------------------------------------------- which parameters are tables


def indexed_dims(build: Callable[[Any], torch.nn.Module], base: Any, more: Any) -> dict[str, int]:
    """``{state-dict key: dim}`` of the tensors whose size along ``dim`` changes between the model
    built from ``base`` and from ``more`` (one id more): the tables indexed by that id."""
    def shapes(arg: Any) -> dict[str, torch.Size]:
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                return {k: v.shape for k, v in build(arg).state_dict().items()}
        except (RuntimeError, NotImplementedError):  # a model that computes while it builds
            return {k: v.shape for k, v in build(arg).state_dict().items()}

    a, b = shapes(base), shapes(more)
    out = {}
    for key, shape in a.items():
        diff = [d for d, (x, y) in enumerate(zip(shape, b[key])) if x != y]
        if len(diff) > 1:
            raise MirecConfigError(f"--warm-start: {key} is indexed by the same ids along several dims; "
                                   f"not supported")
        if diff:
            out[key] = diff[0]
    return out


@dataclass
class Axis:
    """One kind of id a model's tables are indexed by: ``src[j]`` is new row j's row in the parent
    (-1: none); ``fill(old_rows, new_rows, missing)`` gives the rows without one."""

    name: str
    dims: dict[str, int]
    src: Callable[[int], np.ndarray]  # the new table's size -> (size,) int64
    fill: Callable[[str, torch.Tensor, torch.Tensor, np.ndarray], torch.Tensor] | None = None


def raw_ids(frame: Any) -> list[str]:
    import polars as pl

    return frame["raw_id"].cast(pl.Utf8).to_list()


def id_map(old: list[str], new: list[str], offset: int = 0) -> np.ndarray:
    """(len(new),) int64: each new raw id's index in ``old`` plus ``offset``, -1 if absent."""
    lut = {r: i for i, r in enumerate(old)}
    return np.fromiter((lut[r] + offset if r in lut else -1 for r in new), dtype=np.int64, count=len(new))


def item_axis(parent: Parent, ds: Dataset, dims: dict[str, int], cosine_key: str | None,
              log: Callable[[str], None]) -> Axis:
    """Items by raw id (row 0 padding stays row 0); new items get the cold-start vector."""
    old_raw, new_raw = raw_ids(parent.dataset.items), raw_ids(ds.items)
    src = np.concatenate([[0], id_map(old_raw, new_raw, offset=1)])  # (N_new,)
    dropped = len(set(old_raw) - set(new_raw))
    if dropped:
        log(f"warm start: {dropped} of {parent.run}'s {len(old_raw)} items are not in {ds.path}; "
            f"their rows are dropped")
    new = np.flatnonzero(src < 0)
    if len(new):
        log(f"warm start: {len(new)} new items start from the category mean of the known items' vectors")
    indptr, cat_ids, names = parent.dataset.category_index()
    cats = ds.items["categories"].to_list()  # row i - 1 is item i

    def fill(key: str, old: torch.Tensor, rows: torch.Tensor, missing: np.ndarray) -> torch.Tensor:
        if not old.is_floating_point():
            return rows[missing]
        V = old.reshape(old.shape[0], -1).float()  # (N_old, D')
        cosine = key == cosine_key
        if cosine:  # the served vectors: unit length (padding row 0 stays 0)
            V = F.normalize(V, dim=-1)
        wanted = [cats[j - 1] or [] for j in missing]
        out = category_mean_vectors(V.numpy(), indptr, cat_ids, names, wanted, cosine)
        return torch.from_numpy(out).to(old.dtype).reshape(len(missing), *old.shape[1:])

    return Axis("item", dims, lambda size: _fit(src, size, "item"), fill)


def _fit(src: np.ndarray, size: int, what: str) -> np.ndarray:
    if len(src) != size:
        raise MirecConfigError(f"--warm-start: a table indexed by {what} has {size} rows, expected "
                               f"{len(src)}; not supported for this model")
    return src


def user_axis(parent: Parent, users: list[str], dims: dict[str, int], log: Callable[[str], None]) -> Axis:
    """Users by raw id; a new user (and the unknown-user rows after the users) starts from the
    parent's unknown-user row(s)."""
    old = list(parent.ck["user_raw_ids"])
    known = id_map(old, users)
    if (known < 0).any():
        log(f"warm start: {int((known < 0).sum())} new users start from the parent's unknown-user row")

    def src(size: int) -> np.ndarray:
        extra = size - len(users)  # rows after the users (the unknown user)
        out = np.concatenate([np.where(known >= 0, known, len(old)), len(old) + np.arange(extra)])
        return out.astype(np.int64)

    return Axis("user", dims, src)


def warm_state(model: torch.nn.Module, parent: Parent, axes: list[Axis]) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every tensor taken from the parent: tensors indexed by one of
    ``axes`` row-mapped, the others copied (their shapes must agree)."""
    old_state, new_state = parent.ck["model"], model.state_dict()
    out = {}
    for key, now in new_state.items():
        if key not in old_state:
            raise MirecConfigError(f"--warm-start: {parent.checkpoint} has no {key}; not the same "
                                   f"architecture")
        old = old_state[key]
        axis = next((a for a in axes if key in a.dims), None)
        if axis is None:
            if old.shape != now.shape:
                raise MirecConfigError(f"--warm-start: {key} is {tuple(old.shape)} in {parent.checkpoint}, "
                                       f"{tuple(now.shape)} here; not the same architecture")
            out[key] = old.clone()
            continue
        dim = axis.dims[key]
        o, n = old.movedim(dim, 0), now.detach().cpu().movedim(dim, 0)
        src = axis.src(n.shape[0])
        rows = n.clone()
        have = src >= 0
        rows[torch.from_numpy(np.flatnonzero(have))] = o[torch.from_numpy(src[have])].to(rows.dtype)
        missing = np.flatnonzero(~have)
        if len(missing) and axis.fill is not None:
            rows[torch.from_numpy(missing)] = axis.fill(key, o, n, missing)
        out[key] = rows.movedim(0, dim).contiguous()
    return out


def param_name(model: torch.nn.Module, tensor: torch.Tensor) -> str | None:
    return next((k for k, p in model.named_parameters() if p is tensor), None)


def warm_retriever(model: torch.nn.Module, cfg: RunConfig, parent: Parent, ds: Dataset,
                   log: Callable[[str], None] = lambda s: None) -> None:
    """Load ``parent`` into retriever ``model`` (built for ``ds``) in place: the optimiser keeps
    its references to the same parameters."""
    from mirec.models.layers import attribute_items
    from mirec.runs import build_model

    if attribute_items(model) is not None:
        raise MirecConfigError("--warm-start: not yet for a model with model_args.item_features on "
                               "(train it from scratch)")
    dims = indexed_dims(lambda n: build_model(cfg, n), ds.num_items, ds.num_items + 1)
    cosine = parent.ck["config"].get("train", {}).get("cosine", True)
    key = param_name(model, model.item_embeddings()) if cosine else None
    model.load_state_dict(warm_state(model, parent, [item_axis(parent, ds, dims, key, log)]))


def warm_ranker(model: torch.nn.Module, cfg: RankRunConfig, parent: Parent, data: Any, ds: Dataset,
                log: Callable[[str], None] = lambda s: None) -> None:
    """Load ``parent`` into ranker ``model`` (built for ``data``, the CTR examples of ``ds``) in
    place: items, users, categories and profile codes row-mapped (module docstring)."""
    import dataclasses

    from mirec.runs import build_ranker

    f = data.features
    build = lambda feats: build_ranker(cfg, feats)  # noqa: E731
    more_cats = f.item_categories.clone()
    more_cats[-1, 0] = f.num_categories  # one category id more
    axes = [item_axis(parent, ds, indexed_dims(build, f, dataclasses.replace(f, num_items=f.num_items + 1)),
                      None, log),
            user_axis(parent, list(data.user_raw_ids),
                      indexed_dims(build, f, dataclasses.replace(f, num_users=f.num_users + 1)), log)]
    old_names = parent.dataset.category_index()[2]
    cat_src = np.concatenate([[0], id_map(old_names, ds.category_index()[2], offset=1)])
    axes.append(Axis("category", indexed_dims(build, f, dataclasses.replace(f, item_categories=more_cats)),
                     lambda size: np.concatenate([cat_src, np.full(max(size - len(cat_src), 0), -1)])))
    for j, name in enumerate(data.profile_names):
        sizes = list(f.profile_sizes)
        sizes[j] += 1
        dims = indexed_dims(build, f, dataclasses.replace(f, profile_sizes=sizes))
        axes.append(Axis(f"profile.{name}", dims, profile_src(parent, data, j)))
    model.load_state_dict(warm_state(model, parent, axes))


def profile_src(parent: Parent, data: Any, j: int) -> Callable[[int], np.ndarray]:
    """Field ``j``'s codes mapped through the users both data sets know (a code is a function of
    the user's value, so a shared user's two codes name one value); 0 (unknown) stays 0."""
    name = data.profile_names[j]
    old_names = list(parent.ck.get("profile_names", []))

    def src(size: int) -> np.ndarray:
        out = np.full(size, -1, dtype=np.int64)
        out[0] = 0
        if name in old_names:
            old_codes = parent.ck["profile"][:, old_names.index(name)].numpy()
            shared = id_map(list(parent.ck["user_raw_ids"]), list(data.user_raw_ids))
            users = np.flatnonzero(shared >= 0)
            new_codes = data.profile[users, j]
            ok = new_codes < size
            out[new_codes[ok]] = old_codes[shared[users[ok]]]
        return out

    return src
