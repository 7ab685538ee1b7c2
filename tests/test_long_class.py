"""A class lasts hours, tried in compressed time: every 16- and 32-bit counter on the media path
is driven past its wrap with real peers, and a publisher that answers no consent checks stays.

- FFmpeg's WHIP muxer publishes a noisy H264 clip at a high packet rate for longer than 90 s
  (aioice once dropped it after ~30 s) and past 65,536 packets from its start twice (forwarding
  once stopped 32,768 packets in). An aiortc viewer on the origin receives every packet, one
  behind a relay link (origin -> edge, as in a cluster) decodes to the end, and a third spends
  more than 32,768 video packets on audio only and must get its picture back (its SRTP index
  estimate must survive the gap). The origin's outgoing numbers are pinned just below their
  wrap points so they wrap within seconds as well.
- An aiortc publisher whose own sequence numbers and timestamps start just below their wrap
  points plays frame-exact to a viewer.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import time

import aiortc.rtcrtpsender
import pytest

from media import rtp
from media.engine import MediaConfig, MediaEngine
from tests.mediaclip import write_noisy_h264_clip
from tests.serverproc import whip_route
from tests.test_lecture import PublisherPeer, ViewerPeer, assert_clean_increasing, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path.home() / ".cache" / "lopso"
KBPS = int(os.environ.get("LOPSO_LONG_KBPS", "10000"))  # ~930 packets/s
MIN_SECONDS = 90.0  # aioice dropped a publisher answering no consent checks after ~30 s
PACKETS = 2 * 65536 + 5000  # the publisher's and the origin's numbers wrap twice
TIMEOUT = 420.0
PINNED_SEQ = 65536 - 300
PINNED_TS = (1 << 32) - 90000 * 3  # wraps 3 s of video in


@pytest.fixture
async def origin_and_edge():
    """Two media engines in one process: an origin lecture, and an edge pulling it."""
    origin_engine = MediaEngine(MediaConfig("127.0.0.1", 0))
    edge_engine = MediaEngine(MediaConfig("127.0.0.1", 0))
    await origin_engine.start()
    await edge_engine.start()
    origin = origin_engine.lecture("long", video_codec="H264")
    edge = edge_engine.lecture("long", video_codec="H264")
    for track in origin.tracks.values():
        track.munger.last_seq, track.munger.last_ts = PINNED_SEQ, PINNED_TS
    try:
        yield origin, edge
    finally:
        await edge_engine.close()
        await origin_engine.close()


async def relay(edge, origin) -> None:
    async def signal(offer: str) -> str:
        answer, _viewer = await origin.subscribe(offer, relay=True)
        return answer

    await edge.relay_from(signal)


def progress(origin, edge, viewers: tuple[ViewerPeer, ...]) -> str:
    stats = origin.stats()
    frames = [(len(v.frames), v.numbers().count(None)) for v in viewers]
    return (
        f"in {stats.packets_in} ({stats.in_packets_per_s:.0f}/s) live {stats.live} "
        f"forwarded {origin.tracks['video'].packets} relayed {edge.tracks['video'].packets} "
        f"frames (decoded, corrupt) {frames}"
    )


def frames_since(viewer: ViewerPeer, t: float) -> int:
    return sum(1 for at, _ in viewer.frames if at >= t)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 60)
async def test_ffmpeg_class_runs_past_every_wrap(origin_and_edge):
    origin, edge = origin_and_edge
    CACHE.mkdir(parents=True, exist_ok=True)
    clip = write_noisy_h264_clip(CACHE, KBPS)
    runner, url = await whip_route(origin)
    # The origin's own viewer counts packets (aiortc's receive path, SRTP included, no decoder:
    # this machine decodes two 10 Mbit/s streams, not three); the other two decode every frame.
    direct = ViewerPeer(decode=False, codec="H264")
    behind_relay, audio_first = (ViewerPeer(codec="H264", crop=True) for _ in range(2))
    # Without the congestion gate (relay=True): what this test watches is the numbers, and a
    # busy test machine losing packets at a Python viewer's socket must not pause its video.
    await direct.subscribe(origin, relay=True)
    await behind_relay.subscribe(edge, relay=True)
    viewers = (behind_relay, audio_first)
    paused = await audio_first.subscribe(origin)
    ffmpeg = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.mediaclip", url, str(clip), "token"),
        *("--seconds", str(TIMEOUT)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )

    async def publish_until(done) -> None:
        while not done():
            assert time.monotonic() - started < TIMEOUT, progress(origin, edge, viewers)
            assert ffmpeg.returncode is None, progress(origin, edge, viewers)
            await asyncio.sleep(1.0)
            print(progress(origin, edge, viewers))  # shown when the test fails

    try:
        await wait_for(lambda: origin.stats().live, timeout=15)
        started = time.monotonic()
        await relay(edge, origin)
        video, relayed = origin.tracks["video"], edge.tracks["video"]
        await publish_until(lambda: len(audio_first.frames) >= 30)
        paused.set_audio_only(True)  # after its SRTP state has seen the stream
        mark = video.packets
        # more than 32,768 video packets go by while the third viewer hears audio only
        await publish_until(lambda: video.packets > mark + 40_000)
        paused.set_audio_only(False)
        resumed = time.monotonic()
        await publish_until(
            lambda: (
                min(video.packets, relayed.packets) > PACKETS
                and time.monotonic() - started > MIN_SECONDS
            )
        )
        await asyncio.sleep(1.0)  # frames in flight reach the decoders
        ended = time.monotonic()
        assert ffmpeg.returncode is None, "FFmpeg's publish ended early"
        assert origin.stats().live and origin.stats().publishers == 1
        assert origin.stats().packets_in > PACKETS  # the publisher's own numbers wrapped twice
        assert video.dropped == 0 and relayed.dropped == 0
        seqs = [seq for ssrc, seq, _ in direct.packets if ssrc == video.ssrc]
        first = highest = seqs[0]
        received = set()
        for seq in seqs:  # extended sequence numbers (RFC 3550 A.1), retransmissions included
            extended = highest + rtp.seq_diff(seq, highest & 0xFFFF)
            highest = max(highest, extended)
            received.add(extended)
        assert highest - first > PACKETS  # past two wraps of the outgoing numbers
        assert len(received) >= 0.99 * (highest - first + 1)  # and (nearly) every packet
        seconds = ended - started
        for viewer in viewers:
            numbers = viewer.numbers()
            assert numbers.count(None) <= 0.01 * len(numbers), "corrupt frames"
            assert frames_since(viewer, ended - 5) >= 100  # still decoding at the very end
        assert len(behind_relay.frames) >= 0.9 * 30 * seconds, (len(behind_relay.frames), seconds)
        assert frames_since(audio_first, resumed) >= 0.8 * 30 * (ended - resumed - 3)
    finally:
        if ffmpeg.returncode is None:
            ffmpeg.kill()
            await ffmpeg.wait()
        for viewer in (direct, *viewers):
            await viewer.close()
        await runner.cleanup()


async def test_publisher_numbers_starting_at_their_wrap_points(engine, monkeypatch):
    """aiortc's random start of a sender's sequence number and timestamp, pinned just below
    the wrap: the publisher's seq wraps ~1 s in, its video timestamp ~2 s in; the viewer's
    outgoing stream (pinned too) wraps as well, and every frame arrives clean and in order."""
    monkeypatch.setattr(aiortc.rtcrtpsender, "random_sequence_number", lambda: 65536 - 40)
    random32 = aiortc.rtcrtpsender.random32

    def timestamp_origin() -> int:  # random32 also draws SSRCs: pin only the RTP loop's call
        if sys._getframe(1).f_code.co_name == "_run_rtp":
            return (1 << 32) - 180_000
        return random32()

    monkeypatch.setattr(aiortc.rtcrtpsender, "random32", timestamp_origin)
    lecture = engine.lecture("wrap-start", video_codec="VP8")
    for track in lecture.tracks.values():
        track.munger.last_seq, track.munger.last_ts = 65536 - 20, (1 << 32) - 100_000
    viewer = ViewerPeer()
    publisher = PublisherPeer()
    await viewer.subscribe(lecture)
    try:
        await publisher.publish(lecture)
        await wait_for(lambda: len(viewer.frames) >= 150, timeout=20)
        numbers = viewer.numbers()
        assert_clean_increasing(numbers)
        assert numbers[-1] - numbers[0] + 1 - len(numbers) <= 3
        assert viewer.audio_frames > 100
        video = lecture.tracks["video"]
        assert video.dropped == 0 and video.munger.last_seq < 65536 - 20  # wrapped
    finally:
        await publisher.close()
        await viewer.close()
