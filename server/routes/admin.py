"""The organiser page `/admin` and the JSON it uses beyond api.py: the CSV preview, one hall
added or edited, the list of classes and a class edited.

Every route here authorizes like api.py (a signed-in account or a token, server/routes/
signin.py); registry-wide changes need an admin. A commune moderator's lists hold only the
halls of their communes and the classes that expect one of them.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any
from urllib.parse import quote

from aiohttp import web

from server import auth
from server.app import (
    STATE,
    claims_of,
    commune_scope,
    pick_lang,
    session_or_404,
    visible_sites,
)
from server.errors import ContentTypeError, ForbiddenError, ValidationError
from server.models import ClassSession, Role
from server.peer import session_wire, site_wire
from server.registry import (
    CODE_RE,
    SiteImportError,
    check_site,
    decode_csv,
    new_join_key,
    parse_sites,
)
from server.roles import Action
from server.routes.api import read_json, session_from_body
from server.routes.pages import page_errors, render
from server.routes.signin import see_other, signed_in

CSV_TYPES = ("text/csv", "text/plain", "application/octet-stream")
PREVIEW_ROWS = 50  # the page shows the first rows; the counts cover them all
EDITABLE = ("title", "starts_at", "ends_at", "video_codec", "site_codes")


def _admin(request: web.Request) -> auth.Claims:
    claims = claims_of(request)
    auth.authorize(claims, Action.ADMIN, auth.ANY_CLASS)
    return claims


def _watcher(request: web.Request) -> auth.Claims:
    """An admin or a moderator (signed in, or with a token for every class)."""
    claims = claims_of(request)
    if claims.role not in (Role.ADMIN, Role.MODERATOR):
        raise ForbiddenError("only an admin or a moderator may see this", code="wrong_role")
    return claims


def class_visible(session: ClassSession, visible: set[str], every: bool) -> bool:
    """A class is shown when it expects one of the visible halls (or every hall)."""
    return every or not session.site_codes or any(c in visible for c in session.site_codes)


# --- the page -------------------------------------------------------------------------------
@page_errors
async def admin_page(request: web.Request) -> web.Response:
    found = signed_in(request)
    if found is None:
        return see_other("/login")
    claims, csrf = found
    page = {
        "lang": pick_lang(request),
        "user": claims.user,
        "role": claims.role.value,
        "communes": list(claims.communes or ()),
        "csrf": csrf,
        "may_admin": claims.role is Role.ADMIN,
        "public_url": request.app[STATE].config.base_url,
    }
    return render(request, "admin", page)


# --- registry -------------------------------------------------------------------------------
async def preview_sites(request: web.Request) -> web.Response:
    """`POST /api/sites/preview` (CSV): what an import would do, nothing saved; or 422 with
    every bad line named."""
    _admin(request)
    if request.content_type not in CSV_TYPES:
        raise ContentTypeError("Content-Type must be text/csv")
    data = await request.read()
    try:
        sites = parse_sites(decode_csv(data), new_key=lambda: "")
    except SiteImportError as exc:
        problems = [{"line": line, "message": message} for line, message in exc.problems]
        body = {"error": {"code": exc.code, "message": str(exc)}, "problems": problems}
        return web.json_response(body, status=400)
    known = {s.code for s in await request.app[STATE].store.get_sites(s.code for s in sites)}
    communes = collections.Counter(s.commune for s in sites)
    return web.json_response(
        {
            "count": len(sites),
            "new": sum(1 for s in sites if s.code not in known),
            "updated": sum(1 for s in sites if s.code in known),
            "communes": dict(sorted(communes.items())),
            "sites": [site_wire(s) for s in sites[:PREVIEW_ROWS]],
        }
    )


async def put_site(request: web.Request) -> web.Response:
    """`PUT /api/sites/{code}` {name, village?, commune?, province?}: add or edit one hall
    (an edited hall keeps its join key, so its links keep working)."""
    _admin(request)
    code = request.match_info["code"]
    if not CODE_RE.fullmatch(code):
        raise ValidationError("code must be 1-64 of A-Z a-z 0-9 _ . -", code="bad_field")
    body = await read_json(request)
    fields = {k: v for k, v in body.items() if isinstance(v, str)}
    store = request.app[STATE].store
    known = await store.get_site(code)
    site = check_site({**fields, "code": code}, known.join_key if known else new_join_key())
    await store.upsert_sites([site])
    return web.json_response(site_wire(site), status=200 if known else 201)


# --- classes --------------------------------------------------------------------------------
async def list_classes(request: web.Request) -> web.Response:
    """`GET /api/sessions`: every class, newest first (a commune moderator: theirs)."""
    claims = _watcher(request)
    store = request.app[STATE].store
    scope = commune_scope(claims)
    visible = {s.code for s in visible_sites(claims, await store.list_sites())}
    sessions = [s for s in await store.list_sessions() if class_visible(s, visible, scope is None)]
    sessions.sort(key=lambda s: s.starts_at, reverse=True)
    return web.json_response({"classes": [_class_row(s, visible, scope is None) for s in sessions]})


def _class_row(session: ClassSession, visible: set[str], every: bool) -> dict[str, Any]:
    row = session_wire(session)
    if not every:  # a commune moderator is told of their halls only
        row["site_codes"] = [c for c in session.site_codes if c in visible]
    sid = quote(session.id)
    row["urls"] = {
        "wall": f"/moderator/{sid}",
        "report_csv": f"/api/sessions/{sid}/attendance.csv",
        "report_xlsx": f"/api/sessions/{sid}/attendance.xlsx",
        "report_json": f"/api/sessions/{sid}/attendance",
        "cards": f"/classes/{sid}/cards",
        "hall_links": f"/api/classes/{sid}/hall-links",
    }
    return row


async def edit_class(request: web.Request) -> web.Response:
    """`PATCH /api/sessions/{sid}` {title?, starts_at?, ends_at?, video_codec?, site_codes?}.
    The codec and the halls are fixed once the class has started; an ended class is kept."""
    _admin(request)
    store = request.app[STATE].store
    before = await session_or_404(store, request.match_info["sid"])
    changes = await read_json(request)
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValidationError(f"cannot edit {', '.join(unknown)}", code="bad_field")
    if before.ended_at is not None:
        raise ValidationError("the class has ended; it cannot be edited", code="class_ended")
    if before.started_at is not None and {"video_codec", "site_codes"} & set(changes):
        raise ValidationError(
            "the codec and the halls are fixed once the class has started", code="class_started"
        )
    merged = {**session_wire(before), **changes, "id": before.id}
    edited = await session_from_body(merged, store)
    session = dataclasses.replace(
        edited,
        created_at=before.created_at,
        started_at=before.started_at,
        ended_at=before.ended_at,
    )
    await store.put_session(session)
    return web.json_response(session_wire(session))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin", admin_page)
    r.add_post("/api/sites/preview", preview_sites)
    r.add_put("/api/sites/{code}", put_site)
    r.add_get("/api/sessions", list_classes)
    r.add_patch("/api/sessions/{sid}", edit_class)
