"""Sign-in on a loopback app: the cookie signs a request in only without a token and from this
origin; removing an account or changing its password ends its sessions; CSRF on changes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from serverproc import mint, running_app

from server import accounts
from server.models import Role

PASSWORD = "mật khẩu đủ dài"


async def signed_in_client(client: Any, state: Any, name: str = "root") -> str:
    """Sign `name` in through the form; the CSRF token of its session."""
    await state.store.put_user(accounts.new_user(name, Role.ADMIN, PASSWORD, []))
    form = await (await client.get("/login")).text()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    reply = await client.post(
        "/login",
        data={"username": name, "password": PASSWORD, "csrf_token": csrf},
        allow_redirects=False,
    )
    assert reply.status == 303 and reply.headers["Location"] == "/admin"
    page = await (await client.get("/admin")).text()
    return re.search(r'"csrf": "([^"]+)"', page).group(1)


async def test_cookie_counts_only_without_a_token_and_from_this_origin(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (client, state):
        await signed_in_client(client, state)
        assert (await client.get("/api/sessions")).status == 200
        other = await client.get("/api/sessions", headers={"Origin": "https://evil.example"})
        assert other.status == 401
        # a token is judged alone: a site's token does not become an admin by the cookie
        site = mint(Role.MODERATOR, "c9")
        assert (await client.get(f"/api/sessions?token={site}")).status == 200
        wrong = await client.post(
            "/api/sessions", json={}, headers={"Authorization": f"Bearer {site}"}
        )
        assert wrong.status == 403


async def test_removing_the_account_or_changing_its_password_ends_its_sessions(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path) as (client, state):
        await signed_in_client(client, state)
        await state.store.put_user(accounts.new_user("root", Role.ADMIN, "another password", []))
        assert (await client.get("/api/sessions")).status == 401
        await signed_in_client(client, state)
        assert await state.store.remove_user("root")
        assert (await client.get("/api/sessions")).status == 401
        page = await client.get("/admin", allow_redirects=False)
        assert page.status == 303 and page.headers["Location"] == "/login"


async def test_changes_need_the_csrf_token_of_their_session(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (client, state):
        csrf = await signed_in_client(client, state)
        body = {"title": "Lớp thử", "starts_at": "2026-12-24T01:30:00Z"}
        refused = await client.post("/api/sessions", json=body)
        assert refused.status == 403 and (await refused.json())["error"]["code"] == "csrf_failed"
        forged = await client.post(
            "/api/sessions", json=body, headers={"X-CSRF-Token": accounts.csrf_token(b"x", "y")}
        )
        assert forged.status == 403
        made = await client.post("/api/sessions", json=body, headers={"X-CSRF-Token": csrf})
        assert made.status == 201


def test_the_cookies_are_secure_on_https(tmp_path: Path) -> None:
    import ssl
    import urllib.request

    from mediaclip import ecdsa_identity
    from serverproc import LopsoServer

    with LopsoServer(tmp_path, demo_sites=0, tls=ecdsa_identity(tmp_path, "127.0.0.1")) as srv:
        context = ssl._create_unverified_context()
        with urllib.request.urlopen(f"{srv.url}/login", timeout=10, context=context) as reply:
            cookie = reply.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_no_secure_cookie_on_plain_http(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (client, state):
        await state.store.put_user(accounts.new_user("root", Role.ADMIN, PASSWORD, []))
        reply = await client.get("/login")
        assert "Secure" not in reply.headers["Set-Cookie"]
        assert "HttpOnly" in reply.headers["Set-Cookie"]
        behind = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" not in behind.headers["Set-Cookie"]  # an untrusted proxy's word
