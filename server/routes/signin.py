"""Sign-in for organisers and moderators: `/login`, `/logout`, and the session middleware.

A signed-in page carries the `lopso_session` cookie (HttpOnly, SameSite=Strict, Secure on
HTTPS). The middleware turns a valid cookie into the claims a token for every class would give
(server/accounts.py), so every route that authorizes a token accepts a signed-in admin or
moderator the same way. A request with a token (Bearer or ?token=) is judged by its token
alone: hall and lecturer links work as before.

CSRF: every state-changing request authorized by the cookie must carry the session's CSRF
token, in the `X-CSRF-Token` header (page scripts) or the `csrf_token` form field (forms).
The sign-in form, before any session, uses a double-submit pre-session cookie instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from aiohttp import web

from server import accounts, auth
from server.app import STATE, VERIFIED_CLAIMS, client_address, pick_lang
from server.errors import ForbiddenError, LopsoError, RateLimitedError

log = logging.getLogger(__name__)

SESSION_COOKIE = "lopso_session"
LOGIN_COOKIE = "lopso_login"  # the sign-in form's pre-session id (double-submit CSRF)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_FORM_FIELD = 512
SIGNED_IN = web.RequestKey("lopso.signed_in", accounts.SignedIn)


def _has_token(request: web.Request) -> bool:
    return "Authorization" in request.headers or bool(request.query.get("token"))


def _same_origin(request: web.Request) -> bool:
    """A browser names the page that sent a request in Origin: it must be this host."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null" and request.method in SAFE_METHODS:
        return True
    return origin.split("://", 1)[-1] == request.host


async def _csrf_given(request: web.Request) -> str | None:
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in FORM_TYPES:
        form = await request.post()  # aiohttp keeps it: the route reads it again for free
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return given


@web.middleware
async def session_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """A valid session cookie (and no token) signs the request in; see the module doc."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not _has_token(request) and _same_origin(request):
        state = request.app[STATE]
        with contextlib.suppress(LopsoError):  # a stale cookie: simply not signed in
            signed = accounts.read_cookie(state.config.secret, cookie)
            user = await state.store.get_user(signed.name)
            request[VERIFIED_CLAIMS] = accounts.session_claims(state.config.secret, signed, user)
            request[SIGNED_IN] = signed
        if SIGNED_IN in request and request.method not in SAFE_METHODS:
            if not accounts.csrf_matches(
                state.config.secret, request[SIGNED_IN].sid, await _csrf_given(request)
            ):
                raise ForbiddenError(
                    f"this form or request lacks its CSRF token ({CSRF_FIELD} / {CSRF_HEADER})",
                    code="csrf_failed",
                )
    response: web.StreamResponse = await handler(request)
    return response


def signed_in(request: web.Request) -> tuple[auth.Claims, str] | None:
    """The signed-in account's claims and the CSRF token of its session, or None."""
    signed = request.get(SIGNED_IN)
    if signed is None:
        return None
    return request[VERIFIED_CLAIMS], accounts.csrf_token(
        request.app[STATE].config.secret, signed.sid
    )


def see_other(location: str) -> web.Response:
    """A 303 to `location` (after a form post, the browser GETs it)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _cookie_options(request: web.Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "Strict", "secure": request.secure}


def _login_page(request: web.Request, error: str | None, status: int = 200) -> web.Response:
    from server.routes.pages import render

    state = request.app[STATE]
    pre = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
    page = {
        "lang": pick_lang(request),
        "csrf": accounts.csrf_token(state.config.secret, "login:" + pre),
        "error": error,
        "username": "",
    }
    response = render(request, "login", page)
    response.set_status(status)
    response.set_cookie(LOGIN_COOKIE, pre, path="/login", max_age=3600, **_cookie_options(request))
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    """`GET /login`: the sign-in form (a signed-in account goes straight to /admin)."""
    if SIGNED_IN in request:
        return see_other("/admin")
    return _login_page(request, None)


async def login(request: web.Request) -> web.StreamResponse:
    """`POST /login` (username, password, csrf_token): the session cookie and /admin."""
    state = request.app[STATE]
    if request.content_type not in FORM_TYPES:
        return _login_page(request, "login_bad_form", 415)
    form = await request.post()
    name, password, given = (
        str(form.get(key, ""))[:MAX_FORM_FIELD] for key in ("username", "password", CSRF_FIELD)
    )
    pre = request.cookies.get(LOGIN_COOKIE, "")
    if not pre or not accounts.csrf_matches(state.config.secret, "login:" + pre, given):
        return _login_page(request, "login_csrf", 403)
    keys = (f"addr:{client_address(request)}", f"user:{name.lower()}")
    if any(state.login_limiter.blocked(key) for key in keys):
        # by address and by account: guessing one password, or many accounts, is slow
        log.warning("sign-in rate limited", extra={"user": name, "addr": keys[0][5:]})
        response = _login_page(request, "login_rate_limited", 429)
        response.headers["Retry-After"] = str(int(1 / accounts.LOGIN_RATE))
        return response
    user = await state.store.get_user(name) if accounts.NAME_RE.fullmatch(name) else None
    matches = await asyncio.to_thread(accounts.password_matches, user, password)  # ~50 ms CPU
    if not matches or user is None:  # hashed either way: the time tells no names
        for key in keys:  # only failures count: an office of organisers signs in freely
            with contextlib.suppress(RateLimitedError):
                state.login_limiter.check(key)
        log.info("sign-in refused", extra={"user": name, "addr": keys[0][5:]})
        return _login_page(request, "login_wrong", 401)
    log.info("signed in", extra={"user": user.name, "role": user.role.value})
    response = see_other("/admin")
    response.set_cookie(
        SESSION_COOKIE,
        accounts.session_cookie(state.config.secret, user),
        path="/",
        max_age=int(accounts.SESSION_TTL_S),
        **_cookie_options(request),
    )
    response.del_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """`POST /logout` (csrf_token): forget the session cookie; back to the sign-in form."""
    response = see_other("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)


__all__ = ["SESSION_COOKIE", "add_routes", "session_middleware", "signed_in"]
