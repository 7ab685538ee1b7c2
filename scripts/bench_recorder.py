#!/usr/bin/env python3
"""What recording costs per incoming packet: the forwarder's tap plus the writer thread.

A lecture's packets are made first (aiortc's own VP8 and Opus encoders and packetizers:
numbered 640x480 frames with noise at about 1.5 Mbit/s, 30 fps, and 20 ms Opus), then fed
through `Recorder.rtp` as the forwarder does, in real time or as fast as possible (`--fast`).
The process's CPU time (every thread: the tap on this thread, depacketizing and muxing on the
writer's) over the feed and the stop (the open segment closed) is divided by the packets.
Compare with `scripts/bench_fanout.py`'s relay CPU per incoming packet (`relay_cpu_pct`,
`in_pps`): recording one lecture must stay within 5 % of forwarding it.

    python scripts/bench_recorder.py --seconds 20
    python scripts/bench_recorder.py --fast --seconds 60
    python scripts/bench_recorder.py --off --seconds 20     # the feed alone: subtract it

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import pathlib
import resource
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_packets(seconds: float, fps: int = 30) -> list[tuple[float, str, bool, int, bytes]]:
    """(send time, kind, marker, rtp timestamp, payload) of a lecture, in send order."""
    import av
    import numpy as np
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.codecs.vpx import Vp8Encoder

    from tests.mediaclip import number_image

    rng = np.random.default_rng(7)
    noise = [rng.integers(-30, 31, (480, 640, 3), dtype=np.int16) for _ in range(5)]
    video, audio = Vp8Encoder(), OpusEncoder()
    video.target_bitrate = 1_500_000
    out: list[tuple[float, str, bool, int, bytes]] = []
    for n in range(int(seconds * fps)):
        image = number_image(n).repeat(2, axis=0).repeat(2, axis=1).astype(np.int16)
        image = np.clip(image + noise[n % len(noise)], 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        payloads, ts = video.encode(frame, force_keyframe=n == 0)
        for i, payload in enumerate(payloads):
            out.append((n / fps, "video", i == len(payloads) - 1, ts, payload))
    tone = (np.sin(np.arange(960) / 48000 * 2 * np.pi * 440) * 6000).astype(np.int16)
    for k in range(int(seconds * 50)):
        sound = av.AudioFrame.from_ndarray(
            np.repeat(tone[None, :], 2, axis=0).T.reshape(1, -1), format="s16", layout="stereo"
        )
        sound.sample_rate, sound.pts = 48000, k * 960
        sound.time_base = fractions.Fraction(1, 48000)
        payloads, ts = audio.encode(sound)
        for payload in payloads:
            out.append((k / 50, "audio", True, ts, payload))
    out.sort(key=lambda p: p[0])
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    from media.recorder import Recorder
    from media.rtcp import ClockMapping

    packets = make_packets(args.seconds)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="lopso-bench-rec-"))
    recorder = Recorder(folder, "VP8")
    recorder.start()
    recorder.active = not args.off  # off: the same feed, the tap refusing (the baseline)
    start_wall = time.time()
    for kind, rate, ssrc in (("audio", 48000, 1), ("video", 90000, 2)):
        first = next(p for p in packets if p[1] == kind)
        recorder.sender_report(kind, ClockMapping(ssrc, start_wall, first[3], rate))
    seqs = {"audio": 0, "video": 0}
    cpu0, t0 = cpu_seconds(), time.monotonic()
    for at, kind, marker, ts, payload in packets:
        if not args.fast:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        seqs[kind] = (seqs[kind] + 1) & 0xFFFF
        recorder.rtp(kind, 1 if kind == "audio" else 2, marker, seqs[kind], ts, payload)
    manifest = await recorder.stop()
    cpu = cpu_seconds() - cpu0
    wall = time.monotonic() - t0
    payload_bytes = sum(len(p[4]) for p in packets)
    return {
        "packets": len(packets),
        "seconds": args.seconds,
        "in_pps": round(len(packets) / args.seconds, 1),
        "in_kbps": round(8 * payload_bytes / args.seconds / 1000, 1),
        "realtime": not args.fast,
        "recording": not args.off,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 2),
        "cpu_us_per_in_packet": round(1e6 * cpu / len(packets), 2),
        "cpu_pct_of_one_core": round(100 * cpu / args.seconds, 2),
        "segments": len(manifest.segments),
        "recorded_s": round(manifest.duration, 2),
        "bytes": manifest.size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="recording cost per incoming packet")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fast", action="store_true", help="feed as fast as possible")
    parser.add_argument("--off", action="store_true", help="baseline: the feed, no recording")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
