"""Real-time history: a durable store of each user's recent events.

``POST /events`` appends here; the next recommendation for that user reads the stored events
and runs the user tower on them, with no retraining. Two backends keep one interface
(:class:`Store`), picked by :func:`open_store` from the ``--store`` spec:

* a file path: :class:`EventStore`, one SQLite file in WAL mode (the embedded default; one
  host, any number of worker processes);
* a ``postgresql://`` URL: :class:`mirec.serve.pgstore.PostgresStore`, a PostgreSQL database
  that servers on several hosts share.

One table ``events(seq, user_id, item_id, ts)``; ``seq`` (an autoincrementing key) keeps the
arrival order of events with equal timestamps, and a history is read by ``(ts, seq)``. Each
append is one transaction, committed durably before it returns (SQLite ``synchronous=FULL``,
PostgreSQL's default ``synchronous_commit=on``), so an event acknowledged to a client survives
a crash of the server. Ids are the source's raw ids. With ``keep`` set (``mirec serve
--keep-events N``) each append also drops the user's events beyond the newest ``keep``, in the
same transaction.

Opening a store for serving (``create=True``) makes a write in a transaction it rolls back, so
a store that cannot be written is refused at start (:class:`MirecDataError` /
:class:`MirecConfigError` naming the store); a read or write that fails later (disk full,
database down) raises :class:`StoreUnavailable`, which the HTTP service answers with a 503.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mirec.errors import MirecConfigError, MirecDataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, ts, seq);
"""
# the user's events older than their newest ``keep`` (the order history() reads them in)
PRUNE = """
DELETE FROM events WHERE user_id = ? AND seq NOT IN (
    SELECT seq FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?)
"""
# the highest seq stored (0: none): one descent of the primary key, at any size (``GET /health``)
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM events"
PROBE_USER = ""  # the write probe's user id: never a real one (the HTTP API needs >= 1 character)


class StoreUnavailable(Exception):
    """The store could not be read or written just now (disk full, read-only, database down):
    the HTTP service answers 503 and the event is not acknowledged."""


class Store(Protocol):
    """What serving needs of an event store (both backends keep it)."""

    name: str  # what messages call the store (a PostgreSQL URL without its password)
    keep: int | None

    def append(self, user_id: str, events: list[tuple[str, int | None]]) -> int:
        """Store ``(item_id, timestamp or None)`` events of one user in one committed
        transaction; returns how many. A missing timestamp is the current time in seconds."""

    def history(self, user_id: str, limit: int) -> list[str]:
        """The user's last ``limit`` item ids, oldest first (by timestamp, then arrival)."""

    def count(self, user_id: str | None = None) -> int:
        """Stored events (of one user, or all): reads them all (not for health probes)."""

    def last_seq(self) -> int:
        """The highest ``seq`` stored, 0 when none: read from the primary key index, so as cheap
        on a billion events as on ten (``GET /health`` reports it)."""

    def events_since(self, seq: int = 0) -> Iterator[tuple[int, str, str, int]]:
        """Every stored ``(seq, user_id, item_id, ts)`` with ``seq`` above ``seq``, in arrival
        order, streamed (one snapshot of the store, read on a connection of its own)."""

    def close(self) -> None: ...


def check_keep(keep: int | None) -> None:
    if keep is not None and keep < 1:
        raise MirecConfigError(f"--keep-events: must be >= 1, got {keep}")


def stamped(user_id: str, events: list[tuple[str, int | None]]) -> list[tuple[str, str, int]]:
    """``(user_id, item_id, ts)`` rows, a missing timestamp being now (seconds)."""
    now = int(time.time())
    return [(user_id, item, now if ts is None else int(ts)) for item, ts in events]


class EventStore:
    """Append-only per-user event log in one SQLite file (safe to share between threads)."""

    def __init__(self, path: str | Path, keep: int | None = None, create: bool = True) -> None:
        """``create``: make the file (and its directory) when missing and check that it can be
        written; otherwise a missing store is an error (``mirec recommend --store`` only reads)."""
        self.path = Path(path)
        self.name = str(self.path)
        check_keep(keep)
        self.keep = keep
        if self.path.is_dir():
            raise MirecDataError(f"{self.path}: is a directory, not an event store file")
        if not create and not self.path.is_file():
            raise MirecDataError(f"{self.path}: no such event store (`mirec serve --store` creates one)")
        self._lock = threading.Lock()
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect() if create else self._connect_read_only()
            if create:
                self._probe()
        except (sqlite3.Error, OSError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise MirecDataError(f"{self.path}: not a usable (writable) SQLite event store "
                                 f"({reason})") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that writes nothing of its own: no schema, no journal-mode change (a
        store given to read from, e.g. ``mirec data append``, may be a file mirec did not
        write); refused unless it holds mirec's ``events`` table. Not SQLite's ``mode=ro``: on
        a WAL store that leaves ``-shm``/``-wal`` files behind, which a read-write connection
        removes when it is the last to close."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        except BaseException:
            db.close()
            raise
        if not {"seq", "user_id", "item_id", "ts"} <= columns:
            db.close()
            raise MirecDataError(f"{self.path}: not a mirec event store (no table "
                                 f"events(seq, user_id, item_id, ts))")
        return db

    def _probe(self) -> None:
        """A write (and a prune when ``keep`` is set) rolled back: raises if the file, its
        directory (the WAL lives beside it) or the disk refuses it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT INTO events (user_id, item_id, ts) VALUES (?, '', 0)", (PROBE_USER,))
            if self.keep is not None:
                self._db.execute(PRUNE, (PROBE_USER, PROBE_USER, self.keep))
        finally:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _failed(self, e: sqlite3.Error) -> StoreUnavailable:
        return StoreUnavailable(f"event store {self.path}: {e}")

    def append(self, user_id: str, events: list[tuple[str, int | None]]) -> int:
        """Store ``(item_id, timestamp or None)`` events of one user atomically; returns how
        many. A missing timestamp is the current time in seconds."""
        rows = stamped(user_id, events)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO events (user_id, item_id, ts) VALUES (?, ?, ?)", rows)
                    if self.keep is not None:
                        self._db.execute(PRUNE, (user_id, user_id, self.keep))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as e:
                raise self._failed(e) from e
        return len(rows)

    def history(self, user_id: str, limit: int) -> list[str]:
        """The user's last ``limit`` item ids, oldest first (by timestamp, then arrival)."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT item_id FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                    (user_id, limit)).fetchall()
            except sqlite3.Error as e:
                raise self._failed(e) from e
        return [r[0] for r in reversed(rows)]

    def count(self, user_id: str | None = None) -> int:
        with self._lock:
            try:
                if user_id is None:
                    return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                return self._db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?",
                                        (user_id,)).fetchone()[0]
            except sqlite3.Error as e:
                raise self._failed(e) from e

    def last_seq(self) -> int:
        with self._lock:
            try:
                return self._db.execute(LAST_SEQ).fetchone()[0]
            except sqlite3.Error as e:
                raise self._failed(e) from e

    def events_since(self, seq: int = 0, batch: int = 10_000) -> Iterator[tuple[int, str, str, int]]:
        """Every ``(seq, user_id, item_id, ts)`` with ``seq`` above ``seq``, in arrival order,
        read on a connection of its own (WAL: one snapshot; appends go on meanwhile)."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            cur = db.execute("SELECT seq, user_id, item_id, ts FROM events WHERE seq > ? ORDER BY seq",
                             (seq,))
            while rows := cur.fetchmany(batch):
                yield from rows
        finally:
            db.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---- choosing a backend ----------------------------------------------------------------------


def redact(spec: str | Path) -> str:
    """``spec`` as messages may show it: a URL's password (in the authority or a ``password=``
    parameter) replaced by ``***``."""
    s = str(spec)
    if "://" not in s:
        return s
    u = urlsplit(s)
    netloc = u.netloc
    if u.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = u.query
    if "password=" in query:
        query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(query)], safe="*")
    return urlunsplit((u.scheme, netloc, u.path, query, u.fragment))


def _open_postgres(url: str, keep: int | None, create: bool) -> Store:
    from mirec.serve.pgstore import PostgresStore  # psycopg is imported only for this backend

    return PostgresStore(url, keep, create)


# URL scheme -> opener(spec, keep, create); "" is a file path (SQLite)
BACKENDS: dict[str, Callable[[str, int | None, bool], Store]] = {
    "": EventStore,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}


def open_store(spec: str | Path, keep: int | None = None, create: bool = True) -> Store:
    """The event store ``spec`` names: a SQLite file path or a ``postgresql://`` URL.
    ``keep``: per-user retention; ``create=False``: the store must exist (reading only)."""
    s = str(spec)
    scheme = urlsplit(s).scheme.lower() if "://" in s else ""
    if scheme not in BACKENDS:
        known = ", ".join(f"{k}://" for k in BACKENDS if k)
        raise MirecConfigError(f"--store {redact(s)}: unknown scheme {scheme!r} (a SQLite file path "
                               f"or one of {known})")
    check_keep(keep)
    return BACKENDS[scheme](s, keep, create)
