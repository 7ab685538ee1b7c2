"""Authorization matrix: every registered route × every kind of caller → the expected status.

One table (ROUTES) lists every route of the app with what each caller gets. The test reads
`app.router` of a fully featured app (media and cluster on) and fails when a route is missing
from the table, so a new route cannot ship without its row. The matrix runs against the
all-in-one app (embedded store) and against a cluster origin on a private redis-server (which
adds the /relay routes).

Callers: an admin, an admin of this class only (its token names the class, not `*`: it may
do what an admin may in this class, and nothing registry-wide), the class's lecturer and moderator, the operators of site A (S1) and site
B (S2) of the class, a participant of site A, an expired admin token, site A's link from
before its join key was rotated, a moderator of another class, nobody (no token), and another
node of the cluster (a node token, no user token).
Allowed callers get the route's own answer (201 for a check-in, 400 for an offer that is not
SDP, 404 for a resource that does not exist: past authorization either way); the others get
401 (who are you?) or 403 (you may not).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from redisproc import RedisProcess, redis_module  # noqa: F401 - the fixture
from serverproc import SECRET, mint, running_app
from test_api import CSV, seed

from server import auth
from server.app import create_app
from server.cluster import NODE_TOKEN_HEADER, mint_node_token
from server.config import load_config
from server.models import Role

CALLERS = (
    "admin",
    "class_admin",
    "lecturer",
    "moderator",
    "site_a",
    "site_b",
    "participant",
    "expired",
    "revoked",
    "other_class",
    "nobody",
    "node",
)


def tokens() -> dict[str, str | None]:
    return {
        "admin": mint(Role.ADMIN),
        "class_admin": mint(Role.ADMIN, "c1"),
        "lecturer": mint(Role.LECTURER, "c1"),
        "moderator": mint(Role.MODERATOR, "c1"),
        "site_a": mint(Role.SITE, "c1", "S1"),
        "site_b": mint(Role.SITE, "c1", "S2"),
        "participant": mint(Role.PARTICIPANT, "c1", "S1"),
        "expired": auth.mint(SECRET.encode(), auth.ANY_CLASS, Role.ADMIN, ttl_s=-10),
        "revoked": mint(Role.SITE, "c1", "S1", join_key="a-join-key-since-rotated"),
        "other_class": mint(Role.MODERATOR, "c2"),
        "nobody": None,
        "node": None,  # sends a node token header instead
    }


def only(ok: int, *allowed: str, denied: int = 403, node: int = 401) -> dict[str, int]:
    """`ok` for the allowed callers, `denied` for other valid tokens, 401 without a valid one
    (an expired token, a site link from before its join key was rotated). The class's admin
    may what an admin may: in this class."""
    if "admin" in allowed:
        allowed = (*allowed, "class_admin")
    table = {caller: ok if caller in allowed else denied for caller in CALLERS}
    return {**table, "expired": 401, "revoked": 401, "nobody": 401, "node": node}


def registry_wide(ok: int) -> dict[str, int]:
    """A global admin only: an admin token for one class is refused (403 wrong_class)."""
    return {**only(ok, "admin"), "class_admin": 403}


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(CALLERS, status)


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str  # as registered (aiohttp's canonical form)
    expect: dict[str, int]
    # "csv" | "class" | "hall" | "edit" | "checkin" | "sdp" | "cut" | "replay"
    body: str | None = None
    url: str = ""  # concrete URL when filling in the path is not enough
    kind: str = "api"  # "api" (Bearer header) | "page" (?token=) | "ws"
    cluster_only: bool = False


MODERATORS = ("admin", "moderator")
CLASS = ("admin", "lecturer", "moderator", "site_a", "site_b")
SDP_PATHS = (
    ("/whip/{sid}", ("admin", "lecturer")),
    ("/whep/{sid}/{site}", ("admin", "site_a")),
    ("/return/{sid}", ("admin", "lecturer")),  # a presenter's return feed
    ("/preview/{sid}/{presenter}", ("admin", "lecturer", "moderator")),  # the director's monitor
)
RESOURCE_PATHS = (
    ("/whip/{sid}/{rid}", ("admin", "lecturer")),
    ("/whep/{sid}/{site}/{rid}", ("admin", "site_a")),
    ("/return/{sid}/{rid}", ("admin", "lecturer")),
    ("/preview/{sid}/{presenter}/{rid}", ("admin", "lecturer", "moderator")),
)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", everyone(200)),
    Route("GET", "/", everyone(200), kind="page"),
    Route("GET", "/static", everyone(200), url="/static/css/lopso.css"),
    Route("GET", "/metrics", {**registry_wide(200), "revoked": 403}),  # no site data in it
    # registry
    Route("POST", "/api/sites/import", registry_wide(200), body="csv"),
    Route("GET", "/api/sites", only(200, "admin", "moderator", "other_class")),
    Route("POST", "/api/sites/{code}/rotate", registry_wide(200), url="/api/sites/S3/rotate"),
    Route("POST", "/api/sites/preview", registry_wide(200), body="csv"),
    Route("PUT", "/api/sites/{code}", registry_wide(200), body="hall"),
    # classes
    Route("POST", "/api/sessions", registry_wide(201), body="class"),
    Route("GET", "/api/sessions", only(200, "admin", "moderator", "other_class")),
    Route("GET", "/api/sessions/{sid}", only(200, *CLASS)),
    Route("PATCH", "/api/sessions/{sid}", registry_wide(200), body="edit"),
    Route("GET", "/api/sessions/{sid}/links", only(200, *MODERATORS)),
    Route(
        "POST",
        "/api/sessions/{sid}/sites/{site}/checkins",
        only(201, "admin", "site_a", "participant"),
        body="checkin",
    ),
    Route("GET", "/api/sessions/{sid}/attendance", only(200, *MODERATORS)),
    Route("GET", "/api/sessions/{sid}/attendance.csv", only(200, *MODERATORS)),
    Route("GET", "/api/sessions/{sid}/attendance.xlsx", only(200, *MODERATORS)),
    Route("GET", "/api/sessions/{sid}/sites/{site}", only(200, *MODERATORS)),
    Route("GET", "/api/sessions/{sid}/incidents", only(200, *MODERATORS)),
    # presenters: their states for the class's pages; the cut for a director (no one is on air)
    Route("GET", "/api/sessions/{sid}/presenters", only(200, *CLASS)),
    Route(
        "POST",
        "/api/sessions/{sid}/on_air",
        only(409, "admin", "lecturer", "moderator"),
        body="cut",
    ),
    # recordings (none was made in this app: 404 once the caller is let in)
    Route("GET", "/replay/{sid}/{site}/recording", only(404, "admin", "site_a")),
    Route(
        "POST",
        "/api/sessions/{sid}/sites/{site}/replay",
        only(201, "admin", "site_a"),
        body="replay",
    ),
    Route("GET", "/api/sessions/{sid}/recording", only(404, *MODERATORS)),
    Route("GET", "/api/sessions/{sid}/recording/file", only(404, *MODERATORS)),
    # signalling: an offer that is not SDP is a 400 once the caller is let in
    *(Route("POST", path, only(400, *who), body="sdp") for path, who in SDP_PATHS),
    # OPTIONS: a preflight (no token) gets 204; with a token it is judged, since its answer
    # carries TURN credentials (RFC 9725 Link headers) for those who may use the route
    *(
        Route("OPTIONS", path, {**only(204, *who), "nobody": 204, "node": 204})
        for path, who in SDP_PATHS + RESOURCE_PATHS
    ),
    *(
        Route(method, path, everyone(405))
        for path, _ in SDP_PATHS
        for method in ("GET", "PUT", "PATCH", "DELETE")
    ),
    *(Route("DELETE", path, only(404, *who)) for path, who in RESOURCE_PATHS),
    *(
        Route(method, path, everyone(405))
        for path, _ in RESOURCE_PATHS
        for method in ("GET", "PUT", "PATCH", "POST")
    ),
    Route("GET", "/ws/{sid}", {**only(101, *CLASS), "participant": 403}, kind="ws"),
    # pages (a person's link: the token in the query)
    Route("GET", "/studio/{sid}", only(200, "admin", "lecturer"), kind="page"),
    Route("GET", "/site/{sid}/{site}", only(200, "admin", "site_a"), kind="page"),
    Route("GET", "/moderator/{sid}", only(200, *MODERATORS), kind="page"),
    Route("GET", "/checkin/{sid}/{site}", only(200, "admin", "site_a", "participant"), kind="page"),
    Route("GET", "/classes/{sid}/cards", only(200, *MODERATORS), kind="page"),
    # hall links: halls' links only, for those who hand out links
    Route("GET", "/api/classes/{sid}/hall-links", only(200, *MODERATORS)),
    # a short link needs no token: it is the code (404: no such code; guesses are limited)
    Route("GET", "/j/{code}", everyone(404), url="/j/zzzzzzzz", kind="page"),
    # sign-in: a token signs nobody in (/admin without a session: the sign-in form)
    Route("GET", "/login", everyone(200), kind="page"),
    Route("POST", "/login", everyone(415), kind="page"),  # not a form
    Route("POST", "/logout", everyone(200), kind="page"),  # -> the sign-in form
    Route("GET", "/admin", everyone(200), kind="page"),  # -> the sign-in form
    # cluster: node tokens only (400: a node's offer that is not SDP; 404: no such link)
    Route("POST", "/relay/{sid}", only(400, denied=401, node=400), body="sdp", cluster_only=True),
    Route("GET", "/relay/{sid}/{rid}", only(404, denied=401, node=404), cluster_only=True),
    Route("DELETE", "/relay/{sid}/{rid}", only(404, denied=401, node=404), cluster_only=True),
    # last: it changes the class for every route above
    Route("POST", "/api/sessions/{sid}/end", only(200, "admin", "lecturer", "moderator")),
)


def registered(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route of `app` (HEAD comes with its GET)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_registered_route_is_in_the_table(tmp_path: Path) -> None:
    """A fully featured app (media, cluster): a route without a row fails here."""
    overrides = {
        "data_dir": tmp_path,
        "secret": SECRET,
        "redis_url": "redis://127.0.0.1:1/0",  # never connected: the app is not started
        "role": "origin",
        "metrics_token": "metrics-token-0123456789",
    }
    app = create_app(load_config(overrides, env={}), media=True)
    table = {(route.method, route.path) for route in ROUTES}
    assert len(table) == len(ROUTES), "a route is in the table twice"
    assert registered(app) - table == set(), "routes without a row in ROUTES"
    assert table - registered(app) == set(), "rows for routes that do not exist"


def concrete(route: Route) -> str:
    if route.url:
        return route.url
    fill = {
        "{sid}": "c1",
        "{site}": "S1",
        "{code}": "S3",
        "{rid}": "nope.0123",
        "{presenter}": "p1",
    }
    url = route.path
    for name, value in fill.items():
        url = url.replace(name, value)
    return url


def body_of(kind: str | None) -> tuple[bytes | None, dict[str, str]]:
    if kind == "csv":
        return CSV, {"Content-Type": "text/csv"}
    if kind == "class":
        data = {"title": "Lớp thử", "starts_at": "2026-11-26T02:00:00Z", "site_codes": ["S1"]}
        return json.dumps(data).encode(), {"Content-Type": "application/json"}
    if kind == "hall":
        return json.dumps({"name": "Nhà văn hóa thôn Ba"}).encode(), {
            "Content-Type": "application/json"
        }
    if kind == "edit":
        return json.dumps({"title": "Lớp thử, tên mới"}).encode(), {
            "Content-Type": "application/json"
        }
    if kind == "checkin":
        data = {"name": f"Người {uuid.uuid4().hex[:8]}"}
        return json.dumps(data).encode(), {"Content-Type": "application/json"}
    if kind == "sdp":
        return b"v=0\r\n", {"Content-Type": "application/sdp"}
    if kind == "cut":  # the class's one presenter, not publishing
        return json.dumps({"presenter": "p1"}).encode(), {"Content-Type": "application/json"}
    if kind == "replay":
        return b'{"seconds": 30}', {"Content-Type": "application/json"}
    return None, {}


async def status_of(client: Any, route: Route, caller: str, token: str | None) -> int:
    """What `caller` gets from `route` (a WebSocket upgrade is 101)."""
    url = concrete(route)
    data, headers = body_of(route.body)
    params: dict[str, str] = {}
    if caller == "node":
        headers[NODE_TOKEN_HEADER] = mint_node_token(SECRET.encode(), "e1")
    elif token is not None and route.kind == "api":
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None:
        params["token"] = token
    if route.kind == "ws":
        try:
            ws = await client.ws_connect(url, params=params, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101
    reply = await client.request(route.method, url, data=data, headers=headers, params=params)
    await reply.read()
    if reply.status >= 400 and route.kind == "api" and reply.status != 405:
        assert reply.content_type == "application/json", (route, caller, reply.content_type)
    return reply.status


async def run_matrix(client: Any, cluster: bool) -> list[str]:
    """Every row × every caller; the mismatches, one line each."""
    wrong = []
    minted = tokens()
    for route in ROUTES:
        if route.cluster_only and not cluster:
            continue
        for caller in CALLERS:
            got = await status_of(client, route, caller, minted[caller])
            if got != route.expect[caller]:
                expected = route.expect[caller]
                wrong.append(f"{route.method} {route.path} as {caller}: {got}, expected {expected}")
    return wrong


UNLIMITED = {
    "signalling_rate": 0,
    "checkin_rate_site": 0,
    "checkin_rate_addr": 0,
    "short_link_rate": 0,  # the matrix guesses a code once per caller
}


async def test_matrix_all_in_one(tmp_path: Path) -> None:
    async with running_app(tmp_path, media=True, **UNLIMITED) as (client, _):
        await seed(client)
        wrong = await run_matrix(client, cluster=False)
    assert not wrong, "\n".join(wrong)


async def test_matrix_cluster_origin(tmp_path: Path, redis_module: RedisProcess) -> None:  # noqa: F811
    settings = {"redis_url": redis_module.url, "role": "origin", "node_id": "o1", **UNLIMITED}
    async with running_app(tmp_path, media=True, **settings) as (client, _):
        await seed(client)
        wrong = await run_matrix(client, cluster=True)
    assert not wrong, "\n".join(wrong)
