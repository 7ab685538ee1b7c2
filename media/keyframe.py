"""Keyframe control: detect keyframes in RTP payloads and throttle upstream requests.

A new or recovering viewer must start on a keyframe; many viewers asking at once must not
turn into a keyframe storm at the lecturer's encoder (REFERENCES.md: Galène coalesces to one
request per 500 ms), so requests are coalesced per track.
"""

from __future__ import annotations

from collections.abc import Callable

H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28


def vp8_is_keyframe_start(payload: bytes) -> bool:
    """True for the first packet of a VP8 keyframe (RFC 7741 descriptor, S=1, PID=0, P=0)."""
    if len(payload) < 1:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:
        return False
    offset = 1
    if b0 & 0x80:
        if len(payload) < 2:
            return False
        x = payload[1]
        offset = 2
        if x & 0x80:
            if len(payload) <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if x & 0x40:
            offset += 1
        if x & 0x30:
            offset += 1
    return len(payload) > offset and not payload[offset] & 0x01


def _stap_a_types(payload: bytes) -> list[int]:
    types = []
    offset = 1
    while offset + 2 < len(payload):
        size = (payload[offset] << 8) | payload[offset + 1]
        if size == 0 or offset + 2 + size > len(payload):
            break
        types.append(payload[offset + 2] & 0x1F)
        offset += 2 + size
    return types


def h264_is_keyframe_start(payload: bytes) -> bool:
    """True for a packet that starts an H264 keyframe: SPS or IDR start (single, STAP-A, FU-A)."""
    if len(payload) < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (H264_IDR, H264_SPS):
        return True
    if nal_type == H264_STAP_A:
        return any(t in (H264_IDR, H264_SPS) for t in _stap_a_types(payload))
    if nal_type == H264_FU_A and len(payload) >= 2:
        fu = payload[1]
        return bool(fu & 0x80) and (fu & 0x1F) in (H264_IDR, H264_SPS)
    return False


def keyframe_detector(codec: str) -> Callable[[bytes], bool]:
    """The keyframe-start test for a codec name ("VP8", "H264"); audio: every packet starts."""
    name = codec.upper()
    if name == "VP8":
        return vp8_is_keyframe_start
    if name == "H264":
        return h264_is_keyframe_start
    return lambda payload: True


class KeyframeThrottle:
    """Coalesces keyframe requests: at most one upstream request per `interval` seconds.

    `request(now)` says whether to send one now; a request refused during the window stays
    pending, and `due(now)` reports when the window has passed so the caller sends it then
    (unless a keyframe arrived meanwhile: `keyframe_seen()` clears it).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.last_sent: float | None = None
        self.pending = False
        self.sent = 0

    def request(self, now: float) -> bool:
        """Record a request at `now`; True when it must go upstream right away."""
        if self.last_sent is None or now - self.last_sent >= self.interval:
            self.last_sent = now
            self.pending = False
            self.sent += 1
            return True
        self.pending = True
        return False

    def due(self, now: float) -> bool:
        """True (and counted as sent) when a pending request may go upstream at `now`."""
        if self.pending and self.last_sent is not None and now - self.last_sent >= self.interval:
            return self.request(now)
        return False

    def wait(self, now: float) -> float:
        """Seconds until a pending request may be sent."""
        if self.last_sent is None:
            return 0.0
        return max(0.0, self.interval - (now - self.last_sent))

    def keyframe_seen(self) -> None:
        """A keyframe went out: a pending request is answered."""
        self.pending = False
