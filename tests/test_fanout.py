"""Fanout (sendmmsg fan-out, SRTP per viewer) against real aiortc peers over loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import RtcpPsfbPacket, RtpPacket

import media.endpoint
import media.fanout
from media.endpoint import MediaSocket
from tests.aiortcviewer import VIDEO_SSRC, rtp, wait_for


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


def test_fanout_is_still_importable_from_endpoint():
    assert media.endpoint.Fanout is media.fanout.Fanout
    assert media.endpoint.MAX_RTP == media.fanout.MAX_RTP == 1500 - (4 + 16 + 128)


async def test_oversized_and_runt_packets_rejected(sock):
    fanout = sock.fanout()
    with pytest.raises(ValueError, match="outside 12"):
        fanout.send(b"\x80" * 11)
    with pytest.raises(ValueError, match="outside 12"):
        fanout.send(b"\x80" * (media.fanout.MAX_RTP + 1))
    with pytest.raises(ValueError, match="not in 0..127"):
        fanout.add(sock.endpoint("peer", "x" * 22, ("sha-256", "00:11"), "actpass"), 128)
    assert fanout.send(rtp(1)) == 0 and len(fanout) == 0
