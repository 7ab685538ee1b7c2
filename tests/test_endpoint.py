"""MediaSocket / Endpoint / Fanout against real aiortc peers over loopback."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRrPacket, RtpPacket
from aiortc.sdp import SessionDescription

from media import ice
from media.endpoint import Endpoint, MediaSocket
from media.errors import MediaError

VIDEO_SSRC = 0x1000
AUDIO_SSRC = 0x2000
SETUP_OF_ROLE = {"auto": "actpass", "client": "active", "server": "passive"}


def answer_sdp(offer: SessionDescription, ep: Endpoint, sock: MediaSocket) -> tuple[str, dict]:
    """The SDP answer a WHEP server would build: ice-lite, VP8 + Opus at the offered PTs."""
    lines = [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(m.rtp.muxId for m in offer.media),
        "a=ice-lite",
    ]
    pts = {}
    for m in offer.media:
        codec = next(c for c in m.rtp.codecs if c.mimeType.lower() in ("video/vp8", "audio/opus"))
        pts[m.kind] = codec.payloadType
        name = codec.mimeType.split("/")[1] + f"/{codec.clockRate}"
        name += f"/{codec.channels}" if codec.channels else ""
        ssrc = VIDEO_SSRC if m.kind == "video" else AUDIO_SSRC
        lines += [
            f"m={m.kind} 9 UDP/TLS/RTP/SAVPF {codec.payloadType}",
            "c=IN IP4 127.0.0.1",
            f"a=mid:{m.rtp.muxId}",
            "a=sendonly",
            "a=rtcp-mux",
            f"a=rtpmap:{codec.payloadType} {name}",
            f"a=rtcp-fb:{codec.payloadType} nack pli",
            f"a=ssrc:{ssrc} cname:lopso",
            f"a=ice-ufrag:{ep.local_ufrag}",
            f"a=ice-pwd:{ep.local_pwd}",
            "a=fingerprint:" + " ".join(sock.fingerprint),
            f"a=setup:{ep.setup}",
        ]
        lines += [f"a=candidate:{c}" for c in sock.candidates()] + ["a=end-of-candidates"]
    return "\r\n".join(lines) + "\r\n", pts


class Viewer:
    """A real aiortc peer (recvonly video + audio) whose RTP path ends in a list."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.received: list[bytes] = []
        self.endpoint: Endpoint | None = None
        self.pts: dict[str, int] = {}

    async def connect(
        self, sock: MediaSocket, our_setup: str | None = None, short_circuit: bool = True
    ) -> Endpoint:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = SessionDescription.parse(self.pc.localDescription.sdp)
        media = offer.media[0]
        fp = media.dtls.fingerprints[0]
        setup = our_setup or SETUP_OF_ROLE[media.dtls.role]
        self.endpoint = sock.endpoint(
            media.ice.usernameFragment, media.ice.password, (fp.algorithm, fp.value), setup
        )
        sdp, self.pts = answer_sdp(offer, self.endpoint, sock)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        await self.endpoint.connected(10)
        transport = self.pc.getTransceivers()[0].receiver.transport

        async def count(data: bytes, arrival_time_ms: int) -> None:
            self.received.append(data)

        if short_circuit:
            transport._handle_rtp_data = count  # the test's receive counter
        for _ in range(500):
            if self.pc.connectionState == "connected":
                break
            await asyncio.sleep(0.01)
        assert self.pc.connectionState == "connected"
        return self.endpoint

    async def close(self) -> None:
        await self.pc.close()


def rtp(seq: int, marker: bool = False, size: int = 1000, pt: int = 0) -> bytes:
    header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, seq * 3000, VIDEO_SSRC)
    return header + bytes([seq & 0xFF]) * size


async def wait_for(predicate, timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate()


@pytest.fixture
async def sock():
    s = MediaSocket()
    await s.start()
    yield s
    await s.close()


@pytest.fixture
async def viewers():
    made: list[Viewer] = []

    def make() -> Viewer:
        made.append(Viewer())
        return made[-1]

    yield make
    for v in made:
        await v.close()


async def test_fanout_reaches_aiortc_decrypted(sock, viewers):
    viewer = viewers()
    ep = await viewer.connect(sock)
    assert ep.setup == "passive" and ep.state == "connected"
    fanout = sock.fanout()
    fanout.add(ep, viewer.pts["video"])
    sent = [rtp(i, marker=i % 3 == 0, pt=5) for i in range(20)]
    assert [fanout.send(p) for p in sent] == [1] * 20
    await wait_for(lambda: len(viewer.received) == 20)
    for original, got in zip(sent, viewer.received):
        packet = RtpPacket.parse(got)
        assert packet.payload_type == viewer.pts["video"]
        assert packet.marker == (original[1] >> 7)
        assert got[2:] == original[2:]
    stats = ep.stats()
    assert stats["packets_sent"] == 20
    assert stats["bytes_sent"] == sum(len(p) for p in sent) + 20 * 16  # AES-GCM tag


async def test_rtcp_pli_from_aiortc_reaches_on_rtcp(sock, viewers):
    viewer = viewers()
    ep = await viewer.connect(sock)
    rtcp: list[bytes] = []
    ep.on_rtcp = rtcp.append
    await viewer.pc.getTransceivers()[0].receiver._send_rtcp_pli(VIDEO_SSRC)
    await wait_for(lambda: rtcp)
    (packet,) = RtcpPacket.parse(rtcp[0])
    assert isinstance(packet, RtcpPsfbPacket) and packet.fmt == 1
    assert packet.media_ssrc == VIDEO_SSRC
    assert ep.stats()["rtcp_received"] == 1


async def test_send_rtp_and_rtcp_single_path(sock, viewers):
    viewer = viewers()
    ep = await viewer.connect(sock)
    ep.send_rtp(rtp(7, pt=viewer.pts["video"]))
    await wait_for(lambda: viewer.received)
    assert viewer.received[0] == rtp(7, pt=viewer.pts["video"])
    ep.send_rtcp(bytes(RtcpPsfbPacket(fmt=1, ssrc=VIDEO_SSRC, media_ssrc=1)))
    assert ep.stats()["rtcp_sent"] == 1


async def test_many_endpoints_one_socket_and_close_mid_stream(sock, viewers):
    group = [viewers() for _ in range(4)]
    endpoints = await asyncio.gather(*(v.connect(sock) for v in group))
    assert len({e.remote_address for e in endpoints}) == 4
    fanout = sock.fanout()
    for v, e in zip(group, endpoints):
        fanout.add(e, v.pts["video"])
    assert len(fanout) == 4
    for i in range(10):
        assert fanout.send(rtp(i)) == 4
    endpoints[1].close()
    endpoints[1].close()  # idempotent
    assert endpoints[1].state == "closed"
    for i in range(10, 20):
        assert fanout.send(rtp(i)) == 3
    await wait_for(lambda: all(len(group[k].received) == 20 for k in (0, 2, 3)))
    assert len(group[1].received) == 10
    fanout.remove(endpoints[1])
    assert len(fanout) == 3


async def test_dtls_client_role(sock, viewers):
    viewer = viewers()
    # The offer says actpass; answering "active" makes aiortc the DTLS server.
    ep = await viewer.connect(sock, our_setup="passive")
    assert ep.setup == "active" and ep.stats()["dtls_role"] == "client"
    fanout = sock.fanout()
    fanout.add(ep, viewer.pts["video"])
    fanout.send(rtp(1))
    await wait_for(lambda: viewer.received)


async def test_plain_session_fallback_sends_the_same(viewers):
    sock = MediaSocket(fast_srtp=False)
    await sock.start()
    try:
        viewer = viewers()
        ep = await viewer.connect(sock)
        fanout = sock.fanout()
        fanout.add(ep, viewer.pts["video"])
        assert fanout.send(rtp(3, marker=True)) == 1
        await wait_for(lambda: viewer.received)
        assert viewer.received[0][2:] == rtp(3)[2:]
        assert viewer.received[0][1] == 0x80 | viewer.pts["video"]
        assert fanout.send_rtcp(bytes(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2))) == 1
        assert ep.stats()["rtcp_sent"] == 1 and ep.stats()["packets_sent"] == 1
    finally:
        await sock.close()


async def test_garbage_and_bad_integrity_dropped(sock, viewers):
    viewer = viewers()
    ep = await viewer.connect(sock)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dropped = sock.dropped
        _, bad = ice.binding_request(viewer.endpoint.remote_ufrag, ep.local_ufrag, "wrong" * 5, 1)
        for datagram in (b"\x00", b"\x01\x01garbage", bad, b"\x17" * 50, b"\x80" * 30, b"\xff"):
            raw.sendto(datagram, ("127.0.0.1", sock.port))
        await wait_for(lambda: sock.dropped >= dropped + 6)
        media_address = ep.remote_address
        _, good = ice.binding_request(
            viewer.endpoint.remote_ufrag, ep.local_ufrag, ep.local_pwd, 1, use_candidate=False
        )
        raw.sendto(good, ("127.0.0.1", sock.port))
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        reply = ice.parse(await asyncio.wait_for(loop.sock_recv(raw, 2048), 2))
        assert reply.attributes["XOR-MAPPED-ADDRESS"][1] == raw.getsockname()[1]
    finally:
        raw.close()
    assert ep.state == "connected"
    assert ep.remote_address == media_address  # a check without USE-CANDIDATE moves nothing
    fanout = sock.fanout()
    fanout.add(ep, viewer.pts["video"])
    assert fanout.send(rtp(1)) == 1
    await wait_for(lambda: viewer.received)


async def test_liveness_fails_silent_endpoint():
    sock = MediaSocket(consent_timeout=0.5)
    await sock.start()
    try:
        ep = sock.endpoint("abcd", "x" * 22, ("sha-256", "00:11"), "actpass")
        states: list[str] = []
        ep.on_state_change = states.append
        with pytest.raises(MediaError):
            await ep.connected(timeout=3)
        assert states == ["failed"]
    finally:
        await sock.close()


async def test_connected_timeout_raises(sock):
    ep = sock.endpoint("abcd", "x" * 22, ("sha-256", "00:11"), "active")
    with pytest.raises(MediaError, match="did not connect"):
        await ep.connected(timeout=0.05)
    ep.close()
    assert ep.state == "closed"


async def test_candidates_and_fingerprint():
    s = MediaSocket(host="0.0.0.0", announce=["192.0.2.10", "198.51.100.7"])
    await s.start()
    try:
        c = s.candidates()
        assert c[0] == f"1 1 udp 2130706431 192.0.2.10 {s.port} typ host"
        assert c[1].split()[4:6] == ["198.51.100.7", str(s.port)]
        assert s.fingerprint[0] == "sha-256" and len(s.fingerprint[1]) == 95
    finally:
        await s.close()
    bare = MediaSocket(host="0.0.0.0")
    await bare.start()
    try:
        assert bare.candidates() == [f"1 1 udp 2130706431 127.0.0.1 {bare.port} typ host"]
    finally:
        await bare.close()


async def test_random_datagrams_from_a_verified_address_never_crash(sock, viewers):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    viewer = viewers()
    ep = await viewer.connect(sock)
    addr = ep.remote_address

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(min_size=1, max_size=300))
    def feed(data: bytes) -> None:
        sock._on_datagram(data, addr)  # STUN, DTLS, RTP/RTCP and junk

    feed()
    assert ep.state == "connected"
    assert ep.stats()["srtp_errors"] > 0
    fanout = sock.fanout()
    fanout.add(ep, viewer.pts["video"])
    assert fanout.send(rtp(1)) == 1
    await wait_for(lambda: viewer.received)


async def test_payload_types_and_lengths_per_member(sock, viewers):
    group = [viewers() for _ in range(3)]
    endpoints = await asyncio.gather(*(v.connect(sock) for v in group))
    fanout = sock.fanout()
    chosen = [96, 100, 96]
    for e, pt in zip(endpoints, chosen):
        fanout.add(e, pt)
    sizes = [500, 500, 800, 800, 800, 300, 1100]
    sent = [rtp(i, marker=i % 2 == 0, size=size) for i, size in enumerate(sizes)]
    for p in sent:
        assert fanout.send(p) == 3
    await wait_for(lambda: all(len(v.received) == len(sent) for v in group))
    for v, pt in zip(group, chosen):
        for original, got in zip(sent, v.received):
            assert got[1] == (original[1] & 0x80) | pt
            assert got[2:] == original[2:]


async def test_fanout_rtcp_reaches_every_member_and_rtp_continues(sock, viewers):
    from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

    group = [viewers() for _ in range(2)]
    endpoints = await asyncio.gather(*(v.connect(sock) for v in group))
    fanout = sock.fanout()
    for v, e in zip(group, endpoints):
        fanout.add(e, v.pts["video"])
    got: list[list] = [[], []]
    for k, v in enumerate(group):
        transport = v.pc.getTransceivers()[0].receiver.transport

        async def on_rtcp(data: bytes, k=k) -> None:
            got[k].append(data)

        transport._handle_rtcp_data = on_rtcp  # the test's RTCP counter
    info = RtcpSenderInfo(
        ntp_timestamp=1 << 32, rtp_timestamp=90000, packet_count=1, octet_count=1000
    )
    report = bytes(RtcpSrPacket(ssrc=VIDEO_SSRC, sender_info=info))
    assert fanout.send(rtp(1, size=700)) == 2
    assert fanout.send_rtcp(report) == 2
    assert fanout.send(rtp(2, size=700)) == 2  # same length as before the RTCP: rewritten
    await wait_for(
        lambda: all(len(g) == 1 for g in got) and all(len(v.received) == 2 for v in group)
    )
    assert got[0][0] == report and got[1][0] == report
    assert [p[2:] for p in group[0].received] == [rtp(1, size=700)[2:], rtp(2, size=700)[2:]]
    assert all(e.stats()["rtcp_sent"] == 1 for e in endpoints)


async def test_endpoint_whose_dtls_never_completes_fails():
    """Consent checks alone (a peer stuck before DTLS) must not keep an endpoint alive."""
    sock = MediaSocket(consent_timeout=1.0)
    await sock.start()
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ep = sock.endpoint("peer", "x" * 22, ("sha-256", "00:11"), "actpass")
        for _ in range(20):
            _, check = ice.binding_request("peer", ep.local_ufrag, ep.local_pwd, 1)
            raw.sendto(check, ("127.0.0.1", sock.port))
            await asyncio.sleep(0.1)
            if ep.state == "failed":
                break
        assert ep.state == "failed" and ep.remote_address is not None
    finally:
        raw.close()
        await sock.close()


async def test_receiver_reports_from_aiortc_reach_on_rtcp(sock, viewers):
    """RTP reaching aiortc's own receiver makes it send RRs about our stream."""
    viewer = viewers()
    ep = await viewer.connect(sock, short_circuit=False)
    rtcp: list[bytes] = []
    ep.on_rtcp = rtcp.append
    audio = sock.fanout()
    audio.add(ep, viewer.pts["audio"])
    for seq in range(30):  # 20 ms Opus frames of silence (TOC 0xF8: CELT FB 20 ms, mono)
        packet = struct.pack("!BBHII", 0x80, 0, seq, seq * 960, AUDIO_SSRC) + b"\xf8\xff\xfe"
        audio.send(packet)
        await asyncio.sleep(0.02)
    await wait_for(lambda: rtcp, timeout=3)
    reports = [p for data in rtcp for p in RtcpPacket.parse(data) if isinstance(p, RtcpRrPacket)]
    assert reports and reports[0].reports[0].ssrc == AUDIO_SSRC
    assert 0 <= reports[0].reports[0].highest_sequence <= 29
