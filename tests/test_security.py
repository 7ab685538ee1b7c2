"""Security headers on every response (server/security.py), pages that pass their policy
without 'unsafe-inline', and demo links on `/` only for this machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from serverproc import mint, running_app
from test_api import ADMIN, seed

from server.app import WEB_DIR
from server.models import Role
from server.security import PAGE_POLICY

EVERY = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(tmp_path, demo_sites=2) as (client, state):
        await seed(client)
        yield client, state


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/", 200, "text/html"),
        ("GET", f"/studio/c1?token={mint(Role.LECTURER, 'c1')}", 200, "text/html"),
        ("GET", f"/moderator/c1?token={mint(Role.MODERATOR, 'c1')}", 200, "text/html"),
        ("GET", "/studio/c1?token=nope", 401, "text/html"),  # the error page
        ("GET", "/healthz", 200, "application/json"),
        ("GET", "/api/sessions/c1", 200, "application/json"),
        ("GET", "/api/sessions/c1?token=nope", 401, "application/json"),
        ("GET", "/no/such/path", 404, "application/json"),
        ("DELETE", "/healthz", 405, "application/json"),
        ("GET", "/static/js/protocol.js", 200, "application/javascript"),  # nosniff: a JS type
        ("GET", "/static/css/lopso.css", 200, "text/css"),
        ("GET", "/static/nope.js", 404, None),
    ],
)
async def test_every_response_carries_the_security_headers(app, method, path, status, kind):
    client, _ = app
    headers = ADMIN if path == "/api/sessions/c1" else {}
    reply = await client.request(method, path, headers=headers)
    await reply.read()
    assert reply.status == status and kind in (None, reply.content_type), (reply.status, path)
    for name, value in EVERY.items():
        assert reply.headers.get(name) == value, (name, path)
    policy = reply.headers.get("Content-Security-Policy")
    if kind == "text/html":
        assert policy == PAGE_POLICY
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    else:
        assert policy is None


INLINE = [
    (
        re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>"),
        "inline script",
    ),
    (re.compile(r"\sstyle\s*="), "style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.IGNORECASE), "event handler attribute"),
    (re.compile(r"javascript:", re.IGNORECASE), "javascript: URL"),
]


@pytest.mark.parametrize("template", sorted(p.name for p in (WEB_DIR / "templates").glob("*.html")))
def test_templates_hold_nothing_the_page_policy_refuses(template: str) -> None:
    html = (WEB_DIR / "templates" / template).read_text(encoding="utf-8")
    for pattern, what in INLINE:
        found = pattern.search(html)
        assert found is None, f"{template}: {what} {found.group() if found else ''}"


def test_scripts_make_no_blob_or_inline_code() -> None:
    for script in (WEB_DIR / "static" / "js").glob("*.js"):
        code = script.read_text(encoding="utf-8")
        for banned in ("new Function(", "eval(", 'setAttribute("style"', '.innerHTML = "<style'):
            assert banned not in code, (script.name, banned)
        assert not re.search(r"new Worker\(URL\.createObjectURL", code), script.name


# --- the landing page's demo links --------------------------------------------------------
async def landing(
    tmp_path: Path, host: str, headers: dict[str, str] | None = None
) -> tuple[str, dict]:
    async with running_app(tmp_path, demo_sites=2, host=host) as (client, state):
        reply = await client.get("/", headers=headers or {})
        assert reply.status == 200
        return await reply.text(), state.demo


async def test_demo_links_are_listed_on_a_loopback_server(tmp_path: Path) -> None:
    html, demo = await landing(tmp_path, "127.0.0.1")
    assert demo["moderator"]["token"] in html and demo["sites"][0]["token"] in html
    assert 'id="demo-elsewhere"' not in html


@pytest.mark.parametrize(
    ("host", "headers"),
    [
        ("0.0.0.0", None),
        ("192.0.2.10", None),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}),  # a proxy put it on the network
        ("127.0.0.1", {"Forwarded": "for=203.0.113.9"}),
    ],
)
async def test_demo_links_are_not_listed_to_the_network(tmp_path: Path, host, headers) -> None:
    html, demo = await landing(tmp_path, host, headers)
    for token in (demo["lecturer"]["token"], demo["moderator"]["token"], demo["sites"][0]["token"]):
        assert token not in html
    assert "?token=" not in html
    assert 'id="demo-elsewhere"' in html and "demo.json" in html
