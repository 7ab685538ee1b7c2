"""Depacketizers: RTP payloads back into whole coded frames, for the recorder (no decoding).

VP8 (RFC 7741): the payload descriptor is stripped and the partitions concatenated.
H264 (RFC 6184): single NAL units, STAP-A and FU-A become one Annex-B access unit (start
codes), the form the MP4 and Matroska muxers convert to length-prefixed samples.
Opus (RFC 7587): one packet is one frame.

`FrameAssembler` collects the packets of one frame (same timestamp, consecutive sequence
numbers, ended by the marker bit) and hands the frame on once it is whole; a frame with a
hole is dropped, and so is every frame after it until the next keyframe (an inter frame on a
missing reference decodes to garbage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import rtp
from .keyframe import H264_FU_A, H264_IDR, H264_STAP_A, vp8_is_keyframe_start

START_CODE = b"\x00\x00\x00\x01"
H264_PPS = 8
H264_SPS = 7
REORDER_S = 0.5  # how long a hole waits for its retransmission
MAX_PENDING = 4096  # packets held behind a hole (~5 MB)


class DepacketizeError(ValueError):
    """A payload that cannot be part of a frame of its codec."""


def vp8_payload(payload: bytes) -> bytes:
    """The VP8 bitstream part of one RTP payload (the RFC 7741 descriptor removed)."""
    if not payload:
        raise DepacketizeError("VP8 payload is empty")
    offset = 1
    if payload[0] & 0x80:
        if len(payload) < 2:
            raise DepacketizeError("VP8 descriptor is truncated")
        x = payload[1]
        offset = 2
        if x & 0x80:
            if len(payload) <= offset:
                raise DepacketizeError("VP8 picture id is truncated")
            offset += 2 if payload[offset] & 0x80 else 1
        if x & 0x40:
            offset += 1
        if x & 0x30:
            offset += 1
    if offset > len(payload):
        raise DepacketizeError("VP8 descriptor is longer than the payload")
    return payload[offset:]


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a VP8 keyframe's header, None for an inter frame."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return (frame[6] | frame[7] << 8) & 0x3FFF, (frame[8] | frame[9] << 8) & 0x3FFF


def h264_nals(payload: bytes, fu_started: bool) -> tuple[list[bytes], bool]:
    """The Annex-B pieces of one H264 RTP payload, and whether an FU-A is now open."""
    if not payload:
        raise DepacketizeError("H264 payload is empty")
    nal_type = payload[0] & 0x1F
    if 1 <= nal_type <= 23:
        return [START_CODE + payload], False
    if nal_type == H264_STAP_A:
        units, offset = [], 1
        while offset + 2 <= len(payload):
            size = (payload[offset] << 8) | payload[offset + 1]
            if size == 0 or offset + 2 + size > len(payload):
                raise DepacketizeError("H264 STAP-A unit is truncated")
            units.append(START_CODE + payload[offset + 2 : offset + 2 + size])
            offset += 2 + size
        return units, False
    if nal_type == H264_FU_A:
        if len(payload) < 2:
            raise DepacketizeError("H264 FU-A is truncated")
        header = payload[1]
        if header & 0x80:  # start: rebuild the NAL header from the FU indicator and header
            nal = bytes(((payload[0] & 0xE0) | (header & 0x1F),))
            return [START_CODE + nal + payload[2:]], not header & 0x40
        if not fu_started:
            raise DepacketizeError("H264 FU-A continues a unit whose start was lost")
        return [payload[2:]], not header & 0x40
    raise DepacketizeError(f"H264 NAL unit type {nal_type} is not supported in RTP")


def h264_is_keyframe(frame: bytes) -> bool:
    """True when an Annex-B access unit holds an IDR slice."""
    at = frame.find(START_CODE)
    while at >= 0:
        if at + 4 < len(frame) and frame[at + 4] & 0x1F == H264_IDR:
            return True
        at = frame.find(START_CODE, at + 4)
    return False


def annexb_to_avcc(frame: bytes) -> bytes:
    """An access unit we assembled (4-byte start codes) with 4-byte lengths instead, the
    form MP4 samples take once the stream's parameters are an avcC."""
    units = frame.split(START_CODE)
    return b"".join(len(u).to_bytes(4, "big") + u for u in units if u)


@dataclass
class Frame:
    """One coded frame: its source SSRC and RTP timestamp, bytes, and whether it is a keyframe."""

    ssrc: int
    timestamp: int
    data: bytes
    keyframe: bool
    arrival: float


def join_vp8(payloads: list[bytes]) -> tuple[bytes, bool]:
    """One VP8 frame from its payloads in order, and whether it is a keyframe."""
    keyframe = vp8_is_keyframe_start(payloads[0])
    return b"".join(vp8_payload(p) for p in payloads), keyframe


def join_h264(payloads: list[bytes]) -> tuple[bytes, bool]:
    """One Annex-B access unit from its payloads in order, and whether it holds an IDR."""
    pieces: list[bytes] = []
    open_fu = False
    for payload in payloads:
        units, open_fu = h264_nals(payload, open_fu)
        pieces.extend(units)
    data = b"".join(pieces)
    return data, h264_is_keyframe(data)


JOINERS: dict[str, Callable[[list[bytes]], tuple[bytes, bool]]] = {
    "VP8": join_vp8,
    "H264": join_h264,
}


class FrameAssembler:
    """Packets in forwarding order (one outgoing sequence, retransmissions late) to whole
    video frames, in sequence order. A hole that stays open REORDER_S (or MAX_PENDING
    packets) is skipped, and frames are dropped until the next keyframe."""

    def __init__(self, codec: str) -> None:
        self.join = JOINERS[codec]
        self.pending: dict[int, tuple[int, bool, int, bytes, float]] = {}
        self.next_seq: int | None = None
        self.newest = 0.0
        self.broken = True  # nothing decodable yet: wait for a keyframe
        self.dropped = 0

    def push(
        self, ssrc: int, marker: bool, seq: int, ts: int, payload: bytes, arrival: float
    ) -> list[Frame]:
        """Add one packet; returns the frames it completes (oldest first)."""
        if self.next_seq is None:
            self.next_seq = seq
        if rtp.seq_diff(seq, self.next_seq) < 0:
            return []  # after its frame was given up
        self.pending[seq] = (ssrc, marker, ts, payload, arrival)
        self.newest = max(self.newest, arrival)
        frames: list[Frame] = []
        while self.pending:
            taken, frame = self._take()
            if frame is not None:
                frames.append(frame)
            elif not taken and not self._skip_if_stale():
                break
        return frames

    def _take(self) -> tuple[bool, Frame | None]:
        """Whether the frame at next_seq was all here and taken, and that frame (None when
        it was dropped)."""
        assert self.next_seq is not None
        seq, run = self.next_seq, []
        while seq in self.pending:
            run.append(seq)
            if self.pending[seq][1]:
                break
            seq = (seq + 1) & 0xFFFF
        if not run or not self.pending[run[-1]][1]:
            return False, None
        parts = [self.pending.pop(s) for s in run]
        self.next_seq = (run[-1] + 1) & 0xFFFF
        return True, self._frame(parts)

    def _frame(self, parts: list[tuple[int, bool, int, bytes, float]]) -> Frame | None:
        ssrc, _, ts, _, arrival = parts[0]
        try:
            if any(p[2] != ts or p[0] != ssrc for p in parts):
                raise DepacketizeError("a frame's packets carry different timestamps")
            data, keyframe = self.join([p[3] for p in parts])
        except DepacketizeError:
            self._drop()
            return None
        if self.broken and not keyframe:
            self._drop()
            return None
        self.broken = False
        return Frame(ssrc, ts, data, keyframe, arrival)

    def _drop(self) -> None:
        self.dropped += 1
        self.broken = True

    def _skip_if_stale(self) -> bool:
        """Give up the hole at next_seq when it stayed open too long; True if skipped."""
        oldest = min(p[4] for p in self.pending.values())
        if self.newest - oldest < REORDER_S and len(self.pending) < MAX_PENDING:
            return False
        assert self.next_seq is not None
        seq = self.next_seq
        while seq in self.pending:  # a frame's head, its tail lost: dropped
            del self.pending[seq]
            seq = (seq + 1) & 0xFFFF
        self._drop()
        if not self.pending:
            self.next_seq = seq
            return False
        self.next_seq = min(self.pending, key=lambda s: (s - seq) & 0xFFFF)
        # what sits at the new next_seq may be a frame's tail: _take fails to make a
        # keyframe of it, drops it and moves on
        return True
