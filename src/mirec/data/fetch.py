"""Fetch a public data set in one step (``mirec data fetch``): obtain, verify, read, prepare.

The pieces live beside this module: :mod:`mirec.data.catalogue` (what can be fetched, from
where), :mod:`mirec.data.download` (downloads verified by checksum, the cache),
:mod:`mirec.data.wheel` (the ML-100K copy inside the ``recbole`` wheel) and
:mod:`mirec.data.sources` (the registered source that reads the files). :func:`fetch` tries a
data set's sources in order (``source="auto"``); a later source is tried only when an earlier
one is *unavailable* (connection refused, DNS failure, timeout, HTTP error:
:class:`SourceUnavailableError`). A checksum mismatch is never papered over by a fallback: it
raises at once. Extraction happens in a temporary directory, removed afterwards; the prepared
data set's ``meta.json`` records where the files came from (``source.fetch``).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirec.data.catalogue import DATASETS, RECBOLE_ML100K, Artifact, DatasetSpec, materialise
from mirec.data.download import (
    Digest,
    Log,
    SourceUnavailableError,
    download,
    obtain,
    parse_checksum,
    parse_digest_file,
)
from mirec.data.prepare import PrepareConfig, RawLog, build_dataset
from mirec.data.sources import get as get_source
from mirec.data.wheel import WheelSource, extract_members, obtain_wheel
from mirec.errors import MirecConfigError, MirecDataError
from mirec.io import DATASET, check_output_dir, sha256_file

# names other modules and tests import from here
__all__ = ["DATASETS", "RECBOLE_ML100K", "Artifact", "DatasetSpec", "FetchOptions",
           "FetchResult", "SourceUnavailableError", "WheelSource", "download", "fetch",
           "parse_digest_file"]


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch. ``source``: ``"auto"`` (try the data set's sources in order) or one of them
    (``"grouplens"``, ``"recbole-wheel"``, ...). ``base_url``: replaces the directory the files
    are downloaded from (a mirror; tests). ``url``: the full URL of a single-file data set
    (Taobao). ``local``: a local copy instead of a download (a file, or a directory holding the
    catalogue's file names). ``checksum``: ``"algo:hex"`` the (single) downloaded file must
    match. ``wheel_path``: a local wheel for ``recbole-wheel`` instead of ``pip download``.
    ``loader_options``: options of the source that reads the files (Taobao: ``behaviors``).
    ``timeout``: seconds for the connection and each read."""

    source: str = "auto"
    base_url: str | None = None
    url: str | None = None
    local: str | Path | None = None
    checksum: str | None = None
    wheel_path: str | Path | None = None
    loader_options: dict[str, Any] = field(default_factory=dict)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    timeout: float = 60.0
    progress: bool = True


@dataclass
class FetchResult:
    """What :func:`fetch` did: the prepared directory, the source used, and the details."""

    path: Path
    source_used: str
    details: dict[str, Any] = field(default_factory=dict)


def fetch(name: str, out: str | Path, cache_dir: str | Path,
          options: FetchOptions | None = None, log: Log | None = None) -> FetchResult:
    """Download (or reuse from ``cache_dir``), verify and prepare the data set ``name`` in ``out``.

    ``log`` is called with progress messages. Raises :class:`MirecConfigError` for a bad option,
    :class:`MirecDataError` for a bad file and :class:`SourceUnavailableError` when no source
    can be reached.
    """
    opts = options or FetchOptions()
    log = log or (lambda _msg: None)
    spec = _checked(name, opts)
    check_output_dir(out, DATASET)  # before any download
    out, cache_dir = Path(out), Path(cache_dir)
    if opts.local is not None:
        return _fetch_local(spec, Path(opts.local), out, opts, log)
    order = spec.sources if opts.source == "auto" else (opts.source,)
    attempts: list[dict[str, str | None]] = []
    for i, src in enumerate(order):
        try:
            if src == spec.host:
                result = _fetch_download(spec, out, cache_dir, opts, log)
            else:
                assert spec.wheel is not None
                result = _fetch_wheel(spec, spec.wheel, out, cache_dir, opts, log)
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


def _checked(name: str, opts: FetchOptions) -> DatasetSpec:
    """The catalogue entry of ``name``, once the options are checked against it."""
    if name not in DATASETS:
        raise MirecConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    opts.prepare.validate()
    if parse_checksum(opts.checksum) is not None and len(spec.artifacts) != 1:
        raise MirecConfigError(f"checksum: {name} has several files; a single checksum is "
                               f"ambiguous")
    if opts.source != "auto" and opts.source not in spec.sources:
        raise MirecConfigError(f"source: {name} has sources {', '.join(spec.sources)} "
                               f"(or 'auto'), got {opts.source!r}")
    return spec


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


def _read(source: str, path: Path, opts: FetchOptions, files: dict[str, Any]) -> RawLog:
    """Read ``path`` with the registered ``source``: the catalogue's files and the caller's
    options (an option the source does not take is a MirecConfigError)."""
    return get_source(source).load(path, opts.prepare.on_bad_rows,
                                   **files, **opts.loader_options)


def _prepare(raw: RawLog, out: Path, cfg: PrepareConfig, provenance: dict[str, Any]) -> Path:
    raw = dataclasses.replace(raw, source={**raw.source, "fetch": provenance})
    return build_dataset(raw, out, cfg)


def _counts(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "meta.json").read_text())["counts"]["after_k_core"]
    except (OSError, ValueError, KeyError):
        return {}


def _fetch_download(spec: DatasetSpec, out: Path, cache_dir: Path, opts: FetchOptions,
                    log: Log) -> FetchResult:
    urls = _urls(spec, opts.base_url, opts.url)
    extra: Digest | None = parse_checksum(opts.checksum)
    records: dict[str, dict[str, Any]] = {}
    paths: list[Path] = []
    for art, u in zip(spec.artifacts, urls, strict=True):
        if opts.url is not None:
            # a user-supplied URL: cache under its own file name (or the spec's)
            fname = Path(urllib.parse.urlsplit(u).path).name or art.filename
            art = dataclasses.replace(art, filename=fname)
        path, rec = obtain(u, cache_dir / spec.name / art.filename, art.digest or extra,
                           art.digest_suffix, opts.progress, opts.timeout, log)
        records[art.filename] = {**rec, "path": str(path)}
        paths.append(path)
    source_used = f"{spec.host}: {', '.join(urls)}"
    if all(r["cached"] for r in records.values()):
        source_used += " (cached)"
    provenance = {"source": source_used, "files": {
        k: {"url": r["url"], "sha256": r["digests"]["sha256"],
            "verified_against": r["verified_against"]} for k, r in records.items()}}
    path = _load_and_build(spec, paths, cache_dir, out, opts, provenance, log)
    return FetchResult(path, source_used, {"name": spec.name, "files": records,
                                           "counts": _counts(path)})


def _load_and_build(spec: DatasetSpec, paths: list[Path], scratch: Path, out: Path,
                    opts: FetchOptions, provenance: dict[str, Any], log: Log) -> Path:
    """Extract what the source reads into a temporary directory under ``scratch``, read, build."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.extract-", dir=scratch) as t:
        tmp = Path(t)
        files = {art.role: materialise(art, p, tmp / art.role)
                 for art, p in zip(spec.artifacts, paths, strict=True)}
        log(f"reading {spec.name}")
        path, others = spec.inputs(files)
        raw = _read(spec.source, path, opts, others)
        log(f"preparing {out}")
        return _prepare(raw, out, opts.prepare, provenance)


def _fetch_local(spec: DatasetSpec, local: Path, out: Path, opts: FetchOptions,
                 log: Log) -> FetchResult:
    paths = _local_files(spec, local)
    shas = {str(p): sha256_file(p) for p in paths}
    source_used = f"local: {', '.join(str(p) for p in paths)} (not verified)"
    provenance = {"source": source_used, "files": {k: {"sha256": v} for k, v in shas.items()}}
    path = _load_and_build(spec, paths, out.parent, out, opts, provenance, log)
    return FetchResult(path, source_used, {"name": spec.name, "files": shas,
                                           "counts": _counts(path)})


def _fetch_wheel(spec: DatasetSpec, ws: WheelSource, out: Path, cache_dir: Path,
                 opts: FetchOptions, log: Log) -> FetchResult:
    wp = Path(opts.wheel_path) if opts.wheel_path is not None else None
    wheel, pinned_ok = obtain_wheel(ws, cache_dir, wp, opts.timeout, log)
    source_used = f"{ws.requirement} wheel ({wheel}), RECORD hashes verified"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.wheel-", dir=cache_dir) as t:
        first = extract_members(ws, wheel, Path(t))
        log(f"reading {spec.name} from {wheel}")
        raw = _read(ws.source, first.parent, opts, {})
        provenance = {"source": source_used, "wheel_sha256": sha256_file(wheel),
                      "wheel_sha256_pinned_match": pinned_ok, "members": list(ws.members)}
        path = _prepare(raw, out, opts.prepare, provenance)
    return FetchResult(path, source_used, {"name": spec.name, "wheel": str(wheel),
                                           "wheel_sha256_pinned_match": pinned_ok,
                                           "counts": _counts(path)})
