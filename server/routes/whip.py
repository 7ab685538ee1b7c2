"""WHIP (publish, RFC 9725) and WHEP (view) endpoints, calling media's Lecture API.

`POST` an SDP offer with a bearer token → `201`, the answer, and a `Location` to `DELETE`.
A presenter's return feed (`/return/{sid}`, their lecturer token) has the same shape.
Bodies are `application/sdp`, at most 64 KiB. PATCH (trickle ICE) is not offered: `405`.
With TURN configured (server/turn.py), the `201` and an `OPTIONS` that carries the token give
the ICE servers as RFC 9725 `Link: <turn:...>; rel="ice-server"; username=...` headers.
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
from multidict import CIMultiDict

from server.app import (
    STATE,
    AppState,
    authorize_request,
    claims_of,
    client_address,
    in_background,
    session_or_404,
)
from server.errors import (
    BodyTooLargeError,
    ClassEndedError,
    ContentTypeError,
    ForbiddenError,
    UnknownError,
    ValidationError,
)
from server.mediaflow import FlowRecorder
from server.models import ClassSession, Role
from server.roles import Action
from server.routes import relay
from server.turn import ice_servers

log = logging.getLogger(__name__)

MAX_SDP = 64 * 1024
ALLOW = "OPTIONS, POST"
ALLOW_RESOURCE = "DELETE, OPTIONS"
MEDIA_MODES = ("auto", "audio_only")


@dataclasses.dataclass
class Resource:
    """A live WHIP publisher or WHEP viewer, addressed by its Location."""

    kind: str  # "whip" | "whep" | "return" | "preview"
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
    _follow_presenters(state, session.id, lecture)
    return lecture


def _follow_presenters(state: AppState, sid: str, lecture: Any) -> None:
    """Every change of the presenters' sources is told to every page, in order; a change of
    who is on air is also written to the ledger (hub.set_presenters)."""
    order = asyncio.Lock()
    aired: list[str | None] = [None]

    def on_sources() -> None:
        on_air = lecture.on_air_presenter()
        cut, aired[0] = on_air != aired[0], on_air
        states = lecture.presenter_states()
        in_background(state, _announce_presenters(state, sid, order, states, on_air, cut))

    lecture.on_sources = on_sources


async def _announce_presenters(
    state: AppState,
    sid: str,
    order: asyncio.Lock,
    states: dict[str, str],
    on_air: str | None,
    cut: bool,
) -> None:
    async with order:
        try:
            session = await state.store.get_session(sid)
            if session is not None:
                await state.hub.set_presenters(session, states, on_air, cut)
        except Exception:
            log.exception("could not announce presenters", extra={"sid": sid})


async def post_preview(request: web.Request) -> web.Response:
    """`POST /preview/{sid}/{presenter}`: the director's small monitor of one presenter, on
    air or on standby (WHEP shape; moderator, lecturer or admin token)."""
    state = request.app[STATE]
    session = await open_class(request, Action.SEE_ALL, None)
    presenter = session.presenter(request.match_info["presenter"])
    if presenter is None:
        raise UnknownError(
            f"presenter {request.match_info['presenter']} is not in class {session.id}",
            code="unknown_presenter",
        )
    offer = await read_sdp(request)
    placed = await relay.place_whip(request, offer)  # cluster: the origin holds the sources
    if placed is not None:
        return placed
    answer, viewer = await lecture_of(state, session).preview(offer, presenter.id)
    rid = _remember(state, Resource("preview", session.id, None, viewer))
    links = ice_links(state, f"{session.id}.lecturer")  # a director's monitor may need TURN too
    return _created(f"/preview/{session.id}/{presenter.id}/{rid}", answer, links)


def presenter_of(request: web.Request, session: ClassSession) -> str:
    """Whose studio this is: a lecturer token's presenter (none named: the lead); an admin
    token may say `?presenter=`. A presenter the class does not have is refused."""
    claims = claims_of(request)
    wanted = claims.p if claims.role is Role.LECTURER else request.query.get("presenter")
    presenter = session.presenter(wanted)
    if presenter is None:
        raise ForbiddenError(
            f"presenter {wanted} is not in class {session.id}", code="unknown_presenter"
        )
    return presenter.id


async def _announce_live(state: AppState, sid: str, live: bool) -> None:
    try:
        session = await state.store.get_session(sid)
        if session is not None:
            await state.hub.set_live(session, live)
    except Exception:
        log.exception("could not announce live state", extra={"sid": sid, "live": live})


def _created(location: str, answer: str, links: list[str]) -> web.Response:
    headers = CIMultiDict(Location=location)
    for link in links:
        headers.add("Link", link)
    return web.Response(
        status=201, body=answer.encode(), content_type="application/sdp", headers=headers
    )


def ice_links(state: AppState, user: str) -> list[str]:
    """RFC 9725 `Link` header values: the ICE servers with credentials minted for `user`."""
    cfg = state.config
    servers = ice_servers(cfg.turn_urls, cfg.turn_secret, user, cfg.turn_ttl_s, time.time())
    return [link for server in servers for link in server.links()]


def _with_links(response: web.Response, links: list[str]) -> web.Response:
    """A placed (cluster) answer gets this node's ICE servers too, unless it has some."""
    if response.status == 201 and "Link" not in response.headers:
        for link in links:
            response.headers.add("Link", link)
    return response


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
    links = ice_links(state, f"{session.id}.lecturer")
    placed = await relay.place_whip(request, offer)  # cluster: an edge hands it to the origin
    if placed is not None:
        return _with_links(placed, links)
    takeover = takeover_of(request)
    presenter = presenter_of(request, session)
    lecture = lecture_of(state, session)
    answer, publisher = await lecture.publish(offer, takeover=takeover, presenter=presenter)
    if state.recordings is not None:  # the origin records what it forwards (server/recordings)
        state.recordings.start(session.id, lecture, session.video_codec)
    rid = _remember(state, Resource("whip", session.id, None, publisher))
    log.info(
        "presenter published",
        extra={"sid": session.id, "resource": rid, "takeover": takeover, "presenter": presenter},
    )
    return _created(f"/whip/{session.id}/{rid}", answer, links)


async def post_return(request: web.Request) -> web.Response:
    """`POST /return/{sid}`: a presenter's return feed, the programme as halls get it (WHEP
    shape), without the presenter's own voice while they are on air."""
    state = request.app[STATE]
    session = await open_class(request, Action.PUBLISH, None)
    offer = await read_sdp(request)
    placed = await relay.place_whip(request, offer)  # cluster: the origin holds the sources
    if placed is not None:
        return placed
    presenter = presenter_of(request, session)
    answer, viewer = await lecture_of(state, session).subscribe(offer, presenter=presenter)
    rid = _remember(state, Resource("return", session.id, None, viewer))
    links = ice_links(state, f"{session.id}.lecturer")  # as the studio's own publish
    return _created(f"/return/{session.id}/{rid}", answer, links)


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
    links = ice_links(state, f"{session.id}.{code}")
    placed = await relay.place_whep(request, session, offer)  # cluster: the chosen edge answers
    if placed is not None:
        return _with_links(placed, links)
    answer, viewer = await lecture_of(state, session).subscribe(offer)
    if media_mode_of(request, session.id, code) == "audio_only":  # before it connects
        viewer.set_audio_only(True)
    state.metrics.watch_join(viewer, started)
    rid = _remember(state, Resource("whep", session.id, code, viewer))
    # attendance: media flowing to this site's viewer (a relay link, relay.py, is no site)
    viewer.on_flow = FlowRecorder(
        state.hub, session.id, code, rid, functools.partial(in_background, state)
    )
    return _created(f"/whep/{session.id}/{code}/{rid}", answer, links)


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
    if "presenter" in request.match_info:  # a director's preview
        action = Action.SEE_ALL
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
    """Allowed methods; with a bearer token (not a CORS preflight), the ICE servers too, so a
    client can gather TURN candidates before it makes its offer (RFC 9725 section 4.4)."""
    allow = ALLOW_RESOURCE if "rid" in request.match_info else ALLOW
    headers = CIMultiDict({"Allow": allow, "Accept-Post": "application/sdp"})
    if "Authorization" in request.headers:
        sid, site = request.match_info["sid"], request.match_info.get("site")
        action = Action.VIEW if site is not None else Action.PUBLISH
        if "presenter" in request.match_info:  # a director's monitor, as its POST
            action = Action.SEE_ALL
        authorize_request(request, action, sid, site)
        for link in ice_links(request.app[STATE], f"{sid}.{site or 'lecturer'}"):
            headers.add("Link", link)
    return web.Response(status=204, headers=headers)


async def not_allowed(request: web.Request) -> web.Response:
    allow = ALLOW_RESOURCE if "rid" in request.match_info else ALLOW
    raise web.HTTPMethodNotAllowed(
        request.method, allow.split(", "), reason="trickle ICE and ICE restarts are not supported"
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    for path, post in (
        ("/whip/{sid}", post_whip),
        ("/whep/{sid}/{site}", post_whep),
        ("/return/{sid}", post_return),
        ("/preview/{sid}/{presenter}", post_preview),
    ):
        r.add_post(path, post)
        r.add_route("OPTIONS", path, options)
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            r.add_route(method, path, not_allowed)
    for path in (
        "/whip/{sid}/{rid}",
        "/whep/{sid}/{site}/{rid}",
        "/return/{sid}/{rid}",
        "/preview/{sid}/{presenter}/{rid}",
    ):
        r.add_delete(path, delete_resource)
        r.add_route("OPTIONS", path, options)
        for method in ("GET", "PATCH", "PUT", "POST"):
            r.add_route(method, path, not_allowed)
