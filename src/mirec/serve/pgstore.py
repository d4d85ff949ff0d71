"""The PostgreSQL event store: one database that servers on several hosts share.

``mirec serve --store postgresql://user@host/db`` (:func:`mirec.serve.store.open_store`). Same
table and semantics as the SQLite store (:mod:`mirec.serve.store`): ``seq`` is an identity
column, so histories are read by ``(ts, seq)``; each append is one transaction, acknowledged
after its commit (durable with PostgreSQL's default ``synchronous_commit=on``; a session that
finds it ``off`` turns it on); retention runs in the same transaction, serialised per user by
an advisory lock so that two servers appending for one user keep exactly the newest ``keep``.

Connections come from a pool (psycopg_pool), shared by the request threads; the history read
of every ``/recommend`` is a prepared statement. A read that fails on a connection the
database closed (a restart, a failover) checks the pool and is retried once; a failed append
is never retried (it may have committed): the caller gets :class:`StoreUnavailable` (HTTP 503)
and the client retries. Give the password by ``PGPASSWORD`` or ``~/.pgpass`` rather than in
the URL (command lines show in ``ps``); messages print the URL without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from mirec.errors import MirecConfigError, MirecDataError
from mirec.serve.store import LAST_SEQ, PROBE_USER, StoreUnavailable, redact, stamped

T = TypeVar("T")

TABLE = """
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts BIGINT NOT NULL
)"""
INDEX = "CREATE INDEX IF NOT EXISTS events_user ON events (user_id, ts, seq)"
SCHEMA_LOCK = 0x6D69726563  # advisory lock key: two servers creating the table at once
INSERT = "INSERT INTO events (user_id, item_id, ts) VALUES (%s, %s, %s)"
LOCK_USER = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
PRUNE = """
DELETE FROM events WHERE user_id = %s AND seq NOT IN (
    SELECT seq FROM events WHERE user_id = %s ORDER BY ts DESC, seq DESC LIMIT %s)"""
HISTORY = "SELECT item_id FROM events WHERE user_id = %s ORDER BY ts DESC, seq DESC LIMIT %s"
POOL_MIN, POOL_MAX = 2, 16  # connections per server process (uvicorn's threadpool shares them)
POOL_TIMEOUT = 10.0  # seconds a request waits for a connection before a 503
CONNECT_TIMEOUT = 10  # seconds


def _reason(e: Exception) -> str:
    return " ".join(str(e).split())


def _durable(conn: psycopg.Connection) -> None:
    """Acknowledged means committed and flushed: refuse a session default of ``off``."""
    if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
        conn.execute("SET synchronous_commit = on")


class PostgresStore:
    """Append-only per-user event log in a PostgreSQL table (safe to share between threads
    and between processes on any number of hosts)."""

    def __init__(self, url: str, keep: int | None = None, create: bool = True) -> None:
        """``create``: make the table when missing and check that it can be written (a probe
        rolled back); otherwise the table must exist (``mirec recommend --store`` only reads)."""
        self.url, self.name, self.keep = url, redact(url), keep
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                self._prepare(conn, create)
        except psycopg.OperationalError as e:
            raise MirecConfigError(f"--store {self.name}: cannot connect ({_reason(e)})") from None
        except psycopg.Error as e:
            raise MirecConfigError(f"--store {self.name}: not a usable (writable) event store "
                                   f"({_reason(e)})") from None
        self._pool = ConnectionPool(url, min_size=POOL_MIN, max_size=POOL_MAX, timeout=POOL_TIMEOUT,
                                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
                                    configure=_durable, name="mirec-events", open=True)

    def _prepare(self, conn: psycopg.Connection, create: bool) -> None:
        exists = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()[0]
        if not create:
            if not exists:
                raise MirecDataError(f"--store {self.name}: no events table (`mirec serve --store` "
                                     "creates one)")
            return
        if not exists:  # (a role that may only read and write an existing table never gets here)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                conn.execute(TABLE)
                conn.execute(INDEX)
        with conn.transaction(force_rollback=True):  # the probe: insert (and prune) rights
            conn.execute(INSERT, (PROBE_USER, "", 0))
            if self.keep is not None:
                conn.execute(PRUNE, (PROBE_USER, PROBE_USER, self.keep))

    def _run(self, work: Callable[[psycopg.Connection], T], retry: bool) -> T:
        """``work`` on a pooled connection; database errors become StoreUnavailable. With
        ``retry`` (reads only) a broken connection is replaced and ``work`` runs once more."""
        for attempt in range(2 if retry else 1):
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as e:
                self._pool.check()  # drop every connection the database closed
                if attempt == 1 or not retry:
                    raise StoreUnavailable(f"event store {self.name}: {_reason(e)}") from e
            except psycopg.Error as e:
                raise StoreUnavailable(f"event store {self.name}: {_reason(e)}") from e
        raise AssertionError("unreachable")

    def append(self, user_id: str, events: list[tuple[str, int | None]]) -> int:
        """Store ``(item_id, timestamp or None)`` events of one user in one transaction,
        committed before it returns; returns how many."""
        if "\x00" in user_id:
            raise MirecDataError(f"user_id {user_id[:100]!r}: contains U+0000, which a PostgreSQL "
                                 "event store cannot hold")
        rows = stamped(user_id, events)

        def write(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cur:
                if self.keep is not None:
                    cur.execute(LOCK_USER, (user_id,), prepare=True)
                cur.executemany(INSERT, rows)
                if self.keep is not None:
                    cur.execute(PRUNE, (user_id, user_id, self.keep), prepare=True)

        self._run(write, retry=False)
        return len(rows)

    def history(self, user_id: str, limit: int) -> list[str]:
        """The user's last ``limit`` item ids, oldest first (by timestamp, then arrival)."""
        if "\x00" in user_id:  # cannot have been stored
            return []
        rows = self._run(lambda conn: conn.execute(HISTORY, (user_id, limit), prepare=True).fetchall(),
                         retry=True)
        return [r[0] for r in reversed(rows)]

    def count(self, user_id: str | None = None) -> int:
        if user_id is None:
            return self._run(lambda c: c.execute("SELECT count(*) FROM events").fetchone()[0], retry=True)
        if "\x00" in user_id:
            return 0
        return self._run(lambda c: c.execute("SELECT count(*) FROM events WHERE user_id = %s",
                                             (user_id,)).fetchone()[0], retry=True)

    def last_seq(self) -> int:
        return self._run(lambda c: c.execute(LAST_SEQ, prepare=True).fetchone()[0], retry=True)

    def events_since(self, seq: int = 0, batch: int = 10_000) -> Iterator[tuple[int, str, str, int]]:
        """Every ``(seq, user_id, item_id, ts)`` with ``seq`` above ``seq``, in arrival order,
        streamed by a server-side cursor on a connection of its own (one snapshot). Appends
        still in flight when it starts may commit later with a lower ``seq``: a reader that
        resumes from the last ``seq`` it saw should start a little before it."""
        try:
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as e:
            raise StoreUnavailable(f"event store {self.name}: {_reason(e)}") from e
        with conn, conn.cursor(name="mirec_events_since") as cur:
            cur.itersize = batch
            cur.execute("SELECT seq, user_id, item_id, ts FROM events WHERE seq > %s ORDER BY seq", (seq,))
            yield from cur

    def close(self) -> None:
        self._pool.close()
