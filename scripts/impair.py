"""A UDP impairment relay: a rural link between one UDP server and its clients, in user space.

Kernel netem is unavailable here, so this relay sits in the path instead. Clients send to the
relay's listen address; each client gets its own upstream socket towards the target, so the
server sees one distinct address per client. Both directions get the one-way delay, jitter and
loss; the downlink (server -> client, what a village site receives) is rate-limited through a
bounded FIFO queue (tail drop past `queue_ms` of backlog), the uplink only with --up-rate-kbps.
`dark = True` drops everything both ways (an outage) until set back to False.

By hand:
    python scripts/impair.py --listen 127.0.0.1:0 --to 127.0.0.1:8189 \\
        --delay-ms 100 --jitter-ms 20 --loss 0.03 --rate-kbps 800
prints `listening HOST:PORT`, relays until Ctrl-C (or --seconds), then one JSON line of counters.

From tests:
    relay = ImpairRelay(("127.0.0.1", port), Impairment(delay_ms=125, loss=0.03))
    await relay.start(); relay.address; relay.dark = True; relay.stats(); relay.close()

Jitter keeps packets in order (each arrives no earlier than the one before, as a rate-limited
link would) unless --reorder P: then a fraction P of packets skips the delay and overtakes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

logger = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
MAX_CLIENTS = 64


class ImpairError(Exception):
    """Bad relay settings (an address that does not parse, a loss outside 0..1)."""


@dataclass
class Impairment:
    """One direction of a link. Rates in kbit/s (0 = unlimited), times in milliseconds."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_kbps: float = 0.0
    queue_ms: float = 300.0
    reorder: float = 0.0

    def check(self) -> None:
        """Raise ImpairError for settings that make no sense."""
        if not (0.0 <= self.loss <= 1.0 and 0.0 <= self.reorder <= 1.0):
            raise ImpairError("loss and reorder are fractions between 0 and 1")
        if min(self.delay_ms, self.jitter_ms, self.rate_kbps, self.queue_ms) < 0:
            raise ImpairError("delay, jitter, rate and queue must not be negative")


@dataclass
class DirectionStats:
    """What one direction did with the packets it was given."""

    packets_in: int = 0
    bytes_in: int = 0
    delivered: int = 0
    bytes_out: int = 0
    lost: int = 0
    queue_drops: int = 0
    dark_drops: int = 0
    send_errors: int = 0
    max_backlog_ms: float = 0.0


@dataclass
class Direction:
    """Loss, then a rate-limited FIFO (bounded by backlog time), then delay and jitter."""

    impairment: Impairment
    rng: random.Random
    loop: asyncio.AbstractEventLoop
    dark: bool = False
    stats: DirectionStats = field(default_factory=DirectionStats)
    _free_at: float = 0.0
    _last_arrival: float = 0.0

    def push(self, data: bytes, deliver: Callable[[bytes], object]) -> None:
        """Take one datagram; `deliver(data)` runs when (if) it reaches the far end."""
        imp, stats = self.impairment, self.stats
        stats.packets_in += 1
        stats.bytes_in += len(data)
        if self.dark:
            stats.dark_drops += 1
            return
        if imp.loss and self.rng.random() < imp.loss:
            stats.lost += 1
            return
        now = self.loop.time()
        depart = now
        if imp.rate_kbps:
            start = max(now, self._free_at)
            backlog = start - now
            if backlog * 1000.0 > imp.queue_ms:
                stats.queue_drops += 1
                return
            stats.max_backlog_ms = max(stats.max_backlog_ms, backlog * 1000.0)
            self._free_at = depart = start + len(data) * 8 / (imp.rate_kbps * 1000.0)
        if imp.reorder and self.rng.random() < imp.reorder:
            arrival = depart  # overtakes whatever is in flight
        else:
            jitter = self.rng.uniform(-imp.jitter_ms, imp.jitter_ms) if imp.jitter_ms else 0.0
            arrival = max(depart + max(0.0, imp.delay_ms + jitter) / 1000.0, self._last_arrival)
            self._last_arrival = arrival
        self.loop.call_at(arrival, self._deliver, data, deliver)

    def _deliver(self, data: bytes, deliver: Callable[[bytes], object]) -> None:
        if self.dark:
            self.stats.dark_drops += 1
            return
        try:
            deliver(data)
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.delivered += 1
        self.stats.bytes_out += len(data)


def parse_address(text: str) -> tuple[str, int]:
    """ "HOST:PORT" (or "[v6]:PORT") -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ImpairError(f"not HOST:PORT: {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class ImpairRelay:
    """Relays UDP between clients on `listen` and `target`, impaired both ways."""

    def __init__(
        self,
        target: tuple[str, int],
        down: Impairment,
        up: Impairment | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        seed: int | None = None,
    ) -> None:
        down.check()
        self.up_impairment = (
            up
            if up is not None
            else Impairment(
                down.delay_ms, down.jitter_ms, down.loss, 0.0, down.queue_ms, down.reorder
            )
        )
        self.up_impairment.check()
        self.down_impairment = down
        self.target = target
        self.listen = listen
        self.rng = random.Random(seed)
        self.sock: socket.socket | None = None
        self.upstream: dict[tuple[str, int], socket.socket] = {}
        self.down: Direction | None = None
        self.up: Direction | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Bind the listen socket and start relaying."""
        self.loop = asyncio.get_running_loop()
        self.down = Direction(self.down_impairment, self.rng, self.loop)
        self.up = Direction(self.up_impairment, self.rng, self.loop)
        self.sock = self._open(self.listen)
        self.loop.add_reader(self.sock.fileno(), self._on_client)

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send."""
        assert self.sock is not None, "start() first"
        host, port = self.sock.getsockname()[:2]
        return host, port

    @property
    def dark(self) -> bool:
        """True while the link is down both ways."""
        return self.down is not None and self.down.dark

    @dark.setter
    def dark(self, value: bool) -> None:
        assert self.down is not None and self.up is not None, "start() first"
        self.down.dark = self.up.dark = value

    def _open(self, address: tuple[str, int]) -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(address)
        sock.setblocking(False)
        return sock

    def _on_client(self) -> None:
        assert self.sock is not None and self.up is not None
        for _ in range(64):
            try:
                data, client = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable surfaced on a UDP socket
            upstream = self._upstream(client[:2])
            if upstream is not None:
                self.up.push(data, self._sender(upstream, self.target))

    def _upstream(self, client: tuple[str, int]) -> socket.socket | None:
        sock = self.upstream.get(client)
        if sock is None:
            if len(self.upstream) >= MAX_CLIENTS:
                return None
            assert self.loop is not None
            sock = self._open((self.listen[0], 0))
            self.upstream[client] = sock
            self.loop.add_reader(sock.fileno(), self._on_server, sock, client)
        return sock

    def _on_server(self, sock: socket.socket, client: tuple[str, int]) -> None:
        assert self.sock is not None and self.down is not None
        listen = self.sock
        for _ in range(64):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.down.push(data, self._sender(listen, client))

    @staticmethod
    def _sender(sock: socket.socket, to: tuple[str, int]) -> Callable[[bytes], int]:
        return lambda data: sock.sendto(data, to)

    def stats(self) -> dict[str, dict[str, float]]:
        """Counters per direction: {"down": {...}, "up": {...}}."""
        assert self.down is not None and self.up is not None, "start() first"
        return {"down": asdict(self.down.stats), "up": asdict(self.up.stats)}

    def close(self) -> None:
        """Stop relaying and close every socket (packets still in flight are dropped)."""
        if self.down is not None:
            self.dark = True
        sockets = [*self.upstream.values(), *([self.sock] if self.sock else [])]
        for sock in sockets:
            if self.loop is not None:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.upstream.clear()
        self.sock = None


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT clients send to")
    parser.add_argument("--to", required=True, help="HOST:PORT of the UDP server")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each way")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="+/- uniform, each way")
    parser.add_argument("--loss", type=float, default=0.0, help="fraction lost, each way")
    parser.add_argument("--rate-kbps", type=float, default=0.0, help="downlink rate (0: none)")
    parser.add_argument("--up-rate-kbps", type=float, default=0.0, help="uplink rate (0: none)")
    parser.add_argument("--queue-ms", type=float, default=300.0, help="max backlog at the rate")
    parser.add_argument("--reorder", type=float, default=0.0, help="fraction sent undelayed")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after (0: Ctrl-C)")
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    down = Impairment(
        args.delay_ms, args.jitter_ms, args.loss, args.rate_kbps, args.queue_ms, args.reorder
    )
    up = Impairment(
        args.delay_ms, args.jitter_ms, args.loss, args.up_rate_kbps, args.queue_ms, args.reorder
    )
    relay = ImpairRelay(parse_address(args.to), down, up, parse_address(args.listen), args.seed)
    await relay.start()
    host, port = relay.address
    print(f"listening {host}:{port}", flush=True)
    try:
        if args.seconds:
            await asyncio.sleep(args.seconds)
        else:
            await asyncio.Event().wait()
    finally:
        stats = relay.stats()
        relay.close()
        print(json.dumps(stats), flush=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Run the relay from the command line; the last line printed is JSON counters."""
    args = _arguments(argv)
    try:
        asyncio.run(_run(args))
    except ImpairError as exc:
        print(f"impair: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
