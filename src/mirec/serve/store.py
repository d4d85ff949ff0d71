"""Real-time history: a durable store of each user's recent events (SQLite, WAL mode).

``POST /events`` appends here; the next recommendation for that user reads the stored events
and runs the user tower on them, with no retraining. One table ``events(seq, user_id, item_id,
ts)``; ``seq`` (an autoincrementing key) keeps the arrival order of events with equal
timestamps. Each append is one transaction committed with ``synchronous=FULL``, so an event
acknowledged to a client survives a crash of the server. Ids are the source's raw ids.
With ``keep`` set (``mirec serve --keep-events N``) each append also drops the user's events
beyond the newest ``keep``, in the same transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

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


class EventStore:
    """Append-only per-user event log in one SQLite file (safe to share between threads)."""

    def __init__(self, path: str | Path, keep: int | None = None, create: bool = True) -> None:
        """``create``: make the file (and its directory) when missing; otherwise a missing
        store is an error (``mirec recommend --store`` only reads)."""
        self.path = Path(path)
        if keep is not None and keep < 1:
            raise MirecConfigError(f"--keep-events: must be >= 1, got {keep}")
        self.keep = keep
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise MirecDataError(f"{self.path}: no such event store (`mirec serve --store` creates one)")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise MirecDataError(f"{self.path}: not a usable SQLite event store ({e})") from None

    def append(self, user_id: str, events: list[tuple[str, int | None]]) -> int:
        """Store ``(item_id, timestamp or None)`` events of one user atomically; returns how
        many. A missing timestamp is the current time in seconds."""
        now = int(time.time())
        rows = [(user_id, item, now if ts is None else int(ts)) for item, ts in events]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO events (user_id, item_id, ts) VALUES (?, ?, ?)", rows)
                if self.keep is not None:
                    self._db.execute(PRUNE, (user_id, user_id, self.keep))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(rows)

    def history(self, user_id: str, limit: int) -> list[str]:
        """The user's last ``limit`` item ids, oldest first (by timestamp, then arrival)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                (user_id, limit)).fetchall()
        return [r[0] for r in reversed(rows)]

    def count(self, user_id: str | None = None) -> int:
        with self._lock:
            if user_id is None:
                return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?",
                                    (user_id,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
