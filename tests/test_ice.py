"""ICE-lite STUN handling and RFC 7983 demultiplexing; property tests for the parsers."""

from __future__ import annotations

import string

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from media import ice


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", ice.KIND_OTHER),
        (b"\x00\x01", ice.KIND_STUN),
        (b"\x03", ice.KIND_STUN),
        (b"\x04", ice.KIND_OTHER),
        (b"\x14", ice.KIND_DTLS),
        (b"\x16\xfe\xfd", ice.KIND_DTLS),
        (b"\x3f", ice.KIND_DTLS),
        (b"\x40", ice.KIND_OTHER),
        (b"\x80\x60", ice.KIND_RTP),
        (b"\x80\xe0", ice.KIND_RTP),  # marker + PT 96
        (b"\x81\xc8", ice.KIND_RTCP),  # SR
        (b"\x81\xce", ice.KIND_RTCP),  # PSFB
        (b"\x80\xdf", ice.KIND_RTCP),
        (b"\xbf\xe0", ice.KIND_RTP),
        (b"\xc0", ice.KIND_OTHER),
    ],
)
def test_classify(data, kind):
    assert ice.classify(data) == kind


@given(st.binary(max_size=64))
def test_classify_total_and_by_first_byte(data):
    kind = ice.classify(data)
    if data and data[0] < 4:
        assert kind == ice.KIND_STUN
    elif data and 20 <= data[0] <= 63:
        assert kind == ice.KIND_DTLS
    elif data and 128 <= data[0] <= 191:
        assert kind in (ice.KIND_RTP, ice.KIND_RTCP)
    else:
        assert kind == ice.KIND_OTHER


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_parsers_only_raise_stun_error_on_garbage(data):
    for parser in (ice.parse, ice.parse_binding_request):
        try:
            parser(data)
        except ice.StunError:
            pass


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x0006, 0x0008, 0x0020, 0x0024, 0x0025, 0x8028, 0x802A, 0x99]),
            st.binary(max_size=24),
        ),
        max_size=5,
    ),
    st.binary(min_size=12, max_size=12),
)
def test_structured_garbage_agrees_with_aioice(attrs, txid):
    """Well-framed requests with arbitrary attributes: StunError or a result, never a crash;
    when both parsers accept one, they agree on what it says."""
    body = b""
    for kind, value in attrs:
        body += kind.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
        body += b"\x00" * (-len(value) % 4)
    data = b"\x00\x01" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + txid + body
    try:
        request = ice.parse_binding_request(data)
        reference = ice.parse(data)
    except ice.StunError:
        return
    if request is not None:
        assert (
            reference.attributes.get("USERNAME") == f"{request.local_ufrag}:{request.remote_ufrag}"
        )
        assert ("USE-CANDIDATE" in reference.attributes) == request.use_candidate
        assert ice.verify(request, "k" * 22) == reference.check_message_integrity(b"k" * 22)


ICE = st.text(alphabet=string.ascii_letters + string.digits + "+/", min_size=4, max_size=32)
ADDRESSES = st.sampled_from([("192.0.2.7", 4242), ("127.0.0.1", 1), ("2001:db8::9", 65535)])


@given(
    ICE,
    ICE,
    st.text(alphabet=string.ascii_letters, min_size=22, max_size=40),
    st.integers(0, 2**64 - 1),
    st.booleans(),
    ADDRESSES,
)
def test_check_round_trip(local, remote, pwd, tie, nominate, addr):
    """An aioice-built check verifies here, and aioice accepts our hand-built answer."""
    txid, datagram = ice.binding_request(remote, local, pwd, tie, use_candidate=nominate)
    request = ice.parse_binding_request(datagram)
    assert request is not None and request.transaction_id == txid
    assert (request.local_ufrag, request.remote_ufrag) == (local, remote)
    assert request.use_candidate == nominate
    assert ice.verify(request, pwd)
    assert not ice.verify(request, pwd + "x")
    reply = ice.parse(ice.binding_success(request, addr, pwd))  # aioice checks FINGERPRINT
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert "FINGERPRINT" in reply.attributes
    assert ice.is_binding_success(reply, txid, pwd)
    assert not ice.is_binding_success(reply, b"\x00" * 12, pwd)


def test_tampered_check_fails():
    _, datagram = ice.binding_request("them", "us", "p" * 22, 1)
    forged = bytearray(datagram)
    forged[30] ^= 1  # inside USERNAME
    with pytest.raises(ice.StunError, match="fingerprint"):
        ice.parse_binding_request(bytes(forged))
    unfingerprinted = datagram[:-8]
    unfingerprinted = (
        unfingerprinted[:2] + (len(unfingerprinted) - 20).to_bytes(2, "big") + unfingerprinted[4:]
    )
    request = ice.parse_binding_request(unfingerprinted)
    assert request is not None and ice.verify(request, "p" * 22)
    changed = bytearray(unfingerprinted)
    changed[30] ^= 1
    request = ice.parse_binding_request(bytes(changed))
    assert request is not None and not ice.verify(request, "p" * 22)


def test_requests_without_username_or_of_other_class_are_ignored():
    def wire(message: stun.Message) -> bytes:
        return bytes(message)

    assert (
        ice.parse_binding_request(wire(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)))
        is None
    )
    anonymous = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    assert ice.parse_binding_request(wire(anonymous)) is None
    anonymous.attributes["USERNAME"] = "nocolon"
    assert ice.parse_binding_request(wire(anonymous)) is None
    allocate = stun.Message(
        stun.Method.ALLOCATE, stun.Class.REQUEST, attributes={"USERNAME": "a:b"}
    )
    assert ice.parse_binding_request(wire(allocate)) is None
    unsigned = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={"USERNAME": "a:b"})
    request = ice.parse_binding_request(wire(unsigned))
    assert request is not None and request.mac is None and not ice.verify(request, "x" * 22)


def test_random_credentials():
    ufrag, pwd = ice.random_credentials()
    assert len(ufrag) >= 4 and len(pwd) >= 22
    assert set(ufrag + pwd) <= set(ice.ICE_CHARS)
    assert ice.random_credentials() != (ufrag, pwd)
