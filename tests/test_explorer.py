"""The web explorer: its JSON endpoints over loopback, and the page in headless Chromium.

The browser tests drive the system's Chromium (Debian ``chromium`` + ``chromium-driver``,
installed by ``make browser``) with Selenium against a real uvicorn server on 127.0.0.1 serving
a bundle trained here; they skip, saying why, where no browser is installed.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mirec.serve.bundle import export_bundle, load_bundle
from mirec.serve.explore import interest_views
from mirec.serve.index import IndexConfig, ItemIndex
from mirec.serve.recommender import Recommender
from mirec.serve.store import EventStore
from tests.conftest import planted_comirec_run
from tests.test_serve import Server

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """ComiRec-SA, 2 interests, one epoch on a planted set of 6 categories x 12 items."""
    root = tmp_path_factory.mktemp("explorer")
    planted_comirec_run(root, [2020], epochs=1, seed=3)
    return load_bundle(export_bundle(root / "run", root / "bundle"))


def recommender(bundle, tmp_path) -> Recommender:
    index = ItemIndex.build(bundle.item_vectors, IndexConfig(kind="exact"))
    return Recommender(bundle, index, EventStore(tmp_path / "events.sqlite"))


def a_user(bundle) -> str:
    return sorted(bundle.user_histories)[0]


# ---- the endpoints the page reads ------------------------------------------------------------


def test_interest_views_are_each_interests_own_search(bundle, tmp_path):
    rec = recommender(bundle, tmp_path)
    hist = bundle.user_histories[a_user(bundle)].tolist()
    views = interest_views(rec, hist, n=5)
    V, live, W, window = rec.interests(hist)
    assert [v.interest for v in views] == np.flatnonzero(live).tolist()
    for v in views:
        # brute force: the interest's best 5 items outside the history, by v_k . e_i
        s = bundle.item_vectors[1:] @ V[v.interest]
        order = [i + 1 for i in np.argsort(-s) if i + 1 not in set(hist)][:5]
        assert [i for i, _ in v.items] == order
        assert np.allclose([x for _, x in v.items], s[np.asarray(order) - 1], atol=1e-5)
        weights = [w for _, w in v.formed_by]
        assert weights == sorted(weights, reverse=True) and weights[0] == pytest.approx(W[v.interest].max())
        assert all(i in window for i, _ in v.formed_by)


def test_http_interests_users_and_page(bundle, tmp_path):
    u = a_user(bundle)
    with Server(recommender(bundle, tmp_path)) as client:
        r = client.post("/interests", json={"user_id": u, "n": 4})
        assert r.status_code == 200
        body = r.json()
        assert body["known_user"] and len(body["interests"]) >= 1
        first = body["interests"][0]
        assert len(first["items"]) == 4 and first["items"][0]["title"].startswith("c")
        assert first["formed_by"][0]["item_id"] in {h["item_id"] for h in body["history"]}
        pasted = [h["item_id"] for h in body["history"]] + ["no-such-item"]
        r = client.post("/interests", json={"history": pasted, "n": 4}).json()
        assert r["ignored_items"] == ["no-such-item"] and r["interests"] == body["interests"]
        assert client.post("/interests", json={"n": 4}).status_code == 422
        assert client.post("/interests", json={"user_id": u, "n": 0}).json()["detail"][0]["loc"] == ["body", "n"]
        found = client.get("/users", params={"prefix": u, "limit": 5}).json()
        assert u in found["users"] and found["total"] >= 1
        assert client.get("/users", params={"prefix": "no such user"}).json() == {"users": [], "total": 0}
        page = client.get("/")
        assert page.status_code == 200 and "mirec explorer" in page.text
        assert client.get("/static/app.js").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert "/interests" in paths and "/users" in paths


# ---- the page in a real browser --------------------------------------------------------------


def chromium_driver():
    """Headless Chromium through the system chromedriver, or a skip naming what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium/chromedriver on PATH: run `make browser` (apt-get install chromium "
                    "chromium-driver) to run the browser tests")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


@pytest.fixture
def page(bundle, tmp_path):
    """(driver, base URL, event store) with the explorer served on loopback."""
    rec = recommender(bundle, tmp_path)
    driver = chromium_driver()
    try:
        with Server(rec) as client:
            yield driver, str(client.base_url), rec.store, client
    finally:
        driver.quit()


def settled(driver, previous: list[str] | None = None) -> list[str]:
    """Wait until the page is ready (and, if given, its merged list differs from ``previous``);
    return the merged list's item ids. An error shown in the page fails the test with its text."""
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        # one script reads the state and the list together: the page may re-render in between
        s, ids, error = d.execute_script(
            "return [document.body.dataset.state, [...document.querySelectorAll('#merged li')]"
            ".map(e => e.dataset.itemId), document.getElementById('error').textContent];")
        if s == "error":
            raise AssertionError("page shows: " + error)
        return s == "ready" and (previous is None or ids != previous) and ids

    return WebDriverWait(driver, 20).until(done)


def test_page_shows_a_users_interests_and_recommendations(page, bundle):
    driver, base, _, client = page
    u = a_user(bundle)
    driver.get(f"{base}/?user={u}")
    ids = settled(driver)
    api = client.post("/recommend", json={"user_id": u, "n": 10}).json()
    assert ids == [x["item_id"] for x in api["items"]]
    titles = [e.text for e in driver.find_elements("css selector", "#merged li .title")]
    assert titles == [x["title"] for x in api["items"]]
    cols = driver.find_elements("css selector", ".interest-col")
    assert len(cols) == api["interests"] >= 1
    views = client.post("/interests", json={"user_id": u, "n": 10}).json()["interests"]
    for col, v in zip(cols, views):
        assert [e.text for e in col.find_elements("css selector", ".formed .title")] == \
            [h["title"] for h in v["formed_by"]]
        assert [e.get_attribute("data-item-id") for e in col.find_elements("css selector", ".retrieved li")] == \
            [x["item_id"] for x in v["items"]]


def test_slider_requeries_and_click_records_an_event(page, bundle):
    from selenium.webdriver.common.keys import Keys

    driver, base, store, client = page
    u = a_user(bundle)
    driver.get(f"{base}/?user={u}")
    before = settled(driver)
    driver.find_element("id", "lambda").send_keys(Keys.END)  # lambda 0 -> 2
    after = settled(driver, before)
    lam = float(driver.find_element("id", "lambda").get_attribute("value"))
    api = client.post("/recommend", json={"user_id": u, "n": 10, "lambda": lam}).json()
    assert lam == 2 and after == [x["item_id"] for x in api["items"]]
    assert driver.current_url.endswith(f"?user={u}&lambda=2")  # the address can be shared
    driver.get(driver.current_url)
    assert settled(driver) == after

    assert store.history(u, 10) == []
    driver.find_element("css selector", "#merged li").click()
    now = settled(driver, after)  # refetched: the clicked item joined the history, left the list
    assert store.history(u, 10) == [after[0]]
    assert after[0] not in now


def test_page_shows_api_errors(page):
    from selenium.webdriver.support.ui import WebDriverWait

    driver, base, _, _ = page
    driver.get(f"{base}/?user=nobody")
    settled(driver)  # an unknown user is no error: an empty history, said so
    assert "unknown user nobody" in driver.find_element("id", "summary").text
    # the ranker toggle is hidden on a server without one; forced on, the API's 422 is shown
    driver.execute_script("const r = document.getElementById('rank'); r.checked = true; "
                          "r.dispatchEvent(new Event('change'));")
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "error")
    text = driver.find_element("id", "error").text
    assert "422" in text and "rank" in text and "no ranker" in text


def test_page_asks_for_a_token_once_when_the_api_answers_401(bundle, tmp_path):
    """A server that wants ``Authorization: Bearer s3cret`` on its API (the page itself is
    public): the page asks once, keeps the token for the session, and asks again if refused."""
    from fastapi.responses import JSONResponse
    from selenium.webdriver.support.ui import WebDriverWait

    from mirec.serve.app import create_app

    rec = recommender(bundle, tmp_path)
    guarded = create_app(rec)

    @guarded.middleware("http")
    async def bearer(request, call_next):
        public = request.url.path == "/" or request.url.path.startswith("/static/")
        if public or request.headers.get("authorization") == "Bearer s3cret":
            return await call_next(request)
        return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)

    server = Server(rec)
    server.server.config.app = guarded  # the same server, with the guarded app
    driver = chromium_driver()
    try:
        with server as client:
            base = str(client.base_url)

            def enter(token):
                form = WebDriverWait(driver, 20).until(
                    lambda d: d.find_element("id", "token-form").is_displayed() and d.find_element("id", "token"))
                form.clear()
                form.send_keys(token + "\n")

            u = a_user(bundle)
            driver.get(f"{base}/?user={u}")
            enter("wrong")
            WebDriverWait(driver, 20).until(lambda d: "refused" in d.find_element("id", "error").text)
            enter("s3cret")
            ids = settled(driver)
            assert ids == [x["item_id"] for x in client.post(
                "/recommend", json={"user_id": u, "n": 10}, headers={"Authorization": "Bearer s3cret"}).json()["items"]]
            driver.get(f"{base}/?user={u}")  # same session: no question this time
            assert settled(driver) == ids
            assert not driver.find_element("id", "token-form").is_displayed()
    finally:
        driver.quit()


def test_page_explores_a_pasted_history(page, bundle):
    driver, base, store, client = page
    hist = [bundle.raw_id(int(i)) for i in bundle.user_histories[a_user(bundle)][-6:]]
    driver.get(base)
    driver.find_element("id", "history").send_keys(" ".join(hist))
    driver.find_element("id", "show-history").click()
    ids = settled(driver)
    assert ids == [x["item_id"] for x in client.post("/recommend", json={"history": hist, "n": 10}).json()["items"]]
    driver.find_element("css selector", "#merged li").click()  # no user: the item joins the pasted list
    settled(driver, ids)
    assert driver.find_element("id", "history").get_attribute("value").split() == hist + [ids[0]]
    assert store.count() == 0
