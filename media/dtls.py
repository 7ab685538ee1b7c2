"""DTLS-SRTP over memory BIOs (RFC 5764) with pyOpenSSL, sans I/O.

One `DtlsIdentity` per process: an ECDSA P-256 certificate and ONE SSL context shared by every
endpoint (a fresh certificate per peer costs milliseconds). Its cipher list also accepts peers
with RSA certificates (GStreamer, Janus, FFmpeg). A `DtlsSession` per endpoint takes datagrams
in and returns datagrams to send; the caller runs its retransmission timer with `timeout()` and
`on_timeout()`. The peer certificate is checked against the SDP fingerprint after the handshake.
"""

from __future__ import annotations

import binascii
import datetime
import hmac
import logging
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL

logger = logging.getLogger(__name__)

CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"
)
DIGESTS = {"sha-256": hashes.SHA256(), "sha-384": hashes.SHA384(), "sha-512": hashes.SHA512()}
MTU = 1200
"""Largest datagram we build from DTLS records (safe under any path MTU we meet)."""


class DtlsError(Exception):
    """The DTLS handshake failed or the peer is not who the SDP says."""


@dataclass(frozen=True)
class SrtpProfile:
    """A DTLS-SRTP protection profile and its key/salt sizes (RFC 5764, RFC 7714)."""

    name: bytes
    key_length: int
    salt_length: int


SRTP_PROFILES = (
    SrtpProfile(b"SRTP_AEAD_AES_128_GCM", 16, 12),
    SrtpProfile(b"SRTP_AES128_CM_SHA1_80", 16, 14),
)


@dataclass(frozen=True)
class SrtpKeys:
    """Keying material exported after the handshake: our send key, our receive key."""

    profile: SrtpProfile
    tx_key: bytes
    rx_key: bytes


def fingerprint_of(certificate: x509.Certificate, algorithm: str = "sha-256") -> str:
    """The SDP form of a certificate digest: upper-case hex pairs joined by colons."""
    digest = certificate.fingerprint(DIGESTS[algorithm]).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(x509.NameOID.COMMON_NAME, binascii.hexlify(os.urandom(8)).decode())]
    )
    now = datetime.datetime.now(tz=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


class DtlsIdentity:
    """The process's certificate and its one SSL context, reused by every endpoint.

    `key` defaults to a fresh ECDSA P-256 key; an RSA key works too (tests use one to play
    GStreamer- or Janus-like peers).
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> None:
        self._key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        self.certificate = _self_signed(self._key)
        self.context = self._make_context()

    @property
    def fingerprint(self) -> tuple[str, str]:
        """("sha-256", "AB:CD:...") for the SDP a=fingerprint line."""
        return "sha-256", fingerprint_of(self.certificate)

    def _make_context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET)
        # Any certificate is accepted here; the SDP fingerprint is checked after the handshake.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self.certificate)
        ctx.use_privatekey(self._key)
        ctx.set_cipher_list(CIPHERS)
        ctx.set_tlsext_use_srtp(b":".join(p.name for p in SRTP_PROFILES))
        return ctx


def split_records(data: bytes, mtu: int = MTU) -> list[bytes]:
    """Pack a stream of DTLS records into datagrams of at most `mtu` bytes (records whole)."""
    datagrams: list[bytes] = []
    current = b""
    pos = 0
    while pos + 13 <= len(data):
        end = pos + 13 + int.from_bytes(data[pos + 11 : pos + 13], "big")
        record = data[pos:end]
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
        pos = end
    if current:
        datagrams.append(current)
    return datagrams


class DtlsSession:
    """One endpoint's DTLS state machine; `role` is "server" or "client"."""

    def __init__(self, identity: DtlsIdentity, role: str, remote_fingerprint: tuple[str, str]):
        if role not in ("server", "client"):
            raise ValueError(f"DTLS role must be server or client, not {role!r}")
        self.role = role
        self._remote_fingerprint = (remote_fingerprint[0].lower(), remote_fingerprint[1].upper())
        if self._remote_fingerprint[0] not in DIGESTS:
            raise DtlsError(f"unsupported fingerprint algorithm {remote_fingerprint[0]!r}")
        self._ssl = SSL.Connection(identity.context, None)
        self._ssl.set_connect_state() if role == "client" else self._ssl.set_accept_state()
        self.done = False
        self.closed = False

    def start(self) -> list[bytes]:
        """Begin the handshake (the client's first flight; nothing for a server)."""
        return self._advance()

    def feed(self, data: bytes) -> list[bytes]:
        """Process one DTLS datagram from the peer; returns datagrams to send back.

        Raises DtlsError if the handshake fails or the peer closed the association.
        """
        self._ssl.bio_write(data)
        if not self.done:
            return self._advance()
        try:
            self._ssl.recv(1500)  # no application data in WebRTC media; drives retransmits
        except SSL.ZeroReturnError:
            self.closed = True
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            logger.debug("dtls record dropped", extra={"error": str(exc)})
        return self._drain()

    def timeout(self) -> float | None:
        """Seconds until the retransmission timer fires, or None when no timer runs."""
        return self._ssl.DTLSv1_get_timeout()

    def on_timeout(self) -> list[bytes]:
        """The retransmission timer fired: returns the flight to resend, if any."""
        self._ssl.DTLSv1_handle_timeout()
        return self._drain()

    def _advance(self) -> list[bytes]:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return self._drain()
        except SSL.Error as exc:
            raise DtlsError(f"DTLS handshake failed: {exc}") from exc
        self.done = True
        out = self._drain()
        self._check_peer()
        return out

    def _check_peer(self) -> None:
        certificate = self._ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            raise DtlsError("DTLS peer sent no certificate")
        algorithm, expected = self._remote_fingerprint
        actual = fingerprint_of(certificate, algorithm)
        if not hmac.compare_digest(actual, expected):
            raise DtlsError("DTLS peer certificate does not match the SDP fingerprint")

    def srtp_keys(self) -> SrtpKeys:
        """Export the SRTP master keys (RFC 5764 section 4.2); only after the handshake."""
        if not self.done:
            raise DtlsError("DTLS handshake is not complete")
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in SRTP_PROFILES if p.name == selected), None)
        if profile is None:
            raise DtlsError(f"no SRTP profile negotiated (peer chose {selected!r})")
        k, s = profile.key_length, profile.salt_length
        material = self._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (k + s))
        client = material[0:k] + material[2 * k : 2 * k + s]
        server = material[k : 2 * k] + material[2 * k + s : 2 * k + 2 * s]
        if self.role == "client":
            return SrtpKeys(profile, tx_key=client, rx_key=server)
        return SrtpKeys(profile, tx_key=server, rx_key=client)

    def shutdown(self) -> list[bytes]:
        """A close_notify alert to send, if the association was up."""
        if self.closed:
            return []
        self.closed = True
        try:
            self._ssl.shutdown()
        except SSL.Error:
            pass
        return self._drain()

    def _drain(self) -> list[bytes]:
        chunks = []
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                break
            except SSL.Error:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return split_records(b"".join(chunks)) if chunks else []
