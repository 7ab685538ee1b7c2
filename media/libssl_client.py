"""A DTLS client on the system's libssl (ctypes), for DTLS servers on legacy curves.

Measured with PyAV 18.1 (FFmpeg 8.1 built on GnuTLS): FFmpeg's WHIP muxer offers
a=setup:passive (it is the DTLS server, aiortc the client) and, unless given cert_file/
key_file, signs with a generated ECDSA certificate on curve P-224. The OpenSSL 4.0 inside the
`cryptography` wheel (which pyOpenSSL and so aiortc use) no longer has P-224 as a TLS group,
so it aborts the handshake with a fatal illegal_parameter alert after the server's
Certificate; RSA or P-256 certificates work. The system's libssl (OpenSSL 3.0 on Debian)
still accepts P-224, so for the client role only, aiortc's handshake runs on it:
`LibsslDtlsClient` is the subset of pyOpenSSL's `SSL.Connection` that aiortc's
RTCDtlsTransport calls, and media.hooks.legacy_curve_dtls_client swaps it in.

    libs = load_libssl()          # None when libssl is absent or not OpenSSL 3
    client = LibsslDtlsClient(libs, cert_der, key_der, b"SRTP_AES128_CM_SHA1_80")
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL

from .dtls import split_records
from .errors import MediaError

logger = logging.getLogger(__name__)

CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
"""ECDSA and RSA suites: aiortc's own list accepts ECDSA certificates only."""


class LibsslError(MediaError):
    """The system libssl refused the certificate, key or a handshake step."""


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


def load_libssl() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
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
        raise LibsslError("system libssl could not load the DTLS certificate or key")
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
            raise LibsslError("system libssl refused aiortc's DTLS certificate")
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
