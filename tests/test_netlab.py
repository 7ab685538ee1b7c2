"""The village network lab itself (tests/netlab.py): NAT, firewalls, loss, teardown."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.netlab import PREFIX, Lab, lab_namespaces, netlab, sweep_stale

__all__ = ["netlab"]


def udp_echo_once(node_call, timeout: float = 2.0):  # type: ignore[no-untyped-def]
    """Open a UDP socket on the node's 0.0.0.0:9999 and return (socket)."""
    sock = node_call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind(("0.0.0.0", 9999))
    sock.settimeout(timeout)
    return sock


def test_a_hall_reaches_the_internet_through_its_nat(netlab: Lab) -> None:
    server = netlab.host("server", "203.0.113.10")
    hall = netlab.hall("hall1")
    listener = udp_echo_once(server.call)
    sender = hall.node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with listener, sender:
        sender.sendto(b"hello", ("203.0.113.10", 9999))
        data, source = listener.recvfrom(100)
        assert data == b"hello"
        assert source[0] == hall.router.address  # masqueraded: the router's internet address
        listener.sendto(b"back", source)  # the NAT lets the reply in
        sender.settimeout(2)
        assert sender.recvfrom(100)[0] == b"back"


def test_a_firewall_that_drops_udp_lets_tcp_through(netlab: Lab) -> None:
    server = netlab.host("server", "203.0.113.10")
    hall = netlab.hall("hall1")
    hall.router.drop_forwarded_udp()
    listener = udp_echo_once(server.call, timeout=1.0)
    sender = hall.node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with listener, sender:
        sender.sendto(b"hello", ("203.0.113.10", 9999))
        with pytest.raises(TimeoutError):
            listener.recvfrom(100)
    tcp = server.call(lambda: socket.create_server(("203.0.113.10", 0)))
    with tcp:
        port = tcp.getsockname()[1]
        client = hall.node.call(lambda: socket.create_connection(("203.0.113.10", port), 2))
        client.close()


def test_random_loss_drops_about_the_share_asked(netlab: Lab) -> None:
    server = netlab.host("server", "203.0.113.10")
    hall = netlab.hall("hall1")
    hall.router.loss(30)
    listener = udp_echo_once(server.call, timeout=0.5)
    sender = hall.node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    got = 0
    with listener, sender:
        for i in range(400):
            sender.sendto(b"x%d" % i, ("203.0.113.10", 9999))
        with pytest.raises(TimeoutError):
            while True:
                listener.recvfrom(100)
                got += 1
    assert 200 < got < 340, got  # 30 % of 400 lost: 280 expected


def test_the_lab_leaves_nothing_behind() -> None:
    from tests.netlab import unavailable

    reason = unavailable()
    if reason:
        pytest.skip(f"NETWORK LAB SKIPPED: {reason}")
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    lab = Lab()
    netlab_names = {node.ns for node in lab.nodes}
    lab.hall("hall1").router.rate("2mbit")
    assert {n for n in lab_namespaces() if n.startswith(lab.prefix)} >= netlab_names
    lab.close()
    assert not [n for n in lab_namespaces() if n.startswith(lab.prefix)]
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout == host_links
    # A namespace left by a run whose process is gone is swept by the next lab.
    stale = f"{PREFIX}999999999-server"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in sweep_stale()
    assert stale not in lab_namespaces()
