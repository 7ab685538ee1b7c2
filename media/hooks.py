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
- RTCDtlsTransport._do_handshake / _ssl / _role / _state and RTCCertificate._cert / _key:
  where aiortc is the DTLS client, its handshake runs on the system libssl (see
  `legacy_curve_dtls_client` below: FFmpeg's WHIP default certificate is on curve P-224).

Client-side hooks, for tests and load tools driving aiortc peers as viewers/publishers:
- RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms): instance override to simulate
  loss on a peer's receive path.
- RTCRtpSender._handle_rtcp_packet(packet): instance override to observe the feedback (PLI,
  NACK) a publisher receives.
- RTCRtpReceiver._enabled: a receiver that drops every packet unparsed (cheap viewers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, State
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtcpSrPacket, RtpPacket, unwrap_rtx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from .dtls import split_records
from .errors import MediaError

logger = logging.getLogger(__name__)

AIORTC_VERSION = "1.16.0"
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
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


# -- DTLS client on the system's libssl, for DTLS servers on legacy curves (FFmpeg WHIP) -------
#
# Measured with PyAV 18.1 (FFmpeg 8.1 built on GnuTLS): FFmpeg's WHIP muxer offers
# a=setup:passive (it is the DTLS server, aiortc the client) and, unless given cert_file/
# key_file, signs with a generated ECDSA certificate on curve P-224. The OpenSSL 4.0 inside the
# `cryptography` wheel (which pyOpenSSL and so aiortc use) no longer has P-224 as a TLS group,
# so it aborts the handshake with a fatal illegal_parameter alert after the server's
# Certificate; RSA or P-256 certificates work. The system's libssl (OpenSSL 3.0 on Debian)
# still accepts P-224, so for the client role only, aiortc's handshake runs on it through
# ctypes; SRTP keys and the fingerprint check then follow aiortc's own code unchanged.

LIBSSL_GROUPS = b"X25519:P-256:P-384:P-521:P-224"
SSL_CTRL_SET_GROUPS_LIST = 92
SSL_CTRL_SET_MTU = 17
DTLS_CTRL_GET_TIMEOUT = 73
DTLS_CTRL_HANDLE_TIMEOUT = 74
SSL_OP_NO_QUERY_MTU = 0x00001000
SSL_ERROR_WANT_READ, SSL_ERROR_ZERO_RETURN = 2, 6
DTLS_MTU = 1200


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _SrtpProfile(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("id", ctypes.c_ulong)]


def _load_libssl() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    """The system libssl/libcrypto with argument types declared, or None if absent."""
    path = ctypes.util.find_library("ssl")
    crypto_path = ctypes.util.find_library("crypto")
    if not path or not crypto_path:
        return None
    try:
        ssl, crypto = ctypes.CDLL(path), ctypes.CDLL(crypto_path)
    except OSError:
        return None
    p, i, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    sigs = {
        (ssl, "DTLS_client_method"): ([], p),
        (ssl, "SSL_CTX_new"): ([p], p),
        (ssl, "SSL_CTX_free"): ([p], None),
        (ssl, "SSL_CTX_set_cipher_list"): ([p, ctypes.c_char_p], i),
        (ssl, "SSL_CTX_ctrl"): ([p, i, L, p], L),
        (ssl, "SSL_CTX_set_tlsext_use_srtp"): ([p, ctypes.c_char_p], i),
        (ssl, "SSL_CTX_use_certificate"): ([p, p], i),
        (ssl, "SSL_CTX_use_PrivateKey"): ([p, p], i),
        (ssl, "SSL_CTX_set_options"): ([p, ctypes.c_uint64], ctypes.c_uint64),
        (ssl, "SSL_new"): ([p], p),
        (ssl, "SSL_free"): ([p], None),
        (ssl, "SSL_set_bio"): ([p, p, p], None),
        (ssl, "SSL_set_connect_state"): ([p], None),
        (ssl, "SSL_do_handshake"): ([p], i),
        (ssl, "SSL_get_error"): ([p, i], i),
        (ssl, "SSL_ctrl"): ([p, i, L, p], L),
        (ssl, "SSL_read"): ([p, p, i], i),
        (ssl, "SSL_write"): ([p, p, i], i),
        (ssl, "SSL_shutdown"): ([p], i),
        (ssl, "SSL_get_selected_srtp_profile"): ([p], ctypes.POINTER(_SrtpProfile)),
        (ssl, "SSL_export_keying_material"): (
            [p, p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, p, ctypes.c_size_t, i],
            i,
        ),
        (ssl, "SSL_get1_peer_certificate"): ([p], p),
        (crypto, "BIO_s_mem"): ([], p),
        (crypto, "BIO_new"): ([p], p),
        (crypto, "BIO_write"): ([p, p, i], i),
        (crypto, "BIO_read"): ([p, p, i], i),
        (crypto, "BIO_ctrl_pending"): ([p], ctypes.c_size_t),
        (crypto, "d2i_X509"): ([p, p, L], p),
        (crypto, "X509_free"): ([p], None),
        (crypto, "i2d_X509"): ([p, p], i),
        (crypto, "d2i_AutoPrivateKey"): ([p, p, L], p),
        (crypto, "EVP_PKEY_free"): ([p], None),
        (crypto, "CRYPTO_free"): ([p, ctypes.c_char_p, i], None),
    }
    for (lib, name), (args, res) in sigs.items():
        fn = getattr(lib, name, None)
        if fn is None:  # not OpenSSL 3 (e.g. 1.1 lacks SSL_get1_peer_certificate)
            logger.info("system libssl lacks %s: DTLS client fallback disabled", name)
            return None
        fn.argtypes, fn.restype = args, res
    return ssl, crypto


def _d2i(fn: Callable[..., Any], der: bytes) -> Any:
    buf = ctypes.create_string_buffer(der, len(der))
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    obj = fn(None, ctypes.byref(ptr), len(der))
    if not obj:
        raise HookError("system libssl could not load the DTLS certificate or key")
    return obj


class LibsslDtlsClient:
    """The subset of pyOpenSSL's `SSL.Connection` that RTCDtlsTransport uses, on system libssl."""

    def __init__(
        self,
        libs: tuple[ctypes.CDLL, ctypes.CDLL],
        cert_der: bytes,
        key_der: bytes,
        srtp_profiles: bytes,
    ) -> None:
        self.ssl_lib, self.crypto = libs
        s, c = self.ssl_lib, self.crypto
        self.ctx = s.SSL_CTX_new(s.DTLS_client_method())
        s.SSL_CTX_set_cipher_list(self.ctx, CIPHERS)
        s.SSL_CTX_ctrl(self.ctx, SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.c_char_p(LIBSSL_GROUPS))
        s.SSL_CTX_set_tlsext_use_srtp(self.ctx, srtp_profiles)  # returns 0 on success
        s.SSL_CTX_set_options(self.ctx, SSL_OP_NO_QUERY_MTU)
        cert, key = _d2i(c.d2i_X509, cert_der), _d2i(c.d2i_AutoPrivateKey, key_der)
        ok = s.SSL_CTX_use_certificate(self.ctx, cert) and s.SSL_CTX_use_PrivateKey(self.ctx, key)
        c.X509_free(cert)
        c.EVP_PKEY_free(key)
        if not ok:
            raise HookError("system libssl refused aiortc's DTLS certificate")
        self.ssl = s.SSL_new(self.ctx)
        self.rbio, self.wbio = c.BIO_new(c.BIO_s_mem()), c.BIO_new(c.BIO_s_mem())
        s.SSL_set_bio(self.ssl, self.rbio, self.wbio)
        s.SSL_ctrl(self.ssl, SSL_CTRL_SET_MTU, DTLS_MTU, None)
        s.SSL_set_connect_state(self.ssl)
        self._out: list[bytes] = []

    def _check(self, ret: int) -> int:
        if ret > 0:
            return ret
        error = self.ssl_lib.SSL_get_error(self.ssl, ret)
        if error == SSL_ERROR_WANT_READ:
            raise SSL.WantReadError()
        if error == SSL_ERROR_ZERO_RETURN:
            raise SSL.ZeroReturnError()
        raise SSL.Error([("system libssl", "DTLS", f"error {error}")])

    def set_connect_state(self) -> None:
        """Already a client."""

    def do_handshake(self) -> None:
        """One handshake step; raises SSL.WantReadError while the peer must answer."""
        self._check(self.ssl_lib.SSL_do_handshake(self.ssl))

    def bio_write(self, data: bytes) -> int:
        """A datagram from the peer."""
        return int(self.crypto.BIO_write(self.rbio, data, len(data)))

    def bio_read(self, size: int) -> bytes:
        """The next datagram to send (whole records, at most `size` bytes), or b''."""
        pending = self.crypto.BIO_ctrl_pending(self.wbio)
        if pending:
            buf = ctypes.create_string_buffer(pending)
            n = self.crypto.BIO_read(self.wbio, buf, pending)
            self._out += split_records(buf.raw[:n], min(size, DTLS_MTU))
        return self._out.pop(0) if self._out else b""

    def recv(self, size: int) -> bytes:
        """Application data (none in WebRTC media; raises as pyOpenSSL does)."""
        buf = ctypes.create_string_buffer(size)
        n = self._check(self.ssl_lib.SSL_read(self.ssl, buf, size))
        return buf.raw[:n]

    def send(self, data: bytes) -> int:
        """Application data (data channels)."""
        return self._check(self.ssl_lib.SSL_write(self.ssl, data, len(data)))

    def DTLSv1_get_timeout(self) -> float | None:
        """Seconds until a retransmission is due, or None."""
        tv = _Timeval()
        if self.ssl_lib.SSL_ctrl(self.ssl, DTLS_CTRL_GET_TIMEOUT, 0, ctypes.byref(tv)):
            return float(tv.tv_sec + tv.tv_usec / 1e6)
        return None

    def DTLSv1_handle_timeout(self) -> bool:
        """Retransmit the last flight if its timer expired."""
        return bool(self.ssl_lib.SSL_ctrl(self.ssl, DTLS_CTRL_HANDLE_TIMEOUT, 0, None))

    def get_peer_certificate(self, as_cryptography: bool = True) -> x509.Certificate | None:
        """The server's certificate (cryptography object), for the fingerprint check."""
        cert = self.ssl_lib.SSL_get1_peer_certificate(self.ssl)
        if not cert:
            return None
        out = ctypes.c_void_p()
        n = self.crypto.i2d_X509(cert, ctypes.byref(out))
        der = ctypes.string_at(out, n)
        self.crypto.CRYPTO_free(out, None, 0)
        self.crypto.X509_free(cert)
        return x509.load_der_x509_certificate(der)

    def get_selected_srtp_profile(self) -> bytes:
        """The negotiated use_srtp profile name."""
        profile = self.ssl_lib.SSL_get_selected_srtp_profile(self.ssl)
        return profile.contents.name if profile else b""

    def export_keying_material(self, label: bytes, length: int, context: Any = None) -> bytes:
        """RFC 5705 exporter (EXTRACTOR-dtls_srtp)."""
        out = ctypes.create_string_buffer(length)
        if not self.ssl_lib.SSL_export_keying_material(
            self.ssl, out, length, label, len(label), None, 0, 0
        ):
            raise SSL.Error([("system libssl", "export", "failed")])
        return out.raw

    def shutdown(self) -> bool:
        """Send close_notify."""
        return bool(self.ssl_lib.SSL_shutdown(self.ssl) == 1)

    def __del__(self) -> None:
        if getattr(self, "ssl", None):
            self.ssl_lib.SSL_free(self.ssl)  # frees both BIOs too
            self.ssl = None
        if getattr(self, "ctx", None):
            self.ssl_lib.SSL_CTX_free(self.ctx)
            self.ctx = None


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
    libs = _load_libssl()
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
