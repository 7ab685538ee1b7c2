"""Cluster routes: relay links between nodes, and WHEP placement onto the chosen edge.

    POST   /relay/{sid}        node token, SDP offer → 201 + answer + Location (a relay viewer)
    GET    /relay/{sid}/{rid}  node token → 200 while the source still serves that link, else 404
    DELETE /relay/{sid}/{rid}  node token → 200

`place_whep` and `forward_delete` are called by the WHEP routes (server/routes/whip.py): a
viewer's offer that lands on a node other than the chosen edge is forwarded to that edge's
HTTP and its answer relayed back; the resource id starts with the serving node's id, so a
DELETE through any node reaches it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from server.app import STATE, client_address, session_or_404
from server.cluster import (
    CLUSTER,
    NODE_HEADER,
    NODE_TOKEN_HEADER,
    NODE_URL_HEADER,
    Cluster,
    node_forwarded,
    verify_node_token,
)
from server.errors import ClassEndedError, LopsoError, UnknownError
from server.models import ClassSession, NodeInfo

log = logging.getLogger(__name__)

MIRRORED = ("Location", "WWW-Authenticate", "Retry-After", "Allow")
TRIES = 3  # edges tried before this node serves the viewer itself


def _cluster(request: web.Request) -> Cluster:
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        raise UnknownError("this node is not in a cluster", code="not_found")
    verify_node_token(cluster.config.secret, request.headers.get(NODE_TOKEN_HEADER, ""))
    return cluster


def resource_id(node_id: str) -> str:
    """A resource id any node can route: `<serving node id>.<random hex>`."""
    return f"{node_id}.{uuid.uuid4().hex}"


# --- relay links (source side) --------------------------------------------------------------
async def post_relay(request: web.Request) -> web.Response:
    from server.routes.whip import lecture_of, read_sdp

    cluster = _cluster(request)
    state = request.app[STATE]
    session = await session_or_404(state.store, request.match_info["sid"])
    if session.ended_at is not None:
        raise ClassEndedError(f"class {session.id} has ended")
    offer = await read_sdp(request)
    lecture = lecture_of(state, session)
    cluster.want(lecture)  # an edge feeding another edge pulls the lecture itself (a tree)
    answer, viewer = await lecture.subscribe(offer, relay=True)  # never paused: carries sites
    rid = resource_id(cluster.node_id)
    cluster.relays[rid] = viewer
    viewer.on_close = lambda _viewer: cluster.relays.pop(rid, None)
    log.info("relay link served", extra={"sid": session.id, "resource": rid, "to": request.remote})
    return web.Response(
        status=201,
        body=answer.encode(),
        content_type="application/sdp",
        headers={"Location": f"/relay/{session.id}/{rid}"},
    )


def _relay_viewer(request: web.Request) -> tuple[Cluster, Any]:
    cluster = _cluster(request)
    viewer = cluster.relays.get(request.match_info["rid"])
    if viewer is None or viewer.lecture.id != request.match_info["sid"] or viewer.closed:
        raise UnknownError("no such relay link", code="unknown_resource")
    return cluster, viewer


async def get_relay(request: web.Request) -> web.Response:
    _, viewer = _relay_viewer(request)
    return web.json_response({"state": viewer.endpoint.state})


async def delete_relay(request: web.Request) -> web.Response:
    cluster, viewer = _relay_viewer(request)
    cluster.relays.pop(request.match_info["rid"], None)
    await viewer.close()
    return web.Response(status=200)


# --- WHEP placement (entry side) ------------------------------------------------------------
async def place_whep(
    request: web.Request, session: ClassSession, offer: str
) -> web.Response | None:
    """Forward a viewer's WHEP offer to the chosen edge and return its reply, or None when
    this node serves the viewer itself (not clustered, chosen, forwarded to, or alone)."""
    from server.routes.whip import lecture_of

    cluster = request.app.get(CLUSTER)
    if cluster is None:
        return None
    state = request.app[STATE]
    if not node_forwarded(request, cluster.config.secret):
        for node in (await cluster.rank(session.id))[:TRIES]:
            if node.id == cluster.node_id:
                break
            reply = await _forward_whep(request, cluster, node, offer)
            if reply is not None:
                return reply
    cluster.want(lecture_of(state, session))
    return None


async def place_whip(request: web.Request, offer: str) -> web.Response | None:
    """On an edge, hand a lecturer's WHIP offer to the origin and return its reply (None:
    this node takes it: not clustered, not an edge, or forwarded already)."""
    cluster = request.app.get(CLUSTER)
    if cluster is None or cluster.role != "edge" or node_forwarded(request, cluster.config.secret):
        return None
    sid = request.match_info["sid"]
    origins = [n for n in await cluster.nodes() if n.role in ("origin", "all")]
    origins.sort(key=lambda n: sid not in n.lectures)
    for node in origins[:TRIES]:
        reply = await _forward_whep(request, cluster, node, offer)
        if reply is not None:
            return reply
    raise NoOriginError("no origin is reachable to take the lecture; try again in a moment")


class NoOriginError(LopsoError):
    """An edge got a lecturer's offer and no origin answers."""

    status = 503
    code = "no_origin"


async def _forward_whep(
    request: web.Request, cluster: Cluster, node: NodeInfo, offer: str
) -> web.Response | None:
    assert cluster.http is not None
    headers = cluster.headers(
        **{"Content-Type": "application/sdp", "X-Forwarded-For": client_address(request)}
    )
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    url = f"{node.http_url}{request.path_qs}"
    try:
        async with cluster.http.post(url, data=offer, headers=headers) as reply:
            body = await reply.read()
            if reply.status >= 500:
                raise aiohttp.ClientResponseError(reply.request_info, (), status=reply.status)
            cluster.placed(node)
            return _mirror(reply, body, node)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("node did not take an offer", extra={"node": node.id, "error": repr(exc)})
        cluster.mark_down(node.id)
        return None


def _mirror(reply: aiohttp.ClientResponse, body: bytes, node: NodeInfo) -> web.Response:
    headers = {k: reply.headers[k] for k in MIRRORED if k in reply.headers}
    headers.update({NODE_HEADER: node.id, NODE_URL_HEADER: node.http_url})
    return web.Response(
        status=reply.status, body=body, headers=headers, content_type=reply.content_type
    )


async def forward_delete(request: web.Request, rid: str) -> web.Response | None:
    """DELETE a WHEP/WHIP resource served by another node (its id names the node), or None."""
    cluster = request.app.get(CLUSTER)
    node_id = rid.rpartition(".")[0]
    if cluster is None or not node_id or node_id == cluster.node_id:
        return None
    if node_forwarded(request, cluster.config.secret):
        return None  # already forwarded once: never bounce
    node = await cluster.node(node_id)
    if node is None or cluster.http is None:
        return None
    headers = cluster.headers()
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with cluster.http.delete(
            f"{node.http_url}{request.path_qs}", headers=headers
        ) as reply:
            return _mirror(reply, await reply.read(), node)
    except (aiohttp.ClientError, TimeoutError):
        return None


def add_routes(app: web.Application) -> None:
    app.router.add_post("/relay/{sid}", post_relay)
    app.router.add_get("/relay/{sid}/{rid}", get_relay)
    app.router.add_delete("/relay/{sid}/{rid}", delete_relay)
