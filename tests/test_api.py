"""REST API and pages against the app on a loopback server with the embedded store."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest
from serverproc import SECRET, mint, running_app

from server.auth import verify
from server.models import EventKind, Role

CSV = (
    "\ufeffcode,name,village,commune,province,join_key\n"
    "S1,Nhà văn hóa thôn Đông,Thôn Đông,Xã Tiên Lữ,Hưng Yên,test-join-key-S1\n"
    "S2,Nhà văn hóa tổ dân phố 3,Tổ 3,Phường Hiến Nam,Hưng Yên,test-join-key-S2\n"
    "S3,Nhà văn hóa thôn Bắc,Thôn Bắc,Xã Tiên Lữ,Hưng Yên,test-join-key-S3\n"
).encode()
ADMIN = {"Authorization": f"Bearer {mint(Role.ADMIN)}"}


def auth(role: Role, sid: str = "c1", site: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(role, sid, site)}"}


async def seed(client, sites=("S1", "S2")) -> None:
    reply = await client.post(
        "/api/sites/import", data=CSV, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert reply.status == 200, await reply.text()
    assert await reply.json() == {"imported": 3}
    body = {
        "id": "c1",
        "title": "Kỹ năng số",
        "starts_at": "2026-11-26T02:00:00Z",
        "ends_at": "2026-11-26T03:30:00+00:00",
        "video_codec": "vp8",
        "site_codes": list(sites),
    }
    reply = await client.post("/api/sessions", json=body, headers=ADMIN)
    assert reply.status == 201, await reply.text()


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(tmp_path) as (client, state):
        await seed(client)
        yield client, state


async def test_healthz(app) -> None:
    client, _ = app
    reply = await client.get("/healthz")
    assert reply.status == 200 and (await reply.json())["ok"] is True


async def test_created_class_reads_back(app) -> None:
    client, _ = app
    reply = await client.get("/api/sessions/c1", headers=auth(Role.SITE, site="S1"))
    body = await reply.json()
    assert body["title"] == "Kỹ năng số" and body["video_codec"] == "VP8"
    assert body["starts_at"] == "2026-11-26T02:00:00Z" and body["ends_at"] == "2026-11-26T03:30:00Z"
    assert body["site_codes"] == ["S1", "S2"] and body["live"] is False and body["expected"] == 2
    other = await client.get("/api/sessions/c1", headers=auth(Role.MODERATOR, "c2"))
    assert other.status == 403 and (await other.json())["error"]["code"] == "wrong_class"
    missing = await client.get("/api/sessions/nope", headers=ADMIN)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "unknown_class"


async def test_sites_listing_hides_join_keys_and_needs_a_role(app) -> None:
    client, _ = app
    reply = await client.get("/api/sites", headers=auth(Role.MODERATOR))
    sites = (await reply.json())["sites"]
    assert [s["code"] for s in sites] == ["S1", "S2", "S3"]
    assert sites[0]["name"] == "Nhà văn hóa thôn Đông" and "join_key" not in sites[0]
    forbidden = await client.get("/api/sites", headers=auth(Role.SITE, site="S1"))
    assert forbidden.status == 403
    anonymous = await client.get("/api/sites")
    assert anonymous.status == 401 and (await anonymous.json())["error"]["code"] == "token_missing"


async def test_reimport_keeps_join_keys(app) -> None:
    client, state = app
    before = (await state.store.get_site("S1")).join_key
    await client.post("/api/sites/import", data=CSV, headers={**ADMIN, "Content-Type": "text/csv"})
    assert before and (await state.store.get_site("S1")).join_key == before


@pytest.mark.parametrize(
    ("patch", "code"),
    [
        ({"video_codec": "AV1"}, "bad_field"),
        ({"starts_at": "tomorrow"}, "bad_field"),
        ({"starts_at": "2026-11-26T02:00:00"}, "bad_field"),  # no zone
        ({"ends_at": "2026-11-26T01:00:00Z"}, "bad_field"),
        ({"site_codes": ["S1", "NOPE"]}, "unknown_site"),
        ({"site_codes": "S1"}, "bad_field"),
        ({"id": "bad id!"}, "bad_field"),
        ({"id": "c1"}, "class_exists"),
        ({"title": ""}, "bad_field"),
    ],
)
async def test_bad_class_bodies(app, patch, code) -> None:
    client, _ = app
    body = {"id": "c9", "title": "T", "starts_at": "2026-11-26T02:00:00Z", **patch}
    reply = await client.post("/api/sessions", json=body, headers=ADMIN)
    assert reply.status == 400 and (await reply.json())["error"]["code"] == code


async def test_only_admin_creates_classes(app) -> None:
    client, _ = app
    body = {"title": "T", "starts_at": 1_800_000_000}
    reply = await client.post("/api/sessions", json=body, headers=auth(Role.MODERATOR))
    assert reply.status == 403
    reply = await client.post("/api/sessions", json=body, headers=ADMIN)
    assert reply.status == 201 and (await reply.json())["site_codes"] == []


async def test_links_carry_working_tokens(app) -> None:
    client, _ = app
    reply = await client.get("/api/sessions/c1/links", headers=ADMIN)
    links = await reply.json()
    assert set(links) == {"session_id", "lecturer", "presenters", "moderator", "sites"}
    assert [p["id"] for p in links["presenters"]] == ["p1"]  # one presenter: the lecturer
    lecturer = {"Authorization": f"Bearer {links['lecturer']['token']}"}
    assert (await client.get("/api/sessions/c1", headers=lecturer)).status == 200
    reply = await client.get("/api/sessions/c1/links", headers=auth(Role.MODERATOR))
    links = await reply.json()
    assert set(links) == {"session_id", "moderator", "sites"}
    assert [s["code"] for s in links["sites"]] == ["S1", "S2"]
    site = links["sites"][0]
    assert site["whep_url"].endswith("/whep/c1/S1") and site["commune"] == "Xã Tiên Lữ"
    check = await client.get(
        "/api/sessions/c1", headers={"Authorization": f"Bearer {site['token']}"}
    )
    assert check.status == 200
    denied = await client.get("/api/sessions/c1/links", headers=auth(Role.SITE, site="S1"))
    assert denied.status == 403


async def test_a_moderator_never_gets_a_token_that_may_publish(app) -> None:
    """Before: the links handed a moderator the lecturer's token, and with it WHIP."""
    client, _ = app
    reply = await client.get("/api/sessions/c1/links", headers=auth(Role.MODERATOR))
    assert reply.status == 200
    links = await reply.json()
    assert "lecturer" not in links
    for entry in (links["moderator"], *links["sites"]):
        claims = verify(SECRET.encode(), entry["token"])
        assert claims.role in (Role.MODERATOR, Role.SITE) and claims.sid == "c1"


async def test_class_scoped_tokens_stay_in_their_class(app) -> None:
    """Before: a class's admin acted as a global admin; a moderator of c2 reads c1's links."""
    client, _ = app
    await client.post(
        "/api/sessions",
        json={"id": "c2", "title": "Lớp hai", "starts_at": "2026-12-01T01:00:00Z"},
        headers=ADMIN,
    )
    admin_c2 = auth(Role.ADMIN, sid="c2")
    assert (await client.get("/api/sessions/c2/links", headers=admin_c2)).status == 200
    for method, path, body in (
        ("GET", "/api/sessions/c1/links", None),
        ("GET", "/api/sessions/c1/attendance", None),
        ("POST", "/api/sessions", {"id": "c3", "title": "x", "starts_at": "2026-12-01T01:00:00Z"}),
        ("POST", "/api/sites/S1/rotate", None),
        ("GET", "/metrics", None),
    ):
        reply = await client.request(method, path, json=body, headers=admin_c2)
        assert reply.status == 403, (path, await reply.text())
        assert (await reply.json())["error"]["code"] == "wrong_class"
    reply = await client.get("/api/sessions/c1/links", headers=auth(Role.MODERATOR, sid="c2"))
    assert reply.status == 403


async def test_participant_checkin_dedupes(app) -> None:
    client, state = app
    headers = auth(Role.PARTICIPANT, site="S1")
    url = "/api/sessions/c1/sites/S1/checkins"
    first = await client.post(url, json={"name": "Nguyễn Văn An"}, headers=headers)
    assert first.status == 201 and (await first.json())["duplicate"] is False
    again = await client.post(url, json={"name": "  nguyễn  văn an "}, headers=headers)
    assert again.status == 200 and (await again.json())["duplicate"] is True
    other = await client.post(url, json={"name": "Nguyễn Văn An", "ident": "0912"}, headers=headers)
    assert other.status == 201
    wrong_site = await client.post(
        "/api/sessions/c1/sites/S2/checkins", json={"name": "X"}, headers=headers
    )
    assert wrong_site.status == 403 and (await wrong_site.json())["error"]["code"] == "wrong_site"
    no_marks = await client.post(url, json={"name": "Nguyen van An"}, headers=headers)
    assert no_marks.status == 200  # cheap phones type without diacritics: the same person
    events = await state.store.events("c1", kinds=[EventKind.CHECKIN])
    assert [e.data["name"] for e in events] == ["Nguyễn Văn An", "Nguyễn Văn An"]
    assert events[0].data["by"] == "qr" and events[1].data["ident"] == "•••2"  # masked


async def test_a_qr_link_dies_with_its_class_plus_the_grace(tmp_path: Path) -> None:
    """A photo of the hall's screen is no good the next week: the participant link (old ones
    too) stops working at the class's end (planned, else actual) plus LOPSO_CHECKIN_GRACE_S
    (1 s here); the operator's own link still checks people in; a new QR expires then too."""
    async with running_app(tmp_path, checkin_grace_s=1) as (client, state):
        await seed(client)  # c1 was planned to end on 2026-11-26: long over
        old_link = mint(Role.PARTICIPANT, "c1", "S1", ttl_s=30 * 86400)  # as QR links were
        url = "/api/sessions/c1/sites/S1/checkins"
        late = await client.post(url, json={"name": "Người Lạ"}, headers=bearer(old_link))
        assert late.status == 410 and (await late.json())["error"]["code"] == "checkin_closed"
        hall = auth(Role.SITE, site="S1")
        assert (await client.post(url, json={"name": "Bà Tư"}, headers=hall)).status == 201
        await short_class(client, "k", 60)  # planned to end in an hour
        page = await client.get("/site/k/S1", params={"token": mint(Role.SITE, "k", "S1")})
        qr = page_config(await page.text())["checkin_url"].split("?token=")[1]
        session = await state.store.get_session("k")
        assert verify(SECRET.encode(), qr).exp <= session.ends_at + 1 + 1
        kurl = "/api/sessions/k/sites/S1/checkins"
        assert (await client.post(kurl, json={"name": "An"}, headers=bearer(qr))).status == 201
        await client.post("/api/sessions/k/end", headers=ADMIN)  # ended early: the actual end
        reply = await client.post(kurl, json={"name": "Bình"}, headers=bearer(qr))
        assert reply.status == 409 and (await reply.json())["error"]["code"] == "class_ended"
        await asyncio.sleep(1.1)
        reply = await client.post(kurl, json={"name": "Bình"}, headers=bearer(qr))
        assert reply.status == 410 and (await reply.json())["error"]["code"] == "checkin_closed"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_identifier_counts_once_per_class_only_its_site_is_told_bad_bodies_precise(
    app,
) -> None:
    client, state = app
    await client.post(
        "/api/sessions",
        headers=ADMIN,
        json={
            "id": "c2",
            "title": "Hai điểm",
            "starts_at": "2026-11-26T02:00:00Z",
            "site_codes": ["S1", "S2"],
        },
    )
    s1 = auth(Role.PARTICIPANT, "c2", site="S1")
    s2 = auth(Role.PARTICIPANT, "c2", site="S2")
    first = await client.post(
        "/api/sessions/c2/sites/S1/checkins",
        json={"name": "Lê Thị Hoa", "ident": "+84 912 345 678"},
        headers=s1,
    )
    assert first.status == 201
    fresh = await client.post(
        "/api/sessions/c2/sites/S2/checkins",
        json={"name": "Người Mới", "ident": "0977"},
        headers=s2,
    )
    # At another site the QR link learns nothing: the reply of a fresh check-in (an id never
    # stored), yet the person is counted once in the class.
    elsewhere = await client.post(
        "/api/sessions/c2/sites/S2/checkins",
        json={"name": "Hoa", "ident": "0912345678"},
        headers=s2,
    )
    assert elsewhere.status == fresh.status == 201
    shown, new = await elsewhere.json(), await fresh.json()
    assert shown.keys() == new.keys() and shown["duplicate"] is new["duplicate"] is False
    assert shown["event_id"] != (await first.json())["event_id"]
    at_home = await client.post(  # the site it was counted at is told: its own hall's record
        "/api/sessions/c2/sites/S1/checkins",
        json={"name": "Lê Thị Hoa", "ident": "0912345678"},
        headers=s1,
    )
    assert at_home.status == 200 and (await at_home.json())["duplicate"] is True
    stored = await state.store.events("c2", kinds=[EventKind.CHECKIN])
    assert [(e.site_code, e.data["ident"]) for e in stored] == [
        ("S1", "•••••••678"),
        ("S2", "•••7"),
    ]
    report = await (await client.get("/api/sessions/c2/attendance", headers=ADMIN)).json()
    assert report["province"]["checkins"] == 2  # Hoa once, the newcomer once
    for body, code in (
        ({"name": "An", "phone": "1"}, "checkin_invalid"),
        ({"name": "1234"}, "checkin_name"),
        ({"name": "An", "ident": "a@b"}, "checkin_ident"),
    ):
        reply = await client.post("/api/sessions/c2/sites/S1/checkins", json=body, headers=s1)
        assert reply.status == 400 and (await reply.json())["error"]["code"] == code


async def test_ending_a_class(app) -> None:
    client, state = app
    denied = await client.post("/api/sessions/c1/end", headers=auth(Role.SITE, site="S1"))
    assert denied.status == 403
    reply = await client.post("/api/sessions/c1/end", headers=auth(Role.LECTURER))
    assert reply.status == 200 and (await reply.json())["ended_at"] is not None
    again = await client.post("/api/sessions/c1/end", headers=auth(Role.MODERATOR))
    assert again.status == 200
    ended = await state.store.events("c1", kinds=[EventKind.CLASS_ENDED])
    assert len(ended) == 1


def page_config(html: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="page-config">(.*?)</script>', html, re.DOTALL
    )
    assert match, html[:500]
    return json.loads(match.group(1))


@pytest.mark.parametrize(
    ("path", "role", "site", "keys"),
    [
        ("/studio/c1", Role.LECTURER, None, {"whip_url"}),
        ("/site/c1/S1", Role.SITE, "S1", {"whep_url", "checkin_url"}),
        ("/moderator/c1", Role.MODERATOR, None, {"csv_url", "xlsx_url", "json_url"}),
    ],
)
async def test_pages_render_with_their_config(app, path, role, site, keys) -> None:
    client, _ = app
    token = mint(role, "c1", site)
    reply = await client.get(path, params={"token": token, "lang": "en"})
    assert reply.status == 200, await reply.text()
    page = page_config(await reply.text())
    assert page["sid"] == "c1" and page["role"] == role.value and page["token"] == token
    assert page["lang"] == "en" and page["session"]["title"] == "Kỹ năng số"
    assert page["ws_url"] == f"/ws/c1?token={token}"
    assert keys <= set(page)
    if site:
        assert page["checkin_qr"].startswith("data:image/svg+xml;base64,")
        assert page["checkin_url"].split("?token=")[0].endswith("/checkin/c1/S1")
        participant = page["checkin_url"].split("?token=")[1]
        reply = await client.post(
            "/api/sessions/c1/sites/S1/checkins",
            json={"name": "Lê Văn C"},
            headers={"Authorization": f"Bearer {participant}"},
        )
        assert reply.status == 201
        assert page["site"] == {
            "code": "S1",
            "name": "Nhà văn hóa thôn Đông",
            "commune": "Xã Tiên Lữ",
            "village": "Thôn Đông",
        }


@pytest.mark.parametrize(
    ("path", "role", "site", "status"),
    [
        ("/studio/c1", Role.SITE, "S1", 403),
        ("/site/c1/S2", Role.SITE, "S1", 403),
        ("/site/c1/S3", Role.SITE, "S3", 404),  # registered, not in this class
        ("/moderator/c1", Role.LECTURER, None, 403),
        ("/moderator/zz", Role.MODERATOR, None, 403),
    ],
)
async def test_pages_check_tokens(app, path, role, site, status) -> None:
    client, _ = app
    reply = await client.get(path, params={"token": mint(role, "c1", site)})
    assert reply.status == status
    assert reply.content_type == "text/html"  # a person opened it: an error page, not JSON
    assert 'class="error-page"' in await reply.text()


async def test_unknown_route_and_method_are_json(app) -> None:
    client, _ = app
    reply = await client.get("/api/nothing")
    assert reply.status == 404 and (await reply.json())["error"]["code"] == "not_found"
    reply = await client.put("/api/sessions/c1", headers=ADMIN)
    assert reply.status == 405 and (await reply.json())["error"]["code"] == "method_not_allowed"


async def test_attendance_exports(app) -> None:
    client, _ = app
    site = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S1")})
    await site.receive_json()
    await site.send_json({"type": "headcount", "count": 30, "phase": "start", "id": "a"})
    while (await site.receive_json())["type"] != "ack":
        pass
    await site.close()
    params = {"token": mint(Role.MODERATOR, "c1")}
    reply = await client.get("/api/sessions/c1/attendance.csv", params=params)
    assert reply.status == 200 and reply.content_type == "text/csv"
    assert "attachment" in reply.headers["Content-Disposition"]
    body = await reply.read()
    assert body.startswith("\ufeff".encode())
    text = body.decode("utf-8-sig")
    assert "Nhà văn hóa thôn Đông" in text and "Nhà văn hóa tổ dân phố 3" in text
    assert "Nhà văn hóa thôn Bắc" not in text  # S3 is not in this class
    report = await (await client.get("/api/sessions/c1/attendance", params=params)).json()
    assert {s["code"] for s in report["sites"]} == {"S1", "S2"}
    xlsx = await client.get("/api/sessions/c1/attendance.xlsx", params=params)
    assert xlsx.status == 200 and (await xlsx.read())[:2] == b"PK"
    bad = await client.get("/api/sessions/c1/attendance.csv", params={**params, "level": "x"})
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_query"
    commune = await client.get(
        "/api/sessions/c1/attendance.csv", params={**params, "commune": "Xã Tiên Lữ"}
    )
    assert "Nhà văn hóa tổ dân phố 3" not in (await commune.read()).decode("utf-8-sig")
    denied = await client.get(
        "/api/sessions/c1/attendance.csv", params={"token": mint(Role.SITE, "c1", "S1")}
    )
    assert denied.status == 403


async def test_node_heartbeat_is_in_the_store(app) -> None:
    _, state = app
    nodes = await state.store.nodes()
    assert [n.id for n in nodes] == [state.config.node_id]
    assert nodes[0].role == "all" and nodes[0].viewers == 0


async def test_checkins_are_rate_limited_per_address(tmp_path: Path) -> None:
    async with running_app(
        tmp_path, checkin_rate_addr=1.0, checkin_burst_addr=10, checkin_rate_site=0
    ) as (client, _):
        await seed(client)
        headers = auth(Role.PARTICIPANT, site="S1")
        statuses = []
        for i in range(15):  # a burst of 10 is allowed, then 1 per second
            reply = await client.post(
                "/api/sessions/c1/sites/S1/checkins",
                json={"name": f"Người {chr(65 + i)}"},
                headers=headers,
            )
            statuses.append(reply.status)
        assert statuses.count(201) in (10, 11) and statuses.count(429) >= 4
        assert (await reply.json())["error"]["code"] == "rate_limited"
        assert 1 <= int(reply.headers["Retry-After"]) <= 2


async def test_a_stranger_spending_the_qr_budget_does_not_refuse_the_operator(
    tmp_path: Path,
) -> None:
    settings = {"checkin_rate_site": 0.01, "checkin_burst_site": 3}
    async with running_app(tmp_path, **settings) as (client, state):
        await seed(client)
        url = "/api/sessions/c1/sites/S1/checkins"
        stranger = auth(Role.PARTICIPANT, site="S1")
        statuses = [
            (await client.post(url, json={"name": f"Giả {chr(65 + i)}"}, headers=stranger)).status
            for i in range(5)
        ]
        assert statuses == [201, 201, 201, 429, 429]
        hall = auth(Role.SITE, site="S1")  # the operator's own link, same address
        reply = await client.post(url, json={"name": "Bà Tư"}, headers=hall)
        assert reply.status == 201, await reply.text()
        site = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S1")})
        await site.send_json({"type": "checkin", "name": "Ông Năm", "id": "op-1"})
        while (message := json.loads((await site.receive(timeout=3)).data))["type"] != "ack":
            assert message["type"] != "error", message
        await site.close()
        events = await state.store.events("c1", kinds=[EventKind.CHECKIN])
        assert [e.data["by"] for e in events] == ["qr", "qr", "qr", "operator", "operator"]


def test_checkin_limits_default_to_a_hall_behind_one_address() -> None:
    from server.app import checkin_limits
    from server.config import load_config

    limits = checkin_limits(load_config({"data_dir": "/tmp/lopso-cfg-test"}, env={}))
    assert (limits.address_rate, limits.address_burst) == (5.0, 100)
    assert (limits.site_rate, limits.site_burst) == (20.0, 200)
    off = checkin_limits(
        load_config({"data_dir": "/tmp/lopso-cfg-test", "checkin_rate_addr": 0}, env={})
    )
    assert off.address_rate >= 1e9 and off.address_burst >= 1e9


async def test_behind_a_trusted_proxy_limits_apply_per_forwarded_client(tmp_path: Path) -> None:
    async with running_app(
        tmp_path, checkin_rate_addr=1.0, checkin_rate_site=0, trust_proxy=True
    ) as (client, _):
        await seed(client)
        headers = auth(Role.PARTICIPANT, site="S1")
        for i in range(30):  # 30 phones behind one proxy: each its own address, none limited
            reply = await client.post(
                "/api/sessions/c1/sites/S1/checkins",
                json={"name": f"N{i}"},
                headers={**headers, "X-Forwarded-For": f"10.0.0.{i}, 127.0.0.1"},
            )
            assert reply.status == 201


async def test_rotating_a_join_key_revokes_the_sites_old_links(app) -> None:
    client, state = app
    old_site = auth(Role.SITE, site="S1")
    old_participant = auth(Role.PARTICIPANT, site="S1")
    assert (await client.get("/api/sessions/c1", headers=old_site)).status == 200
    open_page = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S1")})
    other_page = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S2")})
    for page in (open_page, other_page):
        assert json.loads((await page.receive(timeout=3)).data)["type"] == "welcome"
    denied = await client.post("/api/sites/S1/rotate", headers=old_site)
    assert denied.status == 403
    rotated = await client.post("/api/sites/S1/rotate", headers=ADMIN)
    assert rotated.status == 200 and await rotated.json() == {"code": "S1", "rotated": True}
    seen = []
    while (message := await open_page.receive(timeout=3)).type == aiohttp.WSMsgType.TEXT:
        seen.append(json.loads(message.data)["type"])
    assert seen[-1] == "revoked" and open_page.closed  # a page open on the old link is closed
    await other_page.send_json({"type": "heartbeat", "id": "h"})
    assert json.loads((await other_page.receive(timeout=3)).data)["type"] == "ack"
    await other_page.close()
    for method, url, headers in (
        ("GET", "/api/sessions/c1", old_site),
        ("GET", "/site/c1/S1", old_site),
        ("GET", "/ws/c1", old_site),
        ("POST", "/api/sessions/c1/sites/S1/checkins", old_participant),
    ):
        reply = await client.request(method, url, headers=headers, json={"name": "An"})
        assert reply.status == 401, (url, await reply.text())
        if url.startswith("/api"):
            assert (await reply.json())["error"]["code"] == "token_revoked"
    links = await (await client.get("/api/sessions/c1/links", headers=ADMIN)).json()
    new_token = next(s["token"] for s in links["sites"] if s["code"] == "S1")
    assert (await client.get("/site/c1/S1", params={"token": new_token})).status == 200
    ws = await client.ws_connect("/ws/c1", params={"token": new_token})
    assert json.loads((await ws.receive(timeout=3)).data)["type"] == "welcome"
    await ws.close()
    other = auth(Role.SITE, site="S2")  # the other sites' links are untouched
    assert (await client.get("/api/sessions/c1", headers=other)).status == 200
    missing = await client.post("/api/sites/NOPE/rotate", headers=ADMIN)
    assert missing.status == 404


async def test_key_ids_are_cached_between_requests() -> None:
    from server.auth import key_id
    from server.models import Site
    from server.registry import KeyIdCache

    reads: list[str] = []
    keys = {"S1": "k1"}
    now = [0.0]

    async def lookup(code: str) -> Site | None:
        reads.append(code)
        return Site(code, "x", join_key=keys[code]) if code in keys else None

    cache = KeyIdCache(lookup, b"s" * 16, ttl_s=10.0, clock=lambda: now[0])
    for _ in range(100):  # a busy page: one registry read
        await cache.refresh("S1")
    assert reads == ["S1"] and cache.current("S1") == key_id(b"s" * 16, "k1")
    keys["S1"] = "k2"  # rotated on another node
    now[0] = 10.0
    await cache.refresh("S1")
    assert cache.current("S1") == key_id(b"s" * 16, "k2") and len(reads) == 2
    await cache.refresh("S9")
    assert cache.current("S9") is None


async def test_ending_a_class_posts_its_signed_summary_to_the_webhook(tmp_path: Path) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from server.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, verify_signature

    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    secret = "webhook-secret-0123456789"
    async with TestServer(receiver, host="127.0.0.1") as target:
        url = str(target.make_url("/hook"))
        async with running_app(tmp_path, webhook_url=url, webhook_secret=secret) as (client, state):
            await seed(client)
            for _ in range(2):  # ended twice: posted once
                reply = await client.post("/api/sessions/c1/end", headers=auth(Role.MODERATOR))
                assert reply.status == 200
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        assert len(received) == 1
        body, headers = received[0]
        assert verify_signature(secret.encode(), body, headers[SIGNATURE_HEADER])
        assert headers[DELIVERY_HEADER] == "class_ended:c1"
        summary = json.loads(body)
        assert summary["type"] == "class_ended" and "sites" not in summary
        assert {s["code"] for s in summary["never_joined"]} == {"S1", "S2"}
        assert (tmp_path / "data" / "webhook.json").exists()


class Hook:
    """A webhook receiver on loopback: the bodies it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    async def handle(self, request):
        from aiohttp import web

        self.bodies.append(json.loads(await request.read()))
        return web.Response(status=204)

    async def wait(self, count: int = 1, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if len(self.bodies) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the webhook got {len(self.bodies)} of {count} posts")


async def short_class(client, sid: str, minutes_from_now: float) -> None:
    """A class that started two minutes ago and ends `minutes_from_now` from now (S1 only)."""
    import time

    now = time.time()
    body = {
        "id": sid,
        "title": "Lớp ngắn",
        "starts_at": now - 120,
        "ends_at": now + 60 * minutes_from_now,
        "site_codes": ["S1"],
    }
    reply = await client.post("/api/sessions", json=body, headers=ADMIN)
    assert reply.status == 201, await reply.text()


async def page_send_end_headcount(client) -> None:
    """The end prompt of a class that ended by itself still takes the hall's end headcount."""
    page = await client.ws_connect("/ws/k", params={"token": mint(Role.SITE, "k", "S1")})
    await page.send_json({"type": "headcount", "count": 17, "phase": "end", "id": "end"})
    while (reply := json.loads((await page.receive(timeout=3)).data))["type"] not in (
        "ack",
        "error",
    ):
        pass
    assert reply["type"] == "ack", reply
    await page.close()


async def test_a_class_ends_by_itself_at_its_planned_end_plus_the_grace(tmp_path: Path) -> None:
    """Compressed time: a class planned to end in 0.6 s, a grace of 0.6 s: the hall's page is
    told, the ledger records the end, the webhook gets the summary; no person ended it."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    hook = Hook()
    receiver = web.Application()
    receiver.router.add_post("/hook", hook.handle)
    async with TestServer(receiver, host="127.0.0.1") as target:
        settings = {
            "webhook_url": str(target.make_url("/hook")),
            "webhook_secret": "webhook-secret-0123456789",
            "auto_end_grace_s": 0.6,
            "batch_interval_s": 0.1,
        }
        async with running_app(tmp_path, **settings) as (client, state):
            await seed(client)
            await short_class(client, "k", 0.01)
            page = await client.ws_connect("/ws/k", params={"token": mint(Role.SITE, "k", "S1")})
            assert json.loads((await page.receive(timeout=3)).data)["ended"] is False
            while json.loads((await page.receive(timeout=5)).data)["type"] != "class_ended":
                pass
            session = await state.store.get_session("k")
            assert session.ended_at == session.ends_at  # recorded at its planned end, not later
            (end,) = await state.store.events("k", kinds=[EventKind.CLASS_ENDED])
            assert end.at == session.ends_at and end.data["announced_at"] >= session.ends_at + 0.6
            await page_send_end_headcount(client)
            await hook.wait()
            assert hook.bodies[0]["type"] == "class_ended"
            await page.close()
        assert [body["session"]["id"] for body in hook.bodies] == ["k"]  # once


async def test_a_class_whose_end_passed_while_the_server_was_down_ends_at_start(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path, auto_end_grace_s=0.5) as (client, state):
        await seed(client)
        await client.post("/api/sessions/c1/end", headers=ADMIN)
        await short_class(client, "k", 0.01)  # planned end in 0.6 s: the server stops first
        assert (await state.store.get_session("k")).ended_at is None
    await asyncio.sleep(1.5)
    async with running_app(tmp_path, auto_end_grace_s=0.5) as (client, state):
        for _ in range(100):  # no request, no page: ended at start (session, then ledger)
            session = await state.store.get_session("k")
            ended = await state.store.events("k", kinds=[EventKind.CLASS_ENDED])
            if session.ended_at is not None and ended:
                break
            await asyncio.sleep(0.05)
        assert session.ended_at == session.ends_at
        assert len(ended) == 1
    async with running_app(tmp_path, auto_end_grace_s=0) as (client, state):
        await short_class(client, "never", -1.0)  # 0: only a person ends a class
        await asyncio.sleep(0.3)
        assert (await state.store.get_session("never")).ended_at is None


def test_webhook_settings_fail_early() -> None:
    from server.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_config(
            {"data_dir": "/tmp/lopso-cfg-test", "webhook_url": "https://x.example/h"}, env={}
        )
    with pytest.raises(ConfigError, match="http"):
        load_config(
            {
                "data_dir": "/tmp/lopso-cfg-test",
                "webhook_url": "ftp://x",
                "webhook_secret": "s" * 16,
            },
            env={},
        )
