"""The one UDP socket of a media process, and sendmmsg(2) batches for fan-out.

`UdpSocket` reads datagrams with the event loop's reader callback (no asyncio transport, no
per-datagram task) and hands each one to a callback. `MmsgBatch` owns prebuilt C arrays
(payload slots, iovecs, mmsghdrs, socket addresses) so that sending one packet to N viewers is
one sendmmsg(2) call per batch of up to `capacity` copies. sendmmsg is reached through cffi in
ABI mode (`dlopen(None)`), which needs no compiler.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import cffi

logger = logging.getLogger(__name__)

SLOT_SIZE = 1500
"""Bytes per payload slot: an MTU-sized RTP packet plus the SRTP tag fits easily."""

RECV_SIZE = 2048
BUFFER_SIZE = 4 * 1024 * 1024
"""SO_SNDBUF/SO_RCVBUF asked for (Linux doubles it, capped by net.core.wmem_max/rmem_max).
Doubled, it holds ~3,600 copies of a video packet: one fan-out burst (docs/capacity.md)."""
RECV_BURST = 64
"""Datagrams read per reader wake-up before yielding to the loop."""

_CDEF = """
typedef unsigned int socklen_t;
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; socklen_t msg_namelen;
    struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen;
    int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""


class UdpError(Exception):
    """The UDP socket could not be opened or used."""


class Libc:
    """The cffi handle on libc's sendmmsg (one per MediaSocket; cheap)."""

    def __init__(self) -> None:
        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        self.lib = self.ffi.dlopen(None)


def pack_sockaddr(addr: tuple[str, int]) -> bytes:
    """The C `struct sockaddr_in` / `sockaddr_in6` bytes for (host, port)."""
    ip = ipaddress.ip_address(addr[0])
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", addr[1], ip.packed)
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", addr[1], 0, ip.packed, 0)


class MmsgBatch:
    """Prebuilt sendmmsg arrays: `capacity` slots, each a payload buffer and a destination.

    The caller writes payloads into `slots[i]` (an `unsigned char *` cdata of SLOT_SIZE bytes),
    sets their lengths with `set_length(i, n)` and destinations with `set_address(i, sockaddr)`
    (a cdata returned by `address()`), then calls `send(fd, count)`.
    """

    def __init__(self, libc: Libc, capacity: int = 64) -> None:
        ffi = libc.ffi
        self._libc = libc
        self.capacity = capacity
        self.used = 0
        """Slots in use, for callers that keep a fixed layout between sends."""
        self._data = ffi.new("unsigned char[]", capacity * SLOT_SIZE)
        self._iov = ffi.new("struct iovec[]", capacity)
        self._msgs = ffi.new("struct mmsghdr[]", capacity)
        self.slots = [self._data + i * SLOT_SIZE for i in range(capacity)]
        self.iovs = [self._iov[i] for i in range(capacity)]
        for i in range(capacity):
            self._iov[i].iov_base = self.slots[i]
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = self._iov + i
            hdr.msg_iovlen = 1
        self._hdrs = [self._msgs[i].msg_hdr for i in range(capacity)]
        self._names: list[object] = [None] * capacity

    def address(self, addr: tuple[str, int]) -> tuple[Any, int]:
        """A C sockaddr (cdata, length) for `addr`, to keep and pass to `set_address`."""
        raw = pack_sockaddr(addr)
        return self._libc.ffi.new("char[]", raw), len(raw)

    def set_address(self, i: int, sockaddr: tuple[Any, int]) -> None:
        """Send slot i to `sockaddr`, a value returned by `address()`."""
        self._names[i] = sockaddr  # keep the C memory alive while the slot points at it
        hdr = self._hdrs[i]
        hdr.msg_name = sockaddr[0]
        hdr.msg_namelen = sockaddr[1]

    def set_length(self, i: int, length: int) -> None:
        """Slot i carries `length` bytes."""
        self.iovs[i].iov_len = length

    def send(self, fd: int, count: int) -> int:
        """Send slots 0..count-1; returns how many the kernel took (errors skip a slot)."""
        sent = 0
        start = 0
        sendmmsg = self._libc.lib.sendmmsg
        while start < count:
            n = sendmmsg(fd, self._msgs + start, count - start, 0)
            if n < 0:
                err = self._libc.ffi.errno
                if err == errno.EINTR:
                    continue
                if err in (errno.EAGAIN, errno.ENOBUFS):
                    break  # socket buffer full: drop the rest, as UDP would
                start += 1  # this destination failed (e.g. unreachable): skip it
                continue
            sent += n
            start += n
        return sent


class UdpSocket:
    """A non-blocking UDP socket read from the event loop; datagrams go to `on_datagram`."""

    def __init__(
        self,
        on_datagram: Callable[[bytes, tuple[str, int]], None],
        host: str = "127.0.0.1",
        port: int = 0,
        buffer_size: int | None = BUFFER_SIZE,
    ) -> None:
        self._on_datagram = on_datagram
        self._host = host
        self._port = port
        self._buffer_size = buffer_size
        """None leaves the kernel's default buffers."""
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fd = -1

    def open(self) -> None:
        """Bind the socket and start reading."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self._buffer_size is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._buffer_size)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._buffer_size)
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise UdpError(f"cannot bind UDP {self._host}:{self._port}: {exc}") from exc
        sock.setblocking(False)
        self._sock = sock
        self.fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._read)

    def warn_if_buffer_capped(self) -> bool:
        """Log a warning (and return True) if the kernel granted less send buffer than asked:
        net.core.wmem_max caps it, silently shrinking the fan-out burst the socket can queue."""
        if self._sock is None or self._buffer_size is None:
            return False
        granted = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if granted >= 2 * self._buffer_size:  # Linux doubles the request for bookkeeping
            return False
        logger.warning(
            "UDP send buffer smaller than asked: raise net.core.wmem_max (and rmem_max)",
            extra={"granted": granted, "asked": self._buffer_size},
        )
        return True

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._sock is None:
            raise UdpError("socket is not open")
        name = self._sock.getsockname()
        return name[0], name[1]

    def sendto(self, data: bytes | bytearray | memoryview, addr: tuple[str, int]) -> bool:
        """Send one datagram; False if the kernel refused it (buffer full, unreachable)."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:
            logger.debug("udp send failed", extra={"addr": addr, "error": str(exc)})
            return False
        return True

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(RECV_BURST):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here on some kernels
                logger.debug("udp recv error", extra={"error": str(exc)})
                continue
            if not data:
                continue
            try:
                self._on_datagram(data, (addr[0], addr[1]))
            except Exception:  # one bad datagram must not stop the socket
                logger.exception("datagram handler failed", extra={"addr": addr})

    def close(self) -> None:
        """Stop reading and close the socket; idempotent."""
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        self._sock.close()
        self._sock = None
        self.fd = -1
