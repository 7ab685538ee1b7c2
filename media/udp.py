"""The one UDP socket of a media process, and sendmmsg(2) batches for fan-out.

`UdpSocket` reads datagrams with the event loop's reader callback (no asyncio transport, no
per-datagram task) and hands each one to a callback, with the local address it reached. Bound
to a wildcard ("::" is dual-stack, IPv4 arriving as IPv4), the socket asks the kernel for that
address (IP_PKTINFO / IPV6_RECVPKTINFO) so that replies can leave from it: a peer drops an
answer from any other address (RFC 8445 section 7.2.5.2.1), which is what happens on a machine
with several addresses, or to a browser on the server's own machine, if the kernel picks. `MmsgBatch` owns prebuilt C arrays
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
import ifaddr

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
struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""


_CONTROL_SPACE = socket.CMSG_SPACE(20)
"""Room for one in6_pktinfo (20 bytes) or in_pktinfo (12)."""


class UdpError(Exception):
    """The UDP socket could not be opened or used."""


class Libc:
    """The cffi handle on libc's sendmmsg (one per MediaSocket; cheap)."""

    def __init__(self) -> None:
        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        self.lib = self.ffi.dlopen(None)


IP_PKTINFO = 8
"""Linux's IP_PKTINFO (the socket module of Python < 3.13 lacks the name)."""
WILDCARDS = ("0.0.0.0", "::", "")
_MAPPED = "::ffff:"


def unmap(host: str) -> str:
    """An IPv4 address as IPv4 when a dual-stack socket reports it IPv4-mapped."""
    return host[len(_MAPPED) :] if host.startswith(_MAPPED) and "." in host else host


def wire_address(host: str, family: int) -> bytes:
    """The packed address to use on a socket of `family` (IPv4-mapped on a dual-stack one)."""
    ip = ipaddress.ip_address(host)
    if family == socket.AF_INET6 and ip.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed
    return ip.packed


def pack_sockaddr(addr: tuple[str, int], family: int = 0) -> bytes:
    """The C `struct sockaddr_in` / `sockaddr_in6` bytes for (host, port); on an AF_INET6
    socket (`family`) an IPv4 destination is IPv4-mapped."""
    ip = ipaddress.ip_address(addr[0])
    if ip.version == 4 and family != socket.AF_INET6:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", addr[1], ip.packed)
    packed = wire_address(addr[0], socket.AF_INET6)
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", addr[1], 0, packed, 0)


def local_addresses(ipv6: bool = True) -> list[str]:
    """This machine's addresses a peer elsewhere can reach: IPv4 first, then IPv6 (global and
    unique-local); no loopback, no link-local (they need a zone), no duplicates."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            if isinstance(entry.ip, tuple):
                if not ipv6:
                    continue
                host = entry.ip[0]
            else:
                host = entry.ip
            ip = ipaddress.ip_address(host)
            if ip.is_loopback or ip.is_link_local or ip.is_unspecified or str(ip) in found:
                continue
            found.append(str(ip))
    return sorted(found, key=lambda h: ":" in h)


def pktinfo(local: str, family: int) -> tuple[int, int, bytes]:
    """The (level, type, data) of the control message that sends from `local`."""
    if family == socket.AF_INET6:  # in6_pktinfo: address, interface index (0: by route)
        return socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, wire_address(local, family) + bytes(4)
    # in_pktinfo: interface index, source address (ipi_spec_dst), destination (ignored)
    return socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + wire_address(local, family) + bytes(4)


def pack_cmsg(level: int, kind: int, data: bytes) -> bytes:
    """One control message (struct cmsghdr + data, padded as CMSG_SPACE says)."""
    header = struct.pack("@Nii", socket.CMSG_LEN(len(data)), level, kind)
    return (header + data).ljust(socket.CMSG_SPACE(len(data)), b"\0")


def read_pktinfo(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The local address a datagram reached, from recvmsg's control messages."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            ip = ipaddress.IPv6Address(data[:16])
            return str(ip.ipv4_mapped or ip)
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return str(ipaddress.IPv4Address(data[4:8]))  # ipi_spec_dst: the local address
    return None


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

    def address(
        self, addr: tuple[str, int], local: str | None = None, family: int = 0
    ) -> tuple[Any, int, Any, int]:
        """A C destination for `addr` (sockaddr and its length, and the control message that
        sends from `local`, or NULL), to keep and pass to `set_address`. `family` is the
        socket's (AF_INET6: IPv4 destinations are IPv4-mapped)."""
        ffi = self._libc.ffi
        raw = pack_sockaddr(addr, family)
        if local is None:
            return ffi.new("char[]", raw), len(raw), ffi.NULL, 0
        control = pack_cmsg(*pktinfo(local, family or socket.AF_INET))
        return ffi.new("char[]", raw), len(raw), ffi.new("char[]", control), len(control)

    def set_address(self, i: int, sockaddr: tuple[Any, int, Any, int]) -> None:
        """Send slot i to `sockaddr`, a value returned by `address()` (the control message
        costs the sending path nothing: it is set once per slot, like the address)."""
        self._names[i] = sockaddr  # keep the C memory alive while the slot points at it
        hdr = self._hdrs[i]
        hdr.msg_name = sockaddr[0]
        hdr.msg_namelen = sockaddr[1]
        hdr.msg_control = sockaddr[2]
        hdr.msg_controllen = sockaddr[3]

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
        on_datagram: Callable[[bytes, tuple[str, int], str | None], None],
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
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.pktinfo = False
        """True on a wildcard socket: datagrams come with the local address they reached."""

    def open(self) -> None:
        """Bind the socket and start reading ("::" is dual-stack; where the kernel has no
        IPv6, it falls back to 0.0.0.0)."""
        try:
            sock = self._bind(self.family)
        except OSError as exc:
            if self._host != "::":
                raise UdpError(f"cannot bind UDP {self._host}:{self._port}: {exc}") from exc
            logger.warning("no IPv6 here: the media socket listens on IPv4 only")
            self._host, self.family = "0.0.0.0", socket.AF_INET
            try:
                sock = self._bind(self.family)
            except OSError as exc4:
                raise UdpError(f"cannot bind UDP 0.0.0.0:{self._port}: {exc4}") from exc4
        sock.setblocking(False)
        self._sock = sock
        self.fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._read)

    def _bind(self, family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self._buffer_size is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._buffer_size)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._buffer_size)
            if family == socket.AF_INET6 and self._host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.pktinfo = self._host in WILDCARDS
            if self.pktinfo and family == socket.AF_INET6:  # IPv4-mapped datagrams too
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            elif self.pktinfo:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        return sock

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
        return unmap(name[0]), name[1]

    def sendto(
        self,
        data: bytes | bytearray | memoryview,
        addr: tuple[str, int],
        local: str | None = None,
    ) -> bool:
        """Send one datagram (from `local`, the address the peer's datagrams reached, when
        given); False if the kernel refused it (buffer full, unreachable)."""
        if self._sock is None:
            return False
        host = addr[0]
        if self.family == socket.AF_INET6 and "." in host:
            host = _MAPPED + host
        try:
            if local is not None and self.pktinfo:
                control = [pktinfo(local, self.family)]
                self._sock.sendmsg([data], control, 0, (host, addr[1]))
            else:
                self._sock.sendto(data, (host, addr[1]))
        except OSError as exc:
            logger.debug("udp send failed", extra={"addr": addr, "error": str(exc)})
            return False
        return True

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        control = _CONTROL_SPACE if self.pktinfo else 0
        for _ in range(RECV_BURST):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(RECV_SIZE, control)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here on some kernels
                logger.debug("udp recv error", extra={"error": str(exc)})
                continue
            if not data:
                continue
            local = read_pktinfo(ancdata) if ancdata else None
            try:
                self._on_datagram(data, (unmap(addr[0]), addr[1]), local)
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
