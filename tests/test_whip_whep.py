"""WHIP publish and WHEP view with real aiortc peers through the app and the media engine."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from mediaclip import NumberedVideoTrack, ToneAudioTrack, read_number
from serverproc import mint, running_app
from test_api import seed

from server.models import EventKind, Role


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(tmp_path, media=True, batch_interval_s=0.2) as (client, state):
        await seed(client)
        yield client, state


async def offer_of(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


def bearer(role: Role, site: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(role, 'c1', site)}", "Content-Type": "application/sdp"}


async def publish(client) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTrack(ToneAudioTrack())
    pc.addTrack(NumberedVideoTrack())
    reply = await client.post("/whip/c1", data=await offer_of(pc), headers=bearer(Role.LECTURER))
    assert reply.status == 201, await reply.text()
    assert reply.content_type == "application/sdp"
    location = reply.headers["Location"]
    assert location.startswith("/whip/c1/")
    await pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))
    return pc, location


async def view(client, site: str) -> tuple[RTCPeerConnection, str, asyncio.Queue]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    frames: asyncio.Queue = asyncio.Queue()

    @pc.on("track")
    def on_track(track) -> None:
        if track.kind == "video":

            async def pump() -> None:
                while True:
                    frames.put_nowait(await track.recv())

            asyncio.ensure_future(pump())

    reply = await client.post(
        f"/whep/c1/{site}", data=await offer_of(pc), headers=bearer(Role.SITE, site)
    )
    assert reply.status == 201, await reply.text()
    location = reply.headers["Location"]
    assert location.startswith(f"/whep/c1/{site}/")
    await pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))
    return pc, location, frames


async def decoded_numbers(
    frames: asyncio.Queue, count: int, timeout: float = 15.0
) -> list[int | None]:
    numbers, deadline = [], time.monotonic() + timeout
    while len(numbers) < count:
        frame = await asyncio.wait_for(frames.get(), max(0.1, deadline - time.monotonic()))
        numbers.append(read_number(frame))
    return numbers


async def test_publish_view_and_delete(app) -> None:
    client, state = app
    site_ws = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S1")})
    viewer, viewer_location, frames = await view(client, "S1")  # before the lecturer is live
    publisher, publisher_location = await publish(client)
    try:
        numbers = await decoded_numbers(frames, 20)
        assert None not in numbers, numbers
        assert numbers == sorted(numbers)
        live = None
        while live is None:
            message = json.loads((await site_ws.receive(timeout=5)).data)
            if message["type"] == "live":
                live = message["live"]
        assert live is True
        started = await state.store.events("c1", kinds=[EventKind.CLASS_STARTED])
        assert len(started) == 1

        headers = {"Authorization": bearer(Role.SITE, "S1")["Authorization"]}
        other = await client.delete(
            viewer_location, headers={"Authorization": bearer(Role.SITE, "S2")["Authorization"]}
        )
        assert other.status == 403
        assert (await client.delete(viewer_location, headers=headers)).status == 200
        gone = await client.delete(viewer_location, headers=headers)
        assert gone.status == 404 and (await gone.json())["error"]["code"] == "unknown_resource"

        lecturer = {"Authorization": bearer(Role.LECTURER)["Authorization"]}
        assert (await client.delete(publisher_location, headers=lecturer)).status == 200
        while True:
            message = json.loads((await site_ws.receive(timeout=5)).data)
            if message["type"] == "live":
                assert message["live"] is False
                break
        assert state.resources == {}
    finally:
        await viewer.close()
        await publisher.close()
        await site_ws.close()


async def test_options_and_patch(app) -> None:
    client, _ = app
    reply = await client.options("/whip/c1")
    assert reply.status == 204 and "POST" in reply.headers["Allow"]
    reply = await client.patch("/whep/c1/S1/abc", headers=bearer(Role.SITE, "S1"), data="x")
    assert reply.status == 405 and (await reply.json())["error"]["code"] == "method_not_allowed"
    assert "DELETE" in reply.headers["Allow"]


async def test_ffmpeg_whip_muxer_through_the_server(tmp_path: Path) -> None:
    """A WHIP client that is not ours, FFmpeg 8.1's muxer (PyAV), through `lopso serve`'s own
    endpoint (token, Location, DELETE), to an aiortc WHEP viewer. FFmpeg gets an ECDSA
    identity (cert_file/key_file): with its default one the DTLS handshake fails (media/)."""
    import subprocess
    import sys

    from aiohttp import ClientSession
    from mediaclip import ecdsa_identity, write_h264_clip
    from serverproc import LopsoServer

    clip = write_h264_clip(tmp_path)
    cert, key = ecdsa_identity(tmp_path)
    with LopsoServer(tmp_path / "srv", demo_sites=1) as srv:
        site = srv.demo["sites"][0]["code"]
        async with ClientSession(srv.url) as http:
            body = {
                "id": "h264",
                "title": "H264",
                "starts_at": 1,
                "video_codec": "H264",
                "site_codes": [site],
            }
            reply = await http.post(
                "/api/sessions", json=body, headers={"Authorization": f"Bearer {srv.admin_token()}"}
            )
            assert reply.status == 201, await reply.text()
            pc = RTCPeerConnection()
            pc.addTransceiver("video", direction="recvonly")
            frames: asyncio.Queue = asyncio.Queue()

            @pc.on("track")
            def on_track(track) -> None:
                async def pump() -> None:
                    while True:
                        frames.put_nowait(await track.recv())

                asyncio.ensure_future(pump())

            token = srv.site_token("h264", site)
            reply = await http.post(
                f"/whep/h264/{site}",
                data=await offer_of(pc),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
            )
            assert reply.status == 201, await reply.text()
            await pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))
            pusher = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mediaclip",
                    f"{srv.url}/whip/h264",
                    str(clip),
                    mint(Role.LECTURER, "h264"),
                    str(cert),
                    str(key),
                ],
                cwd=Path(__file__).parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                numbers = await decoded_numbers(frames, 30, timeout=20)
                assert None not in numbers and numbers == sorted(numbers), numbers
            finally:
                pusher.kill()
                output, _ = pusher.communicate(timeout=10)
                await pc.close()
            assert "DTLS" not in output, output[-2000:]


async def test_a_page_opened_while_live_is_welcomed_live(app) -> None:
    client, state = app
    publisher, _ = await publish(client)
    try:
        for _ in range(100):  # until the first packets arrive
            if state.lectures["c1"].live:
                break
            await asyncio.sleep(0.05)
        await state.hub.close()  # forget the live state, as a freshly started node would have
        site = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S2")})
        welcome = json.loads((await site.receive(timeout=5)).data)
        assert welcome["type"] == "welcome" and welcome["live"] is True
        await site.close()
    finally:
        await publisher.close()


async def test_class_ended_elsewhere_closes_this_nodes_media(app) -> None:
    """Another node ended the class: its `ended` broadcast closes the lecture here too."""
    client, state = app
    publisher, _ = await publish(client)
    try:
        lecture = state.lectures["c1"]
        room = await state.hub.room(await state.store.get_session("c1"))
        await state.store.publish(
            room.channel,
            {"t": "ended", "at": 1.0, "to": {"roles": []}, "deliver": {"type": "class_ended"}},
        )
        for _ in range(100):
            if lecture.closed:
                break
            await asyncio.sleep(0.05)
        assert lecture.closed and "c1" not in state.lectures and state.resources == {}
    finally:
        await publisher.close()


async def test_rotating_a_join_key_ends_the_sites_viewers(app) -> None:
    client, state = app
    publisher, _ = await publish(client)
    s1, _, _ = await view(client, "S1")
    s2, _, _ = await view(client, "S2")
    assert sorted(r.site for r in state.resources.values() if r.kind == "whep") == ["S1", "S2"]
    await client.get("/api/sessions/c1", headers=bearer(Role.MODERATOR))  # the class's room opens
    rotated = await client.post(
        "/api/sites/S1/rotate", headers={"Authorization": f"Bearer {mint(Role.ADMIN)}"}
    )
    assert rotated.status == 200
    for _ in range(60):
        if "S1" not in {r.site for r in state.resources.values()}:
            break
        await asyncio.sleep(0.05)
    assert sorted(r.site for r in state.resources.values() if r.kind == "whep") == ["S2"]
    late = RTCPeerConnection()
    late.addTransceiver("video", direction="recvonly")
    again = await client.post(
        "/whep/c1/S1", data=await offer_of(late), headers=bearer(Role.SITE, "S1")
    )
    assert again.status == 401 and (await again.json())["error"]["code"] == "token_revoked"
    for pc in (publisher, s1, s2, late):
        await pc.close()


async def test_a_second_publish_is_409_publisher_busy_unless_it_takes_over(app) -> None:
    """Before: a second WHIP POST with the lecturer's token replaced the live publisher."""
    client, state = app
    viewer, _, frames = await view(client, "S1")
    first, first_location = await publish(client)
    second = RTCPeerConnection()
    second.addTrack(ToneAudioTrack())
    second.addTrack(NumberedVideoTrack(20000))
    try:
        await decoded_numbers(frames, 10)
        offer = await offer_of(second)
        busy = await client.post("/whip/c1", data=offer, headers=bearer(Role.LECTURER))
        assert busy.status == 409
        assert (await busy.json())["error"]["code"] == "publisher_busy"
        bad = await client.post("/whip/c1?takeover=yes", data=offer, headers=bearer(Role.LECTURER))
        assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_query"
        assert first_location.rsplit("/", 1)[1] in state.resources  # still on air

        took = await client.post("/whip/c1?takeover=1", data=offer, headers=bearer(Role.LECTURER))
        assert took.status == 201, await took.text()
        await second.setRemoteDescription(RTCSessionDescription(await took.text(), "answer"))
        numbers = await decoded_numbers(frames, 200)
        assert any(n is not None and n >= 20000 for n in numbers), numbers
        await wait_gone(state, first_location)  # the old session ended once the new one was on
    finally:
        for pc in (viewer, first, second):
            await pc.close()


async def wait_gone(state, location: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while location.rsplit("/", 1)[1] in state.resources:
        assert time.monotonic() < deadline, "the old publisher was never let go"
        await asyncio.sleep(0.05)


async def post_whep_as(client, offer: str, forwarded: str) -> int:
    headers = {**bearer(Role.SITE, "S1"), "X-Forwarded-For": forwarded}
    reply = await client.post("/whep/c1/S1", data=offer, headers=headers)
    await reply.read()
    return reply.status


async def viewer_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    offer = await offer_of(pc)
    await pc.close()
    return offer


async def test_forged_forwarded_entries_do_not_escape_the_signalling_limit(tmp_path: Path) -> None:
    """The finding: 400 WHEP posts through a trusted proxy, each with a made-up left-most
    X-Forwarded-For entry, were 400 clients (all 201). The proxy appends the address it saw
    (198.51.100.7): that is the client, so 15 (a burst of 3 s at 5/s) and a few more pass."""
    settings = {"signalling_rate": 5.0, "trust_proxy": True}  # the proxy: loopback, by default
    async with running_app(tmp_path, media=True, **settings) as (client, _):
        await seed(client)
        offer = await viewer_offer()
        began = time.monotonic()
        statuses = [
            await post_whep_as(client, offer, f"10.{i // 250}.{i % 250}.1, 198.51.100.7")
            for i in range(400)
        ]
        allowed = 15 + 5.0 * (time.monotonic() - began) + 1
        assert set(statuses) <= {201, 429}
        assert statuses.count(201) <= allowed, (statuses.count(201), allowed)
        assert statuses.count(429) >= 400 - allowed
        # another client behind the same proxy has its own bucket
        assert await post_whep_as(client, offer, "198.51.100.8") == 201


async def test_forwarded_entries_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    """Only a trusted proxy may name the client: here the proxy is 192.0.2.1, so this loopback
    peer is the client, whatever it writes in X-Forwarded-For."""
    settings = {"signalling_rate": 5.0, "trusted_proxies": "192.0.2.1"}
    async with running_app(tmp_path, media=True, **settings) as (client, _):
        await seed(client)
        offer = await viewer_offer()
        statuses = [await post_whep_as(client, offer, f"203.0.113.{i}") for i in range(40)]
        assert statuses.count(429) >= 40 - 15 - 5
