"""Fan-out of one RTP stream to many viewer endpoints on a MediaSocket, by sendmmsg.

    video = sock.fanout()             # media.endpoint.MediaSocket
    video.add(endpoint, payload_type=96)
    video.send(rtp_packet)            # one sendmmsg per 64 viewers, SRTP per viewer
    video.send_rtcp(sender_report)    # the stream's shared SR, SRTCP per viewer

Members whose SRTP context is not a raw libsrtp handle (pylibsrtp's Session fallback), and
members reached over ICE-TCP (media.tcp: a framed write per packet), are sent one at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from media.srtp import MAX_TRAILER, SrtpError
from media.udp import SLOT_SIZE, Libc, MmsgBatch

if TYPE_CHECKING:
    from media.endpoint import Endpoint, MediaSocket

try:  # the builtin behind cffi's FFI.memmove, without its Python-level wrapper frame
    from _cffi_backend import memmove as _cffi_memmove
except ImportError:  # pragma: no cover
    _cffi_memmove = Libc().ffi.memmove

BATCH = 64
"""Copies per sendmmsg call."""
MAX_RTP = SLOT_SIZE - MAX_TRAILER
"""Largest RTP packet a slot holds with room for the SRTP trailer."""
Entry = tuple[Any, Any, Any, int]
"""One used sendmmsg slot: (payload cdata, iovec cdata, libsrtp context, payload type)."""


class Fanout:
    """A set of endpoints that receive the same RTP stream; one sendmmsg per 64 copies.

    Each connected member owns one sendmmsg slot (payload buffer, iovec, destination). Slots
    are assigned incrementally: a member that joins takes the next free slot, one that leaves
    is replaced by the last slot's owner, so churn costs O(1), never a rebuild of N slots.
    Each copy then costs a memmove, srtp_protect in place, and an iovec length store (skipped
    while packet sizes repeat).
    """

    def __init__(self, sock: MediaSocket) -> None:
        self._sock = sock
        self._members: dict[Endpoint, int] = {}
        """Every added endpoint with its payload type, connected or not."""
        self._batches: list[MmsgBatch] = []
        self._owners: list[list[Endpoint]] = []
        """Per batch in use: the endpoint in each used slot, in slot order."""
        self._entries: list[list[Entry]] = []
        """Per batch in use: (slot, iovec, libsrtp context, payload type) per used slot."""
        self._where: dict[Endpoint, tuple[int, int]] = {}
        self._slow: dict[Endpoint, int] = {}
        """Members sent through pylibsrtp's Session API (no raw libsrtp context)."""
        self._marks: dict[Endpoint, tuple[int, int]] = {}
        self._payload_types: dict[int, int] = {}
        """Payload type -> number of active members using it."""
        self._last_length = -1
        self.packets = 0
        """Packets given to send() (each copied to every connected member)."""
        self.payload_bytes = 0
        self.copies = 0
        self.drops = 0
        """Copies the kernel refused (socket buffer full) or SRTP failed to protect."""

    def add(self, endpoint: Endpoint, payload_type: int) -> None:
        """Send this stream to `endpoint` with its payload type (marker bit kept)."""
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} is not in 0..127")
        if self._members.get(endpoint, payload_type) != payload_type:
            self._deactivate(endpoint)
        self._members[endpoint] = payload_type
        endpoint.fanouts.add(self)
        self.refresh(endpoint)

    def remove(self, endpoint: Endpoint) -> None:
        """Stop sending to `endpoint`; unknown endpoints are ignored."""
        if endpoint in self._members:
            self._deactivate(endpoint)
            del self._members[endpoint]
            endpoint.fanouts.discard(self)

    def __len__(self) -> int:
        return len(self._members)

    def send(self, packet: bytes | bytearray) -> int:
        """Protect and send `packet` to every connected member; returns copies sent."""
        n = len(packet)
        if n < 12 or n > MAX_RTP:
            raise ValueError(f"RTP packet of {n} bytes is outside 12..{MAX_RTP}")
        self.packets += 1
        self.payload_bytes += n
        marker = packet[1] & 0x80
        variants = {}
        for pt in self._payload_types:  # one patched copy per payload type, not per viewer
            variant = variants[pt] = bytearray(packet)
            variant[1] = marker | pt
        memmove = _cffi_memmove
        protect = self._sock.protector.protect_fn
        cell = self._sock.protector.length
        fd = self._sock.udp.fd
        # Slot lengths stay valid while packets keep their size (each slot's tag is fixed).
        same_length = n == self._last_length
        failed = False
        sent = 0
        for batch, entries in zip(self._batches, self._entries):
            for slot, iov, handle, pt in entries:
                memmove(slot, variants[pt], n)
                cell[0] = n
                if protect(handle, slot, cell):
                    iov.iov_len = 0  # an empty datagram; receivers ignore it
                    failed = True
                    self.drops += 1
                elif not same_length:
                    iov.iov_len = cell[0]
            sent += batch.send(fd, len(entries))
        self._last_length = -1 if failed else n
        for endpoint, pt in self._slow.items():
            sent += self._send_slow(endpoint, variants[pt])
        self.copies += sent
        self.drops += len(self._where) + len(self._slow) - sent
        return sent

    def send_rtcp(self, packet: bytes | bytearray) -> int:
        """SRTCP-protect and send one RTCP packet (e.g. the stream's shared sender report) to
        every connected member, batched like `send`; returns copies sent."""
        n = len(packet)
        if n < 8 or n > MAX_RTP:
            raise ValueError(f"RTCP packet of {n} bytes is outside 8..{MAX_RTP}")
        protect = self._sock.protector.protect_rtcp_fn
        cell = self._sock.protector.length
        sent = 0
        for batch, entries in zip(self._batches, self._entries):
            for slot, iov, handle, _ in entries:
                _cffi_memmove(slot, packet, n)
                cell[0] = n
                iov.iov_len = 0 if protect(handle, slot, cell) else cell[0]
            sent += batch.send(self._sock.udp.fd, len(entries))
        self._last_length = -1  # RTP lengths must be rewritten on the next send
        for endpoint in self._where:
            endpoint.count_rtcp()
        for endpoint in self._slow:
            endpoint.send_rtcp(bytes(packet))
            sent += 1
        return sent

    def settle(self, endpoint: Endpoint) -> None:
        """Move the traffic sent to `endpoint` since the last settle into its counters."""
        mark = self._marks.get(endpoint)
        if mark is None:
            return
        packets = self.packets - mark[0]
        octets = self.payload_bytes - mark[1]
        tag = endpoint.srtp.tag_length if endpoint.srtp else 0
        endpoint.count(packets, octets + packets * tag)
        self._marks[endpoint] = (self.packets, self.payload_bytes)

    def refresh(self, endpoint: Endpoint) -> None:
        """Re-check one member after its state or address changed (called by Endpoint)."""
        pt = self._members.get(endpoint)
        if pt is None:
            return
        wanted = (
            endpoint.state == "connected"
            and endpoint.srtp is not None
            and endpoint.remote_address is not None
        )
        active = endpoint in self._where or endpoint in self._slow
        if not wanted:
            self._deactivate(endpoint)
        elif active and (endpoint in self._slow) != self._needs_slow(endpoint):
            self._deactivate(endpoint)  # moved between UDP and TCP: change lanes
            self._activate(endpoint, pt)
        elif not active:
            self._activate(endpoint, pt)
        elif endpoint in self._where:  # the peer's address may have moved
            b, i = self._where[endpoint]
            self._entries[b][i] = self._place(endpoint, pt, b, i)

    def _send_slow(self, endpoint: Endpoint, data: bytearray) -> int:
        try:
            protected = endpoint.srtp.protect(bytes(data))  # type: ignore[union-attr]
        except SrtpError:
            return 0
        addr = endpoint.remote_address
        return int(self._sock.send(protected, addr, endpoint.local_address))  # type: ignore[arg-type]

    def _activate(self, endpoint: Endpoint, pt: int) -> None:
        self._marks[endpoint] = (self.packets, self.payload_bytes)
        self._payload_types[pt] = self._payload_types.get(pt, 0) + 1
        if self._needs_slow(endpoint):
            self._slow[endpoint] = pt
            return
        if not self._owners or len(self._owners[-1]) == BATCH:
            if len(self._batches) == len(self._owners):
                self._batches.append(MmsgBatch(self._sock.libc, BATCH))
            self._owners.append([])
            self._entries.append([])
        b, i = len(self._owners) - 1, len(self._owners[-1])
        self._owners[b].append(endpoint)
        self._entries[b].append(self._place(endpoint, pt, b, i))

    def _needs_slow(self, endpoint: Endpoint) -> bool:
        srtp = endpoint.srtp
        return (
            not self._sock.protector.available
            or srtp is None
            or srtp.tx_handle is None
            or endpoint.remote_address is None
            or endpoint.remote_address[0][0] == "t"  # "tcp:..." (media.tcp): framed, one by one
        )

    def _place(self, endpoint: Endpoint, pt: int, b: int, i: int) -> Entry:
        batch = self._batches[b]
        if endpoint.sockaddr is None:
            udp = self._sock.udp
            local = endpoint.local_address if udp.pktinfo else None
            endpoint.sockaddr = batch.address(endpoint.remote_address, local, udp.family)  # type: ignore[arg-type]
        batch.set_address(i, endpoint.sockaddr)
        self._where[endpoint] = (b, i)
        self._last_length = -1  # this slot's iovec length must be written
        return (batch.slots[i], batch.iovs[i], endpoint.srtp.tx_handle, pt)  # type: ignore[union-attr]

    def _deactivate(self, endpoint: Endpoint) -> None:
        if endpoint not in self._marks:
            return
        self.settle(endpoint)
        del self._marks[endpoint]
        pt = self._members[endpoint]
        self._payload_types[pt] -= 1
        if not self._payload_types[pt]:
            del self._payload_types[pt]
        if self._slow.pop(endpoint, None) is not None:
            return
        b, i = self._where.pop(endpoint)
        last = self._owners[-1].pop()
        last_entry = self._entries[-1].pop()
        if last is not endpoint:  # the last slot's owner moves into the freed slot
            self._owners[b][i] = last
            self._entries[b][i] = self._place(last, last_entry[3], b, i)
        if not self._owners[-1]:
            self._owners.pop()
            self._entries.pop()
