"""SRTP contexts and the fast in-place protect path (against pylibsrtp's own Session)."""

from __future__ import annotations

import os
import struct

import pylibsrtp
import pytest

from media import srtp as srtp_module
from media.dtls import SRTP_PROFILES, SrtpKeys
from media.srtp import FastProtector, SrtpContext, SrtpError


def keys_for(profile_index: int) -> tuple[SrtpKeys, SrtpKeys]:
    profile = SRTP_PROFILES[profile_index]
    a = os.urandom(profile.key_length + profile.salt_length)
    b = os.urandom(profile.key_length + profile.salt_length)
    return SrtpKeys(profile, tx_key=a, rx_key=b), SrtpKeys(profile, tx_key=b, rx_key=a)


def rtp(seq: int, size: int = 200) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 90, 0xCAFE) + os.urandom(size)


def test_pylibsrtp_internals():
    """Fails loudly if pylibsrtp changes what media/srtp.py reaches into."""
    assert pylibsrtp.__version__ == "1.0.0", "media/srtp.py was checked against pylibsrtp 1.0.0"
    from pylibsrtp._binding import ffi, lib

    assert srtp_module.srtp_lib is lib and srtp_module.srtp_ffi is ffi
    assert {"srtp_protect", "srtp_protect_rtcp"} <= set(dir(lib))
    assert str(ffi.typeof(lib.srtp_protect)).startswith("<ctype 'srtp_err_status_t(*)(")
    session = pylibsrtp.Session(
        pylibsrtp.Policy(key=os.urandom(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    )
    assert hasattr(session, "_srtp"), "pylibsrtp.Session._srtp is gone"
    assert srtp_module.fast_context(session) is not None


@pytest.mark.parametrize("profile_index", [0, 1])
def test_fast_path_matches_session_protect(profile_index):
    ours, _ = keys_for(profile_index)
    fast_ctx, slow_ctx = SrtpContext(ours), SrtpContext(ours)  # same key, separate state
    protector = FastProtector()
    assert protector.available and fast_ctx.tx_handle is not None
    buf = srtp_module.srtp_ffi.new("unsigned char[]", 1500)
    for seq in range(5):
        packet = rtp(seq)
        buf[0 : len(packet)] = packet
        n = protector.protect_into(fast_ctx.tx_handle, buf, len(packet))
        assert n == len(packet) + fast_ctx.tag_length
        assert bytes(srtp_module.srtp_ffi.buffer(buf, n)) == slow_ctx.protect(packet)


@pytest.mark.parametrize("profile_index", [0, 1])
def test_round_trip_rtp_and_rtcp(profile_index):
    ours, theirs = keys_for(profile_index)
    sender, receiver = SrtpContext(ours), SrtpContext(theirs)
    packet = rtp(1)
    assert receiver.unprotect(sender.protect(packet)) == packet
    rtcp = struct.pack("!BBHI", 0x81, 206, 2, 1) + struct.pack("!I", 2)  # a PLI
    assert receiver.unprotect_rtcp(sender.protect_rtcp(rtcp)) == rtcp
    assert sender.profile_name == SRTP_PROFILES[profile_index].name


def test_tampered_packet_rejected():
    ours, theirs = keys_for(0)
    protected = bytearray(SrtpContext(ours).protect(rtp(9)))
    protected[20] ^= 1
    with pytest.raises(SrtpError, match="unprotect"):
        SrtpContext(theirs).unprotect(bytes(protected))
    with pytest.raises(SrtpError):
        SrtpContext(theirs).unprotect_rtcp(b"\x81\xc9" + b"\x00" * 30)


def test_retransmission_with_same_sequence_allowed():
    ours, theirs = keys_for(1)
    sender, receiver = SrtpContext(ours), SrtpContext(theirs)
    packet = rtp(5)
    first = sender.protect(packet)
    assert sender.protect(packet) == first  # allow_repeat_tx: a NACKed packet resent
    assert receiver.unprotect(first) == packet
