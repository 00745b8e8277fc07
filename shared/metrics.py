"""Prometheus metrics per service, and the `/metrics` + `/healthz` endpoint beside them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """A registry per service instance: several services can share a process in tests without name clashes."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()

    def _name(self, what: str) -> str:
        return f"vigil_{self.service}_{what}"

    def counter(self, what: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        # prometheus_client appends `_total` itself.
        return Counter(self._name(what), doc, labels, registry=self.registry)

    def gauge(self, what: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(self._name(what), doc, labels, registry=self.registry)

    def histogram(self, what: str, doc: str, labels: tuple[str, ...] = ()) -> Histogram:
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        return Histogram(self._name(f"{what}_seconds"), doc, labels, registry=self.registry, buckets=buckets)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def counter_value(counter: Counter, **labels: str) -> float:
    """Read a counter back (tests and end-of-run summaries)."""
    child = counter.labels(**labels) if labels else counter
    value: float = child._value.get()  # prometheus_client has no public read API
    return value


async def start_http(metrics: Metrics, health: Callable[[], dict[str, Any]], host: str, port: int) -> web.AppRunner | None:
    """Serve `/metrics` and `/healthz`; port 0 means the service runs without them."""
    if port == 0:
        return None

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(_: web.Request) -> web.Response:
        doc = health()
        status = 200 if doc.get("ok", True) else 503
        return web.Response(text=json.dumps(doc), status=status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
