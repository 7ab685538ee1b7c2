"""Moderator-only REST: one site's drill-down, and the class's alerts and incident log.

- `GET /api/sessions/{sid}/sites/{site}`: the site (registry), its live state, its derived
  attendance record (intervals, connected time, headcounts, quality time, status: see
  server/attendance.py `derive_site`), its headcount reports, check-ins, help requests,
  questions, latest quality samples and its alerts (open and past).
- `GET /api/sessions/{sid}/incidents?site=&limit=`: open alerts and the incident log, most
  recent first (server/alerts.py, as this node's hub evaluates them).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from server import attendance, exports, incidents
from server.app import STATE, authorize_request, commune_scope, session_or_404
from server.errors import ForbiddenError, UnknownError, ValidationError
from server.fields import check_text
from server.hub import ClassLive, site_wire
from server.models import ClassSession, EventKind
from server.roles import Action

CLASS_KINDS = (EventKind.CLASS_STARTED, EventKind.CLASS_ENDED)
MAX_LIMIT = 5000


async def _room(request: web.Request, code: str | None = None) -> tuple[ClassSession, ClassLive]:
    """Authorize a moderator (or admin) for the class (and site `code`: a commune moderator
    only of its communes); its live room on this node."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    claims = authorize_request(request, Action.MODERATE, sid)
    session = await session_or_404(state.store, sid)
    room = await state.hub.room(session)
    scope = commune_scope(claims)
    if scope is not None:
        site = room.registry.get(code) if code is not None else None
        if site is None or site.commune not in scope:  # the class-wide log is everyone's
            raise ForbiddenError("only the sites of your communes", code="wrong_commune")
    return session, room


async def site_detail(request: web.Request) -> web.Response:
    """Everything the wall's drill-down panel shows about one site."""
    code = request.match_info["site"]
    session, room = await _room(request, code)
    site = room.registry.get(code)
    if site is None:
        raise UnknownError(f"site {code} is not in class {session.id}", code="unknown_site")
    store = request.app[STATE].store
    own = await store.events(session.id, site_code=code)
    events = await store.events(session.id, kinds=CLASS_KINDS) + own
    record = attendance.derive_site(session, site, events, time.time())
    body: dict[str, Any] = {
        "site": site_wire(site),
        "live": room.sites[code].wire(),
        "record": exports.site_dict(record),
        "headcounts": incidents.headcounts(own),
        "checkins": incidents.checkins(own),
        "help": incidents.help_requests(own)[::-1],
        "questions": incidents.questions(own)[::-1],
        "quality": incidents.quality_samples(own),
        "alerts": [a.wire() for a in room.alerts.open_alerts(code)],
        "incidents": [a.wire() for a in room.alerts.incidents(code)],
    }
    return web.json_response(body)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "500")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:  # not "²"
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}", code="bad_field")
    return int(raw)


async def class_incidents(request: web.Request) -> web.Response:
    """Open alerts and the incident log of the class (or of `?site=`), most recent first."""
    code = request.query.get("site") or None
    if code is not None:
        check_text(code, "site", 64)
    session, room = await _room(request, code)
    if code is not None and code not in room.sites:
        raise UnknownError(f"site {code} is not in class {session.id}", code="unknown_site")
    limit = _limit(request)
    return web.json_response(
        {
            "session_id": session.id,
            "open": [a.wire() for a in room.alerts.open_alerts(code)][:limit],
            "incidents": [a.wire() for a in room.alerts.incidents(code, limit)],
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions/{sid}/sites/{site}", site_detail)
    app.router.add_get("/api/sessions/{sid}/incidents", class_incidents)
