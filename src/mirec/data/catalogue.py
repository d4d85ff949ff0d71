"""The catalogue of fetchable data sets: where each one's files live, how they are verified,
which archive members are read, and which registered source (:mod:`mirec.data.sources`) reads
them.

Sources of a data set are tried in order by ``fetch(source="auto")``: the host it is published
on, then (ML-100K only) the copy inside the ``recbole`` wheel on PyPI (:mod:`mirec.data.wheel`).
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mirec.data.download import CHUNK, Digest
from mirec.data.wheel import WheelSource
from mirec.errors import MirecDataError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
AMAZON_2014 = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"


@dataclass(frozen=True)
class Artifact:
    """One file to download.

    ``role``: the first artifact is the path the source reads; any other is passed to it as the
    option of that name (Amazon: ``meta``). ``filename``: its name on the server and in the
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
class DatasetSpec:
    """A fetchable data set."""

    name: str
    description: str
    source: str  # the registered source that reads the files (mirec.data.sources)
    artifacts: tuple[Artifact, ...]
    host: str  # the download source's name, e.g. "grouplens"
    base_url: str | None  # None: no public URL, the caller must pass one
    no_url_hint: str = ""
    wheel: WheelSource | None = None
    reads: Literal["file", "folder"] = "file"  # the first artifact's file, or its folder

    @property
    def sources(self) -> tuple[str, ...]:
        """Sources in the order ``source="auto"`` tries them."""
        return (self.host,) + (("recbole-wheel",) if self.wheel else ())

    def inputs(self, files: Mapping[str, Path]) -> tuple[Path, dict[str, Any]]:
        """The path the source reads and the options naming the other files, from the
        materialised file of each artifact role."""
        first, *rest = self.artifacts
        path = files[first.role].parent if self.reads == "folder" else files[first.role]
        return path, {a.role: files[a.role] for a in rest}


def _movielens(name: str, folder: str, members: tuple[str, ...],
               optional: tuple[str, ...] = (), description: str = "",
               wheel: WheelSource | None = None) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        description=description or f"MovieLens {name[3:].upper()} (GroupLens)",
        source="movielens",
        reads="folder",
        artifacts=(Artifact(
            role="path", filename=f"{name}.zip", kind="zip",
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
        source="amazon",
        artifacts=(Artifact(role="path", filename="ratings_Books.csv"),
                   Artifact(role="meta", filename="meta_Books.json.gz")),
        host="mcauley-lab",
        base_url=AMAZON_2014,
    ),
    "taobao": DatasetSpec(
        name="taobao",
        description="Taobao UserBehavior.csv (Alibaba, Tianchi data set 649); needs a login.",
        source="taobao",
        artifacts=(Artifact(role="path", filename="UserBehavior.csv.zip",
                            kind="zip-or-file", members=("UserBehavior.csv",)),),
        host="tianchi",
        base_url=None,
        no_url_hint=(
            "taobao: Tianchi requires a login, so there is no default download URL; download "
            "UserBehavior.csv(.zip) from https://tianchi.aliyun.com/dataset/649 and prepare it "
            "with `mirec data prepare taobao FILE` (from Python: fetch with "
            "FetchOptions(local=...) or FetchOptions(url=...))"
        ),
    ),
}


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


def materialise(art: Artifact, path: Path, tmp: Path) -> Path:
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
