"""WebSocket protocol against a loopback app: snapshot, batching, ack, presence, routing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import aiohttp
import pytest
from serverproc import mint, running_app
from test_api import seed

from server.models import Event, EventKind, Role

BATCH = 0.25


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(tmp_path, batch_interval_s=BATCH, ws_idle_timeout_s=2.0) as (
        client,
        state,
    ):
        await seed(client, sites=("S1", "S2", "S3"))
        yield client, state


async def connect(client, role: Role, site: str | None = None, sid: str = "c1"):
    return await client.ws_connect(f"/ws/{sid}", params={"token": mint(role, sid, site)})


async def receive(ws, kind: str, timeout: float = 3.0, where=lambda m: True) -> dict:
    """The next message of `kind` (skipping others) that satisfies `where`."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] == kind and where(data):
            return data


def site_in(update: dict, code: str) -> dict | None:
    return next((s for s in update["sites"] if s["code"] == code), None)


async def test_moderator_gets_welcome_and_snapshot(app) -> None:
    client, _ = app
    ws = await connect(client, Role.MODERATOR)
    welcome = await receive(ws, "welcome")
    assert welcome["role"] == "moderator" and welcome["live"] is False
    assert welcome["session"]["id"] == "c1" and welcome["server_time"].endswith("Z")
    snapshot = await receive(ws, "sites")
    assert [s["code"] for s in snapshot["sites"]] == ["S1", "S2", "S3"]
    assert {s["status"] for s in snapshot["sites"]} == {"never_joined"}
    assert snapshot["totals"] == {
        "expected": 3,
        "connected": 0,
        "playing": 0,
        "media": 0,
        "people": 0,
        "help_open": 0,
    }
    await ws.close()


async def test_site_presence_status_and_headcount_reach_the_moderator(app) -> None:
    client, state = app
    mod = await connect(client, Role.MODERATOR)
    await receive(mod, "sites")
    site = await connect(client, Role.SITE, "S1")
    welcome = await receive(site, "welcome")
    assert welcome["site"]["name"] == "Nhà văn hóa thôn Đông"
    update = await receive(mod, "sites_update", where=lambda m: site_in(m, "S1"))
    assert site_in(update, "S1")["status"] == "waiting" and update["totals"]["connected"] == 1
    await site.send_json({"type": "status", "state": "playing"})
    await site.send_json({"type": "headcount", "count": 42, "phase": "start", "id": "h1"})
    ack = await receive(site, "ack")
    assert ack["id"] == "h1"
    stored = await state.store.events("c1", kinds=[EventKind.HEADCOUNT])
    assert [(e.site_code, e.data) for e in stored] == [("S1", {"count": 42, "phase": "start"})]
    update = await receive(
        mod, "sites_update", where=lambda m: (site_in(m, "S1") or {}).get("headcount") == 42
    )
    s1 = site_in(update, "S1")
    assert s1["status"] == "playing" and s1["peak_headcount"] == 42
    assert update["totals"]["playing"] == 1 and update["totals"]["people"] == 42
    await site.close()
    update = await receive(
        mod, "sites_update", where=lambda m: (site_in(m, "S1") or {}).get("status") == "offline"
    )
    assert update["totals"]["connected"] == 0
    await mod.close()


async def test_updates_are_batched_and_carry_only_changed_sites(app) -> None:
    client, _ = app
    mod = await connect(client, Role.MODERATOR)
    await receive(mod, "sites")
    await receive(mod, "backlog")  # open questions and help: none
    site = await connect(client, Role.SITE, "S2")
    await receive(site, "welcome")
    for state in ("connecting", "playing", "stalled", "playing") * 5:
        await site.send_json({"type": "status", "state": state})
    await site.send_json({"type": "headcount", "count": 7, "phase": "other", "id": "last"})
    await receive(site, "ack")
    updates, started = [], time.monotonic()
    while time.monotonic() - started < 4 * BATCH:
        try:
            msg = await mod.receive(timeout=4 * BATCH)
        except TimeoutError:
            break
        updates.append((time.monotonic(), json.loads(msg.data)))
    assert updates and all(u["type"] == "sites_update" for _, u in updates)
    assert all([s["code"] for s in u["sites"]] == ["S2"] for _, u in updates)
    assert len(updates) <= 4  # 22 changes in a few batches, not 22 messages
    span = updates[-1][0] - updates[0][0]
    assert span >= (len(updates) - 1) * BATCH * 0.5, updates  # spread out, not a burst
    assert site_in(updates[-1][1], "S2")["headcount"] == 7


async def test_reload_is_one_rejoin(app) -> None:
    client, state = app
    first = await connect(client, Role.SITE, "S1")
    await receive(first, "welcome")
    await first.close()
    await asyncio.sleep(0.1)
    second = await connect(client, Role.SITE, "S1")
    await receive(second, "welcome")
    kinds = [e.kind for e in await state.store.events("c1", site_code="S1")]
    assert kinds == [EventKind.SITE_JOINED, EventKind.SITE_LEFT, EventKind.SITE_JOINED]
    mod = await connect(client, Role.MODERATOR)
    snapshot = await receive(mod, "sites")
    s1 = site_in(snapshot, "S1")
    assert s1["rejoins"] == 1 and s1["status"] == "waiting"
    await second.close()
    await mod.close()


async def test_two_tabs_of_one_site_keep_it_connected(app) -> None:
    client, state = app
    mod = await connect(client, Role.MODERATOR)
    a, b = await connect(client, Role.SITE, "S3"), await connect(client, Role.SITE, "S3")
    await receive(a, "welcome"), await receive(b, "welcome")
    await a.close()
    await asyncio.sleep(3 * BATCH)
    events = await state.store.events("c1", site_code="S3")
    assert [e.kind for e in events] == [EventKind.SITE_JOINED] * 2 + [EventKind.SITE_LEFT]
    assert events[0].data["conn"] != events[1].data["conn"]
    assert events[2].data["conn"] == events[0].data["conn"]
    assert state.hub._rooms["c1"].result().sites["S3"].status == "waiting"
    await b.close()
    update = await receive(
        mod, "sites_update", where=lambda m: (site_in(m, "S3") or {}).get("status") == "offline"
    )
    assert update["totals"]["connected"] == 0
    await mod.close()


async def test_moderator_messages_and_commands_reach_their_sites(app) -> None:
    client, _ = app
    s1, s2, s3 = [await connect(client, Role.SITE, c) for c in ("S1", "S2", "S3")]
    for ws in (s1, s2, s3):
        await receive(ws, "welcome")
    mod = await connect(client, Role.MODERATOR)
    await mod.send_json(
        {"type": "message", "text": "Chào các bạn", "to": {"site": "S2"}, "id": "m1"}
    )
    assert (await receive(mod, "ack"))["id"] == "m1"
    got = await receive(s2, "message")
    assert got == {"type": "message", "text": "Chào các bạn", "from": "moderator"}
    await mod.send_json({"type": "message", "text": "Xã Tiên Lữ", "to": {"commune": "Xã Tiên Lữ"}})
    assert (await receive(s1, "message"))["text"] == "Xã Tiên Lữ"
    assert (await receive(s3, "message"))["text"] == "Xã Tiên Lữ"
    await mod.send_json({"type": "message", "text": "Tất cả", "to": {"all": True}})
    assert (await receive(s2, "message"))["text"] == "Tất cả"  # S2 skipped the commune one
    await mod.send_json({"type": "command", "site": "S3", "action": "reconnect"})
    assert (await receive(s3, "command"))["action"] == "reconnect"
    await mod.send_json({"type": "command", "site": "S9", "action": "reconnect", "id": "x"})
    error = await receive(mod, "error")
    assert error["id"] == "x" and error["code"] == "unknown_site"
    for ws in (s1, s2, s3, mod):
        await ws.close()


async def test_help_and_questions_flow(app) -> None:
    client, state = app
    mod = await connect(client, Role.MODERATOR)
    lecturer = await connect(client, Role.LECTURER)
    await receive(lecturer, "sites")
    site = await connect(client, Role.SITE, "S1")
    await site.send_json({"type": "help", "reason": "no_sound", "text": "Không nghe", "id": "h"})
    ack = await receive(site, "ack")
    help_id = ack["help_id"]
    for ws in (mod, lecturer):
        got = await receive(ws, "help")
        assert got["help_id"] == help_id and got["site"] == "S1" and got["reason"] == "no_sound"
    update = await receive(mod, "sites_update", where=lambda m: m["totals"]["help_open"] == 1)
    assert site_in(update, "S1")["help_open"] == 1
    await mod.send_json({"type": "resolve_help", "site": "S1", "help_id": help_id, "id": "r"})
    await receive(mod, "ack")
    assert (await receive(site, "help_resolved"))["help_id"] == help_id
    await mod.send_json({"type": "resolve_help", "site": "S1", "help_id": help_id, "id": "r2"})
    assert (await receive(mod, "error"))["code"] == "unknown_help"

    await site.send_json({"type": "question", "text": "Mật khẩu là gì?", "id": "q"})
    question_id = (await receive(site, "ack"))["question_id"]
    assert (await receive(mod, "question"))["text"] == "Mật khẩu là gì?"
    await mod.send_json({"type": "forward_question", "question_id": question_id})
    forwarded = await receive(lecturer, "question")
    assert forwarded["forwarded"] is True and forwarded["site"] == "S1"
    kinds = [e.kind for e in await state.store.events("c1", site_code="S1")]
    assert kinds.count(EventKind.HELP_REQUESTED) == 1 and kinds.count(EventKind.HELP_RESOLVED) == 1
    for ws in (site, mod, lecturer):
        await ws.close()


async def test_operator_checkin_over_ws(app) -> None:
    client, _ = app
    site = await connect(client, Role.SITE, "S1")
    await site.send_json({"type": "checkin", "name": "Trần Thị Bình", "id": "c1"})
    assert (await receive(site, "ack"))["duplicate"] is False
    await site.send_json({"type": "checkin", "name": "Trần Thị Bình", "id": "c2"})
    assert (await receive(site, "ack"))["duplicate"] is True
    await site.close()


async def test_live_and_class_end_reach_every_page_with_prompts(app) -> None:
    client, state = app
    site = await connect(client, Role.SITE, "S1")
    mod = await connect(client, Role.MODERATOR)
    await receive(site, "welcome")
    session = await state.store.get_session("c1")
    await state.hub.set_live(session, True)
    assert (await receive(site, "headcount_prompt"))["phase"] == "start"
    assert (await receive(site, "live"))["live"] is True
    assert (await receive(mod, "live"))["live"] is True
    assert (await state.store.get_session("c1")).started_at is not None
    reply = await client.post(
        "/api/sessions/c1/end", headers={"Authorization": f"Bearer {mint(Role.MODERATOR, 'c1')}"}
    )
    assert reply.status == 200
    assert (await receive(site, "headcount_prompt"))["phase"] == "end"
    await receive(site, "class_ended")
    await receive(mod, "class_ended")
    kinds = [
        (e.kind, e.data.get("phase")) for e in await state.store.events("c1") if e.site_code is None
    ]
    assert kinds == [
        (EventKind.CLASS_STARTED, None),
        (EventKind.PROMPT, "start"),  # prompts are remembered: a restart neither loses nor repeats
        (EventKind.CLASS_ENDED, None),
        (EventKind.PROMPT, "end"),
    ]
    await site.close()
    await mod.close()


async def test_site_reports_after_the_end_are_refused_and_leave_the_report_alone(app) -> None:
    """Once a class has ended its attendance is final: every kind of site input is refused
    (quality ignored); only the end prompt's headcount is still taken."""
    client, state = app
    site = await connect(client, Role.SITE, "S1")
    await receive(site, "welcome")
    await site.send_json({"type": "headcount", "count": 30, "phase": "start", "id": "h0"})
    await receive(site, "ack")
    reply = await client.post(
        "/api/sessions/c1/end", headers={"Authorization": f"Bearer {mint(Role.MODERATOR, 'c1')}"}
    )
    assert reply.status == 200
    await receive(site, "class_ended")

    async def report() -> dict:
        got = await client.get(
            "/api/sessions/c1/attendance", headers={"Authorization": f"Bearer {mint(Role.ADMIN)}"}
        )
        body = await got.json()
        return {key: body[key] for key in ("province", "sites")}

    def reports() -> list:
        return [e for e in events if e.kind not in (EventKind.SITE_JOINED, EventKind.SITE_LEFT)]

    events = await state.store.events("c1")
    before, ledger = await report(), reports()
    refused = [
        {"type": "headcount", "count": 99, "phase": "other"},
        {"type": "question", "text": "Còn ai không?"},
        {"type": "help", "reason": "no_sound", "text": ""},
        {"type": "checkin", "name": "Trần Văn Muộn", "ident": "0987654321"},
    ]
    for n, message in enumerate(refused):
        await site.send_json({**message, "id": f"late-{n}"})
        error = await receive(site, "error")
        assert (error["id"], error["code"]) == (f"late-{n}", "class_ended"), error
    await site.send_json({"type": "quality", "rtt_ms": 900, "loss_pct": 40, "id": "late-q"})
    await receive(site, "ack")  # ignored, not an error: the player may still be running
    qr = await client.post(
        "/api/sessions/c1/sites/S1/checkins",
        json={"name": "Người Lạ", "ident": "0911111111"},
        headers={"Authorization": f"Bearer {mint(Role.PARTICIPANT, 'c1', 'S1')}"},
    )
    assert qr.status == 409 and (await qr.json())["error"]["code"] == "class_ended"
    events = await state.store.events("c1")
    assert reports() == ledger
    assert await report() == before
    await site.send_json({"type": "headcount", "count": 28, "phase": "end", "id": "h-end"})
    await receive(site, "ack")  # what the end prompt asked for is still taken
    events = await state.store.events("c1", kinds=[EventKind.HEADCOUNT])
    assert [e.data["count"] for e in events] == [30, 28]
    await site.close()


async def test_quality_report_updates_state_and_samples_the_ledger(app) -> None:
    client, state = app
    mod = await connect(client, Role.MODERATOR)
    site = await connect(client, Role.SITE, "S2")
    sample = {
        "type": "quality",
        "rtt_ms": 120,
        "loss_pct": 9.5,
        "jitter_ms": 8,
        "kbps": 300,
        "fps": 25,
        "frames_decoded": 900,
        "freeze_count": 1,
    }
    await site.send_json(sample)
    await site.send_json({**sample, "loss_pct": 1.0})  # within 15 s: live only, not stored
    update = await receive(
        mod, "sites_update", where=lambda m: (site_in(m, "S2") or {}).get("loss_pct") == 1.0
    )
    s2 = site_in(update, "S2")
    assert s2["quality"] == "good" and s2["rtt_ms"] == 120 and s2["kbps"] == 300
    stored = await state.store.events("c1", kinds=[EventKind.QUALITY])
    assert len(stored) == 1 and stored[0].data["class"] == "poor"
    await site.close()
    await mod.close()


async def test_no_media_is_not_lost_quality_before_the_lecture_is_live(app) -> None:
    client, state = app
    site = await connect(client, Role.SITE, "S3")
    await receive(site, "welcome")
    await site.send_json({"type": "quality", "kbps": 0, "no_media_s": 30, "id": "q1"})
    await receive(site, "ack")
    room = await state.hub.room(await state.store.get_session("c1"))
    assert room.sites["S3"].quality is None
    await state.hub.set_live(room.session, True)
    await site.send_json({"type": "quality", "kbps": 0, "no_media_s": 30, "id": "q2"})
    await receive(site, "ack")
    assert room.sites["S3"].quality == "lost"
    stored = await state.store.events("c1", kinds=[EventKind.QUALITY])
    assert [e.data["class"] for e in stored] == [None]  # the second sample was within 15 s
    await site.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ("[1,2]", "bad_message"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "headcount", "count": -1, "phase": "start"}', "bad_field"),
        ('{"type": "headcount", "count": 5.5, "phase": "start"}', "bad_field"),
        ('{"type": "headcount", "count": 5, "phase": "later"}', "bad_field"),
        ('{"type": "status", "state": "dancing"}', "bad_field"),
        ('{"type": "help", "reason": "other", "text": "' + "x" * 501 + '"}', "bad_field"),
        ('{"type": "quality", "rtt_ms": "fast"}', "bad_field"),
        ('{"type": "quality", "loss_pct": NaN}', "bad_field"),
        ('{"type": "message", "text": "hi", "to": {"all": true}}', "forbidden"),
        ('{"type": "heartbeat", "id": 7}', "bad_field"),
    ],
)
async def test_garbage_gets_a_precise_error_and_the_page_stays(app, frame: str, code: str) -> None:
    client, _ = app
    site = await connect(client, Role.SITE, "S1")
    await receive(site, "welcome")
    await site.send_str(frame)
    assert (await receive(site, "error"))["code"] == code
    await site.send_json({"type": "heartbeat", "id": "still-here"})
    assert (await receive(site, "ack"))["id"] == "still-here"
    await site.close()


async def test_resent_messages_are_stored_once(app) -> None:
    client, state = app
    mod = await connect(client, Role.MODERATOR)
    for attempt in range(2):  # the page resends its unacked messages after a reconnect
        site = await connect(client, Role.SITE, "S1")
        await site.send_json({"type": "headcount", "count": 12, "phase": "mid", "id": "hc-1"})
        await site.send_json({"type": "help", "reason": "other", "text": "?", "id": "help-1"})
        await site.send_json({"type": "question", "text": "Hỏi", "id": "q-1"})
        acks = [await receive(site, "ack") for _ in range(3)]
        if attempt == 0:
            first = acks
        else:
            assert acks == first  # same help_id and question_id
        await site.close()
    kinds = [
        e.kind
        for e in await state.store.events("c1", site_code="S1")
        if e.kind not in (EventKind.SITE_JOINED, EventKind.SITE_LEFT)
    ]
    assert sorted(k.value for k in kinds) == ["headcount", "help_requested", "question"]
    assert len([m for m in [await receive(mod, "help")]]) == 1
    await mod.close()


async def _attempt(client, token: str, url: str = "/ws/c1"):
    """Open a page's WebSocket: the socket, or the HTTP status that refused it."""
    try:
        return await client.ws_connect(url, params={"token": token})
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def test_one_site_link_cannot_open_hundreds_of_websockets(app) -> None:
    """The Hardening finding (MEDIUM): 600 WebSockets of one site link from one address were
    all accepted, each writing fsynced ledger events, and the site's rejoins rose to 599.
    Now a site holds at most 8 pages (LOPSO_WS_PER_SITE): the rest are refused with 429
    before the upgrade, so the ledger never sees them, and the server keeps serving."""
    client, state = app
    token = mint(Role.SITE, "c1", "S1")
    # a session without a connection pool limit: 600 sockets at once, as in the finding
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = str(client.make_url("/ws/c1"))
    results = await asyncio.gather(*(_attempt(http, token, url) for _ in range(600)))
    opened = [r for r in results if not isinstance(r, int)]
    refused = [r for r in results if isinstance(r, int)]
    assert len(opened) == 8 and refused == [429] * 592
    reply = await client.get("/ws/c1", params={"token": token})  # what a refusal says
    assert reply.status == 429 and reply.headers["Retry-After"] == "5"
    assert (await reply.json())["error"]["code"] == "too_many_websockets"
    joined = await state.store.events("c1", kinds=[EventKind.SITE_JOINED], site_code="S1")
    assert len(joined) == 8
    other = await connect(client, Role.SITE, "S2")  # the server keeps serving the others
    assert (await receive(other, "welcome"))["site"]["code"] == "S2"
    mod = await connect(client, Role.MODERATOR)
    assert site_in(await receive(mod, "sites"), "S1")["rejoins"] == 7  # not 599
    await opened[0].close()
    for _ in range(50):  # the closed page's place is given back
        again = await _attempt(client, token)
        if not isinstance(again, int):
            break
        await asyncio.sleep(0.05)
    assert not isinstance(again, int)
    for ws in (*opened, again, other, mod):
        await ws.close()
    await http.close()


async def test_websockets_per_token_and_per_address(tmp_path: Path) -> None:
    """A lecturer or moderator link holds LOPSO_WS_PER_TOKEN pages; one address holds
    LOPSO_WS_PER_ADDR, whatever tokens it uses."""
    settings = {"ws_per_site": 2, "ws_per_token": 3, "ws_per_addr": 6}
    async with running_app(tmp_path, batch_interval_s=BATCH, **settings) as (client, _):
        await seed(client, sites=("S1", "S2", "S3"))
        moderator = mint(Role.MODERATOR, "c1")
        pages = [await _attempt(client, moderator) for _ in range(4)]
        assert [isinstance(p, int) and p for p in pages] == [False, False, False, 429]
        pages += [await _attempt(client, mint(Role.LECTURER, "c1")) for _ in range(2)]
        assert not any(isinstance(p, int) for p in pages[4:])  # another token: its own count
        hall = await _attempt(client, mint(Role.SITE, "c1", "S1"))
        assert not isinstance(hall, int)  # the 6th page from this address
        assert await _attempt(client, mint(Role.SITE, "c1", "S3")) == 429
        await pages[0].close()
        for _ in range(50):
            third = await _attempt(client, mint(Role.SITE, "c1", "S3"))
            if not isinstance(third, int):
                break
            await asyncio.sleep(0.05)
        assert not isinstance(third, int)
        for ws in (*pages[1:3], *pages[4:], hall, third):
            await ws.close()


async def test_hub_prompts_mid_class_and_sweeps_expired_presence(tmp_path: Path) -> None:
    """The hub alone on the embedded store: a mid-class prompt, and a site whose node died."""
    from server.hub import Hub, HubLimits, Peer
    from server.models import ClassSession, Site
    from server.store import open_store

    store = await open_store(None, tmp_path, "n1")
    hub = Hub(store, "n1", HubLimits(batch_interval_s=0.05, presence_ttl_s=0.3, mid_prompt_s=0.2))
    try:
        await store.upsert_sites([Site("A", "Nhà văn hóa thôn A"), Site("B", "Nhà văn hóa thôn B")])
        session = ClassSession(id="k", title="t", starts_at=time.time())
        await store.put_session(session)
        room = await hub.room(session)
        peer = Peer("k", Role.SITE, await store.get_site("A"))
        await room.join(peer)
        # site B is connected through another node, which then dies: its presence expires
        await store.append(hub.event("k", EventKind.SITE_JOINED, "B", {"conn": "b1"}))
        await store.set_presence("k", "B", {"status": "playing", "node": "n2"}, 0.2)
        await room.patch("B", status="playing")
        await hub.set_live(session, True)
        prompts = []
        deadline = time.monotonic() + 3
        while len(prompts) < 2 and time.monotonic() < deadline:
            message = await asyncio.wait_for(peer.outbox.get(), 3)
            if message and message["type"] == "headcount_prompt":
                prompts.append(message["phase"])
        assert prompts == ["start", "mid"]
        deadline = time.monotonic() + 3
        while room.sites["B"].status != "offline" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert room.sites["B"].status == "offline"
        left = await store.events("k", kinds=[EventKind.SITE_LEFT], site_code="B")
        assert [(e.data["conn"], e.data["lost"]) for e in left] == [("b1", True)]
        await room.close_lost("B", time.time())  # again (as another node would): nothing new
        assert len(await store.events("k", kinds=[EventKind.SITE_LEFT])) == 1
        assert room.sites["A"].status == "waiting"  # still here: its page is on this node
    finally:
        await hub.close()
        await store.close()


async def test_the_mid_prompt_survives_a_restart_and_is_sent_once(tmp_path: Path) -> None:
    """Compressed time: a class planned for 4 s goes live; the server restarts before its
    middle (2 s after going live): the restarted server still prompts mid, once; after another
    restart nothing is prompted again."""
    import time as clock

    async def page(client) -> aiohttp.ClientWebSocketResponse:
        ws = await connect(client, Role.SITE, "S1", sid="k")
        await receive(ws, "welcome")
        return ws

    async def prompts(ws, seconds: float) -> list[str]:
        phases: list[str] = []
        deadline = clock.monotonic() + seconds
        while (left := deadline - clock.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            data = json.loads(msg.data)
            if data["type"] == "headcount_prompt":
                phases.append(data["phase"])
        return phases

    async with running_app(tmp_path, batch_interval_s=0.1) as (client, state):
        await seed(client, sites=("S1",))
        now = clock.time()
        body = {
            "id": "k",
            "title": "Ngắn",
            "starts_at": now,
            "ends_at": now + 4,
            "site_codes": ["S1"],
        }
        admin = {"Authorization": f"Bearer {mint(Role.ADMIN)}"}
        assert (await client.post("/api/sessions", json=body, headers=admin)).status == 201
        ws = await page(client)
        await state.hub.set_live(await state.store.get_session("k"), True)
        assert await prompts(ws, 0.5) == ["start"]
        await ws.close()
    async with running_app(tmp_path, batch_interval_s=0.1) as (client, state):  # restarted
        ws = await page(client)
        assert await prompts(ws, 3.0) == ["mid"]  # not lost, not "start" again
        await ws.close()
    async with running_app(tmp_path, batch_interval_s=0.1) as (client, state):  # and again
        ws = await page(client)
        assert await prompts(ws, 1.0) == []
        await ws.close()
        events = await state.store.events("k", kinds=[EventKind.PROMPT])
        assert [e.data["phase"] for e in events] == ["start", "mid"]


async def test_a_class_first_opened_by_its_lecturer_going_live_is_started(
    tmp_path: Path,
) -> None:
    """No page of the class open yet when the lecturer goes live: the room opened by that very
    announcement finds the lecture live, and the start is still recorded and prompted."""
    from server.hub import Hub, HubLimits
    from server.models import ClassSession
    from server.store import open_store

    async def live(_sid: str) -> bool:
        return True

    store = await open_store(None, tmp_path, "n1")
    hub = Hub(store, "n1", HubLimits(batch_interval_s=0.05), live_probe=live)
    try:
        session = ClassSession(id="k", title="t", starts_at=time.time())
        await store.put_session(session)
        await hub.set_live(session, True)
        assert [e.kind for e in await store.events("k", kinds=[EventKind.CLASS_STARTED])] == [
            EventKind.CLASS_STARTED
        ]
        stored = await store.get_session("k")
        assert stored is not None and stored.started_at is not None
        prompts = await store.events("k", kinds=[EventKind.PROMPT])
        assert [e.data.get("phase") for e in prompts] == ["start"]
        await hub.set_live(stored, True)  # said again: nothing new
        assert len(await store.events("k", kinds=[EventKind.CLASS_STARTED])) == 1
    finally:
        await hub.close()
        await store.close()


async def test_an_ended_classs_room_closes_after_its_last_page_and_reopens(tmp_path: Path) -> None:
    """Every class ever opened used to keep a loop forever: once a class has ended and its last
    page has gone (after a short linger) its room and loops are gone; a report opens it again."""
    from server.hub import Hub, HubLimits, Peer
    from server.models import ClassSession, Site
    from server.store import open_store

    store = await open_store(None, tmp_path, "n1")
    hub = Hub(store, "n1", HubLimits(batch_interval_s=0.05, room_linger_s=0.2))
    try:
        await store.upsert_sites([Site("A", "Nhà văn hóa thôn A")])
        session = ClassSession(id="k", title="t", starts_at=time.time())
        await store.put_session(session)
        room = await hub.room(session)
        peer = Peer("k", Role.SITE, await store.get_site("A"))
        await room.join(peer)
        await hub.end_class(session)
        await asyncio.sleep(0.5)
        assert hub.open_room("k") is room  # a page of it is still open
        await room.leave(peer)
        deadline = time.monotonic() + 3
        while hub.open_room("k") is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert hub.open_room("k") is None
        while not all(task.done() for task in room._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the loops finish stopping just after the room is dropped
        assert room._tasks and all(task.done() for task in room._tasks)
        again = await hub.room(await store.get_session("k"))  # someone opens the report
        assert again is not room and again.session.ended_at is not None
        assert again.sites["A"].joins == 1  # rebuilt from the ledger, nothing written twice
        assert len(await store.events("k", kinds=[EventKind.CLASS_ENDED])) == 1
    finally:
        await hub.close()
        await store.close()


def test_a_page_too_slow_to_read_is_shut() -> None:
    from server.hub import OUTBOX_SIZE, Peer

    peer = Peer("c1", Role.MODERATOR)
    for i in range(OUTBOX_SIZE + 1):
        peer.post({"type": "sites_update", "n": i})
    assert peer.closed and peer.outbox.full()
    items = [peer.outbox.get_nowait() for _ in range(OUTBOX_SIZE)]
    assert items[-1] is None  # the socket side sees the close after what was queued
    peer.post({"type": "late"})
    assert peer.outbox.empty()


async def test_two_nodes_share_one_class_through_redis(tmp_path: Path) -> None:
    """Cluster: a moderator on node A sees a site connected to node B, and reaches it."""
    from redisproc import RedisProcess

    with RedisProcess(tmp_path / "redis") as redis_proc:
        async with (
            running_app(
                tmp_path / "a", redis_url=redis_proc.url, batch_interval_s=BATCH, node_id="node-a"
            ) as (a, state_a),
            running_app(
                tmp_path / "b", redis_url=redis_proc.url, batch_interval_s=BATCH, node_id="node-b"
            ) as (b, state_b),
        ):
            await seed(a, sites=("S1", "S2", "S3"))  # one registry, one class, in Redis
            mod = await connect(a, Role.MODERATOR)
            assert [s["code"] for s in (await receive(mod, "sites"))["sites"]] == ["S1", "S2", "S3"]
            site = await connect(b, Role.SITE, "S2")
            assert (await receive(site, "welcome"))["session"]["id"] == "c1"
            await site.send_json({"type": "headcount", "count": 77, "phase": "start", "id": "x"})
            await receive(site, "ack")
            update = await receive(
                mod, "sites_update", where=lambda m: (site_in(m, "S2") or {}).get("headcount") == 77
            )
            assert site_in(update, "S2")["status"] == "waiting" and update["totals"]["people"] == 77
            await mod.send_json(
                {"type": "message", "text": "Từ nút A", "to": {"commune": "Phường Hiến Nam"}}
            )
            assert (await receive(site, "message"))["text"] == "Từ nút A"
            await site.close()
            update = await receive(
                mod,
                "sites_update",
                where=lambda m: (site_in(m, "S2") or {}).get("status") == "offline",
            )
            kinds = [e.kind for e in await state_b.store.events("c1", site_code="S2")]
            assert kinds == [EventKind.SITE_JOINED, EventKind.HEADCOUNT, EventKind.SITE_LEFT]

            # S1 moves from node A to node B; A's late leave must not show it offline
            old = await connect(a, Role.SITE, "S1")
            await receive(old, "welcome")
            new = await connect(b, Role.SITE, "S1")
            await receive(new, "welcome")
            await new.send_json({"type": "status", "state": "playing", "id": "p"})
            await receive(new, "ack")
            await old.close()
            await asyncio.sleep(4 * BATCH)
            room_a = state_a.hub._rooms["c1"].result()
            assert room_a.sites["S1"].status == "playing"
            assert room_a.sites["S1"].rejoins == 1
            await new.close()
            await mod.close()


async def test_a_class_opens_while_its_channel_is_not_live_yet(tmp_path: Path) -> None:
    """Redis down or reconnecting: the room opens after the timeout and goes live later."""
    from server.hub import Hub, HubLimits
    from server.models import ClassSession, Site
    from server.store import open_store
    from server.store.subscription import Subscription

    store = await open_store(None, tmp_path, "n1")
    pending: list[Subscription] = []

    def not_live_yet(channel: str) -> Subscription:  # the injected failure: never confirmed
        pending.append(Subscription(channel, 10, lambda sub: None))
        return pending[-1]

    store.subscribe = not_live_yet  # type: ignore[method-assign]
    hub = Hub(store, "n1", HubLimits(batch_interval_s=0.05, subscribe_timeout_s=0.2))
    try:
        await store.upsert_sites([Site("A", "Nhà văn hóa thôn A")])
        session = ClassSession(id="k", title="t", starts_at=time.time())
        started = time.monotonic()
        room = await asyncio.wait_for(hub.room(session), 3)
        assert 0.15 <= time.monotonic() - started < 2 and list(room.sites) == ["A"]
        pending[0].deliver({"t": "site", "code": "A", "patch": {"status": "playing"}})
        for _ in range(40):
            if room.sites["A"].status == "playing":
                break
            await asyncio.sleep(0.05)
        assert room.sites["A"].status == "playing"  # followed once messages flow
    finally:
        await hub.close()
        await store.close()


def _media(kind: EventKind, site: str, conn: str, node: str, at: float = 100.0) -> Event:
    return Event("k", kind, at, site, {"conn": conn}, node=node)


UP, DOWN = EventKind.MEDIA_UP, EventKind.MEDIA_DOWN


@pytest.mark.parametrize(
    ("events", "alive", "lost"),
    [
        pytest.param([_media(UP, "A", "m1", "n1")], set(), [("A", "m1")], id="this-node-before"),
        pytest.param([_media(UP, "A", "m1", "n1", 300.0)], set(), [], id="this-node-since"),
        pytest.param([_media(UP, "A", "m1", "edge")], {"edge"}, [], id="edge-alive"),
        pytest.param([_media(UP, "A", "m1", "edge")], set(), [("A", "m1")], id="edge-gone"),
        pytest.param(
            [_media(UP, "A", "m1", "edge"), _media(DOWN, "A", "m1", "edge")], set(), [], id="closed"
        ),
    ],
)
def test_lost_media_spells(events, alive, lost) -> None:
    from server.room import lost_media

    assert lost_media(events, alive, "n1", started_at=200.0) == lost


async def test_a_restarted_node_closes_the_media_spells_it_held(tmp_path: Path) -> None:
    """Its viewers went with the old process (kill -9 writes no media_down): the spell ends
    at the last moment the class was seen alive, not at the class end."""
    from server.hub import Hub
    from server.models import ClassSession, Site
    from server.store import open_store

    store = await open_store(None, tmp_path, "n1")
    try:
        await store.upsert_sites([Site("A", "Nhà văn hóa thôn A")])
        now = time.time()
        session = ClassSession(id="k", title="t", starts_at=now - 60)
        await store.put_session(session)
        old = Hub(store, "n1")
        await store.append(
            dataclasses.replace(old.event("k", UP, "A", {"conn": "r.1"}), at=now - 50)
        )
        await store.append(
            dataclasses.replace(old.event("k", EventKind.HEADCOUNT, "A", {"count": 3}), at=now - 20)
        )
        hub = Hub(store, "n1")  # the process after the restart
        try:
            room = await hub.room(session)
            down = await store.events("k", kinds=[DOWN])
            assert [(e.data["conn"], e.data["why"], e.at) for e in down] == [
                ("r.1", "lost", now - 20)
            ]
            assert room.sites["A"].media is False
            await hub.room(session)
            assert len(await store.events("k", kinds=[DOWN])) == 1
        finally:
            await hub.close()
    finally:
        await store.close()
