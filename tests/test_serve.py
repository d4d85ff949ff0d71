"""Serving: bundle export/load, the event store, the recommender, and the real HTTP server.

The server tests start uvicorn on 127.0.0.1 on a free port in a background thread and talk
HTTP to it with httpx; the event store is a real SQLite file.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from mirec.data.dataset import load_dataset
from mirec.data.synth import SynthConfig, synth_dataset
from mirec.errors import MirecConfigError, MirecDataError
from mirec.eval.diversity import diversity_report
from mirec.serve.app import create_app
from mirec.serve.bundle import export_bundle, load_bundle
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.recommender import Recommender
from mirec.serve.store import EventStore
from mirec.train.loop import RunConfig, TrainConfig, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small ComiRec-SA trained for 2 epochs on a planted synthetic set (with categories)."""
    root = tmp_path_factory.mktemp("serve")
    cfg = SynthConfig(num_users=300, num_categories=6, items_per_category=12, max_interests=2,
                      stickiness=0.9, noise=0.0, min_len=8, mean_len=16, seed=5)
    synth_dataset(cfg, root / "ds", progress=False)
    ds = load_dataset(root / "ds")
    rc = RunConfig(model="comirec-sa", model_args={"dim": 16, "num_interests": 2},
                   train=TrainConfig(epochs=2, batch_size=128, lr=0.01, temperature=0.2))
    train(rc, ds, root / "run", progress=False)
    return root, ds


@pytest.fixture(scope="module")
def bundle_dir(run):
    root, _ = run
    return export_bundle(root / "run", root / "bundle")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


def exact(b):
    return ItemIndex.build(b.item_vectors, IndexConfig(kind="exact"))


# ---- bundle ----------------------------------------------------------------------------------


def test_bundle_holds_what_serving_needs(bundle, run):
    _, ds = run
    files = {p.name for p in bundle.path.iterdir()}
    assert {"manifest.json", "tower.pt", "item_vectors.npy", "items.parquet",
            "users.parquet"} <= files
    assert not [p for p in bundle.path.parent.iterdir() if ".tmp-" in p.name]  # no leftovers
    assert bundle.item_vectors.shape == (ds.num_items, 16)
    assert np.allclose(np.linalg.norm(bundle.item_vectors[1:], axis=1), 1, atol=1e-5)  # cosine
    raw = str(ds.items["raw_id"][4])
    assert bundle.item_ids[raw] == 5 and bundle.raw_id(5) == raw
    u = str(ds.users["raw_id"][0])
    assert bundle.user_histories[u].tolist() == ds.item[ds.offsets[0]:ds.offsets[1]].tolist()


def test_bundle_keeps_each_users_last_items(run, tmp_path, monkeypatch):
    """Every user's kept history is the last HISTORY_KEEP items of their log, oldest first
    (here 5, so long histories are cut), read back from the flat CSR arrays."""
    import mirec.serve.bundle as bundle_mod

    root, ds = run
    monkeypatch.setattr(bundle_mod, "HISTORY_KEEP", 5)
    b = load_bundle(export_bundle(root / "run", tmp_path / "b5"))
    raw = ds.users["raw_id"].cast(str).to_list()
    assert list(b.user_histories) == raw and len(b.user_histories) == ds.num_users
    cut = 0
    for u, s, e in zip(raw, ds.offsets[:-1], ds.offsets[1:]):
        want = ds.item[max(s, e - 5):e].tolist()
        cut += e - s > 5
        got = b.user_histories[u]
        assert got.dtype == np.int64 and got.tolist() == want
    assert cut > 0
    assert b.user_histories.get("no such user") is None
    flat = b.user_histories.flat  # one flat int32 array, not an object per user or per event
    assert flat.dtype == np.int32 and len(flat) == sum(min(5, e - s) for s, e in
                                                       zip(ds.offsets[:-1], ds.offsets[1:]))


def test_bundle_tower_equals_the_trained_model(bundle, run):
    root, ds = run
    from mirec.checkpoint import load_checkpoint

    state = load_checkpoint(root / "run" / "best.pt")["model"]
    for k, v in bundle.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_corrupt_bundle_names_the_file(bundle_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    with open(bad / "item_vectors.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(MirecDataError, match="item_vectors.npy: checksum"):
        load_bundle(bad)
    (bad / "item_vectors.npy").unlink()
    with pytest.raises(MirecDataError, match="item_vectors.npy: missing"):
        load_bundle(bad)
    with pytest.raises(MirecDataError, match="not a mirec bundle"):
        load_bundle(tmp_path / "nothing")


def test_failed_export_leaves_nothing(run, tmp_path):
    with pytest.raises(MirecDataError):
        export_bundle(tmp_path / "no-run", tmp_path / "b")
    assert not (tmp_path / "b").exists()


# ---- event store -----------------------------------------------------------------------------


def test_store_orders_by_time_then_arrival_and_survives_reopen(tmp_path):
    s = EventStore(tmp_path / "ev.sqlite")
    s.append("u1", [("a", 10), ("b", 5), ("c", 10)])
    s.append("u2", [("x", None)])
    assert s.history("u1", 10) == ["b", "a", "c"]
    assert s.history("u1", 2) == ["a", "c"]
    s.close()
    s2 = EventStore(tmp_path / "ev.sqlite")
    assert s2.history("u1", 10) == ["b", "a", "c"] and s2.count() == 4
    assert s2._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_rejects_a_non_sqlite_file(tmp_path):
    p = tmp_path / "ev.sqlite"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(MirecDataError, match="ev.sqlite"):
        EventStore(p)


# ---- recommender -----------------------------------------------------------------------------


def test_recommend_known_user_excludes_history_and_explains(bundle):
    rec = Recommender(bundle, exact(bundle))
    u = sorted(bundle.user_histories)[0]
    r = rec.recommend(user_id=u, n=10)
    hist = {bundle.raw_id(int(i)) for i in bundle.user_histories[u]}
    assert len(r.items) == 10 and r.known_user
    assert not {x.item_id for x in r.items} & hist
    scores = [x.score for x in r.items]
    assert scores == sorted(scores, reverse=True)  # lambda 0: plain max-over-interests order
    for x in r.items:
        assert 1 <= len(x.because) <= 3 and set(x.because) <= set(r.history)
        assert 0 <= x.interest < 2


def test_recommend_equals_exact_max_over_interests(bundle):
    """lambda = 0 through the index = brute force max_k v_k . e_i over the catalogue."""
    rec = Recommender(bundle, exact(bundle))
    u = sorted(bundle.user_histories)[3]
    hist = bundle.user_histories[u].tolist()
    V, live, _, _ = rec.interests(hist)
    s = (bundle.item_vectors @ V[live].T).max(1)
    s[0] = -np.inf
    s[hist] = -np.inf
    want = np.argsort(-s, kind="stable")[:15]
    got = [x.item for x in rec.recommend(user_id=u, n=15).items]
    assert got == want.tolist()


def test_unknown_items_are_reported_not_fatal(bundle):
    rec = Recommender(bundle, exact(bundle))
    known = bundle.raw_id(3)
    r = rec.recommend(history=["nope", known, "also-nope"], n=5)
    assert r.ignored_items == ["nope", "also-nope"] and r.history == [known]
    r = rec.recommend(user_id="stranger", n=5)
    assert not r.known_user and len(r.items) == 5
    with pytest.raises(MirecConfigError, match="n: must be"):
        rec.recommend(user_id="stranger", n=0)
    with pytest.raises(MirecConfigError, match="exactly one"):
        rec.recommend(n=5)


def test_lambda_makes_lists_more_diverse(bundle):
    rec = Recommender(bundle, exact(bundle))
    u = sorted(bundle.user_histories)[1]

    def n_categories(lam):
        return len({c for x in rec.recommend(user_id=u, n=6, diversity=lam).items for c in x.categories})

    assert n_categories(10.0) >= n_categories(0.0)
    assert n_categories(10.0) == min(6, len(bundle.category_names))


# ---- HTTP ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving the app on 127.0.0.1:<free port> in a thread."""

    def __init__(self, rec: Recommender, limits=None, **app_options) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(rec, limits, **app_options), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        t = time.time()
        while not self.server.started:
            assert time.time() - t < 20, "server did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        return self.client

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(bundle, tmp_path):
    store = EventStore(tmp_path / "events.sqlite")
    with Server(Recommender(bundle, exact(bundle), store)) as client:
        yield client, store


def test_http_happy_paths(served, bundle):
    client, _ = served
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["items"] == bundle.num_items - 1 and h["index"] == "exact"
    u = sorted(bundle.user_histories)[0]
    r = client.post("/recommend", json={"user_id": u, "n": 7, "lambda": 0.3})
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 7 and body["known_user"]
    assert set(body["items"][0]) == {"item_id", "title", "categories", "score", "interest",
                                     "because", "new"}
    item = client.get(f"/items/{bundle.raw_id(2)}").json()
    assert item["item_id"] == bundle.raw_id(2) and item["categories"]
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/events", "/items/{item_id}", "/health"} <= set(schema["paths"])


@pytest.mark.parametrize("payload, field", [
    ({"user_id": "1", "n": 0}, "n"),
    ({"user_id": "1", "n": 100000}, "n"),
    ({"user_id": "1", "lambda": -1}, "lambda"),
    ({"history": ["1"] * 1001}, "history"),
    ({"user_id": "1", "n": "many"}, "n"),
    ({"user_id": "1", "bogus": 1}, "bogus"),
])
def test_http_validation_names_the_field(served, payload, field):
    client, _ = served
    r = client.post("/recommend", json=payload)
    assert r.status_code == 422
    assert any(field in [str(x) for x in e["loc"]] for e in r.json()["detail"]), r.json()


def test_http_client_mistakes_are_never_5xx(served):
    client, _ = served
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/recommend", json={})  # neither user_id nor history
    assert r.status_code == 422 and "exactly one" in r.text
    r = client.post("/recommend", json={"user_id": "1", "history": ["2"]})
    assert r.status_code == 422
    assert client.get("/items/no-such-item").status_code == 404
    r = client.post("/events", json={"user_id": "u", "events": []})
    assert r.status_code == 422 and "events" in r.text
    r = client.post("/events", json={"user_id": "u", "events": [{"item_id": "x", "timestamp": -5}]})
    assert r.status_code == 422 and "timestamp" in r.text
    r = client.post("/recommend", json={"user_id": "nobody-knows-me", "n": 3})
    assert r.status_code == 200 and not r.json()["known_user"]


def test_events_change_the_next_recommendation_and_survive_restart(bundle, tmp_path):
    path = tmp_path / "events.sqlite"
    cat0 = [i for i in range(1, bundle.num_items)
            if bundle.item_info(i)["categories"] == bundle.item_info(1)["categories"]]
    events = [{"item_id": bundle.raw_id(i), "timestamp": 100 + t} for t, i in enumerate(cat0[:8])]
    with Server(Recommender(bundle, exact(bundle), EventStore(path))) as client:
        before = client.post("/recommend", json={"user_id": "new-user", "n": 5}).json()
        assert not before["known_user"] and before["history"] == []
        r = client.post("/events", json={"user_id": "new-user",
                                         "events": events + [{"item_id": "unknown"}]}).json()
        assert r["stored"] == 9 and r["ignored_items"] == ["unknown"]  # stored, not served
        after = client.post("/recommend", json={"user_id": "new-user", "n": 5}).json()
        assert after["known_user"] and after["history"] == [e["item_id"] for e in events]
        assert [x["item_id"] for x in after["items"]] != [x["item_id"] for x in before["items"]]
        assert not {x["item_id"] for x in after["items"]} & set(after["history"])
    with Server(Recommender(bundle, exact(bundle), EventStore(path))) as client:  # restart
        again = client.post("/recommend", json={"user_id": "new-user", "n": 5}).json()
        assert again["history"] == after["history"] and again["items"] == after["items"]


# ---- CLI and report --------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_export_index_recommend(run, tmp_path):
    root, ds = run
    cli = [sys.executable, "-m", "mirec.cli"]
    out = tmp_path / "b"
    p = subprocess.run([*cli, "export", str(root / "run"), "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*cli, "index", "build", str(out), "--index", "hnsw", "--queries", "20"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "hnsw index" in p.stdout and (out / "index-hnsw.faiss").exists()
    u = str(ds.users["raw_id"][0])
    p = subprocess.run([*cli, "recommend", str(out), "--user", u, "--n", "5", "--lambda", "0.5"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "because of" in p.stdout and "interest" in p.stdout
    p = subprocess.run([*cli, "recommend", str(tmp_path / "missing"), "--user", u],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "not a mirec bundle" in p.stderr


def test_diversity_report_lambda_zero_reproduces_evaluation(run, tmp_path):
    from mirec.experiment import evaluate_run

    root, _ = run
    r = diversity_report(root / "run", [0.0, 0.5, 5.0], tmp_path)
    plain = evaluate_run(root / "run").seeds[0].test
    for k in ("recall@50", "ndcg@50", "diversity@50", "recall@20"):
        assert r.rows[0][k] == pytest.approx(plain[k], abs=1e-9), k
    assert r.rows[-1]["diversity@50"] >= r.rows[0]["diversity@50"]
    assert r.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(r.json_path.read_text())["rows"][1]["lambda"] == 0.5


# ---- two-stage pipeline: retrieval -> ranking -> diversity -----------------------------------


@pytest.fixture(scope="module")
def ranker_dir(run):
    """DIN trained briefly on the same synthetic set (no ratings: implicit labels, sampled
    negatives; history = every earlier event, as in serving)."""
    from mirec.config import load
    from mirec.train.ctr import RankRunConfig, train_ctr

    root, ds = run
    cfg = load(RankRunConfig, None, ["model=din", "model_args.dim=8", "train.epochs=2",
                                     "ctr.history=all", "ctr.max_len=10"])
    train_ctr(cfg, ds, root / "din", progress=False)
    return root / "din"


def test_pipeline_ranks_the_retrieved_candidates(bundle, ranker_dir):
    from mirec.serve.pipeline import RankStage

    stage = RankStage.from_run(ranker_dir, bundle)
    rec = Recommender(bundle, exact(bundle), ranker=stage)
    u = sorted(bundle.user_histories)[3]
    hist = bundle.user_histories[u].tolist()
    r = rec.recommend(user_id=u, n=10, rank=True)
    ids = [x.item for x in r.items]
    assert r.ranked and len(ids) == 10 and len(set(ids)) == 10
    assert not set(ids) & set(hist)
    V, live, _, _ = rec.interests(hist)
    cand, _, _ = rec.retrieve(V, live, hist, rec.cfg.candidates_per_interest)
    assert set(ids) <= set(cand.tolist())  # ranking only reorders what retrieval found
    # lambda 0: the top-10 of the ranker's probabilities over the candidates
    prob = 1 / (1 + np.exp(-stage.score(u, hist, cand)))
    want = cand[np.argsort(-prob, kind="stable")[:10]]
    assert ids == want.tolist()
    np.testing.assert_allclose([x.score for x in r.items], np.sort(prob)[::-1][:10], rtol=1e-6)
    assert all(x.because for x in r.items)  # explanations kept
    plain = rec.recommend(user_id=u, n=10)
    assert not plain.ranked


def test_pipeline_refuses_a_ranker_of_another_data_set(bundle, ranker_dir):
    import dataclasses

    from mirec.serve.pipeline import RankStage

    other = dataclasses.replace(bundle, manifest={**bundle.manifest, "dataset_checksum": "f" * 64})
    with pytest.raises(MirecConfigError, match="--ranker: .*another data set"):
        RankStage.from_run(ranker_dir, other)
    with pytest.raises(MirecConfigError, match="rank: this recommender has no ranker"):
        Recommender(bundle, exact(bundle)).recommend(user_id="1", rank=True)


def test_http_rank_flag(bundle, ranker_dir, served):
    from mirec.serve.pipeline import RankStage

    client, _ = served  # a server without a ranker
    u = sorted(bundle.user_histories)[0]
    r = client.post("/recommend", json={"user_id": u, "rank": True})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rank"]
    rec = Recommender(bundle, exact(bundle), ranker=RankStage.from_run(ranker_dir, bundle))
    with Server(rec) as c2:
        body = c2.post("/recommend", json={"user_id": u, "n": 5, "rank": True, "lambda": 0.5}).json()
        assert body["ranked"] and len(body["items"]) == 5
        assert c2.get("/health").json()["ranker"] == "din"


def test_item_features_in_the_bundle_and_for_new_items(random_dataset, tmp_path):
    """A run with model_args.item_features: the exported vectors are the model's item table
    (id embedding + mean attribute embedding, unit length), and a new item with known
    categories gets mean(w) + mean(c_a) of its attributes (by hand), not a category mean; one
    whose categories are all unknown keeps the mean of every item vector."""
    import mirec
    from mirec.models.base import item_table
    from mirec.models.layers import attribute_items
    from mirec.serve.catalogue import add_new_items

    run = mirec.fit(model="youtube-dnn", data=random_dataset, out=tmp_path / "r", seeds=[1], progress=False,
                    model_args={"dim": 8, "item_features": "mean"},
                    train={"epochs": 1, "max_batches_per_epoch": 2, "threads": 1})
    b = load_bundle(export_bundle(run.path, tmp_path / "bundle"))
    t = attribute_items(b.model)
    assert t is not None and t.names == ["c0", "c1", "c2", "c3", "c4"]
    np.testing.assert_array_equal(b.item_vectors, item_table(b.model, True).numpy())
    with torch.no_grad():
        raw = t.weight + torch.nn.functional.embedding_bag(t.item_attrs, t.attr.weight, mode="mean",
                                                           padding_idx=0)
    np.testing.assert_allclose(b.item_vectors[1:], torch.nn.functional.normalize(raw, dim=-1)[1:].numpy(),
                               atol=1e-6)
    new = tmp_path / "new.csv"
    new.write_text("item_id,title,categories\nn1,first,c1|c3\nn2,second,zz\n")
    nb = add_new_items(b, new)
    with torch.no_grad():
        want = t.weight[1:].mean(0) + (t.attr.weight[2] + t.attr.weight[4]) / 2  # c1 -> row 2, c3 -> row 4
    want = want / want.norm()
    np.testing.assert_allclose(nb.item_vectors[b.num_items], want.numpy(), atol=1e-6)
    mean_all = b.item_vectors[1:].mean(0)
    np.testing.assert_allclose(nb.item_vectors[b.num_items + 1], mean_all / np.linalg.norm(mean_all), atol=1e-6)
