"""A class's presenters: the lineup a class is created with, their links and tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from serverproc import SECRET, mint, running_app

from server.auth import verify
from server.models import Role
from server.presenters import parse_cli_presenter, parse_presenters
from tests import redisproc
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


# --- director control over HTTP, with real aiortc presenters ---------------------------------


def lecturer(presenter: str | None, sid: str = "c1") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(Role.LECTURER, sid, presenter=presenter)}"}


async def publish_as(client, presenter: str, offset: int):
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tests.mediaclip import NumberedVideoTrack, ToneAudioTrack

    pc = RTCPeerConnection()
    pc.addTrack(ToneAudioTrack())
    pc.addTrack(NumberedVideoTrack(offset))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {**lecturer(presenter), "Content-Type": "application/sdp"}
    reply = await client.post("/whip/c1", data=pc.localDescription.sdp, headers=headers)
    if reply.status != 201:
        await pc.close()
        return None, reply
    await pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))
    return pc, reply


async def states_of(client) -> dict:
    reply = await client.get("/api/sessions/c1/presenters", headers=ADMIN)
    body = await reply.json()
    return {p["id"]: p["state"] for p in body["presenters"]} | {"on_air": body["on_air"]}


async def eventually(check, timeout: float = 8.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_director_cuts_between_presenters_and_the_ledger_keeps_the_programme(
    tmp_path: Path,
) -> None:
    from server.models import EventKind

    async with running_app(tmp_path, media=True, batch_interval_s=0.2) as (client, state):
        assert (await create(client, TWO)).status == 201
        moderator = {"Authorization": f"Bearer {mint(Role.MODERATOR, 'c1')}"}
        peers = []
        try:
            lead, _ = await publish_as(client, "p1", 0)
            guest, _ = await publish_as(client, "canbo", 20000)
            peers += [lead, guest]
            assert lead is not None and guest is not None
            again, busy = await publish_as(client, "canbo", 40000)
            assert again is None and busy.status == 409
            assert (await busy.json())["error"]["code"] == "publisher_busy"

            async def standby() -> bool:
                return await states_of(client) == {
                    "p1": "on_air",
                    "canbo": "standby",
                    "on_air": "p1",
                }

            await eventually(standby)
            await check_preview_route(client, moderator)
            # a standby presenter may not cut; the lead and a moderator may
            refused = await client.post(
                "/api/sessions/c1/on_air", json={"presenter": "canbo"}, headers=lecturer("canbo")
            )
            assert (
                refused.status == 403 and (await refused.json())["error"]["code"] == "not_director"
            )
            unknown = await client.post(
                "/api/sessions/c1/on_air", json={"presenter": "zz"}, headers=moderator
            )
            assert unknown.status == 400
            cut = await client.post(
                "/api/sessions/c1/on_air", json={"presenter": "canbo"}, headers=moderator
            )
            assert cut.status == 202, await cut.text()

            async def on_b() -> bool:
                return (await states_of(client))["on_air"] == "canbo"

            await eventually(on_b)
            # the presenter on air hands back to the lead
            back = await client.post(
                "/api/sessions/c1/on_air", json={"presenter": "p1"}, headers=lecturer("canbo")
            )
            assert back.status == 202, await back.text()

            async def on_a() -> bool:
                return (await states_of(client))["on_air"] == "p1"

            await eventually(on_a)
            events = await state.store.events("c1", kinds=[EventKind.ON_AIR, EventKind.OFF_AIR])
            assert [(e.kind, e.data["presenter"]) for e in events] == [
                (EventKind.ON_AIR, "p1"),
                (EventKind.ON_AIR, "canbo"),
                (EventKind.ON_AIR, "p1"),
            ]
            await lead.close()  # the lead drops: nobody is on air, the ledger says so

            async def off() -> bool:
                return await states_of(client) == {
                    "p1": "offline",
                    "canbo": "standby",
                    "on_air": None,
                }

            await eventually(off)
            kinds = [e.kind for e in await state.store.events("c1", kinds=[EventKind.OFF_AIR])]
            assert kinds == [EventKind.OFF_AIR]
            offline = await client.post(
                "/api/sessions/c1/on_air", json={"presenter": "p1"}, headers=moderator
            )
            assert offline.status == 409
            assert (await offline.json())["error"]["code"] == "presenter_offline"
            report = await client.get("/api/sessions/c1/attendance", headers=moderator)
            programme = (await report.json())["programme"]
            assert [(p["presenter"], p["name"]) for p in programme] == [
                ("p1", TWO[0]["name"]),
                ("canbo", TWO[1]["name"]),
                ("p1", TWO[0]["name"]),
            ]
            assert all(p["start"] <= p["end"] and not p["open"] for p in programme)
            assert programme[0]["end"] == programme[1]["start"]
        finally:
            for pc in peers:
                if pc is not None:
                    await pc.close()


# --- cluster: the node holding the sources cuts, every node knows the presenters' states -----

redis_module = redisproc.redis_module  # a private redis-server for this module


async def test_a_cut_asked_on_one_node_reaches_the_node_with_the_sources(redis_module) -> None:
    """Two nodes on one Redis: the origin (holding the sources) announces the presenters'
    states, the other node sees them, and a cut asked there is done by the origin."""
    import asyncio
    import time
    import uuid

    from server.hub import Hub
    from server.models import ClassSession
    from server.presenters import parse_presenters
    from server.store.redis import RedisStore

    prefix = f"t{uuid.uuid4().hex[:8]}"
    stores = [RedisStore(redis_module.url, node_id=n, prefix=prefix) for n in ("o1", "e1")]
    for store in stores:
        await store.open()
    origin, edge = Hub(stores[0], "o1"), Hub(stores[1], "e1")
    cues: list[tuple[str, str]] = []

    async def on_cue(sid: str, presenter: str) -> None:
        cues.append((sid, presenter))

    origin.on_cue = on_cue
    session = ClassSession("c1", "Hai báo cáo viên", time.time(), presenters=parse_presenters(TWO))
    await stores[0].put_session(session)
    try:
        seen = await edge.room(session)
        await origin.room(session)
        await origin.set_presenters(session, {"p1": "on_air", "canbo": "standby"}, "p1", True)
        deadline = time.monotonic() + 5
        while seen.presenter_states.get("canbo") != "standby":
            assert time.monotonic() < deadline, "the other node never learnt the states"
            await asyncio.sleep(0.05)
        assert seen.on_air == "p1"
        await edge.cue(session, "canbo")
        while not cues:
            assert time.monotonic() < deadline, "the origin never got the cut"
            await asyncio.sleep(0.05)
        assert cues == [("c1", "canbo")]
        kinds = [e.kind.value for e in await stores[0].events("c1")]
        assert kinds.count("on_air") == 1
    finally:
        for hub in (origin, edge):
            await hub.close()
        for store in stores:
            await store.close()


async def check_preview_route(client, moderator: dict[str, str]) -> None:
    """`/preview/{sid}/{presenter}`: a director's monitor; not for a hall, not for a stranger."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    try:
        sdp = {"Content-Type": "application/sdp"}
        site = {"Authorization": f"Bearer {mint(Role.SITE, 'c1', 'S1')}", **sdp}
        refused = await client.post("/preview/c1/canbo", data=offer, headers=site)
        assert refused.status == 403
        unknown = await client.post("/preview/c1/zz", data=offer, headers={**moderator, **sdp})
        assert unknown.status == 404
        assert (await unknown.json())["error"]["code"] == "unknown_presenter"
        made = await client.post("/preview/c1/canbo", data=offer, headers={**moderator, **sdp})
        assert made.status == 201, await made.text()
        location = made.headers["Location"]
        assert location.startswith("/preview/c1/canbo/")
        gone = await client.delete(location, headers=moderator)
        assert gone.status == 200
    finally:
        await pc.close()
