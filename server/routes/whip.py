"""WHIP (publish, RFC 9725) and WHEP (view) endpoints, calling media's Lecture API.

`POST` an SDP offer with a bearer token → `201`, the answer, and a `Location` to `DELETE`.
Bodies are `application/sdp`, at most 64 KiB. PATCH (trickle ICE) is not offered: `405`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from server.app import (
    STATE,
    AppState,
    authorize_request,
    client_address,
    in_background,
    session_or_404,
)
from server.errors import (
    BodyTooLargeError,
    ClassEndedError,
    ContentTypeError,
    UnknownError,
    ValidationError,
)
from server.mediaflow import FlowRecorder
from server.models import ClassSession
from server.roles import Action
from server.routes import relay

log = logging.getLogger(__name__)

MAX_SDP = 64 * 1024
ALLOW = "OPTIONS, POST"
ALLOW_RESOURCE = "DELETE, OPTIONS"
MEDIA_MODES = ("auto", "audio_only")


@dataclasses.dataclass
class Resource:
    """A live WHIP publisher or WHEP viewer, addressed by its Location."""

    kind: str  # "whip" | "whep"
    sid: str
    site: str | None
    handle: Any  # media Publisher or Viewer


async def read_sdp(request: web.Request) -> str:
    """The request's SDP offer: right Content-Type, ≤ 64 KiB, UTF-8, starting with v=0."""
    if request.content_type != "application/sdp":
        raise ContentTypeError(
            f"Content-Type must be application/sdp, got {request.content_type or 'none'}"
        )
    if request.content_length is not None and request.content_length > MAX_SDP:
        raise BodyTooLargeError(f"SDP offer is over {MAX_SDP} bytes")
    chunks, size = [], 0
    while chunk := await request.content.read(MAX_SDP + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_SDP:
            raise BodyTooLargeError(f"SDP offer is over {MAX_SDP} bytes")
    try:
        offer = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("SDP offer is not UTF-8 text", code="sdp_invalid") from None
    if not offer.lstrip().startswith("v=0"):
        raise ValidationError("SDP offer must start with v=0", code="sdp_invalid")
    if "\nm=" not in offer:
        raise ValidationError("SDP offer has no media section (m= line)", code="sdp_invalid")
    return offer


def lecture_of(state: AppState, session: ClassSession) -> Any:
    """The media lecture of a class, created with the class's codec, wired to the hub once."""
    lecture = state.engine.lecture(session.id, video_codec=session.video_codec)
    if state.lectures.get(session.id) is lecture:
        return lecture
    state.lectures[session.id] = lecture

    def on_live(live: bool) -> None:
        task = asyncio.get_running_loop().create_task(_announce_live(state, session.id, live))
        state.background.add(task)
        task.add_done_callback(state.background.discard)

    lecture.on_live = on_live
    return lecture


async def _announce_live(state: AppState, sid: str, live: bool) -> None:
    try:
        session = await state.store.get_session(sid)
        if session is not None:
            await state.hub.set_live(session, live)
    except Exception:
        log.exception("could not announce live state", extra={"sid": sid, "live": live})


def _created(location: str, answer: str) -> web.Response:
    return web.Response(
        status=201,
        body=answer.encode(),
        content_type="application/sdp",
        headers={"Location": location},
    )


async def open_class(request: web.Request, action: Action, site: str | None) -> ClassSession:
    """Rate-limit, authorize, and fetch a class that has not ended."""
    state = request.app[STATE]
    state.signalling_limiter.check(f"sig:{client_address(request)}")
    sid = request.match_info["sid"]
    authorize_request(request, action, sid, site)
    session = await session_or_404(state.store, sid)
    if session.ended_at is not None:
        raise ClassEndedError(f"class {sid} has ended")
    if state.engine is None:
        raise UnknownError("this node does not serve media", code="no_media")
    return session


async def post_whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = await open_class(request, Action.PUBLISH, None)
    offer = await read_sdp(request)
    placed = await relay.place_whip(request, offer)  # cluster: an edge hands it to the origin
    if placed is not None:
        return placed
    takeover = takeover_of(request)
    lecture = lecture_of(state, session)
    answer, publisher = await lecture.publish(offer, takeover=takeover)
    if state.recordings is not None:  # the origin records what it forwards (server/recordings)
        state.recordings.start(session.id, lecture, session.video_codec)
    rid = _remember(state, Resource("whip", session.id, None, publisher))
    log.info("lecturer published", extra={"sid": session.id, "resource": rid, "takeover": takeover})
    return _created(f"/whip/{session.id}/{rid}", answer)


def takeover_of(request: web.Request) -> bool:
    """`?takeover=1`: replace a publisher still on air (the lecturer moves to another device)."""
    value = request.query.get("takeover", "0")
    if value not in ("0", "1"):
        raise ValidationError("takeover must be 0 or 1", code="bad_query")
    return value == "1"


async def post_whep(request: web.Request) -> web.Response:
    started = time.monotonic()
    state = request.app[STATE]
    code = request.match_info["site"]
    session = await open_class(request, Action.VIEW, code)
    listed = code in session.site_codes if session.site_codes else None
    if listed is None:  # a class of every registered site: one lookup, not the registry
        listed = await state.store.get_site(code) is not None
    if not listed:
        raise UnknownError(f"site {code} is not in class {session.id}", code="unknown_site")
    offer = await read_sdp(request)
    placed = await relay.place_whep(request, session, offer)  # cluster: the chosen edge answers
    if placed is not None:
        return placed
    answer, viewer = await lecture_of(state, session).subscribe(offer)
    if media_mode_of(request, session.id, code) == "audio_only":  # before it connects
        viewer.set_audio_only(True)
    state.metrics.watch_join(viewer, started)
    rid = _remember(state, Resource("whep", session.id, code, viewer))
    # attendance: media flowing to this site's viewer (a relay link, relay.py, is no site)
    viewer.on_flow = FlowRecorder(
        state.hub, session.id, code, rid, functools.partial(in_background, state)
    )
    return _created(f"/whep/{session.id}/{code}/{rid}", answer)


def media_mode_of(request: web.Request, sid: str, code: str) -> str:
    """The site's media choice for a new viewer: the page's `?media=audio_only` (kept when a
    cluster forwards the offer), else what its `media_mode` message recorded in the class."""
    if request.query.get("media") in MEDIA_MODES:
        return request.query["media"]
    room = request.app[STATE].hub.open_room(sid)
    site = room.sites.get(code) if room is not None else None
    return site.media_mode if site is not None else "auto"


def _remember(state: AppState, resource: Resource) -> str:
    rid = f"{state.config.node_id}.{uuid.uuid4().hex}"  # any node can route it (relay.py)
    state.resources[rid] = resource
    previous = getattr(resource.handle, "on_close", None)

    def forget(*args: Any) -> None:
        state.resources.pop(rid, None)
        if callable(previous):
            previous(*args)

    try:
        resource.handle.on_close = forget
    except AttributeError:  # a handle without the callback is forgotten on DELETE only
        pass
    return rid


async def delete_resource(request: web.Request) -> web.Response:
    state = request.app[STATE]
    sid, rid = request.match_info["sid"], request.match_info["rid"]
    site = request.match_info.get("site")
    action = Action.VIEW if site is not None else Action.PUBLISH
    authorize_request(request, action, sid, site)
    resource = state.resources.get(rid)
    if resource is None and (forwarded := await relay.forward_delete(request, rid)) is not None:
        return forwarded
    if resource is None or resource.sid != sid or resource.site != site:
        raise UnknownError(f"no such resource {rid}", code="unknown_resource")
    state.resources.pop(rid, None)
    await resource.handle.close()
    return web.Response(status=200)


async def options(request: web.Request) -> web.Response:
    allow = ALLOW_RESOURCE if "rid" in request.match_info else ALLOW
    return web.Response(status=204, headers={"Allow": allow, "Accept-Post": "application/sdp"})


async def not_allowed(request: web.Request) -> web.Response:
    allow = ALLOW_RESOURCE if "rid" in request.match_info else ALLOW
    raise web.HTTPMethodNotAllowed(
        request.method, allow.split(", "), reason="trickle ICE and ICE restarts are not supported"
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    for path, post in (("/whip/{sid}", post_whip), ("/whep/{sid}/{site}", post_whep)):
        r.add_post(path, post)
        r.add_route("OPTIONS", path, options)
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            r.add_route(method, path, not_allowed)
    for path in ("/whip/{sid}/{rid}", "/whep/{sid}/{site}/{rid}"):
        r.add_delete(path, delete_resource)
        r.add_route("OPTIONS", path, options)
        for method in ("GET", "PATCH", "PUT", "POST"):
            r.add_route(method, path, not_allowed)
