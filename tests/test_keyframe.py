"""Keyframe detection from RTP payloads and the upstream request throttle."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.keyframe import (
    KeyframeThrottle,
    h264_is_keyframe_start,
    keyframe_detector,
    vp8_is_keyframe_start,
)


@pytest.mark.parametrize(
    "payload, expected",
    [
        (bytes([0x10, 0x00]), True),  # S=1 PID=0, P=0: keyframe start
        (bytes([0x10, 0x01]), False),  # P=1: interframe
        (bytes([0x00, 0x00]), False),  # S=0: continuation
        (bytes([0x11, 0x00]), False),  # PID=1: not the first partition
        (bytes([0x90, 0x80, 0x12, 0x00]), True),  # X, I with 7-bit picture id
        (bytes([0x90, 0x80, 0x92, 0x34, 0x00]), True),  # 15-bit picture id
        (bytes([0x90, 0x80, 0x92, 0x34, 0x01]), False),
        (bytes([0x90, 0xE0, 0x92, 0x34, 0x07, 0x55, 0x00]), True),  # I, L, T: 2+2+1+1
        (bytes([0x90]), False),  # truncated
        (b"", False),
    ],
)
def test_vp8(payload, expected):
    assert vp8_is_keyframe_start(payload) is expected


def stap_a(*nals: bytes) -> bytes:
    out = bytes([24])
    for nal in nals:
        out += len(nal).to_bytes(2, "big") + nal
    return out


@pytest.mark.parametrize(
    "payload, expected",
    [
        (bytes([0x65, 0x88]), True),  # IDR slice
        (bytes([0x67, 0x42]), True),  # SPS
        (bytes([0x41, 0x9A]), False),  # non-IDR slice
        (bytes([0x68, 0xCE]), False),  # PPS alone
        (stap_a(bytes([0x67, 0x42, 0x00]), bytes([0x68, 0xCE])), True),
        (stap_a(bytes([0x41, 0x01]), bytes([0x06, 0x05])), False),
        (stap_a(bytes([0x67, 0x42, 0x00]))[:3], False),  # truncated STAP-A
        (bytes([0x7C, 0x85, 0x00]), True),  # FU-A start of IDR
        (bytes([0x7C, 0x05, 0x00]), False),  # FU-A middle of IDR
        (bytes([0x7C, 0x81, 0x00]), False),  # FU-A start of non-IDR
        (b"", False),
    ],
)
def test_h264(payload, expected):
    assert h264_is_keyframe_start(payload) is expected


def test_detector_by_codec_name():
    assert keyframe_detector("vp8") is vp8_is_keyframe_start
    assert keyframe_detector("H264") is h264_is_keyframe_start
    assert keyframe_detector("opus")(b"\x00") is True


def test_throttle_coalesces_to_one_per_interval():
    throttle = KeyframeThrottle(0.5)
    sent = [t for t in [i * 0.01 for i in range(300)] if throttle.request(t)]
    assert sent == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_throttle_pending_fires_after_window_unless_keyframe_arrived():
    throttle = KeyframeThrottle(0.5)
    assert throttle.request(0.0)
    assert not throttle.request(0.1)
    assert throttle.wait(0.1) == pytest.approx(0.4)
    assert not throttle.due(0.3)
    assert throttle.due(0.5)
    assert not throttle.due(1.2)  # nothing pending any more
    assert not throttle.request(0.6)
    throttle.keyframe_seen()
    assert not throttle.due(1.1)
    assert throttle.sent == 2


@given(st.binary(max_size=64))
def test_detectors_never_raise_on_arbitrary_payloads(payload):
    assert isinstance(vp8_is_keyframe_start(payload), bool)
    assert isinstance(h264_is_keyframe_start(payload), bool)
