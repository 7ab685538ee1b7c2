"""Recordings through a real `lopso serve`: aiortc lecturers publish over WHIP, the class is
recorded on the server's disk, replayed over HTTP with range requests, counted in the ledger;
the origin killed with -9 mid-class keeps what it closed; a full disk alerts the moderators
and the live class goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av
import pytest
from aiortc import RTCSessionDescription

from media.errors import RecordingRefusedError
from media.recorder import Manifest, Recorder, join_segments
from server import auth
from server.models import Role
from tests.mediaclip import read_number
from tests.serverproc import SECRET, LopsoServer
from tests.test_lecture import PublisherPeer

pytestmark = pytest.mark.timeout(300)


async def publish(
    session: aiohttp.ClientSession, srv: LopsoServer, peer: PublisherPeer, takeover: bool = False
) -> str:
    sid = srv.demo["session_id"]
    await peer.pc.setLocalDescription(await peer.pc.createOffer())
    reply = await session.post(
        f"{srv.url}/whip/{sid}" + ("?takeover=1" if takeover else ""),
        data=peer.pc.localDescription.sdp,
        headers={
            "Authorization": f"Bearer {srv.demo['lecturer']['token']}",
            "Content-Type": "application/sdp",
        },
    )
    assert reply.status == 201, await reply.text()
    await peer.pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))
    return reply.headers["Location"]


def decoded_numbers(path: Path) -> tuple[list[tuple[float, int | None]], float]:
    """(pts s, number) of every decoded video frame, and the seconds of audio decoded."""
    video, audio = [], 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                video.append((float(frame.time), read_number(frame)))
            else:
                audio += frame.samples / frame.sample_rate
    return video, audio


def moderator(srv: LopsoServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {srv.token(Role.MODERATOR)}"}


async def test_reconnect_and_switch_make_one_recording_replayed_with_ranges(tmp_path):
    env = {"LOPSO_RECORD_SEGMENT_S": "2", "LOPSO_RECORD_MIN_FREE_MB": "1"}
    with LopsoServer(tmp_path, demo_sites=2, env=env) as srv:
        sid = srv.demo["session_id"]
        site = srv.demo["sites"][0]
        camera, screen, again = PublisherPeer(0), PublisherPeer(20000), PublisherPeer(40000)
        async with aiohttp.ClientSession() as http:
            try:
                await publish(http, srv, camera)
                await asyncio.sleep(6)
                await publish(http, srv, screen, takeover=True)  # camera -> screen
                await asyncio.sleep(6)
                await screen.close()  # the lecturer drops ...
                await camera.close()
                await asyncio.sleep(5)
                await publish(http, srv, again)  # ... and comes back
                await asyncio.sleep(6)
            finally:
                for peer in (camera, screen, again):
                    await peer.close()
            reply = await http.post(f"{srv.url}/api/sessions/{sid}/end", headers=moderator(srv))
            assert reply.status == 200, await reply.text()
            info = await wait_info(http, srv, lambda i: i["state"] == "ended" and i["file"])
            assert 12 <= info["duration_s"] <= 40, info  # a busy machine's publisher lags
            assert info["size_bytes"] > 10_000

            # a site's replay link: the site page in replay mode, the file with ranges
            replay = f"{srv.url}/replay/{sid}/{site['code']}/recording?token={site['token']}"
            whole = await http.get(replay)
            assert whole.status == 200 and whole.content_type == "video/webm"
            body = await whole.read()
            middle = await http.get(replay, headers={"Range": f"bytes={len(body) // 2}-"})
            assert middle.status == 206
            assert await middle.read() == body[len(body) // 2 :]
            page = await http.get(f"{site['url']}&replay=1")
            assert page.status == 200 and "replay" in await page.text()
            bad = await http.get(replay.replace(site["token"], "nope"))
            assert bad.status == 401

            # replay minutes in the ledger and the report
            for _ in range(4):
                reply = await http.post(
                    f"{srv.url}/api/sessions/{sid}/sites/{site['code']}/replay",
                    json={"seconds": 30},
                    headers={"Authorization": f"Bearer {site['token']}"},
                )
                assert reply.status == 201, await reply.text()
            reply = await http.post(
                f"{srv.url}/api/sessions/{sid}/sites/{site['code']}/replay",
                json={"seconds": 9999},
                headers={"Authorization": f"Bearer {site['token']}"},
            )
            assert reply.status == 400
            report = await (
                await http.get(f"{srv.url}/api/sessions/{sid}/attendance", headers=moderator(srv))
            ).json()
            record = next(s for s in report["sites"] if s["code"] == site["code"])
            assert record["replay_minutes"] == 2.0
            assert record["status"] == "replay"
            assert report["province"]["status_counts"]["replay"] == 1
            download = await http.get(
                f"{srv.url}/api/sessions/{sid}/recording/file", headers=moderator(srv)
            )
            assert download.status == 200
            assert "attachment" in download.headers["Content-Disposition"]

        path = tmp_path / "replay.webm"
        path.write_bytes(body)
        video, audio = decoded_numbers(path)
        numbers = [n for _, n in video if n is not None]
        assert len(numbers) >= 0.98 * len(video)  # clean frames, one playable file
        for low in (0, 20000, 40000):  # camera, screen, and the reconnect, in this order
            assert sum(1 for n in numbers if low <= n < low + 20000) >= 60
        assert numbers == sorted(numbers)
        times = [t for t, _ in video]
        assert times == sorted(times)
        gap = max(b - a for a, b in zip(times, times[1:], strict=False))
        assert 3.0 <= gap <= 10.0  # the reconnect is a gap on one timeline
        assert audio >= 0.8 * info["duration_s"] - 5.0


async def wait_info(http, srv, ready, timeout: float = 30.0) -> dict:
    sid = srv.demo["session_id"]
    deadline = time.monotonic() + timeout
    info: dict = {}
    while time.monotonic() < deadline:
        reply = await http.get(f"{srv.url}/api/sessions/{sid}/recording", headers=moderator(srv))
        if reply.status == 200:
            info = await reply.json()
            if ready(info):
                return info
        await asyncio.sleep(0.5)
    raise AssertionError(f"recording not ready: {info}")


async def test_kill_9_of_the_origin_keeps_every_closed_segment(tmp_path):
    env = {"LOPSO_RECORD_SEGMENT_S": "2", "LOPSO_RECORD_MIN_FREE_MB": "1"}
    srv = LopsoServer(tmp_path, demo_sites=1, env=env)
    srv.start()
    sid = srv.demo["session_id"]
    folder = srv.data / "recordings" / sid
    peer = PublisherPeer(0)
    try:
        async with aiohttp.ClientSession() as http:
            await publish(http, srv, peer)
            await asyncio.sleep(14)
        closed = Manifest.load(folder).segments
        srv.kill()
        assert closed, "no segment closed before the crash"
    finally:
        await peer.close()
        srv.stop()
    manifest = Manifest.load(folder)
    assert manifest.state == "recording"  # nobody stopped it
    assert len(manifest.segments) >= len(closed) >= 3
    video, audio = decoded_numbers(join_segments(folder))
    numbers = [n for _, n in video if n is not None]
    assert len(numbers) >= 0.98 * len(video) and len(numbers) >= 30
    assert numbers == sorted(numbers)
    # everything up to the end of the last closed segment plays (a loaded machine's aiortc
    # publisher may send video slower than real time: the sound is the clock here)
    assert audio >= manifest.segments[-1].end - 0.5
    assert manifest.segments[-1].end >= 14 - 2 - 3 - 3  # minus the open segment, hold, start

    # the restarted origin serves the replay of what was kept
    with LopsoServer(tmp_path, demo_sites=0, env=env) as again:
        mod = auth.mint(SECRET.encode(), sid, Role.MODERATOR, ttl_s=600)
        async with aiohttp.ClientSession() as http:
            reply = await http.get(
                f"{again.url}/api/sessions/{sid}/recording/file",
                headers={"Authorization": f"Bearer {mod}"},
            )
            assert reply.status == 200, await reply.text()
            assert len(await reply.read()) > 10_000

    # the organisers' command line
    env_cli = {**os.environ, "LOPSO_SECRET": SECRET}
    listing = subprocess.run(
        [sys.executable, "-m", "server", "recordings", "list", "--data", str(srv.data)],
        capture_output=True,
        text=True,
        env=env_cli,
        check=True,
    )
    (line,) = listing.stdout.strip().splitlines()
    assert json.loads(line)["session_id"] == sid and json.loads(line)["duration_s"] > 5
    out = tmp_path / "export.webm"
    exported = subprocess.run(
        [sys.executable, "-m", "server", "recordings", "export", sid, "--out", str(out)]
        + ["--data", str(srv.data)],
        capture_output=True,
        text=True,
        env=env_cli,
        check=True,
    )
    assert exported.stdout.strip() == str(out)
    assert decoded_numbers(out)[1] > 5
    missing = subprocess.run(
        [sys.executable, "-m", "server", "recordings", "export", "nope", "--data", str(srv.data)],
        capture_output=True,
        text=True,
        env=env_cli,
    )
    assert missing.returncode == 1 and "no recording" in missing.stderr


def test_a_nearly_full_disk_refuses_to_start(tmp_path):
    recorder = Recorder(tmp_path / "r", "VP8", min_free_bytes=1 << 60)
    with pytest.raises(RecordingRefusedError, match="MiB free"):
        recorder.start()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_full_disk_alerts_the_moderators_and_the_class_goes_on(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], check=True)
    try:
        env = {
            "LOPSO_RECORDINGS": str(disk),
            "LOPSO_RECORD_SEGMENT_S": "1",
            "LOPSO_RECORD_MIN_FREE_MB": "0",
        }
        with LopsoServer(tmp_path / "srv", demo_sites=1, env=env) as srv:
            sid = srv.demo["session_id"]
            peer = PublisherPeer(0)
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(
                    f"{srv.url}/ws/{sid}", params={"token": srv.token(Role.MODERATOR)}
                )
                try:
                    await publish(http, srv, peer)
                    alert = await wait_message(ws, "recording", timeout=90)
                    assert alert["problem"] == "disk_full", alert
                    info = await wait_info(http, srv, lambda i: i["state"] == "stopped")
                    assert info["problem"] == "disk_full"
                    # the live class goes on: the lecture still takes packets
                    before = await live_packets(http, srv)
                    await asyncio.sleep(2)
                    assert await live_packets(http, srv) > before
                    assert srv.proc is not None and srv.proc.poll() is None
                finally:
                    await ws.close()
                    await peer.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        shutil.rmtree(disk, ignore_errors=True)


async def wait_message(ws, kind: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        for body in _bodies(json.loads(msg.data)):
            if body.get("type") == kind:
                return body
    raise AssertionError(f"no {kind} message in {timeout}s")


def _bodies(data) -> list[dict]:
    if isinstance(data, list):
        return [b for item in data for b in _bodies(item)]
    if isinstance(data, dict):
        return [data] + [
            b for v in data.values() if isinstance(v, (dict, list)) for b in _bodies(v)
        ]
    return []


async def live_packets(http, srv) -> int:
    reply = await http.get(
        f"{srv.url}/metrics", headers={"Authorization": f"Bearer {srv.admin_token()}"}
    )
    text = await reply.text()
    total = 0
    for line in text.splitlines():
        if line.startswith("lopso_lecture_packets_in"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total
