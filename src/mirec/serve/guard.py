"""What stands between the network and the recommender: access, size and rate limits, safe
error bodies, and the worker's watch on its supervisor.

One ASGI middleware (:class:`Guard`) answers before any route runs, so an unauthenticated or
oversized request is never parsed:

    body larger than ``max_body`` bytes            -> 413 (Content-Length, or counted when chunked)
    ``token`` set and no ``Authorization: Bearer`` -> 401 (every path but the public ones)
    ``rate`` set and the client's bucket is empty  -> 429 with Retry-After (per process)

:func:`validation_error` replaces FastAPI's 422 handler: same body, but values that JSON cannot
carry (NaN, infinities, lone surrogates) are written as escaped strings, so a bad request gets
its 422 instead of a 500 while the server renders the echo of its input.
"""

from __future__ import annotations

import hmac
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mirec.errors import MirecConfigError

PUBLIC = ("/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
PUBLIC_PREFIXES = ("/static/",)
MAX_CLIENTS = 10_000  # rate-limit buckets kept; the oldest are dropped beyond this


@dataclass
class Limits:
    """Access and size limits of the HTTP service (``mirec serve`` options)."""

    token: str | None = None  # bearer token every non-public path requires; None = open
    max_body: int = 1 << 20  # bytes per request body
    rate: float = 0.0  # requests per second per client address; 0 = no limit
    burst: int = 20  # requests a client may send at once before the rate applies

    def validate(self) -> None:
        if self.token is not None and not self.token.strip():
            raise MirecConfigError("--token: must not be empty")
        if self.max_body < 1:
            raise MirecConfigError(f"--max-body: must be >= 1 byte, got {self.max_body}")
        if not math.isfinite(self.rate) or self.rate < 0:
            raise MirecConfigError(f"--rate-limit: must be a finite number >= 0, got {self.rate}")
        if self.burst < 1:
            raise MirecConfigError(f"burst: must be >= 1, got {self.burst}")

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Limits:
        """The limits a ``--workers`` process reads from ``MIREC_TOKEN``, ``MIREC_MAX_BODY``,
        ``MIREC_RATE_LIMIT``."""
        return cls(token=env.get("MIREC_TOKEN") or None,
                   max_body=int(env.get("MIREC_MAX_BODY", str(cls.max_body))),
                   rate=float(env.get("MIREC_RATE_LIMIT", "0")))


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


class Guard:
    """ASGI middleware: body size, bearer token, per-client rate (in that order)."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.expected = f"Bearer {limits.token}".encode() if limits.token else None
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self.lock = threading.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        refusal = self.refuse(scope, headers)
        if refusal is None:
            receive, refusal = await self.bounded_body(headers, receive)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def refuse(self, scope: dict, headers: dict[bytes, bytes]) -> JSONResponse | None:
        size = headers.get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.limits.max_body):
            return _error(413, f"request body: larger than {self.limits.max_body} bytes")
        if self.expected and not is_public(scope["path"]):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return _error(401, "Authorization: a valid 'Bearer <token>' header is required",
                              {"WWW-Authenticate": "Bearer"})
        if self.limits.rate > 0:
            wait = self.take(scope.get("client")[0] if scope.get("client") else "?")
            if wait > 0:
                return _error(429, f"too many requests: retry in {wait:.1f} s",
                              {"Retry-After": str(math.ceil(wait))})
        return None

    async def bounded_body(self, headers: dict[bytes, bytes], receive: Any
                           ) -> tuple[Any, JSONResponse | None]:
        """A chunked body (no Content-Length) is read here, up to the limit, and replayed."""
        if b"content-length" in headers or b"chunked" not in headers.get(b"transfer-encoding", b""):
            return receive, None
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return receive, None  # client went away: let the app see it
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.limits.max_body:
                return receive, _error(413, f"request body: larger than {self.limits.max_body} bytes")
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay, None

    def take(self, client: str) -> float:
        """Token bucket: 0 when the request may pass, else the seconds until it could."""
        now, rate, burst = time.monotonic(), self.limits.rate, self.limits.burst
        with self.lock:
            tokens, last = self.buckets.pop(client, (float(burst), now))
            tokens = min(burst, tokens + (now - last) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self.buckets) > MAX_CLIENTS:  # dicts keep insertion order: drop the stalest
                del self.buckets[next(iter(self.buckets))]
        return wait


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats as strings ("nan", "inf") and lone surrogates escaped."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, str):
        return x.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(x, dict):
        return {json_safe(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


async def validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body (``detail``: loc, msg, type, input) made serialisable."""
    return JSONResponse(status_code=422, content={"detail": json_safe(jsonable_encoder(exc.errors()))})


ERROR_BODY = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}


def document(app: FastAPI, limits: Limits) -> None:
    """Add the guard's answers to the OpenAPI schema: 413 (and 429 when rate-limited) on every
    operation, and with a token the bearer scheme and 401 on every non-public path."""
    plain = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain()
        comps = schema.setdefault("components", {})
        comps.setdefault("schemas", {})["Error"] = ERROR_BODY
        if limits.token:
            comps["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        codes = {"413": "Request body too large"}
        if limits.rate > 0:
            codes["429"] = "Too many requests from this client"
        for path, ops in schema.get("paths", {}).items():
            extra = dict(codes)
            if limits.token and not is_public(path):
                extra["401"] = "Missing or wrong bearer token"
            for op in ops.values():
                if "requestBody" in op and "400" not in op.get("responses", {}):  # unparsable JSON
                    op.setdefault("responses", {})["400"] = {
                        "description": "The body is not valid JSON",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                for code, what in extra.items():
                    op.setdefault("responses", {})[code] = {
                        "description": what,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                if "401" in extra:
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install(app: FastAPI, limits: Limits) -> None:
    """The guard middleware, the serialisable 422 handler and their OpenAPI entries."""
    limits.validate()
    app.add_middleware(Guard, limits=limits)
    app.add_exception_handler(RequestValidationError, validation_error)
    document(app, limits)


def watch_parent(expected_ppid: int, every_s: float = 0.5, grace_s: float = 10.0) -> None:
    """In a ``--workers`` process: when the supervisor dies (even by kill -9) the worker is
    re-parented; it then stops itself (SIGTERM: uvicorn's graceful shutdown, then a hard exit
    after ``grace_s``) instead of holding the port as an orphan."""

    def loop() -> None:
        while os.getppid() == expected_ppid:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=loop, name="mirec-parent-watch", daemon=True).start()
