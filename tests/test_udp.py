"""The shared UDP socket and sendmmsg batches, over loopback."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from media.udp import Libc, MmsgBatch, UdpError, UdpSocket, pack_sockaddr


def receivers(count: int, family: int = socket.AF_INET, host: str = "127.0.0.1"):
    socks = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.settimeout(2)
        socks.append(s)
    return socks


def test_pack_sockaddr_matches_kernel_layout():
    raw = pack_sockaddr(("127.0.0.1", 5004))
    assert len(raw) == 16
    assert struct.unpack("=H", raw[:2])[0] == socket.AF_INET
    assert raw[2:4] == (5004).to_bytes(2, "big") and raw[4:8] == bytes([127, 0, 0, 1])
    raw6 = pack_sockaddr(("::1", 80))
    assert len(raw6) == 28 and struct.unpack("=H", raw6[:2])[0] == socket.AF_INET6
    assert raw6[8:24] == socket.inet_pton(socket.AF_INET6, "::1")


async def test_batch_sends_each_slot_to_its_destination():
    outs = receivers(3)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        batch = MmsgBatch(Libc(), capacity=4)
        for i, out in enumerate(outs):
            payload = f"copy-{i}".encode() * (i + 1)
            batch.slots[i][0 : len(payload)] = payload
            batch.set_length(i, len(payload))
            batch.set_address(i, batch.address(out.getsockname()))
        assert batch.send(sender.fileno(), 3) == 3
        for i, out in enumerate(outs):
            assert out.recv(2048) == f"copy-{i}".encode() * (i + 1)
    finally:
        sender.close()
        for out in outs:
            out.close()


def test_batch_skips_a_failing_destination():
    good = receivers(2)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        batch = MmsgBatch(Libc(), capacity=3)
        destinations = [good[0].getsockname(), ("::1", 9), good[1].getsockname()]  # v6 on v4
        for i, addr in enumerate(destinations):
            batch.slots[i][0:2] = bytes([65 + i, 10])
            batch.set_length(i, 2)
            batch.set_address(i, batch.address(addr))
        assert batch.send(sender.fileno(), 3) == 2
        assert good[0].recv(100) == b"A\n" and good[1].recv(100) == b"C\n"
    finally:
        sender.close()
        for s in good:
            s.close()


def test_batch_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        (out,) = receivers(1, socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        batch = MmsgBatch(Libc(), capacity=1)
        batch.slots[0][0:3] = b"six"
        batch.set_length(0, 3)
        batch.set_address(0, batch.address(out.getsockname()[:2]))
        assert batch.send(sender.fileno(), 1) == 1
        assert out.recv(10) == b"six"
    finally:
        sender.close()
        out.close()


async def test_udp_socket_reads_and_survives_a_failing_handler():
    got: list[tuple[bytes, tuple[str, int]]] = []

    def handler(data: bytes, addr: tuple[str, int], local: str | None) -> None:
        if data == b"boom":
            raise RuntimeError("handler bug")
        got.append((data, addr))

    udp = UdpSocket(handler)
    udp.open()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        for data in (b"one", b"boom", b"two"):
            peer.sendto(data, udp.address)
        for _ in range(200):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert [d for d, _ in got] == [b"one", b"two"]
        assert got[0][1] == peer.getsockname()
        assert udp.sendto(b"back", peer.getsockname())
        peer.settimeout(2)
        assert peer.recv(10) == b"back"
    finally:
        peer.close()
        udp.close()
        udp.close()
    assert not udp.sendto(b"x", ("127.0.0.1", 9))
    with pytest.raises(UdpError):
        _ = udp.address


async def test_a_capped_send_buffer_is_reported(caplog):
    asked = 1 << 30  # far above any net.core.wmem_max
    for size, warned in ((asked, True), (64 * 1024, False)):
        caplog.clear()
        udp = UdpSocket(lambda d, a, local: None, buffer_size=size)
        udp.open()
        assert udp.warn_if_buffer_capped() == warned
        udp.close()
        messages = [r.getMessage() for r in caplog.records if r.name == "media.udp"]
        assert any("wmem_max" in m for m in messages) == warned
    default = UdpSocket(lambda d, a, local: None, buffer_size=None)  # the kernel's own sizes
    default.open()
    try:
        assert not default.warn_if_buffer_capped()
    finally:
        default.close()


async def test_bind_conflict_is_a_udp_error():
    first = UdpSocket(lambda d, a, local: None)
    first.open()
    try:
        second = UdpSocket(lambda d, a, local: None, port=first.address[1])
        with pytest.raises(UdpError, match="cannot bind"):
            second.open()
    finally:
        first.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
async def test_replies_leave_from_the_address_the_datagram_reached(host):
    """127.0.0.2 is this machine too: a datagram sent there is answered from there, by
    sendto and by the sendmmsg fan-out, never from the address the kernel would pick."""
    got: list[tuple[bytes, tuple[str, int], str | None]] = []
    udp = UdpSocket(lambda d, a, local: got.append((d, a, local)), host=host)
    udp.open()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert udp.pktinfo
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        port = udp.address[1]
        for local in ("127.0.0.2", "127.0.0.1"):
            got.clear()
            peer.sendto(b"check", (local, port))
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.01)
            assert got == [(b"check", peer.getsockname(), local)]  # IPv4, even on "::"
            assert udp.sendto(b"answer", peer.getsockname(), local)
            assert peer.recvfrom(100) == (b"answer", (local, port))
            batch = MmsgBatch(Libc(), capacity=2)
            batch.slots[0][0:5] = b"media"
            batch.set_length(0, 5)
            batch.set_address(0, batch.address(peer.getsockname(), local, udp.family))
            assert batch.send(udp.fd, 1) == 1
            assert peer.recvfrom(100) == (b"media", (local, port))
    finally:
        peer.close()
        udp.close()
