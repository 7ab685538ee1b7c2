"""Accounts: argon2 hashes, the signed session cookie, CSRF tokens, and `lopso users`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server import accounts, auth
from server.errors import AuthError, ValidationError
from server.models import Role

SECRET = b"k" * 32


def test_password_is_hashed_with_argon2id_and_verified() -> None:
    user = accounts.new_user("ana", Role.MODERATOR, "mật khẩu dài", ["Xã A", "Xã A", "Xã B"])
    assert user.password_hash.startswith("$argon2id$")
    assert "mật khẩu" not in user.password_hash
    assert user.communes == ("Xã A", "Xã B")
    assert accounts.password_matches(user, "mật khẩu dài")
    assert not accounts.password_matches(user, "mật khẩu dài ")
    assert not accounts.password_matches(None, "mật khẩu dài")


@pytest.mark.parametrize(
    ("name", "role", "password", "communes", "problem"),
    [
        ("a b", Role.ADMIN, "longenough", [], "user name"),
        ("", Role.ADMIN, "longenough", [], "user name"),
        ("ana", Role.ADMIN, "short", [], "password must be"),
        ("ana", Role.LECTURER, "longenough", [], "role must be"),
        ("ana", Role.ADMIN, "longenough", ["Xã A"], "every commune"),
        ("ana", Role.MODERATOR, "longenough", ["  "], "commune name is empty"),
        ("ana", Role.MODERATOR, "longenough", ["a\x00b"], "control character"),
    ],
)
def test_bad_accounts_are_refused_precisely(name, role, password, communes, problem) -> None:
    with pytest.raises((ValidationError, ValueError), match=problem):
        accounts.new_user(name, role, password, communes)


def test_session_cookie_round_trips_and_refuses_forgery_expiry_and_password_change() -> None:
    user = accounts.new_user("ana", Role.MODERATOR, "longenough", ["Xã A"])
    value = accounts.session_cookie(SECRET, user, now=1000.0, ttl_s=60)
    signed = accounts.read_cookie(SECRET, value, now=1030.0)
    claims = accounts.session_claims(SECRET, signed, user)
    assert (claims.role, claims.sid, claims.communes, claims.user) == (
        Role.MODERATOR,
        auth.ANY_CLASS,
        ("Xã A",),
        "ana",
    )
    with pytest.raises(AuthError, match="expired"):
        accounts.read_cookie(SECRET, value, now=1061.0)
    with pytest.raises(AuthError, match="not ours"):
        accounts.read_cookie(b"other" * 8, value, now=1030.0)
    body, sig = value.split(".")
    with pytest.raises(AuthError, match="malformed"):
        accounts.read_cookie(SECRET, body + "." + sig + ".x", now=1030.0)
    changed = accounts.new_user("ana", Role.MODERATOR, "anotherpass", ["Xã A"])
    with pytest.raises(AuthError, match="no longer valid"):
        accounts.session_claims(SECRET, signed, changed)
    with pytest.raises(AuthError, match="no longer valid"):
        accounts.session_claims(SECRET, signed, None)


def test_csrf_token_is_bound_to_its_session() -> None:
    token = accounts.csrf_token(SECRET, "s1")
    assert accounts.csrf_matches(SECRET, "s1", token)
    assert not accounts.csrf_matches(SECRET, "s2", token)
    assert not accounts.csrf_matches(SECRET, "s1", None)
    assert not accounts.csrf_matches(SECRET, "s1", "")


def lopso(*args: str, data: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args, "--data", str(data)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def test_users_add_list_remove_from_a_script(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = lopso(
        "users",
        "add",
        "ana",
        "--role",
        "moderator",
        "--commune",
        "Xã A",
        data=data,
        stdin="mật khẩu dài\n",
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == {"name": "ana", "role": "moderator", "communes": ["Xã A"]}
    short = lopso("users", "add", "bo", "--role", "admin", data=data, stdin="short\n")
    assert short.returncode == 1 and "password must be" in short.stderr
    listed = lopso("users", "list", data=data)
    assert [u["name"] for u in json.loads(listed.stdout)] == ["ana"]
    assert "argon2" not in listed.stdout  # the hash never leaves the store
    assert lopso("users", "remove", "ana", data=data).returncode == 0
    again = lopso("users", "remove", "ana", data=data)
    assert again.returncode == 1 and "no account named ana" in again.stderr
