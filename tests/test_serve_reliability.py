"""Serving under hostile input and failures: no 5xx from client input, index integrity, limits,
fallback, the supervisor's workers, and no acknowledged event lost to kill -9.

The HTTP tests use the real server on loopback (the ``Server`` helper of test_serve.py); the
process tests start ``mirec serve`` as a real subprocess.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.processes import CLI, start_server
from mirec.errors import MirecConfigError, MirecDataError
from mirec.serve.bundle import load_bundle
from mirec.serve.guard import Limits, proxy_options
from mirec.serve.index import IndexConfig
from mirec.serve.recommender import Recommender
from mirec.serve.service import build_index_report, open_recommender
from mirec.serve.store import EventStore
from tests import test_serve as shared
from tests.test_bundle_validation import BREAKS, broken

# fixtures and helpers of test_serve.py (pytest finds fixtures as module attributes)
run, bundle_dir, bundle, served = shared.run, shared.bundle_dir, shared.bundle, shared.served
Server, exact, free_port = shared.Server, shared.exact, shared.free_port

def strict_json(r: httpx.Response):
    """The body parsed as strict JSON (no NaN/Infinity), as any client library would."""
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")
    return json.loads(r.content.decode("utf-8"), parse_constant=refuse)


def one_error(p: subprocess.CompletedProcess) -> str:
    """The CLI's error message: exit 2, exactly one "error:" line on stderr, no traceback."""
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    return p.stderr.strip()


def fields(r: httpx.Response) -> set[str]:
    return {str(x) for e in strict_json(r)["detail"] for x in e["loc"]}


# ---- 1. no 5xx from client input -------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"])
def test_non_finite_lambda_is_a_serialisable_422(served, value):
    client, _ = served
    r = client.post("/recommend", content=f'{{"user_id": "1", "lambda": {value}}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "lambda" in fields(r)


@pytest.mark.parametrize("path, body, field", [
    ("/recommend", '{"user_id": "a\\ud800"}', "user_id"),
    ("/recommend", '{"history": ["1", "\\udfff"]}', "history"),
    ("/events", '{"user_id": "\\ud800", "events": [{"item_id": "1"}]}', "user_id"),
    ("/events", '{"user_id": "u", "events": [{"item_id": "x\\ud800y"}]}', "item_id"),
    ("/interests", '{"user_id": "a\\ud800"}', "user_id"),
    ("/interests", '{"history": ["1", "\\udfff"]}', "history"),
])
def test_lone_surrogates_are_422(served, path, body, field):
    client, store = served
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and field in fields(r)
    assert store.count() == 0


@pytest.mark.parametrize("ts", [2**63, 10**100])
def test_timestamp_beyond_sqlite_integer_is_422(served, bundle, ts):
    client, store = served
    item = bundle.raw_id(1)
    r = client.post("/events", content=f'{{"user_id": "u", "events": [{{"item_id": "{item}", '
                                        f'"timestamp": {ts}}}]}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "timestamp" in fields(r)
    r = client.post("/events", json={"user_id": "u", "events": [{"item_id": item, "timestamp": 2**63 - 1}]})
    assert r.status_code == 200 and store.count("u") == 1


@pytest.mark.parametrize("path, body, field", [
    ("/events", {"user_id": "u", "events": [{"item_id": "1", "timestamp": False}]}, "timestamp"),
    ("/events", {"user_id": "u", "events": [{"item_id": "1", "timestamp": "5"}]}, "timestamp"),
    ("/recommend", {"user_id": "1", "n": True}, "n"),
    ("/recommend", {"user_id": "1", "exclude_history": "true"}, "exclude_history"),
])
def test_json_types_are_the_schemas(served, path, body, field):
    """A value of another JSON type than the schema's is refused, not coerced (schemathesis
    found `"timestamp": false` stored as 0)."""
    client, store = served
    r = client.post(path, json=body)
    assert r.status_code == 422 and field in fields(r)
    assert store.count() == 0


WRONG = {"integer": "5", "number": "5", "boolean": "true", "string": 5}  # a value of another type


def scalar_fields(schema: dict, node: dict, path: tuple = ()):
    """(path, JSON type) of every scalar field under ``node`` ($refs, optional fields and arrays
    followed; an array's element is index 0 of the path)."""
    if "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    for option in node.get("anyOf", []):
        yield from scalar_fields(schema, option, path)
    kind = node.get("type")
    if kind == "object":
        for name, sub in node.get("properties", {}).items():
            yield from scalar_fields(schema, sub, (*path, name))
    elif kind == "array":
        yield from scalar_fields(schema, node["items"], (*path, 0))
    elif kind in WRONG:
        yield path, kind


def holding(path: tuple, value):
    """The JSON body with ``value`` at ``path``: ("events", 0, "timestamp") -> {"events":
    [{"timestamp": value}]}."""
    for key in reversed(path):
        value = [value] if isinstance(key, int) else {key: value}
    return value


def test_every_field_of_every_endpoint_refuses_another_json_type(served):
    """Walks the app's own OpenAPI schema: in every JSON body, each integer, number, boolean and
    string field (nested ones too) given a value of another type ("5" for 5, 5 for "5") gets a
    422 naming it, and an unknown field gets a 422; so does a query parameter that is not of its
    type. (POST /interests coerced "n": "5" where /recommend refused it.)"""
    client, store = served
    schema = client.get("/openapi.json").json()
    tried: dict[str, int] = {}
    for route, ops in schema["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            cases = [] if body is None else [
                (holding(path, WRONG[kind]), None, ("body", *path)) for path, kind in
                scalar_fields(schema, body["schema"])] + [({"unknown_field": 1}, None,
                                                           ("body", "unknown_field"))]
            cases += [(None, {p["name"]: "five"}, ("query", p["name"])) for p in op.get("parameters", [])
                      if p["in"] == "query" and p["schema"].get("type") in ("integer", "number", "boolean")]
            for payload, query, loc in cases:
                r = client.request(method.upper(), route, json=payload, params=query)
                assert r.status_code == 422, (route, payload, query, r.status_code)
                named = {tuple(e["loc"]): e["type"] for e in strict_json(r)["detail"]}
                assert loc in named, (route, payload, query, named)
                tried[route] = tried.get(route, 0) + 1
    assert {"/recommend", "/events", "/interests", "/admin/reload", "/users"} <= set(tried), tried
    print(f"\nwrong-typed fields tried per path: {tried}")
    assert tried["/recommend"] >= 10 and store.count() == 0  # every case refused: nothing stored


def test_openapi_lists_the_errors_the_server_returns(served):
    client, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    assert {"400", "413", "422", "503"} <= set(paths["/recommend"]["post"]["responses"])
    assert {"400", "409", "413", "422", "503"} <= set(paths["/events"]["post"]["responses"])
    assert "503" in paths["/health"]["get"]["responses"] and "503" in paths["/interests"]["post"]["responses"]
    assert "404" in paths["/items/{item_id}"]["get"]["responses"]
    assert "503" not in paths["/items/{item_id}"]["get"]["responses"]  # reads no store (one process)
    assert "429" not in paths["/recommend"]["post"]["responses"]  # no rate limit
    assert "401" not in paths["/recommend"]["post"]["responses"]  # no token: nothing to refuse
    r = client.post("/recommend", json={"user_id": "1", "rank": True})  # the server's own 422
    assert r.status_code == 422 and set(r.json()["detail"][0]) >= {"loc", "msg", "type"}


# ---- 2. integrity ----------------------------------------------------------------------------


@pytest.fixture
def indexed_bundle(bundle_dir, tmp_path):
    """A copy of the bundle with a saved exact index (`mirec index build`)."""
    b = shutil.copytree(bundle_dir, tmp_path / "b")
    build_index_report(load_bundle(b), IndexConfig(kind="exact"), num_users=5)
    return b


def flip_bytes(path: Path, at: int = -64) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + 8] = bytes(x ^ 0xFF for x in data[at:at + 8])
    path.write_bytes(bytes(data))  # same length, different content


def test_index_is_in_the_manifest_and_a_corrupt_one_is_refused(indexed_bundle):
    manifest = json.loads((indexed_bundle / "manifest.json").read_text())
    assert "index-exact.faiss" in manifest["checksums"]
    assert open_recommender(indexed_bundle, "exact").index.kind == "exact"  # intact: served
    flip_bytes(indexed_bundle / "index-exact.faiss")
    with pytest.raises(MirecDataError, match=r"index-exact\.faiss: checksum .*mirec index build"):
        open_recommender(indexed_bundle, "exact")
    (indexed_bundle / "index-exact.faiss").unlink()  # a file the manifest does not list
    shutil.copy(indexed_bundle / "item_vectors.npy", indexed_bundle / "index-hnsw.faiss")
    with pytest.raises(MirecDataError, match=r"index-hnsw\.faiss: not listed in manifest"):
        open_recommender(indexed_bundle, "hnsw")


@pytest.mark.slow
def test_cli_refuses_corrupt_index_missing_store_dir_and_nan_lambda(indexed_bundle, tmp_path, bundle):
    user = sorted(bundle.user_histories)[0]
    flip_bytes(indexed_bundle / "index-exact.faiss")
    for cmd in (["recommend", str(indexed_bundle), "--user", user, "--index", "exact"],
                ["serve", str(indexed_bundle), "--index", "exact", "--port", str(free_port()),
                 "--store", str(tmp_path / "ev.sqlite")]):
        msg = one_error(subprocess.run(CLI + cmd, capture_output=True, text=True, timeout=120))
        assert "index-exact.faiss: checksum" in msg and "mirec index build" in msg
    (indexed_bundle / "index-exact.faiss").unlink()
    missing = tmp_path / "nonexistent" / "dir" / "x.sqlite"
    p = subprocess.run(CLI + ["recommend", str(indexed_bundle), "--user", user, "--store", str(missing)],
                       capture_output=True, text=True, timeout=120)
    assert "x.sqlite: no such event store" in one_error(p)
    assert not (tmp_path / "nonexistent").exists()
    p = subprocess.run(CLI + ["recommend", str(indexed_bundle), "--user", user, "--lambda", "nan"],
                       capture_output=True, text=True, timeout=120)
    assert "lambda: must be a finite number" in one_error(p)


def test_reloads_to_broken_bundles_under_load_are_400_and_the_old_bundle_serves(bundle_dir, tmp_path):
    """Standing check (issue 41): a request loop runs while the server is asked to reload each
    kind of broken bundle of ``test_bundle_validation.BREAKS`` (malformed manifests, files that
    disagree with each other or the manifest, non-finite vectors, a directory and FIFOs) and a
    saved index that is a FIFO: each reload is a 400 naming the file and the field, quickly (a
    FIFO is never read), the old bundle's version stays served, no request gets a 5xx; then a
    good bundle reloads."""
    token = {"Authorization": "Bearer s3cret"}
    cases = {case: broken(bundle_dir, tmp_path, case) for case in BREAKS}
    fifo_index = shutil.copytree(bundle_dir, tmp_path / "fifo-index")
    os.mkfifo(fifo_index / "index-exact.faiss")
    manifest = json.loads((fifo_index / "manifest.json").read_text())
    manifest["checksums"]["index-exact.faiss"] = "0" * 64
    (fifo_index / "manifest.json").write_text(json.dumps(manifest))
    cases["fifo-index"] = fifo_index
    good = shutil.copytree(bundle_dir, tmp_path / "good")
    manifest = json.loads((good / "manifest.json").read_text())
    manifest["created"] = "2030-01-01T00:00:00Z"  # another version
    (good / "manifest.json").write_text(json.dumps(manifest))
    rec = open_recommender(bundle_dir, "exact", store=tmp_path / "ev.sqlite")
    user = sorted(rec.bundle.user_histories)[0]
    with Server(rec, Limits(token="s3cret")) as client:
        old = client.get("/health").json()["version"]
        statuses, stop = [], threading.Event()

        def loop() -> None:
            with httpx.Client(base_url=client.base_url, timeout=10) as c:
                while not stop.is_set():
                    try:
                        statuses.append(c.post("/recommend", json={"user_id": user, "n": 5},
                                               headers=token).status_code)
                    except Exception as e:  # noqa: BLE001  a transport error is a dropped request
                        statuses.append(repr(e))

        t = threading.Thread(target=loop)
        t.start()
        try:
            for case, path in cases.items():
                r = client.post("/admin/reload", json={"bundle": str(path)}, headers=token, timeout=30)
                says = BREAKS[case][1] if case in BREAKS else "index-exact.faiss: not a regular file"
                assert r.status_code == 400 and says in r.json()["detail"], (case, r.text)
                assert client.get("/health").json()["version"] == old, case
            r = client.post("/admin/reload", json={"bundle": str(good)}, headers=token, timeout=30)
        finally:
            stop.set()
            t.join()
        assert r.status_code == 200 and r.json()["version"] != old, r.text
        assert client.get("/health").json()["version"] == r.json()["version"]
        assert len(statuses) > 10 and set(statuses) == {200}, set(statuses)
        errors = [line for line in client.get("/metrics", headers=token).text.splitlines()
                  if line.startswith('mirec_reloads_total{result="error"}')]
        assert errors == [f'mirec_reloads_total{{result="error"}} {float(len(cases))}'], errors


# ---- 3. serving under load -------------------------------------------------------------------


class GatedRecommender(Recommender):
    """A real recommender whose requests wait at a gate the test opens."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.entered, self.gate = threading.Event(), threading.Event()

    def recommend(self, **kw):
        self.entered.set()
        assert self.gate.wait(30)
        return super().recommend(**kw)


def test_events_are_answered_while_recommend_is_busy(bundle, tmp_path):
    rec = GatedRecommender(bundle, exact(bundle), EventStore(tmp_path / "ev.sqlite"))
    with Server(rec) as client:
        url = str(client.base_url)
        slow = threading.Thread(target=lambda: httpx.post(f"{url}/recommend", json={"user_id": "1"},
                                                          timeout=60))
        slow.start()
        try:
            assert rec.entered.wait(20)  # /recommend is now occupied
            # on the event loop it would block the server: this request would time out
            r = client.post("/events", json={"user_id": "u", "events": [{"item_id": bundle.raw_id(1)}]},
                            timeout=10)
            assert r.status_code == 200 and r.json()["stored"] == 1
            assert client.get("/health", timeout=10).json()["last_event_seq"] == 1
        finally:
            rec.gate.set()
            slow.join(30)


def test_token_guards_every_endpoint_but_the_public_ones(bundle, tmp_path):
    rec = Recommender(bundle, exact(bundle), EventStore(tmp_path / "ev.sqlite"))
    item = bundle.raw_id(1)
    with Server(rec, Limits(token="s3cret")) as client:
        for method, path, body in (("POST", "/recommend", {"user_id": "1"}),
                                   ("POST", "/events", {"user_id": "u", "events": [{"item_id": item}]}),
                                   ("GET", f"/items/{item}", None)):
            for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                         [("Authorization", "Bearer wrong"), ("Authorization", "Bearer s3cret")]):
                r = client.request(method, path, json=body, headers=auth)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, auth)
            r = client.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200, path
        for path in ("/health", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        op = schema["paths"]["/recommend"]["post"]
        assert "401" in op["responses"] and op["security"] == [{"bearer": []}]
        assert "401" not in schema["paths"]["/health"]["get"]["responses"]
    assert rec.store.count() == 1  # only the authorised append


def test_body_size_and_rate_limits(bundle):
    rec = Recommender(bundle, exact(bundle))
    big = {"history": ["x" * 200] * 20}  # about 4.5 KB
    with Server(rec, Limits(max_body=2000)) as client:
        r = client.post("/recommend", json=big)
        assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
        chunks = (json.dumps(big)[i:i + 500].encode() for i in range(0, 5000, 500))
        r = client.post("/recommend", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413  # chunked: no Content-Length, counted
        small = (json.dumps({"user_id": "1", "n": 3})[i:i + 5].encode() for i in range(0, 40, 5))
        r = client.post("/recommend", content=small, headers={"content-type": "application/json"})
        assert r.status_code == 200 and len(r.json()["items"]) == 3  # chunked and small: replayed
    with Server(rec, Limits(rate=0.001, burst=2)) as client:  # 2 at once, then one per 1000 s
        codes = [client.get("/health").status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = client.get("/health")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw_post(port: int, path: str, headers: list[str], chunks, timeout: float = 30) -> tuple[int, bytes]:
    """POST over a bare socket, headers exactly as given (httpx would normalise them) and the
    body as HTTP chunks; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *headers]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            for c in chunks:
                s.sendall(f"{len(c):x}\r\n".encode() + c + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is waiting
        data = b""
        while b"\r\n\r\n" not in data and (more := s.recv(65536)):
            data += more
        top, _, body = data.partition(b"\r\n\r\n")
        size = next(int(line.split(b":")[1]) for line in top.split(b"\r\n")
                    if line.lower().startswith(b"content-length:"))
        while len(body) < size and (more := s.recv(65536)):
            body += more
        return int(top.split()[1]), body


def padded_chunks(total: int, size: int = 4096):
    """A JSON body of about ``total`` bytes (a long user id, which a 422 would echo) in chunks."""
    body = b'{"user_id": "' + b"x" * (total - 16) + b'"}'
    return (body[i:i + size] for i in range(0, len(body), size))


@pytest.mark.parametrize("framing", [
    ["Transfer-Encoding: chunked"],
    ["Transfer-Encoding: Chunked"],
    ["Transfer-Encoding: CHUNKED"],
    ["transfer-encoding: cHuNkEd"],
    ["Transfer-Encoding: gzip, chunked"],
    ["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
    ["Content-Length: 10", "Transfer-Encoding: chunked"],
])
def test_body_limit_counts_every_chunked_framing(bundle, framing):
    """However the framing is spelt (transfer codings are case-insensitive, a list, or repeated
    headers), a body over --max-body is counted and refused, never parsed or echoed: a probe got
    a 40 MiB body with `Transfer-Encoding: Chunked` read, parsed and echoed in a 422."""
    with Server(Recommender(bundle, exact(bundle)), Limits(max_body=2000)) as client:
        port = port_of(str(client.base_url))
        status, body = raw_post(port, "/recommend", framing, padded_chunks(200_000))
        assert status in (400, 413), (framing, status, body[:200])  # 400: the HTTP parser's refusal
        assert len(body) < 1000 and b"xxxx" not in body  # the body was not echoed
        assert status == 400 or b"larger than 2000 bytes" in body
        status, body = raw_post(port, "/recommend", framing[-1:], [b'{"user_id": "1", "n": 2}'])
        assert status == 200 and len(json.loads(body)["items"]) == 2  # small: passed on intact


def test_trusted_proxies_are_addresses_or_networks():
    """uvicorn believes no forwarding header unless --trusted-proxies names the proxies; an entry
    uvicorn would silently never match is refused."""
    assert proxy_options(None) == proxy_options("") == {"proxy_headers": False}
    assert proxy_options(" 127.0.0.1, 10.0.0.0/8 ") == {"proxy_headers": True,
                                                       "forwarded_allow_ips": "127.0.0.1,10.0.0.0/8"}
    assert proxy_options("*")["forwarded_allow_ips"] == "*"
    for bad in ("proxy.local", "10.0.0.1/8", "300.0.0.1"):
        with pytest.raises(MirecConfigError, match="--trusted-proxies: .*" + re.escape(bad)):
            proxy_options(bad)


def test_worker_limits_come_from_the_environment():
    """`mirec serve --workers N` hands its options to the worker processes through variables."""
    lim = Limits.from_env({"MIREC_TOKEN": "t", "MIREC_MAX_BODY": "123", "MIREC_RATE_LIMIT": "2.5"})
    assert (lim.token, lim.max_body, lim.rate) == ("t", 123, 2.5)
    assert Limits.from_env({"MIREC_TOKEN": ""}) == Limits()
    with pytest.raises(MirecConfigError, match="--rate-limit"):
        Limits(rate=math.nan).validate()


def test_keep_events_retains_each_users_newest(tmp_path):
    s = EventStore(tmp_path / "ev.sqlite", keep=3)
    s.append("u1", [("a", 1), ("b", 2)])
    s.append("u2", [("x", 1)])
    s.append("u1", [("c", 5), ("d", 3), ("e", 4)])
    assert s.history("u1", 10) == ["d", "e", "c"] and s.count("u1") == 3
    assert s.history("u2", 10) == ["x"]
    with pytest.raises(MirecConfigError, match="--keep-events"):
        EventStore(tmp_path / "other.sqlite", keep=0)
    with pytest.raises(MirecDataError, match="no such event store"):
        EventStore(tmp_path / "missing" / "ev.sqlite", create=False)
    assert not (tmp_path / "missing").exists()


# ---- 4. unknown users and empty histories ----------------------------------------------------


def test_unknown_user_and_empty_history_get_the_popular_items(served, bundle):
    client, _ = served
    counts = np.bincount(np.concatenate(list(bundle.user_histories.values())), minlength=bundle.num_items)
    counts[0] = 0
    want = [bundle.raw_id(int(i)) for i in np.argsort(-counts, kind="stable")[:5]]
    for body in ({"user_id": "stranger", "n": 5}, {"history": ["nope"], "n": 5}, {"history": [], "n": 5}):
        r = client.post("/recommend", json=body).json()
        assert r["fallback"] == "popular" and [x["item_id"] for x in r["items"]] == want, body
        assert r["items"][0]["score"] == pytest.approx(counts.max() / counts.sum())
    r = client.post("/recommend", json={"user_id": "stranger", "n": 6, "lambda": 10}).json()
    assert len({c for x in r["items"] for c in x["categories"]}) == min(6, len(bundle.category_names))
    known = client.post("/recommend", json={"user_id": sorted(bundle.user_histories)[0], "n": 5}).json()
    assert known["fallback"] is None and known["items"][0]["interest"] >= 0
    with pytest.raises(MirecConfigError, match="lambda: must be a finite"):
        Recommender(bundle, exact(bundle)).recommend(user_id="1", diversity=math.nan)


# ---- 5. standing guarantees: fuzzing, kill -9 ------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_violation(served):
    """Requests generated from the server's own OpenAPI schema, valid and invalid, over
    loopback: no 5xx, only documented statuses, bodies matching their schema, invalid input
    rejected (schemathesis checks)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi import checks as oa

    client, _ = served
    schema = schemathesis.openapi.from_url(f"{client.base_url}/openapi.json")
    checks = [not_a_server_error, oa.status_code_conformance, oa.content_type_conformance,
              oa.response_schema_conformance, oa.negative_data_rejection]
    cases: dict[str, int] = {}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(mode))
        def call(case):
            case.call_and_validate(checks=checks)
            key = f"{case.operation.label} {case.meta.generation.mode if case.meta else ''}"
            cases[key] = cases.get(key, 0) + 1

        call()
    print(f"\nschemathesis: {sum(cases.values())} cases, no failure: {cases}")
    assert sum(cases.values()) >= FUZZ_EXAMPLES  # both modes ran (hypothesis may stop early)


FUZZ_EXAMPLES = 150  # per generation mode (positive, negative), over all operations


@pytest.mark.slow
def test_kill_9_during_an_event_stream_loses_no_acknowledged_event(bundle_dir, bundle, tmp_path):
    """A client streams events one request at a time; the server is killed -9 mid-stream and
    restarted on the same store: every event it acknowledged is there."""
    store = tmp_path / "ev.sqlite"
    proc, url = start_server(bundle_dir, store)
    acked: list[tuple[str, str, int]] = []  # (user, item, timestamp) of acknowledged events
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            k = 0
            while not stop.is_set():
                batch = [(f"crash-u{k % 7}", bundle.raw_id(1 + (k + j) % (bundle.num_items - 1)), k * 10 + j)
                         for j in range(3)]
                try:
                    r = c.post("/events", json={"user_id": batch[0][0], "events": [
                        {"item_id": i, "timestamp": ts} for _, i, ts in batch]})
                except httpx.TransportError:
                    return  # the server is gone
                if r.status_code == 200 and r.json()["stored"] == 3:
                    acked.extend((batch[0][0], i, ts) for _, i, ts in batch)
                k += 1

    client = threading.Thread(target=stream)
    client.start()
    try:
        t = time.time()
        while len(acked) < 150 and time.time() - t < 60:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-stream: requests are in flight
        proc.wait(30)
    finally:
        stop.set()
        client.join(30)
    assert len(acked) >= 150
    proc, url = start_server(bundle_dir, store)  # restart on the same store
    try:
        assert httpx.get(f"{url}/health", timeout=10).json()["last_event_seq"] >= len(acked)
    finally:
        proc.terminate()
        proc.wait(30)
    with sqlite3.connect(store) as db:
        rows = set(db.execute("SELECT user_id, item_id, ts FROM events").fetchall())
    lost = [e for e in acked if e not in rows]
    print(f"\nkill -9 mid-stream: {len(acked)} events acknowledged, {len(rows)} stored, {len(lost)} lost")
    assert not lost


@pytest.mark.slow
@pytest.mark.parametrize("workers, trusted", [(1, None), (2, None), (1, "127.0.0.1")])
def test_rate_limit_keys_on_the_peer_unless_the_proxy_is_trusted(bundle_dir, tmp_path, workers, trusted):
    """uvicorn's default believes X-Forwarded-For from 127.0.0.1, so a client on the same host
    got a fresh rate-limit bucket for every address it forged (in one process and with
    --workers). Now the bucket is the peer's unless --trusted-proxies names it."""
    proc, url = start_server(bundle_dir, tmp_path / "ev.sqlite", "--workers", str(workers),
                             "--rate-limit", "0.001", *(["--trusted-proxies", trusted] if trusted else []))
    try:  # burst 20 per worker: 20 x workers + 1 requests of one peer cannot all pass
        codes = [httpx.get(f"{url}/health", headers={"X-Forwarded-For": f"10.9.0.{i + 1}"},
                           timeout=10).status_code for i in range(20 * workers + 1)]
    finally:
        proc.terminate()
        proc.wait(30)
    if trusted:
        assert set(codes) == {200}  # the trusted proxy's clients: one bucket each
    else:
        assert 429 in codes and set(codes) == {200, 429}  # forged: all the one real peer's


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads /proc (Linux)")
def test_a_huge_chunked_body_is_never_held(bundle_dir, tmp_path):
    """The probe's request: 40 MiB as `Transfer-Encoding: Chunked` to a server with --max-body
    2000. The answer is the 413, and the server's peak memory does not grow by the body (it
    was read, parsed and echoed: several times 40 MiB)."""
    proc, url = start_server(bundle_dir, tmp_path / "ev.sqlite", "--max-body", "2000")
    try:
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # peak := current
        before = peak_rss_mib(proc.pid)
        status, body = raw_post(port_of(url), "/recommend", ["Transfer-Encoding: Chunked"],
                                padded_chunks(40 << 20, 1 << 16), timeout=60)
        grown = peak_rss_mib(proc.pid) - before
        print(f"\n40 MiB chunked body: {status}, peak RSS grew by {grown:.1f} MiB")
        assert status == 413 and b"larger than 2000 bytes" in body
        assert grown < 10
    finally:
        proc.terminate()
        proc.wait(30)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_exit_when_the_supervisor_is_killed(bundle_dir, tmp_path):
    proc, url = start_server(bundle_dir, tmp_path / "ev.sqlite", "--workers", "2")
    port = int(url.rsplit(":", 1)[1])
    workers = children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    t = time.time()
    while any(alive(w) for w in workers) and time.time() - t < 60:
        time.sleep(0.2)
    assert not [w for w in workers if alive(w)], "orphan workers still running"
    with socket.socket() as s:  # the port is free again: a restart can bind it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
