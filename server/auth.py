"""Signed, expiring tokens scoped to a class and a role (and a site), and rate limits.

Format (docs/protocol.md): `base64url(json) "." base64url(hmac_sha256(secret, json))`, the
JSON holding `sid`, `role`, `site`, `exp`, and for site and participant tokens `k`: the key
id of the site's join key when the token was minted. Rotating a site's join key changes its
key id, so every link handed out before stops working (`check_key`). A lecturer token may
hold `p`, the presenter it speaks for (without it: the class's lead). Pure: no web code, the
clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable

from server.errors import AuthError, ForbiddenError, RateLimitedError
from server.fields import text_problem
from server.models import Role
from server.roles import SITE_ROLES, Action, may

ANY_CLASS = "*"
MAX_TOKEN_CHARS = 2048


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says: for which class, as which role, for which site, until when."""

    sid: str
    role: Role
    site: str | None
    exp: int
    k: str | None = None  # key id of the site's join key (site and participant tokens)
    # a signed-in account's (never in a token): a commune moderator's communes (None: every
    # commune) and the account name
    communes: tuple[str, ...] | None = None
    user: str | None = None
    p: str | None = None  # a lecturer token's presenter (None: the class's lead presenter)

    def to_json(self) -> bytes:
        """Canonical JSON bytes (sorted keys, no spaces): what the signature covers."""
        body: dict[str, object] = {
            "sid": self.sid,
            "role": self.role.value,
            "site": self.site,
            "exp": self.exp,
        }
        if self.k is not None:
            body["k"] = self.k
        if self.p is not None:
            body["p"] = self.p
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def key_id(secret: bytes, join_key: str) -> str:
    """The key id of a site's join key: 8 bytes of HMAC(secret, join key), base64url.

    Reveals nothing of the join key; changes when the key is rotated."""
    digest = hmac.new(secret, b"lopso-join-key\x1f" + join_key.encode(), hashlib.sha256).digest()
    return _b64(digest[:8])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _sign(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def mint(
    secret: bytes,
    sid: str,
    role: Role,
    *,
    site: str | None = None,
    join_key: str | None = None,
    presenter: str | None = None,
    ttl_s: float,
    now: float | None = None,
) -> str:
    """Return a token for `role` in class `sid` (and `site`), valid for `ttl_s` seconds.

    Only an admin token may be for every class (`ANY_CLASS`). Site and participant tokens
    need the site's current `join_key` (from the registry). A lecturer token may name its
    `presenter` (without one it speaks for the class's lead presenter)."""
    if sid == ANY_CLASS and role is not Role.ADMIN:
        raise ValueError(
            f"a {role.value} token needs a class: {ANY_CLASS} is for admin tokens only"
        )
    if role in SITE_ROLES and not site:
        raise ValueError(f"a {role.value} token needs a site")
    if role in SITE_ROLES and join_key is None:
        raise ValueError(f"a {role.value} token needs the site's join key")
    if presenter is not None and role is not Role.LECTURER:
        raise ValueError("only a lecturer token names a presenter")
    issued = time.time() if now is None else now
    k = key_id(secret, join_key) if role in SITE_ROLES and join_key is not None else None
    claims = Claims(sid=sid, role=role, site=site, exp=int(issued + ttl_s), k=k, p=presenter)
    payload = claims.to_json()
    return f"{_b64(payload)}.{_b64(_sign(secret, payload))}"


def verify(secret: bytes, token: str, *, now: float | None = None) -> Claims:
    """Check the signature and expiry of `token` and return its claims; raise AuthError."""
    if not token:
        raise AuthError(
            "a token is required (Authorization: Bearer or ?token=)", code="token_missing"
        )
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise AuthError("token is malformed", code="token_malformed")
    body, sig = token.split(".")
    try:
        payload, signature = _unb64(body), _unb64(sig)
    except (binascii.Error, ValueError):
        raise AuthError("token is not base64url", code="token_malformed") from None
    if _b64(payload) != body or _b64(signature) != sig:  # one spelling per token (no spare bits)
        raise AuthError("token is not canonical base64url", code="token_malformed")
    if not hmac.compare_digest(signature, _sign(secret, payload)):
        raise AuthError("token signature does not match", code="token_bad_signature")
    claims = _parse_claims(payload)
    if claims.exp <= (time.time() if now is None else now):
        raise AuthError("token has expired", code="token_expired")
    return claims


def _parse_claims(payload: bytes) -> Claims:
    try:
        raw = json.loads(payload)
        role = Role(raw["role"])
        sid, site, exp, k = raw["sid"], raw.get("site"), raw["exp"], raw.get("k")
        presenter = raw.get("p")
    except (ValueError, KeyError, TypeError):
        raise AuthError("token claims are malformed", code="token_malformed") from None
    if (
        not isinstance(sid, str)
        or type(exp) is not int
        or not (site is None or isinstance(site, str))
        or not (k is None or isinstance(k, str))
        or not (presenter is None or isinstance(presenter, str))
    ):
        raise AuthError("token claims have wrong types", code="token_malformed")
    if sid == ANY_CLASS and role is not Role.ADMIN:  # signed by an older LopSo: never again
        raise AuthError(
            f"a {role.value} token for every class is not accepted; ask for one for your class",
            code="token_scope",
        )
    for name, value in (("sid", sid), ("site", site), ("k", k), ("p", presenter)):
        problem = text_problem(value) if value is not None else None
        if problem is not None:  # a store key or an echoed name: it must be writable text
            raise AuthError(f"token claim {name} {problem}", code="token_malformed")
    return Claims(sid=sid, role=role, site=site, exp=exp, k=k, p=presenter)


def check_key(claims: Claims, current: str | None) -> None:
    """Raise AuthError when a site or participant token was minted for a join key the site no
    longer has. `current` is the site's key id now (None: the site is not in the registry,
    which the route reports itself)."""
    if claims.role not in SITE_ROLES or current is None:
        return
    if claims.k is None or not hmac.compare_digest(claims.k, current):
        raise AuthError(
            "this link was replaced by a new one (the site's join key changed); "
            "ask the organisers for the new link",
            code="token_revoked",
        )


def authorize(claims: Claims, action: Action, sid: str, site: str | None = None) -> None:
    """Raise ForbiddenError unless `claims` allow `action` on class `sid` (and `site`).

    `sid` ANY_CLASS asks for a registry-wide action (sites, creating classes, metrics): only
    a token for every class, an admin's, may do it; an admin token for one class may not."""
    if claims.sid != ANY_CLASS and claims.sid != sid:
        if sid == ANY_CLASS:
            raise ForbiddenError(
                f"this needs an admin token for every class ({ANY_CLASS}); "
                f"this one is for class {claims.sid}",
                code="wrong_class",
            )
        raise ForbiddenError("token is for another class", code="wrong_class")
    if not may(claims.role, action):
        raise ForbiddenError(f"role {claims.role.value} may not {action.value}", code="wrong_role")
    if site is not None and claims.role in SITE_ROLES and claims.site != site:
        raise ForbiddenError("token is for another site", code="wrong_site")


def bearer(header: str | None, query_token: str | None) -> str:
    """Pick the token from an `Authorization: Bearer` header, else from `?token=`."""
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("Authorization header must be 'Bearer <token>'", code="token_malformed")
        return value.strip()
    return query_token or ""


class RateLimiter:
    """Token bucket per key: `rate` events per second with bursts up to `burst` (rate 0: off)."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def blocked(self, key: str) -> bool:
        """True when `key` has no whole token left now (none is taken)."""
        if self._rate <= 0:
            return False
        now = self._clock()
        level, last = self._buckets.get(key, (self._burst, now))
        return min(self._burst, level + (now - last) * self._rate) < 1.0

    def check(self, key: str) -> None:
        """Take one token for `key` or raise RateLimitedError."""
        if self._rate <= 0:
            return
        now, level = self._level(key)
        if level < 1.0:
            self._buckets[key] = (level, now)
            raise RateLimitedError(f"too many requests for {key}; slow down")
        self._buckets[key] = (level - 1.0, now)
        if len(self._buckets) > 100_000:  # keep memory bounded under address floods
            self._buckets.clear()

    def refuse_if_empty(self, key: str) -> None:
        """Raise RateLimitedError when `key` has no token left, taking none (count only the
        failures with `check`, refuse everything once they ran out)."""
        if self._rate > 0 and self._level(key)[1] < 1.0:
            raise RateLimitedError(f"too many requests for {key}; slow down")

    def _level(self, key: str) -> tuple[float, float]:
        now = self._clock()
        level, last = self._buckets.get(key, (self._burst, now))
        return now, min(self._burst, level + (now - last) * self._rate)
