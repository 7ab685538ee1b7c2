"""SRTP/SRTCP contexts for one endpoint, and the fast protect path used by fan-out.

The contexts are pylibsrtp `Session`s built from the DTLS-exported keys. The fast path calls
libsrtp's `srtp_protect` directly, in place, on buffers the caller owns (the sendmmsg slots),
with a preallocated length cell: no cffi allocation and no bytes object per packet.

pylibsrtp internals used (checked by tests/test_srtp.py::test_pylibsrtp_internals):
- `pylibsrtp._binding.ffi` and `pylibsrtp._binding.lib` (the compiled cffi module, for
  `lib.srtp_protect`, `lib.srtp_protect_rtcp` and `ffi.new("int *")`);
- `pylibsrtp.Session._srtp`, a `srtp_t *` cdata whose `[0]` is the libsrtp context.
If either is missing, `fast_context()` returns None and callers use `Session.protect`.
"""

from __future__ import annotations

import logging
from typing import Any

import pylibsrtp
from pylibsrtp import Policy, Session

from media.dtls import SrtpKeys

logger = logging.getLogger(__name__)

try:  # pylibsrtp internals: see the module docstring
    from pylibsrtp._binding import ffi as srtp_ffi
    from pylibsrtp._binding import lib as srtp_lib
except ImportError:  # pragma: no cover - exercised only with another pylibsrtp
    srtp_ffi = None
    srtp_lib = None

LIBSRTP_PROFILES = {
    b"SRTP_AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    b"SRTP_AES128_CM_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}
RTP_TAG_LENGTH = {b"SRTP_AEAD_AES_128_GCM": 16, b"SRTP_AES128_CM_SHA1_80": 10}
"""Bytes srtp_protect appends to an RTP packet for each profile."""

MAX_TRAILER = 4 + 16 + 128
"""Room libsrtp may append (SRTCP index + tag + MKI), as pylibsrtp reserves."""


class SrtpError(Exception):
    """A packet failed SRTP protection or authentication."""


def _session(key: bytes, ssrc_type: int, profile: int) -> Session:
    policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    policy.allow_repeat_tx = True  # retransmissions reuse sequence numbers
    policy.window_size = 1024
    return Session(policy)


def fast_context(session: Session) -> Any | None:
    """The raw libsrtp context of `session` (a `srtp_t` cdata), or None if unreachable."""
    if srtp_lib is None:
        return None
    handle = getattr(session, "_srtp", None)
    if handle is None:
        return None
    return handle[0]


class SrtpContext:
    """Outbound and inbound SRTP for one endpoint, keyed from its DTLS handshake."""

    def __init__(self, keys: SrtpKeys) -> None:
        profile = LIBSRTP_PROFILES[keys.profile.name]
        self.profile_name = keys.profile.name
        self.tag_length = RTP_TAG_LENGTH[keys.profile.name]
        self._tx = _session(keys.tx_key, Policy.SSRC_ANY_OUTBOUND, profile)
        self._rx = _session(keys.rx_key, Policy.SSRC_ANY_INBOUND, profile)
        self.tx_handle = fast_context(self._tx)
        """libsrtp context for `FastProtector.protect_into`, or None (use `protect`)."""

    def protect(self, packet: bytes) -> bytes:
        """SRTP-protect one RTP packet (the slow, allocating path)."""
        try:
            return self._tx.protect(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"srtp protect failed: {exc}") from exc

    def protect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP-protect one compound RTCP packet."""
        try:
            return self._tx.protect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"srtcp protect failed: {exc}") from exc

    def unprotect(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one SRTP packet."""
        try:
            return self._rx.unprotect(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"srtp unprotect failed: {exc}") from exc

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one SRTCP packet."""
        try:
            return self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"srtcp unprotect failed: {exc}") from exc


class FastProtector:
    """Calls libsrtp's srtp_protect in place on caller-owned buffers, with no allocation.

    `available` is False when the pylibsrtp internals are missing; callers then fall back to
    `SrtpContext.protect`.
    """

    def __init__(self) -> None:
        self.available = srtp_lib is not None
        if self.available:
            self.protect_fn = srtp_lib.srtp_protect
            self.protect_rtcp_fn = srtp_lib.srtp_protect_rtcp
            self.length = srtp_ffi.new("int *")
        else:  # pragma: no cover
            self.protect_fn = None
            self.protect_rtcp_fn = None
            self.length = None

    def protect_into(self, handle: Any, buffer: Any, length: int) -> int:
        """Protect `length` bytes of RTP at `buffer` in place; returns the new length or -1."""
        cell = self.length
        cell[0] = length
        if self.protect_fn(handle, buffer, cell) != 0:
            return -1
        return int(cell[0])
