"""ICE-TCP on the media port: RFC 6544 passive candidates, RFC 4571 framing.

A hall whose firewall drops UDP still reaches TCP: the browser connects to the port number of
the UDP media socket (its `tcptype active` candidate against our `tcptype passive` one) and
sends each STUN, DTLS, SRTP or SRTCP packet with a 16-bit length before it. Each frame is
handed to the same demultiplexer as a UDP datagram, under a source address that can never be
a UDP one ("tcp:<ip>", port), so a viewer's endpoint works alike on either transport; sends to
such an address are framed onto its connection.

A connection whose frames never pass an ICE check is closed after `UNCLAIMED_S`; one whose
write buffer grows past `MAX_QUEUED` bytes (a congested hall) drops packets, as UDP would.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

PREFIX = "tcp:"
"""Marks a TCP peer's address: ("tcp:198.51.100.7", 40211)."""
FRAME = struct.Struct("!H")
MAX_QUEUED = 512 * 1024
"""Bytes queued for one TCP peer before its packets are dropped (~2.5 s of 1.5 Mbit/s)."""
UNCLAIMED_S = 10.0
"""How long a connection may stay without a verified ICE check from it."""
MAX_CONNECTIONS = 20_000
"""Open connections at once; more are refused (a flood must not exhaust file descriptors)."""

Address = tuple[str, int]


def tcp_address(peer: tuple[str, int]) -> Address:
    """The demultiplexer's address for a TCP peer (never equal to a UDP source)."""
    return PREFIX + peer[0], peer[1]


def is_tcp(addr: Address) -> bool:
    """True for an address made by `tcp_address`."""
    return addr[0].startswith(PREFIX)


class FramedConnection(asyncio.Protocol):
    """One TCP peer: RFC 4571 frames in, framed packets out."""

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.address: Address = ("tcp:", 0)
        self.opened = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        if peer is None or len(self._listener.connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.transport = transport
        host = str(peer[0])
        if host.startswith("::ffff:") and "." in host:  # IPv4 on the dual-stack listener
            host = host[7:]
        self.address = tcp_address((host, int(peer[1])))
        sock = transport.get_extra_info("socket")
        if sock is not None:  # media is latency-bound: never wait to coalesce small packets
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._listener.connections[self.address] = self

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 2:
            (size,) = FRAME.unpack_from(buffer, start)
            end = start + 2 + size
            if end > len(buffer):
                break
            if size:
                try:
                    self._listener.deliver(bytes(buffer[start + 2 : end]), self.address)
                except Exception:  # one bad frame must not cost the hall its connection
                    logger.exception("frame handler failed", extra={"addr": self.address})
            start = end
            if self.transport is None or self.transport.is_closing():
                return
        del buffer[:start]

    def send(self, data: bytes) -> bool:
        """Queue one framed packet; False if the connection is gone or congested."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > MAX_QUEUED:
            return False
        transport.write(FRAME.pack(len(data)) + data)
        return True

    def close(self) -> None:
        """Close the connection (queued data is still written)."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._listener.connections.get(self.address) is self:
            del self._listener.connections[self.address]
            self._listener.on_lost(self.address)
        self.transport = None


class TcpListener:
    """The passive ICE-TCP listener beside the UDP media socket, on the same port number."""

    def __init__(
        self,
        deliver: Callable[[bytes, Address], None],
        on_lost: Callable[[Address], None],
    ) -> None:
        self.deliver = deliver
        """Called with each frame and its peer's address (as for a UDP datagram)."""
        self.on_lost = on_lost
        self.connections: dict[Address, FramedConnection] = {}
        self._server: asyncio.Server | None = None

    async def open(self, host: str, port: int) -> None:
        """Listen on (host, port) ("::" takes IPv4 too, as the UDP socket does); raises
        OSError when the port is taken."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: FramedConnection(self), sock=sock)

    def send(self, data: bytes, addr: Address) -> bool:
        """Send one packet to a TCP peer; False if it has no open connection."""
        connection = self.connections.get(addr)
        return connection is not None and connection.send(data)

    def sweep(self, claimed: Callable[[Address], bool]) -> None:
        """Close connections older than UNCLAIMED_S that no endpoint has claimed."""
        now = time.monotonic()
        for addr, connection in list(self.connections.items()):
            if now - connection.opened > UNCLAIMED_S and not claimed(addr):
                connection.close()

    def drop(self, addr: Address) -> None:
        """Close the connection of `addr`, if any (its endpoint is gone)."""
        connection = self.connections.get(addr)
        if connection is not None:
            connection.close()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.abort()
        self.connections.clear()


class TcpClient(asyncio.Protocol):
    """The active side of ICE-TCP (what a browser does), for the load viewer and tests: frames
    out with `sendto` (the address is the connection's), frames in to `on_frame`."""

    def __init__(self, on_frame: Callable[[bytes, Address], None]) -> None:
        self._on_frame = on_frame
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self.remote: Address = ("", 0)

    async def connect(self, remote: Address) -> None:
        """Open the connection to a passive candidate's (host, port)."""
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, remote[0], remote[1])
        self.remote = remote

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        while len(self._buffer) - start >= 2:
            (size,) = FRAME.unpack_from(self._buffer, start)
            if start + 2 + size > len(self._buffer):
                break
            self._on_frame(bytes(self._buffer[start + 2 : start + 2 + size]), self.remote)
            start += 2 + size
        del self._buffer[:start]

    def sendto(self, data: bytes, addr: Address) -> bool:
        """Send one framed packet (`addr` is ignored: a connection has one peer)."""
        if self._transport is None or self._transport.is_closing():
            return False
        self._transport.write(FRAME.pack(len(data)) + data)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()
