"""A throwaway PostgreSQL server on loopback for the tests and benchmarks (no set-up needed;
imported as ``bench.pg``).

:func:`start` runs ``initdb`` and ``pg_ctl start`` from the PostgreSQL binaries it finds
(``$MIREC_PG_BIN``, ``pg_config --bindir``, the newest ``/usr/lib/postgresql/*/bin``, or
``initdb`` on the PATH) in a fresh temporary directory, listening on a free port of 127.0.0.1
only (no Unix socket), password authentication for the superuser ``mirec``. ``initdb``
refuses to run as root: as root, the server runs as an unprivileged system user (``postgres``,
else ``nobody``) that owns the directory. :class:`Unavailable` says why none could be started
(the tests then skip with that reason).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PASSWORD = "mirec-test-secret"
USER = "mirec"


class Unavailable(Exception):
    """No PostgreSQL server can be started here (the reason is the message)."""


def _bindir() -> Path:
    candidates = [os.environ.get("MIREC_PG_BIN", "")]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                         reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise Unavailable("no PostgreSQL binaries (initdb, pg_ctl) found: set MIREC_PG_BIN or install "
                      "postgresql")


def _account() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise Unavailable("running as root and no unprivileged user (postgres, nobody) to run "
                      "PostgreSQL as (initdb refuses root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One running server; :meth:`stop` stops it and removes its directory."""

    def __init__(self, bindir: Path, root: Path, port: int, account: pwd.struct_passwd | None) -> None:
        self.bindir, self.root, self.port, self.account = bindir, root, port, account
        self.data = root / "data"

    def url(self, database: str = "postgres", user: str = USER, password: str | None = PASSWORD) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kw = {}
        if self.account is not None:
            kw = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.root, **kw)

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.account is not None:
            for p in (self.root, pwfile):
                os.chown(p, self.account.pw_uid, self.account.pw_gid)
        p = self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        if p.returncode != 0:
            raise Unavailable(f"initdb failed: {(p.stderr or p.stdout).strip()[-500:]}")
        self.restart()

    def restart(self) -> None:
        """(Re)start on the same port and data (after :meth:`stop_server`)."""
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
                "-c max_connections=200 -c shared_buffers=32MB")
        p = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                      "-o", opts, "start")
        if p.returncode != 0:
            log = (self.root / "log").read_text()[-800:] if (self.root / "log").exists() else ""
            raise Unavailable(f"pg_ctl start failed: {(p.stderr or p.stdout).strip()[-300:]} {log}")

    def stop_server(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def stop(self) -> None:
        self.stop_server()
        shutil.rmtree(self.root, ignore_errors=True)

    def admin(self):
        """A psycopg connection as the superuser to the ``postgres`` database (autocommit)."""
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start() -> PgServer:
    """A running throwaway server (raises :class:`Unavailable` with the reason otherwise)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed") from None
    bindir = _bindir()
    account = _account()
    root = Path(tempfile.mkdtemp(prefix="mirec-pg-"))  # /tmp: the account can reach it
    server = PgServer(bindir, root, free_port(), account)
    try:
        server.start()
    except (Unavailable, OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(str(e)) from None
    return server
