"""Attendance from media, end to end: a real `lopso serve`, a real lecturer (aiortc), real
viewers (media.loadviewer) and site pages on WebSockets.

Before: a site counted as connected while its page's WebSocket was open, so a hall whose page
sat on "Đang kết nối…" with no media all class was reported present; a viewer that vanished
counted as long as its page stayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from mediaclip import NumberedVideoTrack, ToneAudioTrack
from serverproc import LopsoServer

from media.loadviewer import LoadViewer

SILENCE_S = 2.0  # LOPSO_MEDIA_SILENCE for this server
pytestmark = pytest.mark.timeout(120)


class Page:
    """A site's page: its WebSocket, every message it got, a status it reports."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.messages.append(message.json())

    async def wait_for(self, kind: str, timeout: float = 30.0, **fields: Any) -> None:
        deadline = time.monotonic() + timeout
        while not any(
            m.get("type") == kind and all(m.get(k) == v for k, v in fields.items())
            for m in self.messages
        ):
            assert time.monotonic() < deadline, f"no {kind} {fields}: {self.messages[-5:]}"
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def open_page(http: aiohttp.ClientSession, srv: LopsoServer, token: str) -> Page:
    ws = await http.ws_connect(
        f"{srv.url}/ws/{srv.demo['session_id']}", params={"token": token}, heartbeat=5
    )
    page = Page(ws)
    await page.wait_for("welcome")
    return page


async def go_live(http: aiohttp.ClientSession, srv: LopsoServer) -> RTCPeerConnection:
    pc = RTCPeerConnection()
    pc.addTrack(ToneAudioTrack())
    pc.addTrack(NumberedVideoTrack())
    await pc.setLocalDescription(await pc.createOffer())
    headers = {
        "Authorization": f"Bearer {srv.demo['lecturer']['token']}",
        "Content-Type": "application/sdp",
    }
    url = f"{srv.url}/whip/{srv.demo['session_id']}"
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as reply:
        assert reply.status == 201, await reply.text()
        answer = await reply.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc


async def play(http: aiohttp.ClientSession, srv: LopsoServer, site: dict[str, Any]) -> LoadViewer:
    viewer = LoadViewer()
    await viewer.start()
    url = f"{srv.url}/whep/{srv.demo['session_id']}/{site['code']}"
    await viewer.whep(http, url, site["token"])
    return viewer


async def attendance(http: aiohttp.ClientSession, srv: LopsoServer) -> dict[str, Any]:
    url = f"{srv.url}/api/sessions/{srv.demo['session_id']}/attendance"
    headers = {"Authorization": f"Bearer {srv.demo['moderator']['token']}"}
    async with http.get(url, headers=headers) as reply:
        assert reply.status == 200, await reply.text()
        data: dict[str, Any] = await reply.json()
    return {s["code"]: s for s in data["sites"]} | {"": data}


def epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_page_without_media_is_page_only_and_media_time_is_attendance(tmp_path: Path):
    """(b) hall A's page is open all class and never gets media: "page open, no media";
    hall B plays through a real viewer: present, connected for as long as its media flowed.
    (c) hall C's viewer vanishes (no DELETE, no close_notify, its page stays): its interval
    closes within the media silence timeout, at about when it was last heard."""
    env = {"LOPSO_MEDIA_SILENCE": str(SILENCE_S)}
    with LopsoServer(tmp_path, demo_sites=3, env=env) as srv:
        a, b, c = srv.demo["sites"][:3]
        async with aiohttp.ClientSession() as http:
            pages = [await open_page(http, srv, site["token"]) for site in (a, b, c)]
            await pages[0].ws.send_json({"type": "status", "state": "connecting"})
            lecturer = await go_live(http, srv)
            try:
                await pages[1].wait_for("live", live=True)
                c_viewer = await play(http, srv, c)
                b_viewer = await play(http, srv, b)
                b_up = time.time()
                await asyncio.sleep(3)
                await c_viewer.vanish()
                c_gone = time.time()
                deadline = c_gone + SILENCE_S + 4.0  # silence + the 1 s check + slack
                while True:
                    c_rec = (await attendance(http, srv))[c["code"]]
                    if c_rec["intervals"] and not c_rec["intervals"][-1]["open"]:
                        break
                    assert time.time() < deadline, f"C's media never stopped: {c_rec}"
                    await asyncio.sleep(0.2)
                assert time.time() - c_gone <= SILENCE_S + 4.0
                assert c_rec["page_open_now"] and not c_rec["connected_now"]
                c_end = epoch(c_rec["intervals"][-1]["end"])
                assert c_gone - 1.5 <= c_end <= c_gone + 0.5  # when it was last heard
                await asyncio.sleep(4)
                end_url = f"{srv.url}/api/sessions/{srv.demo['session_id']}/end"
                headers = {"Authorization": f"Bearer {srv.demo['moderator']['token']}"}
                async with http.post(end_url, headers=headers) as reply:
                    assert reply.status == 200, await reply.text()
                b_down = time.time()
                await pages[1].wait_for("class_ended")
                await b_viewer.close()
            finally:
                await lecturer.close()
            await asyncio.sleep(1)
            report = await attendance(http, srv)
            for page in pages:
                await page.close()
    site_a, site_b, site_c = report[a["code"]], report[b["code"]], report[c["code"]]
    window = report[""]["window"]
    assert site_a["status"] == "page_only", site_a
    assert site_a["basis"] == "media" and site_a["intervals"] == []
    assert site_a["connected_seconds"] == 0 and site_a["connected_pct"] == 0
    assert site_a["page_pct"] > 99, site_a
    assert site_b["status"] == "present", site_b
    media_s = b_down - b_up
    assert site_b["connected_seconds"] == pytest.approx(media_s, abs=1.5), (site_b, window)
    assert len(site_b["intervals"]) == 1
    assert site_c["status"] in ("page_only", "absent"), site_c
    assert site_c["connected_seconds"] == pytest.approx(3, abs=1.5), site_c
    assert report[""]["province"]["status_counts"]["page_only"] >= 1
