"""ICE-lite STUN handling (RFC 8445 section 2.5, RFC 8489) and RFC 7983 demultiplexing.

A lite agent never sends checks: it answers binding requests whose USERNAME is
"<local_ufrag>:<remote_ufrag>" and whose MESSAGE-INTEGRITY verifies with the local password.
The client-side helpers (`binding_request`, `parse_binding_response`) serve the load viewer,
which plays the full, controlling agent. Message parsing and serialisation use aioice.stun.
"""

from __future__ import annotations

import secrets
import string
import struct
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


@dataclass(frozen=True)
class BindingRequest:
    """A binding request addressed to this agent, not yet authenticated."""

    message: stun.Message
    local_ufrag: str
    remote_ufrag: str
    use_candidate: bool


def binding_request_of(message: stun.Message) -> BindingRequest | None:
    """The binding request in `message`, or None for responses, indications or no USERNAME."""
    if message.message_method != stun.Method.BINDING:
        return None
    if message.message_class != stun.Class.REQUEST:
        return None
    username = message.attributes.get("USERNAME")
    if not isinstance(username, str) or ":" not in username:
        return None
    local, remote = username.split(":", 1)
    return BindingRequest(message, local, remote, "USE-CANDIDATE" in message.attributes)


def verify(request: BindingRequest, local_pwd: str) -> bool:
    """True if the request's MESSAGE-INTEGRITY verifies with our password."""
    if "MESSAGE-INTEGRITY" not in request.message.attributes:
        return False
    return request.message.check_message_integrity(local_pwd.encode("utf8"))


def binding_success(request: BindingRequest, addr: tuple[str, int], local_pwd: str) -> bytes:
    """The success response: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT."""
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.message.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = addr
    response.add_message_integrity(local_pwd.encode("utf8"))
    return bytes(response)


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


def is_binding_success(message: stun.Message, transaction_id: bytes, remote_pwd: str) -> bool:
    """True if `message` answers our check `transaction_id` and authenticates with remote_pwd."""
    return (
        message.message_method == stun.Method.BINDING
        and message.message_class == stun.Class.RESPONSE
        and message.transaction_id == transaction_id
        and "MESSAGE-INTEGRITY" in message.attributes
        and message.check_message_integrity(remote_pwd.encode("utf8"))
    )
