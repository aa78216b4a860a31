"""The gateway's Prometheus metrics: requests by route and status, deployments, callbacks.

Each gateway has its own registry, so several gateways in one process (tests, the embedded
mode) do not collide in the global one.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest


class GatewayMetrics:
    """Counters and histograms of one gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flotilla_gateway_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flotilla_gateway_request_seconds",
            "Time to answer an HTTP request (to the end of the stream for event streams).",
            ["method", "route"],
            registry=self.registry,
        )
        self.deployments_created = Counter(
            "flotilla_gateway_deployments_created",
            "Deployment requests handed to the scheduler, by API.",
            ["api"],
            registry=self.registry,
        )
        self.callbacks = Counter(
            "flotilla_gateway_callbacks",
            "Callback deliveries, by outcome (delivered, failed, retried).",
            ["outcome"],
            registry=self.registry,
        )

    def exposition(self) -> web.Response:
        """The metrics in Prometheus' text format."""
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count and time every request by its route template (never its concrete path)."""
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        else:
            status = response.status
            return response
        finally:
            name = _route(request)
            self.requests.labels(request.method, name, str(status)).inc()
            self.latency.labels(request.method, name).observe(time.perf_counter() - started)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical
