"""JSON REST API: registry, classes, links, participant check-in, attendance and exports."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from media.errors import PresenterOfflineError
from server import auth, reports
from server.app import (
    STATE,
    authorize_request,
    claims_of,
    client_address,
    commune_scope,
    session_or_404,
    visible_sites,
)
from server.checkin import Checkin, CheckinError, parse_checkin, refuse_closed
from server.demo import class_links
from server.errors import (
    BodyTooLargeError,
    ClassEndedError,
    ContentTypeError,
    ForbiddenError,
    ValidationError,
)
from server.fields import check_text
from server.models import ClassSession, Role
from server.peer import session_wire, site_wire
from server.presenters import parse_presenters
from server.registry import CODE_RE, import_sites, rotate_join_key
from server.roles import Action, may
from server.routes.ws import text
from server.timetable import checkin_closes_at

log = logging.getLogger(__name__)

SID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CODECS = ("VP8", "H264")
MAX_JSON = 256 * 1024
TIME_RANGE = (0.0, 4_102_444_800.0)  # 1970 .. 2100-01-01 UTC: shown in every zone, exported


async def read_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or a precise 4xx."""
    if request.content_type != "application/json":
        raise ContentTypeError("Content-Type must be application/json")
    raw = await request.read()
    if len(raw) > MAX_JSON:
        raise BodyTooLargeError(f"JSON body over {MAX_JSON} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON or UTF-8, nested too deep, a huge number
        raise ValidationError("body is not valid JSON", code="bad_json") from None
    if not isinstance(body, dict):
        raise ValidationError("body must be a JSON object", code="bad_json")
    return body


def parse_time(value: Any, field: str) -> float:
    """ISO 8601 (with offset or Z) or epoch seconds → epoch seconds, from 1970 to 2100."""
    at = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        at = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            at = parsed.timestamp() if parsed.tzinfo is not None else None
        except (ValueError, OverflowError):
            pass
    if at is None:
        raise ValidationError(
            f"{field} must be an ISO 8601 time with a zone, or epoch seconds", code="bad_field"
        )
    if not TIME_RANGE[0] <= at <= TIME_RANGE[1]:  # also NaN: every page and export shows it
        raise ValidationError(f"{field} must be between 1970 and 2100", code="bad_field")
    return at


def _admin(request: web.Request) -> auth.Claims:
    """A registry-wide action: an admin token for every class, not one class's admin."""
    claims = claims_of(request)
    auth.authorize(claims, Action.ADMIN, auth.ANY_CLASS)
    return claims


# --- registry -------------------------------------------------------------------------------
async def import_sites_route(request: web.Request) -> web.Response:
    _admin(request)
    if request.content_type not in ("text/csv", "text/plain", "application/octet-stream"):
        raise ContentTypeError("Content-Type must be text/csv")
    count = await import_sites(request.app[STATE].store, await request.read())
    return web.json_response({"imported": count})


async def list_sites(request: web.Request) -> web.Response:
    claims = claims_of(request)
    if claims.role not in (Role.ADMIN, Role.MODERATOR):
        raise ForbiddenError("only an admin or a moderator may list sites", code="wrong_role")
    sites = visible_sites(claims, await request.app[STATE].store.list_sites())
    return web.json_response({"sites": [site_wire(s) for s in sites]})


async def rotate_site_key(request: web.Request) -> web.Response:
    """`POST /api/sites/{code}/rotate`: a new join key; the site's old links stop working."""
    _admin(request)
    state = request.app[STATE]
    site = await rotate_join_key(state.store, request.match_info["code"])
    state.site_keys.forget(site.code)  # here at once; other nodes within the cache's TTL
    await state.hub.revoke_site(site.code)  # and its pages open now are closed
    log.info("site join key rotated", extra={"site": site.code})
    return web.json_response({"code": site.code, "rotated": True})


# --- classes --------------------------------------------------------------------------------
async def create_session(request: web.Request) -> web.Response:
    _admin(request)
    state = request.app[STATE]
    session = await session_from_body(await read_json(request), state.store)
    if await state.store.get_session(session.id) is not None:
        raise ValidationError(f"class {session.id} already exists", code="class_exists")
    await state.store.put_session(session)
    return web.json_response(session_wire(session), status=201)


async def session_from_body(body: dict[str, Any], store: Any) -> ClassSession:
    """Validate a class description (shared with `lopso class create`)."""
    sid = body.get("id") or uuid.uuid4().hex[:12]
    if not isinstance(sid, str) or not SID_RE.fullmatch(sid):
        raise ValidationError("id must be 1-64 of A-Z a-z 0-9 _ -", code="bad_field")
    title = text(body, "title", 200)
    starts_at = parse_time(body.get("starts_at"), "starts_at")
    ends_at = parse_time(body["ends_at"], "ends_at") if body.get("ends_at") is not None else None
    if ends_at is not None and ends_at <= starts_at:
        raise ValidationError("ends_at must be after starts_at", code="bad_field")
    codec = str(body.get("video_codec", "VP8")).upper()
    if codec not in CODECS:
        raise ValidationError(f"video_codec must be one of {', '.join(CODECS)}", code="bad_field")
    codes = body.get("site_codes", [])
    if not isinstance(codes, list) or not all(
        isinstance(c, str) and CODE_RE.fullmatch(c) for c in codes
    ):
        raise ValidationError("site_codes must be a list of site codes", code="bad_field")
    known = {site.code for site in await store.get_sites(codes)}
    missing = [c for c in codes if c not in known]
    if missing:
        raise ValidationError(f"unknown site codes: {', '.join(missing[:20])}", code="unknown_site")
    return ClassSession(
        id=sid,
        title=title,
        starts_at=starts_at,
        ends_at=ends_at,
        video_codec=codec,
        site_codes=tuple(dict.fromkeys(codes)),
        created_at=time.time(),
        presenters=parse_presenters(body.get("presenters")),
    )


async def get_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    sid = request.match_info["sid"]
    authorize_request(request, Action.VIEW_CLASS, sid)  # a participant's QR token may not
    session = await session_or_404(state.store, sid)
    room = await state.hub.room(session)
    return web.json_response(
        {**session_wire(session), "live": room.live, "expected": len(room.sites)}
    )


async def end_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    sid = request.match_info["sid"]
    claims = authorize_request(request, Action.END_CLASS, sid)
    if commune_scope(claims) is not None:  # it would end the class for every commune
        raise ForbiddenError("a commune moderator may not end the class", code="wrong_commune")
    before = await session_or_404(state.store, sid)
    session = await state.hub.end_class(before)  # the summary goes out once (hub.on_ended_here)
    await close_class_media(state, sid)  # here at once; other nodes on the `ended` broadcast
    return web.json_response(session_wire(session))


async def close_class_media(state: Any, sid: str) -> None:
    """End this node's WHIP/WHEP sessions and media lecture of a class (idempotent)."""
    for rid, resource in list(state.resources.items()):
        if resource.sid == sid:
            state.resources.pop(rid, None)
            await resource.handle.close()
    lecture = state.lectures.pop(sid, None)
    if lecture is not None:
        await lecture.close()
    if state.recordings is not None and sid in state.recordings.active:
        from server.app import in_background

        in_background(state, state.recordings.stop(sid))  # closes and joins its segments


async def session_links(request: web.Request) -> web.Response:
    state = request.app[STATE]
    sid = request.match_info["sid"]
    claims = authorize_request(request, Action.LINKS, sid)
    session = await session_or_404(state.store, sid)
    sites = visible_sites(claims, await state.hub.expected_sites(session))
    if commune_scope(claims) is not None and not sites:
        raise ForbiddenError("no hall of this class is in your communes", code="wrong_commune")
    # A moderator may not publish, so it is never handed a token that may (roles.py).
    presenter = may(claims.role, Action.PUBLISH)
    links = class_links(state.config, session, sites, presenter=presenter)
    if commune_scope(claims) is not None:  # the class's moderator link would see every hall
        links.pop("moderator", None)
    return web.json_response(links)


# --- presenters -----------------------------------------------------------------------------
async def get_presenters(request: web.Request) -> web.Response:
    """`GET /api/sessions/{sid}/presenters`: every presenter's state and who is on air."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    authorize_request(request, Action.VIEW_CLASS, sid)
    room = await state.hub.room(await session_or_404(state.store, sid))
    return web.json_response(room.presenters_message())


async def put_on_air(request: web.Request) -> web.Response:
    """`POST /api/sessions/{sid}/on_air` {presenter}: cut the programme to that presenter.

    A moderator or the lead presenter directs; the presenter on air may hand over."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    claims = authorize_request(request, Action.VIEW_CLASS, sid)
    session = await session_or_404(state.store, sid)
    if session.ended_at is not None:
        raise ClassEndedError(f"class {sid} has ended")
    body = await read_json(request)
    wanted = body.get("presenter")
    target = session.presenter(wanted) if isinstance(wanted, str) else None
    if target is None:
        raise ValidationError("presenter must be the id of one of the class's presenters")
    room = await state.hub.room(session)
    _may_direct(claims, session, room.on_air)
    lecture = state.lectures.get(sid)
    if lecture is not None and target.id in lecture.sources:
        await lecture.cue(target.id)  # PresenterOfflineError: 409 presenter_offline
    elif room.presenter_states.get(target.id) in ("standby", "on_air"):
        await state.hub.cue(session, target.id)  # cluster: the origin holding it cuts
    else:
        raise PresenterOfflineError(f"presenter {target.id} is not publishing")
    log.info("cut", extra={"sid": sid, "presenter": target.id, "by": claims.role.value})
    return web.json_response({"presenter": target.id, "cued": True}, status=202)


def _may_direct(claims: auth.Claims, session: ClassSession, on_air: str | None) -> None:
    if may(claims.role, Action.MODERATE):
        return
    if claims.role is Role.LECTURER:
        me = session.presenter(claims.p)
        if me is not None and (me == session.lineup()[0] or me.id == on_air):
            return
    raise ForbiddenError(
        "only a moderator, the lead presenter or the presenter on air may cut",
        code="not_director",
    )


# --- participant check-in -------------------------------------------------------------------
async def checkin(request: web.Request) -> web.Response:
    """`POST /api/sessions/{sid}/sites/{site}/checkins` {name, ident?} → 201 new, 200 duplicate."""
    state = request.app[STATE]
    sid, code = request.match_info["sid"], request.match_info["site"]
    claims = authorize_request(request, Action.CHECKIN, sid, code)
    room = state.hub.open_room(sid)  # the class is not read and decoded on every check-in
    if room is None:
        room = await state.hub.room(await session_or_404(state.store, sid))
    if claims.role is Role.PARTICIPANT:  # a QR link (or a photo of it) dies with its class
        closes_at = checkin_closes_at(room.session, state.config.checkin_grace_s)
        try:
            refuse_closed(closes_at, time.time())
        except CheckinError as exc:
            state.metrics.checkin_refused(exc)
            raise
    by = "operator" if claims.role is Role.SITE else "qr"  # separate budgets (server/checkin.py)
    person = await admitted_checkin(request, sid, code, by)
    if code not in room.sites:
        raise ValidationError(f"site {code} is not in this class", code="unknown_site")
    reply = await reports.checkin(room, code, person)
    state.metrics.checkin(reply.counted)
    return web.json_response(
        {"duplicate": reply.duplicate, "event_id": reply.event_id},
        status=200 if reply.duplicate else 201,
    )


async def admitted_checkin(request: web.Request, sid: str, code: str, by: str) -> Checkin:
    """The request's check-in, within the limits of its kind (`by`: a participant's "qr" or
    the hall's "operator"); a refusal is counted, then raised."""
    state = request.app[STATE]
    try:
        state.checkin_limiter.check(sid, code, client_address(request), by)
        return parse_checkin(await read_json(request), by=by)
    except CheckinError as exc:
        state.metrics.checkin_refused(exc)
        raise


# --- attendance -----------------------------------------------------------------------------
async def _report(request: web.Request) -> tuple[Any, ClassSession]:
    """The class's attendance report, derived from its ledger now (narrowed by ?commune=)."""
    from server import attendance, exports

    state = request.app[STATE]
    sid = request.match_info["sid"]
    claims = authorize_request(request, Action.EXPORT, sid)
    session = await session_or_404(state.store, sid)
    await state.hub.room(session)  # rebuilt, lost connections closed, before reading
    sites = await state.store.list_sites()
    events = await state.store.events(sid)
    commune = request.query.get("commune")
    if commune is not None:
        check_text(commune, "commune", 200)
    scope = commune_scope(claims)  # a commune moderator's report holds their halls only
    if scope is not None and commune is not None and commune not in scope:
        raise ForbiddenError(f"commune {commune} is not yours", code="wrong_commune")

    def derive() -> Any:  # seconds for 5,000 sites: off the event loop
        report = attendance.derive(session, sites, events, time.time())
        if commune:
            return exports.report_for_commune(report, commune)
        return report if scope is None else exports.report_for_communes(report, scope)

    try:
        return await asyncio.to_thread(derive), session
    except exports.ExportError as exc:
        raise ValidationError(str(exc), code="bad_query") from None


def _options(request: web.Request) -> dict[str, str]:
    lang = request.query.get("lang", "vi")
    if lang not in ("vi", "en"):
        raise ValidationError("lang must be vi or en", code="bad_query")
    return {"lang": lang}


def _download(body: bytes, content_type: str, filename: str) -> web.Response:
    return web.Response(
        body=body,
        content_type=content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


async def attendance_json(request: web.Request) -> web.Response:
    from server import exports

    report, _ = await _report(request)
    body = await asyncio.to_thread(exports.to_json_bytes, report)
    return web.Response(body=body, content_type="application/json")


async def attendance_csv(request: web.Request) -> web.Response:
    from server import exports

    report, session = await _report(request)
    level = request.query.get("level", "sites")
    try:
        body = await asyncio.to_thread(exports.to_csv, report, level=level, **_options(request))
    except exports.ExportError as exc:
        raise ValidationError(str(exc), code="bad_query") from None
    return _download(body, "text/csv", f"lopso-{session.id}-{level}.csv")


async def attendance_xlsx(request: web.Request) -> web.Response:
    from server import exports

    report, session = await _report(request)
    body = await asyncio.to_thread(exports.to_xlsx, report, **_options(request))
    kind = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return _download(body, kind, f"lopso-{session.id}.xlsx")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/sites/import", import_sites_route)
    r.add_get("/api/sites", list_sites)
    r.add_post("/api/sites/{code}/rotate", rotate_site_key)
    r.add_post("/api/sessions", create_session)
    r.add_get("/api/sessions/{sid}", get_session)
    r.add_post("/api/sessions/{sid}/end", end_session)
    r.add_get("/api/sessions/{sid}/links", session_links)
    r.add_post("/api/sessions/{sid}/sites/{site}/checkins", checkin)
    r.add_get("/api/sessions/{sid}/presenters", get_presenters)
    r.add_post("/api/sessions/{sid}/on_air", put_on_air)
    r.add_get("/api/sessions/{sid}/attendance", attendance_json)
    r.add_get("/api/sessions/{sid}/attendance.csv", attendance_csv)
    r.add_get("/api/sessions/{sid}/attendance.xlsx", attendance_xlsx)


__all__ = ["add_routes", "parse_time", "read_json", "session_from_body"]
