"""Accounts of organisers (admin) and moderators, and the signed cookie of a signed-in page.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile).
The session cookie is `base64url(json) "." base64url(hmac)` like a token (server/auth.py),
holding the account name, an expiry, a random session id and `pw`: a fingerprint of the
password hash, so changing the password or removing the account ends every session of it.
The CSRF token of a session is an HMAC of its session id: forms and fetches send it back.
Pure: no web code; the clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time

import argon2

from server import auth
from server.errors import AuthError, ValidationError
from server.fields import check_text
from server.models import Role, User

NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
ACCOUNT_ROLES = (Role.ADMIN, Role.MODERATOR)
MIN_PASSWORD = 8
MAX_PASSWORD = 256
SESSION_TTL_S = 12 * 3600.0  # one working day; sign in again the next
LOGIN_BURST = 5.0  # sign-in attempts at once, per address and per account name
LOGIN_RATE = 1 / 60  # then one a minute
_HASHER = argon2.PasswordHasher()  # stateless: safe to share


def check_name(name: str) -> str:
    """`name` when it is a valid account name, else a ValidationError."""
    if not NAME_RE.fullmatch(name):
        raise ValidationError("user name must be 1-64 of A-Z a-z 0-9 _ . @ -", code="bad_field")
    return name


def check_password(password: str) -> str:
    """`password` when long enough, else a ValidationError."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(
            f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters", code="bad_field"
        )
    return password


def new_user(
    name: str, role: Role, password: str, communes: list[str], now: float | None = None
) -> User:
    """A validated account with its password hashed."""
    if role not in ACCOUNT_ROLES:
        raise ValidationError("role must be admin or moderator", code="bad_field")
    cleaned = tuple(dict.fromkeys(check_text(c.strip(), "commune", 200) for c in communes))
    if any(not c for c in cleaned):
        raise ValidationError("a commune name is empty", code="bad_field")
    if role is Role.ADMIN and cleaned:
        raise ValidationError("an admin sees every commune: --commune is for moderators")
    return User(
        name=check_name(name),
        role=role,
        password_hash=_HASHER.hash(check_password(password)),
        communes=cleaned,
        created_at=time.time() if now is None else now,
    )


def password_matches(user: User | None, password: str) -> bool:
    """True when `password` is the account's; hashes once even without an account, so the
    time taken does not tell which names exist."""
    if user is None:
        _HASHER.hash(password[:MAX_PASSWORD] or "x")
        return False
    try:
        return _HASHER.verify(user.password_hash, password[:MAX_PASSWORD])
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class SignedIn:
    """What a valid session cookie says."""

    name: str
    sid: str  # the session's random id (its CSRF token derives from it)
    pw: str  # fingerprint of the password hash when signed in
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _mac(secret: bytes, label: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"lopso-" + label + b"\x1f" + payload, hashlib.sha256).digest()


def fingerprint(secret: bytes, user: User) -> str:
    """8 bytes of HMAC of the account's password hash: changes with the password."""
    return _b64(_mac(secret, b"pw", user.password_hash.encode())[:8])


def session_cookie(
    secret: bytes, user: User, *, now: float | None = None, ttl_s: float = SESSION_TTL_S
) -> str:
    """A new signed session cookie value for `user`."""
    issued = time.time() if now is None else now
    body = {
        "u": user.name,
        "s": secrets.token_urlsafe(12),
        "pw": fingerprint(secret, user),
        "exp": int(issued + ttl_s),
    }
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, b'session', payload))}"


def read_cookie(secret: bytes, value: str, *, now: float | None = None) -> SignedIn:
    """The session a cookie value holds, or AuthError (forged, malformed or expired)."""
    if len(value) > auth.MAX_TOKEN_CHARS or value.count(".") != 1:
        raise AuthError("the sign-in cookie is malformed", code="session_invalid")
    body, sig = value.split(".")
    try:
        payload, signature = _unb64(body), _unb64(sig)
        raw = json.loads(payload)
        signed = SignedIn(name=raw["u"], sid=raw["s"], pw=raw["pw"], exp=raw["exp"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise AuthError("the sign-in cookie is malformed", code="session_invalid") from None
    if not hmac.compare_digest(signature, _mac(secret, b"session", payload)):
        raise AuthError("the sign-in cookie is not ours", code="session_invalid")
    if not isinstance(signed.exp, int) or signed.exp <= (time.time() if now is None else now):
        raise AuthError("the sign-in has expired; sign in again", code="session_expired")
    return signed


def session_claims(secret: bytes, signed: SignedIn, user: User | None) -> auth.Claims:
    """The claims a signed-in account acts with (as a token for every class would), or
    AuthError when the account was removed or its password changed since."""
    if user is None or not hmac.compare_digest(signed.pw, fingerprint(secret, user)):
        raise AuthError("the sign-in is no longer valid; sign in again", code="session_invalid")
    return auth.Claims(
        sid=auth.ANY_CLASS,
        role=user.role,
        site=None,
        exp=signed.exp,
        communes=user.communes or None,
        user=user.name,
    )


def csrf_token(secret: bytes, session_id: str) -> str:
    """The CSRF token of a signed-in session (or of a sign-in form's pre-session id)."""
    return _b64(_mac(secret, b"csrf", session_id.encode())[:16])


def csrf_matches(secret: bytes, session_id: str, given: str | None) -> bool:
    """True when `given` is the CSRF token of `session_id`."""
    return bool(given) and hmac.compare_digest(csrf_token(secret, session_id), given or "")
