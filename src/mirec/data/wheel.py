"""The wheel fallback: a data set copy shipped inside a wheel on PyPI.

ML-100K is also shipped inside the ``recbole==1.2.1`` wheel
(``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}``, RecBole atomic files). The wheel
is fetched with ``python -m pip download`` (it reaches PyPI through whatever index or proxy pip
is configured for), its SHA-256 is checked against the pinned digest, and each member's SHA-256
against the wheel's ``RECORD``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from mirec.data.download import CHUNK, Log, SourceUnavailableError
from mirec.errors import MirecDataError
from mirec.io import sha256_file


@dataclass(frozen=True)
class WheelSource:
    """A data set copy shipped inside a wheel on PyPI, verified by the wheel's RECORD."""

    requirement: str
    filename: str
    sha256: str  # of the wheel file, computed from the real file
    dist_info: str
    members: tuple[str, ...]
    folder: str  # the extracted members go into <tmp>/<folder>/
    source: str = "recbole"  # the registry source that reads the members


def _urlsafe_sha256(data_hash: bytes) -> str:
    return base64.urlsafe_b64encode(data_hash).rstrip(b"=").decode("ascii")


def _pip_download(ws: WheelSource, wheels: Path, timeout: float, log: Log) -> Path:
    """Download the wheel with pip into ``wheels`` (atomically) and return its path."""
    wheels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=wheels))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--timeout", f"{timeout:g}",
               ws.requirement, "-d", str(tmp)]
        log(f"downloading {ws.requirement} wheel with pip into {wheels}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=max(600.0, timeout))
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SourceUnavailableError(f"pip download {ws.requirement} failed: {e}") from e
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise SourceUnavailableError(
                f"pip download {ws.requirement} failed (exit {proc.returncode}): "
                + " | ".join(tail))
        got = tmp / ws.filename
        if not got.is_file():
            raise MirecDataError(f"pip download {ws.requirement}: expected {ws.filename} in "
                                 f"{tmp}, found {sorted(p.name for p in tmp.iterdir())}")
        final = wheels / ws.filename
        os.replace(got, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def obtain_wheel(ws: WheelSource, cache_dir: Path, wheel_path: Path | None, timeout: float,
           log: Log) -> tuple[Path, bool]:
    """The wheel to read and whether its sha256 matched the pinned one."""
    if wheel_path is not None:
        if not wheel_path.is_file():
            raise MirecDataError(f"wheel {wheel_path}: no such file")
        return wheel_path, sha256_file(wheel_path) == ws.sha256
    cached = cache_dir / "wheels" / ws.filename
    if cached.is_file():
        if sha256_file(cached) == ws.sha256:
            log(f"using cached {cached} (sha256 verified)")
            return cached, True
        log(f"cached {cached} does not match the pinned sha256; downloading again")
        cached.unlink()
    got = _pip_download(ws, cache_dir / "wheels", timeout, log)
    actual = sha256_file(got)
    if actual != ws.sha256:
        got.unlink()
        raise MirecDataError(f"{ws.requirement} wheel from pip: sha256 mismatch: expected "
                             f"{ws.sha256}, got {actual}; the file was discarded")
    return got, True


def _read_record(zf: zipfile.ZipFile, wheel: Path, ws: WheelSource) -> dict[str, tuple[str, str]]:
    rec_name = f"{ws.dist_info}/RECORD"
    try:
        text = zf.read(rec_name).decode("utf-8")
    except KeyError as e:
        raise MirecDataError(f"wheel {wheel}: no {rec_name}") from e
    out: dict[str, tuple[str, str]] = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2:
            out[row[0]] = (row[1], row[2] if len(row) > 2 else "")
    return out


def extract_members(ws: WheelSource, wheel: Path, tmp: Path) -> Path:
    """Extract ``ws.members`` into ``tmp/<folder>``, verifying each against RECORD."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise MirecDataError(f"wheel {wheel}: not a readable zip archive: {e}") from e
    folder = tmp / ws.folder
    folder.mkdir(parents=True, exist_ok=True)
    with zf:
        record = _read_record(zf, wheel, ws)
        first: Path | None = None
        for member in ws.members:
            if member not in record:
                raise MirecDataError(f"wheel {wheel}: member {member} not listed in "
                                     f"{ws.dist_info}/RECORD")
            hash_field, size_field = record[member]
            algo, _, want = hash_field.partition("=")
            if algo != "sha256" or not want:
                raise MirecDataError(f"wheel {wheel}: member {member}: RECORD has no sha256 "
                                     f"hash ({hash_field!r})")
            target = folder / member.rsplit("/", 1)[-1]
            h = hashlib.sha256()
            n = 0
            try:
                with zf.open(member) as src, open(target, "wb") as out:
                    while block := src.read(CHUNK):
                        h.update(block)
                        out.write(block)
                        n += len(block)
            except KeyError as e:
                raise MirecDataError(f"wheel {wheel}: member {member} missing") from e
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise MirecDataError(f"wheel {wheel}: member {member} is corrupt: {e}") from e
            got = _urlsafe_sha256(h.digest())
            if got != want or (size_field.isdigit() and int(size_field) != n):
                raise MirecDataError(
                    f"wheel {wheel}: member {member}: sha256 {got} ({n} bytes) does not match "
                    f"RECORD sha256 {want} ({size_field or '?'} bytes)")
            first = first or target
    assert first is not None
    return first
