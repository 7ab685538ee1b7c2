#!/usr/bin/env python3
"""Micro-benchmark of the fan-out path: one MediaSocket, N viewers, one RTP stream.

The sending process owns a MediaSocket with N endpoints in one Fanout; N LoadViewers (full
ICE + DTLS + SRTP, counting packets) run in a child process. After every viewer connected, the
sender sends `--pps` packets per second of `--size` bytes for `--seconds`, and reports its own
CPU time (user + sys, getrusage) per forwarded copy. The window includes everything the sending
process does meanwhile (timers, RTCP and consent checks from N viewers), not only Fanout.send.
On loopback the sender's sys time also pays for delivering each datagram to the receiving
socket, which a NIC would do elsewhere, so the figure errs on the high side.

    python scripts/bench_send.py --viewers 100 --pps 200 --seconds 5
    python scripts/bench_send.py --viewers 100 --slow        # pylibsrtp Session fallback
    python scripts/bench_send.py --viewers 100 --profile     # cProfile of the send window
    python scripts/bench_send.py --viewers 200 --idle 10     # + CPU of idle viewers

Besides the send window it reports the sender's CPU per connected viewer (ICE, DTLS handshake,
SRTP setup; SDP and lecture bookkeeping are not part of this benchmark) and, with `--idle`,
the CPU per viewer per second while nothing is sent (consent checks, receiver reports).

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import multiprocessing
import pstats
import resource
import struct
import sys
import time

from media.endpoint import MediaSocket


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def viewer_process(conn, count: int, decrypt: bool) -> None:
    """Child: N load viewers; answers the parent's requests over `conn`."""
    asyncio.run(_viewers(conn, count, decrypt))


async def _viewers(conn, count: int, decrypt: bool) -> None:
    from media.dtls import DtlsIdentity
    from media.loadviewer import LoadViewer, RemoteParams

    identity = DtlsIdentity()
    viewers = [LoadViewer(identity=identity, decrypt=decrypt) for _ in range(count)]
    for v in viewers:
        await v.start()
    conn.send([(v.ufrag, v.pwd, v.identity.fingerprint) for v in viewers])
    loop = asyncio.get_running_loop()
    answers = await loop.run_in_executor(None, conn.recv)
    await asyncio.gather(
        *(
            v.connect(RemoteParams(a[0], a[1], tuple(a[2]), a[3], tuple(a[4])), timeout=30)
            for v, a in zip(viewers, answers)
        )
    )
    conn.send("connected")
    await loop.run_in_executor(None, conn.recv)  # "report"
    await asyncio.sleep(0.3)  # let the last packets land
    stats = [v.stats() for v in viewers]
    conn.send(
        {
            "packets": sum(s["packets"] for s in stats),
            "lost": sum(s["lost"] for s in stats),
            "srtp_errors": sum(s["srtp_errors"] for s in stats),
            "min_packets": min(s["packets"] for s in stats),
        }
    )
    for v in viewers:
        await v.close()


def rtp_packet(seq: int, size: int) -> bytearray:
    header = struct.pack(
        "!BBHII",
        0x80,
        96 | (0x80 if seq % 10 == 0 else 0),
        seq & 0xFFFF,
        seq * 3000 & 0xFFFFFFFF,
        0x12345678,
    )
    return bytearray(header + bytes(size - 12))


async def run(args: argparse.Namespace) -> dict:
    sock = MediaSocket(fast_srtp=not args.slow)
    await sock.start()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=viewer_process, args=(child, args.viewers, not args.no_decrypt))
    proc.start()
    try:
        loop = asyncio.get_running_loop()
        offers = await loop.run_in_executor(None, parent.recv)
        connect0 = sum(cpu_seconds())
        endpoints = [sock.endpoint(u, p, tuple(fp), "actpass") for u, p, fp in offers]
        parent.send(
            [
                (e.local_ufrag, e.local_pwd, sock.fingerprint, e.setup, ("127.0.0.1", sock.port))
                for e in endpoints
            ]
        )
        await asyncio.gather(*(e.connected(30) for e in endpoints))
        await loop.run_in_executor(None, parent.recv)  # viewers say connected
        connect_cpu = sum(cpu_seconds()) - connect0
        idle_cpu = await idle_for(args.idle)
        fanout = sock.fanout()
        for e in endpoints:
            fanout.add(e, 96)
        packets = [rtp_packet(i, args.size) for i in range(256)]
        warm = await send_for(fanout, packets, args.pps, 0.5)  # warm-up
        result = await measure(fanout, packets, args, seq0=warm)
        parent.send("report")
        received = await loop.run_in_executor(None, parent.recv)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        await sock.close()
    result["receivers"] = received
    result["connect_cpu_ms_per_viewer"] = round(1e3 * connect_cpu / args.viewers, 3)
    result["idle_cpu_ms_per_s_per_viewer"] = (
        round(1e3 * idle_cpu / args.idle / args.viewers, 4) if args.idle else None
    )
    return result


async def idle_for(seconds: float) -> float:
    """Sleep `seconds` with every viewer connected; returns the CPU seconds used meanwhile."""
    start = sum(cpu_seconds())
    await asyncio.sleep(seconds)
    return sum(cpu_seconds()) - start


async def send_for(fanout, packets, pps: int, seconds: float, seq0: int = 0) -> int:
    """Send at `pps` for `seconds`, paced by the loop clock; returns packets sent."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    interval = 1.0 / pps
    sent = 0
    while sent < pps * seconds:
        packet = packets[(seq0 + sent) % len(packets)]
        struct.pack_into("!H", packet, 2, (seq0 + sent) & 0xFFFF)
        fanout.send(packet)
        sent += 1
        delay = start + sent * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent


async def measure(fanout, packets, args: argparse.Namespace, seq0: int) -> dict:
    profiler = cProfile.Profile() if args.profile else None
    copies0, drops0 = fanout.copies, fanout.drops
    u0, s0 = cpu_seconds()
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    sent = await send_for(fanout, packets, args.pps, args.seconds, seq0=seq0)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - t0
    u1, s1 = cpu_seconds()
    copies = fanout.copies - copies0
    cpu = (u1 - u0) + (s1 - s0)
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        print(out.getvalue(), file=sys.stderr)
    return {
        "viewers": len(fanout),
        "pps": args.pps,
        "size": args.size,
        "seconds": round(wall, 2),
        "packets": sent,
        "copies": copies,
        "drops": fanout.drops - drops0,
        "cpu_user_s": round(u1 - u0, 3),
        "cpu_sys_s": round(s1 - s0, 3),
        "cpu_pct": round(100 * cpu / wall, 1),
        "cpu_us_per_copy": round(1e6 * cpu / copies, 2) if copies else None,
        "path": "session-fallback" if args.slow else "fast",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--pps", type=int, default=200, help="incoming packets per second")
    parser.add_argument("--size", type=int, default=1200, help="RTP packet size in bytes")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--slow", action="store_true", help="use the pylibsrtp Session path")
    parser.add_argument("--no-decrypt", action="store_true", help="viewers count, not decrypt")
    parser.add_argument("--profile", action="store_true", help="cProfile summary on stderr")
    parser.add_argument("--idle", type=float, default=0.0, help="seconds of idle viewers first")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    lost = result["receivers"]["lost"]
    sys.exit(0 if result["copies"] and not result["receivers"]["srtp_errors"] and lost >= 0 else 1)


if __name__ == "__main__":
    main()
