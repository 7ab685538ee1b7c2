"""The forwarding core without sockets: munger continuity, keyframe joins, replay, NACK, SR.

The fan-out and endpoints here are small recorders with the media.endpoint interface; the
real ones are exercised in tests/test_lecture.py with aiortc peers.
"""

from itertools import pairwise

import pytest
from aiortc.rtp import RtcpPacket
from hypothesis import given
from hypothesis import strategies as st

from media import rtp
from media.forwarder import IDLE_REFRESH, Munger, TrackForwarder, ViewerTrack
from media.rtcp import ClockMapping, time_from_ntp

KEY = bytes([0x10, 0x00, 0x9D])  # VP8 keyframe start
DELTA = bytes([0x10, 0x01, 0x00])  # VP8 interframe start
CONT = bytes([0x00, 0x00])  # continuation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingEndpoint:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.state = "connected"

    def send_rtp(self, packet):
        self.sent.append(bytes(packet))


class RecordingFanout:
    def __init__(self) -> None:
        self.members: dict = {}

    def add(self, endpoint, payload_type):
        self.members[endpoint] = payload_type

    def remove(self, endpoint):
        self.members.pop(endpoint, None)

    def __len__(self):
        return len(self.members)

    def send(self, packet):
        for endpoint, pt in self.members.items():
            endpoint.send_rtp(rtp.with_payload_type(packet, pt))
        return len(self.members)


def video_track(clock=None):
    requests = []
    track = TrackForwarder(
        "video", "VP8", 90000, RecordingFanout(), lambda: requests.append(1), clock=clock or Clock()
    )
    return track, requests


def test_munger_continues_across_source_change():
    m = Munger(90000, seq=100, ts=5000)
    assert m.rewrite(1, 40000, 7, True, 0.0) == (100, 5000)
    assert m.rewrite(1, 40001, 3007, True, 0.1) == (101, 8000)
    assert m.rewrite(2, 9, 123, False, 0.2) is None  # new source must start on a keyframe
    assert m.rewrite(2, 10, 999, True, 0.6) == (102, 8000 + 45000)  # 0.5 s later
    assert m.rewrite(2, 9, 123, True, 0.7) is None  # before the switch point: stale
    assert m.rewrite(1, 40002, 6007, True, 0.7) == (103, 53000 + 9000)  # back to 1: re-anchored


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), min_size=1, max_size=12))
def test_munger_outgoing_seq_is_contiguous(runs):
    m = Munger(48000)
    now = 0.0
    out = []
    for run, (source, length) in enumerate(runs):
        base = (source * 7919) & 0xFFFF  # sources may reuse numbers; each run is a new ssrc
        for i in range(length):
            now += 0.02
            r = m.rewrite(run + 10, (base + i) & 0xFFFF, i * 960, True, now)
            out.append(r)
    seqs = [r[0] for r in out if r is not None]
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))


def test_viewer_waits_for_keyframe_and_requests_one():
    track, requests = video_track()
    track.on_rtp(1, True, 10, 0, KEY)
    viewer = ViewerTrack(RecordingEndpoint(), 97)
    track.cache.clear()  # nothing to replay
    track.join(viewer)
    assert requests == [1]
    track.on_rtp(1, True, 11, 3000, DELTA)
    assert viewer.endpoint.sent == []
    track.on_rtp(1, False, 12, 6000, KEY)
    track.on_rtp(1, True, 13, 6000, CONT)
    sent = [rtp.fields(p) for p in viewer.endpoint.sent]
    assert [s[1] for s in sent] == [97, 97] and [s[0] for s in sent] == [False, True]
    assert rtp.payload(viewer.endpoint.sent[0]) == KEY


def test_joining_viewer_gets_fresh_keyframe_replayed():
    clock = Clock()
    track, requests = video_track(clock)
    for i, payload in enumerate([DELTA, KEY, CONT, DELTA, CONT]):
        track.on_rtp(7, i % 2 == 0, 50 + i, i * 3000, payload)
    requests.clear()
    viewer = ViewerTrack(RecordingEndpoint(), 100)
    track.join(viewer)
    assert requests == []
    assert [rtp.payload(p) for p in viewer.endpoint.sent] == [KEY, CONT, DELTA, CONT]
    clock.now += 10  # stale keyframe: no replay, ask upstream instead
    late = ViewerTrack(RecordingEndpoint(), 100)
    track.join(late)
    assert late.endpoint.sent == [] and requests == [1]


def test_nack_answered_with_rtx_or_plain():
    track, _ = video_track()
    plain = ViewerTrack(RecordingEndpoint(), 97)
    rtx_viewer = ViewerTrack(RecordingEndpoint(), 96, rtx_payload_type=99)
    track.join(plain)
    track.join(rtx_viewer)
    for i, payload in enumerate([KEY, CONT, CONT]):
        track.on_rtp(3, False, 200 + i, 0, payload)
    seqs = [rtp.fields(p)[2] for p in plain.endpoint.sent]
    plain.endpoint.sent.clear()
    rtx_viewer.endpoint.sent.clear()
    track.on_nack(plain, [seqs[1], 12345])
    track.on_nack(rtx_viewer, [seqs[2]])
    assert plain.endpoint.sent == [plain.endpoint.sent[0]] and plain.retransmits == 1
    assert rtp.fields(plain.endpoint.sent[0])[1:3] == (97, seqs[1])
    _marker, pt, _seq, _ts, ssrc = rtp.fields(rtx_viewer.endpoint.sent[0])
    assert (pt, ssrc) == (99, track.rtx_ssrc)
    body = rtp.payload(rtx_viewer.endpoint.sent[0])
    assert int.from_bytes(body[:2], "big") == seqs[2] and body[2:] == CONT


def test_keyframe_requests_are_throttled():
    clock = Clock()
    track, requests = video_track(clock)
    viewer = ViewerTrack(RecordingEndpoint(), 97)
    for _i in range(100):
        clock.now += 0.01
        track.on_keyframe_request(viewer)
    assert len(requests) == 2 and viewer.plis == 100  # 1 s of requests -> at t=0 and t=0.5


def test_new_source_takes_over_at_its_keyframe_and_old_one_is_retired():
    track, requests = video_track()
    viewer = ViewerTrack(RecordingEndpoint(), 97)
    track.join(viewer)
    track.on_rtp(1, True, 10, 0, KEY)
    track.on_rtp(2, True, 500, 0, DELTA)  # new source, not a keyframe yet: old keeps going
    track.on_rtp(1, True, 11, 3000, DELTA)
    track.on_rtp(2, True, 501, 3000, KEY)  # switch
    track.on_rtp(1, True, 12, 6000, KEY)  # retired
    payloads = [rtp.payload(p) for p in viewer.endpoint.sent]
    seqs = [rtp.fields(p)[2] for p in viewer.endpoint.sent]
    assert payloads == [KEY, DELTA, KEY]
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
    assert requests  # the new source was asked for a keyframe


def test_sender_report_shifts_publisher_mapping_by_munger_offset():
    clock = Clock()
    track, _ = video_track(clock)
    track.on_rtp(42, True, 1, 90000, KEY)
    track.on_sender_report(ClockMapping(ssrc=42, time=clock.now - 1.0, rtp=0, clock_rate=90000))
    report = RtcpPacket.parse(track.sender_report(clock.now))[0]
    info = report.sender_info
    # publisher: rtp 0 at now-1 s -> rtp 90000 at now; shifted into the outgoing timeline
    expected = (90000 + track.munger.ts_offset) & 0xFFFFFFFF
    assert report.ssrc == track.ssrc and info.rtp_timestamp == expected
    assert abs(time_from_ntp(info.ntp_timestamp) - clock.now) < 1e-6
    assert info.packet_count == 1


def test_h264_keyframe_starts_at_its_first_packet():
    fanout = RecordingFanout()
    track = TrackForwarder("video", "H264", 90000, fanout, clock=Clock())
    sps, idr_start, idr_more = bytes([0x67, 0x42]), bytes([0x7C, 0x85, 0x00]), bytes([0x7C, 0x05])
    for i, payload in enumerate([sps, idr_start, idr_more]):
        track.on_rtp(9, i == 2, 100 + i, 3000, payload)  # one keyframe: one timestamp
    assert track.cache.since_keyframe() is not None
    assert rtp.payload(track.cache.since_keyframe()[0]) == sps  # replay begins with the SPS
    viewer = ViewerTrack(RecordingEndpoint(), 102)
    track.join(viewer)
    assert [rtp.payload(p) for p in viewer.endpoint.sent] == [sps, idr_start, idr_more]


def test_audio_joins_immediately():
    track = TrackForwarder("audio", "opus", 48000, RecordingFanout())
    viewer = ViewerTrack(RecordingEndpoint(), 111)
    track.join(viewer)
    track.on_rtp(5, False, 1, 960, b"\xfc\x00")
    assert len(viewer.endpoint.sent) == 1 and rtp.fields(viewer.endpoint.sent[0])[1] == 111


def _joined_viewer_after_packets(count: int):
    clock = Clock()
    track, _ = video_track(clock)
    viewer = ViewerTrack(RecordingEndpoint(), 97)
    track.join(viewer)
    for i in range(count):
        track.on_rtp(3, False, 500 + i, i * 3000, KEY if i == 0 else CONT)
    seqs = [rtp.fields(p)[2] for p in viewer.endpoint.sent]
    viewer.endpoint.sent.clear()
    return track, viewer, seqs, clock


def test_a_packet_is_resent_once_per_interval_only():
    track, viewer, seqs, clock = _joined_viewer_after_packets(5)
    track.on_nack(viewer, [seqs[2]])
    track.on_nack(viewer, [seqs[2]])  # a receiver re-NACKs all that is still missing
    assert viewer.retransmits == 1
    clock.now += viewer.resend_interval + 0.01
    track.on_nack(viewer, [seqs[2]])
    assert viewer.retransmits == 2 and len(viewer.endpoint.sent) == 2


def test_retransmissions_stay_within_the_rtx_budget():
    from media.forwarder import RTX_BURST, RTX_SHARE

    track, viewer, seqs, _clock = _joined_viewer_after_packets(300)
    track.on_nack(viewer, seqs)  # a congested viewer NACKs everything
    assert viewer.retransmits == RTX_BURST and viewer.rtx_refused > 0
    for i in range(100):
        track.on_rtp(3, False, 800 + i, 900000 + i, CONT)
    viewer.endpoint.sent.clear()
    track.on_nack(viewer, seqs[100:])
    assert len(viewer.endpoint.sent) == 100 * RTX_SHARE  # earned by forwarded packets only


def test_a_relay_link_is_resent_a_whole_burst_and_rtt_paced():
    from media.forwarder import RELAY_MIN_RESEND_INTERVAL, RTX_BURST

    clock = Clock()
    track, _ = video_track(clock)
    relay = ViewerTrack.relay(RecordingEndpoint(), 97)
    track.join(relay)
    for i in range(300):
        track.on_rtp(3, False, 500 + i, i * 3000, KEY if i == 0 else CONT)
    seqs = [rtp.fields(p)[2] for p in relay.endpoint.sent]
    relay.endpoint.sent.clear()
    track.on_nack(relay, seqs)  # an edge's socket buffer overflowed: 300 lost at once
    assert relay.retransmits == 300 > RTX_BURST and relay.rtx_refused == 0
    relay.set_rtt(0.002)  # a LAN link: resend again after 20 ms, a site viewer after 50 ms
    site = ViewerTrack(RecordingEndpoint(), 97)
    site.set_rtt(0.002)
    assert relay.resend_interval == RELAY_MIN_RESEND_INTERVAL < site.resend_interval == 0.05
    clock.now += RELAY_MIN_RESEND_INTERVAL + 0.001
    track.on_nack(relay, seqs[:10])
    assert relay.retransmits == 310


def test_no_retransmission_from_before_the_viewers_keyframe():
    track, first, _seqs, _clock = _joined_viewer_after_packets(0)
    track.on_rtp(3, False, 500, 0, KEY)
    track.on_rtp(3, False, 501, 3000, CONT)
    track.on_rtp(3, False, 502, 6000, DELTA)
    track.on_rtp(3, False, 503, 9000, CONT)
    old = [rtp.fields(p)[2] for p in first.endpoint.sent]
    track.cache.clear()  # the late viewer waits for the next keyframe
    late = ViewerTrack(RecordingEndpoint(), 97)
    track.join(late)
    track.on_rtp(3, False, 504, 12000, KEY)
    track.on_rtp(3, False, 505, 12000, CONT)
    new = [rtp.fields(p)[2] for p in late.endpoint.sent]
    track.on_nack(late, old)  # older than its keyframe: never sent to it, not resent
    assert late.retransmits == 0
    track.on_nack(late, [new[1]])
    assert late.retransmits == 1


# -- compressed time: a source runs for ever ------------------------------------------------


@pytest.mark.parametrize("first_seq", [0, 1, 30000, 32767, 32768, 65400, 65535])
@pytest.mark.parametrize("first_ts", [0, 0xFFFFF000])
def test_munger_forwards_a_source_for_ever(first_seq, first_ts):
    """Past 32,768 packets from the anchor (once the stale rule turned every packet away) and
    past two wraps of the sequence number and of the timestamp, every packet is forwarded."""
    m = Munger(90000, seq=1000, ts=77)
    out = []
    for i in range(140_000):
        ts = (first_ts + i * 3000) & 0xFFFFFFFF
        r = m.rewrite(5, (first_seq + i) & 0xFFFF, ts, i == 0, i / 30)
        assert r is not None, f"packet {i} dropped"
        out.append(r)
    assert all((b[0] - a[0]) & 0xFFFF == 1 for a, b in pairwise(out))
    assert all((b[1] - a[1]) & 0xFFFFFFFF == 3000 for a, b in pairwise(out))


def test_munger_stale_rule_holds_near_the_anchor_and_after_wraps():
    m = Munger(90000, seq=0, ts=0)
    assert m.rewrite(9, 65530, 0, True, 0.0) == (0, 0)  # anchored just below the wrap
    assert m.rewrite(9, 65529, 0, True, 0.0) is None  # before the anchor: stale
    assert m.rewrite(9, 3, 900, True, 0.1) == (9, 900)  # after the wrap
    assert m.rewrite(9, 65531, 10, True, 0.1) == (1, 10)  # late but after the anchor
    for i in range(4, 100_000):  # on past 32,768 packets and a second wrap
        assert m.rewrite(9, (3 + i) & 0xFFFF, 900, True, 0.2) is not None
    late = (3 + 100_000 - 50) & 0xFFFF  # a reordered packet 50 behind: still forwarded
    assert m.rewrite(9, late, 900, True, 0.3) == ((late + 6) & 0xFFFF, 900)


def test_track_serves_viewers_and_nacks_past_every_wrap():
    """A viewer joined at the start still gets every packet and its NACKs answered 140,000
    packets later (the NACK floor once refused half of every 65,536 packets)."""
    clock = Clock()
    track, _ = video_track(clock)
    viewer = ViewerTrack(RecordingEndpoint(), 97)
    track.join(viewer)
    answered = 0
    for i in range(140_000):
        clock.now += 1 / 150
        track.on_rtp(
            3, i % 3 == 2, (65000 + i) & 0xFFFF, (i // 3) * 3000, KEY if i % 3000 == 0 else CONT
        )
        if i % 10_000 == 9_999:
            newest = rtp.fields(viewer.endpoint.sent[-1])[2]
            before = viewer.retransmits
            track.on_nack(viewer, [(newest - 5) & 0xFFFF])
            answered += viewer.retransmits - before
    assert len(viewer.endpoint.sent) == 140_000 + answered
    assert answered == 14
    seqs = [rtp.fields(p)[2] for p in viewer.endpoint.sent[:1000]]
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))


def test_rtx_sequence_numbers_wrap():
    viewer = ViewerTrack(RecordingEndpoint(), 96, rtx_payload_type=99, rtx_seq=65534)
    assert [viewer.next_rtx_seq() for _ in range(3)] == [65535, 0, 1]


def test_sender_report_across_the_timestamp_wrap():
    clock = Clock()
    track, _ = video_track(clock)
    track.on_rtp(3, False, 10, 0xFFFFFF00, KEY)
    mapping = ClockMapping(ssrc=3, time=clock.now, rtp=0xFFFFFF00, clock_rate=90000)
    track.on_sender_report(mapping)
    report = track.sender_report(clock.now + 1.0)  # 90,000 ticks later: past the wrap
    sr = RtcpPacket.parse(report)[0]
    expected = (0xFFFFFF00 + 90000 + track.munger.ts_offset) & 0xFFFFFFFF
    assert sr.sender_info.rtp_timestamp == expected


class SrtpEndpoint(RecordingEndpoint):
    """Protects what it is sent with a real libsrtp session; a peer session unprotects it."""

    def __init__(self) -> None:
        super().__init__()
        from pylibsrtp import Policy, Session

        key = bytes(range(30))
        self.tx = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        self.rx = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
        self.refused = 0
        self.received: list[bytes] = []

    def send_rtp(self, packet):
        try:
            protected = self.tx.protect(bytes(packet))
        except Exception:  # noqa: BLE001 - libsrtp refuses: the index guess is out of reach
            self.refused += 1
            return
        self.received.append(self.rx.unprotect(protected))


@pytest.mark.parametrize("refresh", [True, False])
def test_a_viewer_back_from_a_long_pause_is_protected_at_once(refresh):
    """40,000 video packets go by while a viewer is paused (audio only): with the idle refresh
    its first packets after resuming are protected and decrypt; without it libsrtp refuses."""
    clock = Clock()
    track, _ = video_track(clock)
    viewer = ViewerTrack(SrtpEndpoint(), 97)
    seq = 0

    def send(count: int) -> None:
        nonlocal seq
        for i in range(count):
            clock.now += 1 / 150
            track.on_rtp(3, False, seq & 0xFFFF, seq * 30, KEY if i == 0 else CONT)
            seq += 1
            if refresh and seq % 150 == 0:  # the lecture's once-a-second loop
                track.refresh_idle()

    track.join(viewer)
    send(70_000)  # the stream's SRTP rollover counter is past 0
    track.pause(viewer)
    send(40_000)
    track.join(viewer)
    track.cache.clear()  # no replay: it waits for the next keyframe, like a real resume
    before = len(viewer.endpoint.received)
    send(100)
    if refresh:
        assert viewer.endpoint.refused == 0
        assert len(viewer.endpoint.received) - before == 100
        padding = [p for p in viewer.endpoint.received if p[0] & 0x20]
        assert len(padding) == 40_000 // IDLE_REFRESH
    else:
        assert viewer.endpoint.refused == 100  # what the refresh prevents
