"""The forwarding core: one outgoing stream per lecture track, rewritten once per packet.

An incoming packet is rewritten ONCE (SSRC, seq, timestamp; header extensions stripped) into
the track's outgoing stream; a `Fanout` (media.endpoint) then sends the same bytes to every
viewer with that viewer's payload-type byte and SRTP. Sources (a publisher's track) come and
go; the `Munger` keeps the outgoing seq/timestamp monotonic across them, so viewers never
renegotiate. A viewer joins a video fanout only at a keyframe: replayed from the cache when
fresh, otherwise it waits for the next one (requested upstream through a throttle).

Simulcast room: a track with layers would hold one `TrackForwarder` per layer; a viewer's
`ViewerTrack.layer` names the one it is on, and a switch is `leave` + `join` (which waits for
a keyframe of the new layer) — the same path a joining viewer takes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import rtp
from .keyframe import KeyframeThrottle, keyframe_detector
from .packetcache import PacketCache
from .rtcp import ClockMapping, sender_report

logger = logging.getLogger(__name__)

# A cached keyframe is replayed to a joining viewer only while it is fresh: an older one
# means a burst of catch-up frames and added latency, so a throttled PLI is cheaper.
KEYFRAME_REPLAY_AGE = 1.0  # seconds
KEYFRAME_REPLAY_PACKETS = 120
# Retransmissions to one viewer: a packet is resent at most once per `resend_interval` (about
# its RTT; a receiver re-NACKs everything still missing at each new gap), and RTX is limited to
# RTX_SHARE of the track's packets plus a burst. Without these a viewer on a link slower than
# the lecture NACKs what its queue dropped and the retransmissions bury the link (measured:
# 10 Mbit/s of RTX towards a 400 kbit/s site).
RTX_SHARE = 0.5
RTX_BURST = 64.0
RESEND_MEMORY = 1024
MIN_RESEND_INTERVAL = 0.05
# A viewer is never resent a packet from before its first keyframe; that floor trails the
# newest packet by at most FLOOR_HORIZON (far more than the cache holds) so its 16-bit
# distance never wraps: compared for ever, it would refuse half of every 65,536 packets.
FLOOR_HORIZON = 8192
# A viewer whose video is paused (audio only, a weak or silent link) is sent one padding-only
# packet whenever the stream has moved IDLE_REFRESH packets on. SRTP keeps no index on the
# wire: both ends guess it from the last sequence number they saw, and after a gap of more than
# 32,768 packets the sender's libsrtp refuses to protect for up to 32,768 more (measured: a hall
# back from 4 minutes of audio only at 150 packets/s got no picture for 3 more minutes).
IDLE_REFRESH = 8192
# A relay link (an edge pulling the lecture for hundreds of sites) is a LAN or data-centre
# link: its losses are bursts (a busy edge's socket buffer overflowing), and every packet it
# misses is missed by every site behind it, so it may be resent everything it asks for.
RELAY_RTX_SHARE = 1.0
RELAY_RTX_BURST = 1024.0
RELAY_MIN_RESEND_INTERVAL = 0.02


class Munger:
    """Maps (source ssrc, seq, ts) to one monotonic outgoing (seq, ts) across source changes.

    A source's sequence numbers are extended (cycles counted, RFC 3550 A.1) so "before the
    anchor" stays decidable however long the source runs: a 16-bit distance to the first
    packet turns negative 32,768 packets in, which once stopped every class within minutes.
    """

    def __init__(self, clock_rate: int, seq: int | None = None, ts: int | None = None) -> None:
        self.clock_rate = clock_rate
        self.source: int | None = None
        self.first_seq = 0  # extended: the anchor's seq, in the source's own cycle count
        self.highest_seq = 0  # extended: the newest seq seen from the source
        self.seq_offset = 0
        self.ts_offset = 0
        self.last_seq = random.randrange(1 << 16) if seq is None else seq
        self.last_ts = random.randrange(1 << 32) if ts is None else ts
        self.last_time: float | None = None

    def reset_source(self) -> None:
        """Forget the current source: its next packet (or a new one) re-anchors the stream."""
        self.source = None

    def _anchor(self, ssrc: int, seq: int, ts: int, now: float) -> None:
        if self.last_time is None:
            out_seq, out_ts = self.last_seq, self.last_ts
        else:
            elapsed = max(1, round((now - self.last_time) * self.clock_rate))
            out_seq = (self.last_seq + 1) & 0xFFFF
            out_ts = (self.last_ts + elapsed) & 0xFFFFFFFF
        self.source = ssrc
        self.first_seq = self.highest_seq = seq
        self.seq_offset = (out_seq - seq) & 0xFFFF
        self.ts_offset = (out_ts - ts) & 0xFFFFFFFF

    def rewrite(
        self, ssrc: int, seq: int, ts: int, can_start: bool, now: float
    ) -> tuple[int, int] | None:
        """Outgoing (seq, ts), or None to drop (a new source not at a start, or stale)."""
        if ssrc != self.source:
            if not can_start:
                return None
            self._anchor(ssrc, seq, ts, now)
        elif self._extend(seq) < self.first_seq:
            return None  # from before the anchor (a late or retransmitted packet)
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        if self.last_time is None or rtp.seq_gt(out_seq, self.last_seq):
            self.last_seq = out_seq
            self.last_ts = out_ts
            self.last_time = now
        return out_seq, out_ts

    def _extend(self, seq: int) -> int:
        """The extended form of `seq`: the one nearest the newest seen (RFC 3550 A.1)."""
        extended = self.highest_seq + rtp.seq_diff(seq, self.highest_seq & 0xFFFF)
        if extended > self.highest_seq:
            self.highest_seq = extended
        return extended


@dataclass(eq=False)  # identity: a hashable member of its forwarder's viewer sets
class ViewerTrack:
    """One viewer's membership of one track: its endpoint, negotiated PTs and counters."""

    endpoint: Any  # media.endpoint.Endpoint (or anything with send_rtp/send_rtcp/state)
    payload_type: int
    rtx_payload_type: int | None = None
    layer: int = 0  # simulcast: which incoming layer this viewer receives
    joined: bool = False
    rtx_seq: int = field(default_factory=lambda: random.randrange(1 << 16))
    nacks: int = 0
    plis: int = 0
    retransmits: int = 0
    rtx_refused: int = 0
    resend_interval: float = 0.2
    resent: dict[int, float] = field(default_factory=dict)
    rtx_share: float = RTX_SHARE  # RTX budget: this share of forwarded packets ...
    rtx_burst: float = RTX_BURST  # ... plus a burst
    min_resend_interval: float = MIN_RESEND_INTERVAL
    rtx_tokens: float = -1.0  # starts at rtx_burst
    rtx_mark: int = 0
    floor: int | None = None  # first seq this viewer was sent since it (re)joined

    def __post_init__(self) -> None:
        if self.rtx_tokens < 0:
            self.rtx_tokens = self.rtx_burst

    @classmethod
    def relay(
        cls, endpoint: Any, payload_type: int, rtx_payload_type: int | None = None
    ) -> ViewerTrack:
        """A relay link's membership: an RTX budget and resend pace fit for a LAN link."""
        return cls(
            endpoint,
            payload_type,
            rtx_payload_type,
            rtx_share=RELAY_RTX_SHARE,
            rtx_burst=RELAY_RTX_BURST,
            min_resend_interval=RELAY_MIN_RESEND_INTERVAL,
            resend_interval=RELAY_MIN_RESEND_INTERVAL,
        )

    def set_rtt(self, rtt: float) -> None:
        """Pace resends of one packet to about the link's round trip (capped at 1 s)."""
        self.resend_interval = min(1.0, max(self.min_resend_interval, 1.2 * rtt))

    def next_rtx_seq(self) -> int:
        """Sequence number for this viewer's next RTX packet."""
        self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
        return self.rtx_seq

    def may_resend(self, seq: int, newest: int, now: float, forwarded: int) -> bool:
        """Whether `seq` may be retransmitted now (once per interval, within the RTX budget).

        `newest` is the track's newest outgoing seq (it keeps the floor within reach).
        """
        floor = self.floor
        if floor is None:
            return False
        if rtp.seq_diff(newest, floor) > FLOOR_HORIZON:
            floor = self.floor = (newest - FLOOR_HORIZON) & 0xFFFF
        if rtp.seq_diff(seq, floor) < 0:
            return False  # from before its keyframe: useless, and old data confuses receivers
        last = self.resent.get(seq)
        if last is not None and now - last < self.resend_interval:
            return False
        earned = (forwarded - self.rtx_mark) * self.rtx_share
        self.rtx_mark = forwarded
        self.rtx_tokens = min(self.rtx_burst, self.rtx_tokens + earned)
        if self.rtx_tokens < 1.0:
            self.rtx_refused += 1
            return False
        self.rtx_tokens -= 1.0
        self.resent.pop(seq, None)
        self.resent[seq] = now
        if len(self.resent) > RESEND_MEMORY:
            del self.resent[next(iter(self.resent))]
        return True


class TrackForwarder:
    """One lecture track (audio or video) towards every viewer."""

    def __init__(
        self,
        kind: str,
        codec: str,
        clock_rate: int,
        fanout: Any,
        request_keyframe: Callable[[], None] | None = None,
        throttle_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = kind
        self.codec = codec
        self.clock_rate = clock_rate
        self.fanout = fanout
        self.request_upstream = request_keyframe
        self.clock = clock
        self.ssrc = random.randrange(1, 1 << 32)
        self.rtx_ssrc = random.randrange(1, 1 << 32)
        self.munger = Munger(clock_rate)
        self.cache = PacketCache() if kind == "video" else None
        self.is_start = keyframe_detector(codec) if kind == "video" else (lambda p: True)
        self.throttle = KeyframeThrottle(throttle_interval)
        # ordered sets (dicts): join and leave stay O(1) when thousands of sites come and go
        self.waiting: dict[ViewerTrack, None] = {}
        self.viewers: dict[ViewerTrack, None] = {}
        self.idle: dict[ViewerTrack, int] = {}  # paused viewers -> last seq they were sent
        self.mappings: dict[int, ClockMapping] = {}
        self.newest: int | None = None
        self.retired: set[int] = set()
        self.packets = 0
        self.octets = 0
        self.dropped = 0
        self.replays = 0
        self._keyframe_at: tuple[int, int] | None = None
        self._timer: Any = None
        self.recorder: Any = None  # media.recorder.Recorder: gets what is forwarded

    # -- incoming ---------------------------------------------------------------------------

    def on_packet(self, packet: Any) -> None:
        """`on_rtp` for one parsed incoming packet (aiortc's RtpPacket, as ingest gives it)."""
        self.on_rtp(
            packet.ssrc,
            bool(packet.marker),
            packet.sequence_number,
            packet.timestamp,
            packet.payload,
        )

    def on_rtp(self, ssrc: int, marker: bool, seq: int, ts: int, payload: bytes) -> None:
        """Forward one incoming (RTX-unwrapped) packet from the current source."""
        if ssrc != self.newest and ssrc != self.munger.source:
            if ssrc in self.retired:
                self.dropped += 1
                return
            self._new_source(ssrc)
        now = self.clock()
        start = self.is_start(payload) and self._first_of_keyframe(ssrc, ts)
        out = self.munger.rewrite(ssrc, seq, ts, start and ssrc == self.newest, now)
        if out is None:
            self.dropped += 1
            if ssrc != self.munger.source:
                self.request_keyframe()
            return
        packet = rtp.pack(marker, 0, out[0], out[1], self.ssrc, payload)
        if self.cache is not None:
            self.cache.add(out[0], packet, start, now)
        if start and self.waiting:
            self._admit_waiting(out[0])
        if start:
            self.throttle.keyframe_seen()
        self.packets += 1
        self.octets += len(payload)
        self.fanout.send(packet)
        if self.recorder is not None:
            self.recorder.rtp(self.kind, ssrc, marker, out[0], ts, payload)

    def _first_of_keyframe(self, ssrc: int, ts: int) -> bool:
        # H264 may mark several packets of one keyframe (SPS, then the IDR's FU-A start):
        # only the first one is where a decoder can start.
        if self.kind != "video":
            return True
        if (ssrc, ts) == self._keyframe_at:
            return False
        self._keyframe_at = (ssrc, ts)
        return True

    def _new_source(self, ssrc: int) -> None:
        # The newest source wins: the current one keeps flowing until the new one can start
        # (a keyframe), then the old one is retired for good.
        if self.newest is not None:
            self.retired.add(self.newest)
        self.newest = ssrc
        self.request_keyframe()

    @property
    def source(self) -> int | None:
        """The SSRC being forwarded now (None: none yet, or its source is gone)."""
        return self.munger.source

    def readmit(self, ssrc: int | None) -> None:
        """A retired source may come back (a presenter cut back to): its packets are
        forwarded again once it is the newest source and starts at a keyframe."""
        if ssrc is not None:
            self.retired.discard(ssrc)

    def source_gone(self) -> None:
        """The source being forwarded is gone for good; a newer one, if one is already
        arriving, takes over at its next keyframe (audio: its next packet)."""
        source = self.munger.source
        if source is not None:
            self.retired.add(source)
            if self.newest == source:
                self.newest = None
        self.munger.reset_source()

    def on_sender_report(self, mapping: ClockMapping) -> None:
        """The publisher's NTP<->RTP mapping for one source."""
        self.mappings[mapping.ssrc] = mapping
        if self.recorder is not None:
            self.recorder.sender_report(self.kind, mapping)
        if len(self.mappings) > 8:
            self.mappings.pop(next(iter(self.mappings)))

    def source_changed(self) -> None:
        """The publisher is gone or replaced: its sources never come back."""
        if self.newest is not None:
            self.retired.add(self.newest)
        if self.munger.source is not None:
            self.retired.add(self.munger.source)
        self.newest = None
        self.munger.reset_source()

    # -- viewers ----------------------------------------------------------------------------

    def join(self, viewer: ViewerTrack) -> None:
        """Add a connected viewer: at once for audio; at a keyframe for video (idempotent)."""
        if viewer in self.viewers:
            return
        self.idle.pop(viewer, None)
        self.viewers[viewer] = None
        if self.cache is None:
            self._add(viewer, None)
        elif not self._replay(viewer):
            self.waiting[viewer] = None
            self.request_keyframe()

    def pause(self, viewer: ViewerTrack) -> None:
        """Stop sending to a viewer that stays connected (it may `join` again)."""
        if viewer in self.viewers:
            self.leave(viewer)
            self.idle[viewer] = self.munger.last_seq

    def refresh_idle(self) -> None:
        """Keep paused viewers' SRTP index estimates within reach (see IDLE_REFRESH)."""
        newest = self.munger.last_seq
        for viewer, last in list(self.idle.items()):
            if rtp.seq_diff(newest, last) < IDLE_REFRESH:
                continue
            if viewer.endpoint.state == "connected":
                packet = rtp.padding_only(
                    viewer.payload_type, newest, self.munger.last_ts, self.ssrc
                )
                viewer.endpoint.send_rtp(packet)
            self.idle[viewer] = newest

    def leave(self, viewer: ViewerTrack) -> None:
        """Remove a viewer (idempotent)."""
        self.idle.pop(viewer, None)
        self.viewers.pop(viewer, None)
        self.waiting.pop(viewer, None)
        if viewer.joined:
            self.fanout.remove(viewer.endpoint)
            viewer.joined = False

    def _add(self, viewer: ViewerTrack, first_seq: int | None) -> None:
        self.fanout.add(viewer.endpoint, viewer.payload_type)
        viewer.joined = True
        viewer.floor = first_seq

    def _admit_waiting(self, seq: int) -> None:
        for viewer in self.waiting:
            self._add(viewer, seq)
        self.waiting.clear()

    def _replay(self, viewer: ViewerTrack) -> bool:
        cache = self.cache
        if cache is None or cache.keyframe_time is None:
            return False
        if self.clock() - cache.keyframe_time > KEYFRAME_REPLAY_AGE:
            return False
        packets = cache.since_keyframe()
        if packets is None or len(packets) > KEYFRAME_REPLAY_PACKETS:
            return False
        for packet in packets:
            viewer.endpoint.send_rtp(rtp.with_payload_type(packet, viewer.payload_type))
        self._add(viewer, rtp.fields(packets[0])[2])
        self.replays += 1
        return True

    # -- feedback from viewers --------------------------------------------------------------

    def on_nack(self, viewer: ViewerTrack, seqs: list[int]) -> None:
        """Retransmit what the cache still holds (RTX if the viewer negotiated it)."""
        viewer.nacks += 1
        if self.cache is None or not viewer.joined:
            return
        now = self.clock()
        for seq in seqs:
            packet = self.cache.get(seq)
            if packet is None or not viewer.may_resend(
                seq, self.munger.last_seq, now, self.packets
            ):
                continue
            if viewer.rtx_payload_type is not None:
                out = rtp.wrap_rtx(
                    packet, viewer.rtx_payload_type, viewer.next_rtx_seq(), self.rtx_ssrc
                )
            else:
                out = rtp.with_payload_type(packet, viewer.payload_type)
            viewer.endpoint.send_rtp(out)
            viewer.retransmits += 1

    def on_keyframe_request(self, viewer: ViewerTrack) -> None:
        """A viewer's PLI/FIR: coalesced into at most one upstream request per interval."""
        viewer.plis += 1
        self.request_keyframe()

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, throttled; a refused request fires later."""
        if self.kind != "video" or self.request_upstream is None:
            return
        now = self.clock()
        if self.throttle.request(now):
            self.request_upstream()
        elif self._timer is None:
            self._schedule(self.throttle.wait(now))

    def _schedule(self, delay: float) -> None:
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(delay + 0.001, self._fire_pending)

    def _fire_pending(self) -> None:
        self._timer = None
        if self.throttle.due(self.clock()) and self.request_upstream is not None:
            self.request_upstream()

    # -- sender reports ---------------------------------------------------------------------

    def sender_report(self, now: float | None = None) -> bytes | None:
        """An SR for viewers: the publisher's clock mapping shifted by the munger's offset."""
        source = self.munger.source
        mapping = None if source is None else self.mappings.get(source)
        if mapping is None:
            return None
        now = self.clock() if now is None else now
        rtp_ts = (mapping.rtp_at(now) + self.munger.ts_offset) & 0xFFFFFFFF
        return sender_report(self.ssrc, now, rtp_ts, self.packets, self.octets)

    def close(self) -> None:
        """Stop timers and drop every viewer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for viewer in list(self.viewers):
            self.leave(viewer)
