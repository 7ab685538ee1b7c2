"""Viewer RTCP: parse feedback (RR, NACK, PLI, FIR) and build sender reports.

Feedback is parsed with struct, reading only what the forwarder acts on; sender reports are
built with aiortc.rtp's public packet classes. Clock conversions follow RFC 3550: NTP time
is seconds since 1900 in 32.32 fixed point; LSR/DLSR are its middle 32 bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

from .errors import MediaError

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
RTPFB_NACK = 1
PSFB_PLI = 1
PSFB_FIR = 4


class RtcpError(MediaError):
    """A compound RTCP packet that cannot be parsed."""


@dataclass
class ReceptionReport:
    """One RR block about a stream we send: loss, jitter (timestamp units), LSR/DLSR."""

    ssrc: int
    fraction_lost: float
    cumulative_lost: int
    jitter: int
    lsr: int
    dlsr: int


@dataclass
class Feedback:
    """What one compound RTCP packet from a viewer asks for or reports."""

    reports: list[ReceptionReport] = field(default_factory=list)
    nacks: dict[int, list[int]] = field(default_factory=dict)  # media ssrc -> lost seqs
    keyframes: set[int] = field(default_factory=set)  # media ssrcs asked by PLI/FIR
    plis: int = 0
    firs: int = 0


def ntp_from_time(t: float) -> int:
    """64-bit NTP timestamp of a Unix time."""
    return int((t + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def time_from_ntp(ntp: int) -> float:
    """Unix time of a 64-bit NTP timestamp (era 1, from 2036, when the top bit is 0)."""
    seconds = ntp / (1 << 32)
    if ntp < (1 << 63):
        seconds += 1 << 32
    return seconds - NTP_EPOCH_OFFSET


def ntp_middle(t: float) -> int:
    """The middle 32 bits of the NTP timestamp of `t` (the unit of LSR and DLSR)."""
    return (ntp_from_time(t) >> 16) & 0xFFFFFFFF


def rtt_seconds(lsr: int, dlsr: int, now: float) -> float | None:
    """Round-trip time from an RR block (RFC 3550 6.4.1); None when the viewer had no SR yet."""
    if lsr == 0:
        return None
    rtt = ((ntp_middle(now) - lsr - dlsr) & 0xFFFFFFFF) / 65536.0
    return rtt if rtt < 60.0 else None


RTCP_SR, RTCP_RR, RTCP_RTPFB, RTCP_PSFB = 200, 201, 205, 206
_HEADER = struct.Struct("!BBH")
_BLOCK = struct.Struct(
    "!IBBHIIII"
)  # ssrc, fraction, lost (8 + 16 bits), ext seq, jitter, lsr, dlsr
_SSRCS = struct.Struct("!II")
_NACK = struct.Struct("!HH")


def _report_blocks(feedback: Feedback, data: bytes, pos: int, end: int, count: int) -> None:
    if pos + 24 * count > end:
        raise RtcpError("RTCP from viewer is malformed: report blocks overrun the packet")
    for _ in range(count):
        ssrc, fraction, lost_hi, lost_lo, _seq, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        lost = (lost_hi << 16) | lost_lo
        if lost & 0x800000:
            lost -= 1 << 24  # signed 24 bits
        feedback.reports.append(ReceptionReport(ssrc, fraction / 256.0, lost, jitter, lsr, dlsr))
        pos += 24


def _nacks(feedback: Feedback, data: bytes, pos: int, end: int) -> None:
    media_ssrc = _SSRCS.unpack_from(data, pos)[1]
    lost = feedback.nacks.setdefault(media_ssrc, [])
    for at in range(pos + 8, end - 3, 4):
        pid, blp = _NACK.unpack_from(data, at)
        lost.append(pid)
        d = 1
        while blp:
            if blp & 1:
                lost.append((pid + d) & 0xFFFF)
            blp >>= 1
            d += 1


def _keyframe_request(feedback: Feedback, fmt: int, data: bytes, pos: int, end: int) -> None:
    if fmt == PSFB_PLI:
        feedback.plis += 1
        feedback.keyframes.add(_SSRCS.unpack_from(data, pos)[1])
    elif fmt == PSFB_FIR:
        feedback.firs += 1
        feedback.keyframes.update(
            struct.unpack_from("!L", data, at)[0] for at in range(pos + 8, end - 7, 8)
        )


def _packet_end(data: bytes, first: int, pos: int, length: int) -> int:
    """End of one packet's payload (padding removed); RtcpError when it does not fit."""
    end = pos + 4 * length
    if first >> 6 != 2:
        raise RtcpError("RTCP from viewer is malformed: version is not 2")
    if end > len(data):
        raise RtcpError("RTCP from viewer is malformed: packet truncated")
    if first & 0x20:  # padding: its last byte counts the padding bytes
        pad = data[end - 1] if end > pos else 0
        if not pad or pad > end - pos:
            raise RtcpError("RTCP from viewer is malformed: bad padding")
        end -= pad
    return end


def parse_feedback(data: bytes) -> Feedback:
    """Parse a decrypted compound RTCP packet from a viewer (RFC 3550, 4585, 5104).

    Reads only what the forwarder uses (report blocks of SR/RR, generic NACK, PLI, FIR) with
    struct, straight from the datagram: every viewer sends one every second or so, and the
    generic packet objects of aiortc.rtp cost 3x more (more with the SDES browsers add).
    """
    feedback = Feedback()
    pos, size = 0, len(data)
    if size < 4:
        raise RtcpError("RTCP from viewer is malformed: shorter than a header")
    while pos < size:
        if pos + 4 > size:
            raise RtcpError("RTCP from viewer is malformed: trailing bytes")
        first, kind, length = _HEADER.unpack_from(data, pos)
        pos += 4
        end = _packet_end(data, first, pos, length)
        count = first & 0x1F
        if kind == RTCP_RR or kind == RTCP_SR:
            start = pos + (4 if kind == RTCP_RR else 24)
            _report_blocks(feedback, data, start, end, count)
        elif kind == RTCP_RTPFB or kind == RTCP_PSFB:
            if end - pos < 8:
                raise RtcpError("RTCP from viewer is malformed: feedback shorter than 8 bytes")
            if kind == RTCP_RTPFB and count == RTPFB_NACK:
                _nacks(feedback, data, pos, end)
            elif kind == RTCP_PSFB:
                _keyframe_request(feedback, count, data, pos, end)
        pos += 4 * length
    return feedback


def sender_report(ssrc: int, now: float, rtp_timestamp: int, packets: int, octets: int) -> bytes:
    """An RTCP SR (no report blocks) saying `rtp_timestamp` corresponds to Unix time `now`."""
    info = RtcpSenderInfo(
        ntp_timestamp=ntp_from_time(now),
        rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
        packet_count=packets & 0xFFFFFFFF,
        octet_count=octets & 0xFFFFFFFF,
    )
    return bytes(RtcpSrPacket(ssrc=ssrc, sender_info=info))


@dataclass
class ClockMapping:
    """A sender's NTP <-> RTP mapping from its last SR: RTP `rtp` was at Unix time `time`."""

    ssrc: int
    time: float
    rtp: int
    clock_rate: int

    def rtp_at(self, t: float) -> int:
        """The RTP timestamp of this source at Unix time t (extrapolated)."""
        return (self.rtp + round((t - self.time) * self.clock_rate)) & 0xFFFFFFFF

    @classmethod
    def from_sr(cls, packet: RtcpSrPacket, clock_rate: int) -> ClockMapping:
        """The mapping a publisher's SR states."""
        info = packet.sender_info
        return cls(packet.ssrc, time_from_ntp(info.ntp_timestamp), info.rtp_timestamp, clock_rate)
