"""Short join links (/j/<code>), the hall-links export and the hall cards page, on a loopback
server with the embedded store (the store side runs in tests/test_store_contract.py)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from serverproc import mint, running_app
from test_api import ADMIN, auth, seed

from server import halllinks
from server.auth import verify
from server.models import Role

CODE = re.compile(r"/j/([a-z0-9]+)")


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(
        tmp_path, public_url="https://lop.example.vn", short_link_rate=0.001
    ) as (client, state):
        await seed(client, sites=("S1", "S2", "S3"))
        yield client, state


async def hall_links(client, query: str = "", role: Role = Role.MODERATOR) -> dict:
    reply = await client.get(f"/api/classes/c1/hall-links?format=json{query}", headers=auth(role))
    assert reply.status == 200, await reply.text()
    return await reply.json()


def test_codes_are_short_derived_and_change_with_the_join_key() -> None:
    code = halllinks.short_code(b"s" * 32, "c1", "S1", "key-1")
    assert halllinks.CODE_RE.fullmatch(code) and len(code) == 8
    assert code == halllinks.short_code(b"s" * 32, "c1", "S1", "key-1")
    others = {
        halllinks.short_code(b"s" * 32, "c1", "S2", "key-1"),
        halllinks.short_code(b"s" * 32, "c2", "S1", "key-1"),
        halllinks.short_code(b"s" * 32, "c1", "S1", "key-2"),
        halllinks.short_code(b"t" * 32, "c1", "S1", "key-1"),
    }
    assert code not in others and len(others) == 4


async def test_short_link_leads_to_the_halls_join_link(app) -> None:
    client, state = app
    halls = (await hall_links(client))["halls"]
    assert [h["code"] for h in halls] == ["S2", "S3", "S1"]  # by commune, then name
    s1 = next(h for h in halls if h["code"] == "S1")
    assert s1["short_url"].startswith("https://lop.example.vn/j/")
    assert len(s1["short_url"]) < 40  # fits an SMS line
    code = CODE.search(s1["short_url"]).group(1)
    reply = await client.get(f"/j/{code}", allow_redirects=False)
    assert reply.status == 303 and reply.headers["Cache-Control"] == "no-store"
    location = reply.headers["Location"]
    assert location.startswith("/site/c1/S1?token=")
    claims = verify(state.config.secret, location.split("token=")[1])
    assert (claims.sid, claims.role, claims.site) == ("c1", Role.SITE, "S1")
    page = await client.get(f"/j/{code}")  # followed: the hall's page opens
    assert page.status == 200 and "page-site" in await page.text()


async def test_rotating_a_halls_key_retires_its_short_link(app) -> None:
    client, _ = app
    before = {h["code"]: h["short_url"] for h in (await hall_links(client))["halls"]}
    reply = await client.post("/api/sites/S1/rotate", headers=ADMIN)
    assert reply.status == 200
    after = {h["code"]: h["short_url"] for h in (await hall_links(client))["halls"]}
    assert after["S1"] != before["S1"] and after["S2"] == before["S2"]
    old = await client.get("/j/" + CODE.search(before["S1"]).group(1), allow_redirects=False)
    assert old.status == 404
    new = await client.get("/j/" + CODE.search(after["S1"]).group(1), allow_redirects=False)
    assert new.status == 303


async def test_unknown_code_is_a_page_in_vietnamese_and_guessing_is_limited(app) -> None:
    client, _ = app
    halls = (await hall_links(client))["halls"]
    good = CODE.search(halls[0]["short_url"]).group(1)
    statuses = []
    for attempt in range(14):
        reply = await client.get(f"/j/zzzz{attempt:04d}", allow_redirects=False)
        statuses.append(reply.status)
        if attempt == 0:
            html = await reply.text()
            assert reply.content_type == "text/html" and 'lang="vi"' in html
            assert "Không tìm thấy đường link này" in html
    assert statuses[:10] == [404] * 10  # the burst of wrong codes
    assert set(statuses[10:]) == {429}  # then refused, whatever the code
    refused = await client.get(f"/j/{good}", allow_redirects=False)
    assert refused.status == 429 and "Gửi quá nhiều lần" in await refused.text()


async def test_hall_links_never_carry_staff_tokens(app) -> None:
    client, state = app
    for fmt in ("csv", "text", "json"):
        reply = await client.get(
            f"/api/classes/c1/hall-links?format={fmt}", headers=auth(Role.MODERATOR)
        )
        assert reply.status == 200
        body = await reply.text()
        for token in re.findall(r"token=([A-Za-z0-9_\-.]+)", body):
            assert verify(state.config.secret, token).role is Role.SITE
        assert "/studio/" not in body and "/moderator/" not in body
    csv_reply = await client.get("/api/classes/c1/hall-links?format=csv", headers=ADMIN)
    raw = await csv_reply.read()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == ["code", "name", "village", "commune", "short_url", "url"]
    assert len(rows) == 4


async def test_commune_text_block_lists_its_halls_only(app) -> None:
    client, _ = app
    reply = await client.get(
        "/api/classes/c1/hall-links?format=text&commune=Xã Tiên Lữ", headers=auth(Role.MODERATOR)
    )
    text = await reply.text()
    assert text.startswith("Kỹ năng số\nBắt đầu 09:00 ngày 26/11/2026\n")
    assert "Nhà văn hóa thôn Đông: https://lop.example.vn/j/" in text
    assert "Nhà văn hóa thôn Bắc" in text and "tổ dân phố" not in text
    assert len(text.encode()) < 400  # two halls: an SMS-sized message, not 2 × 220 characters


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ("?format=pdf", ADMIN, 400, "bad_query"),
        ("?commune=Xã Không Có", ADMIN, 404, "unknown_commune"),
        ("", {"Authorization": f"Bearer {mint(Role.SITE, 'c1', 'S1')}"}, 403, "wrong_role"),
        ("", {"Authorization": f"Bearer {mint(Role.LECTURER, 'c1')}"}, 403, "wrong_role"),
        ("", {"Authorization": f"Bearer {mint(Role.MODERATOR, 'c2')}"}, 403, "wrong_class"),
        ("", {}, 401, "token_missing"),
    ],
)
async def test_hall_links_refusals(app, query, headers, status, code) -> None:
    client, _ = app
    reply = await client.get(f"/api/classes/c1/hall-links{query}", headers=headers)
    assert reply.status == status
    assert (await reply.json())["error"]["code"] == code


async def test_cards_page_has_a_card_per_hall_and_a_block_per_commune(app) -> None:
    client, _ = app
    token = mint(Role.MODERATOR, "c1")
    reply = await client.get(f"/classes/c1/cards?token={token}")
    html = await reply.text()
    assert reply.status == 200
    assert html.count('class="hall-card"') == 3
    assert html.count('class="commune-sheet"') == 2
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg"') == 3
    assert "09:00 ngày 26/11/2026" in html
    one = await client.get(f"/classes/c1/cards?token={token}&commune=Phường Hiến Nam")
    assert (await one.text()).count('class="hall-card"') == 1
    refused = await client.get(f"/classes/c1/cards?token={mint(Role.SITE, 'c1', 'S1')}")
    assert refused.status == 403 and "text/html" in refused.content_type


async def test_a_provinces_cards_are_drawn_per_commune(app, monkeypatch) -> None:
    from server.routes import links

    monkeypatch.setattr(links, "CARDS_MAX", 2)  # three halls: over the limit
    client, _ = app
    token = mint(Role.MODERATOR, "c1")
    html = await (await client.get(f"/classes/c1/cards?token={token}")).text()
    assert html.count('class="hall-card"') == 0 and 'id="cards-per-commune"' in html
    assert html.count('commune-text"') == 2  # the text blocks are still all there
    links_to = re.findall(r'class="btn btn-small commune-cards" href="([^"]+)"', html)
    assert len(links_to) == 2
    one = await client.get(links_to[0].replace("&amp;", "&"))
    assert (await one.text()).count('class="hall-card"') in (1, 2)
