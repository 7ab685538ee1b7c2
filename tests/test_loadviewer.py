"""The cheap load viewer against a real MediaSocket over loopback."""

from __future__ import annotations

import asyncio
import struct

import pytest
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRrPacket
from aiortc.sdp import SessionDescription

from media.dtls import DtlsIdentity
from media.endpoint import MediaSocket
from media.errors import SdpError
from media.loadviewer import LoadViewer, RemoteParams, parse_answer


def rtp(seq: int, ssrc: int = 0x5555) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + b"\x10" * 900


async def wait_for(predicate, timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate()


async def connect(sock: MediaSocket, viewer: LoadViewer, remote_setup: str = "actpass"):
    await viewer.start()
    ep = sock.endpoint(viewer.ufrag, viewer.pwd, viewer.identity.fingerprint, remote_setup)
    params = RemoteParams(
        ep.local_ufrag, ep.local_pwd, sock.fingerprint, ep.setup, ("127.0.0.1", sock.port)
    )
    await asyncio.gather(viewer.connect(params, timeout=5), ep.connected(5))
    return ep


@pytest.mark.parametrize("remote_setup", ["actpass", "passive"])
async def test_counts_packets_and_losses(sock, remote_setup):
    viewer = LoadViewer()
    try:
        ep = await connect(sock, viewer, remote_setup)
        fanout = sock.fanout()
        fanout.add(ep, 100)
        for seq in [65530 + i for i in range(20)]:  # wraps around 65535
            if seq % 7:  # every 7th packet lost
                fanout.send(rtp(seq & 0xFFFF))
        await wait_for(lambda: viewer.counters.packets == 17)
        stats = viewer.stats()
        assert stats["lost"] == 3 and stats["srtp_errors"] == 0 and stats["state"] == "connected"
    finally:
        await viewer.close()


async def test_receiver_reports_and_pli_reach_the_endpoint(sock):
    viewer = LoadViewer(identity=DtlsIdentity())
    try:
        ep = await connect(sock, viewer)
        rtcp: list[bytes] = []
        ep.on_rtcp = rtcp.append
        fanout = sock.fanout()
        fanout.add(ep, 96)
        for seq in range(10):
            fanout.send(rtp(seq))
        viewer.request_keyframe(0x5555)
        await wait_for(lambda: len(rtcp) >= 2, timeout=3)
        packets = [p for data in rtcp for p in RtcpPacket.parse(data)]
        pli = next(p for p in packets if isinstance(p, RtcpPsfbPacket))
        assert pli.fmt == 1 and pli.media_ssrc == 0x5555
        rr = next(p for p in packets if isinstance(p, RtcpRrPacket))
        assert rr.ssrc == viewer.ssrc and rr.reports[0].ssrc == 0x5555
        assert rr.reports[0].highest_sequence == 9 and rr.reports[0].packets_lost == 0
    finally:
        await viewer.close()


async def test_offer_parses_and_answer_errors():
    viewer = LoadViewer()
    await viewer.start()
    try:
        offer = SessionDescription.parse(viewer.offer("H264"))
        assert [m.kind for m in offer.media] == ["audio", "video"]
        assert offer.media[1].rtp.codecs[0].mimeType == "video/H264"
        assert offer.media[0].ice.usernameFragment == viewer.ufrag
        with pytest.raises(SdpError):
            parse_answer("v=0\r\n")
    finally:
        await viewer.close()


async def test_parse_answer_reads_ice_lite_answer():
    answer = (
        "\r\n".join(
            [
                "v=0",
                "o=- 1 1 IN IP4 127.0.0.1",
                "s=-",
                "t=0 0",
                "a=ice-lite",
                "m=video 9 UDP/TLS/RTP/SAVPF 96",
                "c=IN IP4 127.0.0.1",
                "a=mid:0",
                "a=sendonly",
                "a=rtcp-mux",
                "a=rtpmap:96 VP8/90000",
                "a=ice-ufrag:abcd",
                "a=ice-pwd:" + "p" * 22,
                "a=fingerprint:sha-256 AA:BB",
                "a=setup:passive",
                "a=candidate:1 1 udp 2130706431 192.0.2.9 8189 typ host",
            ]
        )
        + "\r\n"
    )
    params = parse_answer(answer)
    assert params == RemoteParams(
        "abcd", "p" * 22, ("sha-256", "AA:BB"), "passive", ("192.0.2.9", 8189)
    )


async def test_seventy_viewers_span_two_sendmmsg_batches(sock):
    identity = DtlsIdentity()
    viewers = [LoadViewer(identity=identity) for _ in range(70)]
    try:
        endpoints = await asyncio.gather(*(connect(sock, v) for v in viewers))
        fanout = sock.fanout()
        for ep in endpoints:
            fanout.add(ep, 96)
        endpoints[3].close()
        for seq in range(5):
            assert fanout.send(rtp(seq)) == 69
        await wait_for(lambda: sum(v.counters.packets for v in viewers) == 69 * 5)
        assert viewers[3].counters.packets == 0
        assert all(v.stats()["lost"] == 0 for v in viewers)
        assert endpoints[0].stats()["packets_sent"] == 5
    finally:
        await asyncio.gather(*(v.close() for v in viewers))


async def test_whep_against_a_real_lecture():
    """Our offer is what a WHEP server (media.Lecture) accepts; media flows at a keyframe."""
    from aiohttp import ClientSession, web

    from media.engine import MediaConfig, MediaEngine

    engine = MediaEngine(MediaConfig(host="127.0.0.1"))
    await engine.start()
    lecture = engine.lecture("c1", video_codec="VP8")

    async def whep(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer t0k"
        answer, _ = await lecture.subscribe(await request.text())
        return web.Response(status=201, text=answer, headers={"Location": "/whep/c1/r1"})

    app = web.Application()
    app.router.add_post("/whep/c1", whep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    viewer = LoadViewer()
    try:
        await viewer.start()
        async with ClientSession() as session:
            location = await viewer.whep(session, f"http://127.0.0.1:{port}/whep/c1", "t0k")
        assert location == f"http://127.0.0.1:{port}/whep/c1/r1"
        assert viewer.state == "connected"
        await wait_for(lambda: len(lecture.viewers) == 1)
    finally:
        await viewer.close()
        await runner.cleanup()
        await engine.close()


async def test_churn_keeps_every_slot_right(sock):
    """Members leave from the middle of full batches, rejoin, and switch payload type; every
    connected member gets each packet exactly once with its own payload type."""
    identity = DtlsIdentity()
    viewers = [LoadViewer(identity=identity) for _ in range(70)]
    try:
        endpoints = await asyncio.gather(*(connect(sock, v) for v in viewers))
        got: dict[int, list[int]] = {k: [] for k in range(70)}
        for k, v in enumerate(viewers):
            v.on_rtp = lambda data, k=k: got[k].append(data[1] & 0x7F)
        fanout = sock.fanout()
        for ep in endpoints:
            fanout.add(ep, 96)
        expected = {k: 0 for k in range(70)}
        active = set(range(70))

        def send(seq: int) -> None:
            assert fanout.send(rtp(seq)) == len(active)
            for k in active:
                expected[k] += 1

        send(0)
        for k in (0, 5, 63, 64, 69):  # first slot, middle, end of batch 1, batch 2 edges
            fanout.remove(endpoints[k])
            active.discard(k)
        send(1)
        fanout.add(endpoints[5], 97)  # back, with another payload type
        active.add(5)
        endpoints[10].close()
        active.discard(10)
        send(2)
        assert len(fanout) == 66
        await wait_for(lambda: all(len(got[k]) == expected[k] for k in range(70)))
        assert got[5] == [96, 97] and expected[0] == 1 and expected[10] == 2
        assert all(set(got[k]) == {96} for k in range(70) if k != 5)
        assert all(endpoints[k].stats()["packets_sent"] == expected[k] for k in range(70))
    finally:
        await asyncio.gather(*(v.close() for v in viewers))


def probe_answer(probe: bytes, source: tuple[str, int], pwd: str) -> bytes:
    """A full agent's answer to our consent probe, signed with its password `pwd`."""
    from aioice import stun

    request = stun.parse_message(probe)
    assert "ICE-CONTROLLED" in request.attributes  # a lite agent is never controlling
    answer = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    answer.attributes["XOR-MAPPED-ADDRESS"] = source
    answer.add_message_integrity(pwd.encode())
    answer.add_fingerprint()
    return bytes(answer)


async def test_media_moves_to_a_new_address_only_after_its_consent(sock):
    """A check from a third address (spoofed, or replayed: it authenticates) gets its STUN
    answer and a consent probe, never the media; an answer to the probe signed with the wrong
    password changes nothing; the right answer (only the peer knows its password) moves it."""
    import socket

    from media import ice

    viewer = LoadViewer()
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    moved.setblocking(False)
    loop = asyncio.get_running_loop()

    async def receive() -> bytes:
        return await asyncio.wait_for(loop.sock_recv(moved, 2048), 2)

    try:
        ep = await connect(sock, viewer)
        first = ep.remote_address
        fanout = sock.fanout()
        fanout.add(ep, 96)
        fanout.send(rtp(1))
        await wait_for(lambda: viewer.counters.packets == 1)
        _, check = ice.binding_request(viewer.ufrag, ep.local_ufrag, ep.local_pwd, 7)
        server = ("127.0.0.1", sock.port)
        moved.sendto(check, server)
        replies = [await receive(), await receive()]
        kinds = sorted(int.from_bytes(r[:2], "big") for r in replies)
        assert kinds == [ice.BINDING_REQUEST, ice.BINDING_SUCCESS]  # the answer and a probe
        probe = next(r for r in replies if r[:2] == b"\x00\x01")
        assert ice.parse(probe).attributes["USERNAME"] == f"{viewer.ufrag}:{ep.local_ufrag}"
        assert ep.remote_address == first  # not moved by the check alone
        fanout.send(rtp(2))
        await wait_for(lambda: viewer.counters.packets == 2)  # media stays with the viewer
        moved.sendto(probe_answer(probe, moved.getsockname(), "x" * 24), server)
        moved.sendto(b"\x80\xc9" + bytes(40), server)  # RTCP-looking junk: not SRTCP
        await asyncio.sleep(0.2)
        assert ep.remote_address == first
        moved.sendto(probe_answer(probe, moved.getsockname(), viewer.pwd), server)
        await wait_for(lambda: ep.remote_address == moved.getsockname())
        fanout.send(rtp(3))
        datagram = await receive()
        assert datagram[0] == 0x80 and len(datagram) == len(rtp(3)) + 16
        await asyncio.sleep(0.1)
        assert viewer.counters.packets == 2
    finally:
        moved.close()
        await viewer.close()


class RebindingNat:
    """A NAT between one viewer and the server whose mapping can change (a new source port
    towards the server, as a carrier's NAT does after a while); it may drop the viewer's
    answers to the server's probes (its checks still pass)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.drop_answers = False
        self.viewer: tuple[str, int] | None = None
        self.inside: asyncio.DatagramTransport | None = None
        self.outside: asyncio.DatagramTransport | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        nat = self

        class Inside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                nat.viewer = addr
                if nat.outside is not None and not (nat.drop_answers and data[:2] == b"\x01\x01"):
                    nat.outside.sendto(data, nat.server)

        self.inside, _ = await loop.create_datagram_endpoint(Inside, local_addr=("127.0.0.1", 0))
        await self.rebind()
        return self.inside.get_extra_info("sockname")  # type: ignore[no-any-return]

    async def rebind(self) -> tuple[str, int]:
        """A new mapping: the server sees the viewer from a new address from now on."""
        nat = self

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if nat.inside is not None and nat.viewer is not None:
                    nat.inside.sendto(data, nat.viewer)

        old = self.outside
        loop = asyncio.get_running_loop()
        self.outside, _ = await loop.create_datagram_endpoint(Outside, local_addr=("127.0.0.1", 0))
        if old is not None:
            old.close()
        return self.outside.get_extra_info("sockname")  # type: ignore[no-any-return]

    def close(self) -> None:
        for transport in (self.inside, self.outside):
            if transport is not None:
                transport.close()


@pytest.mark.parametrize("drop_answers", [False, True], ids=["probe-answered", "srtcp"])
async def test_a_viewer_whose_nat_rebinds_keeps_its_media_after_consent(sock, drop_answers):
    """The same viewer appears from a new address (its checks come from there): media follows
    once that address proves it is the viewer, by answering the probe, or (its answers lost)
    by its SRTCP receiver reports."""
    nat = RebindingNat(("127.0.0.1", sock.port))
    viewer = LoadViewer()
    try:
        inside = await nat.start()
        await viewer.start()
        ep = sock.endpoint(viewer.ufrag, viewer.pwd, viewer.identity.fingerprint, "actpass")
        params = RemoteParams(ep.local_ufrag, ep.local_pwd, sock.fingerprint, ep.setup, inside)
        await asyncio.gather(viewer.connect(params, timeout=5), ep.connected(5))
        fanout = sock.fanout()
        fanout.add(ep, 96)
        fanout.send(rtp(1))
        await wait_for(lambda: viewer.counters.packets == 1)
        nat.drop_answers = drop_answers
        moved = await nat.rebind()
        await wait_for(lambda: ep.remote_address == moved, timeout=8)  # reports every second
        fanout.send(rtp(2))
        await wait_for(lambda: viewer.counters.packets == 2)
    finally:
        await viewer.close()
        nat.close()
