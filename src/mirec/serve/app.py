"""The HTTP service: FastAPI over :class:`mirec.serve.recommender.Recommender`.

``mirec serve <bundle>`` runs it with uvicorn. Endpoints (OpenAPI schema at ``/openapi.json``,
docs at ``/docs``)::

    POST /recommend   {"user_id": "..."} or {"history": ["id", ...]}, "n", "lambda",
                      "exclude_history", "rank" -> items with item_id, title, categories, score,
                      interest, because; ignored_items lists ids not in the catalogue
    POST /events      {"user_id": "...", "events": [{"item_id": "...", "timestamp": 0}]}
    GET  /items/{id}  one item's title and categories (404 if unknown)
    GET  /health      model, catalogue size, index kind, stored events
    GET  /  and  GET /users, POST /interests: the web explorer (serve/explore.py)

Ids are the source data's raw ids, as strings. Client mistakes are 4xx with the field named
(malformed JSON and schema violations: FastAPI's 422 with ``loc``); unknown users and items are
reported in the response, never a 5xx.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from mirec.errors import MirecError
from mirec.serve.recommender import Recommender

MAX_EVENTS = 1000  # per POST /events


class RecommendRequest(BaseModel):
    user_id: str | None = Field(None, min_length=1, max_length=256)
    history: list[Annotated[str, Field(max_length=256)]] | None = Field(None, max_length=1000)
    n: int = Field(20, ge=1, le=500)
    lambda_: float = Field(0.0, alias="lambda", ge=0.0, le=1000.0)
    exclude_history: bool = True
    rank: bool = False  # score the candidates with the ranker (server started with --ranker)

    model_config = {"populate_by_name": True, "extra": "forbid"}

    @model_validator(mode="after")
    def one_of_user_or_history(self) -> RecommendRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class ItemInfo(BaseModel):
    item_id: str
    title: str
    categories: list[str]


class RecommendedItem(ItemInfo):
    score: float
    interest: int
    because: list[str]


class RecommendResponse(BaseModel):
    user_id: str | None
    known_user: bool
    items: list[RecommendedItem]
    ignored_items: list[str]
    history: list[str]
    interests: int
    ranked: bool


class Event(BaseModel):
    item_id: str = Field(min_length=1, max_length=256)
    timestamp: int | None = Field(None, ge=0)

    model_config = {"extra": "forbid"}


class EventsRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256)
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)

    model_config = {"extra": "forbid"}


class EventsResponse(BaseModel):
    user_id: str
    stored: int
    ignored_items: list[str]


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory`` (``mirec serve --workers N``): every worker process
    loads the bundle named by ``MIREC_BUNDLE`` (plus ``MIREC_STORE``, ``MIREC_INDEX``,
    ``MIREC_HNSW_ABOVE``); the SQLite store in WAL mode is shared between them."""
    import os

    import torch

    from mirec.serve.service import open_recommender

    torch.set_num_threads(1)
    env = os.environ
    return create_app(open_recommender(env["MIREC_BUNDLE"], env.get("MIREC_INDEX", "auto"),
                                       int(env.get("MIREC_HNSW_ABOVE", "50000")),
                                       env.get("MIREC_STORE") or None, env.get("MIREC_RANKER") or None))


def create_app(rec: Recommender) -> FastAPI:
    app = FastAPI(title="mirec", version=str(rec.bundle.manifest["versions"]["mirec"]),
                  description="Multi-interest retrieval with controllable diversity.")
    @app.exception_handler(MirecError)
    def _client_error(request, exc: MirecError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    # ``async def``: the work is CPU-bound under the GIL, so a worker-thread hop only adds
    # latency; the response is serialised directly (the model still documents the schema).
    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(req: RecommendRequest) -> JSONResponse:
        if req.n > rec.cfg.max_n:
            raise HTTPException(422, detail=[{"loc": ["body", "n"],
                                              "msg": f"n must be <= {rec.cfg.max_n}"}])
        if req.rank and rec.ranker is None:
            raise HTTPException(422, detail=[{"loc": ["body", "rank"],
                                              "msg": "this server has no ranker (start it with --ranker)"}])
        r = rec.recommend(user_id=req.user_id, history=req.history, n=req.n, diversity=req.lambda_,
                          exclude_history=req.exclude_history, rank=req.rank)
        return JSONResponse({
            "user_id": r.user_id, "known_user": r.known_user, "ignored_items": r.ignored_items,
            "history": r.history, "interests": r.interests, "ranked": r.ranked,
            "items": [{"item_id": x.item_id, "title": x.title, "categories": x.categories,
                       "score": x.score, "interest": x.interest, "because": x.because}
                      for x in r.items]})

    @app.post("/events", response_model=EventsResponse)  # sync: the commit waits for fsync
    def events(req: EventsRequest) -> EventsResponse:
        if rec.store is None:
            raise HTTPException(409, detail="this server runs without an event store")
        known = [(e.item_id, e.timestamp) for e in req.events if e.item_id in rec.bundle.item_ids]
        ignored = [e.item_id for e in req.events if e.item_id not in rec.bundle.item_ids]
        stored = rec.store.append(req.user_id, known) if known else 0
        return EventsResponse(user_id=req.user_id, stored=stored, ignored_items=ignored)

    @app.get("/items/{item_id}", response_model=ItemInfo)
    def item(item_id: str) -> dict:
        i = rec.bundle.item_ids.get(item_id)
        if i is None:
            raise HTTPException(404, detail=f"item_id {item_id!r}: not in the catalogue")
        return rec.bundle.item_info(i)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": rec.bundle.manifest["model"],
                "items": rec.bundle.num_items - 1, "index": rec.index.kind,
                "ranker": rec.ranker.name if rec.ranker else None,
                "events": rec.store.count() if rec.store else None}

    from mirec.serve.explore import add_explorer

    add_explorer(app, rec)
    return app
