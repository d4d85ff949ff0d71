"""The HTTP service: FastAPI over :class:`mirec.serve.recommender.Recommender`.

``mirec serve <bundle>`` runs it with uvicorn. Endpoints (OpenAPI schema at ``/openapi.json``,
docs at ``/docs``)::

    POST /recommend   {"user_id": "..."} or {"history": ["id", ...]}, "n", "lambda",
                      "exclude_history", "rank", "exclude_items", "exclude_categories",
                      "only_categories" -> items with item_id, title, categories, score,
                      interest, because, new; ignored_items lists ids not in the catalogue;
                      "short": true when fewer than n items passed the filters
    POST /events      {"user_id": "...", "events": [{"item_id": "...", "timestamp": 0}]}: all
                      stored (``stored``); ignored_items lists those the model does not know,
                      skipped in histories until `mirec data append` and retraining learn them
    GET  /items/{id}  one item's title and categories (404 if unknown)
    GET  /health      model, catalogue size, index kind, last_event_seq (the store's highest seq:
                      one index read, never a count), the bundle served (version, path,
                      loaded_at) by which worker (pid); with --workers N every worker's
    GET  /  and  GET /users, POST /interests: the web explorer (serve/explore.py)
    POST /admin/reload  {"bundle": "path"} or {}: load, verify and swap the bundle (token only)
    GET  /metrics     Prometheus text format (serve/observe.py), summed over the workers

Every response names the bundle that served it: header ``X-Mirec-Bundle: <version>``. With
``--workers N`` a reload reaches every worker before its 200 (serve/fleet.py).

Ids are the source data's raw ids, as strings. Client mistakes are 4xx with the field named
(malformed JSON and schema violations: FastAPI's 422 with ``loc``); unknown users and items are
reported in the response, never a 5xx. Unknown users and empty histories get the most popular
items (``"fallback": "popular"``). Access, body-size and rate limits: :mod:`mirec.serve.guard`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, Field, model_validator

from mirec.errors import MirecError
from mirec.serve.fleet import FleetLive, FleetTimeout, ServedBy, iso
from mirec.serve.guard import Limits, install
from mirec.serve.observe import Metrics, Observe
from mirec.serve.recommender import Filters, Recommender
from mirec.serve.service import Live
from mirec.serve.store import StoreUnavailable

MAX_EVENTS = 1000  # per POST /events
MAX_TIMESTAMP = 2**63 - 1  # SQLite INTEGER


def _no_lone_surrogates(s: str) -> str:
    """JSON may escape half a UTF-16 pair (\\ud800); such a string cannot be stored or sent back."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return s


Id = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_lone_surrogates)]
HistoryId = Annotated[str, Field(max_length=256), AfterValidator(_no_lone_surrogates)]  # may be ""
# every request model: JSON types as the schema says (no true for 1, no "3" for 3), no unknown field
STRICT = {"extra": "forbid", "strict": True}


class ErrorBody(BaseModel):
    detail: str


class RecommendRequest(BaseModel):
    user_id: Id | None = None
    history: list[HistoryId] | None = Field(None, max_length=1000)
    n: int = Field(20, ge=1, le=500)
    lambda_: float = Field(0.0, alias="lambda", ge=0.0, le=1000.0, allow_inf_nan=False)
    exclude_history: bool = True
    rank: bool = False  # score the candidates with the ranker (server started with --ranker)
    exclude_items: list[Id] = Field(default_factory=list, max_length=10_000)
    exclude_categories: list[Id] = Field(default_factory=list, max_length=1000)
    only_categories: list[Id] | None = Field(None, max_length=1000)

    model_config = {"populate_by_name": True, **STRICT}

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
    new: bool = Field(description="added after training (cold-start vector)")


class RecommendResponse(BaseModel):
    user_id: str | None
    known_user: bool
    items: list[RecommendedItem]
    ignored_items: list[str]
    history: list[str]
    interests: int
    ranked: bool
    fallback: str | None = None  # "popular": unknown user or empty history
    short: bool = Field(False, description="fewer than n items passed the filters")


class ReloadRequest(BaseModel):
    bundle: Annotated[str, Field(min_length=1, max_length=4096),
                      AfterValidator(_no_lone_surrogates)] | None = None  # default: the same path

    model_config = STRICT


class WorkerStatus(BaseModel):
    pid: int
    generation: int = Field(description="how many reloads the fleet had when this worker swapped")
    bundle: str
    version: str
    loaded_at: str
    error: str | None = None


class ReloadResponse(BaseModel):
    bundle: str
    version: str
    items: int
    workers: list[WorkerStatus] | None = Field(None, description="with --workers N: what each serves")


class Event(BaseModel):
    item_id: Id
    timestamp: int | None = Field(None, ge=0, le=MAX_TIMESTAMP)

    model_config = STRICT


class EventsRequest(BaseModel):
    user_id: Id
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)

    model_config = STRICT


class EventsResponse(BaseModel):
    user_id: str
    stored: int
    ignored_items: list[str]


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory`` (``mirec serve --workers N``): every worker process
    loads the bundle named by ``MIREC_BUNDLE`` (plus ``MIREC_STORE``, ``MIREC_INDEX``,
    ``MIREC_HNSW_ABOVE``, ``MIREC_RANKER``, ``MIREC_KEEP_EVENTS``, ``MIREC_UNAVAILABLE``,
    ``MIREC_NEW_ITEMS``, ``MIREC_LOG_FORMAT`` and the limits of
    :meth:`Limits.from_env`); the SQLite store in WAL mode is shared between them. A worker
    stops when its supervisor (``MIREC_SUPERVISOR_PID``) dies. Under ``MIREC_RUNTIME_DIR``
    (``mirec serve --workers N``) it loads the bundle the fleet serves now and follows its
    reloads (serve/fleet.py)."""
    import os

    import torch

    from mirec.serve.fleet import RUNTIME_ENV, TIMEOUT_ENV, FleetLive
    from mirec.serve.guard import watch_parent
    from mirec.serve.observe import log_to_stderr
    from mirec.serve.service import open_recommender, reload_on_sighup

    env = os.environ
    if env.get("MIREC_SUPERVISOR_PID"):
        watch_parent(int(env["MIREC_SUPERVISOR_PID"]))
    torch.set_num_threads(1)
    keep = int(env.get("MIREC_KEEP_EVENTS") or 0) or None

    def load(bundle: str):
        return open_recommender(bundle, env.get("MIREC_INDEX", "auto"),
                                int(env.get("MIREC_HNSW_ABOVE", "50000")), env.get("MIREC_STORE") or None,
                                env.get("MIREC_RANKER") or None, keep_events=keep,
                                unavailable=env.get("MIREC_UNAVAILABLE") or None,
                                new_items=env.get("MIREC_NEW_ITEMS") or None)

    if env.get(RUNTIME_ENV):
        live = FleetLive.open(Path(env[RUNTIME_ENV]), load, float(env.get(TIMEOUT_ENV) or 60))
    else:
        live = Live(load(env["MIREC_BUNDLE"]))
    reload_on_sighup(live)
    if isinstance(live, FleetLive):
        live.start()  # after the SIGHUP handler: the supervisor sends SIGHUP to started workers
    log_json = env.get("MIREC_LOG_FORMAT") == "json"
    if log_json:
        log_to_stderr()
    return create_app(live, Limits.from_env(env), log_json=log_json)


def _field_error(field: str, msg: str, type_: str) -> HTTPException:
    """A 422 in FastAPI's own shape (loc, msg, type) for checks the request model cannot make."""
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": msg, "type": type_}])


def _recommend_body(r) -> dict:
    return {"user_id": r.user_id, "known_user": r.known_user, "ignored_items": r.ignored_items,
            "history": r.history, "interests": r.interests, "ranked": r.ranked,
            "fallback": r.fallback, "short": r.short,
            "items": [{"item_id": x.item_id, "title": x.title, "categories": x.categories,
                       "score": x.score, "interest": x.interest, "because": x.because, "new": x.new}
                      for x in r.items]}


ERRORS = {400: {"model": ErrorBody, "description": "A request the recommender refuses"}}
NOT_FOUND = {404: {"model": ErrorBody, "description": "Unknown item id"}}
# the endpoints that read the event store (a user's history, its last seq)
STORE_DOWN = {503: {"model": ErrorBody, "description": "The event store cannot be read now (Retry-After)"}}
# every endpoint of a --workers N server (serve/fleet.py ServedBy)
FLEET = {"503": "This worker is not serving the published bundle yet (Retry-After)"}
NO_STORE = {409: {"model": ErrorBody, "description": "The server runs without an event store"},
            503: {"model": ErrorBody, "description": "The event store cannot be written now (not stored)"}}
RELOAD = {400: {"model": ErrorBody, "description": "The new bundle failed to load; the old one is served"},
          403: {"model": ErrorBody, "description": "The server runs without a token: reload by SIGHUP"},
          504: {"model": ErrorBody, "description": "Published, but some worker had not loaded it in time"}}


def create_app(rec: Recommender | Live, limits: Limits | None = None, log_json: bool = False) -> FastAPI:
    """The app serving ``rec`` (a :class:`Live` holder when the caller reloads it, e.g. on
    SIGHUP). Every endpoint takes ``live.rec`` once, so a reload never splits a request."""
    live = rec if isinstance(rec, Live) else Live(rec)
    limits = limits or Limits()
    app = FastAPI(title="mirec", version=str(live.rec.bundle.manifest["versions"]["mirec"]),
                  description="Multi-interest retrieval with controllable diversity.")
    install(app, limits, FLEET if isinstance(live, FleetLive) else None)
    metrics = Metrics()
    metrics.served(live.rec)
    live.on_swap.append(metrics.served)
    app.add_middleware(Observe, metrics=metrics, log_json=log_json)
    app.add_middleware(ServedBy, live=live)  # outermost: every response names its bundle
    app.state.live, app.state.metrics = live, metrics

    @app.exception_handler(MirecError)
    def _client_error(request, exc: MirecError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(StoreUnavailable)  # disk full, database down: not acknowledged
    def _store_down(request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"})

    # Plain ``def`` endpoints run in the threadpool: a CPU-bound /recommend (tower, search,
    # ranker) must not block the event loop, or cheap requests like /events wait behind it.
    # The response is serialised directly (the model still documents the schema).
    @app.post("/recommend", response_model=RecommendResponse, responses={**ERRORS, **STORE_DOWN})
    def recommend(req: RecommendRequest, request: Request) -> JSONResponse:
        rec = live.rec
        if req.n > rec.cfg.max_n:
            raise _field_error("n", f"n must be <= {rec.cfg.max_n}", "less_than_equal")
        if req.rank and rec.ranker is None:
            raise _field_error("rank", "this server has no ranker (start it with --ranker)",
                               "no_ranker")
        filters = Filters(req.exclude_items, req.exclude_categories, req.only_categories)
        r = rec.recommend(user_id=req.user_id, history=req.history, n=req.n, diversity=req.lambda_,
                          exclude_history=req.exclude_history, rank=req.rank, filters=filters)
        if req.user_id is not None:
            request.state.user_known = r.known_user
        return JSONResponse(_recommend_body(r))

    @app.post("/events", response_model=EventsResponse, responses={**ERRORS, **NO_STORE})
    def events(req: EventsRequest) -> EventsResponse:  # sync: the commit waits for fsync
        rec = live.rec
        if rec.store is None:
            raise HTTPException(409, detail="this server runs without an event store")
        # every event is stored, unknown items too: `mirec data append` learns new items from
        # them; serving skips them when it reads a history (Recommender.user_history)
        ignored = [e.item_id for e in req.events if e.item_id not in rec.bundle.item_ids]
        stored = rec.store.append(req.user_id, [(e.item_id, e.timestamp) for e in req.events])
        metrics.events.inc(stored)
        return EventsResponse(user_id=req.user_id, stored=stored, ignored_items=ignored)

    @app.get("/items/{item_id}", response_model=ItemInfo, responses=NOT_FOUND)
    def item(item_id: str) -> dict:
        b = live.rec.bundle
        i = b.item_ids.get(item_id)
        if i is None:
            raise HTTPException(404, detail=f"item_id {item_id[:100]!r}: not in the catalogue")
        return b.item_info(i)

    @app.get("/health", responses=STORE_DOWN)
    def health() -> dict:
        rec = live.rec
        return {"status": "ok", "model": rec.bundle.manifest["model"],
                "items": rec.bundle.num_items - 1, "index": rec.index.kind,
                "ranker": rec.ranker.name if rec.ranker else None,
                "last_event_seq": rec.store.last_seq() if rec.store else None, "version": rec.bundle.version,
                "bundle": {"version": rec.bundle.version, "path": str(rec.bundle.path),
                           "loaded_at": iso(live.loaded_at)},
                "pid": os.getpid(),
                **({"generation": live.generation, "workers": live.workers()}
                   if isinstance(live, FleetLive) else {})}

    @app.post("/admin/reload", response_model=ReloadResponse, responses=RELOAD)
    def reload(req: ReloadRequest | None = None) -> ReloadResponse:
        if not limits.token:
            raise HTTPException(403, detail="/admin/reload needs a server started with --token "
                                            "(or send the process SIGHUP)")
        try:
            new = live.reload(req.bundle if req else None)
        except (MirecError, OSError) as e:  # the old bundle stays; the caller learns why
            metrics.reloads.labels("error").inc()
            raise HTTPException(400, detail=str(e)) from None
        except FleetTimeout as e:
            metrics.reloads.labels("error").inc()
            raise HTTPException(504, detail=str(e)) from None
        metrics.reloads.labels("ok").inc()
        return ReloadResponse(bundle=str(new.bundle.path), version=new.bundle.version,
                              items=new.bundle.num_items - 1,
                              workers=live.workers() if isinstance(live, FleetLive) else None)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    from mirec.serve.explore import add_explorer

    add_explorer(app, live)
    return app
