"""Rural links: a real aiortc viewer behind scripts/impair.py (delay, jitter, loss, rate, outage).

The viewer's answer has its candidate rewritten to the relay, so everything between the viewer
and the one media socket crosses the impaired link; the publisher is on a clean link. Video is
the numbered test pattern with light noise on top (so the encoder really spends its bitrate);
a frame that does not read back as a clean number is a corrupt frame.
"""

from __future__ import annotations

import asyncio
import fractions
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
from aiortc import RTCSessionDescription
from av import VideoFrame

from media.congestion import VideoGate
from media.engine import MediaConfig, MediaEngine
from tests.mediaclip import NumberedVideoTrack
from tests.test_lecture import PublisherPeer, ViewerPeer, assert_clean_increasing, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_impair():
    spec = importlib.util.spec_from_file_location("lopso_script_impair", ROOT / "scripts/impair.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


impair = _load_impair()


class NoisyNumberedTrack(NumberedVideoTrack):
    """Numbered frames with +/-24 of noise: still readable, but costly to encode."""

    def __init__(self, offset: int = 0) -> None:
        super().__init__(offset)
        self.rng = np.random.default_rng(7)

    async def recv(self) -> VideoFrame:
        frame = await super().recv()
        image = frame.to_ndarray(format="rgb24").astype(np.int16)
        image += self.rng.integers(-24, 25, size=image.shape[:2], dtype=np.int16)[..., None]
        noisy = VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
        noisy.pts, noisy.time_base = frame.pts, frame.time_base or fractions.Fraction(1, 90000)
        return noisy


class NoisyPublisher(PublisherPeer):
    """A publisher whose video track is the noisy numbered pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.video_sender.replaceTrack(NoisyNumberedTrack())


class RuralViewer(ViewerPeer):
    """An aiortc viewer whose whole path to the media socket crosses an ImpairRelay."""

    def __init__(self, engine: MediaEngine, down, up=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.relay = impair.ImpairRelay(("127.0.0.1", engine.port), down, up, seed=1)
        self.engine = engine

    async def subscribe(self, lecture):
        await self.relay.start()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer, viewer = await lecture.subscribe(self.pc.localDescription.sdp)
        relay_port = self.relay.address[1]
        direct = f" 127.0.0.1 {self.engine.port} typ host"
        assert direct in answer
        answer = answer.replace(direct, f" 127.0.0.1 {relay_port} typ host")
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return viewer

    async def close(self) -> None:
        await super().close()
        self.relay.close()


def frames_since(viewer: ViewerPeer, since: float) -> list[int | None]:
    return [n for t, n in viewer.frames if t >= since]


async def test_relay_delays_drops_and_limits_rate():
    """The relay itself: measured delay, loss fraction and rate are what was asked."""
    received: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            received.append((loop.time(), data))

    server, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    target = server.get_extra_info("sockname")
    relay = impair.ImpairRelay(target, impair.Impairment(delay_ms=60, loss=0.2), seed=3)
    await relay.start()
    client, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=relay.address
    )
    try:
        sent_at = loop.time()
        for i in range(500):
            client.sendto(i.to_bytes(4, "big") + bytes(96))
            if i % 10 == 9:
                await asyncio.sleep(0.002)  # socket buffers hold ~250 small datagrams
        await asyncio.sleep(0.3)
        up = relay.stats()["up"]
        assert up["packets_in"] >= 0.9 * 500  # (a loaded machine's buffers may drop a few)
        assert 0.12 < up["lost"] / up["packets_in"] < 0.28  # ~20 % lost
        assert up["lost"] + up["delivered"] == up["packets_in"]
        assert 0.9 * up["delivered"] <= len(received) <= up["delivered"]
        assert received[0][0] - sent_at >= 0.055
        # now rate-limited: 200 kbit/s, 300 ms queue -> ~7.5 kB pass at once, the rest drops
        relay.up.impairment = impair.Impairment(rate_kbps=200, queue_ms=300)
        received.clear()
        start = loop.time()
        for i in range(200):
            client.sendto(bytes(1000))
            if i % 50 == 49:
                await asyncio.sleep(0.005)
        sending = loop.time() - start
        await asyncio.sleep(0.5)
        # the queue holds ~7.5 packets; while a loaded machine stretches the sending loop,
        # the link drains one 1,000-byte packet per 40 ms more
        most = 10 + int(sending / 0.040)
        assert 6 <= len(received) <= most, (len(received), sending)
        span = received[-1][0] - start
        assert span >= 0.25  # serialised at 200 kbit/s: 8 kbit per 40 ms
        assert relay.stats()["up"]["queue_drops"] >= 200 - most
    finally:
        client.close()
        relay.close()
        server.close()


async def test_250ms_rtt_3_percent_loss_20ms_jitter_decodes_clean(engine):
    lecture = engine.lecture("rural", video_codec="VP8")
    link = impair.Impairment(delay_ms=125, jitter_ms=20, loss=0.03)
    publisher, viewer = NoisyPublisher(), RuralViewer(engine, link)
    try:
        await publisher.publish(lecture)
        session = await viewer.subscribe(lecture)
        await wait_for(lambda: len(viewer.frames) >= 150, timeout=15)
        numbers = viewer.numbers()
        assert_clean_increasing(numbers)
        stats, relay = session.stats(), viewer.relay.stats()
        assert relay["down"]["lost"] >= 10  # (the few upstream packets may all get through)
        assert stats.nacks > 0 and stats.retransmits > 0
        assert stats.rtt_ms is not None and 200 < stats.rtt_ms < 600, stats.rtt_ms
        skipped = numbers[-1] - numbers[0] + 1 - len(numbers)
        print(
            f"\nrural 250ms/3%/20ms: {len(numbers)} frames, {skipped} skipped, "
            f"nacks={stats.nacks} rtx={stats.retransmits} plis={stats.plis} "
            f"rtt={stats.rtt_ms:.0f}ms relay={relay}"
        )
    finally:
        await viewer.close()
        await publisher.close()


async def test_link_slower_than_the_lecture_falls_back_to_clean_audio(engine):
    """300 kbit/s for a ~600 kbit/s lecture: RTX stays bounded, video pauses, audio flows."""
    lecture = engine.lecture("slow", video_codec="VP8")
    slow_link = impair.Impairment(delay_ms=40, rate_kbps=300, queue_ms=300)
    publisher = NoisyPublisher()
    slow, fast = RuralViewer(engine, slow_link), ViewerPeer()
    try:
        await publisher.publish(lecture)
        slow_session = await slow.subscribe(lecture)
        await fast.subscribe(lecture)
        start = time.monotonic()
        await wait_for(lambda: slow_session.stats().video_paused, timeout=12)
        paused_after = time.monotonic() - start
        congested = slow.relay.stats()["down"]
        await asyncio.sleep(0.5)  # the bottleneck queue drains
        audio_before, drops_before = slow.audio_frames, slow.relay.stats()["down"]["queue_drops"]
        await asyncio.sleep(3)
        audio = slow.audio_frames - audio_before
        stats, relay = slow_session.stats(), slow.relay.stats()
        lecture_kbps = 8 * lecture.stats().bytes_in / 1000 / (time.monotonic() - start)
        print(
            f"\nslow link: lecture ~{lecture_kbps:.0f} kbit/s; video paused after "
            f"{paused_after:.1f} s; slow viewer {len(slow.frames)} frames "
            f"({sum(1 for n in slow.numbers() if n is None)} corrupt) then audio only: "
            f"{audio} audio frames in 3 s; fast viewer {len(fast.frames)} frames; {stats}; "
            f"relay down at pause {congested}"
        )
        assert lecture_kbps > 400  # the lecture really is faster than the link
        assert audio >= 100  # ~150 expected (20 ms frames): audio flows once video is off
        assert relay["down"]["queue_drops"] == drops_before  # nothing queues up any more
        assert stats.video_paused and stats.video_pauses == 1
        assert stats.retransmits <= 0.5 * stats.packets_sent + 64  # RTX budget held
        assert None not in slow.numbers()  # a frozen last frame, never a corrupt one
        assert_clean_increasing(fast.numbers())  # the server serves everyone else as before
        assert len(fast.frames) >= 20 * (time.monotonic() - start - 1)
        assert congested["max_backlog_ms"] <= 300
    finally:
        await slow.close()
        await fast.close()
        await publisher.close()


async def test_five_second_outage_recovers_at_a_keyframe_without_renegotiation(engine):
    lecture = engine.lecture("outage", video_codec="VP8")
    publisher = NoisyPublisher()
    viewer = RuralViewer(engine, impair.Impairment(delay_ms=30, jitter_ms=5, loss=0.01))
    try:
        await publisher.publish(lecture)
        session = await viewer.subscribe(lecture)
        await wait_for(lambda: len(viewer.frames) >= 30, timeout=10)
        plis_before = session.stats().plis
        viewer.relay.dark = True
        await asyncio.sleep(5)
        assert session.stats().video_paused  # no RTCP for 3 s: no video into a dead link
        sent_dark = session.stats().packets_sent
        await asyncio.sleep(0.01)
        last_before = viewer.numbers()[-1]
        viewer.relay.dark = False
        back = time.monotonic()
        await wait_for(lambda: len(frames_since(viewer, back)) >= 30, timeout=8)
        first = next(t for t, _ in viewer.frames if t >= back)
        after = frames_since(viewer, back)
        stats = session.stats()
        print(
            f"\noutage 5 s: first frame {first - back:.2f} s after the link came back; "
            f"frames {last_before} -> {after[0]}; plis {stats.plis - plis_before}; {stats}"
        )
        assert_clean_increasing(viewer.numbers())  # no corrupt frame across the outage
        assert after[0] - last_before >= 5 * 30 * 0.8  # live again, not replaying the gap
        assert first - back < 5.0  # ~2.7 s measured: next RTCP (<= 1.5 s), then a keyframe
        assert stats.state == "connected" and viewer.pc.connectionState == "connected"
        assert viewer.pc.signalingState == "stable" and not stats.video_paused
        assert len(lecture.viewers) == 1 and lecture.stats().publishers == 1
        assert sent_dark < stats.packets_sent
    finally:
        await viewer.close()
        await publisher.close()


async def test_audio_only_choice_stops_video_and_back_resumes_at_a_keyframe(engine):
    lecture = engine.lecture("audio-only", video_codec="VP8")
    publisher, viewer = NoisyPublisher(), ViewerPeer()
    try:
        await publisher.publish(lecture)
        session = await viewer.subscribe(lecture)
        await wait_for(lambda: len(viewer.frames) >= 15)
        session.set_audio_only(True)
        await asyncio.sleep(0.3)  # what was in flight
        frames, audio, sent = len(viewer.frames), viewer.audio_frames, lecture.tracks["video"]
        # aiortc's jitter buffer (unlike a browser's) waits for a seq gap shorter than its 128
        # packets to fill; we never resend from before a keyframe, so pause for longer
        start = sent.packets
        await wait_for(lambda: sent.packets > start + 140, timeout=8)
        assert len(viewer.frames) == frames and viewer.audio_frames > audio + 30
        assert session.stats().video_paused
        session.set_audio_only(False)
        await wait_for(lambda: len(viewer.frames) >= frames + 15)
        assert_clean_increasing(viewer.numbers())
        assert not session.stats().video_paused
    finally:
        await viewer.close()
        await publisher.close()


def test_impair_runs_from_the_command_line_and_prints_its_counters():
    argv = [
        sys.executable,
        str(ROOT / "scripts/impair.py"),
        "--to",
        "127.0.0.1:9",
        "--delay-ms",
        "50",
        "--loss",
        "0.1",
        "--rate-kbps",
        "800",
        "--seconds",
        "0.5",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("listening 127.0.0.1:")
    assert json.loads(lines[-1])["down"]["packets_in"] == 0
    bad = subprocess.run(
        [*argv[:2], "--to", "nowhere"], capture_output=True, text=True, timeout=30, check=False
    )
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


async def test_relay_link_with_25_percent_loss_is_never_paused(engine):
    """An edge pulls the lecture over a link losing 25 % each way: its receiver reports say a
    site viewer's video would pause (VideoGate), yet the relay link's video never does
    (hundreds of sites behind it would go black) and the edge's site keeps decoding."""
    edge_engine = MediaEngine(MediaConfig("127.0.0.1", 0))
    await edge_engine.start()
    origin = engine.lecture("relay-loss", video_codec="VP8")
    edge = edge_engine.lecture("relay-loss", video_codec="VP8")
    lossy = impair.Impairment(delay_ms=5, loss=0.25)
    link_relay = impair.ImpairRelay(("127.0.0.1", engine.port), lossy, seed=2)
    publisher, site = NoisyPublisher(), ViewerPeer()
    links = []

    async def signal(offer: str) -> str:
        answer, link = await origin.subscribe(offer, relay=True)
        links.append(link)
        direct = f" 127.0.0.1 {engine.port} typ host"
        return answer.replace(direct, f" 127.0.0.1 {link_relay.address[1]} typ host")

    try:
        await link_relay.start()
        await site.subscribe(edge)
        await publisher.publish(origin)
        await edge.relay_from(signal)
        await wait_for(lambda: len(site.frames) >= 15, timeout=15)
        link = links[0]
        reports: dict[int, float] = {}  # the link's video receiver reports, by identity
        windows = []
        for _ in range(5):  # 10 s: an ordinary viewer pauses after a 2 s grace + 3 reports
            before = len(site.frames)
            for _ in range(40):
                await asyncio.sleep(0.05)
                report = link.reports.get("video")
                if report is not None:
                    reports.setdefault(id(report), report.fraction_lost)
            windows.append(len(site.frames) - before)
        stats, lossed = link.stats(), link_relay.stats()
        gate = VideoGate()  # what decides for a site viewer
        fractions = sorted(reports.values())
        median_loss = fractions[len(fractions) // 2] if fractions else 0.0
        corrupt = sum(1 for n in site.numbers() if n is None)
        print(
            f"\nrelay link 25 % loss: site frames per 2 s {windows} ({corrupt} corrupt); "
            f"video loss reported {[round(f, 2) for f in reports.values()]}; link {stats}; "
            f"relay {lossed}"
        )
        assert 0.2 < lossed["down"]["lost"] / lossed["down"]["packets_in"] < 0.3
        # the link's typical report is at the loss that pauses an ordinary viewer's video
        # (three such reports in a row do; whether three land in a row is chance) ...
        assert len(fractions) >= 3 and median_loss >= gate.loss, fractions
        assert not stats.video_paused and stats.video_pauses == 0  # ... never a relay link's
        assert link.tracks["video"].joined and stats.retransmits > 0.1 * stats.packets_sent
        assert all(n >= 10 for n in windows), windows  # ~30 fps published: video keeps going
    finally:
        await site.close()
        await publisher.close()
        link_relay.close()
        await edge_engine.close()
