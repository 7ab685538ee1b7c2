"""ICE-TCP on the media port (media/tcp.py): real sockets, a real ICE/DTLS/SRTP load viewer."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from media import ice
from media.endpoint import MediaSocket
from media.engine import MediaConfig, MediaEngine
from media.loadviewer import LoadViewer, RemoteParams
from media.tcp import FRAME, MAX_QUEUED, is_tcp, tcp_address
from media.udp import UdpError


def rtp(seq: int, pt: int = 96, size: int = 900) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 3000, 0x5555) + b"\x10" * size


async def wait_for(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate()


async def connect(sock: MediaSocket, viewer: LoadViewer):
    await viewer.start()
    ep = sock.endpoint(viewer.ufrag, viewer.pwd, viewer.identity.fingerprint, "actpass")
    params = RemoteParams(
        ep.local_ufrag, ep.local_pwd, sock.fingerprint, ep.setup, ("127.0.0.1", sock.port)
    )
    await asyncio.gather(viewer.connect(params, timeout=5), ep.connected(5))
    return ep


def test_tcp_addresses_never_equal_udp_ones():
    addr = tcp_address(("198.51.100.7", 40211))
    assert addr == ("tcp:198.51.100.7", 40211) and is_tcp(addr)
    assert not is_tcp(("198.51.100.7", 40211)) and not is_tcp(("::1", 9))


async def test_candidates_offer_passive_tcp_on_the_udp_port(sock):
    lines = sock.candidates()
    udp = [c for c in lines if " udp " in c]
    tcp = [c for c in lines if " tcp " in c]
    assert len(udp) == 1 and len(tcp) == 1
    fields = tcp[0].split()
    assert fields[2] == "tcp" and fields[5] == str(sock.port)
    assert fields[-2:] == ["tcptype", "passive"]
    assert int(fields[3]) < int(udp[0].split()[3])  # UDP first where it works
    listening = socket.create_connection(("127.0.0.1", sock.port), timeout=2)
    listening.close()


async def test_tcp_only_candidates_and_no_tcp():
    only_tcp = MediaSocket(udp_candidates=False)
    no_tcp = MediaSocket(tcp=False)
    await only_tcp.start()
    await no_tcp.start()
    try:
        assert [c.split()[2] for c in only_tcp.candidates()] == ["tcp"]
        assert [c.split()[2] for c in no_tcp.candidates()] == ["udp"]
    finally:
        await only_tcp.close()
        await no_tcp.close()


async def test_fixed_port_with_tcp_taken_fails_clearly():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    sock = MediaSocket(port=port)
    try:
        with pytest.raises(UdpError, match="ICE-TCP"):
            await sock.start()
    finally:
        taken.close()
        await sock.close()


@pytest.mark.parametrize("fast_srtp", [True, False])
async def test_viewer_over_tcp_gets_fanout_rtcp_and_retransmits(fast_srtp):
    sock = MediaSocket(fast_srtp=fast_srtp)
    await sock.start()
    udp_viewer, tcp_viewer = LoadViewer(), LoadViewer(transport="tcp")
    try:
        ep_udp = await connect(sock, udp_viewer)
        ep_tcp = await connect(sock, tcp_viewer)
        assert ep_udp.path == "udp" and ep_tcp.path == "tcp"
        assert ep_tcp.stats()["path"] == "tcp"
        fanout = sock.fanout()
        fanout.add(ep_udp, 96)
        fanout.add(ep_tcp, 96)
        for seq in range(200):
            fanout.send(rtp(seq))
        await wait_for(lambda: tcp_viewer.counters.packets == 200)
        await wait_for(lambda: udp_viewer.counters.packets == 200)
        assert tcp_viewer.stats()["lost"] == 0 and tcp_viewer.counters.srtp_errors == 0
        ep_tcp.send_rtp(rtp(200))  # a retransmission: the single-packet path
        await wait_for(lambda: tcp_viewer.counters.packets == 201)
        reports: list[bytes] = []
        ep_tcp.on_rtcp = reports.append
        await wait_for(lambda: reports)  # the viewer's receiver reports come back over TCP
        received = tcp_viewer.counters.rtcp_received
        fanout.send_rtcp(struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x5555, 1, 2, 3, 4, 5))
        await wait_for(lambda: tcp_viewer.counters.rtcp_received > received)
        fanout.remove(ep_tcp)
        fanout.send(rtp(300))
        await wait_for(lambda: udp_viewer.counters.packets == 201)
        await asyncio.sleep(0.1)
        assert tcp_viewer.counters.packets == 201
    finally:
        await udp_viewer.close()
        await tcp_viewer.close()
        await sock.close()


async def test_closed_endpoint_closes_its_tcp_connection(sock):
    viewer = LoadViewer(transport="tcp")
    try:
        ep = await connect(sock, viewer)
        assert len(sock.tcp.connections) == 1
        ep.close()
        await wait_for(lambda: not sock.tcp.connections)
    finally:
        await viewer.close()


async def test_garbage_over_tcp_is_dropped_and_unclaimed_connections_are_closed(sock, monkeypatch):
    monkeypatch.setattr("media.tcp.UNCLAIMED_S", 0.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.port)
    dropped = sock.dropped
    _, check = ice.binding_request("nobody", "unknown", "x" * 22, 1)
    for frame in (b"\x00", b"\x01", check, b"\x17" * 40, b"\x80" * 30):
        writer.write(FRAME.pack(len(frame)) + frame)
    writer.write(b"\x00\x00")  # an empty frame is skipped
    writer.write(b"\x00\x10\x01")  # a frame cut short waits for its bytes
    await writer.drain()
    await wait_for(lambda: sock.dropped >= dropped + 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the sweep closed it
    writer.close()


async def test_engine_passes_tcp_settings():
    engine = MediaEngine(
        MediaConfig("127.0.0.1", 0, udp_candidates=False, relay_hosts=("1.2.3.4",))
    )
    await engine.start()
    try:
        assert engine.socket.path_of(("1.2.3.4", 5)) == "turn"
        assert engine.socket.path_of(("1.2.3.5", 5)) == "udp"
        assert engine.socket.path_of(None) is None
        assert all(" tcp " in c for c in engine.socket.candidates())
    finally:
        await engine.close()


async def test_a_tcp_peer_that_stops_reading_gets_packets_dropped_not_queued(sock):
    """A congested hall: its bytes queue up to MAX_QUEUED, then its packets are dropped (as
    UDP would lose them) instead of growing the server's memory."""
    peer = socket.create_connection(("127.0.0.1", sock.port))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        await wait_for(lambda: len(sock.tcp.connections) == 1)
        (addr,) = sock.tcp.connections
        packet = b"\x80" * 1200
        sent = 0
        for _ in range(5000):
            if not sock.send(packet, addr):
                break
            sent += 1
        connection = sock.tcp.connections[addr]
        assert 0 < sent < 5000
        assert connection.transport.get_write_buffer_size() <= MAX_QUEUED + 1202
        assert not sock.send(packet, addr)
        assert not sock.send(packet, ("tcp:127.0.0.1", 1))  # no such connection
    finally:
        peer.close()
