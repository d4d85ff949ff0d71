"""What the web explorer needs beyond ``POST /recommend``: each interest on its own, and the page.

``add_explorer(app, rec)`` adds to the HTTP service::

    GET  /                 the explorer page (static files in ``mirec/serve/static``, no build
                           step, nothing fetched from another host); ``/?user=ID`` opens a user
    GET  /static/...       its script and style sheet
    GET  /users            known user ids starting with ``prefix`` (the page's search box)
    POST /interests        {"user_id": ...} or {"history": [...]}, "n": each live interest with
                           the history items that formed it (weights) and its own top-n items

The per-interest lists answer "why": the merged list of ``/recommend`` takes the best of all
interests; here every live interest searches the index alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, model_validator

from mirec.serve.app import STORE_DOWN, STRICT, HistoryId, Id
from mirec.serve.recommender import Recommender
from mirec.serve.service import Live

FORMED_BY = 5  # history items shown per interest, heaviest first


@dataclass
class InterestView:
    interest: int  # index k among the model's K interests
    formed_by: list[tuple[int, float]]  # (dense item id, weight), heaviest first
    items: list[tuple[int, float]]  # (dense item id, v_k . e_i), best first


def interest_views(rec: Recommender, hist: list[int], n: int,
                   exclude_history: bool = True) -> list[InterestView]:
    """Each live interest of the history ``hist`` (dense ids): the history items that weigh most
    in it and its own top-``n`` items from the index (history removed when asked)."""
    V, live, W, window = rec.interests(hist)  # (K, D), (K,), (K, L), (L,)
    exclude = set(hist) if exclude_history else set()
    m = min(n + len(exclude), rec.bundle.num_items - 1)
    ks = np.flatnonzero(live)
    scores, ids = rec.index.search(np.ascontiguousarray(V[ks]), m)  # (K_live, m) each
    views = []
    for row, k in enumerate(ks):
        order = np.argsort(-W[k], kind="stable")[:FORMED_BY]
        formed = [(int(window[t]), float(W[k, t])) for t in order if window[t] > 0 and W[k, t] > 0]
        top = [(int(i), float(s)) for i, s in zip(ids[row], scores[row]) if i > 0 and i not in exclude]
        views.append(InterestView(int(k), formed, top[:n]))
    return views


# ---- HTTP ------------------------------------------------------------------------------------


class InterestsRequest(BaseModel):
    user_id: Id | None = None
    history: list[HistoryId] | None = Field(None, max_length=1000)
    n: int = Field(10, ge=1, le=100, description="items per interest")
    exclude_history: bool = True

    model_config = STRICT  # as /recommend: no "5" for 5, no unknown field

    @model_validator(mode="after")
    def one_of_user_or_history(self) -> InterestsRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class Item(BaseModel):
    item_id: str
    title: str
    categories: list[str]


class WeightedItem(Item):
    weight: float = Field(description="the item's weight in the interest (attention or routing)")


class ScoredItem(Item):
    score: float = Field(description="inner product of the interest vector and the item vector")


class Interest(BaseModel):
    interest: int = Field(description="index among the model's interests, as in /recommend")
    formed_by: list[WeightedItem]
    items: list[ScoredItem]


class InterestsResponse(BaseModel):
    user_id: str | None
    known_user: bool
    history: list[Item] = Field(description="the items the model saw, oldest first")
    ignored_items: list[str]
    interests: list[Interest] = Field(description="live interests only")


class UsersResponse(BaseModel):
    users: list[str]
    total: int = Field(description="known users starting with the prefix")


def add_explorer(app: FastAPI, live: Live) -> None:
    """Mount the explorer page and add ``GET /users`` and ``POST /interests`` to ``app``
    (serving ``live.rec``, whichever bundle is loaded)."""
    static = resources.files("mirec.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    sorted_users: dict[int, list[str]] = {}  # id(bundle) -> its sorted user ids

    def users() -> list[str]:
        b = live.rec.bundle
        if id(b) not in sorted_users:
            sorted_users.clear()
            sorted_users[id(b)] = sorted(b.user_histories)
        return sorted_users[id(b)]

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/users", response_model=UsersResponse)
    def find_users(prefix: Annotated[str, Query(max_length=256)] = "",
                   limit: Annotated[int, Query(ge=1, le=100)] = 20) -> UsersResponse:
        found = [u for u in users() if u.startswith(prefix)]
        return UsersResponse(users=found[:limit], total=len(found))

    @app.post("/interests", response_model=InterestsResponse, responses=STORE_DOWN)
    def interests(req: InterestsRequest) -> InterestsResponse:
        rec = live.rec
        b = rec.bundle
        if req.history is not None:
            if len(req.history) > rec.cfg.max_history:
                raise HTTPException(422, detail=[{"loc": ["body", "history"],
                                                  "msg": f"at most {rec.cfg.max_history} items",
                                                  "type": "too_long"}])
            hist, ignored = rec.map_items(req.history)
            known = bool(hist)
        else:
            hist, ignored, known = rec.user_history(req.user_id)
        # no history: /recommend serves the popular items, and there are no interests to show
        views = interest_views(rec, hist, req.n, req.exclude_history) if hist else []
        return InterestsResponse(
            user_id=req.user_id, known_user=known, ignored_items=ignored,
            history=[b.item_info(i) for i in hist[-b.max_len:]],
            interests=[Interest(interest=v.interest,
                                formed_by=[{**b.item_info(i), "weight": w} for i, w in v.formed_by],
                                items=[{**b.item_info(i), "score": s} for i, s in v.items])
                       for v in views])
