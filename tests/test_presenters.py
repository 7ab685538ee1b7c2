"""A class's presenters: the lineup a class is created with, their links and tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from serverproc import SECRET, mint, running_app

from server.auth import verify
from server.models import Role
from server.presenters import parse_cli_presenter, parse_presenters
from tests.test_api import ADMIN, CSV

TWO = [
    {"name": "TS. Nguyễn Văn An", "organisation": "Học viện Chính trị khu vực I"},
    {"id": "canbo", "name": "Đại úy Trần Thị Bình", "organisation": "Công an tỉnh Hưng Yên"},
]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("x", "must be a list"),
        ([1], r"presenters\[0\] must be an object"),
        ([{"id": "A B"}], r"presenters\[0\].id must be"),
        ([{"id": "a"}, {"id": "a"}], "used twice"),
        ([{"name": 3}], r"presenters\[0\].name must be a string"),
        ([{"name": "x" * 201}], "longer than 200"),
        ([{}] * 17, "at most 16"),
    ],
)
def test_bad_lineups_are_refused_precisely(value, problem) -> None:
    with pytest.raises(Exception, match=problem) as caught:
        parse_presenters(value)
    assert getattr(caught.value, "code", None) == "bad_field"


def test_lineup_ids_default_by_position() -> None:
    lineup = parse_presenters(TWO + [{"name": "Khách mời"}])
    assert [p.id for p in lineup] == ["p1", "canbo", "p3"]
    assert lineup[1].organisation == "Công an tỉnh Hưng Yên"
    assert parse_cli_presenter("canbo:Trần Thị Bình|Công an") == {
        "id": "canbo",
        "name": "Trần Thị Bình",
        "organisation": "Công an",
    }
    assert parse_cli_presenter("An | Học viện")["organisation"] == "Học viện"


async def create(client, presenters=None, sid="c1"):
    reply = await client.post(
        "/api/sites/import", data=CSV, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert reply.status == 200
    body = {"id": sid, "title": "Hai báo cáo viên", "starts_at": "2026-11-26T02:00:00Z"}
    if presenters is not None:
        body["presenters"] = presenters
    return await client.post("/api/sessions", json=body, headers=ADMIN)


async def test_each_presenter_gets_a_studio_link_and_token_of_their_own(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (client, _):
        reply = await create(client, TWO)
        assert reply.status == 201, await reply.text()
        wire = (await reply.json())["presenters"]
        assert [(p["id"], p["lead"]) for p in wire] == [("p1", True), ("canbo", False)]
        links = await (await client.get("/api/sessions/c1/links", headers=ADMIN)).json()
        studios = links["presenters"]
        assert [s["name"] for s in studios] == [p["name"] for p in TWO]
        for studio in studios:
            claims = verify(SECRET.encode(), studio["token"])
            assert claims.role is Role.LECTURER and claims.p == studio["id"]
            assert studio["url"].endswith(f"/studio/c1?token={studio['token']}")
        assert links["lecturer"]["token"] == studios[0]["token"]  # the lead's
        moderator = {"Authorization": f"Bearer {mint(Role.MODERATOR, 'c1')}"}
        hidden = await (await client.get("/api/sessions/c1/links", headers=moderator)).json()
        assert "presenters" not in hidden and "lecturer" not in hidden


async def test_a_class_without_presenters_has_one_default_presenter(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (client, _):
        reply = await create(client)
        assert reply.status == 201
        assert [p["id"] for p in (await reply.json())["presenters"]] == ["p1"]
        bad = await create(client, [{"id": "Nope!"}], sid="c2")
        assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_field"


def test_only_a_lecturer_token_names_a_presenter() -> None:
    token = mint(Role.LECTURER, "c1", presenter="canbo")
    assert verify(SECRET.encode(), token).p == "canbo"
    assert verify(SECRET.encode(), mint(Role.LECTURER, "c1")).p is None  # the lead
    with pytest.raises(ValueError, match="only a lecturer"):
        mint(Role.MODERATOR, "c1", presenter="canbo")
