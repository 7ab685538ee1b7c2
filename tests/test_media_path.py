"""Each hall's path on the wall and in /metrics, through a real `lopso serve`: a viewer over
UDP and one over ICE-TCP (media.loadviewer, real ICE/DTLS/SRTP), a real aiortc lecturer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverproc import LopsoServer
from test_attendance_media import go_live, open_page

from media.loadviewer import LoadViewer

pytestmark = pytest.mark.timeout(120)


async def play(
    http: aiohttp.ClientSession, srv: LopsoServer, site: dict[str, Any], transport: str
) -> tuple[LoadViewer, float]:
    viewer = LoadViewer(transport=transport)
    await viewer.start()
    url = f"{srv.url}/whep/{srv.demo['session_id']}/{site['code']}"
    started = time.monotonic()
    await viewer.whep(http, url, site["token"])
    while viewer.counters.packets == 0:
        assert time.monotonic() - started < 20, "no media"
        await asyncio.sleep(0.02)
    return viewer, time.monotonic() - started


def wall_paths(messages: list[dict[str, Any]]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for message in messages:
        if message.get("type") in ("sites", "sites_update"):
            paths.update({s["code"]: s.get("path") for s in message["sites"]})
    return paths


async def metrics(http: aiohttp.ClientSession, srv: LopsoServer) -> dict[tuple[str, str], float]:
    headers = {"Authorization": f"Bearer {srv.admin_token()}"}
    async with http.get(f"{srv.url}/metrics", headers=headers) as reply:
        assert reply.status == 200
        text = await reply.text()
    return {
        (s.name, s.labels.get("path", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "path" in s.labels
    }


async def test_udp_and_tcp_halls_are_told_apart_on_the_wall_and_in_metrics(tmp_path: Path):
    with LopsoServer(tmp_path, demo_sites=2) as srv:
        udp_site, tcp_site = srv.demo["sites"][:2]
        async with aiohttp.ClientSession() as http:
            wall = await open_page(http, srv, srv.demo["moderator"]["token"])
            lecturer = await go_live(http, srv)
            viewers = []
            try:
                udp_viewer, udp_s = await play(http, srv, udp_site, "udp")
                tcp_viewer, tcp_s = await play(http, srv, tcp_site, "tcp")
                viewers = [udp_viewer, tcp_viewer]
                print(f"join to first packet: udp {udp_s:.3f} s, tcp {tcp_s:.3f} s")
                deadline = time.monotonic() + 10
                want = {udp_site["code"]: "udp", tcp_site["code"]: "tcp"}
                while {c: wall_paths(wall.messages).get(c) for c in want} != want:
                    assert time.monotonic() < deadline, wall_paths(wall.messages)
                    await asyncio.sleep(0.1)
                found = await metrics(http, srv)
                assert found[("lopso_viewers_path", "udp")] == 1
                assert found[("lopso_viewers_path", "tcp")] == 1
                assert found[("lopso_viewers_path", "turn")] == 0
                assert found[("lopso_join_seconds_count", "tcp")] == 1
                await tcp_viewer.close()  # its media stops: no path on the wall
                deadline = time.monotonic() + 10
                while wall_paths(wall.messages).get(tcp_site["code"]) is not None:
                    assert time.monotonic() < deadline, wall_paths(wall.messages)
                    await asyncio.sleep(0.1)
            finally:
                for viewer in viewers:
                    await viewer.close()
                await lecturer.close()
                await wall.close()
