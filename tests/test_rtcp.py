"""Viewer RTCP parsing (RR, NACK, PLI, FIR) and sender-report clock arithmetic."""

import struct

import pytest
from aiortc.rtp import (
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
)
from hypothesis import given
from hypothesis import strategies as st

from media.rtcp import (
    ClockMapping,
    RtcpError,
    ntp_from_time,
    ntp_middle,
    parse_feedback,
    rtt_seconds,
    sender_report,
    time_from_ntp,
)


def test_compound_rr_nack_pli_fir():
    rr = RtcpRrPacket(ssrc=9, reports=[RtcpReceiverInfo(1234, 64, 17, 100, 900, 5, 6)])
    # generic NACK across the wrap: PID 65535 with BLP bits for 0 and 3
    nack = b"\x81\xcd\x00\x03" + struct.pack("!LLHH", 9, 1234, 65535, 0b1001)
    pli = RtcpPsfbPacket(fmt=1, ssrc=9, media_ssrc=1234)
    fir = RtcpPsfbPacket(fmt=4, ssrc=9, media_ssrc=0, fci=struct.pack("!LBxxx", 777, 1))
    fb = parse_feedback(bytes(rr) + nack + bytes(pli) + bytes(fir))
    report = fb.reports[0]
    assert (report.ssrc, report.fraction_lost, report.cumulative_lost, report.jitter) == (
        1234,
        0.25,
        17,
        900,
    )
    assert sorted(fb.nacks[1234]) == [0, 3, 65535]
    assert fb.keyframes == {1234, 777} and (fb.plis, fb.firs) == (1, 1)


@pytest.mark.parametrize("data", [b"\x80", b"\x00" * 8, b"\x81\xc9\x00\x07" + b"\x00" * 8])
def test_malformed_rtcp_is_a_precise_error(data):
    with pytest.raises(RtcpError, match="RTCP from viewer is malformed"):
        parse_feedback(data)


def test_rtt_from_lsr_dlsr():
    now = 1_800_000_000.0
    lsr = ntp_middle(now - 0.250)  # our SR left 250 ms ago
    dlsr = int(0.100 * 65536)  # the viewer held it 100 ms
    assert rtt_seconds(lsr, dlsr, now) == pytest.approx(0.150, abs=0.001)
    assert rtt_seconds(0, 0, now) is None


@given(st.floats(1e9, 4.1e9))
def test_ntp_round_trip(t):
    assert time_from_ntp(ntp_from_time(t)) == pytest.approx(t, abs=1e-6)


def test_sender_report_and_clock_mapping():
    report = RtcpPacket.parse(sender_report(55, 1_800_000_000.5, 2**32 + 5, 10, 1000))[0]
    assert report.ssrc == 55 and report.sender_info.rtp_timestamp == 5
    mapping = ClockMapping.from_sr(report, 48000)
    assert mapping.time == pytest.approx(1_800_000_000.5)
    assert mapping.rtp_at(1_800_000_001.5) == 48005


@given(st.binary(max_size=200))
def test_parse_feedback_fails_only_with_rtcp_error(data):
    try:
        feedback = parse_feedback(data)
    except RtcpError:
        return
    assert all(0 <= seq <= 0xFFFF for lost in feedback.nacks.values() for seq in lost)


def _reference_feedback(data: bytes):
    """What aiortc.rtp's generic parser reads from a well-formed compound packet."""
    from aiortc.rtp import RtcpRtpfbPacket, RtcpSrPacket

    reports, nacks, keyframes = [], {}, set()
    for packet in RtcpPacket.parse(data):
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            reports += [
                (r.ssrc, r.fraction_lost / 256, r.packets_lost, r.jitter, r.lsr, r.dlsr)
                for r in packet.reports
            ]
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == 1:
            nacks.setdefault(packet.media_ssrc, []).extend(s & 0xFFFF for s in packet.lost)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 1:
            keyframes.add(packet.media_ssrc)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 4:
            keyframes |= {struct.unpack_from("!L", packet.fci, i)[0] for i in range(0, 8, 8)}
    return reports, nacks, keyframes


_u32 = st.integers(0, 2**32 - 1)
_block = st.builds(
    RtcpReceiverInfo,
    ssrc=_u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-(2**23), 2**23 - 1),
    highest_sequence=_u32,
    jitter=_u32,
    lsr=_u32,
    dlsr=_u32,
)


def _rr(blocks):
    return bytes(RtcpRrPacket(ssrc=1, reports=blocks))


def _sr(blocks):
    from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

    return bytes(RtcpSrPacket(ssrc=1, sender_info=RtcpSenderInfo(1, 2, 3, 4), reports=blocks))


def _nack(media_ssrc, pairs):
    fci = b"".join(struct.pack("!HH", pid, blp) for pid, blp in pairs)
    return struct.pack("!BBHLL", 0x81, 205, 2 + len(pairs), 1, media_ssrc) + fci


def _psfb(fmt, media_ssrc, fir_ssrc):
    fci = struct.pack("!LBxxx", fir_ssrc, 7) if fmt == 4 else b""
    return bytes(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=media_ssrc, fci=fci))


_SDES = b"\x81\xca\x00\x06" + struct.pack("!L", 1) + b"\x01\x10" + b"{0123456789abcd}" + b"\x00\x00"
_TRANSPORT_CC = struct.pack("!BBHLL", 0x8F, 205, 4, 1, 2) + bytes(8)
_REMB = struct.pack("!BBHLL", 0x8F, 206, 4, 1, 0) + b"REMB" + bytes(4)
_part = st.one_of(
    st.lists(_block, max_size=4).map(_rr),
    st.lists(_block, max_size=2).map(_sr),
    st.builds(_nack, _u32, st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)))),
    st.builds(_psfb, st.sampled_from([1, 4]), _u32, _u32),
    st.sampled_from([_SDES, _TRANSPORT_CC, _REMB]),
)


@given(st.lists(_part, min_size=1, max_size=6))
def test_parse_feedback_reads_what_aiortcs_generic_parser_reads(parts):
    data = b"".join(parts)
    fb = parse_feedback(data)
    reports, nacks, keyframes = _reference_feedback(data)
    mine = [
        (r.ssrc, r.fraction_lost, r.cumulative_lost, r.jitter, r.lsr, r.dlsr) for r in fb.reports
    ]
    assert mine == reports
    assert {k: sorted(v) for k, v in fb.nacks.items()} == {k: sorted(v) for k, v in nacks.items()}
    assert fb.keyframes == keyframes


def test_padded_rr_and_trailing_garbage():
    rr = bytearray(_rr([RtcpReceiverInfo(5, 64, -3, 1, 2, 3, 4)]) + b"\x00\x00\x00\x04")
    rr[0] |= 0x20  # padding bit; length grows by one word
    rr[3] += 1
    assert parse_feedback(bytes(rr)).reports[0].cumulative_lost == -3
    with pytest.raises(RtcpError):
        parse_feedback(bytes(rr) + b"\x80\xc9")
