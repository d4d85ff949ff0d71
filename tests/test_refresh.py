"""`mirec refresh`: append the event store's new events, warm-start train, export, build and
check the index, reload the server, as one resumable job (mirec/refresh.py, mirec.api.refresh).

Real pieces throughout: a ComiRec-SA run trained once for the module, a `mirec serve --workers 2`
subprocess over loopback whose own event store (POST /events, a new item and a new user among
them) is what the refresh reads, and `mirec refresh` subprocesses killed with SIGKILL at each
step (MIREC_REFRESH_HOLD stops one there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mirec.api import refresh
from mirec.data.dataset import load_dataset
from mirec.io import sha256_file
from mirec.serve.bundle import export_bundle
from mirec.serve.store import EventStore
from tests.conftest import planted_comirec_run
from tests.test_fleet import fresh, start, stop, version_of, wait_for_workers
from tests.test_guarantees import mirec

TOKEN = "s3cret"
NEW_ITEM = "new-item-1"
EPOCHS = "train.epochs=1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run on a planted data set and its bundle."""
    root = tmp_path_factory.mktemp("refresh")
    data = planted_comirec_run(root, [2020], epochs=2, seed=3)
    bundle = export_bundle(root / "run", root / "bundle")
    return {"root": root, "data": data, "run": root / "run", "bundle": bundle, "store": root / "ev.sqlite"}


@pytest.fixture(scope="module")
def parent(trained):
    """``trained``'s bundle served by a fleet of two workers, and new traffic in that server's
    store: known users on known items, a new item, a new user."""
    root, data = trained["root"], trained["data"]
    proc, url = start(trained["bundle"], root, workers=2)  # its store: root / "ev.sqlite"
    try:
        ds = load_dataset(data)
        last = int(ds.ts.max())
        users, items = ds.users["raw_id"].to_list(), ds.items["raw_id"].to_list()
        with fresh(url) as c:
            wait_for_workers(c, 2)  # both in the fleet: the reload's answer names each
            for k, user in enumerate(users[:40]):
                events = [{"item_id": items[(7 * k) % len(items)], "timestamp": last + 10 + k},
                          {"item_id": NEW_ITEM, "timestamp": last + 100 + k}]
                assert c.post("/events", json={"user_id": user, "events": events}).status_code == 200
            r = c.post("/events", json={"user_id": "new-user", "events": [
                {"item_id": items[0], "timestamp": last + 500}, {"item_id": NEW_ITEM, "timestamp": last + 501}]})
            assert r.json()["stored"] == 2 and r.json()["ignored_items"] == [NEW_ITEM]
        yield {**trained, "url": url}
    finally:
        stop(proc)


def args(p: dict, out: Path, *more: str) -> list[str]:
    return ["refresh", "--run", str(p["run"]), "--events", str(p["store"]), "--data", str(p["data"]),
            "--out", str(out), "--set", EPOCHS, *more]


def served(url: str) -> str:
    """The version /health and a /recommend answer name (they must agree)."""
    with fresh(url) as c:
        health = c.get("/health").json()["bundle"]["version"]
        r = c.post("/recommend", json={"user_id": "new-user", "n": 3})
        assert r.status_code == 200 and r.headers["x-mirec-bundle"] == health
        return health


def files(bundle: Path) -> dict[str, str]:
    """A bundle's files' checksums (the manifest's own bytes hold the export time: left out)."""
    return json.loads((bundle / "manifest.json").read_text())["checksums"]


def tree(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


# ---- a whole refresh -------------------------------------------------------------------------


@pytest.mark.slow
def test_refresh_serves_a_new_bundle_that_knows_the_new_item(capsys, parent, tmp_path):
    out = tmp_path / "r1"
    old_bundle = tree(parent["bundle"])
    code, stdout, err = mirec(capsys, *args(parent, out, "--serve", parent["url"], "--token", TOKEN))
    assert code == 0, err
    s = json.loads(stdout)  # stdout is the JSON summary alone; progress went to stderr
    assert "step 'train' done" in err
    assert [x["step"] for x in s["steps"]] == ["append", "train", "export", "index", "reload"]
    assert all(x["seconds"] >= 0 for x in s["steps"])
    assert (out / "data" / "meta.json").exists() and (out / "run" / "results.json").exists()
    assert s["bundle"] == {"path": str(out / "bundle"), "version": version_of(out / "bundle")}
    assert s["appended"]["events_added"] == 82 and s["new_items"] == 1 and s["new_users"] == 1
    assert s["new_run"]["since"] == int(load_dataset(parent["data"]).ts.max())  # DATA's last ts
    assert 0 < s["new_run"]["valid"]["recall@50"] <= 1
    assert s["index"]["recommend_recall@50"] == 1.0 and s["index"]["kind"] == "exact"
    answer = s["reload"]["answer"]
    assert answer["version"] == s["bundle"]["version"] and answer["bundle"] == str(out / "bundle")
    assert len(answer["workers"]) == 2 and {w["version"] for w in answer["workers"]} == {answer["version"]}
    # the server answers from the new bundle, which knows the new item
    assert served(parent["url"]) == s["bundle"]["version"]
    with fresh(parent["url"]) as c:
        assert c.get(f"/items/{NEW_ITEM}").status_code == 200
    assert tree(parent["bundle"]) == old_bundle  # the old bundle's directory was never touched

    # a rerun after success does nothing and answers the same summary
    state = (out / "refresh.json").read_bytes()
    code, again, err = mirec(capsys, *args(parent, out, "--serve", parent["url"], "--token", TOKEN))
    assert code == 0 and again == stdout and "step" not in err, err
    assert (out / "refresh.json").read_bytes() == state

    # another refresh's command, or an output changed since its step, is refused with one line
    for flag, value in [("--data", str(out / "data")), ("--run", str(out / "run")), ("--set", "train.epochs=2")]:
        other = args(parent, out)
        other[other.index(flag) + 1] = value
        code, _, err = mirec(capsys, *other)
        assert code == 2 and f"{flag}:" in err and "never mix two refreshes" in err, err
    users = out / "data" / "users.parquet"
    users.write_bytes(users.read_bytes() + b"\0")
    code, _, err = mirec(capsys, *args(parent, out))
    assert code == 2 and f"step 'append' is done, but {out / 'data'} is not what it wrote" in err, err
    assert "users.parquet" in err


# ---- kill -9 at each step ----------------------------------------------------------------------


def held(cmd: list[str], hold: str, log: Path, meanwhile=lambda: None) -> None:
    """Run `mirec refresh` until it holds at ``hold``, call ``meanwhile``, then SIGKILL it."""
    env = {**os.environ, "MIREC_REFRESH_HOLD": hold, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mirec.cli", *cmd], stdout=subprocess.DEVNULL,
                                stderr=f, env=env)
    deadline = time.monotonic() + 120
    while "holding" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never held at {hold}"
        time.sleep(0.05)
    try:
        meanwhile()
    finally:
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)


@pytest.mark.slow
def test_kill_9_at_each_step_keeps_the_old_bundle_served_and_a_rerun_finishes_the_same(capsys, parent,
                                                                                      tmp_path):
    """A refresh killed at each step in turn (after the step's work, before refresh.json records
    it; before the reload's POST): a request loop sees only 200s from the bundle served before,
    refresh.json records the steps done before the kill, and a rerun ends as an uninterrupted
    refresh: the same data, checkpoint, bundle files and figures."""
    url, out = parent["url"], tmp_path / "killed"
    old = served(url)
    seen: list[tuple[int, str | None]] = []
    halt = threading.Event()

    def loop() -> None:
        with fresh(url) as c:
            while not halt.is_set():
                r = c.post("/recommend", json={"user_id": "new-user", "n": 5})
                seen.append((r.status_code, r.headers.get("x-mirec-bundle")))
                time.sleep(0.02)

    cmd = args(parent, out, "--serve", url)

    def overlap(k: int) -> None:  # a second refresh in the same directory meanwhile: refused
        if k == 1:
            code, _, err = mirec(capsys, *cmd, "--token", TOKEN)
            assert code == 2 and "another `mirec refresh` is running there" in err, err

    t = threading.Thread(target=loop)
    t.start()
    try:
        for k, hold in enumerate(["append:after", "train:after", "export:after", "index:after",
                                  "reload:before"]):
            held(cmd + ["--token", TOKEN], hold, tmp_path / f"{k}.log", meanwhile=lambda k=k: overlap(k))
            done = list(json.loads((out / "refresh.json").read_text())["steps"])
            assert done == ["append", "train", "export", "index"][:k], (hold, done)
            assert not [p for p in out.iterdir() if ".old-" in p.name]
    finally:
        halt.set()
        t.join()
    assert len(seen) > 20 and set(seen) == {(200, old)}, set(seen)

    code, stdout, err = mirec(capsys, *cmd, "--token", TOKEN)
    assert code == 0, err
    s = json.loads(stdout)
    assert s["reload"]["answer"]["version"] == s["bundle"]["version"] == served(url)
    assert all(x["seconds"] is not None for x in s["steps"])
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]

    ref = refresh(parent["run"], parent["store"], parent["data"], tmp_path / "ref", settings={"train.epochs": 1})
    assert load_dataset(out / "data").checksum == load_dataset(tmp_path / "ref" / "data").checksum
    assert files(out / "bundle") == files(tmp_path / "ref" / "bundle")  # the tower, vectors, index
    for key in ("appended", "new_run", "index"):
        a, b = dict(s[key]), dict(ref[key])
        for noise in ("path", "build_s", "version"):
            a.pop(noise, None), b.pop(noise, None)
        assert a == b, key


@pytest.mark.slow
def test_each_step_records_its_seconds_and_the_peak_memory_so_far(trained, tmp_path):
    """refresh.json and the summary give each step's seconds and the refreshing process's peak
    RSS when the step ended (what a scheduler sizes a refresh's machine by): this process's own
    figure, never falling from one step to the next."""
    import resource

    ds = load_dataset(trained["data"])
    last, items = int(ds.ts.max()), ds.items["raw_id"].cast(str).to_list()
    store = EventStore(tmp_path / "ev.sqlite")
    for k, user in enumerate(ds.users["raw_id"].cast(str).to_list()[:20]):
        store.append(user, [(items[k], last + 1 + k)])
    store.close()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    s = refresh(trained["run"], tmp_path / "ev.sqlite", trained["data"], tmp_path / "r",
                settings={"train.epochs": 1})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = json.loads((tmp_path / "r" / "refresh.json").read_text())["steps"]
    peaks = [steps[x]["peak_rss_mib"] for x in ("append", "train", "export", "index")]
    assert before - 0.1 <= peaks[0] and peaks == sorted(peaks) and peaks[-1] <= after + 0.1, (before, peaks)
    assert [x.get("peak_rss_mib") for x in s["steps"]] == [*peaks, None]  # reload: no --serve
    assert [x["seconds"] for x in s["steps"][:4]] == [steps[x]["seconds"] for x in steps]


# ---- failures ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failing_step_is_named_and_the_server_keeps_its_bundle(capsys, parent, tmp_path):
    url = parent["url"]
    before = served(url)
    # the store cannot be reached: step 1
    bad = args(parent, tmp_path / "a", "--serve", url, "--token", TOKEN)
    bad[bad.index("--events") + 1] = "postgresql://mirec@127.0.0.1:1/events"
    code, stdout, err = mirec(capsys, *bad)
    assert code == 2 and stdout == "" and "error: refresh: step 'append' failed: " in err, err
    assert "--events postgresql://mirec@127.0.0.1:1/events: cannot connect" in err
    assert err.splitlines()[-1].startswith("error: ")
    assert not [line for line in err.splitlines()[:-1] if "error" in line]

    # an index whose recall is below --min-recall: step 4, the bundle never offered to the server
    out = tmp_path / "b"
    ivf = ("--index", "ivf", "--set", "index.ivf_nlist=8", "--set", "index.ivf_nprobe=1")
    code, _, err = mirec(capsys, *args(parent, out, *ivf, "--serve", url, "--token", TOKEN))
    assert code == 2 and "error: refresh: step 'index' failed: the ivf index's recall@50" in err, err
    assert "below --min-recall 0.95" in err
    assert list(json.loads((out / "refresh.json").read_text())["steps"]) == ["append", "train", "export"]
    assert served(url) == before

    # the same refresh with a lower target (not part of its identity) and a wrong token: step 5
    code, _, err = mirec(capsys, *args(parent, out, *ivf, "--min-recall", "0.1", "--serve", url,
                                       "--token", "wrong"))
    assert code == 2 and "error: refresh: step 'reload' failed: " in err and "401" in err, err
    assert served(url) == before
    # and the right one finishes it
    code, stdout, err = mirec(capsys, *args(parent, out, *ivf, "--min-recall", "0.1", "--serve", url,
                                            "--token", TOKEN))
    assert code == 0, err
    assert served(url) == json.loads(stdout)["bundle"]["version"] != before


def test_out_follows_the_out_rules_and_serve_needs_a_token(capsys, trained, tmp_path, monkeypatch):
    parent = trained
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    code, _, err = mirec(capsys, *args(parent, mine))
    assert code == 2 and "directory exists and is not written by mirec" in err, err
    assert os.listdir(mine) == ["notes.txt"]
    for out in (parent["data"], parent["data"] / "x", parent["run"]):
        code, _, err = mirec(capsys, *args(parent, out))
        assert code == 2 and "--out" in err, err
    monkeypatch.delenv("MIREC_TOKEN", raising=False)
    code, _, err = mirec(capsys, *args(parent, tmp_path / "c", "--serve", "http://127.0.0.1:9"))
    assert code == 2 and "--token" in err and not (tmp_path / "c").exists(), err
    for bad, says in [(("--queries", "0"), "--queries"), (("--set", "train.nope=1"), "train.nope"),
                      (("--set", "index.kind=flat"), "index.kind"), (("--min-recall", "2"), "--min-recall")]:
        code, _, err = mirec(capsys, *args(parent, tmp_path / "d", *bad))
        assert code == 2 and says in err and not (tmp_path / "d").exists(), err
