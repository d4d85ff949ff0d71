"""Downloads verified by checksum, and a cache of verified files.

Verification, in order of preference:

1. a digest pinned in the catalogue (only ever one computed from the real file);
2. a digest the publisher serves next to the file (GroupLens: ``<zip>.md5``);
3. a digest the caller passes (``checksum="sha256:<hex>"``);
4. none (Amazon, Taobao publish none): the file is used and its SHA-256 recorded.

Downloads stream to a temporary sibling of the cache file while hashing; the file is renamed
into place only when complete and verified, so the cache never holds a partial or unverified
file. A ``<file>.verified.json`` sidecar records its digests; a cached file is reused only
when its SHA-256 still matches the sidecar (no network needed). Unreachable hosts, timeouts
and HTTP errors raise :class:`SourceUnavailableError` (the fetch may fall back to another
source); a checksum mismatch raises :class:`MirecDataError` (never papered over).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import atomic_write_json, sha256_file

Log = Callable[[str], None]
Digest = tuple[str, str]  # (algorithm, hex digest), e.g. ("md5", "0e33...")
CHUNK = 1 << 20


class SourceUnavailableError(MirecDataError):
    """A source could not be reached or refused the request (the fallback may try another)."""


def hasher(algo: str) -> Any:
    try:
        return hashlib.new(algo)
    except (ValueError, TypeError) as e:
        raise MirecConfigError(f"checksum: unknown hash algorithm {algo!r}") from e


def _open(url: str, timeout: float) -> Any:
    from mirec import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"mirec/{__version__}"})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise SourceUnavailableError(f"download {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise SourceUnavailableError(f"cannot reach {url}: {e.reason}") from e
    except TimeoutError as e:
        raise SourceUnavailableError(f"cannot reach {url}: no response in {timeout:g} s") from e
    except (ConnectionError, http.client.HTTPException) as e:
        raise SourceUnavailableError(f"cannot reach {url}: {e!r}") from e


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise MirecConfigError(f"url: only http(s) URLs can be downloaded, got {url!r}")


def _download(url: str, dest: Path, expected: Digest | None, progress: bool,
              timeout: float) -> dict[str, str]:
    """Stream ``url`` to ``dest``; return ``{algo: hex}`` (always ``sha256``, plus ``expected``'s)."""
    _check_scheme(url)
    hashers = {"sha256": hashlib.sha256()}
    if expected is not None:
        hashers.setdefault(expected[0].lower(), hasher(expected[0].lower()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    resp = _open(url, timeout)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with resp, os.fdopen(fd, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            n = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, disable=None if progress else True, leave=False) as bar:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except TimeoutError as e:
                        raise SourceUnavailableError(
                            f"download {url}: stalled, no data for {timeout:g} s "
                            f"after {n} bytes") from e
                    except (ConnectionError, http.client.HTTPException) as e:
                        raise SourceUnavailableError(
                            f"download {url}: connection lost after {n} bytes: {e!r}") from e
                    if not block:
                        break
                    f.write(block)
                    for h in hashers.values():
                        h.update(block)
                    n += len(block)
                    bar.update(len(block))
            if total is not None and n != total:
                raise SourceUnavailableError(
                    f"download {url}: truncated, got {n} of {total} bytes")
            f.flush()
            os.fsync(f.fileno())
        digests = {algo: h.hexdigest() for algo, h in hashers.items()}
        if expected is not None:
            algo, want = expected[0].lower(), expected[1].lower()
            if digests[algo] != want:
                raise MirecDataError(
                    f"download {url}: {algo} mismatch: expected {want}, got {digests[algo]} "
                    f"({n} bytes); the file was discarded")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return digests


def download(url: str, dest: str | Path, expected: Digest | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest``.

    The body streams in 1 MiB chunks to a temporary file in ``dest``'s directory, hashed on the
    way. With ``expected=(algo, hexdigest)`` a mismatch raises :class:`MirecDataError` naming the
    URL and both digests. On any failure the temporary file is removed and ``dest`` is left as it
    was; ``dest`` is replaced only by a complete, verified file. ``timeout`` (seconds) bounds
    the connection and each read. Unreachable hosts, timeouts and HTTP errors raise
    :class:`SourceUnavailableError` naming the URL and the reason.
    """
    dest = Path(dest)
    _download(url, dest, expected, progress, timeout)
    return dest


_HEX = re.compile(r"\b[0-9a-fA-F]{32,128}\b")


def parse_digest_file(text: str, filename: str, algo: str) -> str:
    """The hex digest of ``filename`` in a checksum file (BSD ``MD5 (f) = hex`` or ``hex  f``)."""
    size = hasher(algo).digest_size * 2
    found: list[str] = []
    for line in text.splitlines():
        hexes = [h for h in _HEX.findall(line) if len(h) == size]
        if not hexes:
            continue
        if filename in line:
            return hexes[0].lower()
        found.append(hexes[0].lower())
    if len(found) == 1:
        return found[0]
    raise ValueError(f"no {algo} digest for {filename}")


def _published_digest(url: str, filename: str, suffix: str, timeout: float) -> Digest:
    """The digest of ``filename`` published at ``url + suffix`` (``.md5``: an MD5 file)."""
    algo = suffix.lstrip(".").lower()
    durl = url + suffix
    with _open(durl, timeout) as resp:
        try:
            text = resp.read(1 << 16).decode("utf-8", "replace")
        except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise SourceUnavailableError(f"download {durl}: {e!r}") from e
    try:
        return algo, parse_digest_file(text, filename, algo)
    except ValueError as e:
        raise MirecDataError(f"{durl}: no {algo} digest found for {filename} in "
                             f"{text[:200]!r}") from e


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _cached(path: Path, log: Log) -> dict[str, Any] | None:
    """The sidecar record of a cached file whose SHA-256 still matches it, else None."""
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        return None
    try:
        rec = json.loads(side.read_text())
        want = rec["digests"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if sha256_file(path) != want:
        log(f"cached {path} does not match its recorded sha256; downloading again")
        return None
    return rec


def obtain(url: str, dest: Path, pinned: Digest | None, digest_suffix: str | None,
           progress: bool, timeout: float, log: Log) -> tuple[Path, dict[str, Any]]:
    """The cached, verified file ``dest`` (downloaded from ``url`` when not cached) and its
    record. ``pinned``: the digest it must have; ``digest_suffix``: where one is published."""
    rec = _cached(dest, log)
    if rec is not None and (pinned is None or
                            rec["digests"].get(pinned[0].lower()) == pinned[1].lower()):
        log(f"using cached {dest} (sha256 verified)")
        return dest, {**rec, "cached": True}
    if pinned is not None:
        expected, how = pinned, f"pinned {pinned[0]}"
    elif digest_suffix:
        expected = _published_digest(url, dest.name, digest_suffix, timeout)
        how = f"{expected[0]} published at {url}{digest_suffix}"
    else:
        expected, how = None, "none (no published checksum)"
    log(f"downloading {url}")
    digests = _download(url, dest, expected, progress, timeout)
    rec = {"url": url, "digests": digests, "verified_against": how,
           "bytes": dest.stat().st_size}
    atomic_write_json(_sidecar(dest), rec)
    if expected is None:
        log(f"{dest.name}: no checksum published; recorded sha256 {digests['sha256']}")
    return dest, {**rec, "cached": False}


def parse_checksum(checksum: str | None) -> Digest | None:
    """``"algo:hex"`` -> ``(algo, hex)``; a :class:`MirecConfigError` when malformed."""
    if checksum is None:
        return None
    algo, sep, hexd = checksum.partition(":")
    if not sep or not re.fullmatch(r"[0-9a-fA-F]+", hexd):
        raise MirecConfigError(f"checksum: expected 'algo:hexdigest', got {checksum!r}")
    if len(hexd) != hasher(algo.lower()).digest_size * 2:
        raise MirecConfigError(f"checksum: {hexd!r} is not a {algo} digest")
    return algo.lower(), hexd.lower()
