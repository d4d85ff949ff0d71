"""Atomic writes: every artefact appears whole or not at all.

Files are written to a temporary sibling and moved into place with ``os.replace``; directories
are built in a temporary sibling directory and renamed. A crash mid-write leaves at most a
``.tmp-*`` sibling, never a half-written artefact under the final name; the next write to the
same name removes such a sibling once its writer is gone (:func:`drop_stale_tmp`).

A file ``--out`` (a Parquet file of recommendations, a PNG) never replaces a file mirec did not
write (:func:`check_output_file`): mirec marks its own files inside them (a Parquet key-value
entry, a PNG text chunk; :func:`written_by_mirec`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirec.errors import MirecConfigError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- temporary siblings -----------------------------------------------------------------------

STALE_AFTER_S = 24 * 3600  # a temporary sibling untouched this long is stale, whoever wrote it
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def tmp_sibling(final: Path) -> Path:
    """A new temporary name beside ``final``: ``.NAME.tmp-HOST-PID-RANDOM`` (HOST: 8 hex digits of
    this machine's name), so a later run can tell whether its writer is still alive."""
    return final.parent / f".{final.name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(6)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid beyond the system's: kept, to be safe)
    return True


def is_stale_tmp(path: Path, final_name: str) -> bool:
    """Whether ``path`` is a temporary sibling of ``final_name`` that mirec's atomic writers made
    and whose writer is gone: the pid in its name is not running on this machine, or (a name
    from another machine or from before pids were in names) it is untouched for
    :data:`STALE_AFTER_S`. Any other name is never stale."""
    m = re.fullmatch(rf"\.{re.escape(final_name)}\.tmp-(?:([0-9a-f]{{8}})-(\d+)-)?[0-9a-z_]+",
                     path.name)
    if m is None:
        return False
    if m.group(1) == _HOST and not _alive(int(m.group(2))):
        return True
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_S


def drop_stale_tmp(final: Path) -> list[Path]:
    """Remove the temporary siblings of ``final`` that a killed writer left (:func:`is_stale_tmp`);
    returns what was removed. Nothing else is touched: only names of mirec's own pattern."""
    removed = []
    if not final.parent.is_dir():
        return removed
    for p in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        if not is_stale_tmp(p, final.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (by any means); when the block succeeds it
    is fsynced and moved over ``path``, on an exception it is removed. Stale temporary siblings
    of ``path`` that killed writers left are removed first."""
    path = Path(path)
    if path.is_dir():
        raise MirecConfigError(f"{path}: is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_stale_tmp(path)
    tmp = tmp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchmod(fd, 0o644)  # whatever the umask: artefacts are meant to be shared
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + fsync + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@dataclass(frozen=True)
class Kind:
    """A kind of directory artefact, known by its marker file: a JSON object whose ``format``
    field is ``format`` (``meta.json`` of a data set, ``manifest.json`` of a bundle)."""

    marker: str
    format: str
    what: str  # for messages: "data set", "bundle"


DATASET = Kind("meta.json", "mirec.dataset", "data set")
BUNDLE = Kind("manifest.json", "mirec.bundle", "bundle")


def is_artefact(path: Path, kind: Kind) -> bool:
    """Whether directory ``path`` holds a marker saying mirec wrote it as a ``kind``."""
    try:
        return json.loads((path / kind.marker).read_text()).get("format") == kind.format
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(final: str | Path, kind: Kind | None = None,
                     may_hold: Callable[[Path], bool] | None = None) -> Path:
    """Refuse an output directory whose contents mirec did not write, before any work.

    The rule: ``final`` may be missing, an empty directory, or a directory mirec wrote as the
    same ``kind`` (its marker file says so) or that ``may_hold`` accepts; anything else (a
    file, the current directory or one above it, a directory with other files) is refused
    with one line naming it, so that no ``--out`` can delete what mirec did not write.
    Returns ``final`` made absolute.
    """
    final = Path(final).absolute()
    where = final.resolve()
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        raise MirecConfigError(f"--out {final}: is the current directory or one above it; "
                               f"give a new directory, e.g. --out {final / 'out'}")
    if not final.exists() and not final.is_symlink():
        return final
    if not final.is_dir():
        raise MirecConfigError(f"--out {final}: exists and is not a directory; give a new path")
    if not any(final.iterdir()):
        return final
    if kind is not None and is_artefact(final, kind):
        return final
    if may_hold is not None and may_hold(final):
        return final
    what = f"a mirec {kind.what}" if kind else "written by mirec"
    raise MirecConfigError(f"--out {final}: directory exists and is not {what} (it would be "
                           f"replaced); give a new or empty directory")


@contextlib.contextmanager
def atomic_dir(final: str | Path, kind: Kind | None = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` when the block exits without error.

    On an exception the temporary directory is removed and ``final`` is untouched. ``final``
    must pass :func:`check_output_dir` (missing, empty, or a ``kind`` artefact mirec wrote):
    that old directory is moved aside, the new one renamed into place, and only then is the
    old one deleted. The directory gets the umask's mode, like its files' parents would.
    """
    final = check_output_dir(final, kind)  # absolute: "." has a name and a parent
    final.parent.mkdir(parents=True, exist_ok=True)
    drop_stale_tmp(final)
    tmp = tmp_sibling(final)
    tmp.mkdir()  # not mkdtemp: its 0700 would hide the artefact's 0644 files from others
    old = final.parent / f".{final.name}.old-{secrets.token_hex(6)}"
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)  # the new one could not take its place: keep the old one
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---- single files: never replace one mirec did not write --------------------------------------

WRITER = "mirec"  # the value of the marks below
PARQUET_KEY = b"written_by"  # a Parquet file's key-value metadata entry: b"mirec"
PNG_KEY = "Software"  # a PNG text chunk: "mirec"
_PNG = b"\x89PNG\r\n\x1a\n"


def parquet_mark(schema: Any) -> Any:
    """``schema`` (a pyarrow schema) with the key-value entry that marks a file mirec wrote."""
    return schema.with_metadata({**(schema.metadata or {}), PARQUET_KEY: WRITER.encode()})


def _png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG before its image data (where writers put them)."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(8) != _PNG:
            return out
        while len(head := f.read(8)) == 8:
            size, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND") or size > 1 << 20:
                break
            body = f.read(size + 4)[:size]
            if kind == b"tEXt" and b"\0" in body:
                key, _, value = body.partition(b"\0")
                out[key.decode("latin-1")] = value.decode("latin-1")
    return out


def written_by_mirec(path: str | Path) -> bool:
    """Whether ``path`` is a file mirec marked as its own: a Parquet file whose key-value
    metadata has ``written_by: mirec`` or a PNG with the text chunk ``Software: mirec``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic[:4] == b"PAR1":
            import pyarrow.parquet as pq

            return (pq.read_metadata(path).metadata or {}).get(PARQUET_KEY) == WRITER.encode()
        if magic == _PNG:
            return _png_text(path).get(PNG_KEY) == WRITER
    except (OSError, ValueError, struct.error):
        return False
    return False


def check_output_file(path: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse to replace a file mirec did not write, before any work.

    ``path`` may be missing, or a file mirec wrote (:func:`written_by_mirec`); with
    ``overwrite`` any file. Anything else (a directory, a file of the user's) is refused with
    one line naming it, and stays as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise MirecConfigError(f"{option} {path}: is a directory; give a file name")
    if (not path.exists() and not path.is_symlink()) or overwrite or written_by_mirec(path):
        return path
    raise MirecConfigError(f"{option} {path}: a file mirec did not write exists there (it would be "
                           f"replaced); give a new file name, or --overwrite to replace it")
