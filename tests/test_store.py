"""The event store over both backends: SQLite files and a real PostgreSQL server.

The PostgreSQL server is started by the suite on loopback (``pg_server`` in conftest.py,
bench/pg.py); the tests that need it skip, with the reason, where none can be started. The
behavioural tests run over both backends; the process tests start ``mirec serve`` for real.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from bench.processes import CLI, crash_run, start_server, wait_until_serving
from mirec.errors import MirecConfigError, MirecDataError
from mirec.serve.recommender import Recommender
from mirec.serve.store import EventStore, StoreUnavailable, open_store, redact
from tests import test_serve as shared
from tests.test_serve_reliability import one_error

run, bundle_dir, bundle = shared.run, shared.bundle_dir, shared.bundle
Server, exact = shared.Server, shared.exact


@pytest.fixture(params=["sqlite", "postgresql"])
def spec(request, tmp_path) -> str:
    """A fresh store of each backend: a SQLite file path or a PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ev.sqlite")
    return request.getfixturevalue("pg_url")


# ---- one behaviour, two backends -------------------------------------------------------------


def test_history_is_ordered_by_timestamp_then_arrival(spec):
    s = open_store(spec)
    assert s.append("u", [("a", 5), ("b", 5), ("c", 3)]) == 3
    s.append("u", [("d", 5)])
    s.append("v", [("x", 1)])
    assert s.history("u", 10) == ["c", "a", "b", "d"]  # ts 3, then the three ts-5 events by arrival
    assert s.history("u", 2) == ["b", "d"]  # the newest two, oldest first
    assert s.history("nobody", 10) == []
    s.append("u", [("now", None)])  # no timestamp: the current time, so the newest
    assert s.history("u", 1) == ["now"]
    s.close()


def test_retention_keeps_each_users_newest_events(spec):
    s = open_store(spec, keep=3)
    for k in range(5):
        s.append("u", [(f"i{k}", 100 - k)])  # arriving newest-first by timestamp
    s.append("w", [("w0", 1)])
    assert s.history("u", 10) == ["i2", "i1", "i0"]  # the 3 newest by timestamp were kept
    assert s.count("u") == 3 and s.count("w") == 1 and s.count() == 4
    s.close()
    with pytest.raises(MirecConfigError, match="--keep-events"):
        open_store(spec, keep=0)


def test_events_since_yields_every_event_in_arrival_order(spec):
    s = open_store(spec)
    s.append("u", [("a", 9), ("b", 1)])
    s.append("v", [("c", 5)])
    rows = list(s.events_since())
    assert [(u, i, t) for _, u, i, t in rows] == [("u", "a", 9), ("u", "b", 1), ("v", "c", 5)]
    seqs = [q for q, *_ in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert [i for _, _, i, _ in s.events_since(seqs[0])] == ["b", "c"]
    assert list(s.events_since(seqs[-1])) == []
    s.close()


def test_two_stores_on_one_spec_see_each_others_writes(spec):
    """Two servers (two store objects) on the same store: each reads what the other wrote."""
    a, b = open_store(spec), open_store(spec)
    a.append("u", [("x", 1)])
    assert b.history("u", 10) == ["x"]
    b.append("u", [("y", 2)])
    assert a.history("u", 10) == ["x", "y"] and a.count() == b.count() == 2
    a.close()
    b.close()


def test_concurrent_appends_from_threads_all_land(spec):
    s = open_store(spec, keep=1000)

    def write(t: int) -> None:
        for k in range(20):
            s.append(f"u{t % 2}", [(f"{t}-{k}", k)])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.count() == 120 and s.count("u0") == 60
    s.close()


def test_a_store_to_read_must_exist(spec, tmp_path):
    missing = str(tmp_path / "missing.sqlite") if not spec.startswith("postgresql") else spec
    with pytest.raises(MirecDataError, match="no such event store|no events table"):
        open_store(missing, create=False)


# ---- choosing a backend, messages ------------------------------------------------------------


def test_open_store_picks_the_backend_by_scheme(tmp_path):
    assert isinstance(open_store(tmp_path / "ev.sqlite"), EventStore)
    with pytest.raises(MirecConfigError, match="unknown scheme 'mysql'.*postgresql://"):
        open_store("mysql://u:pw@host/db")


def test_redact_hides_the_password():
    assert redact("postgresql://me:s3cret@db:5432/ev") == "postgresql://me:***@db:5432/ev"
    assert redact("postgresql://db/ev?password=s3cret&sslmode=require") == \
        "postgresql://db/ev?password=***&sslmode=require"
    assert redact("postgresql://me@db/ev") == "postgresql://me@db/ev"
    assert redact("runs/ev.sqlite") == "runs/ev.sqlite"


# ---- PostgreSQL: refused at start, failures at run time --------------------------------------


def test_postgres_connection_errors_name_the_store_without_its_password(pg_server):
    from bench.pg import free_port

    bad = pg_server.url(password="wrong-pw")
    with pytest.raises(MirecConfigError) as e:
        open_store(bad)
    msg = str(e.value)
    assert "cannot connect" in msg and "password authentication failed" in msg
    assert "wrong-pw" not in msg and redact(bad) in msg
    down = f"postgresql://mirec:hidden@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(MirecConfigError, match="cannot connect.*refused") as e:
        open_store(down)
    assert "hidden" not in str(e.value)


def _reader(pg_server, url: str, grants: str) -> str:
    """A role allowed only ``grants`` on the events table of ``url``'s database; its URL."""
    db = url.rsplit("/", 1)[1]
    name = f"r_{uuid.uuid4().hex[:12]}"
    with pg_server.admin() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw'")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"GRANT {grants} ON events TO {name}")
    return pg_server.url(db, user=name, password="pw")


def test_postgres_store_that_cannot_be_written_is_refused_at_start(pg_server, pg_url):
    open_store(pg_url).close()  # the table exists
    reader = _reader(pg_server, pg_url, "SELECT")
    with pytest.raises(MirecConfigError, match="not a usable \\(writable\\).*permission denied") as e:
        open_store(reader)
    assert ":***@" in str(e.value)
    s = open_store(reader, create=False)  # reading only (mirec recommend --store) is fine
    assert s.history("u", 5) == []
    s.close()
    with pytest.raises(MirecConfigError, match="permission denied"):  # may insert, not prune
        open_store(_reader(pg_server, pg_url, "SELECT, INSERT"), keep=10)


def test_postgres_write_failure_at_run_time_is_a_503_and_not_acknowledged(pg_server, pg_url, bundle):
    """Permission revoked, then every connection killed (a database restart) while serving:
    /events answers 503 with a JSON detail and stores nothing; reads recover by themselves."""
    import psycopg

    open_store(pg_url).close()  # the table, owned by the superuser
    writer = _reader(pg_server, pg_url, "SELECT, INSERT, DELETE")
    store = open_store(writer)
    item = bundle.raw_id(1)
    with Server(Recommender(bundle, exact(bundle), store)) as client:
        assert client.post("/events", json={"user_id": "u", "events": [{"item_id": item}]}).status_code == 200
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"REVOKE INSERT ON events FROM {writer.split('//')[1].split(':')[0]}")
        r = client.post("/events", json={"user_id": "u", "events": [{"item_id": item}]})
        assert r.status_code == 503 and "permission denied" in r.json()["detail"]
        assert r.headers["retry-after"] == "1" and store.count("u") == 1
        with pytest.raises(StoreUnavailable, match="permission denied"):
            store.append("u", [(item, 1)])
        with pg_server.admin() as conn:  # every connection of the store dropped
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %s", (writer.split("//")[1].split(":")[0],))
        r = client.post("/recommend", json={"user_id": "u", "n": 3})  # a read: retried
        assert r.status_code == 200 and r.json()["history"] == [item]
        with pytest.raises(MirecDataError, match="U\\+0000"):
            store.append("a\x00b", [(item, 1)])
        r = client.post("/events", json={"user_id": "a\x00b", "events": [{"item_id": item}]})
        assert r.status_code == 400 and "user_id" in r.json()["detail"]
    store.close()


@pytest.mark.slow
def test_postgres_server_down_is_a_503_and_recovers(bundle):
    """The database server stopped while serving (a server of its own): /events answers 503
    with a JSON detail and stores nothing; once it is back, the next events are stored."""
    from bench import pg

    try:
        server = pg.start()
    except pg.Unavailable as e:
        pytest.skip(f"no PostgreSQL server could be started: {e}")
    try:
        store = open_store(server.url())
        item = bundle.raw_id(1)
        with Server(Recommender(bundle, exact(bundle), store)) as client:
            assert client.post("/events", json={"user_id": "u", "events": [{"item_id": item}]}).status_code == 200
            server.stop_server()
            r = client.post("/events", json={"user_id": "u", "events": [{"item_id": item}]})
            assert r.status_code == 503 and r.json()["detail"].startswith("event store postgresql://mirec:***@")
            server.restart()
            t = time.time()
            while (r := client.post("/events", json={"user_id": "u", "events": [{"item_id": item}]})).status_code != 200:
                assert r.status_code == 503 and time.time() - t < 30
            assert store.count("u") == 2
        store.close()
    finally:
        server.stop()


# ---- SQLite: refused at start, failures at run time ------------------------------------------


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply: as root (which bypasses them), the
    capabilities to override them are dropped (setpriv)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if not shutil.which("setpriv") or subprocess.run(prefix + ["true"]).returncode != 0:
        pytest.skip("running as root without setpriv: file permissions cannot be tested")
    return prefix


OPEN = "import sys; from mirec.serve.store import open_store; open_store(sys.argv[1])"


@pytest.mark.parametrize("case", ["read-only file", "read-only directory", "directory in place",
                                  "not a database", "read-only parent"])
def test_sqlite_store_that_cannot_be_written_is_refused_at_start(tmp_path, case):
    d = tmp_path / "d"
    d.mkdir()
    path = d / "ev.sqlite"
    if case in ("read-only file", "read-only directory"):
        EventStore(path).close()
        os.chmod(path if case == "read-only file" else d, 0o555)
    elif case == "directory in place":
        path.mkdir()
    elif case == "not a database":
        path.write_text("user,item\n" * 500)
    else:
        os.chmod(d, 0o555)
        path = d / "sub" / "ev.sqlite"
    p = subprocess.run(unprivileged() + [sys.executable, "-c", OPEN, str(path)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    os.chmod(d, 0o755)
    assert p.returncode != 0 and "MirecDataError" in p.stderr, p.stderr
    assert str(path) in p.stderr.splitlines()[-1]


@pytest.mark.slow
def test_mirec_serve_refuses_an_unwritable_store_in_one_line(bundle_dir, tmp_path, pg_server, pg_url):
    """At start, one line naming the store and exit 2: a read-only SQLite file, a PostgreSQL
    role without write rights (password not shown), a wrong password."""
    ro = tmp_path / "ev.sqlite"
    EventStore(ro).close()
    os.chmod(ro, 0o444)
    serve = CLI + ["serve", str(bundle_dir), "--index", "exact", "--store"]
    p = subprocess.run(unprivileged() + serve + [str(ro)], capture_output=True, text=True, timeout=120)
    assert f"{ro}: not a usable (writable) SQLite event store" in one_error(p)
    open_store(pg_url).close()
    reader = _reader(pg_server, pg_url, "SELECT")
    p = subprocess.run(serve + [reader], capture_output=True, text=True, timeout=120)
    assert "permission denied" in one_error(p) and redact(reader) in p.stderr and ":pw@" not in p.stderr
    p = subprocess.run(serve + [pg_server.url(password="nope")], capture_output=True, text=True, timeout=120)
    assert "password authentication failed" in one_error(p) and "nope" not in p.stderr


@pytest.mark.slow
def test_sqlite_disk_full_at_run_time_is_a_503_and_not_acknowledged(bundle_dir, bundle, tmp_path):
    """The server may write only so much (RLIMIT_FSIZE, as a full disk): once the store's WAL
    cannot grow, /events answers 503 with a JSON detail, and exactly the events it
    acknowledged are stored."""
    store = tmp_path / "ev.sqlite"
    EventStore(store).close()
    limit = 256 << 10

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    port = shared.free_port()
    proc = subprocess.Popen(CLI + ["serve", str(bundle_dir), "--port", str(port), "--store", str(store),
                                   "--index", "exact"], preexec_fn=small_disk,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    acked, refused = [], None
    try:
        wait_until_serving(proc, url)
        with httpx.Client(base_url=url, timeout=10) as c:
            for k in range(2000):
                r = c.post("/events", json={"user_id": f"u{k}", "events": [
                    {"item_id": bundle.raw_id(1 + k % (bundle.num_items - 1)), "timestamp": k}]})
                if r.status_code != 200:
                    refused = (k, r)
                    break
                acked.append(f"u{k}")
    finally:
        proc.terminate()
        proc.wait(30)
    assert refused is not None, "the store never filled up"
    k, r = refused
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    assert "full" in r.json()["detail"] or "I/O" in r.json()["detail"], r.text
    with sqlite3.connect(store) as db:
        users = {u for (u,) in db.execute("SELECT user_id FROM events")}
    assert len(acked) > 10 and users == set(acked) and f"u{k}" not in users


# ---- several servers, one PostgreSQL history -------------------------------------------------


@pytest.mark.slow
def test_two_servers_on_one_postgres_store_share_histories(bundle_dir, bundle, pg_url):
    """An event posted to one server is in the history the other uses at its next request."""
    a, url_a = start_server(bundle_dir, pg_url)
    b, url_b = start_server(bundle_dir, pg_url)
    try:
        items = [bundle.raw_id(i) for i in (3, 1, 2)]
        r = httpx.post(f"{url_a}/events", json={"user_id": "fleet-user", "events": [
            {"item_id": i, "timestamp": 7} for i in items]}, timeout=10)
        assert r.status_code == 200 and r.json()["stored"] == 3
        r = httpx.post(f"{url_b}/recommend", json={"user_id": "fleet-user", "n": 5}, timeout=10).json()
        assert r["known_user"] and r["history"] == items
        reader = open_store(pg_url, create=False)
        last = max(q for q, *_ in reader.events_since())  # of the events posted to a
        reader.close()
        assert httpx.get(f"{url_b}/health", timeout=10).json()["last_event_seq"] == last
    finally:
        for p in (a, b):
            p.terminate()
            p.wait(30)


@pytest.mark.slow
def test_kill_9_of_servers_sharing_a_postgres_store_loses_no_acknowledged_event(bundle_dir, bundle, pg_url):
    """bench/fleet_store.py runs the same for 60 s (--duration)."""
    raw = [bundle.raw_id(i) for i in range(1, bundle.num_items)]
    counts = crash_run(bundle_dir, raw, pg_url, seconds=15)
    assert counts["kills"] >= 2 and counts["acknowledged"] > 100 and counts["recommend_ok"] > 20
    assert counts["lost"] == 0


def test_a_store_opened_for_reading_is_never_written(tmp_path):
    """Reading a store (``mirec data append``, ``mirec recommend --store``) must not change the
    file: no schema, no WAL switch. A SQLite file without mirec's events table is refused in
    one line, byte for byte as it was."""
    foreign = tmp_path / "other.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE orders (id INTEGER)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    with pytest.raises(MirecDataError, match="not a mirec event store"):
        open_store(foreign, create=False)
    assert foreign.read_bytes() == before and not list(tmp_path.glob("other.sqlite-*"))

    ours = tmp_path / "events.sqlite"
    s = open_store(ours)
    s.append("u", [("a", 5), ("b", 6)])
    s.close()
    before = ours.read_bytes()
    reader = open_store(ours, create=False)
    assert reader.history("u", 10) == ["a", "b"]
    assert [r[1:] for r in reader.events_since(0)] == [("u", "a", 5), ("u", "b", 6)]
    reader.close()
    assert ours.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.sqlite", "other.sqlite"]


# ---- GET /health: cheap at any size ----------------------------------------------------------


def test_health_reports_the_stores_last_seq(spec, bundle):
    """``last_event_seq`` is the highest seq stored (what an ``events_since`` reader resumes
    from): 0 when empty, then that of the newest event, and it grows by one per event."""
    store = open_store(spec)
    with Server(Recommender(bundle, exact(bundle), store)) as client:
        h = client.get("/health").json()
        assert h["last_event_seq"] == 0 and "events" not in h
        store.append("u", [(bundle.raw_id(1), 5), (bundle.raw_id(2), 3)])
        r = client.post("/events", json={"user_id": "v", "events": [{"item_id": "x"}] * 3})
        assert r.status_code == 200
        last = max(q for q, *_ in store.events_since())
        assert client.get("/health").json()["last_event_seq"] == last == store.last_seq()
        store.append("w", [("y", 1)] * 4)
        assert client.get("/health").json()["last_event_seq"] == last + 4
    store.close()


def _scans(url: str) -> tuple[int, int, int]:
    """(sequential scans, rows they read, index entries read) of the events table so far."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        seq, seq_rows = conn.execute("SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables "
                                     "WHERE relname = 'events'").fetchone()
        idx = conn.execute("SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
                           "WHERE relname = 'events'").fetchone()[0]
    return seq, seq_rows, idx


def test_health_reads_a_large_postgres_store_by_its_index(pg_url, bundle):
    """Load balancers probe /health every second: on a store of 5000 events it must not scan
    the table (``count(*)`` did). The server's own statements are measured, by PostgreSQL's
    statistics of the events table, flushed when the store's connections close."""
    import psycopg

    store = open_store(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE events SET (autovacuum_enabled = false)")  # no index-only count
        conn.execute("INSERT INTO events (user_id, item_id, ts) "
                     "SELECT 'u' || g % 100, 'i' || g % 37, g FROM generate_series(1, 5000) g")
        conn.execute("ANALYZE events")
        last = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    before = _scans(pg_url)
    with Server(Recommender(bundle, exact(bundle), store)) as client:
        for _ in range(5):
            assert client.get("/health").json()["last_event_seq"] == last
    store.close()  # its backends exit and flush their statistics
    t = time.time()
    while (after := _scans(pg_url)) == before and time.time() - t < 30:
        time.sleep(0.2)
    seq_scans, rows_read, index_read = (a - b for a, b in zip(after, before, strict=True))
    assert seq_scans == 0 and rows_read == 0, f"/health scanned the table ({rows_read} rows)"
    assert 5 <= index_read <= 10  # one entry per probe (the newest)
