"""Fast RTP header helpers: pack/unpack with struct, no per-packet objects beyond bytes.

The forwarder rewrites each incoming packet once; these helpers keep that rewrite to a
12-byte `struct.pack` plus one concatenation (REFERENCES.md: ~0.4 µs against ~4 µs for
building and serialising an aiortc `RtpPacket`).
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!BBHII")
RTX_OSN = struct.Struct("!H")


class RtpHeaderError(ValueError):
    """Bytes that cannot be an RTP packet."""


def seq_gt(a: int, b: int) -> bool:
    """True when 16-bit sequence number a is newer than b (RFC 3550 wrap-around)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b between 16-bit sequence numbers."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between 32-bit RTP timestamps."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


def pack(marker: bool, pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    """One RTP packet with a bare 12-byte header (no CSRC, extension or padding)."""
    return HEADER.pack(0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload


def padding_only(pt: int, seq: int, ts: int, ssrc: int) -> bytes:
    """An RTP packet whose whole payload is padding (RFC 3550 5.1): decoders skip it."""
    return HEADER.pack(0xA0, pt, seq, ts, ssrc) + b"\x00\x00\x00\x04"


def fields(packet: bytes | bytearray) -> tuple[bool, int, int, int, int]:
    """(marker, payload_type, seq, timestamp, ssrc) of an RTP packet."""
    if len(packet) < 12:
        raise RtpHeaderError(f"RTP packet of {len(packet)} bytes is shorter than a header")
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(packet)
    if b0 >> 6 != 2:
        raise RtpHeaderError(f"RTP version {b0 >> 6} is not 2")
    return bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc


def payload_offset(packet: bytes | bytearray) -> int:
    """Offset of the payload: after CSRCs and a header extension if present."""
    b0 = packet[0]
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(packet) < offset + 4:
            raise RtpHeaderError("RTP header extension is truncated")
        words = (packet[offset + 2] << 8) | packet[offset + 3]
        offset += 4 + 4 * words
    if offset > len(packet):
        raise RtpHeaderError("RTP header is longer than the packet")
    return offset


def payload(packet: bytes | bytearray) -> bytes:
    """The payload of an RTP packet, without header, extension or padding."""
    start = payload_offset(packet)
    end = len(packet)
    if packet[0] & 0x20:
        end -= packet[-1]
        if end < start:
            raise RtpHeaderError("RTP padding is longer than the payload")
    return bytes(packet[start:end])


def with_payload_type(packet: bytes | bytearray, pt: int) -> bytes:
    """The same packet with another payload type (marker bit kept)."""
    return bytes(packet[:1]) + bytes(((packet[1] & 0x80) | pt,)) + bytes(packet[2:])


def wrap_rtx(packet: bytes, rtx_pt: int, rtx_seq: int, rtx_ssrc: int) -> bytes:
    """An RFC 4588 retransmission of a bare-header packet: OSN then the original payload."""
    marker, _pt, osn, ts, _ssrc = fields(packet)
    return pack(marker, rtx_pt, rtx_seq, ts, rtx_ssrc, RTX_OSN.pack(osn) + packet[12:])
