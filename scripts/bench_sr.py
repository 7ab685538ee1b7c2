#!/usr/bin/env python3
"""Sender-report benchmark: the server's CPU for viewer RTCP, per viewer, per second.

Every second a lecture sends each joined viewer one SR per track (audio, video). The SR is the
same bytes for every viewer of a track, so `Lecture.send_sender_reports` hands it to the
track's fanout (one sendmmsg per 64 viewers, SRTCP per viewer) instead of one
`Endpoint.send_rtcp` per viewer. This measures both ways with N connected viewers
(media.loadviewer.LoadViewer, in a child process, sending receiver reports every second):

- `call`: CPU of one `send_sender_reports` round (both tracks, every viewer) in the server
  process, timed directly, many rounds, both ways interleaved;
- `idle`: the server process's whole CPU over N seconds with no media flowing (viewers'
  RRs in, consent checks, SRs out once a second), with SRs sent per viewer, through the
  fanout, and not at all (the rest of the viewers' RTCP cost).

    python scripts/bench_sr.py --viewers 500
    python scripts/bench_sr.py --viewers 500 --rounds 200 --idle-seconds 8

Results are µs of CPU per viewer per second (SRs go out once a second). Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import sys
import time
from typing import Any

JOIN_WINDOW = 50
IDLE_ROUNDS = 2


class BenchError(Exception):
    """The viewer process failed or did not answer in time."""


# -- viewers (child process) ---------------------------------------------------------------


async def _viewers_main(conn: Any, count: int) -> None:
    from media.loadviewer import LoadViewer

    viewers = [LoadViewer() for _ in range(count)]
    for viewer in viewers:
        await viewer.start()
    conn.send([viewer.offer() for viewer in viewers])
    loop = asyncio.get_running_loop()
    answers = await loop.run_in_executor(None, conn.recv)
    for first in range(0, count, JOIN_WINDOW):
        batch = zip(viewers[first : first + JOIN_WINDOW], answers[first : first + JOIN_WINDOW])
        await asyncio.gather(*(viewer.connect(answer, timeout=30) for viewer, answer in batch))
    conn.send("connected")
    await loop.run_in_executor(None, conn.recv)  # "quit"
    received = sum(v.stats()["rtcp_received"] for v in viewers)
    await asyncio.gather(*(viewer.close() for viewer in viewers))
    conn.send({"rtcp_received": received})


def _viewers_child(conn: Any, count: int) -> None:
    asyncio.run(_viewers_main(conn, count))


# -- server (this process) -----------------------------------------------------------------


def per_viewer_reports(lecture: Any) -> None:
    """The way before: the shared SR sent to each joined viewer by its own endpoint."""
    now = time.time()
    for track in lecture.tracks.values():
        report = track.sender_report(now)
        if report is None:
            continue
        for viewer in track.viewers:
            if viewer.joined:
                viewer.endpoint.send_rtcp(report)


def _start_streams(lecture: Any) -> None:
    """One keyframe and one audio packet (so viewers join) and the publisher's clock."""
    from media.rtcp import ClockMapping

    now = time.time()
    video, audio = lecture.tracks["video"], lecture.tracks["audio"]
    video.on_rtp(2222, True, 1, 90000, bytes([0x10, 0x00, 0x9D, 0x01, 0x2A]) + bytes(800))
    audio.on_rtp(1111, False, 1, 48000, bytes(120))
    video.on_sender_report(ClockMapping(2222, now, 90000, 90000))
    audio.on_sender_report(ClockMapping(1111, now, 48000, 48000))


def _time_calls(lecture: Any, rounds: int) -> dict[str, float]:
    """CPU seconds of `rounds` SR rounds each way (interleaved against drift)."""
    spent = {f"{w}_{k}": 0.0 for w in ("per_viewer", "fanout") for k in ("user", "sys")}
    ways = {
        "per_viewer": lambda: per_viewer_reports(lecture),
        "fanout": lecture.send_sender_reports,
    }
    for _ in range(rounds):
        for name, way in ways.items():
            start = resource.getrusage(resource.RUSAGE_SELF)
            way()
            end = resource.getrusage(resource.RUSAGE_SELF)
            spent[f"{name}_user"] += end.ru_utime - start.ru_utime
            spent[f"{name}_sys"] += end.ru_stime - start.ru_stime
    return spent


async def _drain(seconds: float) -> None:
    await asyncio.sleep(seconds)  # the viewers read what was sent; the server reads their RRs


async def _idle_cpu(way: Any, rounds: int) -> float:
    """The server process's CPU seconds over `rounds` seconds, `way()` sending SRs each one."""
    await asyncio.sleep(0.3)  # settle
    start = time.process_time()
    for _ in range(rounds):
        way()
        await asyncio.sleep(1.0)
    return time.process_time() - start


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from media.engine import MediaConfig, MediaEngine

    engine = MediaEngine(MediaConfig("127.0.0.1", 0))
    await engine.start()
    lecture = engine.lecture("sr-bench", video_codec="VP8")
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_viewers_child, args=(child, args.viewers), daemon=True
    )
    process.start()
    loop = asyncio.get_running_loop()

    async def recv(timeout: float = 120.0) -> Any:
        if not await loop.run_in_executor(None, parent.poll, timeout):
            raise BenchError("the viewer process did not answer in time")
        return parent.recv()

    try:
        offers = await recv()
        answers = [(await lecture.subscribe(offer))[0] for offer in offers]
        parent.send(answers)
        if await recv() != "connected":
            raise BenchError("viewers did not connect")
        await asyncio.sleep(0.5)
        _start_streams(lecture)
        await _drain(0.5)
        joined = {k: len(t.fanout) for k, t in lecture.tracks.items()}
        fanout_way = lecture.send_sender_reports
        spent: dict[str, float] = {}
        for first in range(0, args.rounds, 10):  # in slices, so the viewers keep up
            for name, value in _time_calls(lecture, min(10, args.rounds - first)).items():
                spent[name] = spent.get(name, 0.0) + value
            await _drain(0.05)
        split = {k: 1e6 * v / args.rounds for k, v in spent.items()}
        per_call = {w: split[f"{w}_user"] + split[f"{w}_sys"] for w in ("per_viewer", "fanout")}
        idle_ways = {
            "off": lambda: None,
            "per_viewer": lambda: per_viewer_reports(lecture),
            "fanout": fanout_way,
        }
        idle = dict.fromkeys(idle_ways, 0.0)
        lecture.send_sender_reports = lambda: None  # the report loop sends none: we do
        for _ in range(args.idle_seconds // IDLE_ROUNDS):  # alternated: outside load hits all
            for name, way in idle_ways.items():
                idle[name] += await _idle_cpu(way, IDLE_ROUNDS)
        lecture.send_sender_reports = fanout_way
        parent.send("quit")
        viewers_side = await recv()
    finally:
        await engine.close()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    n = args.viewers
    seconds = args.idle_seconds // IDLE_ROUNDS * IDLE_ROUNDS
    idle_us = {k: 1e6 * v / seconds / n for k, v in idle.items()}
    return {
        "viewers": n,
        "joined": joined,
        "rounds": args.rounds,
        "sr_round_us": {k: round(v, 1) for k, v in per_call.items()},
        "sr_round_us_user_sys": {k: round(v, 1) for k, v in split.items()},
        "sr_us_per_viewer_s": {k: round(v / n, 2) for k, v in per_call.items()},
        "sr_speedup": round(per_call["per_viewer"] / per_call["fanout"], 2),
        "idle_server_us_per_viewer_s": {k: round(v, 1) for k, v in idle_us.items()},
        "idle_seconds": seconds,
        "rtcp_received_by_viewers": viewers_side["rtcp_received"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200, help="timed SR rounds each way")
    parser.add_argument(
        "--idle-seconds", type=int, default=8, help="seconds of each way (alternated in 2 s)"
    )
    args = parser.parse_args(argv)
    if args.viewers < 1 or args.rounds < 1 or args.idle_seconds < IDLE_ROUNDS:
        parser.error("--viewers, --rounds and --idle-seconds must be positive")
    result = asyncio.run(run(args))
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
