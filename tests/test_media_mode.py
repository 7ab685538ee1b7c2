"""The site's media choice (`media_mode` over the WebSocket) reaching its real viewers.

A real aiortc lecturer publishes through WHIP and a real aiortc site viewer watches through
WHEP on the app; the site page's socket sends `media_mode`: audio only stops the viewer's
video RTP while its audio keeps coming, a later viewer of that site starts audio only, and
back to auto the video resumes at a keyframe (every frame after it decodes clean).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from mediaclip import read_number
from serverproc import mint, running_app
from test_api import seed
from test_whip_whep import bearer, offer_of, publish

from server.cluster import NODE_HEADER
from server.models import Role
from tests.clusterproc import LopsoCluster, WhipPublisher


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(tmp_path, media=True, batch_interval_s=0.2) as (client, state):
        await seed(client)
        yield client, state


class SiteViewer:
    """An aiortc WHEP viewer of one site: decoded video frame numbers and audio frame count."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        self.numbers: list[int | None] = []
        self.audio = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.pc.on(
            "track", lambda track: self.tasks.append(asyncio.ensure_future(self._pump(track)))
        )

    async def _pump(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.numbers.append(read_number(frame))
                else:
                    self.audio += 1
        except MediaStreamError:
            pass

    async def view(self, client: Any, site: str, query: str = "") -> None:
        reply = await client.post(
            f"/whep/c1/{site}{query}", data=await offer_of(self.pc), headers=bearer(Role.SITE, site)
        )
        assert reply.status == 201, await reply.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))

    async def view_at(self, http: aiohttp.ClientSession, url: str, token: str) -> str:
        """WHEP through any node of a cluster; the id of the node that serves the viewer."""
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
        async with http.post(url, data=await offer_of(self.pc), headers=headers) as reply:
            body = await reply.text()
            assert reply.status == 201, body
            node = reply.headers.get(NODE_HEADER, "")
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return node

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def reply_of(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next message of type `kind` on a page's socket (others skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads((await ws.receive(timeout=deadline - time.monotonic())).data)
        if message["type"] == kind:
            return message


async def video_packets_pass(state: Any, count: int) -> None:
    """Wait until the lecture forwarded `count` more video packets (aiortc's jitter buffer
    only skips a sequence gap longer than 128 packets, so a pause must outlast that)."""
    track = state.lectures["c1"].tracks["video"]
    start = track.packets
    await wait_for(lambda: track.packets > start + count, timeout=10)


def viewer_of(state: Any, site: str) -> list[Any]:
    return [r.handle for r in state.resources.values() if r.kind == "whep" and r.site == site]


async def test_audio_only_stops_video_keeps_audio_and_auto_resumes_at_a_keyframe(app) -> None:
    client, state = app
    ws = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S1")})
    publisher, _ = await publish(client)
    first, later = SiteViewer(), SiteViewer()
    try:
        await first.view(client, "S1")
        await wait_for(lambda: len(first.numbers) >= 15 and first.audio >= 10, timeout=15)

        await ws.send_json({"type": "media_mode", "mode": "audio_only", "id": "m1"})
        ack = await reply_of(ws, "ack")
        assert ack == {"type": "ack", "id": "m1", "mode": "audio_only", "viewers_here": 1}
        await wait_for(lambda: all(v.stats().video_paused for v in viewer_of(state, "S1")))
        await asyncio.sleep(0.3)  # what was in flight
        frames, audio = len(first.numbers), first.audio
        await video_packets_pass(state, 140)
        assert len(first.numbers) == frames, "video kept arriving after audio only"
        assert first.audio > audio + 30, "audio stopped with the video"

        await ws.send_json({"type": "quality", "rtt_ms": 40, "loss_pct": 0})
        echo = await reply_of(ws, "media_state")
        assert echo == {"type": "media_state", "mode": "audio_only", "video_paused": True}

        await later.view(client, "S1")  # a viewer made after the choice starts audio only
        await wait_for(lambda: later.audio >= 30, timeout=15)
        assert later.numbers == []

        await ws.send_json({"type": "media_mode", "mode": "auto", "id": "m2"})
        assert (await reply_of(ws, "ack"))["mode"] == "auto"
        await wait_for(lambda: len(first.numbers) >= frames + 15, timeout=15)
        resumed = first.numbers[frames:]
        assert None not in resumed, f"a corrupt frame after resuming: {resumed}"  # a keyframe first
        assert resumed == sorted(resumed) and resumed[0] > first.numbers[frames - 1] + 30
        await wait_for(lambda: len(later.numbers) >= 15, timeout=15)  # both viewers of S1
        assert None not in later.numbers
        await ws.send_json({"type": "quality", "rtt_ms": 40})
        assert await reply_of(ws, "media_state") == {
            "type": "media_state",
            "mode": "auto",
            "video_paused": False,
        }
    finally:
        await ws.close()
        await first.close()
        await later.close()
        await publisher.close()


async def test_whep_query_starts_a_viewer_audio_only_and_other_sites_keep_video(app) -> None:
    client, state = app
    publisher, _ = await publish(client)
    chosen, other = SiteViewer(), SiteViewer()
    try:
        await chosen.view(client, "S1", "?media=audio_only")  # the page's choice, any node
        await other.view(client, "S2")
        await wait_for(lambda: chosen.audio >= 30 and len(other.numbers) >= 15, timeout=15)
        assert chosen.numbers == []
        assert [v.stats().video_paused for v in viewer_of(state, "S1")] == [True]
        assert [v.stats().video_paused for v in viewer_of(state, "S2")] == [False]
    finally:
        await chosen.close()
        await other.close()
        await publisher.close()


async def test_media_mode_is_checked_and_only_a_site_may_send_it(app) -> None:
    client, _ = app
    site = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S1")})
    lecturer = await client.ws_connect("/ws/c1", params={"token": mint(Role.LECTURER, "c1")})
    try:
        await site.send_json({"type": "media_mode", "mode": "low", "id": "x"})
        error = await reply_of(site, "error")
        assert (error["id"], error["code"]) == ("x", "bad_field")
        await lecturer.send_json({"type": "media_mode", "mode": "audio_only", "id": "y"})
        error = await reply_of(lecturer, "error")
        assert error["id"] == "y" and error["code"] in ("forbidden", "wrong_role")
    finally:
        await site.close()
        await lecturer.close()


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_in_a_cluster_the_choice_reaches_the_viewer_on_an_edge(tmp_path: Path) -> None:
    """The site page talks to the origin, its viewer sits on the edge: the choice travels on
    the class channel to the edge (which follows the class: another page is connected
    there), and a viewer asked for with ?media=audio_only through the origin starts so."""
    with LopsoCluster(tmp_path, edges=1, sites=2) as cluster:
        demo, sid = cluster.demo, cluster.demo["session_id"]
        origin, edge = cluster.origin.url, cluster.edges[0].url
        one, two = demo["sites"][:2]
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            publisher = WhipPublisher(http)
            await publisher.publish(f"{origin}/whip/{sid}", demo["lecturer"]["token"])
            other_page = await http.ws_connect(f"{edge}/ws/{sid}", params={"token": two["token"]})
            page = await http.ws_connect(f"{origin}/ws/{sid}", params={"token": one["token"]})
            live, later = SiteViewer(), SiteViewer()
            whep = f"{origin}/whep/{sid}/{one['code']}"
            try:
                assert await live.view_at(http, whep, one["token"]) == "edge1"
                await wait_for(lambda: len(live.numbers) >= 15 and live.audio >= 10, timeout=30)

                await page.send_json({"type": "media_mode", "mode": "audio_only", "id": "a"})
                ack = await reply_of(page, "ack", timeout=10)
                assert (ack["mode"], ack["viewers_here"]) == ("audio_only", 0)  # not on the origin
                await asyncio.sleep(1.5)  # the channel's echo, then what was in flight
                frames, audio = len(live.numbers), live.audio
                await asyncio.sleep(6.0)  # longer than aiortc's 128-packet gap at resume
                assert len(live.numbers) == frames, "the edge kept sending video"
                assert live.audio > audio + 100

                node = await later.view_at(http, whep + "?media=audio_only", one["token"])
                assert node == "edge1"
                await wait_for(lambda: later.audio >= 50, timeout=30)
                assert later.numbers == []

                await page.send_json({"type": "media_mode", "mode": "auto", "id": "b"})
                assert (await reply_of(page, "ack", timeout=10))["mode"] == "auto"
                await wait_for(lambda: len(live.numbers) >= frames + 15, timeout=30)
                assert None not in live.numbers[frames:]  # resumed at a keyframe
            except AssertionError:
                print(cluster.logs())
                raise
            finally:
                await page.close()
                await other_page.close()
                await live.close()
                await later.close()
                await publisher.close()
