"""ICE-lite STUN handling (RFC 8445 section 2.5, RFC 8489) and RFC 7983 demultiplexing.

A lite agent never sends checks: it answers binding requests whose USERNAME is
"<local_ufrag>:<remote_ufrag>" and whose MESSAGE-INTEGRITY verifies with the local password.
Requests are read and answered by hand (`parse_binding_request`, `binding_success`): consent
checks arrive every few seconds from every viewer, and aioice's general message classes cost
~100 us per check. The client side (`binding_request`, `parse`, `is_binding_success`) serves
the load viewer, which plays the full, controlling agent, and uses aioice.stun.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import string
import struct
import zlib
from dataclasses import dataclass

from aioice import stun

ICE_CHARS = string.ascii_letters + string.digits + "+/"

KIND_STUN = 0
KIND_DTLS = 1
KIND_RTP = 2
KIND_RTCP = 3
KIND_OTHER = 4


class StunError(Exception):
    """A datagram is not a valid STUN message."""


def classify(data: bytes | bytearray) -> int:
    """The RFC 7983 kind of a datagram: KIND_STUN/DTLS/RTP/RTCP or KIND_OTHER."""
    if not data:
        return KIND_OTHER
    first = data[0]
    if first < 4:
        return KIND_STUN
    if 20 <= first <= 63:
        return KIND_DTLS
    if 128 <= first <= 191:
        if len(data) >= 2 and 192 <= data[1] <= 223:
            return KIND_RTCP
        return KIND_RTP
    return KIND_OTHER


def random_credentials() -> tuple[str, str]:
    """A fresh (ufrag, pwd): 8 and 24 ice-chars, above RFC 8839's minimum of 4 and 22."""
    ufrag = "".join(secrets.choice(ICE_CHARS) for _ in range(8))
    pwd = "".join(secrets.choice(ICE_CHARS) for _ in range(24))
    return ufrag, pwd


def parse(data: bytes) -> stun.Message:
    """Parse a STUN message; any malformation raises StunError."""
    try:
        return stun.parse_message(data)
    except (ValueError, struct.error, UnicodeDecodeError, IndexError, KeyError) as exc:
        raise StunError(f"invalid STUN message: {exc}") from exc


MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_USE_CANDIDATE = 0x0025
ATTR_FINGERPRINT = 0x8028
_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")


@dataclass(frozen=True)
class BindingRequest:
    """A binding request addressed to an agent, not yet authenticated."""

    transaction_id: bytes
    local_ufrag: str
    remote_ufrag: str
    use_candidate: bool
    signed: bytes
    """The bytes MESSAGE-INTEGRITY covers (header length adjusted), or b"" without one."""
    mac: bytes | None


def parse_binding_request(data: bytes) -> BindingRequest | None:
    """Read a binding request without building a full STUN message (the consent-check path).

    Returns None for other STUN messages (responses, indications, other methods) and for
    requests without a "<local>:<remote>" USERNAME; raises StunError when malformed or when
    the FINGERPRINT does not match.
    """
    if len(data) < 20:
        raise StunError("STUN message shorter than its 20-byte header")
    kind, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or length + 20 != len(data) or length % 4:
        raise StunError("STUN header has a bad cookie or length")
    if kind != BINDING_REQUEST:
        return None
    username: str | None = None
    use_candidate = False
    integrity_at = -1
    mac: bytes | None = None
    pos = 20
    while pos + 4 <= len(data):
        attr, size = _ATTR.unpack_from(data, pos)
        end = pos + 4 + size
        if end > len(data):
            raise StunError("STUN attribute runs past the message")
        if attr == ATTR_FINGERPRINT:
            expected = (zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if size != 4 or int.from_bytes(data[pos + 4 : end], "big") != expected:
                raise StunError("STUN fingerprint does not match")
        elif integrity_at < 0:  # attributes after MESSAGE-INTEGRITY are not authenticated
            if attr == ATTR_USERNAME:
                try:
                    username = data[pos + 4 : end].decode("utf8")
                except UnicodeDecodeError as exc:
                    raise StunError("STUN USERNAME is not UTF-8") from exc
            elif attr == ATTR_USE_CANDIDATE:
                use_candidate = True
            elif attr == ATTR_MESSAGE_INTEGRITY:
                if size != 20:
                    raise StunError("STUN MESSAGE-INTEGRITY is not 20 bytes")
                integrity_at, mac = pos, data[pos + 4 : end]
        pos = end + (-size % 4)
    if username is None or ":" not in username:
        return None
    local, remote = username.split(":", 1)
    signed = b""
    if integrity_at >= 0:  # the length field as if MESSAGE-INTEGRITY ended the message
        signed = data[:2] + (integrity_at + 4).to_bytes(2, "big") + data[4:integrity_at]
    return BindingRequest(transaction_id, local, remote, use_candidate, signed, mac)


def verify(request: BindingRequest, local_pwd: str) -> bool:
    """True if the request's MESSAGE-INTEGRITY verifies with our password."""
    if request.mac is None:
        return False
    digest = hmac.new(local_pwd.encode("utf8"), request.signed, hashlib.sha1).digest()
    return hmac.compare_digest(digest, request.mac)


def _xor_address(addr: tuple[str, int], transaction_id: bytes) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    port = addr[1] ^ (MAGIC_COOKIE >> 16)
    mask = MAGIC_COOKIE.to_bytes(4, "big") + (transaction_id if ip.version == 6 else b"")
    packed = bytes(a ^ b for a, b in zip(ip.packed, mask))
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port) + packed


def binding_success(request: BindingRequest, addr: tuple[str, int], local_pwd: str) -> bytes:
    """The success response: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT."""
    mapped = _xor_address(addr, request.transaction_id)
    body = _ATTR.pack(ATTR_XOR_MAPPED_ADDRESS, len(mapped)) + mapped
    tid = request.transaction_id
    signed = _HEADER.pack(BINDING_SUCCESS, len(body) + 24, MAGIC_COOKIE, tid) + body
    mac = hmac.new(local_pwd.encode("utf8"), signed, hashlib.sha1).digest()
    message = _HEADER.pack(BINDING_SUCCESS, len(body) + 32, MAGIC_COOKIE, tid) + body
    message += _ATTR.pack(ATTR_MESSAGE_INTEGRITY, 20) + mac
    crc = (zlib.crc32(message) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return message + _ATTR.pack(ATTR_FINGERPRINT, 4) + crc.to_bytes(4, "big")


def binding_request(
    local_ufrag: str,
    remote_ufrag: str,
    remote_pwd: str,
    tie_breaker: int,
    priority: int = 0x6E0001FF,
    use_candidate: bool = True,
) -> tuple[bytes, bytes]:
    """A controlling agent's check: returns (transaction_id, datagram)."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{remote_ufrag}:{local_ufrag}"
    request.attributes["PRIORITY"] = priority
    request.attributes["ICE-CONTROLLING"] = tie_breaker
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(remote_pwd.encode("utf8"))
    return request.transaction_id, bytes(request)


def consent_request(local_ufrag: str, remote_ufrag: str, remote_pwd: str) -> tuple[bytes, bytes]:
    """Our (lite, controlled) binding request that asks a new address for consent: only the
    peer, who holds `remote_pwd`, can answer it. Returns (transaction_id, datagram)."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{remote_ufrag}:{local_ufrag}"
    request.attributes["PRIORITY"] = 0x7E0001FF
    request.attributes["ICE-CONTROLLED"] = secrets.randbits(64)
    request.add_message_integrity(remote_pwd.encode("utf8"))
    request.add_fingerprint()
    return request.transaction_id, bytes(request)


def is_binding_success(message: stun.Message, transaction_id: bytes, remote_pwd: str) -> bool:
    """True if `message` answers our check `transaction_id` and authenticates with remote_pwd."""
    return (
        message.message_method == stun.Method.BINDING
        and message.message_class == stun.Class.RESPONSE
        and message.transaction_id == transaction_id
        and "MESSAGE-INTEGRITY" in message.attributes
        and message.check_message_integrity(remote_pwd.encode("utf8"))
    )
