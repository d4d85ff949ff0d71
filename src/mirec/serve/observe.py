"""Observability of the HTTP service: Prometheus metrics and one JSON log line per request.

``GET /metrics`` (Prometheus text format, from ``prometheus-client``) exposes::

    mirec_requests_total{method, endpoint, status}     counter
    mirec_request_seconds{method, endpoint}            histogram of the latency
    mirec_events_written_total                          events stored by POST /events
    mirec_index_items                                   items in the served index
    mirec_reloads_total{result}                         bundle reloads: ok | error
    mirec_bundle_info{version, model, path}             1: the served bundle (0: one served before)

One process (tests, ``--workers 1``): each app has its own registry. ``--workers N``: the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` (serve/fleet.py) before any worker imports
prometheus-client, every worker writes its values there and any worker's /metrics sums them
all (prometheus-client's multiprocess mode): counters and histograms add up over the workers,
dead ones included; ``mirec_index_items`` is the most recent live worker's value and
``mirec_bundle_info`` has one row per live worker (a ``pid`` label).
``endpoint`` is the route's template (``/items/{item_id}``), or ``other`` for unmatched paths,
so the label set stays small. With ``--log-format json`` the logger ``mirec.access`` writes one
line per request: ``{"method", "path", "status", "latency_ms", "user_known"}`` (``user_known``
is null where the request names no user); bodies, and so histories, are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

access_log = logging.getLogger("mirec.access")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The service's metrics, in a registry of their own (several apps may share a process),
    or, under ``PROMETHEUS_MULTIPROC_DIR``, summed over the processes that write there."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mirec_requests", "HTTP requests", ["method", "endpoint", "status"],
                                registry=r)
        self.latency = Histogram("mirec_request_seconds", "HTTP request latency",
                                 ["method", "endpoint"], buckets=BUCKETS, registry=r)
        self.events = Counter("mirec_events_written", "Events stored by POST /events", registry=r)
        self.index_items = Gauge("mirec_index_items", "Items in the served index", registry=r,
                                 multiprocess_mode="livemostrecent")
        self.reloads = Counter("mirec_reloads", "Bundle reloads", ["result"], registry=r)
        # a gauge, not an Info: prometheus-client's multiprocess mode has no Info
        self.bundle = Gauge("mirec_bundle_info", "The served bundle (1)", ["version", "model", "path"],
                            registry=r, multiprocess_mode="liveall")
        self.bundle_labels: tuple[str, ...] | None = None

    def served(self, rec: Any) -> None:
        """Point the bundle and index metrics at a (new) recommender."""
        self.index_items.set(rec.index.num_items - 1)
        labels = (rec.bundle.version, str(rec.bundle.manifest.get("model")), str(rec.bundle.path))
        if self.bundle_labels not in (None, labels):
            self.bundle.labels(*self.bundle_labels).set(0)
            if not self.multiprocess_dir:  # removing a series is not possible in multiprocess mode
                self.bundle.remove(*self.bundle_labels)
        self.bundle.labels(*labels).set(1)
        self.bundle_labels = labels

    def text(self) -> bytes:
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        every = CollectorRegistry()
        MultiProcessCollector(every, self.multiprocess_dir)
        return generate_latest(every)


class Observe:
    """ASGI middleware: count and time every request; log it as JSON when asked."""

    def __init__(self, app: Any, metrics: Metrics, log_json: bool = False) -> None:
        self.app, self.metrics, self.log_json = app, metrics, log_json

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(scope["method"], endpoint, str(status)).inc()
            self.metrics.latency.labels(scope["method"], endpoint).observe(seconds)
            if self.log_json:
                access_log.info(json.dumps({
                    "method": scope["method"], "path": scope["path"], "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                    "user_known": scope.get("state", {}).get("user_known")}))


def log_to_stderr() -> None:
    """``--log-format json``: the access lines go to stderr as they are (one JSON object each)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
