"""A bundle is validated as a whole, once, before it is served (issue 41).

Each case below is one defect a hostile or buggy producer can put in a bundle. The checksums of
the changed files are recomputed (:func:`resign`), so the defect reaches the checks behind the
checksums, as it would from a broken exporter. Every case is refused by ``load_bundle`` with one
:class:`MirecDataError` naming the file and the field; the same cases drive the reload-under-load
test of ``tests/test_serve_reliability.py``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import pytest
import torch

from mirec.errors import MirecDataError
from mirec.io import sha256_file
from mirec.serve.bundle import FILES, load_bundle
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.service import Live, open_recommender, reload_on_sighup
from tests import test_serve as shared
from tests.test_guarantees import refused

run, bundle_dir, bundle = shared.run, shared.bundle_dir, shared.bundle


# ---- making broken bundles -------------------------------------------------------------------


def resign(b: Path) -> None:
    """Record the current SHA-256 of each regular bundle file in manifest.json, where it lists a
    well-formed checksum: what an exporter that wrote broken files would do."""
    m = b / "manifest.json"
    try:
        manifest = json.loads(m.read_bytes()) if m.is_file() else None
    except ValueError:  # the case is a manifest that is not JSON
        return
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checksums"), dict):
        return
    for name in FILES:
        if (b / name).is_file() and len(str(manifest["checksums"].get(name))) == 64:
            manifest["checksums"][name] = sha256_file(b / name)
    m.write_text(json.dumps(manifest))


def manifest(**change: Any) -> Callable[[Path], None]:
    """Set manifest fields (a value of ``DROP`` removes the field)."""
    def edit(b: Path) -> None:
        m = json.loads((b / "manifest.json").read_text())
        for k, v in change.items():
            m.pop(k, None) if v is DROP else m.__setitem__(k, v)
        (b / "manifest.json").write_text(json.dumps(m))
    return edit


DROP = object()


def vectors(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def edit(b: Path) -> None:
        np.save(b / "item_vectors.npy", fn(np.load(b / "item_vectors.npy")), allow_pickle=True)
    return edit


def frame(name: str, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Path], None]:
    def edit(b: Path) -> None:
        fn(pl.read_parquet(b / name)).write_parquet(b / name)
    return edit


def tower(fn: Callable[[dict], dict]) -> Callable[[Path], None]:
    def edit(b: Path) -> None:
        buf = io.BytesIO()
        torch.save(fn(torch.load(b / "tower.pt", weights_only=True)), buf)
        (b / "tower.pt").write_bytes(buf.getvalue())
    return edit


def write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda b: (b / name).write_bytes(data)


def fifo(name: str) -> Callable[[Path], None]:
    def edit(b: Path) -> None:
        (b / name).unlink()
        os.mkfifo(b / name)
    return edit


def directory(name: str) -> Callable[[Path], None]:
    def edit(b: Path) -> None:
        (b / name).unlink()
        (b / name).mkdir()
    return edit


def both(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(b: Path) -> None:
        for e in edits:
            e(b)
    return edit


def object_array(v: np.ndarray) -> np.ndarray:
    out = np.empty(v.shape[0], dtype=object)
    out[:] = [row.tolist() for row in v]
    return out


def extra_row(v: np.ndarray) -> np.ndarray:
    return np.concatenate([v, v[-1:]])


def nan_at(v: np.ndarray) -> np.ndarray:
    v = v.copy()
    v[5, 3] = np.nan
    return v


def inf_in(state: dict) -> dict:
    name = next(k for k, t in state.items() if t.is_floating_point() and t.numel() > 1)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("inf")
    return state


def history_of(users: pl.DataFrame, hist: list[int]) -> pl.DataFrame:
    return users.with_columns(pl.Series("history", [hist] + users["history"].to_list()[1:],
                                        dtype=pl.List(pl.Int32)))


def npy_header_only(b: Path) -> None:
    """An .npy header of the right shape and dtype, with no data after it."""
    with open(b / "item_vectors.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (73, 16)})


# case -> (what breaks the bundle, the words of the refusal: file and field)
BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "manifest-a-list": (write("manifest.json", b"[1, 2, 3]"), "manifest.json: expected a JSON object"),
    "manifest-not-json": (write("manifest.json", b"{\"format\": "), "manifest.json: invalid JSON"),
    "manifest-not-utf8": (write("manifest.json", b"{\"format\": \"\xff\"}"), "manifest.json: invalid JSON"),
    "no-checksums": (manifest(checksums=DROP), "manifest.json: field 'checksums': missing"),
    "checksums-a-list": (manifest(checksums=["a"]), "manifest.json: field 'checksums': expected an object"),
    "checksum-not-hex": (manifest(checksums={n: "xyz" for n in FILES}),
                         "manifest.json: field 'checksums': expected an object"),
    "checksum-of-a-file-missing": (manifest(checksums={"tower.pt": "0" * 64}),
                                   "manifest.json: field 'checksums': no checksum of item_vectors.npy"),
    "num-items-missing": (manifest(num_items=DROP), "manifest.json: field 'num_items': missing"),
    "num-items-negative": (manifest(num_items=-3), "manifest.json: field 'num_items': expected an integer >= 2"),
    "num-items-a-string": (manifest(num_items="73"), "manifest.json: field 'num_items': expected an integer"),
    "dim-zero": (manifest(dim=0), "manifest.json: field 'dim': expected an integer >= 1"),
    "format-version-true": (manifest(format_version=True), "manifest.json: field 'format_version'"),
    "config-a-list": (manifest(config=[1]), "manifest.json: field 'config': expected an object"),
    "config-unknown-setting": (manifest(config={"model": "comirec-sa", "colour": 1}),
                               "manifest.json: field 'config': colour: unknown setting"),
    "model-not-the-configs": (manifest(model="mind"), "manifest.json: field 'model': 'mind' is not the config's"),
    "no-versions": (manifest(versions=DROP), "manifest.json: field 'versions': missing"),
    "object-array-vectors": (vectors(object_array), "item_vectors.npy: dtype object is not float32"),
    "float64-vectors": (vectors(lambda v: v.astype(np.float64)), "item_vectors.npy: dtype float64"),
    "vectors-not-npy": (write("item_vectors.npy", b"garbage"), "item_vectors.npy: not a NumPy .npy array"),
    "vectors-truncated": (npy_header_only, "item_vectors.npy: holds 0 bytes of data"),
    "vector-width-not-dim": (vectors(lambda v: v[:, :8].copy()),
                             "item_vectors.npy: shape (73, 8) is not (num_items, dim) = (73, 16)"),
    "vector-rows-not-num-items": (vectors(extra_row), "item_vectors.npy: shape (74, 16) is not"),
    "non-finite-vector": (vectors(nan_at), "item_vectors.npy: row 5 holds a non-finite value"),
    "dim-not-the-models": (both(vectors(lambda v: v[:, :8].copy()), manifest(dim=8)),
                           "tower.pt: the model's item table is (73, 16), not (num_items, dim) = (73, 8)"),
    "num-items-not-items-parquet": (both(vectors(extra_row), manifest(num_items=74)),
                                    "items.parquet: 72 rows, not num_items - 1 = 73"),
    "items-garbage": (write("items.parquet", b"PAR1 not parquet at all PAR1"),
                      "items.parquet: not a readable Parquet file"),
    "items-no-categories": (frame("items.parquet", lambda f: f.drop("categories")),
                            "items.parquet: column 'categories': missing"),
    "items-misnumbered": (frame("items.parquet", lambda f: f.with_columns(pl.col("item") + 1)),
                          "items.parquet: column 'item': items are not numbered 1..72"),
    "items-raw-id-twice": (frame("items.parquet", lambda f: f.with_columns(pl.lit("x").alias("raw_id"))),
                           "items.parquet: column 'raw_id': 'x' appears more than once"),
    "users-garbage": (write("users.parquet", b"garbage"), "users.parquet: not a readable Parquet file"),
    "users-history-of-strings": (frame("users.parquet", lambda f: f.with_columns(
        pl.col("history").cast(pl.List(pl.String)))), "users.parquet: column 'history': type"),
    "users-history-out-of-range": (frame("users.parquet", lambda f: history_of(f, [1, 999])),
                                   "users.parquet: column 'history': item id 999 is not in 1..72"),
    "users-history-zero": (frame("users.parquet", lambda f: history_of(f, [0, 2])),
                           "users.parquet: column 'history': item id 0 is not in 1..72"),
    "tower-not-a-state-dict": (tower(lambda s: {"x": torch.zeros(2)}), "tower.pt: does not fit model 'comirec-sa'"),
    "tower-not-torch": (write("tower.pt", b"garbage"), "tower.pt: does not fit model"),
    "non-finite-tower": (tower(inf_in), "tower.pt: tensor"),
    "items-a-directory": (directory("items.parquet"), "items.parquet: not a regular file"),
    "fifo-vectors": (fifo("item_vectors.npy"), "item_vectors.npy: not a regular file"),
    "fifo-manifest": (fifo("manifest.json"), "manifest.json: not a regular file"),
}


def broken(bundle_dir: Path, root: Path, case: str) -> Path:
    """A copy of the bundle with the defect ``case`` of :data:`BREAKS`, checksums recomputed."""
    b = root / case
    shutil.copytree(bundle_dir, b)
    BREAKS[case][0](b)
    resign(b)
    return b


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a thread: its result or exception, or a failure if it does not return in
    time (a load blocked on a FIFO fails the test instead of hanging it)."""
    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001  handed back below
            out["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (blocked?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- load_bundle -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_load_bundle_refuses_with_one_line_naming_file_and_field(bundle_dir, tmp_path, case):
    b = broken(bundle_dir, tmp_path, case)
    with pytest.raises(MirecDataError) as e:
        within(20, lambda: load_bundle(b))
    msg = str(e.value)
    assert BREAKS[case][1] in msg and str(b) in msg and "\n" not in msg, msg


def test_the_exported_bundle_passes_and_loads_the_same(bundle_dir, bundle):
    b = load_bundle(bundle_dir)
    assert b.version == bundle.version and b.item_vectors.flags.c_contiguous
    assert np.array_equal(b.item_vectors, bundle.item_vectors)
    assert b.user_histories.flat.tolist() == bundle.user_histories.flat.tolist()


def test_a_saved_index_of_another_bundle_or_a_fifo_is_refused(bundle_dir, tmp_path):
    b = shutil.copytree(bundle_dir, tmp_path / "b")
    vectors = load_bundle(b).item_vectors
    ItemIndex.build(vectors[:-1], IndexConfig(kind="exact")).save(b / "index-exact.faiss")  # 1 item short
    manifest(checksums={**json.loads((b / "manifest.json").read_text())["checksums"],
                        "index-exact.faiss": sha256_file(b / "index-exact.faiss")})(b)
    with pytest.raises(MirecDataError, match=r"index-exact\.faiss: holds 71 items of dim 16, not the "
                                             r"bundle's 72 of dim 16; rebuild it"):
        open_recommender(b, "exact")
    fifo("index-exact.faiss")(b)
    with pytest.raises(MirecDataError, match=r"index-exact\.faiss: not a regular file"):
        within(20, lambda: open_recommender(b, "exact"))


# ---- the CLI, SIGHUP and the reload deadline -------------------------------------------------


@pytest.mark.parametrize("case", ["manifest-a-list", "num-items-negative", "items-garbage",
                                  "vector-width-not-dim", "fifo-vectors"])
def test_every_command_that_opens_a_broken_bundle_prints_one_line_and_exits_2(
        capsys, bundle_dir, bundle, tmp_path, case):
    b = broken(bundle_dir, tmp_path, case)
    user = sorted(bundle.user_histories)[0]
    for args in (["recommend", b, "--user", user],
                 ["recommend", b, "--all-users", "--out", tmp_path / "all.parquet"],
                 ["index", "build", b],
                 ["report", "interests", "--bundle", b, "--user", user, "--out", tmp_path / "i.png"],
                 ["serve", b, "--port", "1", "--store", tmp_path / "ev.sqlite"]):
        within(60, lambda args=args: refused(capsys, *args, says=BREAKS[case][1]))
    assert not (tmp_path / "all.parquet").exists() and not (tmp_path / "ev.sqlite").exists()


def test_sighup_to_a_broken_bundle_logs_why_and_keeps_the_old_one(bundle_dir, tmp_path, caplog):
    b = shutil.copytree(bundle_dir, tmp_path / "b")
    live = Live(open_recommender(b, "exact"))
    before = live.rec
    manifest(num_items=DROP)(b)
    old = signal.getsignal(signal.SIGHUP)
    try:
        with caplog.at_level(logging.ERROR, logger="mirec"):
            reload_on_sighup(live)
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 20
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGHUP, old)
    [record] = caplog.records
    assert "field 'num_items': missing" in record.getMessage() and live.rec is before


def test_a_reload_that_never_ends_is_refused_after_the_deadline_and_frees_the_lock(bundle_dir, tmp_path):
    """Bundle files cannot block (they must be regular files); an operator's file can: an
    unavailable-items file replaced by a FIFO blocks the load until the deadline refuses it."""
    unavailable = tmp_path / "unavailable.txt"
    unavailable.write_text("")
    live = Live(open_recommender(bundle_dir, "exact", unavailable=unavailable), reload_timeout=3)
    before = live.rec
    unavailable.unlink()
    os.mkfifo(unavailable)
    t = time.monotonic()
    with pytest.raises(MirecDataError, match=r"loading took over 3 s .* reload abandoned, still serving"):
        live.reload()
    assert 3 <= time.monotonic() - t < 15 and live.rec is before
    assert live.lock.acquire(blocking=False)  # the lock is free again
    live.lock.release()
    with open(unavailable, "w"):  # lets the abandoned load read an empty file and end
        pass
    unavailable.unlink()
    unavailable.write_text("")
    assert live.reload() is live.rec is not before
