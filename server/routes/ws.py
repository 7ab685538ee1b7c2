"""`GET /ws/{sid}?token=`: one WebSocket per page; one `on_<type>` function per message type.

The socket loop validates frames (size, JSON, type, fields, flood, idle time) and hands each
message to its handler; handlers call the hub. Errors become `error` messages; a page that
keeps sending garbage or floods is closed with 1008, an idle one with 1001.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from server import auth, reports
from server.admission import Holder
from server.app import (
    STATE,
    AppState,
    authorize_request,
    client_address,
    session_or_404,
    site_viewers,
)
from server.checkin import CheckinError, parse_checkin
from server.errors import ForbiddenError, UnknownError, ValidationError, describe
from server.fields import check_text
from server.metrics import Metrics
from server.models import Role, Site
from server.peer import Peer
from server.roles import Action, may
from server.room import ClassLive

log = logging.getLogger(__name__)

MAX_FRAME = 16 * 1024
MAX_ERRORS = 20
FLOOD_MESSAGES = 50
FLOOD_WINDOW_S = 10.0
STATUSES = ("waiting", "connecting", "playing", "reconnecting", "stalled", "error")
PHASES = ("start", "mid", "end", "other")
HELP_REASONS = ("no_picture", "no_sound", "connection", "other")
MEDIA_MODES = ("auto", "audio_only")


@dataclasses.dataclass
class Context:
    """What a handler needs: the page, its class, its claims."""

    peer: Peer
    room: ClassLive
    claims: auth.Claims
    metrics: Metrics
    ref: str | None = None  # the message's id: resends of one message are stored once
    state: AppState | None = None  # the node (its media viewers), absent in bare dispatch tests


Handler = Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any] | None]]


# --- field validation ---------------------------------------------------------------------
def text(data: dict[str, Any], key: str, limit: int, *, multiline: bool = False) -> str:
    """A required, non-blank string field of at most `limit` characters (stripped), holding
    no lone surrogate and no control character (tab, CR, LF allowed when `multiline`)."""
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{key} must be a non-empty string", code="bad_field")
    return check_text(value, key, limit, multiline=multiline).strip()


def optional_text(
    data: dict[str, Any], key: str, limit: int, *, multiline: bool = False
) -> str | None:
    """An optional string field: None when absent or blank."""
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return text(data, key, limit, multiline=multiline)


def choice(data: dict[str, Any], key: str, options: tuple[str, ...]) -> str:
    value = data.get(key)
    if value not in options:
        raise ValidationError(f"{key} must be one of {', '.join(options)}", code="bad_field")
    return str(value)


def integer(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ValidationError(f"{key} must be an integer from {low} to {high}", code="bad_field")
    return value


def number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValidationError(f"{key} must be a non-negative number", code="bad_field")
    return float(value)


def site_of(ctx: Context, code: Any) -> str:
    scope = ctx.peer.scope
    if not isinstance(code, str) or code not in ctx.room.sites:
        raise UnknownError(f"site {code!r} is not in this class", code="unknown_site")
    if scope is not None and code not in scope:
        raise ForbiddenError(f"site {code} is not in your communes", code="wrong_commune")
    return code


def own_site(ctx: Context) -> str:
    code = ctx.peer.site_code
    if code is None:
        raise ValidationError("only a site page may send this", code="wrong_role")
    return code


# --- handlers -----------------------------------------------------------------------------
async def on_heartbeat(ctx: Context, data: dict[str, Any]) -> None:
    await ctx.room.refresh(ctx.peer)


async def on_status(ctx: Context, data: dict[str, Any]) -> None:
    await ctx.room.refresh(ctx.peer, choice(data, "state", STATUSES))


async def on_headcount(ctx: Context, data: dict[str, Any]) -> None:
    count = integer(data, "count", 0, 10_000)
    await reports.headcount(ctx.room, own_site(ctx), count, choice(data, "phase", PHASES), ctx.ref)


async def on_quality(ctx: Context, data: dict[str, Any]) -> None:
    keys = (
        "rtt_ms",
        "loss_pct",
        "jitter_ms",
        "kbps",
        "fps",
        "frames_decoded",
        "freeze_count",
        "height",
        "no_media_s",
    )
    sample = {key: number(data, key) for key in keys if data.get(key) is not None}
    await reports.quality(ctx.room, own_site(ctx), sample)
    _echo_media_state(ctx)


def _echo_media_state(ctx: Context) -> None:
    """Tell the site page its media mode and whether the server paused its video (a weak
    link), from this node's viewers of the site (none here in a cluster: mode only)."""
    code = own_site(ctx)
    viewers = site_viewers(ctx.state, ctx.peer.sid, code) if ctx.state is not None else []
    site = ctx.room.sites.get(code)
    ctx.peer.post(
        {
            "type": "media_state",
            "mode": site.media_mode if site is not None else "auto",
            "video_paused": any(v.stats().video_paused for v in viewers) if viewers else None,
        }
    )


async def on_media_mode(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    """The site's choice: "auto" (video, paused by the server on a weak link) or
    "audio_only"; recorded in the class and applied to the site's viewers on every node."""
    mode = choice(data, "mode", MEDIA_MODES)
    code = own_site(ctx)
    await ctx.room.patch(code, media_mode=mode)
    # 0: the site's viewer is not on this node (a cluster edge holds it): the page renews its
    # WHEP with ?media= so the choice reaches it even where no page of the class follows it
    here = len(site_viewers(ctx.state, ctx.peer.sid, code)) if ctx.state is not None else 0
    return {"mode": mode, "viewers_here": here}


async def on_help(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    reason = choice(data, "reason", HELP_REASONS)
    body = optional_text(data, "text", 500, multiline=True) or ""
    return {"help_id": await reports.help_request(ctx.room, own_site(ctx), reason, body, ctx.ref)}


async def on_question(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "question_id": await reports.question(
            ctx.room, own_site(ctx), text(data, "text", 500, multiline=True), ctx.ref
        )
    }


async def on_checkin(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {key: data[key] for key in ("name", "ident") if key in data}
    try:
        person = parse_checkin(fields, by="operator")  # a person without a phone, at the hall
    except CheckinError as exc:
        ctx.metrics.checkin_refused(exc)
        raise
    reply = await reports.checkin(ctx.room, own_site(ctx), person)
    ctx.metrics.checkin(reply.counted)
    return {"duplicate": reply.duplicate}


async def on_message(ctx: Context, data: dict[str, Any]) -> None:
    body = text(data, "text", 500, multiline=True)
    to = data.get("to")
    if not isinstance(to, dict) or len(to) != 1:
        raise ValidationError(
            'to must be {"site": code}, {"commune": name} or {"all": true}', code="bad_field"
        )
    target: dict[str, Any]
    if "site" in to:
        target = {"site": site_of(ctx, to["site"])}
    elif "commune" in to and isinstance(to["commune"], str):
        target = {"commune": check_text(to["commune"], "to.commune", 200)}
    elif to.get("all") is True:
        target = {"all": True}
    else:
        raise ValidationError(
            'to must be {"site": code}, {"commune": name} or {"all": true}', code="bad_field"
        )
    message = {"type": "message", "text": body, "from": ctx.claims.role.value}
    communes = ctx.claims.communes
    if communes is not None:  # a commune moderator speaks to its own communes only
        if target.get("commune", communes[0]) not in communes:
            raise ForbiddenError("that commune is not yours", code="wrong_commune")
        if target.get("all"):
            for commune in communes:
                await ctx.room.broadcast({"commune": commune}, message)
            return
    await ctx.room.broadcast(target, message)


async def on_command(ctx: Context, data: dict[str, Any]) -> None:
    code = site_of(ctx, data.get("site"))
    action = choice(data, "action", ("reconnect",))
    await ctx.room.broadcast({"site": code}, {"type": "command", "action": action})


async def on_resolve_help(ctx: Context, data: dict[str, Any]) -> None:
    code = site_of(ctx, data.get("site"))
    help_id = text(data, "help_id", 64)
    if not await reports.resolve_help(ctx.room, code, help_id, ctx.claims.role.value):
        raise UnknownError(f"no open help request {help_id} at {code}", code="unknown_help")


async def on_forward_question(ctx: Context, data: dict[str, Any]) -> None:
    question_id = text(data, "question_id", 64)
    question = ctx.room.questions.get(question_id)
    if question is None:
        raise UnknownError(f"no question {question_id}", code="unknown_question")
    await ctx.room.broadcast(
        {"roles": ["lecturer"]}, {"type": "question", **question, "forwarded": True}
    )
    # answered by the lecturer now: no longer counts against its site (forwarding again is fine)
    await reports.close_question(ctx.room, question_id, ctx.claims.role.value, "forwarded")


async def on_dismiss_question(ctx: Context, data: dict[str, Any]) -> None:
    question_id = text(data, "question_id", 64)
    if not await reports.close_question(ctx.room, question_id, ctx.claims.role.value, "dismissed"):
        raise UnknownError(f"no open question {question_id}", code="unknown_question")


# message type -> (handler, action the sender's role needs)
HANDLERS: dict[str, tuple[Handler, Action | None]] = {
    "heartbeat": (on_heartbeat, None),
    "status": (on_status, Action.REPORT),
    "headcount": (on_headcount, Action.REPORT),
    "quality": (on_quality, Action.REPORT),
    "help": (on_help, Action.REPORT),
    "question": (on_question, Action.REPORT),
    "checkin": (on_checkin, Action.CHECKIN),
    "media_mode": (on_media_mode, Action.REPORT),
    "message": (on_message, Action.MODERATE),
    "command": (on_command, Action.MODERATE),
    "resolve_help": (on_resolve_help, Action.MODERATE),
    "forward_question": (on_forward_question, Action.MODERATE),
    "dismiss_question": (on_dismiss_question, Action.MODERATE),
}


async def dispatch(ctx: Context, raw: str) -> dict[str, Any] | None:
    """Handle one text frame; return the reply (`ack`, `error`) or None."""
    message_id: Any = None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, nested too deep, a number too long
        return {"type": "error", "id": None, "code": "bad_json", "message": "frame is not JSON"}
    try:
        if not isinstance(data, dict):
            raise ValidationError("a message must be a JSON object", code="bad_message")
        raw_id = data.get("id")
        if raw_id is not None:
            if not isinstance(raw_id, str) or len(raw_id) > 64:
                raise ValidationError(
                    "id must be a string of at most 64 characters", code="bad_field"
                )
            message_id = check_text(raw_id, "id", 64)  # echoed in the reply: must be sendable
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in HANDLERS:
            raise ValidationError(f"unknown message type {kind!r}", code="unknown_type")
        handler, action = HANDLERS[kind]
        if action is not None and not may(ctx.claims.role, action):
            raise ValidationError(
                f"role {ctx.claims.role.value} may not send {kind}", code="forbidden"
            )
        result = await handler(dataclasses.replace(ctx, ref=message_id), data)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error message
        return _error_reply(exc, message_id, ctx)
    if message_id is None:
        return None
    return {"type": "ack", "id": message_id, **(result or {})}


def _error_reply(exc: Exception, message_id: Any, ctx: Context) -> dict[str, Any]:
    known = describe(exc)
    if known is None:
        log.exception(
            "WebSocket message failed", extra={"sid": ctx.peer.sid, "site": ctx.peer.site_code}
        )
        known = (500, "internal", "the server could not handle this message")
    _, code, message = known
    return {"type": "error", "id": message_id, "code": code, "message": message}


# --- the socket ---------------------------------------------------------------------------
async def handle_ws(request: web.Request) -> web.StreamResponse:
    """Authenticate, take a place (server/admission.py), upgrade, then run the page's reader
    and writer until either ends. A refusal is an HTTP error before the upgrade."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    claims = authorize_request(request, Action.VIEW_CLASS, sid)
    session = await session_or_404(state.store, sid)
    site = None
    room = await state.hub.room(session)
    if claims.role is Role.SITE:
        if claims.site not in room.sites:
            raise UnknownError(f"site {claims.site} is not in this class", code="unknown_site")
        site = room.registry[claims.site]
    # before the upgrade: a refused page writes nothing to the ledger
    release = state.sockets.admit(_holder(request, claims), client_address(request))
    try:
        return await _serve(request, state, claims, room, site)
    finally:
        release()


def _holder(request: web.Request, claims: auth.Claims) -> Holder:
    """Whose place a page takes: its site (every token of it), else its token."""
    if claims.role is Role.SITE and claims.site is not None:
        return ("site", f"{claims.sid}/{claims.site}")
    if claims.user is not None:  # signed in (no token): the account's pages
        return ("token", f"account:{claims.user}")
    token = auth.bearer(request.headers.get("Authorization"), request.query.get("token"))
    return ("token", hashlib.sha256(token.encode()).hexdigest()[:32])


async def _serve(
    request: web.Request, state: AppState, claims: auth.Claims, room: ClassLive, site: Site | None
) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True)
    await ws.prepare(request)
    scope = None
    if claims.communes is not None:  # a signed-in commune moderator: its communes' sites
        scope = frozenset(c for c, s in room.registry.items() if s.commune in claims.communes)
    presenter = room.session.presenter(claims.p) if claims.role is Role.LECTURER else None
    peer = Peer(room.session.id, claims.role, site, scope, presenter.id if presenter else None)
    writer = asyncio.create_task(_write(ws, peer))
    connected = state.metrics.websockets.labels(claims.role.value)
    connected.inc()
    try:
        await room.join(peer)
        context = Context(peer, room, claims, state.metrics, state=state)
        await _read(ws, context, state.config.ws_idle_timeout_s)
    finally:
        peer.shut()
        # aiohttp cancels this handler when the socket drops: the leave must still be recorded.
        leaving = asyncio.ensure_future(_leave(room, peer))
        state.background.add(leaving)
        leaving.add_done_callback(state.background.discard)
        writer.cancel()
        connected.dec()
        with contextlib.suppress(Exception):
            await ws.close()
        await asyncio.shield(leaving)
    return ws


async def _leave(room: ClassLive, peer: Peer) -> None:
    try:
        await room.leave(peer)
    except Exception:
        log.exception(
            "could not record a page leaving", extra={"sid": peer.sid, "site": peer.site_code}
        )


async def _write(ws: web.WebSocketResponse, peer: Peer) -> None:
    while True:
        message = await peer.outbox.get()
        if message is None or ws.closed:
            if not ws.closed:
                await ws.close(code=1000, message=b"closed by server")
            return
        try:
            await ws.send_str(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
        except (ValueError, TypeError):  # unsendable (UnicodeEncodeError): not this page's fault
            log.exception(
                "could not send a message", extra={"sid": peer.sid, "type": message.get("type")}
            )


async def _read(ws: web.WebSocketResponse, ctx: Context, idle_s: float) -> None:
    recent: collections.deque[float] = collections.deque()
    errors = 0
    while not ws.closed and not ctx.peer.closed:
        try:
            msg = await ws.receive(timeout=idle_s)
        except TimeoutError:
            await ws.close(code=1001, message=b"no message for too long")
            return
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        now = time.monotonic()
        recent.append(now)
        while recent and recent[0] < now - FLOOD_WINDOW_S:
            recent.popleft()
        if len(recent) > FLOOD_MESSAGES:
            await ws.close(code=1008, message=b"too many messages")
            return
        reply: dict[str, Any] | None
        if msg.type is not WSMsgType.TEXT:
            reply = {
                "type": "error",
                "id": None,
                "code": "bad_frame",
                "message": "only JSON text frames are accepted",
            }
        else:
            reply = await dispatch(ctx, msg.data)
        if reply is not None:
            ctx.peer.post(reply)
            errors += reply["type"] == "error"
            if errors > MAX_ERRORS:
                await ws.close(code=1008, message=b"too many bad messages")
                return


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws/{sid}", handle_ws)


__all__ = ["add_routes", "dispatch", "optional_text", "text"]
