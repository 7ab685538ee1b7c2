"""Viewer RTCP: parse feedback (RR, NACK, PLI, FIR) and build sender reports.

Parsing uses aiortc.rtp's public packet classes. Clock conversions follow RFC 3550: NTP time
is seconds since 1900 in 32.32 fixed point; LSR/DLSR are its middle 32 bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from aiortc.rtp import (
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
)

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


def _fir_targets(fci: bytes) -> set[int]:
    return {struct.unpack_from("!L", fci, pos)[0] for pos in range(0, len(fci) - 7, 8)}


def _add_report_blocks(feedback: Feedback, reports: list[RtcpReceiverInfo]) -> None:
    for r in reports:
        feedback.reports.append(
            ReceptionReport(
                r.ssrc, r.fraction_lost / 256.0, r.packets_lost, r.jitter, r.lsr, r.dlsr
            )
        )


def parse_feedback(data: bytes) -> Feedback:
    """Parse a decrypted compound RTCP packet from a viewer."""
    try:
        packets = RtcpPacket.parse(data)
    except (ValueError, struct.error) as exc:
        raise RtcpError(f"RTCP from viewer is malformed: {exc}") from exc
    feedback = Feedback()
    for packet in packets:
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            _add_report_blocks(feedback, packet.reports)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTPFB_NACK:
            lost = feedback.nacks.setdefault(packet.media_ssrc, [])
            lost.extend(seq & 0xFFFF for seq in packet.lost)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == PSFB_PLI:
            feedback.plis += 1
            feedback.keyframes.add(packet.media_ssrc)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == PSFB_FIR:
            feedback.firs += 1
            feedback.keyframes |= _fir_targets(packet.fci)
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
