"""Per-track packet cache: recent packets by sequence number (for NACK) and the packets since
the last keyframe start (to replay to a joining viewer).

Packets stored here are already rewritten for viewers (outgoing SSRC/seq/timestamp, bare
header), so a retransmission or replay is a payload-type patch plus SRTP.
"""

from __future__ import annotations

from .rtp import seq_diff


class PacketCacheError(ValueError):
    """A cache size the 16-bit sequence space cannot be split into."""


class PacketCache:
    """A ring of the last `capacity` packets keyed by outgoing seq, plus a keyframe window.

    `capacity` divides 65,536 (a power of two), so consecutive seqs keep distinct slots across
    the wrap: with 500 slots, seq 65,500 and seq 0 shared one, and the cache held only 36
    packets around each wrap.
    """

    def __init__(self, capacity: int = 512, keyframe_limit: int = 1000) -> None:
        if capacity <= 0 or capacity > 1 << 16 or capacity & (capacity - 1):
            raise PacketCacheError(f"packet cache capacity {capacity} is not a power of two")
        self.capacity = capacity
        self._mask = capacity - 1
        self.keyframe_limit = keyframe_limit
        self._ring: list[tuple[int, bytes] | None] = [None] * capacity
        self.keyframe_start: int | None = None
        self.keyframe_time: float | None = None
        self.last_seq: int | None = None

    def add(self, seq: int, packet: bytes, keyframe_start: bool = False, now: float = 0.0) -> None:
        """Store a packet; `keyframe_start` marks the first packet of a keyframe."""
        self._ring[seq & self._mask] = (seq, packet)
        if self.last_seq is None or seq_diff(seq, self.last_seq) > 0:
            self.last_seq = seq
        if keyframe_start:
            self.keyframe_start = seq
            self.keyframe_time = now
        elif self.keyframe_start is not None and self._keyframe_span() > self.keyframe_limit:
            self.keyframe_start = None

    def get(self, seq: int) -> bytes | None:
        """The packet with this seq, if still cached."""
        entry = self._ring[seq & self._mask]
        if entry is not None and entry[0] == seq:
            return entry[1]
        return None

    def _keyframe_span(self) -> int:
        if self.keyframe_start is None or self.last_seq is None:
            return 0
        return seq_diff(self.last_seq, self.keyframe_start) + 1

    def since_keyframe(self) -> list[bytes] | None:
        """Every packet from the last keyframe start to the newest, or None if any is missing."""
        span = self._keyframe_span()
        if self.keyframe_start is None or span <= 0 or span > self.capacity:
            return None
        packets = []
        for i in range(span):
            packet = self.get((self.keyframe_start + i) & 0xFFFF)
            if packet is None:
                return None
            packets.append(packet)
        return packets

    def clear(self) -> None:
        """Forget everything (the stream restarted in a way replay cannot bridge)."""
        self._ring = [None] * self.capacity
        self.keyframe_start = None
        self.keyframe_time = None
        self.last_seq = None
