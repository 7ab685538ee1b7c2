"""MediaSocket / Endpoint against real aiortc peers over loopback."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRrPacket

from media import ice
from media.endpoint import MediaSocket
from media.errors import MediaError
from media.udp import local_addresses
from tests.aiortcviewer import AUDIO_SSRC, VIDEO_SSRC, rtp, wait_for


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


async def test_dtls_client_role(sock, viewers):
    viewer = viewers()
    # The offer says actpass; answering "active" makes aiortc the DTLS server.
    ep = await viewer.connect(sock, our_setup="passive")
    assert ep.setup == "active" and ep.stats()["dtls_role"] == "client"
    fanout = sock.fanout()
    fanout.add(ep, viewer.pts["video"])
    fanout.send(rtp(1))
    await wait_for(lambda: viewer.received)


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
    for host, hosts in (
        ("0.0.0.0", [*local_addresses(ipv6=False), "127.0.0.1"]),
        ("::", [*local_addresses(ipv6=True), "127.0.0.1", "::1"]),
    ):
        bare = MediaSocket(host=host)  # a wildcard announcing nothing: every local address
        await bare.start()
        try:
            udp = [c.split()[4] for c in bare.candidates() if " udp " in c]
            tcp = [c.split()[4] for c in bare.candidates() if " tcptype passive" in c]
            assert udp == hosts and tcp == hosts  # ICE-TCP on every address too
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
