"""`mirec serve --workers N` as one fleet: a reload (HTTP or SIGHUP) reaches every worker before
its 200, /health names what each worker serves, /metrics sums every worker.

Real `mirec serve` subprocesses over loopback. Requests go over fresh connections (no keep-alive)
so that both workers answer some of them.
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

import httpx
import pytest

from mirec.serve.fleet import _running
from mirec.serve.guard import Limits
from mirec.serve.service import Live, open_recommender
from tests import test_serve as shared
from tests.test_production import TOKEN, samples, second_bundle

run, bundle_dir, bundle = shared.run, shared.bundle_dir, shared.bundle


def start(bundle_path: Path, tmp_path: Path, workers: int, **env: str) -> tuple[subprocess.Popen, str]:
    """`mirec serve --workers N --token` (``env``: more environment variables), once /health
    answers (exactly one /health is counted)."""
    port = shared.free_port()
    err = open(tmp_path / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mirec.cli", "serve", str(bundle_path), "--port", str(port),
                             "--store", str(tmp_path / "ev.sqlite"), "--index", "exact",
                             "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "MIREC_TOKEN": "s3cret", **env})
    err.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (tmp_path / f"serve-{port}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "mirec serve did not start"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def fresh(url: str) -> httpx.Client:
    """A client that opens a new connection per request (the kernel picks a worker each time)."""
    return httpx.Client(base_url=url, timeout=30, headers=TOKEN,
                        limits=httpx.Limits(max_keepalive_connections=0))


def workers_seen(c: httpx.Client, pids: set[int], version: str, tries: int = 400) -> set[int]:
    """Ask /health until every worker in ``pids`` has answered; the pids seen serving ``version``."""
    seen: dict[int, str] = {}
    for _ in range(tries):
        h = c.get("/health").json()
        seen[h["pid"]] = h["bundle"]["version"]
        if set(seen) >= pids:
            break
    return {pid for pid, v in seen.items() if v == version}


def wait_for_workers(c: httpx.Client, n: int, timeout_s: float = 120) -> None:
    """Until /health lists ``n`` workers: one that is still loading its first bundle is not
    yet in the fleet, so a reload's answer could not name it (its requests would still wait
    for the published bundle)."""
    deadline = time.monotonic() + timeout_s
    while len(c.get("/health").json().get("workers") or []) < n:
        assert time.monotonic() < deadline, c.get("/health").json()
        time.sleep(0.1)


def version_of(path: Path) -> str:
    from mirec.serve.bundle import load_bundle

    return load_bundle(path).version


@pytest.mark.slow
def test_every_request_after_a_reloads_200_answers_from_the_new_bundle(bundle_dir, bundle, tmp_path):
    """50 reloads alternating between two bundles under a request loop: every request sent
    after a reload's 200 (and answered before the next reload began) carries the new bundle's
    version, and each worker's /health serves it."""
    other = second_bundle(bundle_dir, tmp_path)
    paths = [other, bundle_dir]
    versions = [version_of(p) for p in paths]
    assert versions[0] != versions[1]
    user = sorted(bundle.user_histories)[0]
    proc, url = start(bundle_dir, tmp_path, workers=2)
    state = {"started": 0, "done": 0}  # reloads sent / answered 200
    expected = {0: version_of(bundle_dir)}  # reloads answered -> the version then served
    seen: list[tuple[int, int, str | int]] = []  # (done before send, started after answer, version)
    halt = threading.Event()

    def loop() -> None:
        with fresh(url) as c:
            while not halt.is_set():
                done = state["done"]
                try:
                    r = c.post("/recommend", json={"user_id": user, "n": 5})
                    got = r.headers.get("x-mirec-bundle") if r.status_code == 200 else r.status_code
                except httpx.TransportError as e:
                    got = repr(e)
                seen.append((done, state["started"], got))

    try:
        t = threading.Thread(target=loop)
        t.start()
        pids: set[int] = set()
        with fresh(url) as c:
            wait_for_workers(c, 2)
            for i in range(50):
                target, version = paths[i % 2], versions[i % 2]
                state["started"] += 1
                r = c.post("/admin/reload", json={"bundle": str(target)})
                assert r.status_code == 200, r.text
                state["done"] += 1
                expected[state["done"]] = version
                workers = r.json()["workers"]
                assert len(workers) == 2 and {w["version"] for w in workers} == {version}, workers
                pids = pids or {w["pid"] for w in workers}
                assert {w["pid"] for w in workers} == pids  # reloaded in place, not restarted
                assert workers_seen(c, pids, version) == pids
                n, deadline = len(seen) + 3, time.monotonic() + 30  # >= 2 requests sent after the 200
                while len(seen) < n and time.monotonic() < deadline:
                    time.sleep(0.01)
        halt.set()
        t.join()
    finally:
        halt.set()
        stop(proc)
    errors = [x for x in seen if not isinstance(x[2], str) or x[2].startswith("Connect")]
    assert not errors, errors[:5]
    after = [(done, v) for done, started, v in seen if done > 0 and started == done]
    old = [(done, v) for done, v in after if v != expected[done]]
    print(f"\n50 reloads; {len(after)} requests sent after a 200 (and answered before the next "
          f"reload began); {len(old)} answered from the old bundle")
    assert len(after) >= 100 and not old, old[:5]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_after_an_http_reload_keeps_the_reloaded_bundle(bundle_dir, tmp_path, workers):
    """POST /admin/reload to B, change B, SIGHUP the supervisor: every worker serves the new B
    (the bundle last reloaded, read again), never the starting bundle."""
    other = second_bundle(bundle_dir, tmp_path)
    proc, url = start(bundle_dir, tmp_path, workers)
    try:
        with fresh(url) as c:
            if workers > 1:
                wait_for_workers(c, workers)
            r = c.post("/admin/reload", json={"bundle": str(other)})
            assert r.status_code == 200, r.text
            pids = {w["pid"] for w in r.json().get("workers") or []} or {c.get("/health").json()["pid"]}
            assert workers_seen(c, pids, version_of(other)) == pids
            manifest = json.loads((other / "manifest.json").read_text())
            manifest["created"] = "2033-01-01T00:00:00Z"  # a new export over B: another version
            (other / "manifest.json").write_text(json.dumps(manifest))
            changed = version_of(other)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while (h := c.get("/health")).json()["version"] == r.json()["version"]:
                assert time.monotonic() < deadline, "SIGHUP did not reload"
                time.sleep(0.1)
            assert h.json()["version"] == changed and h.headers["x-mirec-bundle"] == changed
            if workers > 1:  # SIGHUP reloads every worker, in place (same pids)
                deadline = time.monotonic() + 60
                while {w["version"] for w in c.get("/health").json()["workers"]} != {changed}:
                    assert time.monotonic() < deadline, c.get("/health").json()["workers"]
                    time.sleep(0.1)
            assert workers_seen(c, pids, changed) == pids
    finally:
        stop(proc)


@pytest.mark.slow
def test_metrics_count_the_requests_of_every_worker(bundle_dir, bundle, tmp_path):
    """/metrics, whichever worker answers, counts the requests both workers served."""
    user = sorted(bundle.user_histories)[0]
    proc, url = start(bundle_dir, tmp_path, workers=2)  # one /health counted
    try:
        with fresh(url) as c:
            pids, health = set(), 1
            while len(pids) < 2:
                assert health < 400, "one worker answered every request"
                pids.add(c.get("/health").json()["pid"])
                health += 1
            for _ in range(30):
                assert c.post("/recommend", json={"user_id": user, "n": 3}).status_code == 200
            pages = [samples(c.get("/metrics").text) for _ in range(6)]  # several workers scraped
    finally:
        stop(proc)
    rec_ok = frozenset({"method": "POST", "endpoint": "/recommend", "status": "200"}.items())
    health_ok = frozenset({"method": "GET", "endpoint": "/health", "status": "200"}.items())
    for s in pages:
        assert s[("mirec_requests_total", rec_ok)] == 30
        assert s[("mirec_requests_total", health_ok)] == health
        info = {dict(k[1])["pid"] for k, v in s.items() if k[0] == "mirec_bundle_info" and v == 1}
        assert info == {str(p) for p in pids}


def test_health_names_the_bundle_and_every_response_its_version(bundle_dir, tmp_path):
    """One process: /health gives the bundle's version, path, load time and the pid; every
    response (401 and 422 included) carries X-Mirec-Bundle, which follows a reload."""
    other = second_bundle(bundle_dir, tmp_path)
    live = Live(open_recommender(bundle_dir, "exact"))
    first = live.rec.bundle.version
    with shared.Server(live, Limits(token="s3cret")) as client:
        h = client.get("/health")
        body = h.json()
        assert body["bundle"]["version"] == first == h.headers["x-mirec-bundle"]
        assert body["bundle"]["path"] == str(bundle_dir) and body["pid"] == os.getpid()
        assert client.post("/recommend", json={"n": 3}).headers["x-mirec-bundle"] == first  # 401
        r = client.post("/recommend", json={"n": 0}, headers=TOKEN)
        assert r.status_code == 422 and r.headers["x-mirec-bundle"] == first
        assert client.post("/admin/reload", json={"bundle": str(other)}, headers=TOKEN).status_code == 200
        after = client.get("/health")
        assert after.headers["x-mirec-bundle"] == after.json()["bundle"]["version"] != first
        assert after.json()["bundle"]["loaded_at"] > body["bundle"]["loaded_at"]


def runtime_dirs(tmp: Path) -> set[Path]:
    return set(tmp.glob("mirec-serve-*"))


@pytest.mark.slow
def test_the_next_start_removes_the_runtime_directory_of_a_killed_supervisor(bundle_dir, tmp_path):
    """kill -9 of `mirec serve --workers 2` leaves its $TMPDIR/mirec-serve-* behind (it cannot
    clean up); the next start removes it, and only it: a live server's directory and one that
    mirec did not mark as its own stay."""
    tmp = tmp_path / "tmp"
    foreign = tmp / "mirec-serve-notours"  # same name pattern, no owner.json: not mirec's
    foreign.mkdir(parents=True)
    (foreign / "data").write_text("keep me")
    killed, url = start(bundle_dir, tmp_path, 2, TMPDIR=str(tmp))
    (dead,) = runtime_dirs(tmp) - {foreign}
    live, _ = start(bundle_dir, tmp_path, 2, TMPDIR=str(tmp))
    (alive,) = runtime_dirs(tmp) - {foreign, dead}
    try:
        with fresh(url) as c:
            wait_for_workers(c, 2)
            workers = [w["pid"] for w in c.get("/health").json()["workers"]]
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        deadline = time.monotonic() + 60  # its workers see their supervisor gone and stop
        while any(map(_running, workers)):
            assert time.monotonic() < deadline, f"workers {workers} still run"
            time.sleep(0.1)
        assert dead.is_dir()  # left behind
        third, _ = start(bundle_dir, tmp_path, 2, TMPDIR=str(tmp))
        try:
            assert not dead.exists()
            assert alive.is_dir() and (alive / "serving.json").is_file()
            assert (foreign / "data").read_text() == "keep me"
        finally:
            stop(third)
    finally:
        stop(live)
    assert runtime_dirs(tmp) == {foreign}  # the two stopped normally: removed at exit


def test_only_runtime_directories_that_mirec_marked_and_whose_processes_are_gone_are_swept(tmp_path,
                                                                                          monkeypatch):
    """The sweep's other cases, without servers: gone only when owner.json (this host) names a
    supervisor and workers that all stopped; a symlink, another host's, a running owner or
    worker, a directory without owner.json, a torn owner.json stay."""
    import socket
    import tempfile

    from mirec.serve.fleet import make_runtime, sweep_runtimes

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs

    def runtime(owner: dict | str | None, workers: tuple[int, ...] = ()) -> Path:
        d = Path(tempfile.mkdtemp(prefix="mirec-serve-"))
        if owner is not None:
            (d / "owner.json").write_text(owner if isinstance(owner, str) else json.dumps(owner))
        (d / "workers").mkdir()
        for w in workers:
            (d / "workers" / f"{w}.json").write_text("{}")
        return d

    host = socket.gethostname()
    stale = {runtime({"pid": gone.pid, "host": host, "started": None}, (gone.pid,)),
             runtime({"pid": os.getpid(), "host": host, "started": 1})}  # the pid is another process's now
    kept = [runtime({"pid": gone.pid, "host": "elsewhere", "started": None}),
            runtime({"pid": os.getpid(), "host": host, "started": None}),
            runtime({"pid": gone.pid, "host": host, "started": None}, (os.getpid(),)),
            runtime(None), runtime('{"pid": 1'), make_runtime()]
    target = runtime({"pid": gone.pid, "host": host, "started": None})
    link = tmp_path / "mirec-serve-link"
    link.symlink_to(target)
    target = target.rename(tmp_path / "elsewhere")  # only the link has the pattern's name
    assert set(sweep_runtimes()) == stale and not any(d.exists() for d in stale)
    assert all(d.is_dir() for d in kept) and link.is_symlink() and (target / "owner.json").is_file()
    me = json.loads((kept[-1] / "owner.json").read_text())  # a live owner's start time: its own
    assert me["pid"] == os.getpid() and me["host"] == host and sweep_runtimes() == []


def test_openapi_lists_a_fleet_workers_503_on_every_operation(bundle_dir, tmp_path):
    """Under --workers N any request may get a 503 while its worker catches up (ServedBy): the
    schema says so on every operation, next to the store's 503 where a route declares one;
    with a token and a rate limit, /recommend and /events list 401, 413 and 429 too."""
    from mirec.serve.fleet import GENERATION, WORKERS, FleetLive

    (tmp_path / WORKERS).mkdir()
    (tmp_path / GENERATION).write_bytes(bytes(8))
    live = FleetLive(open_recommender(bundle_dir, "exact"), tmp_path, 0)
    with shared.Server(live, Limits(token="s3cret", rate=100.0)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    ops = {f"{m.upper()} {p}": op["responses"] for p, o in paths.items() for m, op in o.items()}
    assert len(ops) >= 7 and all("503" in r for r in ops.values()), {k: sorted(r) for k, r in ops.items()}
    assert "not serving the published bundle" in ops["GET /items/{item_id}"]["503"]["description"]
    assert "event store" in ops["POST /recommend"]["503"]["description"]
    for op in ("POST /recommend", "POST /events"):
        assert {"401", "413", "429", "503"} <= set(ops[op]), op
