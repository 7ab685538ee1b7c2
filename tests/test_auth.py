"""Tokens: valid, expired, tampered, wrong scope (table-driven); the rate limiter."""

from __future__ import annotations

import pytest

from server import auth
from server.errors import AuthError, ForbiddenError, RateLimitedError
from server.models import Role
from server.roles import Action

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0


def token(
    role: Role,
    sid: str = "c1",
    site: str | None = None,
    ttl: float = 60,
    join_key: str = "join-key-1",
) -> str:
    key = join_key if role in (Role.SITE, Role.PARTICIPANT) else None
    return auth.mint(SECRET, sid, role, site=site, join_key=key, ttl_s=ttl, now=NOW)


def test_round_trip_keeps_every_claim() -> None:
    claims = auth.verify(SECRET, token(Role.SITE, site="HY-001"), now=NOW + 1)
    k = auth.key_id(SECRET, "join-key-1")
    assert claims == auth.Claims(sid="c1", role=Role.SITE, site="HY-001", exp=int(NOW + 60), k=k)
    assert len(k) == 11 and "join-key" not in k
    moderator = auth.verify(SECRET, token(Role.MODERATOR), now=NOW)
    assert moderator.k is None and b'"k"' not in moderator.to_json()  # only site tokens carry it


@pytest.mark.parametrize(
    ("role", "minted_with", "current", "revoked"),
    [
        (Role.SITE, "join-key-1", "join-key-1", False),
        (Role.SITE, "join-key-1", "join-key-2", True),  # rotated: the old link is dead
        (Role.PARTICIPANT, "join-key-1", "join-key-2", True),
        (Role.PARTICIPANT, "join-key-1", "join-key-1", False),
        (Role.SITE, "join-key-1", None, False),  # not in the registry: the route says 404
        (Role.MODERATOR, "", "join-key-2", False),  # not a site token: nothing to check
    ],
)
def test_key_check_refuses_links_of_a_rotated_join_key(role, minted_with, current, revoked) -> None:
    site = "S1" if role in (Role.SITE, Role.PARTICIPANT) else None
    claims = auth.verify(SECRET, token(role, site=site, join_key=minted_with), now=NOW)
    current_id = None if current is None else auth.key_id(SECRET, current)
    if not revoked:
        auth.check_key(claims, current_id)
        return
    with pytest.raises(AuthError) as info:
        auth.check_key(claims, current_id)
    assert info.value.code == "token_revoked" and info.value.status == 401


def test_a_site_token_without_key_id_is_refused() -> None:
    payload = b'{"exp":1800000060,"role":"site","sid":"c1","site":"S1"}'
    unkeyed = f"{auth._b64(payload)}.{auth._b64(auth._sign(SECRET, payload))}"
    claims = auth.verify(SECRET, unkeyed, now=NOW)
    with pytest.raises(AuthError, match="replaced"):
        auth.check_key(claims, auth.key_id(SECRET, "join-key-1"))


def _flip_last_sig_char(tok: str) -> str:
    body, sig = tok.split(".")
    return f"{body}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}"


def _forge_role(tok: str) -> str:
    body, sig = tok.split(".")
    raw = auth._unb64(body).replace(b'"site"', b'"admin"', 0).replace(b"moderator", b"admin")
    return f"{auth._b64(raw)}.{sig}"


@pytest.mark.parametrize(
    ("make", "now", "code"),
    [
        (lambda: "", NOW, "token_missing"),
        (lambda: "abc", NOW, "token_malformed"),
        (lambda: "a.b.c", NOW, "token_malformed"),
        (lambda: "!!!.???", NOW, "token_malformed"),
        (lambda: "x" * 5000, NOW, "token_malformed"),
        (lambda: token(Role.MODERATOR), NOW + 61, "token_expired"),
        (lambda: token(Role.MODERATOR), NOW + 60, "token_expired"),
        (lambda: _flip_last_sig_char(token(Role.MODERATOR)), NOW, "token_bad_signature"),
        (lambda: _forge_role(token(Role.MODERATOR)), NOW, "token_bad_signature"),
        (
            lambda: auth.mint(
                b"another-secret-of-32-bytes......", "c1", Role.ADMIN, ttl_s=60, now=NOW
            ),
            NOW,
            "token_bad_signature",
        ),
    ],
)
def test_bad_tokens_are_refused_with_a_precise_code(make, now: float, code: str) -> None:
    with pytest.raises(AuthError) as info:
        auth.verify(SECRET, make(), now=now)
    assert info.value.code == code
    assert info.value.status == 401


def test_signed_garbage_claims_are_malformed() -> None:
    payload = b'{"sid": 3, "role": "site", "exp": "soon"}'
    forged = f"{auth._b64(payload)}.{auth._b64(auth._sign(SECRET, payload))}"
    with pytest.raises(AuthError, match="wrong types"):
        auth.verify(SECRET, forged, now=NOW)


@pytest.mark.parametrize(
    ("role", "tok_sid", "tok_site", "action", "sid", "site", "code"),
    [
        (Role.MODERATOR, "c1", None, Action.EXPORT, "c1", None, None),
        (Role.MODERATOR, "c1", None, Action.EXPORT, "c2", None, "wrong_class"),
        (Role.MODERATOR, "c1", None, Action.PUBLISH, "c1", None, "wrong_role"),
        (Role.LECTURER, "c1", None, Action.PUBLISH, "c1", None, None),
        (Role.LECTURER, "c1", None, Action.VIEW, "c1", "S1", "wrong_role"),
        (Role.SITE, "c1", "S1", Action.VIEW, "c1", "S1", None),
        (Role.SITE, "c1", "S1", Action.VIEW, "c1", "S2", "wrong_site"),
        (Role.SITE, "c1", "S1", Action.MODERATE, "c1", None, "wrong_role"),
        (Role.SITE, "c1", "S1", Action.PUBLISH, "c1", None, "wrong_role"),
        (Role.PARTICIPANT, "c1", "S1", Action.CHECKIN, "c1", "S1", None),
        (Role.PARTICIPANT, "c1", "S1", Action.VIEW, "c1", "S1", "wrong_role"),
        (Role.PARTICIPANT, "c1", "S1", Action.CHECKIN, "c1", "S9", "wrong_site"),
        (Role.ADMIN, "*", None, Action.EXPORT, "c7", None, None),
        (Role.ADMIN, "*", None, Action.VIEW, "c7", "S3", None),
        (Role.ADMIN, "*", None, Action.ADMIN, "*", None, None),
        # an admin token for one class acts on that class only, and on no registry-wide action
        (Role.ADMIN, "c1", None, Action.EXPORT, "c1", None, None),
        (Role.ADMIN, "c1", None, Action.EXPORT, "c7", None, "wrong_class"),
        (Role.ADMIN, "c1", None, Action.ADMIN, "*", None, "wrong_class"),
        (Role.MODERATOR, "c1", None, Action.LINKS, "*", None, "wrong_class"),
    ],
)
def test_scope_table(role, tok_sid, tok_site, action, sid, site, code) -> None:
    claims = auth.verify(SECRET, token(role, sid=tok_sid, site=tok_site), now=NOW)
    if code is None:
        auth.authorize(claims, action, sid, site)
        return
    with pytest.raises(ForbiddenError) as info:
        auth.authorize(claims, action, sid, site)
    assert info.value.code == code and info.value.status == 403


def test_site_tokens_need_a_site_and_its_join_key() -> None:
    with pytest.raises(ValueError, match="needs a site"):
        auth.mint(SECRET, "c1", Role.SITE, ttl_s=60)
    with pytest.raises(ValueError, match="join key"):
        auth.mint(SECRET, "c1", Role.PARTICIPANT, site="S1", ttl_s=60)


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ("Bearer abc.def", None, "abc.def"),
        ("bearer  xyz ", "q", "xyz"),
        (None, "q.t", "q.t"),
        (None, None, ""),
    ],
)
def test_bearer_picks_header_then_query(header, query, expected) -> None:
    assert auth.bearer(header, query) == expected


def test_bearer_rejects_other_schemes() -> None:
    with pytest.raises(AuthError):
        auth.bearer("Basic dXNlcjpwYXNz", None)


def test_rate_limiter_allows_burst_then_refills() -> None:
    clock = [0.0]
    limiter = auth.RateLimiter(rate=2.0, burst=3, clock=lambda: clock[0])
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimitedError):
        limiter.check("a")
    limiter.check("b")  # other keys are independent
    clock[0] += 0.5  # one token back
    limiter.check("a")
    with pytest.raises(RateLimitedError):
        limiter.check("a")


def test_rate_zero_means_no_limit() -> None:
    limiter = auth.RateLimiter(rate=0, burst=0, clock=lambda: 0.0)
    for _ in range(1000):
        limiter.check("a")


def test_a_token_has_one_spelling() -> None:
    """Base64url's spare bits in a last character must not give a token other valid forms."""
    token = auth.mint(SECRET, "c1", Role.MODERATOR, ttl_s=60, now=NOW)
    body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    others = [f"{body[:-1]}{c}.{sig}" for c in alphabet] + [
        f"{body}.{sig[:-1]}{c}" for c in alphabet
    ]
    assert auth.verify(SECRET, token, now=NOW).role is Role.MODERATOR
    for other in others:
        if other != token:
            with pytest.raises(AuthError):
                auth.verify(SECRET, other, now=NOW)


@pytest.mark.parametrize("role", [Role.LECTURER, Role.MODERATOR, Role.SITE, Role.PARTICIPANT])
def test_only_admin_tokens_may_be_for_every_class(role) -> None:
    """Before: any role minted with `*` was valid in every class."""
    with pytest.raises(ValueError, match="is for admin tokens only"):
        token(role, sid=auth.ANY_CLASS, site="S1")
    # one signed before this rule (or by hand): refused when verified
    claims = auth.Claims(sid=auth.ANY_CLASS, role=role, site="S1", exp=int(NOW + 60), k="x")
    payload = claims.to_json()
    forged = f"{auth._b64(payload)}.{auth._b64(auth._sign(SECRET, payload))}"
    with pytest.raises(AuthError) as info:
        auth.verify(SECRET, forged, now=NOW)
    assert info.value.code == "token_scope" and info.value.status == 401
    assert auth.verify(SECRET, token(Role.ADMIN, sid=auth.ANY_CLASS), now=NOW).sid == "*"
