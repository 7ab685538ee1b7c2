"""`create_app(config)`: the only factory of the LopSo web application.

State lives in one `AppState` under a typed AppKey; the store, the media engine and the hub
are started and stopped in cleanup_ctx. One middleware turns every domain error into the JSON
error shape of docs/protocol.md; an unknown exception is logged and fails only its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

import web as web_assets
from server import accounts, auth, security
from server.admission import SocketCounts, SocketLimits
from server.checkin import CheckinLimiter, CheckinLimits
from server.config import Config, Network
from server.errors import AuthError, LopsoError, UnknownError, describe, error_body
from server.hub import Hub, HubLimits
from server.metrics import Metrics, metered
from server.models import ClassSession, NodeInfo, Role, Site
from server.registry import KeyIdCache
from server.roles import SITE_ROLES, Action
from server.store import open_store
from server.store.base import Store

log = logging.getLogger(__name__)

WEB_DIR = Path(web_assets.__file__).parent
LANGS = ("vi", "en")
SHORT_LINK_BURST = 10.0  # wrong short-link codes an address may try before the rate applies
VIEWERS_PER_NODE = 500  # load 1.0: a rough per-process capacity until measured (issue 2)


@dataclasses.dataclass
class AppState:
    """Everything the routes share; filled in as the app starts."""

    config: Config
    templates: jinja2.Environment
    store: Store = None  # type: ignore[assignment]
    hub: Hub = None  # type: ignore[assignment]
    engine: Any = None  # media.MediaEngine when media is enabled
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)  # WHIP/WHEP sessions
    lectures: dict[str, Any] = dataclasses.field(default_factory=dict)  # media Lecture by class
    catalogues: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    demo: dict[str, Any] | None = None
    webhook: Any = None  # server.webhook.WebhookSender when LOPSO_WEBHOOK_URL is set
    background: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)
    signalling_limiter: auth.RateLimiter = None  # type: ignore[assignment]
    short_link_limiter: auth.RateLimiter = None  # type: ignore[assignment]  # wrong /j/ codes
    login_limiter: auth.RateLimiter = None  # type: ignore[assignment]  # /login attempts
    checkin_limiter: CheckinLimiter = None  # type: ignore[assignment]
    site_keys: KeyIdCache = None  # type: ignore[assignment]
    sockets: SocketCounts = None  # type: ignore[assignment]  # open WebSockets (admission)
    metrics: Metrics = None  # type: ignore[assignment]
    redis_problem: str | None = None  # cluster, LOPSO_REDIS_DURABILITY=warn: why Redis may lose
    recordings: Any = None  # server.recordings.Recordings (None: a node without media)

    def __post_init__(self) -> None:
        cfg = self.config
        self.metrics = Metrics(lambda: getattr(self.engine, "lectures", None) or {})
        self.site_keys = KeyIdCache(lambda code: self.store.get_site(code), cfg.secret)
        self.signalling_limiter = auth.RateLimiter(cfg.signalling_rate, 3 * cfg.signalling_rate)
        self.short_link_limiter = auth.RateLimiter(cfg.short_link_rate, SHORT_LINK_BURST)
        self.checkin_limiter = CheckinLimiter(checkin_limits(cfg))
        self.login_limiter = auth.RateLimiter(accounts.LOGIN_RATE, accounts.LOGIN_BURST)
        self.sockets = SocketCounts(
            SocketLimits(cfg.ws_per_site, cfg.ws_per_token, cfg.ws_per_addr)
        )

    def catalogue(self, lang: str) -> dict[str, str]:
        """The page strings of `lang` from web/static/i18n/<lang>.json (empty if missing)."""
        if lang not in self.catalogues:
            path = WEB_DIR / "static" / "i18n" / f"{lang}.json"
            try:
                self.catalogues[lang] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("string catalogue missing or invalid", extra={"path": str(path)})
                return {}
        return self.catalogues[lang]


def checkin_limits(cfg: Config) -> CheckinLimits:
    """The configured check-in limits; a rate of 0 means no limit (a bucket never empty)."""
    unlimited = 1e12
    return CheckinLimits(
        site_rate=cfg.checkin_rate_site or unlimited,
        site_burst=cfg.checkin_burst_site if cfg.checkin_rate_site else unlimited,
        address_rate=cfg.checkin_rate_addr or unlimited,
        address_burst=cfg.checkin_burst_addr if cfg.checkin_rate_addr else unlimited,
    )


STATE = web.AppKey("state", AppState)
CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


# --- request helpers shared by the routes --------------------------------------------------
def claims_of(request: web.Request) -> auth.Claims:
    """Verify the request's token (Bearer header, else ?token=): the middleware's verdict when
    it had a good token, so the HMAC is computed once per request."""
    state = request.app[STATE]
    claims = request.get(VERIFIED_CLAIMS) or auth.verify(state.config.secret, _token(request))
    if claims.role in SITE_ROLES and claims.site is not None:
        try:  # filled by site_key_middleware before any route runs
            current = state.site_keys.current(claims.site)
        except KeyError:
            raise AuthError("the site's key could not be checked", code="token_unchecked") from None
        auth.check_key(claims, current)
    return claims


VERIFIED_CLAIMS = web.RequestKey("lopso.claims", auth.Claims)  # what site_key_middleware verified


def _token(request: web.Request) -> str:
    return auth.bearer(request.headers.get("Authorization"), request.query.get("token"))


@web.middleware
async def site_key_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Read the key id of the site a site/participant token names (cached), so `claims_of`
    can tell a link whose join key was rotated: once per request or WebSocket connect."""
    state = request.app[STATE]
    claims: auth.Claims | None = None  # no or bad token: the route says so precisely
    with contextlib.suppress(LopsoError):
        claims = auth.verify(state.config.secret, _token(request))
        request[VERIFIED_CLAIMS] = claims  # claims_of reuses them
    if claims is not None and claims.role in SITE_ROLES and claims.site is not None:
        await state.site_keys.refresh(claims.site)
    response: web.StreamResponse = await handler(request)
    return response


def authorize_request(
    request: web.Request, action: Action, sid: str, site: str | None = None
) -> auth.Claims:
    """Verify the token and check it allows `action` on class `sid` (and `site`)."""
    claims = claims_of(request)
    auth.authorize(claims, action, sid, site)
    return claims


def commune_scope(claims: auth.Claims) -> frozenset[str] | None:
    """The communes whose halls a signed-in commune moderator may see (None: every hall)."""
    return None if claims.communes is None else frozenset(claims.communes)


def visible_sites(claims: auth.Claims, sites: list[Site]) -> list[Site]:
    """The halls `claims` may see: a commune moderator's communes, else all."""
    scope = commune_scope(claims)
    return sites if scope is None else [s for s in sites if s.commune in scope]


async def session_or_404(store: Store, sid: str) -> ClassSession:
    session = await store.get_session(sid)
    if session is None:
        raise UnknownError(f"class {sid} does not exist", code="unknown_class")
    return session


def client_address(request: web.Request) -> str:
    """The client's address, which rate limits count by: the TCP peer; when that peer is a
    trusted reverse proxy (or another node of the cluster), the right-most X-Forwarded-For
    entry that is not a trusted proxy. A proxy appends the address it saw, so entries to its
    left are whatever the client chose to send."""
    config = request.app[STATE].config
    peer = request.remote or "unknown"
    networks = config.proxy_networks
    by_node = bool(config.redis_url) and _node_forwarded(request, config.secret)
    if not by_node and not _within(peer, networks):
        return peer
    entries = [
        entry.strip()
        for header in request.headers.getall("X-Forwarded-For", ())
        for entry in header.split(",")
        if entry.strip()
    ]
    for entry in reversed(entries):
        if not _within(entry, networks):
            return entry
    return entries[0] if entries else peer  # every hop trusted: the first is the client


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # not an address (a proxy never writes one): not trusted
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _node_forwarded(request: web.Request, secret: bytes) -> bool:
    """Another node of the cluster forwarded this request (it names the client)."""
    from server.cluster import node_forwarded

    return node_forwarded(request, secret)


def json_error(status: int, code: str, message: str, headers: Any = None) -> web.Response:
    return web.json_response(error_body(code, message), status=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "token_invalid",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "content_type",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one place where errors become HTTP responses."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "link")}
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_error(exc.status, code, exc.reason or code, headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        known = describe(exc)
        if known is None:
            log.exception("request failed", extra={"method": request.method, "path": request.path})
            return json_error(500, "internal", "internal error; it has been logged")
        status, code, message = known
        if isinstance(exc, AuthError):
            return json_error(status, code, message, {"WWW-Authenticate": "Bearer"})
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(retry_after, (int, float)):
            return json_error(status, code, message, {"Retry-After": str(math.ceil(retry_after))})
        return json_error(status, code, message)


# --- lifecycle ----------------------------------------------------------------------------
def _task_ctx(run: Callable[[], Coroutine[Any, Any, None]]) -> CleanupCtx:
    """A cleanup context running `run()` as a background task for the app's life."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx


def _store_ctx(state: AppState) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = state.config
        store = await open_store(cfg.redis_url, cfg.data_dir, cfg.node_id)
        if cfg.redis_url:
            await _check_durability(state, store)
        state.store = metered(store, state.metrics)  # ledger appends timed, failures counted
        state.hub = Hub(
            state.store,
            cfg.node_id,
            HubLimits(
                batch_interval_s=cfg.batch_interval_s,
                open_questions_per_site=cfg.open_questions_per_site,
                open_help_per_site=cfg.open_help_per_site,
                # an edge follows the origin's end; it never ends a class itself
                auto_end_grace_s=0.0 if cfg.role == "edge" else cfg.auto_end_grace_s,
            ),
            live_probe=lambda sid: lecture_live(state, sid),
        )
        state.hub.on_class_ended = lambda sid: _close_class_media(state, sid)
        state.hub.on_site_revoked = lambda sid, code: _close_site_media(state, sid, code)
        state.hub.on_media_mode = lambda sid, code, mode: apply_media_mode(state, sid, code, mode)
        state.hub.on_cue = lambda sid, presenter: _cue_here(state, sid, presenter)
        state.hub.on_ended_here = lambda session: in_background(
            state, announce_class_end(state, session)
        )
        await state.hub.resume(time.time())
        try:
            yield
        finally:
            if state.background:
                await asyncio.wait(list(state.background), timeout=10)
            await state.hub.close()
            await state.store.close()

    return ctx


async def _check_durability(state: AppState, store: Store) -> None:
    """Refuse (strict) or flag (warn) a Redis that would lose acknowledged attendance."""
    from server.store import durability
    from server.store.redis import RedisStore

    assert isinstance(store, RedisStore)
    try:
        state.redis_problem = await durability.check(store, state.config.redis_durability)
    except BaseException:
        await store.close()
        raise
    state.metrics.redis_durable(state.redis_problem is None)


async def _close_class_media(state: AppState, sid: str) -> None:
    from server.routes.api import close_class_media

    try:
        await close_class_media(state, sid)
    except Exception:
        log.exception("could not close the media of an ended class", extra={"sid": sid})


async def _close_site_media(state: AppState, sid: str, code: str) -> None:
    """End this node's WHEP viewers of one site in a class (its join key was rotated)."""
    for rid, resource in list(state.resources.items()):
        if resource.sid == sid and resource.site == code:
            state.resources.pop(rid, None)
            try:
                await resource.handle.close()
            except Exception:
                log.exception("could not close a revoked viewer", extra={"sid": sid, "site": code})


def site_viewers(state: AppState, sid: str, code: str) -> list[Any]:
    """This node's WHEP viewers (media Viewer handles) of one site in a class."""
    return [
        r.handle
        for r in list(state.resources.values())
        if r.kind == "whep" and r.sid == sid and r.site == code
    ]


def apply_media_mode(state: AppState, sid: str, code: str, mode: str) -> None:
    """A site's choice ("auto" | "audio_only") applied to its viewers on this node."""
    for viewer in site_viewers(state, sid, code):
        try:
            viewer.set_audio_only(mode == "audio_only")
        except Exception:
            log.exception("could not apply a media mode", extra={"sid": sid, "site": code})


async def lecture_live(state: AppState, sid: str) -> bool:
    """Is the class's lecture live: here, or (cluster) on a node that takes publishers?"""
    lecture = state.lectures.get(sid)
    if lecture is not None and getattr(lecture, "live", False):
        return True
    if not state.config.redis_url:
        return False
    nodes = await state.store.nodes()
    return any(sid in node.lectures for node in nodes if node.role != "edge")


async def _cue_here(state: AppState, sid: str, presenter: str) -> None:
    """A cut asked on another node: this one cuts if it holds the presenter's source."""
    lecture = state.lectures.get(sid)
    if lecture is None or presenter not in getattr(lecture, "sources", {}):
        return
    try:
        await lecture.cue(presenter)
    except Exception:
        log.warning("cut asked elsewhere failed", extra={"sid": sid, "presenter": presenter})


def _media_ctx(state: AppState) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from media.engine import MediaConfig, MediaEngine
        from server.turn import relay_hosts

        cfg = state.config
        state.engine = MediaEngine(
            MediaConfig(
                host=cfg.media_host,
                port=cfg.media_port,
                announce=list(cfg.announce),
                media_silence_s=cfg.media_silence_s,
                tcp=cfg.media_tcp,
                udp_candidates=cfg.media_udp_candidates,
                relay_hosts=relay_hosts(cfg.turn_urls, cfg.turn_relay_ips),
            )
        )
        await state.engine.start()
        _start_recordings(state)
        try:
            yield
        finally:
            if state.recordings is not None:
                await state.recordings.close()
            await state.engine.close()

    return ctx


def _start_recordings(state: AppState) -> None:
    """Recordings (server/recordings.py): the origin records, every node replays."""
    from server.recordings import Recordings

    def on_problem(sid: str, problem: str) -> None:
        in_background(state, _recording_problem(state, sid, problem))

    state.recordings = Recordings(state.config, on_problem)


async def _recording_problem(state: AppState, sid: str, problem: str) -> None:
    """Tell a class's moderators its recording was refused or stopped (e.g. disk full)."""
    log.warning("recording problem", extra={"sid": sid, "problem": problem})
    try:
        session = await state.store.get_session(sid)
        if session is not None:
            room = await state.hub.room(session)
            body = {"type": "recording", "state": "stopped", "problem": problem}
            await room.broadcast({"roles": ["moderator", "admin"]}, body)
    except Exception:
        log.exception("could not alert moderators of a recording problem", extra={"sid": sid})


NODE_HEARTBEAT_S = 5.0


def _node_ctx(state: AppState) -> CleanupCtx:
    """Announce this node (role, addresses, load) to the store every few seconds (cluster)."""

    async def beat_forever() -> None:
        while True:
            try:
                await state.store.heartbeat(node_info(state), ttl_s=3 * NODE_HEARTBEAT_S)
            except Exception:
                log.exception("node heartbeat failed", extra={"node": state.config.node_id})
            await asyncio.sleep(NODE_HEARTBEAT_S)

    return _task_ctx(beat_forever)


def node_info(state: AppState) -> NodeInfo:
    """This node as the cluster sees it."""
    cfg = state.config
    lectures = dict(getattr(state.engine, "lectures", {}) or {})
    viewers = sum(len(getattr(lecture, "viewers", ())) for lecture in lectures.values())
    port = getattr(state.engine, "port", cfg.media_port) if state.engine else cfg.media_port
    return NodeInfo(
        id=cfg.node_id,
        role=cfg.role,
        http_url=cfg.base_url,
        media_host=cfg.announce[0] if cfg.announce else cfg.media_host,
        media_port=port,
        load=viewers / VIEWERS_PER_NODE,
        viewers=viewers,
        lectures=tuple(sorted(lectures)),
        at=time.time(),
    )


def _webhook_ctx(state: AppState) -> CleanupCtx:
    """The end-of-class webhook sender: pending deliveries resume from the data dir."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from server.webhook import WebhookSender

        cfg = state.config
        state.webhook = WebhookSender(cfg.webhook_url, cfg.webhook_secret, cfg.data_dir)
        await state.webhook.start()
        try:
            yield
        finally:
            await state.webhook.close()  # an enqueue after this is still kept on disk

    return ctx


async def announce_class_end(state: AppState, session: ClassSession) -> None:
    """Queue the class summary for the webhook (idempotent per data dir on the class id)."""
    if state.webhook is None:
        return
    from server.webhook import class_summary

    try:
        payload = await class_summary(state.store, session)
        payload["recording"] = await recording_summary(state, session.id)
        await state.webhook.enqueue(f"class_ended:{session.id}", payload)
    except Exception:
        log.exception("could not queue the class summary webhook", extra={"sid": session.id})


async def recording_summary(state: AppState, sid: str) -> dict[str, Any] | None:
    """The webhook's `recording`: download URL (a moderator token) and duration, or None."""
    if state.recordings is None:
        return None
    info = await state.recordings.ended(sid)
    if info is None:
        return None
    from urllib.parse import quote

    token = auth.mint(state.config.secret, sid, Role.MODERATOR, ttl_s=state.config.token_ttl_s)
    url = f"{state.config.base_url}/api/sessions/{quote(sid)}/recording/file?token={token}"
    return {"url": url, "duration_s": info["duration_s"], "started_at": info["started_at"]}


def in_background(state: AppState, coro: Any) -> None:
    """Run `coro` after the reply; shutdown waits for it (cleanup of the store context)."""
    task = asyncio.ensure_future(coro)
    state.background.add(task)
    task.add_done_callback(state.background.discard)


SCHEDULE_SWEEP_S = 60.0


def _schedule_ctx(state: AppState) -> CleanupCtx:
    """Classes past their planned end plus the grace end by themselves (recorded as ended at
    their planned end): at once at start (the end passed while the server was down), then
    every minute for classes no page opened here
    (an open class checks itself every batch, server/room.py). After the webhook sender has
    started, so the summary of a class ended at start goes out."""

    async def sweep() -> None:
        try:
            await state.hub.end_overdue()
        except Exception:  # the store is down: the next sweep tries again
            log.exception("could not look for classes past their end")
        if state.recordings is not None:  # recordings past their retention days
            try:
                gone = await asyncio.to_thread(state.recordings.expire)
                if gone:
                    log.info("recordings expired", extra={"sessions": gone})
            except Exception:
                log.exception("could not expire old recordings")

    async def sweep_forever() -> None:
        while True:  # the first at once, without holding up the start
            await sweep()
            await asyncio.sleep(SCHEDULE_SWEEP_S)

    return _task_ctx(sweep_forever)


def _demo_ctx(state: AppState) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from server.demo import create_demo, print_links, write_demo_json

        cfg = state.config
        if cfg.demo_sites:
            state.demo = await create_demo(state.store, cfg, cfg.demo_sites)
            if cfg.demo_json is not None:
                write_demo_json(state.demo, cfg.demo_json)
            print_links(state.demo)
        yield

    return ctx


def create_app(config: Config, *, media: bool = True) -> web.Application:
    """Build the application. `media=False` leaves out the media engine (tests of signalling
    that never publish or view)."""
    from server.routes import (
        admin,
        api,
        links,
        metrics,
        moderation,
        pages,
        replay,
        signin,
        whip,
        ws,
    )

    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB_DIR / "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        enable_async=False,
    )
    state = AppState(config=config, templates=templates)
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[
            metrics.signalling_middleware,
            error_middleware,
            signin.session_middleware,
            site_key_middleware,
        ],
    )
    app[STATE] = state
    security.install(app)
    app.cleanup_ctx.append(_store_ctx(state))
    if media:
        app.cleanup_ctx.append(_media_ctx(state))
    if config.redis_url:  # cluster: heartbeat, placement, relay links (server/cluster.py)
        from server.cluster import install

        install(app, config, lambda: state.store, lambda: state.engine)
    else:
        app.cleanup_ctx.append(_node_ctx(state))
    if config.webhook_url:
        app.cleanup_ctx.append(_webhook_ctx(state))
    app.cleanup_ctx.append(_schedule_ctx(state))
    app.cleanup_ctx.append(_demo_ctx(state))
    app.router.add_get("/healthz", healthz)
    api.add_routes(app)
    whip.add_routes(app)
    ws.add_routes(app)
    moderation.add_routes(app)
    metrics.add_routes(app)
    pages.add_routes(app)
    links.add_routes(app)
    signin.add_routes(app)
    admin.add_routes(app)
    replay.add_routes(app)
    app.router.add_static("/static", WEB_DIR / "static", append_version=False)
    return app


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {
        "ok": True,
        "node": state.config.node_id,
        "media": state.engine is not None,
    }
    if state.config.redis_url:  # cluster: does Redis keep what it acknowledged?
        body["redis_durable"] = state.redis_problem is None
        if state.redis_problem is not None:
            body["warnings"] = [state.redis_problem]
    return web.json_response(body)


def pick_lang(request: web.Request) -> str:
    lang = request.query.get("lang", "vi")
    return lang if lang in LANGS else "vi"


__all__ = [
    "STATE",
    "AppState",
    "authorize_request",
    "claims_of",
    "commune_scope",
    "create_app",
    "pick_lang",
    "session_or_404",
    "visible_sites",
]
