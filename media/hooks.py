"""Every private aiortc internal LopSo uses, in one place, pinned to aiortc 1.16.0.

media/ forwards RTP without running aiortc's codecs, which needs a few hooks below aiortc's
public API. They are all here; `check_hooks()` verifies each still exists and raises
HookError naming the missing one (tests/test_hooks.py calls it), so an aiortc upgrade fails
loudly instead of silently decoding or dropping media.

Hooks used (aiortc 1.16.0):
- RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms): instance override, sees every
  decrypted packet; the original keeps NACK/REMB/RR flowing to the publisher.
- RTCRtpReceiver._handle_rtcp_packet(packet): instance override, reads publisher SRs.
- RTCRtpReceiver.__decoder_queue / __jitter_buffer (name-mangled): replaced before receive()
  so no decoder thread work and no frame assembly happen.
- RTCRtpReceiver.__codecs / __rtx_ssrc (name-mangled): payload types and RTX SSRC map, to
  unwrap RTX before forwarding.
- RTCRtpReceiver._send_rtcp_pli(media_ssrc): upstream keyframe request.
- RTCPeerConnection.__certificates and RTCCertificate._create_ssl_context: per-connection
  override widening the DTLS cipher list to RSA-certificate peers (GStreamer, Janus, FFmpeg).
- RTCDtlsTransport._srtp_profiles: SRTP profiles offered in DTLS use_srtp.
- aioice Connection (RTCIceTransport._connection) .query_consent / .data_received /
  ._nominated / .build_request / .remote_password: consent freshness on ingest counts arriving
  media as consent, so a publisher that answers no checks (FFmpeg's WHIP muxer) is kept;
  ._protocols[].transport: the ingest sockets' receive buffers are enlarged.
- RTCDtlsTransport._do_handshake / _ssl / _role / _state and RTCCertificate._cert / _key:
  where aiortc is the DTLS client, its handshake runs on the system libssl
  (media/libssl_client.py; FFmpeg's WHIP default certificate is on curve P-224).

Client-side hooks, for tests and load tools driving aiortc peers as viewers/publishers:
- RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms): instance override to simulate
  loss on a peer's receive path.
- RTCRtpSender._handle_rtcp_packet(packet): instance override to observe the feedback (PLI,
  NACK) a publisher receives.
- RTCRtpReceiver._enabled: a receiver that drops every packet unparsed (cheap viewers).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioice
import aiortc
from aioice import stun
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, State
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtcpSrPacket, RtpPacket, unwrap_rtx
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from .errors import MediaError
from .libssl_client import CIPHERS, LibsslDtlsClient, load_libssl

logger = logging.getLogger(__name__)

AIORTC_VERSION = "1.16.0"
AIOICE_VERSION = "0.13.0"
CONSENT_INTERVAL = 5.0  # seconds between consent checks (RFC 7675: 4-6 s)
CONSENT_LAPSE = 30.0  # seconds without an answer nor media before consent is lost
INGEST_RCVBUF = 4 << 20  # bytes asked for (Linux caps it at net.core.rmem_max)
_R = "_RTCRtpReceiver__"


class HookError(MediaError):
    """aiortc no longer has an internal that media/ relies on."""


class _NullDecoderQueue:
    """Stands in for the receiver's decoder queue: nothing is queued, the thread exits."""

    def put(self, item: Any) -> None:
        """Drop an encoded frame."""

    def get(self, *args: Any, **kwargs: Any) -> None:
        """Tell the decoder thread to stop."""
        return


class _NullJitterBuffer:
    """Stands in for the jitter buffer: no frame assembly (nothing is decoded)."""

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        """Accept a packet, never yield a frame or ask for a keyframe."""
        return False, None


def _certificates(pc: RTCPeerConnection) -> list[RTCCertificate]:
    certificates: list[RTCCertificate] = getattr(pc, "_RTCPeerConnection__certificates")  # noqa: B009
    return certificates


def _require(obj: Any, name: str, where: str) -> None:
    if not hasattr(obj, name):
        raise HookError(
            f"aiortc {aiortc.__version__}: {where} has no {name}; media/hooks.py needs it"
        )


def check_hooks() -> None:
    """Raise HookError naming the first missing internal (or a different aiortc version)."""
    if aiortc.__version__ != AIORTC_VERSION:
        raise HookError(
            f"aiortc {aiortc.__version__} installed, media/hooks.py is for {AIORTC_VERSION}"
        )
    for name in ("_handle_rtp_packet", "_handle_rtcp_packet", "_send_rtcp_pli", "receive"):
        _require(RTCRtpReceiver, name, "RTCRtpReceiver")
    _require(RTCCertificate, "_create_ssl_context", "RTCCertificate")
    _require(RTCDtlsTransport, "_do_handshake", "RTCDtlsTransport")
    _require(RTCDtlsTransport, "_handle_rtp_data", "RTCDtlsTransport")
    _require(RTCRtpSender, "_handle_rtcp_packet", "RTCRtpSender")
    pc = RTCPeerConnection()  # never negotiated: opens no socket, needs no close
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    for name in ("decoder_queue", "jitter_buffer", "codecs", "rtx_ssrc"):
        _require(receiver, _R + name, "RTCRtpReceiver instance")
    _require(receiver, "_enabled", "RTCRtpReceiver instance")
    _require(receiver.transport, "_set_role", "RTCDtlsTransport instance")
    for name in ("_srtp_profiles", "_role", "_state", "_ssl"):
        _require(receiver.transport, name, "RTCDtlsTransport instance")
    for name in ("_cert", "_key"):
        _require(_certificates(pc)[0], name, "RTCCertificate instance")
    _require(pc, "_RTCPeerConnection__certificates", "RTCPeerConnection")
    if aioice.__version__ != AIOICE_VERSION:
        raise HookError(
            f"aioice {aioice.__version__} installed, media/hooks.py is for {AIOICE_VERSION}"
        )
    ice = receiver.transport.transport
    _require(ice, "_connection", "RTCIceTransport instance")
    for name in (
        "query_consent",
        "data_received",
        "_nominated",
        "build_request",
        "close",
        "_protocols",
    ):
        _require(ice._connection, name, "aioice Connection instance")
    _require(ice._connection, "remote_password", "aioice Connection instance")


def _unwrapper(receiver: RTCRtpReceiver) -> Callable[[RtpPacket], RtpPacket | None]:
    codecs = getattr(receiver, _R + "codecs")
    rtx_ssrcs = getattr(receiver, _R + "rtx_ssrc")

    def unwrap(packet: RtpPacket) -> RtpPacket | None:
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return None
        if codec.mimeType.lower().endswith("/rtx"):
            apt = codec.parameters.get("apt")
            original = rtx_ssrcs.get(packet.ssrc)
            if original is None or apt not in codecs or len(packet.payload) < 2:
                return None
            return unwrap_rtx(packet, payload_type=apt, ssrc=original)
        return packet

    return unwrap


def hook_receiver(
    receiver: RTCRtpReceiver,
    on_packet: Callable[[RtpPacket], None],
    on_sender_report: Callable[[RtcpSrPacket], None],
) -> None:
    """Tap a receiver: `on_packet` gets every (RTX-unwrapped) packet, no codec ever runs."""
    setattr(receiver, _R + "decoder_queue", _NullDecoderQueue())
    setattr(receiver, _R + "jitter_buffer", _NullJitterBuffer())
    original_rtp = receiver._handle_rtp_packet
    original_rtcp = receiver._handle_rtcp_packet
    unwrap = _unwrapper(receiver)

    async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        if receiver._enabled:
            media = unwrap(packet)
            if media is not None:
                on_packet(media)
        await original_rtp(packet, arrival_time_ms)

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            on_sender_report(packet)
        await original_rtcp(packet)

    receiver._handle_rtp_packet = handle_rtp  # type: ignore[method-assign]
    receiver._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Awaitable[None]:
    """Ask the publisher for a keyframe on `media_ssrc` (RTCP PLI)."""
    return receiver._send_rtcp_pli(media_ssrc)


def widen_dtls(pc: RTCPeerConnection) -> None:
    """Let this connection's DTLS accept RSA-certificate peers too (not only ECDSA)."""
    for certificate in _certificates(pc):
        original = certificate._create_ssl_context

        def create(
            srtp_profiles: list[Any], _original: Callable[..., SSL.Context] = original
        ) -> SSL.Context:
            ctx = _original(srtp_profiles=srtp_profiles)
            ctx.set_cipher_list(CIPHERS)
            return ctx

        certificate._create_ssl_context = create  # type: ignore[method-assign]


def set_srtp_profiles(transport: RTCDtlsTransport, profiles: list[Any]) -> None:
    """Choose the SRTP protection profiles one DTLS transport offers/accepts."""
    transport._srtp_profiles = profiles


def drop_incoming_rtp(transport: RTCDtlsTransport, drop: Callable[[bytes], bool]) -> None:
    """Simulated loss: decrypted RTP for which `drop(data)` is true never reaches receivers."""
    original = transport._handle_rtp_data

    async def handle(data: bytes, arrival_time_ms: int) -> None:
        if not drop(data):
            await original(data, arrival_time_ms)

    transport._handle_rtp_data = handle  # type: ignore[method-assign]


def tap_sender_rtcp(sender: RTCRtpSender, on_rtcp: Callable[[Any], None]) -> None:
    """Observe every RTCP packet routed to a sender (PLI, FIR, NACK, RR) before it acts on it."""
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        on_rtcp(packet)
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


def mute_receiver(receiver: RTCRtpReceiver) -> None:
    """Make a receiver drop packets unparsed (RTCP and PLIs still work): a cheap viewer."""
    receiver._enabled = False


def prefer_dtls_server(pc: RTCPeerConnection, offer: str) -> None:
    """Answer an actpass offer with setup:passive (aiortc would pick active).

    Browsers and aiortc publishers offer actpass; as DTLS server we keep aiortc's own
    handshake for them and use the system-libssl client only for peers that insist on being
    the server (setup:passive, e.g. FFmpeg), see `legacy_curve_dtls_client`.
    """
    if "a=setup:passive" in offer:
        return  # the peer is the server; aiortc answers active
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport._role == "auto":
            transport._set_role("server")


def legacy_curve_dtls_client(pc: RTCPeerConnection) -> None:
    """Where this peer is the DTLS client, handshake on system libssl (accepts P-224 servers)."""
    libs = load_libssl()
    if libs is None:
        logger.info("system libssl not found: DTLS servers on P-224 will fail")
        return
    certificate = _certificates(pc)[0]
    cert_der = certificate._cert.public_bytes(serialization.Encoding.DER)
    key_der = certificate._key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    def tap(transport: RTCDtlsTransport) -> None:
        original = transport._do_handshake

        async def handshake() -> None:
            if transport._role == "client" and transport._state == State.CONNECTING:
                profiles = b":".join(p.openssl_profile for p in transport._srtp_profiles)
                transport._ssl = LibsslDtlsClient(libs, cert_der, key_der, profiles)  # type: ignore[assignment]
            await original()

        transport._do_handshake = handshake  # type: ignore[method-assign]

    transports = {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}
    for transport in transports.values():
        tap(transport)


def consent_from_media(
    pc: RTCPeerConnection,
    interval: float | None = None,
    lapse: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Consent freshness for an ingest peer: an answered check OR arriving media keeps it.

    aioice ends a connection after six unanswered consent checks (~30 s); FFmpeg's WHIP muxer
    answers none, so it was dropped 30 s into every lecture while its media kept arriving. A
    peer that keeps sending us media consents to its own session; only a peer silent on both
    counts for `lapse` seconds is let go. Call after setRemoteDescription (ICE not started).
    """
    interval = CONSENT_INTERVAL if interval is None else interval
    lapse = CONSENT_LAPSE if lapse is None else lapse
    connections = {id(c): c for c in _ice_connections(pc)}
    for connection in connections.values():
        _keep_consent(connection, interval, lapse, clock)


def enlarge_receive_buffers(pc: RTCPeerConnection, size: int = INGEST_RCVBUF) -> None:
    """Give this peer's ICE sockets a receive buffer of `size` bytes (after gathering).

    A lecturer's keyframe at 1.5-10 Mbit/s arrives as a burst of tens of packets; the default
    buffer (~208 KiB) overflows when the event loop is late by a few hundred milliseconds,
    and every packet lost there is lost for every hall (publishers need not retransmit)."""
    connections = {id(c): c for c in _ice_connections(pc)}
    for connection in connections.values():
        for protocol in connection._protocols:
            sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    return [t.receiver.transport.transport._connection for t in pc.getTransceivers()]


def _keep_consent(
    connection: Any, interval: float, lapse: float, clock: Callable[[], float]
) -> None:
    heard = [clock()]
    original_data = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        heard[0] = clock()
        original_data(data, component)

    async def query_consent() -> None:
        while True:
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            if await _check_answered(connection):
                heard[0] = clock()
            if clock() - heard[0] >= lapse:
                logger.info("ingest consent lapsed: no answer and no media", extra={"lapse": lapse})
                connection._query_consent_task = None
                await connection.close()
                return

    connection.data_received = data_received
    connection.query_consent = query_consent


async def _check_answered(connection: Any) -> bool:
    answered = False
    for pair in list(connection._nominated.values()):
        request = connection.build_request(pair, nominate=False)
        try:
            await pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=connection.remote_password.encode("utf8"),
                retransmissions=0,
            )
            answered = True
        except stun.TransactionError:
            pass
        except (OSError, ConnectionError, RuntimeError):
            # the check is also the peer's proof that we still listen (FFmpeg counts our
            # requests as consent): a failed send must not end the loop that sends them
            logger.debug("ingest consent check not sent", exc_info=True)
    return answered
