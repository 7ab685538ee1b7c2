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
