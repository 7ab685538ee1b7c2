"""`GET /metrics` (Prometheus text format) and the middleware counting WHIP/WHEP replies.

The scrape needs `Authorization: Bearer <LOPSO_METRICS_TOKEN>` (or `?token=`), or an admin
token: per-class numbers name classes, so the endpoint is not public.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from server import auth
from server.app import STATE
from server.errors import AuthError, ForbiddenError
from server.metrics import CONTENT_TYPE
from server.models import Role
from server.roles import Action

SIGNALLING = ("whip", "whep")


def check_scraper(request: web.Request) -> None:
    """Admit the metrics token or an admin token; anything else is a 401."""
    config = request.app[STATE].config
    presented = auth.bearer(request.headers.get("Authorization"), request.query.get("token"))
    if not presented:
        raise AuthError("metrics need a bearer token", code="token_missing")
    if config.metrics_token and hmac.compare_digest(
        presented.encode(), config.metrics_token.encode()
    ):
        return
    claims = auth.verify(config.secret, presented)
    if claims.role is not Role.ADMIN:
        raise ForbiddenError("metrics need the metrics token or an admin token")
    auth.authorize(claims, Action.ADMIN, auth.ANY_CLASS)  # every class's numbers


async def get_metrics(request: web.Request) -> web.Response:
    check_scraper(request)
    body = request.app[STATE].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@web.middleware
async def signalling_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count WHIP/WHEP requests by kind, method, final status and origin (outermost middleware).

    In a cluster a viewer's WHEP POST may be forwarded to the edge that serves it: the entry
    node counts it with `via="client"`, the edge again with `via="node"`."""
    kind = request.path.split("/", 2)[1] if request.path.count("/") >= 2 else ""
    if kind not in SIGNALLING:
        response: web.StreamResponse = await handler(request)
        return response
    state = request.app[STATE]
    via = (
        "node" if state.config.redis_url and _from_node(request, state.config.secret) else "client"
    )
    count = state.metrics.signalling
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        count.labels(kind, request.method, str(exc.status), via).inc()
        raise
    except Exception:
        count.labels(kind, request.method, "500", via).inc()
        raise
    count.labels(kind, request.method, str(response.status), via).inc()
    return response


def _from_node(request: web.Request, secret: bytes) -> bool:
    """Another node forwarded it (cluster placement): the client's request is counted there."""
    from server.cluster import node_forwarded

    return node_forwarded(request, secret)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics)
