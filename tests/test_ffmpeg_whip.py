"""FFmpeg's WHIP muxer (PyAV 18.1, FFmpeg 8.1) publishes to a lecture; an aiortc viewer decodes.

The WHIP endpoint is a tiny aiohttp route calling Lecture.publish, as server/ does.
FFmpeg runs in a child process: its muxer blocks in C while it POSTs and handshakes.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys

import pytest

from media.engine import MediaConfig, MediaEngine
from tests.mediaclip import ecdsa_identity, write_h264_clip
from tests.serverproc import whip_route
from tests.test_lecture import ViewerPeer, assert_clean_increasing, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path.home() / ".cache" / "lopso"


@pytest.fixture
async def whip_server():
    engine = MediaEngine(MediaConfig("127.0.0.1", 0))
    await engine.start()
    lecture = engine.lecture("ffmpeg", video_codec="H264")
    runner, url = await whip_route(lecture, token="secret-token")
    yield lecture, url
    await runner.cleanup()
    await engine.close()


async def run_ffmpeg(*args: str, timeout: float = 25.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.mediaclip",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("identity", ["ffmpeg-default", "ecdsa-p256-files"])
async def test_ffmpeg_whip_publishes_and_viewer_decodes(whip_server, tmp_path, identity):
    """FFmpeg's default identity is an ECDSA P-224 certificate (see media/hooks.py)."""
    lecture, url = whip_server
    CACHE.mkdir(parents=True, exist_ok=True)
    clip = write_h264_clip(CACHE)
    files = [str(p) for p in ecdsa_identity(tmp_path)] if identity == "ecdsa-p256-files" else []
    viewer = ViewerPeer(codec="H264")
    try:
        await viewer.subscribe(lecture)
        code, output = await run_ffmpeg(url, str(clip), "secret-token", *files)
        assert code == 0, output[-2000:]
        assert int(output.strip().splitlines()[-1]) == 120
        await wait_for(lambda: len(viewer.frames) >= 30, timeout=5)
        assert_clean_increasing(viewer.numbers())
        assert lecture.stats().packets_in > 100
    finally:
        await viewer.close()
