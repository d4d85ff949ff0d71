"""Download public data sets, verify them, and prepare them (``mirec fetch``).

:data:`DATASETS` maps a name to a :class:`DatasetSpec`: where its files live, which archive
members to read, which loader reads them, and how each download is verified. :func:`fetch`
downloads into a cache, extracts what is needed into a temporary directory, calls the loader
and :func:`mirec.data.prepare.build_dataset`.

Verification, in order of preference:

1. a digest pinned in the spec (only ever one computed from the real file);
2. a digest the publisher serves next to the file (GroupLens: ``<zip>.md5``);
3. a digest the caller passes (``checksum="sha256:<hex>"``);
4. none (Amazon, Taobao publish none): the file is used and its SHA-256 recorded in
   ``FetchResult.details`` and in the data set's ``meta.json`` (``source.fetch``).

Downloads stream to a temporary sibling of the cache file while hashing; the file is renamed
into place only when complete and verified, so the cache never holds a partial or unverified
file. A ``<file>.verified.json`` sidecar records its digests; a cached file is reused only
when its SHA-256 still matches the sidecar (no network needed).

Sources and fallback. Each spec lists its sources in the order ``source="auto"`` tries them;
a later source is tried only when an earlier one is *unavailable* (connection refused, DNS
failure, timeout, HTTP error: :class:`SourceUnavailableError`). A checksum mismatch is never
papered over by a fallback: it raises at once. ``ml-100k`` has two sources:

- ``grouplens``: ``https://files.grouplens.org/datasets/movielens/ml-100k.zip`` (+ ``.md5``);
- ``recbole-wheel``: the copy of ML-100K shipped inside the ``recbole==1.2.1`` wheel on PyPI
  (``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}``, RecBole atomic files).
  The wheel is fetched with ``python -m pip download`` (it reaches PyPI through whatever
  index/proxy pip is configured for), its SHA-256 is checked against the pinned digest, and
  each member's SHA-256 is checked against the wheel's ``RECORD``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mirec.data.prepare import PrepareConfig, RawLog, build_dataset
from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import DATASET, atomic_write_json, check_output_dir, sha256_file

Log = Callable[[str], None]
Digest = tuple[str, str]  # (algorithm, hex digest), e.g. ("md5", "0e33...")

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
AMAZON_2014 = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
CHUNK = 1 << 20


class SourceUnavailableError(MirecDataError):
    """A source could not be reached or refused the request (the fallback may try another)."""


@dataclass(frozen=True)
class Artifact:
    """One file to download.

    ``role``: the name the loader knows it by. ``filename``: its name on the server and in the
    cache. ``kind``: ``"zip"`` (must be a zip archive; ``members`` are extracted), ``"file"``
    (used as is) or ``"zip-or-file"`` (detected). ``members``: archive paths that must be
    present (the first is the one the loader is pointed at); ``optional_members``: extracted
    when present. ``digest``: a pinned ``(algo, hex)``; ``digest_suffix``: the suffix of a
    published digest file next to it (``".md5"``).
    """

    role: str
    filename: str
    kind: Literal["zip", "file", "zip-or-file"] = "file"
    members: tuple[str, ...] = ()
    optional_members: tuple[str, ...] = ()
    digest: Digest | None = None
    digest_suffix: str | None = None


@dataclass(frozen=True)
class WheelSource:
    """A data set copy shipped inside a wheel on PyPI, verified by the wheel's RECORD."""

    requirement: str
    filename: str
    sha256: str  # of the wheel file, computed from the real file
    dist_info: str
    members: tuple[str, ...]
    folder: str  # the extracted members go into <tmp>/<folder>/


@dataclass(frozen=True)
class DatasetSpec:
    """A fetchable data set."""

    name: str
    description: str
    loader: Callable[[Mapping[str, Path], str, Mapping[str, Any]], RawLog]
    artifacts: tuple[Artifact, ...]
    host: str  # the download source's name, e.g. "grouplens"
    base_url: str | None  # None: no public URL, the caller must pass one
    no_url_hint: str = ""
    wheel: WheelSource | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        """Sources in the order ``source="auto"`` tries them."""
        return (self.host,) + (("recbole-wheel",) if self.wheel else ())


@dataclass
class FetchResult:
    """What :func:`fetch` did: the prepared directory, the source used, and the details."""

    path: Path
    source_used: str
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# loaders (imported lazily: they are only needed once a file is at hand)


def _load_movielens(files: Mapping[str, Path], on_bad_rows: str,
                    options: Mapping[str, Any]) -> RawLog:
    from mirec.data.movielens import load_movielens

    return load_movielens(files["archive"].parent, on_bad_rows=on_bad_rows, **options)


def _load_recbole(files: Mapping[str, Path], on_bad_rows: str,
                  options: Mapping[str, Any]) -> RawLog:
    from mirec.data.atomic import load_recbole

    return load_recbole(files["atomic"].parent, on_bad_rows=on_bad_rows, **options)


def _load_amazon(files: Mapping[str, Path], on_bad_rows: str,
                 options: Mapping[str, Any]) -> RawLog:
    from mirec.data.amazon import load_amazon

    return load_amazon(files["ratings"], files.get("meta"), on_bad_rows=on_bad_rows, **options)


def _load_taobao(files: Mapping[str, Path], on_bad_rows: str,
                 options: Mapping[str, Any]) -> RawLog:
    from mirec.data.taobao import load_taobao

    return load_taobao(files["events"], on_bad_rows=on_bad_rows, **options)


def _movielens(name: str, folder: str, members: tuple[str, ...],
               optional: tuple[str, ...] = (), description: str = "",
               wheel: WheelSource | None = None) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        description=description or f"MovieLens {name[3:].upper()} (GroupLens)",
        loader=_load_movielens,
        artifacts=(Artifact(
            role="archive", filename=f"{name}.zip", kind="zip",
            members=tuple(f"{folder}/{m}" for m in members),
            optional_members=tuple(f"{folder}/{m}" for m in optional),
            digest_suffix=".md5",
        ),),
        host="grouplens",
        base_url=GROUPLENS,
        wheel=wheel,
    )


RECBOLE_ML100K = WheelSource(
    requirement="recbole==1.2.1",
    filename="recbole-1.2.1-py3-none-any.whl",
    # sha256 of recbole-1.2.1-py3-none-any.whl as downloaded from PyPI by pip
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    dist_info="recbole-1.2.1.dist-info",
    members=tuple(f"recbole/dataset_example/ml-100k/ml-100k.{ext}"
                  for ext in ("inter", "item", "user")),
    folder="ml-100k",
)

_ML_CSV = ("ratings.csv", "movies.csv")

DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": _movielens("ml-100k", "ml-100k", ("u.data", "u.item", "u.user"),
                          ("u.genre", "u.occupation"), wheel=RECBOLE_ML100K),
    "ml-1m": _movielens("ml-1m", "ml-1m", ("ratings.dat", "movies.dat", "users.dat")),
    "ml-10m": _movielens("ml-10m", "ml-10M100K", ("ratings.dat", "movies.dat"),
                         description="MovieLens 10M100K (GroupLens)"),
    "ml-20m": _movielens("ml-20m", "ml-20m", _ML_CSV),
    "ml-25m": _movielens("ml-25m", "ml-25m", _ML_CSV),
    "ml-32m": _movielens("ml-32m", "ml-32m", _ML_CSV),
    "amazon-books": DatasetSpec(
        name="amazon-books",
        description="Amazon Books 2014 ratings-only CSV + metadata (McAuley lab); no published "
                    "checksum. For the 2018 release pass base_url/url to its files.",
        loader=_load_amazon,
        artifacts=(Artifact(role="ratings", filename="ratings_Books.csv"),
                   Artifact(role="meta", filename="meta_Books.json.gz")),
        host="mcauley-lab",
        base_url=AMAZON_2014,
    ),
    "taobao": DatasetSpec(
        name="taobao",
        description="Taobao UserBehavior.csv (Alibaba, Tianchi data set 649); needs a login.",
        loader=_load_taobao,
        artifacts=(Artifact(role="events", filename="UserBehavior.csv.zip",
                            kind="zip-or-file", members=("UserBehavior.csv",)),),
        host="tianchi",
        base_url=None,
        no_url_hint=(
            "taobao: Tianchi requires a login, so there is no default download URL; download "
            "UserBehavior.csv(.zip) from https://tianchi.aliyun.com/dataset/649 and pass its "
            "local path (--local), or pass a download link you obtained with --url"
        ),
    ),
}


# --------------------------------------------------------------------------------------------
# downloading


def _hasher(algo: str) -> Any:
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
        hashers.setdefault(expected[0].lower(), _hasher(expected[0].lower()))
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
    size = _hasher(algo).digest_size * 2
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


def _published_digest(url: str, art: Artifact, timeout: float) -> Digest:
    assert art.digest_suffix
    algo = art.digest_suffix.lstrip(".").lower()
    durl = url + art.digest_suffix
    with _open(durl, timeout) as resp:
        try:
            text = resp.read(1 << 16).decode("utf-8", "replace")
        except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise SourceUnavailableError(f"download {durl}: {e!r}") from e
    try:
        return algo, parse_digest_file(text, art.filename, algo)
    except ValueError as e:
        raise MirecDataError(f"{durl}: no {algo} digest found for {art.filename} in "
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


def _obtain(art: Artifact, url: str, cache: Path, extra: Digest | None, progress: bool,
            timeout: float, log: Log) -> tuple[Path, dict[str, Any]]:
    """The cached, verified file for ``art`` (downloaded when not cached); and its record."""
    dest = cache / art.filename
    rec = _cached(dest, log)
    pinned = art.digest or extra
    if rec is not None and (pinned is None or
                            rec["digests"].get(pinned[0].lower()) == pinned[1].lower()):
        log(f"using cached {dest} (sha256 verified)")
        return dest, {**rec, "cached": True}
    if pinned is not None:
        expected, how = pinned, f"pinned {pinned[0]}"
    elif art.digest_suffix:
        expected = _published_digest(url, art, timeout)
        how = f"{expected[0]} published at {url}{art.digest_suffix}"
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


# --------------------------------------------------------------------------------------------
# extraction


def _find_member(zf: zipfile.ZipFile, member: str) -> str | None:
    names = zf.namelist()
    if member in names:
        return member
    tail = [n for n in names if n.endswith("/" + member)]
    return tail[0] if len(tail) == 1 else None


def _extract(zf: zipfile.ZipFile, name: str, dest: Path, label: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(name) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise MirecDataError(f"{label}: member {name} is corrupt: {e}") from e


def _materialise(art: Artifact, path: Path, tmp: Path) -> Path:
    """The path the loader reads for ``art``: the file itself, or its extracted first member."""
    is_zip = zipfile.is_zipfile(path)
    if art.kind == "file" or (art.kind == "zip-or-file" and not is_zip):
        return path
    if not is_zip:
        raise MirecDataError(f"{path}: not a zip archive (expected {art.filename} from the "
                             f"source); delete it and fetch again")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise MirecDataError(f"{path}: not a readable zip archive: {e}") from e
    with zf:
        first: Path | None = None
        for member in art.members + art.optional_members:
            found = _find_member(zf, member)
            if found is None:
                if member in art.optional_members:
                    continue
                raise MirecDataError(f"{path}: archive member {member} not found")
            target = tmp / member
            _extract(zf, found, target, str(path))
            first = first or target
    assert first is not None
    return first


# --------------------------------------------------------------------------------------------
# the recbole wheel fallback


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


def _wheel(ws: WheelSource, cache_dir: Path, wheel_path: Path | None, timeout: float,
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


def _extract_wheel_members(ws: WheelSource, wheel: Path, tmp: Path) -> Path:
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


# --------------------------------------------------------------------------------------------
# fetch


def _parse_checksum(checksum: str | None) -> Digest | None:
    if checksum is None:
        return None
    algo, sep, hexd = checksum.partition(":")
    if not sep or not re.fullmatch(r"[0-9a-fA-F]+", hexd):
        raise MirecConfigError(f"checksum: expected 'algo:hexdigest', got {checksum!r}")
    if len(hexd) != _hasher(algo.lower()).digest_size * 2:
        raise MirecConfigError(f"checksum: {hexd!r} is not a {algo} digest")
    return algo.lower(), hexd.lower()


def _urls(spec: DatasetSpec, base_url: str | None, url: str | None) -> list[str]:
    if url is not None:
        if len(spec.artifacts) != 1:
            raise MirecConfigError(
                f"url: {spec.name} has {len(spec.artifacts)} files "
                f"({', '.join(a.filename for a in spec.artifacts)}); pass base_url instead")
        return [url]
    base = base_url or spec.base_url
    if base is None:
        raise MirecConfigError(spec.no_url_hint or f"{spec.name}: no download URL; pass url")
    return [f"{base.rstrip('/')}/{a.filename}" for a in spec.artifacts]


def _local_files(spec: DatasetSpec, local: Path) -> list[Path]:
    if local.is_dir():
        paths = [local / a.filename for a in spec.artifacts]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise MirecDataError(f"{local}: no {', '.join(missing)} in this directory")
        return paths
    if not local.is_file():
        raise MirecDataError(f"{local}: no such file or directory")
    if len(spec.artifacts) != 1:
        raise MirecConfigError(f"local: {spec.name} needs "
                               f"{', '.join(a.filename for a in spec.artifacts)}; "
                               f"pass the directory holding them")
    return [local]


def _prepare(spec: DatasetSpec, raw: RawLog, out: Path, cfg: PrepareConfig,
             provenance: dict[str, Any]) -> Path:
    raw = dataclasses.replace(raw, source={**raw.source, "fetch": provenance})
    return build_dataset(raw, out, cfg)


def _counts(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "meta.json").read_text())["counts"]["after_k_core"]
    except (OSError, ValueError, KeyError):
        return {}


def fetch(
    name: str,
    out: str | Path,
    cache_dir: str | Path,
    base_url: str | None = None,
    prepare_cfg: PrepareConfig | None = None,
    *,
    source: str = "auto",
    url: str | None = None,
    local: str | Path | None = None,
    checksum: str | None = None,
    wheel_path: str | Path | None = None,
    loader_options: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    log: Log | None = None,
) -> FetchResult:
    """Download (or reuse from ``cache_dir``), verify and prepare the data set ``name`` in ``out``.

    ``base_url``: replaces the directory the spec's files are downloaded from (a mirror; tests).
    ``url``: the full URL of a single-file data set (Taobao). ``local``: a local copy instead of
    a download (a file, or a directory holding the spec's file names). ``checksum``:
    ``"algo:hex"`` the (single) downloaded file must match. ``source``: ``"auto"`` (try
    ``DATASETS[name].sources`` in order, moving on only when a source is unavailable) or one of
    them (e.g. ``"grouplens"``, ``"recbole-wheel"``). ``wheel_path``: a local wheel for the
    ``recbole-wheel`` source instead of ``pip download``. ``loader_options``: extra keyword
    arguments for the loader (Taobao: ``behaviors``). ``log``: called with progress messages.
    """
    log = log or (lambda _msg: None)
    if name not in DATASETS:
        raise MirecConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    cfg = prepare_cfg or PrepareConfig()
    cfg.validate()
    check_output_dir(out, DATASET)  # before any download
    out, cache_dir = Path(out), Path(cache_dir)
    options = dict(loader_options or {})
    extra = _parse_checksum(checksum)
    if extra is not None and len(spec.artifacts) != 1:
        raise MirecConfigError(f"checksum: {name} has several files; a single checksum is "
                               f"ambiguous")
    if source != "auto" and source not in spec.sources:
        raise MirecConfigError(f"source: {name} has sources {', '.join(spec.sources)} "
                               f"(or 'auto'), got {source!r}")
    if local is not None:
        return _fetch_local(spec, Path(local), out, cfg, options, log)
    order = spec.sources if source == "auto" else (source,)
    attempts: list[dict[str, str | None]] = []
    for i, src in enumerate(order):
        try:
            if src == spec.host:
                result = _fetch_download(spec, out, cache_dir, base_url, url, extra, cfg,
                                         options, timeout, progress, log)
            else:
                assert spec.wheel is not None
                wp = Path(wheel_path) if wheel_path is not None else None
                result = _fetch_wheel(spec, spec.wheel, out, cache_dir, wp, cfg, options,
                                      timeout, log)
        except SourceUnavailableError as e:
            attempts.append({"source": src, "error": str(e)})
            if i + 1 < len(order):
                log(f"{src} unavailable ({e}); falling back to {order[i + 1]}")
                continue
            if len(attempts) == 1:
                raise
            raise SourceUnavailableError(
                f"{name}: every source failed: "
                + "; ".join(f"{a['source']}: {a['error']}" for a in attempts)) from e
        result.details["attempts"] = attempts + [{"source": src, "error": None}]
        return result
    raise AssertionError("unreachable")


def _fetch_download(spec: DatasetSpec, out: Path, cache_dir: Path, base_url: str | None,
                    url: str | None, extra: Digest | None, cfg: PrepareConfig,
                    options: dict[str, Any], timeout: float, progress: bool,
                    log: Log) -> FetchResult:
    urls = _urls(spec, base_url, url)
    cache = cache_dir / spec.name
    records: dict[str, dict[str, Any]] = {}
    paths: list[Path] = []
    for art, u in zip(spec.artifacts, urls, strict=True):
        if url is not None:
            # a user-supplied URL: cache under its own file name (or the spec's)
            fname = Path(urllib.parse.urlsplit(u).path).name or art.filename
            art = dataclasses.replace(art, filename=fname)
        path, rec = _obtain(art, u, cache, extra, progress, timeout, log)
        records[art.filename] = {**rec, "path": str(path)}
        paths.append(path)
    source_used = f"{spec.host}: {', '.join(urls)}"
    if all(r["cached"] for r in records.values()):
        source_used += " (cached)"
    provenance = {"source": source_used, "files": {
        k: {"url": r["url"], "sha256": r["digests"]["sha256"],
            "verified_against": r["verified_against"]} for k, r in records.items()}}
    path = _load_and_build(spec, paths, cache_dir, out, cfg, options, provenance, log)
    return FetchResult(path, source_used, {"name": spec.name, "files": records,
                                           "counts": _counts(path)})


def _load_and_build(spec: DatasetSpec, paths: list[Path], scratch: Path, out: Path,
                    cfg: PrepareConfig, options: dict[str, Any], provenance: dict[str, Any],
                    log: Log) -> Path:
    """Extract what the loader needs into a temporary directory under ``scratch``, load, build."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.extract-", dir=scratch) as t:
        tmp = Path(t)
        files = {art.role: _materialise(art, p, tmp / art.role)
                 for art, p in zip(spec.artifacts, paths, strict=True)}
        log(f"reading {spec.name}")
        raw = spec.loader(files, cfg.on_bad_rows, options)
        log(f"preparing {out}")
        return _prepare(spec, raw, out, cfg, provenance)


def _fetch_local(spec: DatasetSpec, local: Path, out: Path, cfg: PrepareConfig,
                 options: dict[str, Any], log: Log) -> FetchResult:
    paths = _local_files(spec, local)
    shas = {str(p): sha256_file(p) for p in paths}
    source_used = f"local: {', '.join(str(p) for p in paths)} (not verified)"
    provenance = {"source": source_used, "files": {k: {"sha256": v} for k, v in shas.items()}}
    path = _load_and_build(spec, paths, out.parent, out, cfg, options, provenance, log)
    return FetchResult(path, source_used, {"name": spec.name, "files": shas,
                                           "counts": _counts(path)})


def _fetch_wheel(spec: DatasetSpec, ws: WheelSource, out: Path, cache_dir: Path,
                 wheel_path: Path | None, cfg: PrepareConfig, options: dict[str, Any],
                 timeout: float, log: Log) -> FetchResult:
    wheel, pinned_ok = _wheel(ws, cache_dir, wheel_path, timeout, log)
    source_used = f"{ws.requirement} wheel ({wheel}), RECORD hashes verified"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.wheel-", dir=cache_dir) as t:
        first = _extract_wheel_members(ws, wheel, Path(t))
        log(f"reading {spec.name} from {wheel}")
        raw = _load_recbole({"atomic": first}, cfg.on_bad_rows, options)
        provenance = {"source": source_used, "wheel_sha256": sha256_file(wheel),
                      "wheel_sha256_pinned_match": pinned_ok, "members": list(ws.members)}
        path = _prepare(spec, raw, out, cfg, provenance)
    return FetchResult(path, source_used, {"name": spec.name, "wheel": str(wheel),
                                           "wheel_sha256_pinned_match": pinned_ok,
                                           "counts": _counts(path)})
