"""Atomic writes: every artefact appears whole or not at all.

Files are written to a temporary sibling and moved into place with ``os.replace``; directories
are built in a temporary sibling directory and renamed. A crash mid-write leaves at most a
``.tmp-*`` sibling, never a half-written artefact under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (by any means); when the block succeeds it
    is fsynced and moved over ``path``, on an exception it is removed."""
    path = Path(path)
    if path.is_dir():
        raise MirecConfigError(f"{path}: is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp creates 0600; artefacts are meant to be shared
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
    tmp = final.parent / f".{final.name}.tmp-{secrets.token_hex(6)}"
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
