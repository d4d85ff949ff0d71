"""What stands between the network and the recommender: access, size and rate limits, safe
error bodies, and the worker's watch on its supervisor.

One ASGI middleware (:class:`Guard`) answers before any route runs, so an unauthenticated or
oversized request is never parsed:

    Content-Length above ``max_body`` bytes        -> 413 (before the body is read)
    ``token`` set and no ``Authorization: Bearer`` -> 401 (every path but the public ones)
    ``rate`` set and the client's bucket is empty  -> 429 with Retry-After (per process)
    body counted past ``max_body`` bytes           -> 413 (whatever the headers say)

The client address the rate limit keys on is the connection's peer: uvicorn believes
``X-Forwarded-For`` only from the proxies named by ``mirec serve --trusted-proxies``
(:func:`proxy_options`).

:func:`validation_error` replaces FastAPI's 422 handler: same body, but values that JSON cannot
carry (NaN, infinities, lone surrogates) are written as escaped strings, so a bad request gets
its 422 instead of a 500 while the server renders the echo of its input.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import signal
import threading
import time
from collections import deque
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


def proxy_options(trusted: str | None) -> dict[str, Any]:
    """uvicorn's proxy settings for ``mirec serve --trusted-proxies`` (comma-separated addresses
    or networks, ``*`` for any). None or empty: no forwarding header is believed
    (``proxy_headers=False``; uvicorn's own default believes ``X-Forwarded-For`` from
    127.0.0.1 or ``FORWARDED_ALLOW_IPS``, so a client on the same host could pick its own
    address and rate-limit bucket). Given: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are
    believed from those peers only."""
    hosts = [h.strip() for h in (trusted or "").split(",") if h.strip()]
    if not hosts:
        return {"proxy_headers": False}
    if "*" in hosts:
        return {"proxy_headers": True, "forwarded_allow_ips": "*"}
    for h in hosts:
        try:  # uvicorn would take a malformed entry as a literal that never matches: refuse it
            ipaddress.ip_network(h) if "/" in h else ipaddress.ip_address(h)
        except ValueError as e:
            raise MirecConfigError(f"--trusted-proxies: {e}") from None
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(hosts)}


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def header_values(scope: dict, name: bytes) -> list[bytes]:
    """Every value of the header ``name`` (lower case), however often and in whatever casing
    the client sent it."""
    return [v.strip() for k, v in scope["headers"] if k.lower() == name]


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


class Guard:
    """ASGI middleware: declared size, bearer token, per-client rate, then the body itself.

    The size limit never trusts the headers: every body is read here, counted byte by byte
    (with a Content-Length, chunked in any casing, in a Transfer-Encoding list, or with the
    header repeated), before any route runs. Beyond ``max_body`` bytes reading stops and the
    request gets 413 (the route has not started, so nothing else was sent); within it the
    messages are replayed to the app as they came. A declared Content-Length above the limit
    (or not a byte count) is refused before the body is read at all.
    """

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.expected = f"Bearer {limits.token}".encode() if limits.token else None
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self.lock = threading.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refuse(scope)
        if refusal is None:
            receive, refusal = await self.read_body(receive)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def too_large(self) -> JSONResponse:
        return _error(413, f"request body: larger than {self.limits.max_body} bytes")

    def refuse(self, scope: dict) -> JSONResponse | None:
        """The answer to a request its headers and client already rule out, else None."""
        if any(not n.isdigit() or len(n) > 18 or int(n) > self.limits.max_body
               for n in header_values(scope, b"content-length")):
            return self.too_large()
        if self.expected and not is_public(scope["path"]):
            given = header_values(scope, b"authorization")  # exactly one, and the right one
            if len(given) != 1 or not hmac.compare_digest(given[0], self.expected):
                return _error(401, "Authorization: a valid 'Bearer <token>' header is required",
                              {"WWW-Authenticate": "Bearer"})
        if self.limits.rate > 0:
            # scope["client"] is the connection's peer, or what a trusted proxy forwarded
            # (``mirec serve --trusted-proxies``; uvicorn believes no header by default)
            wait = self.take(scope.get("client")[0] if scope.get("client") else "?")
            if wait > 0:
                return _error(429, f"too many requests: retry in {wait:.1f} s",
                              {"Retry-After": str(math.ceil(wait))})
        return None

    async def read_body(self, receive: Any) -> tuple[Any, JSONResponse | None]:
        """Read the whole body, counting its bytes: (a ``receive`` that replays it, None), or
        (``receive``, 413) as soon as the count passes the limit; the rest is never read."""
        messages, total = deque(), 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: replayed, so the app sees it
            total += len(message.get("body", b""))
            if total > self.limits.max_body:
                return receive, self.too_large()
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return messages.popleft() if messages else await receive()

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
ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def document(app: FastAPI, limits: Limits, everywhere: dict[str, str] | None = None) -> None:
    """Add the guard's answers to the OpenAPI schema: 413 (and 429 when rate-limited) on every
    operation, and with a token the bearer scheme and 401 on every non-public path.
    ``everywhere``: more status codes (and what they mean) any operation may answer, added to
    the description of a code the route already declares."""
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
                responses = op.setdefault("responses", {})
                if "requestBody" in op and "400" not in responses:  # unparsable JSON
                    responses["400"] = {"description": "The body is not valid JSON", "content": ERROR_CONTENT}
                for code, what in extra.items():
                    responses[code] = {"description": what, "content": ERROR_CONTENT}
                for code, what in (everywhere or {}).items():
                    if code in responses:
                        responses[code]["description"] += f"; or: {what}"
                    else:
                        responses[code] = {"description": what, "content": ERROR_CONTENT}
                if "401" in extra:
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install(app: FastAPI, limits: Limits, everywhere: dict[str, str] | None = None) -> None:
    """The guard middleware, the serialisable 422 handler and their OpenAPI entries (with
    ``everywhere``: see :func:`document`)."""
    limits.validate()
    app.add_middleware(Guard, limits=limits)
    app.add_exception_handler(RequestValidationError, validation_error)
    document(app, limits, everywhere)


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
