"""Tests of mirec.data.fetch against a local HTTP server and hand-built archives (no network)."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirec.data.fetch import (
    DATASETS,
    RECBOLE_ML100K,
    FetchOptions,
    SourceUnavailableError,
    download,
    fetch,
    parse_digest_file,
)
from mirec.data.prepare import PrepareConfig
from mirec.errors import MirecConfigError, MirecDataError

CFG = PrepareConfig(k_core=1)

U_DATA = "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n" \
         "2\t30\t2\t881250952\n3\t20\t1\t881250953\n3\t30\t4\t881250954\n"
GENRES = "|".join(["0"] * 19)
U_ITEM = (f"10|Toy Story (1995)|01-Jan-1995||http://x|{GENRES[:-1]}1\n"
          f"20|Café (1996)|01-Jan-1996||http://y|{GENRES}\n"
          f"30|Heat (1995)|01-Jan-1995||http://z|{GENRES}\n").encode("latin-1")
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n"

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n"
         "2\t30\t2\t881250952\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n20\tCafe\t1996\tDrama\n30\tHeat\t1995\tAction\n")
USER = ("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n")


def _ml100k_zip(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ml-100k/", "")
        z.writestr("ml-100k/u.data", U_DATA)
        z.writestr("ml-100k/u.item", U_ITEM)
        z.writestr("ml-100k/u.user", U_USER)
    return path.read_bytes()


def _write_md5(zip_path: Path, data: bytes) -> None:
    (zip_path.parent / (zip_path.name + ".md5")).write_text(
        f"MD5 ({zip_path.name}) = {hashlib.md5(data).hexdigest()}\n")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(path: Path, corrupt_member: str | None = None) -> Path:
    members = {f"recbole/dataset_example/ml-100k/ml-100k.{k}": v.encode()
               for k, v in (("inter", INTER), ("item", ITEM), ("user", USER))}
    record = []
    for name, data in members.items():
        digest = _b64(data + b"x") if name.endswith(corrupt_member or "\0") else _b64(data)
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{RECBOLE_ML100K.dist_info}/RECORD,,")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{RECBOLE_ML100K.dist_info}/RECORD", "\n".join(record) + "\n")
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_fetch_grouplens_via_base_url(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    _write_md5(root / "ml-100k.zip", _ml100k_zip(root / "ml-100k.zip"))
    out, cache = tmp_path / "out", tmp_path / "cache"
    msgs: list[str] = []
    res = fetch("ml-100k", out, cache, FetchOptions(base_url=base, prepare=CFG, source="grouplens",
                                                    progress=False), log=msgs.append)
    assert res.path == out
    assert res.source_used == f"grouplens: {base}/ml-100k.zip"
    assert res.details["counts"] == {"events": 6, "users": 3, "items": 3}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["fetch"]["source"] == res.source_used
    rec = res.details["files"]["ml-100k.zip"]
    assert rec["verified_against"] == f"md5 published at {base}/ml-100k.zip.md5"
    assert (cache / "ml-100k" / "ml-100k.zip").is_file()
    # no extraction leftovers in the cache
    assert sorted(p.name for p in _files(cache)) == ["ml-100k.zip", "ml-100k.zip.verified.json"]

    # second fetch: the verified cached file is reused, no server needed
    res2 = fetch("ml-100k", tmp_path / "out2", cache,
                 FetchOptions(base_url=_closed_port(), prepare=CFG, source="grouplens",
                              progress=False))
    assert res2.source_used.endswith("(cached)")
    assert res2.details["counts"] == res.details["counts"]


def test_md5_mismatch_leaves_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    data = _ml100k_zip(root / "ml-100k.zip")
    _write_md5(root / "ml-100k.zip", data + b"tampered")
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(MirecDataError, match="md5 mismatch") as ei:
        fetch("ml-100k", out, cache, FetchOptions(base_url=base, prepare=CFG, progress=False))
    msg = str(ei.value)
    assert f"{base}/ml-100k.zip" in msg
    assert hashlib.md5(data).hexdigest() in msg  # the actual digest
    assert not isinstance(ei.value, SourceUnavailableError)  # auto does not fall back on it
    assert _files(cache) == [] and not out.exists()


def test_http_404_is_clear(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    with pytest.raises(SourceUnavailableError, match=r"ml-1m\.zip\.md5: HTTP 404"):
        fetch("ml-1m", tmp_path / "out", tmp_path / "cache",
              FetchOptions(base_url=base, progress=False))
    with pytest.raises(SourceUnavailableError, match="HTTP 404"):
        download(f"{base}/nothing.bin", tmp_path / "x.bin", progress=False)
    assert _files(tmp_path / "cache") == [] and not (tmp_path / "x.bin").exists()


def test_download_verifies_and_is_atomic(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    (root / "blob.bin").write_bytes(b"a" * 3_000_000)
    good = ("sha256", hashlib.sha256(b"a" * 3_000_000).hexdigest())
    dest = tmp_path / "dl" / "blob.bin"
    assert download(f"{base}/blob.bin", dest, good, progress=False) == dest
    assert dest.stat().st_size == 3_000_000
    dest.write_bytes(b"old")
    with pytest.raises(MirecDataError, match=r"sha256 mismatch: expected 0{64}"):
        download(f"{base}/blob.bin", dest, ("sha256", "0" * 64), progress=False)
    assert dest.read_bytes() == b"old"  # untouched, no partial file beside it
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]


def test_unreachable_host_is_clear(tmp_path: Path) -> None:
    url = f"{_closed_port()}/ml-100k.zip"
    with pytest.raises(SourceUnavailableError, match=f"cannot reach {url}"):
        download(url, tmp_path / "x", progress=False, timeout=5)


def test_auto_falls_back_to_wheel(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    out, cache = tmp_path / "out", tmp_path / "cache"
    msgs: list[str] = []
    res = fetch("ml-100k", out, cache,
                FetchOptions(base_url=_closed_port(), prepare=CFG, wheel_path=wheel,
                             progress=False, timeout=5), log=msgs.append)
    assert res.source_used == f"recbole==1.2.1 wheel ({wheel}), RECORD hashes verified"
    assert res.details["counts"] == {"events": 4, "users": 2, "items": 3}
    assert res.details["wheel_sha256_pinned_match"] is False  # a hand-built wheel
    assert [a["source"] for a in res.details["attempts"]] == ["grouplens", "recbole-wheel"]
    assert "cannot reach" in res.details["attempts"][0]["error"]
    assert any("falling back to recbole-wheel" in m for m in msgs)
    assert _files(cache) == []  # extraction scratch removed


def test_forced_grouplens_does_not_fall_back(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl")
    with pytest.raises(SourceUnavailableError, match="cannot reach"):
        fetch("ml-100k", tmp_path / "out", tmp_path / "cache",
              FetchOptions(base_url=_closed_port(), prepare=CFG, source="grouplens",
                           wheel_path=wheel, progress=False, timeout=5))


def test_wheel_record_mismatch_names_member(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", corrupt_member="ml-100k.item")
    out = tmp_path / "out"
    with pytest.raises(MirecDataError,
                       match=r"member recbole/dataset_example/ml-100k/ml-100k\.item: sha256"):
        fetch("ml-100k", out, tmp_path / "cache",
              FetchOptions(prepare=CFG, source="recbole-wheel", wheel_path=wheel, progress=False))
    assert not out.exists() and _files(tmp_path / "cache") == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(MirecConfigError, match="known: ml-100k, ml-1m"):
        fetch("ml-7m", tmp_path / "o", tmp_path / "c")
    with pytest.raises(MirecConfigError, match=r"FetchOptions\(url=\.\.\.\)"):
        fetch("taobao", tmp_path / "o", tmp_path / "c")
    with pytest.raises(MirecConfigError, match="sources grouplens, recbole-wheel"):
        fetch("ml-100k", tmp_path / "o", tmp_path / "c", FetchOptions(source="kaggle"))
    with pytest.raises(MirecConfigError, match="sources grouplens"):
        fetch("ml-1m", tmp_path / "o", tmp_path / "c", FetchOptions(source="recbole-wheel"))
    assert set(DATASETS) >= {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
                             "amazon-books", "taobao"}
    assert DATASETS["ml-10m"].artifacts[0].members[0] == "ml-10M100K/ratings.dat"


def test_taobao_via_url_zip(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    csv = "1,100,7,pv,1511544070\n1,101,7,pv,1511544071\n2,100,7,pv,1511544072\n"
    with zipfile.ZipFile(root / "UserBehavior.csv.zip", "w") as z:
        z.writestr("UserBehavior.csv", csv)
    sha = hashlib.sha256((root / "UserBehavior.csv.zip").read_bytes()).hexdigest()
    res = fetch("taobao", tmp_path / "out", tmp_path / "cache",
                FetchOptions(prepare=CFG, url=f"{base}/UserBehavior.csv.zip?token=abc",
                             checksum=f"sha256:{sha}", progress=False))
    assert res.source_used.startswith(f"tianchi: {base}/UserBehavior.csv.zip")
    assert res.details["counts"] == {"events": 3, "users": 2, "items": 2}


def test_parse_digest_file() -> None:
    h = "0e33842e24a9c977be4e0107933c0723"
    assert parse_digest_file(f"MD5 (ml-100k.zip) = {h}\n", "ml-100k.zip", "md5") == h
    assert parse_digest_file(f"{h.upper()}  ml-100k.zip\n", "ml-100k.zip", "md5") == h
    assert parse_digest_file(f"{'1' * 32}  a.zip\n{h}  b.zip\n", "b.zip", "md5") == h
    with pytest.raises(ValueError):
        parse_digest_file("<html>not found</html>", "a.zip", "md5")
