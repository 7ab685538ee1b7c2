"""HTML pages: one Jinja2 template per page, with the string catalogue and a page config.

Each page gets `lang`, `t` (web/static/i18n/<lang>.json) and `page`, a dict its script reads
from `<script type="application/json" id="page-config">`.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import qrcode
import qrcode.image.svg
from aiohttp import web

from server import auth
from server.app import STATE, AppState, authorize_request, pick_lang, session_or_404
from server.errors import UnknownError, ValidationError, describe
from server.models import ClassSession, Role, Site
from server.peer import session_wire
from server.roles import Action
from server.routes.signin import signed_in
from server.timetable import checkin_link_expiry
from server.turn import ice_servers

log = logging.getLogger(__name__)
PageHandler = Callable[[web.Request], Awaitable[web.Response]]


def render(
    request: web.Request, name: str, page: dict[str, Any], view: dict[str, Any] | None = None
) -> web.Response:
    """The page's template with its config `page` (also handed to its script) and `view`
    (what only the template reads: large, or of no use to the script)."""
    state = request.app[STATE]
    lang = page.get("lang") or pick_lang(request)
    template = state.templates.get_template(f"{name}.html")
    html = template.render(lang=lang, t=state.catalogue(lang), page=page, view=view or {})
    return web.Response(
        text=html,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},  # security headers: server/security.py
    )


def page_errors(handler: PageHandler) -> PageHandler:
    """A person opened a link: show errors as a page in their language, not as JSON."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            known = describe(exc)
            if known is None:
                log.exception("page failed", extra={"path": request.path})
                known = (500, "internal", "")
            status, code, message = known
            page = {
                "lang": pick_lang(request),
                "error": {"status": status, "code": code, "message": message},
            }
            response = render(request, "error", page)
            response.set_status(status)
            return response

    return wrapped


def qr_data_url(text: str) -> str:
    """A QR code of `text` as an inline SVG `data:` URL (no extra request, scales sharply)."""
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    buffer = io.BytesIO()
    image.save(buffer)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def _session_page(session: ClassSession) -> dict[str, Any]:
    wire = session_wire(session)
    return {
        key: wire[key] for key in ("id", "title", "starts_at", "ends_at", "video_codec", "ended_at")
    }


def _site_page(site: Site | None) -> dict[str, str] | None:
    if site is None:
        return None
    return {"code": site.code, "name": site.name, "commune": site.commune, "village": site.village}


async def _base(
    request: web.Request, role: str, action: Action, site_code: str | None = None
) -> tuple[AppState, ClassSession, dict[str, Any]]:
    """Authorize the page's token and build the page config every page shares."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    claims = authorize_request(request, action, sid, site_code)
    session = await session_or_404(state.store, sid)
    token = request.query.get("token", "")
    page = {
        "sid": sid,
        "role": claims.role.value if role == "" else role,
        "token": token,
        "lang": pick_lang(request),
        "site": None,
        "session": _session_page(session),
        "ws_url": f"/ws/{quote(sid)}?token={quote(token)}",
    }
    return state, session, page


async def _site(state: AppState, session: ClassSession, code: str) -> Site:
    site = await state.store.get_site(code)
    if site is None or (session.site_codes and code not in session.site_codes):
        raise UnknownError(f"site {code} is not in class {session.id}", code="unknown_site")
    return site


def _ice(request: web.Request, state: AppState, user: str) -> dict[str, Any]:
    """The page's ICE settings: TURN servers with fresh credentials (server/turn.py), and
    `?ice=relay` (a technician's check, and the tests') to use TURN and nothing else."""
    cfg = state.config
    policy = request.query.get("ice", "all")
    if policy not in ("all", "relay"):
        raise ValidationError("ice must be all or relay", code="bad_query")
    servers = ice_servers(cfg.turn_urls, cfg.turn_secret, user, cfg.turn_ttl_s, time.time())
    return {"ice_servers": [s.wire() for s in servers], "ice_transport_policy": policy}


@page_errors
async def studio(request: web.Request) -> web.Response:
    state, session, page = await _base(request, "lecturer", Action.PUBLISH)
    page["whip_url"] = f"/whip/{quote(session.id)}"
    page.update(_ice(request, state, f"{session.id}.lecturer"))
    page["return_url"] = f"/return/{quote(session.id)}"
    return render(request, "studio", page)


@page_errors
async def site_player(request: web.Request) -> web.Response:
    code = request.match_info["site"]
    state, session, page = await _base(request, "site", Action.VIEW, code)
    site = await _site(state, session, code)
    if request.query.get("replay") == "1":  # the site's replay link (server/routes/replay.py)
        sid, token = quote(session.id), quote(page["token"])
        page.update(
            site=_site_page(site),
            replay={
                "url": f"/replay/{sid}/{quote(code)}/recording?token={token}",
                "report": f"/api/sessions/{sid}/sites/{quote(code)}/replay",
            },
        )
        return render(request, "replay", page)
    now = time.time()  # the QR link on the hall's screen dies with the class (plus the grace)
    expiry = checkin_link_expiry(session, now, state.config.checkin_grace_s)
    participant = auth.mint(
        state.config.secret,
        session.id,
        Role.PARTICIPANT,
        site=code,
        join_key=site.join_key,
        ttl_s=max(expiry - now, 1.0),
        now=now,
    )
    checkin_url = (
        f"{state.config.base_url}/checkin/{quote(session.id)}/{quote(code)}?token={participant}"
    )
    page.update(
        site=_site_page(site),
        whep_url=f"/whep/{quote(session.id)}/{quote(code)}",
        checkin_url=checkin_url,
        checkin_qr=qr_data_url(checkin_url),
        checkin_api=f"/api/sessions/{quote(session.id)}/sites/{quote(code)}/checkins",
        **_ice(request, state, f"{session.id}.{code}"),
    )
    return render(request, "site", page)


@page_errors
async def moderator(request: web.Request) -> web.Response:
    _, session, page = await _base(request, "moderator", Action.MODERATE)
    base = f"/api/sessions/{quote(session.id)}/attendance"
    suffix = f"?token={quote(page['token'])}"
    page.update(
        csv_url=f"{base}.csv{suffix}",
        xlsx_url=f"{base}.xlsx{suffix}",
        json_url=f"{base}{suffix}",
        links_url=f"/api/sessions/{quote(session.id)}/links",
        hall_links_url=f"/api/classes/{quote(session.id)}/hall-links{suffix}&format=csv",
        cards_url=f"/classes/{quote(session.id)}/cards{suffix}&lang={page['lang']}",
        end_url=f"/api/sessions/{quote(session.id)}/end",
        recording_url=f"/api/sessions/{quote(session.id)}/recording",
    )
    found = signed_in(request)
    if found is not None:  # opened from /admin: its fetches carry the session's CSRF token
        page["csrf"] = found[1]
    return render(request, "moderator", page)


@page_errors
async def checkin_page(request: web.Request) -> web.Response:
    code = request.match_info["site"]
    state, session, page = await _base(request, "participant", Action.CHECKIN, code)
    site = await _site(state, session, code)
    page.pop("ws_url")
    page.update(
        site=_site_page(site),
        checkin_api=f"/api/sessions/{quote(session.id)}/sites/{quote(code)}/checkins",
    )
    return render(request, "checkin", page)


def demo_links_shown(state: AppState, request: web.Request) -> bool:
    """The demo's links carry tokens: `/` lists them only when the server listens on a
    loopback address and no proxy forwarded the request (then only this machine sees them)."""
    forwarded = "Forwarded" in request.headers or "X-Forwarded-For" in request.headers
    return state.config.loopback_only and not forwarded


async def landing(request: web.Request) -> web.Response:
    state = request.app[STATE]
    shown = demo_links_shown(state, request)
    demo = state.demo if shown else None
    page = {
        "lang": pick_lang(request),
        "demo": demo,
        "demo_elsewhere": bool(state.demo) and not shown,
    }
    try:
        return render(request, "index", page)
    except Exception:  # noqa: BLE001 - the landing page must never fail; fall back to text
        lines = ["LopSo: lớp học trực tuyến cho nhà văn hóa thôn / tổ dân phố."]
        if demo:
            lines += [
                f"Giảng viên: {demo['lecturer']['url']}",
                f"Điều phối: {demo['moderator']['url']}",
            ]
            lines += [f"{s['name']}: {s['url']}" for s in demo["sites"]]
        return web.Response(text="\n".join(lines), content_type="text/plain")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", landing)
    r.add_get("/studio/{sid}", studio)
    r.add_get("/site/{sid}/{site}", site_player)
    r.add_get("/moderator/{sid}", moderator)
    r.add_get("/checkin/{sid}/{site}", checkin_page)
