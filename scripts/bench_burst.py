#!/usr/bin/env python3
"""How many copies of one packet a socket buffer holds: the fan-out's burst limit.

A Fanout sends one incoming packet to all N viewers at once (N/64 sendmmsg calls). On a real
NIC each queued datagram stays charged to the sending socket (SO_SNDBUF) until the card has
sent it, so a burst larger than the buffer holds, queued faster than the card drains it, is
dropped (counted in Fanout.drops). This measures the same accounting where it can be seen on
one machine: loopback hands each datagram straight to the receiving socket, which is charged
the same per-datagram "truesize", so a receiver that does not read shows how many datagrams
of `--size` bytes a buffer of the size media/udp.py asks for (4 MiB, doubled by Linux) holds.
It also times bursts of `--burst` plain datagrams (no SRTP) through MmsgBatch.send.

    python scripts/bench_burst.py                  # 1,200-byte datagrams, 4 MiB buffers
    python scripts/bench_burst.py --size 200       # Opus-sized
    python scripts/bench_burst.py --buffer 212992  # what the kernel default wmem_max leaves
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from media.udp import Libc, MmsgBatch

BATCH = 64
REQUESTED = 4 * 1024 * 1024
"""The buffer size media/udp.py requests (Linux doubles it, capped by net.core.*mem_max)."""


def fill(batch: MmsgBatch, fd: int, count: int) -> int:
    """Send `count` datagrams in sendmmsg calls of up to BATCH; returns how many were taken."""
    sent = 0
    while sent < count:
        sent += batch.send(fd, min(BATCH, count - sent))
    return sent


def drain(sock: socket.socket) -> int:
    """Read every queued datagram without blocking; returns how many there were."""
    n = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return n
        n += 1


def measure(size: int, burst: int, rounds: int, requested: int) -> dict[str, object]:
    libc = Libc()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, requested)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, requested)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sender.setblocking(False)
        batch = MmsgBatch(libc, BATCH)
        target = batch.address(receiver.getsockname())
        for i in range(BATCH):
            batch.set_address(i, target)
            batch.set_length(i, size)
        # 1. capacity: a burst far larger than any buffer, the receiver not reading
        fill(batch, sender.fileno(), 50_000)
        held = drain(receiver)
        buffer = receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # 2. time of one burst of `burst` datagrams, drained between rounds
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fill(batch, sender.fileno(), burst)
            times.append(time.perf_counter() - t0)
            drain(receiver)
        times.sort()
        return {
            "size": size,
            "requested_bytes": requested,
            "buffer_bytes": buffer,
            "sndbuf_bytes": sender.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            "datagrams_held": held,
            "bytes_per_datagram": round(buffer / held) if held else None,
            "burst": burst,
            "burst_ms_median": round(1e3 * times[len(times) // 2], 2),
            "us_per_datagram": round(1e6 * times[len(times) // 2] / burst, 2),
        }
    finally:
        receiver.close()
        sender.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1200, help="datagram size in bytes")
    parser.add_argument("--burst", type=int, default=1000, help="datagrams per timed burst")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--buffer", type=int, default=REQUESTED, help="SO_SNDBUF/SO_RCVBUF asked")
    args = parser.parse_args()
    print(json.dumps(measure(args.size, args.burst, args.rounds, args.buffer)))


if __name__ == "__main__":
    main()
