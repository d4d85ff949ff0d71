"""One refresh from live traffic: ``mirec refresh`` (docs/production.md, "One refresh command").

    append   DATA + the event store's new events        -> DIR/data    (mirec.api.append)
    train    a warm start from RUN on DIR/data           -> DIR/run     (mirec.api.fit)
    export   the new run's serving bundle                -> DIR/bundle  (mirec.api.export)
    index    build, save and measure the bundle's index  -> DIR/bundle  (refused below the recall target)
    reload   POST SERVE/admin/reload {"bundle": DIR/bundle}, every worker checked   (with --serve)

Each step writes through its own atomic writer (a data set and a bundle appear whole; training
writes atomic checkpoints and resumes from them). ``DIR/refresh.json``, replaced atomically
after each step, records the command (RUN, DATA, the store, the settings) and every finished
step with its output's checksum, its seconds, the process's peak RSS so far and what the summary
reports. A rerun of the same
command verifies the finished steps' outputs and runs the others: a killed refresh (``kill -9``
at any moment) finishes where it stopped, a finished one is a no-op answering the same summary.
Nothing is served before the reload step, and nothing outside DIR is written, so a refresh that
fails or is killed leaves the served bundle as it was. A failure names its step. One refresh
runs in a directory at a time (``DIR/.refresh.lock``).

``MIREC_REFRESH_HOLD=STEP:before|after`` (tests only) makes a refresh stop and wait at that
point, after its line on stderr, for a test to kill it there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from mirec import __version__
from mirec.checkpoint import best_checkpoint
from mirec.config import load
from mirec.errors import MirecConfigError, MirecDataError, MirecError
from mirec.io import atomic_write_json, check_output_dir, sha256_file

STEPS = ("append", "train", "export", "index", "reload")
STATE = "refresh.json"
LOCK = ".refresh.lock"
FORMAT = "mirec.refresh"
FORMAT_VERSION = 1
IDENTITY = ("run", "data", "events", "settings", "index")  # what makes two refreshes the same
RELOAD_WAIT_S = 1860.0  # a server's own reload deadline (30 min) and some
HOLD = "MIREC_REFRESH_HOLD"
Done = tuple[dict[str, str], dict[str, Any]]  # a step's {output under DIR: checksum}, its summary part


class RefreshError(RuntimeError):
    """A step failed for a reason that is not a user's mistake (exit 1, with the trace)."""


def refresh(run: str | Path, events: str | Path, data: str | Path, out: str | Path, *,
            serve: str | None = None, token: str | None = None, settings: list[str] | None = None,
            index: str = "auto", hnsw_above: int = 50_000, min_recall: float | None = None,
            queries: int = 200, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run (or finish) the refresh of ``run`` on ``data`` plus the new events of the store
    ``events`` into ``out`` (see the module docstring); returns the summary.

    ``settings``: ``--set`` keys, for the warm-started run (``train.*``, ...; ``train.since``
    defaults to DATA's last timestamp) or, as ``index.*``, for the index
    (:class:`mirec.serve.index.IndexConfig`; ``index`` and ``hnsw_above`` are its ``kind`` and
    ``hnsw_above``). ``min_recall``: the index's recall@50 per recommendation against exact must
    reach it (default ``index.target_recall``, 0.95; an IVF index's nprobe is tuned to it).
    ``serve`` and ``token``: the server to reload and its bearer token."""
    cmd = _command(run, events, data, settings or [], index, hnsw_above)
    index_cfg = _index_config(cmd["index"], min_recall)
    min_recall = index_cfg.target_recall
    if serve is not None:
        _check_serve(serve, token)
    if queries < 1:
        raise MirecConfigError(f"--queries: must be >= 1, got {queries}")
    out = Path(out).absolute()
    with _alone(out, cmd):
        state = _open_state(out, cmd)
        for step in STEPS:
            if step in state["steps"]:
                _verify(out, state, step)
        work = {
            "append": lambda: _append(cmd, out),
            "train": lambda: _train(cmd, out, log),
            "export": lambda: _export(out),
            "index": lambda: _index(out, index_cfg, min_recall, queries),
            "reload": lambda: _reload(out, serve, token),
        }
        for step in STEPS:
            if step in state["steps"] or (step == "reload" and serve is None):
                continue
            _step(out, state, step, work[step], log)
        return summary(out, state)


def _step(out: Path, state: dict[str, Any], step: str, work: Callable[[], Done],
          log: Callable[[str], None]) -> None:
    """Run one step and record it in the state file; a failure names the step."""
    log(f"refresh: step '{step}' ...")
    _hold(step, "before")
    t0 = time.perf_counter()
    try:
        outputs, result = work()
    except MirecError as e:
        raise _named(e, step) from None
    except Exception as e:  # noqa: BLE001  named, and the cause kept for the trace
        raise RefreshError(f"refresh: step '{step}' failed: {type(e).__name__}: {e}") from e
    _hold(step, "after")
    state["steps"][step] = {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mib": peak_rss_mib(),
                            "outputs": outputs, "result": result}
    atomic_write_json(out / STATE, state)
    log(f"refresh: step '{step}' done in {state['steps'][step]['seconds']:.1f} s")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on
    macOS): recorded at the end of each step, so that a step that raised it shows."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / 2**20 if sys.platform == "darwin" else rss / 2**10, 1)


@contextlib.contextmanager
def _alone(out: Path, cmd: dict[str, Any]) -> Iterator[None]:
    """``out`` checked against the --out rules, then held by this process alone (an exclusive
    ``flock`` on ``out/.refresh.lock``, released when the process ends, however): a second
    refresh started in the same directory meanwhile (cron runs overlapping) is refused."""
    check_output_dir(out, may_hold=is_refresh_dir)
    for name in ("run", "data"):
        where = Path(cmd[name]).resolve()
        if out.resolve() == where or where in out.resolve().parents:
            raise MirecConfigError(f"--out {out}: is --{name} or inside it; give a new directory")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MirecConfigError(f"--out {out}: another `mirec refresh` is running there; let it "
                                   f"finish (a rerun then reports its summary)") from None
        yield


# ---- the command and its state file --------------------------------------------------------


def _command(run: str | Path, events: str | Path, data: str | Path, settings: list[str],
             index: str, hnsw_above: int) -> dict[str, Any]:
    """The refresh's identity: absolute RUN and DATA, the store (a SQLite file's absolute path,
    a URL without its password), the settings; RUN and DATA checked to be what they must be."""
    from mirec.data.dataset import load_dataset
    from mirec.runs import RunConfig
    from mirec.serve.store import redact
    from mirec.train.warm import finished

    run, data = Path(run).absolute(), Path(data).absolute()
    if best_checkpoint(run) is None or not finished(run):
        raise MirecConfigError(f"--run {run}: not a finished `mirec train` run (no best.pt or no "
                               f"results.json)")
    task = json.loads(_results(run).read_text()).get("task")
    if task != "retrieval":
        raise MirecConfigError(f"--run {run}: a {task} run; a refresh retrains the retrieval model a "
                               f"bundle serves")
    load_dataset(data, verify=False)  # names what is missing or wrong
    spec = str(events)
    store = redact(spec) if "://" in spec else str(Path(spec).absolute())
    for s in settings:
        if "=" not in s:
            raise MirecConfigError(f"--set {s!r}: expected key=value")
    index_sets = [s for s in settings if s.startswith("index.")]
    run_sets = [s for s in settings if not s.startswith("index.")]
    load(RunConfig, None, [s for s in run_sets if not s.startswith("model_args.")])  # names a bad key
    return {"run": str(run), "data": str(data), "events": store, "events_spec": spec, "settings": run_sets,
            "index": [f"kind={index}", f"hnsw_above={hnsw_above}"] + [s[6:] for s in index_sets]}


def _results(run: Path) -> Path:
    """results.json of a run, or of the multi-seed run holding this ``seed-*`` directory."""
    return run / "results.json" if (run / "results.json").exists() else run.parent / "results.json"


def _index_config(sets: list[str], min_recall: float | None) -> Any:
    """The IndexConfig of ``--index``, ``--hnsw-above`` and ``--set index.*`` (later wins), its
    ``target_recall`` the ``--min-recall``."""
    from mirec.serve.index import IndexConfig

    if min_recall is not None and not 0 < min_recall <= 1:
        raise MirecConfigError(f"--min-recall: must be in (0, 1], got {min_recall}")
    cfg = load(IndexConfig, None, sets + ([f"target_recall={min_recall}"] if min_recall is not None else []))
    cfg.validate()
    return cfg


def _check_serve(url: str, token: str | None) -> None:
    if not url.startswith(("http://", "https://")):
        raise MirecConfigError(f"--serve {url!r}: expected the server's http:// or https:// address")
    if not token:
        raise MirecConfigError("--token: --serve needs the server's bearer token (POST /admin/reload "
                               "requires it; or set MIREC_TOKEN)")


def is_refresh_dir(path: Path) -> bool:
    """Whether ``path`` holds a refresh's state file (what ``mirec refresh --out`` may reuse), or
    only the lock of one killed before it wrote its state."""
    try:
        return json.loads((path / STATE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return [p.name for p in path.iterdir()] == [LOCK]


def _open_state(out: Path, cmd: dict[str, Any]) -> dict[str, Any]:
    """The state of the refresh in ``out``: a new one, or the one recorded there for this same
    command; another refresh's is refused."""
    if (out / STATE).exists():
        state = json.loads((out / STATE).read_text())
        was = state.get("command", {})
        for key in IDENTITY:
            if was.get(key) != cmd[key]:
                flag = {"events": "--events", "settings": "--set",
                        "index": "--index/--hnsw-above/--set index.*"}.get(key, f"--{key}")
                raise MirecConfigError(
                    f"{flag}: {out} holds a refresh with {key} {was.get(key)}, this command has "
                    f"{cmd[key]}; never mix two refreshes: give a new --out")
        return state
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "mirec_version": __version__,
             "command": {k: v for k, v in cmd.items() if k != "events_spec"}, "steps": {}}
    atomic_write_json(out / STATE, state)
    return state


def _verify(out: Path, state: dict[str, Any], step: str) -> None:
    """A finished step's outputs are still there, as it recorded them; otherwise refused,
    naming the step and the path."""
    for name, want in state["steps"][step]["outputs"].items():
        path = out / name
        try:
            got = _checksum(step, path)
            why = f"checksum {got[:12]} != {want[:12]}: changed since" if got != want else ""
        except (MirecError, OSError) as e:
            why = str(e)
        if why:
            raise MirecDataError(f"refresh: step '{step}' is done, but {path} is not what it wrote "
                                 f"({why}); give a new --out")


def _checksum(step: str, path: Path) -> str:
    """What ``step`` records of its output ``path``: a data set's checksum (every file verified),
    the SHA-256 of a run's best checkpoint; for a bundle (every file verified) the SHA-256 of
    its model files' checksums (export: what the index step adds does not change it) or its
    version (index: the whole manifest, the index's checksum included)."""
    from mirec.data.dataset import load_dataset
    from mirec.serve.bundle import FILES

    if step == "append":
        return load_dataset(path).checksum
    if step == "train":
        best = best_checkpoint(path)
        if best is None or not (path / "results.json").exists():
            raise MirecDataError(f"{path}: no best.pt or results.json")
        return sha256_file(best)
    b = _bundle(path)
    if step == "export":
        model = {name: b.manifest["checksums"][name] for name in FILES}
        return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()
    return b.version


def _named(e: MirecError, step: str) -> MirecError:
    """``e``, of the same class, its message prefixed with the step."""
    msg = f"refresh: step '{step}' failed: {e}"
    try:
        return type(e)(msg)
    except TypeError:
        return MirecError(msg)


def _hold(step: str, where: str) -> None:
    """Tests only: wait forever at ``STEP:where`` when MIREC_REFRESH_HOLD names it."""
    if os.environ.get(HOLD) == f"{step}:{where}":
        print(f"refresh: holding {where} step '{step}' ({HOLD})", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


# ---- the steps ------------------------------------------------------------------------------


def _append(cmd: dict[str, Any], out: Path) -> Done:
    from mirec.api import append
    from mirec.data.dataset import load_dataset

    try:
        path = append(cmd["data"], cmd["events_spec"], out / "data")
    except MirecError as e:  # the store's messages name it as `mirec serve` calls it
        msg = str(e)
        raise type(e)("--events " + msg[8:]) if msg.startswith("--store ") else e from None
    ds = load_dataset(path, verify=False)
    record = ds.meta["appended"][-1]
    keys = ("events_read", "events_added", "duplicates_dropped", "older_than_users_last_event",
            "new_users", "new_items")
    return {"data": ds.checksum}, {"path": str(path), **{k: record[k] for k in keys},
                                   "store_seq": [record["source"]["since"], record["source"]["last_seq"]]}


def _train(cmd: dict[str, Any], out: Path, log: Callable[[str], None]) -> Done:
    """A warm start from RUN on DIR/data; ``train.since`` defaults to DATA's last timestamp. A
    run a killed refresh began is resumed from its last checkpoint."""
    from mirec.api import fit
    from mirec.data.dataset import load_dataset

    sets = list(cmd["settings"])
    if not any(s.startswith("train.since=") for s in sets):
        ts = load_dataset(cmd["data"], verify=False).ts
        sets.append(f"train.since={int(ts.max()) if len(ts) else 0}")
    settings = dict(s.split("=", 1) for s in sets)
    run_dir = out / "run"
    resume = (run_dir / "last.pt").exists() or any(run_dir.glob("seed-*/last.pt"))
    r = fit(data=out / "data", out=run_dir, warm_start=cmd["run"], resume=resume, progress=False,
            log=log, settings=settings)
    doc = json.loads((run_dir / "results.json").read_text())
    return {"run": sha256_file(best_checkpoint(run_dir))}, {
        "path": str(r.path), "model": r.model, "since": doc.get("warm_start", {}).get("since"),
        "valid": doc["valid"], "test": doc["metrics"], "best_epochs": doc["best_epochs"]}


def _bundle(path: Path) -> Any:
    """The bundle ``path``, validated whole, its saved indexes' checksums verified too."""
    from mirec.serve.bundle import FILES, load_bundle, verify_checksum

    b = load_bundle(path)
    for name in b.manifest["checksums"]:
        if name not in FILES:
            verify_checksum(b, name, "run the refresh into a new --out")
    return b


def _export(out: Path) -> Done:
    from mirec.api import export

    path = export(out / "run", out / "bundle")
    return {"bundle": _checksum("export", path)}, {"path": str(path), "version": _bundle(path).version}


def _index(out: Path, cfg: Any, min_recall: float, queries: int) -> Done:
    """Build and save the index into DIR/bundle (as ``mirec index build``), refused when its
    recall@50 per recommendation is below ``min_recall``."""
    from mirec.serve.bundle import load_bundle
    from mirec.serve.service import build_index_report

    b = load_bundle(out / "bundle")
    r = build_index_report(b, cfg, queries)
    recall = r["recommend_recall@50"]
    if recall < min_recall:
        raise MirecDataError(f"the {r['kind']} index's recall@50 against exact is {recall:.3f} per "
                             f"recommendation ({r['users']} users), below --min-recall {min_recall:g}; "
                             f"the bundle is not served (change the index settings, index.*, or "
                             f"--min-recall)")
    version = _checksum("index", out / "bundle")
    keys = ("kind", "items", "build_s", "bytes", "recall@50", "recommend_recall@50", "nlist", "nprobe")
    return {"bundle": version}, {**{k: r[k] for k in keys}, "min_recall": min_recall, "version": version}


def _reload(out: Path, url: str, token: str) -> Done:
    """POST URL/admin/reload with DIR/bundle; the 200 must name the new version, for every
    worker of a fleet."""
    bundle = out / "bundle"
    version = _bundle(bundle).version  # the bundle the index step left, checked once more
    req = urllib.request.Request(url.rstrip("/") + "/admin/reload", method="POST",
                                 data=json.dumps({"bundle": str(bundle)}).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=RELOAD_WAIT_S) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        cls = MirecConfigError if e.code in (401, 403) else MirecDataError
        raise cls(f"--serve {url}: POST /admin/reload answered {e.code} {detail} (the server keeps "
                  f"its bundle)") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", e)
        raise MirecConfigError(f"--serve {url}: POST /admin/reload failed ({why})") from None
    workers = answer.get("workers") or []
    stale = [w for w in workers if w.get("version") != version]
    if answer.get("version") != version or stale:
        raise MirecDataError(f"--serve {url}: the reload answered version {answer.get('version')} "
                             f"(workers {[w.get('version') for w in workers]}), not the new bundle's "
                             f"{version}")
    return {}, {"url": url, "answer": answer}


# ---- the summary --------------------------------------------------------------------------


def summary(out: Path, state: dict[str, Any]) -> dict[str, Any]:
    """What the refresh did, from its state file alone (a rerun answers the same): for
    schedulers, printed as JSON by ``mirec refresh``."""
    steps = state["steps"]
    result = {name: steps[name]["result"] for name in steps}
    index = result.get("index", {})
    return {
        "out": str(out),
        "run": state["command"]["run"], "data": state["command"]["data"],
        "events": state["command"]["events"],
        "steps": [{"step": s, "seconds": steps[s]["seconds"], "peak_rss_mib": steps[s].get("peak_rss_mib")}
                  if s in steps else {"step": s, "seconds": None, "skipped": "no --serve"} for s in STEPS],
        "seconds": round(sum(s["seconds"] for s in steps.values()), 3),
        "bundle": {"path": str(out / "bundle"), "version": index.get("version")},
        "appended": result.get("append"),
        "new_items": result.get("append", {}).get("new_items"),
        "new_users": result.get("append", {}).get("new_users"),
        "new_run": result.get("train"),
        "index": index,
        "reload": result.get("reload"),
    }
