"""The private aiortc internals media/ relies on are all still there (fails loudly if not)."""

import asyncio
import time

import pytest
from aiortc import RTCPeerConnection

from media import hooks


async def test_every_hook_is_present():
    hooks.check_hooks()


async def test_missing_hook_is_named(monkeypatch):
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(hooks.HookError, match="_send_rtcp_pli"):
        hooks.check_hooks()


def test_other_aiortc_version_refused(monkeypatch):
    monkeypatch.setattr(hooks.aiortc, "__version__", "9.9.9")
    with pytest.raises(hooks.HookError, match="9.9.9"):
        hooks.check_hooks()


async def test_widened_dtls_accepts_rsa_suites():
    pc = RTCPeerConnection()
    hooks.widen_dtls(pc)
    certificate = pc._RTCPeerConnection__certificates[0]
    from aiortc.rtcdtlstransport import SRTP_PROFILES
    from OpenSSL import SSL

    ctx = certificate._create_ssl_context(srtp_profiles=SRTP_PROFILES)
    names = SSL.Connection(ctx).get_cipher_list()
    assert "ECDHE-RSA-AES128-GCM-SHA256" in names and "ECDHE-ECDSA-AES128-GCM-SHA256" in names


# -- the system-libssl DTLS client (media/libssl_client.py) ----------------------------------


def _client_identity():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from media.dtls import _self_signed

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key)
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert, cert.public_bytes(serialization.Encoding.DER), key_der


def test_libssl_client_handshakes_with_a_dtls_server_and_exports_the_same_keys():
    from OpenSSL import SSL

    from media.dtls import DtlsIdentity, DtlsSession, fingerprint_of
    from media.libssl_client import LibsslDtlsClient, load_libssl

    libs = load_libssl()
    if libs is None:
        pytest.skip("no OpenSSL 3 system libssl on this machine")
    cert, cert_der, key_der = _client_identity()
    server_identity = DtlsIdentity()
    server = DtlsSession(server_identity, "server", ("sha-256", fingerprint_of(cert)))
    client = LibsslDtlsClient(libs, cert_der, key_der, b"SRTP_AES128_CM_SHA1_80")
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        while datagram := client.bio_read(1500):
            assert len(datagram) <= 1200
            for reply in server.feed(datagram):
                client.bio_write(reply)
        if done and server.done:
            break
    assert server.done, "handshake did not complete"
    assert client.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    peer = client.get_peer_certificate()
    assert fingerprint_of(peer) == server_identity.fingerprint[1]
    keys = server.srtp_keys()
    material = client.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
    assert keys.rx_key == material[0:16] + material[32:46]  # the client's write key
    assert keys.tx_key == material[16:32] + material[46:60]


def test_libssl_client_rejects_a_bad_key():
    from media.libssl_client import LibsslDtlsClient, LibsslError, load_libssl

    libs = load_libssl()
    if libs is None:
        pytest.skip("no OpenSSL 3 system libssl on this machine")
    _cert, cert_der, _key_der = _client_identity()
    with pytest.raises(LibsslError):
        LibsslDtlsClient(libs, cert_der, b"not a key", b"SRTP_AES128_CM_SHA1_80")


async def test_without_system_libssl_the_client_hook_is_a_no_op(monkeypatch):
    import ctypes.util

    from media import libssl_client

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert libssl_client.load_libssl() is None
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    transport = pc.getTransceivers()[0].receiver.transport
    before = transport._do_handshake
    hooks.legacy_curve_dtls_client(pc)
    assert transport._do_handshake == before


# -- consent freshness on ingest, in compressed time -----------------------------------------


def _ignore_binding_requests(pc: RTCPeerConnection) -> None:
    """The publisher stops answering consent checks (as FFmpeg's WHIP muxer did)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport._connection
        connection.request_received = lambda *args: None


def _go_silent(pc: RTCPeerConnection) -> None:
    """The publisher's network vanishes: nothing more leaves or arrives (no close, no BYE)."""
    for transceiver in pc.getTransceivers():
        for protocol in transceiver.sender.transport.transport._connection._protocols:
            protocol.transport.abort()


async def test_publisher_kept_while_media_arrives_and_let_go_when_silent(engine, monkeypatch):
    """Consent checks unanswered for many times the lapse: the publisher stays while its media
    arrives; once silent on both counts it is closed after about the lapse."""
    import aioice.ice

    from tests.test_lecture import PublisherPeer, wait_for

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)  # aioice alone: closed in ~1.2 s
    monkeypatch.setattr(hooks, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(hooks, "CONSENT_LAPSE", 1.5)
    lecture = engine.lecture("consent", video_codec="VP8")
    publisher = PublisherPeer()
    closed = asyncio.Event()
    try:
        ingest = await publisher.publish(lecture)
        ingest.on_close = lambda _p: closed.set()
        await wait_for(lambda: lecture.stats().live, timeout=10)
        _ignore_binding_requests(publisher.pc)
        before = lecture.stats().packets_in
        await asyncio.sleep(6.0)  # four lapses without a single answer
        assert not closed.is_set() and lecture.publisher is ingest
        assert lecture.stats().packets_in > before + 100
        _go_silent(publisher.pc)
        silent_at = time.monotonic()
        await asyncio.wait_for(closed.wait(), timeout=5.0)
        assert 1.2 < time.monotonic() - silent_at < 3.0
        assert lecture.publisher is None
    finally:
        await publisher.close()


async def test_ingest_sockets_get_large_receive_buffers(engine):
    """A lecturer's keyframe burst must not overflow the ingest socket: every ICE socket of a
    publisher gets INGEST_RCVBUF (Linux grants up to net.core.rmem_max, and doubles it)."""
    import pathlib
    import socket

    from tests.test_lecture import PublisherPeer

    cap = int(pathlib.Path("/proc/sys/net/core/rmem_max").read_text())
    want = 2 * min(hooks.INGEST_RCVBUF, cap)
    lecture = engine.lecture("rcvbuf", video_codec="VP8")
    publisher = PublisherPeer()
    try:
        ingest = await publisher.publish(lecture)
        sockets = [
            p.transport.get_extra_info("socket")
            for c in hooks._ice_connections(ingest.pc)
            for p in c._protocols
        ]
        assert sockets
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= want for s in sockets)
    finally:
        await publisher.close()
