"""DTLS-SRTP sessions over memory BIOs: both roles, RSA peers, fingerprints, retransmission."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from media.dtls import DtlsError, DtlsIdentity, DtlsSession, split_records


@pytest.fixture(scope="module")
def ours() -> DtlsIdentity:
    return DtlsIdentity()


@pytest.fixture(scope="module")
def rsa_peer() -> DtlsIdentity:
    return DtlsIdentity(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def pump(client: DtlsSession, server: DtlsSession, rounds: int = 10) -> None:
    """Carry datagrams both ways until neither side has anything to say."""
    to_server = client.start()
    for _ in range(rounds):
        to_client = [d for datagram in to_server for d in server.feed(datagram)]
        to_server = [d for datagram in to_client for d in client.feed(datagram)]
        if not to_client and not to_server:
            return


def pair(client_id: DtlsIdentity, server_id: DtlsIdentity) -> tuple[DtlsSession, DtlsSession]:
    client = DtlsSession(client_id, "client", server_id.fingerprint)
    server = DtlsSession(server_id, "server", client_id.fingerprint)
    return client, server


@pytest.mark.parametrize("client_is_rsa", [False, True])
def test_handshake_keys_mirror(ours, rsa_peer, client_is_rsa):
    client, server = pair(rsa_peer, ours) if client_is_rsa else pair(ours, rsa_peer)
    pump(client, server)
    assert client.done and server.done
    c, s = client.srtp_keys(), server.srtp_keys()
    assert c.profile == s.profile and c.profile.name == b"SRTP_AEAD_AES_128_GCM"
    assert c.tx_key == s.rx_key and c.rx_key == s.tx_key and c.tx_key != c.rx_key
    assert len(c.tx_key) == 16 + 12


def test_fingerprint_mismatch_fails(ours):
    other, impostor = DtlsIdentity(), DtlsIdentity()
    client = DtlsSession(ours, "client", other.fingerprint)  # the SDP named `other`
    server = DtlsSession(impostor, "server", ours.fingerprint)
    with pytest.raises(DtlsError, match="fingerprint"):
        pump(client, server)


def test_bad_role_and_algorithm(ours):
    with pytest.raises(ValueError):
        DtlsSession(ours, "both", ours.fingerprint)
    with pytest.raises(DtlsError, match="algorithm"):
        DtlsSession(ours, "client", ("md5", "00"))


def test_keys_before_handshake_refused(ours):
    with pytest.raises(DtlsError, match="not complete"):
        DtlsSession(ours, "server", ours.fingerprint).srtp_keys()


def test_garbage_records_are_discarded(ours, rsa_peer):
    client, server = pair(rsa_peer, ours)
    assert server.feed(b"\x17" * 40) == []
    assert server.feed(b"\x15\x00") == []
    pump(client, server)  # DTLS drops invalid records silently (RFC 6347 4.1.2.7)
    assert server.done


def test_malformed_handshake_message_is_fatal(ours):
    # Only addresses that passed STUN integrity reach a session, so failing fast is safe.
    server = DtlsSession(ours, "server", ours.fingerprint)
    with pytest.raises(DtlsError, match="handshake failed"):
        server.feed(b"\x16\xfe\xfd" + b"\x00" * 8 + b"\x00\x05hello")


def test_lost_first_flight_is_retransmitted(ours, rsa_peer):
    client, server = pair(ours, rsa_peer)
    assert client.start()  # ClientHello lost on the way
    delay = client.timeout()
    assert delay is not None and 0 < delay <= 1.5
    time.sleep(delay + 0.05)
    again = client.on_timeout()
    assert again, "the client resends its first flight when the timer fires"
    to_client = [d for datagram in again for d in server.feed(datagram)]
    for _ in range(5):
        to_server = [d for datagram in to_client for d in client.feed(datagram)]
        to_client = [d for datagram in to_server for d in server.feed(datagram)]
    assert client.done and server.done


def test_shutdown_reaches_peer(ours, rsa_peer):
    client, server = pair(ours, rsa_peer)
    pump(client, server)
    alerts = client.shutdown()
    assert alerts and client.shutdown() == []
    for datagram in alerts:
        server.feed(datagram)
    assert server.closed


def test_split_records_keeps_records_whole():
    records = [
        b"\x16\xfe\xfd" + b"\x00" * 8 + len(b).to_bytes(2, "big") + b
        for b in (b"a" * 500, b"b" * 500, b"c" * 500)
    ]
    datagrams = split_records(b"".join(records), mtu=1100)
    assert datagrams == [records[0] + records[1], records[2]]
    assert split_records(b"") == []


def test_lost_last_flight_is_resent_after_the_handshake(ours, rsa_peer):
    """The server finishes first; if its last flight is lost the client's timer recovers."""
    client, server = pair(rsa_peer, ours)
    to_server = client.start()
    for _ in range(5):
        to_client = [d for datagram in to_server for d in server.feed(datagram)]
        if server.done:
            break  # `to_client` is the server's last flight: drop it
        to_server = [d for datagram in to_client for d in client.feed(datagram)]
    assert server.done and not client.done
    delay = client.timeout()
    assert delay is not None
    time.sleep(delay + 0.05)
    again = client.on_timeout()
    assert again
    answer = [d for datagram in again for d in server.feed(datagram)]
    assert answer, "a finished server answers a retransmitted flight with its own"
    for datagram in answer:
        client.feed(datagram)
    assert client.done
    assert client.srtp_keys().tx_key == server.srtp_keys().rx_key
