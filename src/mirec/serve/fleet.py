"""Serving as a fleet: ``mirec serve --workers N`` runs N processes that serve one bundle.

The supervisor (``mirec serve``) makes a private runtime directory (``MIREC_RUNTIME_DIR``,
``$TMPDIR/mirec-serve-*``, removed when it exits) holding::

    owner.json          written first: the supervisor's pid, host and start time. A supervisor
                        killed by -9 cannot remove its directory; the next ``mirec serve
                        --workers N`` does, once that pid and every worker's are gone
    serving.json        what the fleet serves: generation, bundle path, version, time (atomic)
    generation          the same generation as 8 bytes, mapped into every worker's memory (a
                        request reads it: no system call)
    workers/<pid>.json  what each worker serves: generation, bundle, version, loaded_at
    reload.lock         one reload at a time across the workers (``flock``)
    metrics/            ``PROMETHEUS_MULTIPROC_DIR``: every worker's metrics, summed by /metrics

A reload (``POST /admin/reload`` to any worker, or SIGHUP to the supervisor, which hands it to
one worker) runs in one worker: load and verify the bundle (a refused one changes nothing),
publish the next generation, swap, then wait until every live worker reports that generation.
Every worker watches the generation (a thread, every 50 ms) and swaps when it grows; a request
that reaches a worker behind the published generation waits for that worker's swap, so no
request that starts after the publication is answered from the old bundle. A worker started
later (uvicorn replaces one that died) loads the bundle serving.json names, not the first one.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import json
import logging
import mmap
import os
import shutil
import signal
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirec.io import atomic_write_json
from mirec.serve.service import Live

if TYPE_CHECKING:
    from mirec.serve.recommender import Recommender

log = logging.getLogger("mirec")

SERVING, GENERATION, WORKERS, OWNER = "serving.json", "generation", "workers", "owner.json"
RUNTIME_PREFIX = "mirec-serve-"
LOCK, METRICS = "reload.lock", "metrics"
RUNTIME_ENV, TIMEOUT_ENV = "MIREC_RUNTIME_DIR", "MIREC_RELOAD_TIMEOUT"


class FleetTimeout(Exception):
    """A published reload that some worker had not loaded in time (a server-side 504)."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def read_serving(runtime: Path) -> dict[str, Any]:
    return json.loads((runtime / SERVING).read_text())


def _publish(runtime: Path, generation: int, bundle: str | Path, version: str,
             counter: mmap.mmap | None = None) -> None:
    """serving.json first (atomic), then the mapped counter: a worker that sees the counter
    grow finds at least that generation in the file."""
    atomic_write_json(runtime / SERVING, {"generation": generation, "bundle": str(bundle),
                                          "version": version, "time": iso(time.time())})
    if counter is not None:
        struct.pack_into("<Q", counter, 0, generation)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has the pid now
        return False
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from the state on (state [0], start time [19]); None
    when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not: an orphan may stay one where nothing reaps it)
    and, with ``started`` (its start time in clock ticks since boot), is that same process.
    Without ``/proc``: whether the pid exists, another user's counting as running."""
    if not Path("/proc/self/stat").is_file():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError):
            return True
        return True
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in "ZX" and (started is None or int(fields[19]) == started)


# ---- the runtime directory ---------------------------------------------------------------------


def make_runtime() -> Path:
    """A new private runtime directory, ``owner.json`` written in it first: what tells a later
    supervisor that mirec made it, and whether its owner still runs."""
    runtime = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX))
    me = _proc_stat(os.getpid())
    atomic_write_json(runtime / OWNER, {"pid": os.getpid(), "host": socket.gethostname(),
                                        "started": int(me[19]) if me else None})
    return runtime


def _is_stale(runtime: Path) -> bool:
    """Whether ``runtime`` is the directory of a supervisor that died without removing it: a
    real directory of this user holding mirec's ``owner.json`` (from this host) whose
    supervisor and workers all stopped. Anything else (no owner.json, another user's, another
    host's, a pid still running) is not."""
    try:
        st = runtime.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        owner = runtime / OWNER
        if not stat.S_ISREG(owner.lstat().st_mode):
            return False
        info = json.loads(owner.read_text())
        pid, host, started = int(info["pid"]), info["host"], info["started"]
        workers = [int(p.stem) for p in (runtime / WORKERS).glob("*.json")]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or _running(pid, None if started is None else int(started)):
        return False
    return not any(_running(w) for w in workers)


def sweep_runtimes() -> list[Path]:
    """Remove the runtime directories that supervisors killed by -9 left in ``$TMPDIR``
    (:func:`_is_stale`); returns them."""
    removed = []
    for runtime in Path(tempfile.gettempdir()).glob(RUNTIME_PREFIX + "*"):
        if _is_stale(runtime):
            shutil.rmtree(runtime, ignore_errors=True)
            removed.append(runtime)
            log.info("removed %s: its supervisor (killed) is gone", runtime)
    return removed


# ---- the supervisor ----------------------------------------------------------------------------


def serve_fleet(app: str, bundle: str | Path, version: str, workers: int, host: str, port: int,
                reload_timeout: float = 60.0, uvicorn_options: dict[str, Any] | None = None) -> None:
    """Run ``workers`` uvicorn processes of the factory ``app`` over one runtime directory
    (created here, removed at exit; those of supervisors killed by -9 are removed first) that
    starts at ``bundle`` (its ``version``), generation 0. ``uvicorn_options``: more
    ``uvicorn.Config`` settings (the proxy ones of ``--trusted-proxies``)."""
    sweep_runtimes()
    runtime = make_runtime()
    try:
        (runtime / WORKERS).mkdir()
        (runtime / METRICS).mkdir()
        (runtime / GENERATION).write_bytes(bytes(8))
        _publish(runtime, 0, bundle, version)
        # before any worker imports prometheus_client (workers are spawned: fresh interpreters)
        os.environ.update({RUNTIME_ENV: str(runtime), TIMEOUT_ENV: str(reload_timeout),
                           "PROMETHEUS_MULTIPROC_DIR": str(runtime / METRICS)})
        _supervise(app, runtime, workers, host, port, uvicorn_options or {})
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _supervise(app: str, runtime: Path, workers: int, host: str, port: int,
               options: dict[str, Any]) -> None:
    """uvicorn's multiprocess supervisor (as ``uvicorn.run(workers=N)``) with one change:
    SIGHUP reloads through one worker (the fleet's reload: the bundle last reloaded, verified,
    every worker swapped) instead of restarting every worker from the starting settings."""
    import uvicorn
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            started = {int(p.stem) for p in (runtime / WORKERS).glob("*.json")}  # handler installed
            for p in self.processes:
                if p.pid in started and p.process.is_alive():
                    os.kill(p.pid, signal.SIGHUP)
                    return
            log.error("SIGHUP: no worker is ready to reload; nothing reloaded")

    config = uvicorn.Config(app, factory=True, workers=workers, host=host, port=port,
                            log_level="warning", **options)
    sock = config.bind_socket()
    try:
        Supervisor(config, sockets=[sock]).run()
    finally:
        sock.close()


# ---- a worker ----------------------------------------------------------------------------------


class FleetLive(Live):
    """A worker's :class:`Live` that follows the fleet: :meth:`reload` reloads every worker,
    a thread swaps this one when another worker publishes, :meth:`current` holds a request
    until this worker serves the published generation."""

    def __init__(self, rec: Recommender, runtime: Path, generation: int, timeout_s: float = 60.0,
                 every_s: float = 0.05) -> None:
        super().__init__(rec)
        self.runtime, self.generation, self.timeout_s, self.every_s = runtime, generation, timeout_s, every_s
        self.pid = os.getpid()
        self.failed: str | None = None  # why this worker could not load the published bundle
        self._wake = threading.Event()
        with open(runtime / GENERATION, "r+b") as f:
            self._counter = mmap.mmap(f.fileno(), 8)

    @classmethod
    def open(cls, runtime: Path, load: Callable[[str], Recommender], timeout_s: float = 60.0) -> FleetLive:
        """A worker's start: the bundle serving.json names (the one last reloaded)."""
        serving = read_serving(runtime)
        return cls(load(serving["bundle"]), runtime, serving["generation"], timeout_s)

    def start(self) -> None:
        """Report this worker (the supervisor then sends it SIGHUP) and follow the fleet."""
        self._write_status()
        atexit.register(self._leave)
        threading.Thread(target=self._watch, name="mirec-fleet-watch", daemon=True).start()

    def published(self) -> int:
        return struct.unpack_from("<Q", self._counter, 0)[0]

    # ---- reload: one worker loads, publishes and waits for the others ---------------------

    def reload(self, bundle: str | Path | None = None) -> Recommender:
        """Load and verify ``bundle`` (default: the one serving.json names), publish it, swap,
        and return once every live worker serves it. A refused bundle raises and changes
        nothing; :class:`FleetTimeout` when some worker was not done in ``timeout_s``."""
        with self._flock():
            with self.lock:
                serving = read_serving(self.runtime)
                new = self.load(bundle if bundle is not None else serving["bundle"])
                generation = max(serving["generation"], self.published(), self.generation) + 1
                _publish(self.runtime, generation, new.bundle.path, new.bundle.version, self._counter)
                self._swap_to(new, generation)
            self.wait_for(generation)
        return new

    def wait_for(self, generation: int) -> list[dict]:
        """Every live worker's status once all report ``generation``."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            statuses = self.workers()
            behind = [s["pid"] for s in statuses if s["generation"] < generation]
            if not behind:
                return statuses
            if time.monotonic() > deadline:
                raise FleetTimeout(f"generation {generation} is published, but worker(s) "
                                   f"{', '.join(map(str, behind))} have not loaded it after "
                                   f"{self.timeout_s:g} s (requests there wait for it)")
            time.sleep(0.02)

    def workers(self) -> list[dict]:
        """The status of every live worker, by pid; those of dead workers are swept (their
        live gauges too)."""
        out = []
        for path in sorted((self.runtime / WORKERS).glob("*.json")):
            pid = int(path.stem)
            if not _alive(pid):
                _forget(self.runtime, pid)
                continue
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # gone just now
                continue
        return out

    # ---- following the fleet ----------------------------------------------------------------

    async def current(self) -> bool:
        """Hold a request until this worker serves the published generation (False when it
        cannot: its load failed, or ``timeout_s`` passed)."""
        if self.published() <= self.generation:
            return True
        self._wake.set()
        deadline = time.monotonic() + self.timeout_s
        while self.published() > self.generation:
            if self.failed or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    def _watch(self) -> None:
        while True:
            self._wake.wait(self.every_s)
            self._wake.clear()
            if self.published() > self.generation:
                self._catch_up()

    def _catch_up(self) -> None:
        with self.lock:
            serving = read_serving(self.runtime)
            if serving["generation"] <= self.generation:
                return
            try:
                new = self.load(serving["bundle"])
            except Exception as e:  # noqa: BLE001  this worker cannot serve what the fleet serves
                self._fail(serving, e)
                return
            self._swap_to(new, serving["generation"])

    def _fail(self, serving: dict, e: Exception) -> None:
        """Stop this worker (uvicorn starts another, which loads the published bundle) rather
        than serve another bundle than the fleet; its waiting requests get a 503."""
        self.failed = f"could not load {serving['bundle']} (generation {serving['generation']}): {e}"
        log.error("worker %d %s; restarting it", self.pid, self.failed)
        self._write_status()
        os.kill(self.pid, signal.SIGTERM)

    def _swap_to(self, new: Recommender, generation: int) -> None:
        self.swap(new)
        self.generation = generation  # after the swap: a request let through sees the new rec
        self._write_status()

    def status(self) -> dict:
        b = self.rec.bundle
        return {"pid": self.pid, "generation": self.generation, "bundle": str(b.path),
                "version": b.version, "loaded_at": iso(self.loaded_at), "error": self.failed}

    def _write_status(self) -> None:
        atomic_write_json(self.runtime / WORKERS / f"{self.pid}.json", self.status())

    def _leave(self) -> None:
        _forget(self.runtime, self.pid)

    @contextmanager
    def _flock(self) -> Iterator[None]:
        with open(self.runtime / LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _forget(runtime: Path, pid: int) -> None:
    """A worker is gone: its status file and its live gauges go with it."""
    from prometheus_client import multiprocess

    (runtime / WORKERS / f"{pid}.json").unlink(missing_ok=True)
    if (runtime / METRICS).is_dir():
        multiprocess.mark_process_dead(pid, str(runtime / METRICS))


class ServedBy:
    """ASGI middleware: every response names the bundle that served it (``X-Mirec-Bundle``:
    its version); under a fleet a request first waits until its worker serves the published
    generation (503 when that worker cannot)."""

    def __init__(self, app: Any, live: Live) -> None:
        self.app, self.live = app, live

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        live = self.live
        if isinstance(live, FleetLive) and not await live.current():
            body = json.dumps({"detail": f"this worker is not serving the published bundle yet "
                                         f"({live.failed or 'still loading'}); retry"}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        version = live.rec.bundle.version.encode()

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-mirec-bundle", version)]
            await send(message)

        await self.app(scope, receive, send_with_header)
