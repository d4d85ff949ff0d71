"""What a production team needs (issue 30): batch top-n for every user, business filters and
unavailable items, new items with cold-start vectors, reload without downtime, metrics and JSON
access logs. HTTP tests use the real server on loopback (``Server`` of test_serve.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirec.errors import MirecDataError
from mirec.serve.catalogue import add_new_items
from mirec.serve.guard import Limits
from mirec.serve.recommender import Filters, Recommender, ServeConfig
from mirec.serve.service import Live, open_recommender, reload_on_sighup
from mirec.serve.store import EventStore
from tests import test_serve as shared
from tests.test_guarantees import mirec

run, bundle_dir, bundle = shared.run, shared.bundle_dir, shared.bundle
Server, exact = shared.Server, shared.exact
TOKEN = {"Authorization": "Bearer s3cret"}


def category_items(b, name: str) -> set[int]:
    return {i for i in range(1, b.num_items) if name in b.item_categories[i]}


def user_with_category(b, name: str) -> str:
    """A user whose history is mostly items of category ``name``."""
    items = category_items(b, name)
    return max(sorted(b.user_histories), key=lambda u: np.isin(b.user_histories[u], list(items)).mean())


# ---- 1. batch top-n --------------------------------------------------------------------------


@pytest.mark.parametrize("lam, filters", [(0.0, None), (0.5, Filters(exclude_categories=["c1"]))])
def test_recommend_all_equals_per_user_recommend(bundle, lam, filters):
    rec = Recommender(bundle, exact(bundle), cfg=ServeConfig(candidates_per_interest=20))
    users = sorted(bundle.user_histories)
    blocks = list(rec.recommend_all(n=10, diversity=lam, filters=filters, block=64))
    assert [len(b) for b in blocks] == [64] * (len(users) // 64) + [len(users) % 64]
    for got in (r for block in blocks for r in block):
        want = rec.recommend(user_id=got.user_id, n=10, diversity=lam, filters=filters)
        assert got.items.tolist() == [x.item for x in want.items], got.user_id
        assert np.allclose(got.scores, [x.score for x in want.items], atol=1e-5)
        assert got.interests.tolist() == [x.interest for x in want.items]
        assert got.short == want.short and got.fallback == want.fallback


def test_cli_all_users_writes_parquet_equal_to_recommend(capsys, bundle_dir, bundle, tmp_path):
    out = tmp_path / "recs.parquet"
    code, stdout, err = mirec(capsys, "recommend", bundle_dir, "--all-users", "--n", "7", "--out", out,
                              "--block", "100", "--exclude-categories", "c2")
    assert code == 0, err
    assert "wrote" in stdout and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    f = pq.ParquetFile(out)
    assert f.metadata.num_row_groups == -(-len(bundle.user_histories) // 100)  # one per block
    t = f.read().to_pydict()
    assert set(t) == {"user_id", "rank", "item_id", "score", "interest", "new"}
    rec = Recommender(bundle, exact(bundle))
    users = sorted(bundle.user_histories)
    assert sorted(set(t["user_id"])) == users and len(t["user_id"]) == 7 * len(users)
    for u in users[:: len(users) // 20]:
        rows = [i for i, x in enumerate(t["user_id"]) if x == u]
        want = rec.recommend(user_id=u, n=7, filters=Filters(exclude_categories=["c2"])).items
        assert [t["rank"][i] for i in rows] == list(range(1, 8))
        assert [t["item_id"][i] for i in rows] == [x.item_id for x in want]
        assert np.allclose([t["score"][i] for i in rows], [x.score for x in want], atol=1e-5)
    code, _, err = mirec(capsys, "recommend", bundle_dir, "--all-users")
    assert code == 2 and "--out" in err


@pytest.mark.parametrize("foreign", [b"precious notes", "parquet"])
def test_all_users_out_never_replaces_a_file_mirec_did_not_write(capsys, bundle_dir, tmp_path, foreign):
    """--out of a user's file (any bytes, or a Parquet file another tool wrote) is refused with
    one line, exit 2, the file untouched; --overwrite replaces it; mirec's own file is replaced."""
    out = tmp_path / "recs.parquet"
    if foreign == "parquet":
        pq.write_table(pa.table({"user_id": ["u"], "score": [1.0]}), out)
    else:
        out.write_bytes(foreign)
    before = out.read_bytes()
    args = ("recommend", bundle_dir, "--all-users", "--n", "3", "--out", out)
    code, _, err = mirec(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err, err
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["recs.parquet"]
    assert mirec(capsys, *args, "--overwrite")[0] == 0
    assert pq.read_table(out).column_names[:3] == ["user_id", "rank", "item_id"]
    code, _, err = mirec(capsys, *args, "--n", "4")  # mirec's own file: replaced
    assert code == 0, err
    assert max(pq.read_table(out)["rank"].to_pylist()) == 4 and os.listdir(tmp_path) == ["recs.parquet"]


# ---- 2. filters ------------------------------------------------------------------------------


def test_http_filters_never_return_filtered_items_and_fill_n(bundle):
    # a small M: the filters leave fewer than n of the first search, so M must widen
    rec = Recommender(bundle, exact(bundle), cfg=ServeConfig(candidates_per_interest=5))
    u = user_with_category(bundle, "c0")
    with Server(rec) as client:
        plain = client.post("/recommend", json={"user_id": u, "n": 10}).json()
        banned = [x["item_id"] for x in plain["items"][:3]]
        r = client.post("/recommend", json={"user_id": u, "n": 10, "exclude_items": banned,
                                            "exclude_categories": ["c0"]}).json()
        assert len(r["items"]) == 10 and not r["short"]
        assert not {x["item_id"] for x in r["items"]} & set(banned)
        assert all("c0" not in x["categories"] for x in r["items"])
        r = client.post("/recommend", json={"user_id": u, "n": 10, "only_categories": ["c3"]}).json()
        assert len(r["items"]) == 10 and not r["short"]
        assert all("c3" in x["categories"] for x in r["items"])
        # fewer candidates than n exist: the list is as long as it can be, and says so
        c3 = {bundle.raw_id(i) for i in category_items(bundle, "c3")} - set(r["history"])
        r = client.post("/recommend", json={"user_id": u, "n": 100, "only_categories": ["c3"]}).json()
        assert r["short"] and {x["item_id"] for x in r["items"]} == c3
        r = client.post("/recommend", json={"user_id": "nobody", "n": 5, "exclude_categories": ["c0"]}).json()
        assert r["fallback"] == "popular" and len(r["items"]) == 5
        assert all("c0" not in x["categories"] for x in r["items"])
        r = client.post("/recommend", json={"user_id": u, "exclude_items": "x"})
        assert r.status_code == 422 and "exclude_items" in r.text


def test_unavailable_file_is_applied_and_reloaded(bundle_dir, bundle, tmp_path):
    u = user_with_category(bundle, "c1")
    ref = Recommender(bundle, exact(bundle)).recommend(user_id=u, n=10)
    gone = [x.item_id for x in ref.items[:4]]
    path = tmp_path / "out-of-stock.txt"
    path.write_text("# out of stock\n" + "\n".join(gone) + "\nnot-an-item\n")
    rec = open_recommender(bundle_dir, "exact", unavailable=path)
    with Server(rec, Limits(token="s3cret")) as client:
        items = [x["item_id"] for x in client.post("/recommend", json={"user_id": u, "n": 10},
                                                   headers=TOKEN).json()["items"]]
        assert len(items) == 10 and not set(items) & set(gone)
        path.write_text(gone[0] + "\n")  # back in stock but gone[0]
        assert client.post("/admin/reload", headers=TOKEN).status_code == 200
        items = [x["item_id"] for x in client.post("/recommend", json={"user_id": u, "n": 10},
                                                   headers=TOKEN).json()["items"]]
        assert gone[0] not in items and set(gone[1:]) <= set(items)


# ---- 3. new items ----------------------------------------------------------------------------


def test_new_items_get_category_mean_vectors_and_are_recommended(bundle_dir, bundle, tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text('{"item_id": "fresh-1", "title": "Fresh", "categories": ["c0"]}\n'
                    '{"item_id": "fresh-2", "categories": ["brand-new-category"]}\n')
    b = add_new_items(bundle, path)
    N = bundle.num_items
    assert b.num_items == N + 2 and b.is_new(N) and not b.is_new(N - 1)
    mean = bundle.item_vectors[sorted(category_items(bundle, "c0"))].mean(0)
    assert np.allclose(b.item_vectors[N], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.isclose(np.linalg.norm(b.item_vectors[N + 1]), 1)  # no known category: the catalogue mean
    u = user_with_category(bundle, "c0")
    with Server(open_recommender(bundle_dir, "exact", new_items=path)) as client:
        r = client.post("/recommend", json={"user_id": u, "n": 20}).json()
        fresh = [x for x in r["items"] if x["item_id"] == "fresh-1"]
        assert fresh and fresh[0]["new"] and fresh[0]["title"] == "Fresh"
        assert all(not x["new"] for x in r["items"] if not x["item_id"].startswith("fresh"))
        # a history with a new item: the tower skips it, exclusion keeps it out of the list
        hist = [bundle.raw_id(int(i)) for i in bundle.user_histories[u][:5]] + ["fresh-1"]
        r = client.post("/recommend", json={"history": hist, "n": 20}).json()
        assert r["items"] and "fresh-1" not in {x["item_id"] for x in r["items"]}
        assert client.get("/items/fresh-2").json()["categories"] == ["brand-new-category"]


def test_new_items_file_errors_name_the_line(bundle, tmp_path):
    bad = tmp_path / "new.csv"
    bad.write_text(f"item_id,title,categories\nok,Ok,c0\n{bundle.raw_id(1)},Old,c1\n")
    with pytest.raises(MirecDataError, match=r"new.csv:3: field 'item_id'.*already in the catalogue"):
        add_new_items(bundle, bad)
    bad = tmp_path / "new.jsonl"
    bad.write_text('{"item_id": "a"}\n{not json\n')
    with pytest.raises(MirecDataError, match=r"new.jsonl:2: not valid JSON"):
        add_new_items(bundle, bad)


def test_catalogue_files_take_bom_crlf_and_quoted_line_breaks(bundle, tmp_path):
    """--new-items / --unavailable (mirec.data.text): a UTF-8 byte-order mark and CRLF line ends
    change no id, a quoted title holding a line break is one field and later lines keep their
    numbers, a JSON object or float as an id is refused naming file:line and field."""
    old = bundle.raw_id(1)
    new = tmp_path / "new.csv"
    new.write_bytes(b'\xef\xbb\xbfitem_id,title,categories\r\nn1,"Two\r\nlines, one title",c0\r\n'
                    + f"n2,Second,c1\r\n{old},Old,c1\r\n".encode())
    with pytest.raises(MirecDataError, match=r"new.csv:5: field 'item_id'.*already in the catalogue"):
        add_new_items(bundle, new)
    new.write_bytes(new.read_bytes().rsplit(b"\r\n", 2)[0] + b"\r\n")  # without the old item
    b = add_new_items(bundle, new)
    N = bundle.num_items
    assert b.item_raw[N:] == ["n1", "n2"] and b.item_title[N] == "Two\r\nlines, one title"
    assert b.item_categories[N] == ["c0"] and b.item_categories[N + 1] == ["c1"]
    js = tmp_path / "new.jsonl"
    js.write_bytes(b'\xef\xbb\xbf{"item_id": "j1"}\r\n{"item_id": 987654321}\r\n')
    assert add_new_items(bundle, js).item_raw[N:] == ["j1", "987654321"]
    for bad, kind in (('{"a": 1}', "an object"), ("1.5", "a float"), ("true", "a boolean"), ("[1]", "an array")):
        js.write_text('{"item_id": "j1"}\n{"item_id": ' + bad + "}\n")
        with pytest.raises(MirecDataError, match=rf"new.jsonl:2: field 'item_id': expected a string or "
                                                 rf"integer id, got {kind}"):
            add_new_items(bundle, js)
    gone = tmp_path / "gone.txt"
    gone.write_bytes(b"\xef\xbb\xbf" + f"{old}\r\n{bundle.raw_id(2)}\r\n".encode())
    from mirec.serve.catalogue import read_unavailable

    assert np.flatnonzero(read_unavailable(gone, bundle)).tolist() == [1, 2]


# ---- 4. reload -------------------------------------------------------------------------------


def second_bundle(bundle_dir, tmp_path):
    """A copy of the bundle with another manifest (another version), as a new export makes."""
    other = tmp_path / "bundle-2"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"] = "2030-01-01T00:00:00Z"
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


def test_reload_under_load_drops_no_request(bundle_dir, tmp_path):
    other = second_bundle(bundle_dir, tmp_path)
    rec = open_recommender(bundle_dir, "exact", store=tmp_path / "ev.sqlite")
    user = sorted(rec.bundle.user_histories)[0]
    with Server(rec, Limits(token="s3cret")) as client:
        old = client.get("/health").json()["version"]
        statuses, stop = [], threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    statuses.append(client.post("/recommend", json={"user_id": user, "n": 5},
                                                headers=TOKEN).status_code)
                except Exception as e:  # noqa: BLE001  a transport error is a dropped request
                    statuses.append(repr(e))

        t = threading.Thread(target=loop)
        t.start()
        time.sleep(0.3)
        r = client.post("/admin/reload", json={"bundle": str(other)}, headers=TOKEN)
        time.sleep(0.3)
        stop.set()
        t.join()
        assert r.status_code == 200, r.text
        new = r.json()["version"]
        assert new != old and client.get("/health").json()["version"] == new
        assert len(statuses) > 10 and set(statuses) == {200}
        # a broken bundle is refused and the old one stays
        (other / "item_vectors.npy").write_bytes(b"corrupt")
        r = client.post("/admin/reload", json={"bundle": str(other)}, headers=TOKEN)
        assert r.status_code == 400 and "item_vectors.npy: checksum" in r.json()["detail"]
        assert client.get("/health").json()["version"] == new
        assert client.post("/recommend", json={"user_id": user}, headers=TOKEN).status_code == 200
        assert client.post("/admin/reload").status_code == 401
        schema = client.get("/openapi.json").json()["paths"]["/admin/reload"]["post"]["responses"]
        assert {"200", "400", "401", "403"} <= set(schema)


def test_reload_is_forbidden_without_a_token(bundle):
    with Server(Recommender(bundle, exact(bundle))) as client:
        r = client.post("/admin/reload", json={})
        assert r.status_code == 403 and "--token" in r.json()["detail"]


def test_sighup_reloads_the_bundle(bundle_dir, tmp_path):
    other = second_bundle(bundle_dir, tmp_path)
    live = Live(open_recommender(other, "exact"))
    before = live.rec
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"] = "2031-01-01T00:00:00Z"
    (other / "manifest.json").write_text(json.dumps(manifest))
    old = signal.getsignal(signal.SIGHUP)
    try:
        reload_on_sighup(live)
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 20
        while live.rec is before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGHUP, old)
    assert live.rec is not before and live.rec.bundle.manifest["created"] == "2031-01-01T00:00:00Z"


# ---- 5. observability ------------------------------------------------------------------------


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} of a Prometheus text page."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_requests_events_index_and_version(bundle, tmp_path):
    rec = Recommender(bundle, exact(bundle), EventStore(tmp_path / "ev.sqlite"))
    user = sorted(bundle.user_histories)[0]
    with Server(rec) as client:
        for _ in range(3):
            assert client.post("/recommend", json={"user_id": user, "n": 3}).status_code == 200
        assert client.post("/recommend", json={"user_id": user, "n": 0}).status_code == 422
        client.post("/events", json={"user_id": "u", "events": [{"item_id": bundle.raw_id(1)},
                                                                {"item_id": bundle.raw_id(2)}]})
        client.get(f"/items/{bundle.raw_id(3)}")
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = samples(r.text)
    rec_ok = frozenset({"method": "POST", "endpoint": "/recommend", "status": "200"}.items())
    assert s[("mirec_requests_total", rec_ok)] == 3
    assert s[("mirec_requests_total", frozenset({"method": "POST", "endpoint": "/recommend",
                                                 "status": "422"}.items()))] == 1
    assert s[("mirec_requests_total", frozenset({"method": "GET", "endpoint": "/items/{item_id}",
                                                 "status": "200"}.items()))] == 1
    hist = frozenset({"method": "POST", "endpoint": "/recommend"}.items())
    assert s[("mirec_request_seconds_count", hist)] == 4
    assert s[("mirec_request_seconds_sum", hist)] > 0
    assert s[("mirec_events_written_total", frozenset())] == 2
    assert s[("mirec_index_items", frozenset())] == bundle.num_items - 1
    info = [k for k in s if k[0] == "mirec_bundle_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == bundle.version


def test_json_access_log_one_line_per_request_without_history(bundle, caplog):
    user = sorted(bundle.user_histories)[0]
    hist = [bundle.raw_id(i) for i in (4, 5, 6)]
    server = Server(Recommender(bundle, exact(bundle)), log_json=True)
    with caplog.at_level(logging.INFO, logger="mirec.access"), server as client:
        client.post("/recommend", json={"user_id": user, "n": 3})
        client.post("/recommend", json={"user_id": "stranger", "n": 3})
        client.post("/recommend", json={"history": hist, "n": 3})
        client.get("/health")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mirec.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/recommend", 200)] * 3 + [("GET", "/health", 200)]
    assert [x["user_known"] for x in lines] == [True, False, None, None]
    assert all(set(x) == {"method", "path", "status", "latency_ms", "user_known"} for x in lines)
    assert all(x["latency_ms"] > 0 for x in lines)
    assert not any(v in hist or isinstance(v, list) for x in lines for v in x.values())


# ---- the real `mirec serve` process ----------------------------------------------------------


@pytest.mark.slow
def test_mirec_serve_flags_sighup_and_json_log(bundle_dir, bundle, tmp_path):
    """`mirec serve --new-items --unavailable --log-format json --token`: the new item is
    served, the unavailable one never, SIGHUP loads the changed bundle, stderr has JSON lines."""
    import subprocess
    import sys

    import httpx

    served = second_bundle(bundle_dir, tmp_path)
    (tmp_path / "new.csv").write_text("item_id,title,categories\nfresh-1,Fresh,c0\n")
    u = user_with_category(bundle, "c0")
    top = Recommender(bundle, exact(bundle)).recommend(user_id=u, n=5).items[0].item_id
    (tmp_path / "gone.txt").write_text(top + "\n")
    port = shared.free_port()
    log = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mirec.cli", "serve", str(served), "--port", str(port),
                             "--store", str(tmp_path / "ev.sqlite"), "--index", "exact",
                             "--new-items", str(tmp_path / "new.csv"), "--unavailable",
                             str(tmp_path / "gone.txt"), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "MIREC_TOKEN": "s3cret"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=TOKEN) as c:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "mirec serve did not start"
                try:
                    version = c.get("/health").json()["version"]
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            r = c.post("/recommend", json={"user_id": u, "n": 20}).json()
            assert top not in {x["item_id"] for x in r["items"]}
            assert c.get("/items/fresh-1").json()["title"] == "Fresh"
            manifest = json.loads((served / "manifest.json").read_text())
            manifest["created"] = "2032-01-01T00:00:00Z"
            (served / "manifest.json").write_text(json.dumps(manifest))
            proc.send_signal(signal.SIGHUP)
            while c.get("/health").json()["version"] == version:
                assert time.monotonic() < deadline, "SIGHUP did not reload"
                time.sleep(0.1)
            assert c.get("/items/fresh-1").status_code == 200  # the new items file is read again
            assert "mirec_bundle_info" in c.get("/metrics").text
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
    lines = [json.loads(x) for x in (tmp_path / "stderr.log").read_text().splitlines() if x.startswith("{")]
    assert {"method": "POST", "path": "/recommend", "status": 200} in [
        {k: x[k] for k in ("method", "path", "status")} for x in lines]
