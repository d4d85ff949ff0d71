"""``mirec serve`` processes, for the benchmarks and the tests: one on a free loopback port
(:func:`start_server`), several on one event store (:class:`Fleet`), and the kill -9 run under
load (:func:`crash_run`; ``bench/fleet_store.py`` runs it for 60 s, ``tests/test_store.py`` for
15 s). Imported as ``bench.processes``: pytest puts the repository root on ``sys.path``, the
bench scripts insert it.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.pg import free_port

CLI = [sys.executable, "-m", "mirec.cli"]


def start_server(bundle_path: Path, store: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``mirec serve`` as a subprocess on a free loopback port, once /health answers."""
    port = free_port()
    proc = subprocess.Popen(CLI + ["serve", str(bundle_path), "--port", str(port), "--store", str(store),
                                   "--index", "exact", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url)
    return proc, url


def wait_until_serving(proc: subprocess.Popen, url: str) -> None:
    """Until the ``mirec serve`` process ``proc`` answers /health at ``url`` (120 s at most)."""
    t = time.time()
    while True:
        assert proc.poll() is None, "mirec serve exited"
        assert time.time() - t < 120, "mirec serve did not start"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


class Fleet:
    """``mirec serve`` processes on one store; the ones answering are ``live`` (a killed one
    is restarted in the background and rejoins once its /health answers)."""

    def __init__(self, bundle_dir: Path, store: str, size: int) -> None:
        self.bundle_dir, self.store = bundle_dir, store
        self.lock = threading.Lock()
        self.live: list[tuple[subprocess.Popen, str]] = []
        self.all: list[subprocess.Popen] = []
        starters = [threading.Thread(target=self.start) for _ in range(size)]
        for t in starters:
            t.start()
        for t in starters:
            t.join()

    def start(self) -> None:
        proc, url = start_server(self.bundle_dir, self.store)
        with self.lock:
            self.all.append(proc)
            self.live.append((proc, url))

    def urls(self) -> list[str]:
        with self.lock:
            return [u for _, u in self.live]

    def kill_one(self) -> bool:
        """kill -9 the longest-running live server and restart it in the background."""
        with self.lock:
            if not self.live:
                return False
            proc, _ = self.live.pop(0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        threading.Thread(target=self.start, daemon=True).start()
        return True

    def stop(self) -> None:
        with self.lock:
            procs = list(self.all)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(30)


def crash_run(bundle_dir: Path, raw_items: list[str], url: str, seconds: float, kill_every: float = 3.0,
              clients: int = 4, log=print) -> dict:
    """Two ``mirec serve`` processes on the PostgreSQL store ``url`` under a mixed load (POST
    /events and POST /recommend from ``clients`` threads against the live ones); every
    ``kill_every`` seconds the longest-running live one is killed with -9 and restarted (in the
    background: it rejoins once it answers). Returns the counts: events acknowledged, lost
    (acknowledged but not in the store), kills, requests."""
    import psycopg

    fleet = Fleet(bundle_dir, url, 2)
    acked: list[tuple[str, str, int]] = []
    counts = {"kills": 0, "events_ok": 0, "recommend_ok": 0, "failed": 0}
    stop = threading.Event()
    lock = threading.Lock()

    def client(t: int) -> None:
        rng = random.Random(t)
        k = 0
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                urls = fleet.urls()
                if not urls:
                    time.sleep(0.05)
                    continue
                base = rng.choice(urls)
                user = f"crash-t{t}-u{k % 5}"
                try:
                    if rng.random() < 0.6:
                        ev = [(raw_items[(k + j) % len(raw_items)], k * 10 + j) for j in range(2)]
                        r = c.post(f"{base}/events", json={"user_id": user, "events": [
                            {"item_id": i, "timestamp": ts} for i, ts in ev]})
                        if r.status_code == 200 and r.json()["stored"] == 2:
                            with lock:
                                acked.extend((user, i, ts) for i, ts in ev)
                                counts["events_ok"] += 1
                    else:
                        r = c.post(f"{base}/recommend", json={"user_id": user, "n": 5})
                        r.raise_for_status()
                        with lock:
                            counts["recommend_ok"] += 1
                except (httpx.TransportError, httpx.HTTPStatusError):
                    with lock:
                        counts["failed"] += 1  # the server was killed mid-request: not acknowledged
                    time.sleep(0.05)
                k += 1

    threads = [threading.Thread(target=client, args=(t,)) for t in range(clients)]
    for t in threads:
        t.start()
    try:
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(min(kill_every, max(0.0, end - time.time())))
            counts["kills"] += fleet.kill_one()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        fleet.stop()
    with psycopg.connect(url) as conn:
        rows = set(conn.execute("SELECT user_id, item_id, ts FROM events").fetchall())
    counts.update(acknowledged=len(acked), stored=len(rows), lost=sum(e not in rows for e in acked))
    log(f"kill -9 under load ({seconds:.0f} s, {clients} clients, 2 servers on one PostgreSQL store): "
        f"{counts['acknowledged']} events acknowledged, {counts['lost']} lost, {counts['kills']} kills, "
        f"{counts['recommend_ok']} recommendations, {counts['failed']} requests cut by the kills")
    return counts
