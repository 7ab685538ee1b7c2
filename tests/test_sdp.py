"""Viewer offers: parsing, codec choice with the viewer's payload types, the ICE-lite answer."""

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from hypothesis import given
from hypothesis import strategies as st

from media.errors import CodecMismatchError, SdpError
from media.sdp import H264, OPUS, VP8, LocalTransport, build_answer, parse_viewer_offer, video_codec
from tests.chromeoffer import chrome_offer

LOCAL = LocalTransport(
    "ufrag1",
    "pwd0123456789012345678901",
    ("sha-256", "AA:BB"),
    "passive",
    ["1 1 udp 2130706431 192.0.2.10 8189 typ host"],
)
SSRCS = {"audio": (11, 12), "video": (21, 22)}

CHROME_LINES = [
    "v=0",
    "o=- 1 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=msid-semantic: WMS",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 11:22:33",
    "a=setup:actpass",
    "a=mid:0",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 106 107 39 40",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 11:22:33",
    "a=setup:actpass",
    "a=mid:1",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 nack",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000",
    "a=fmtp:103 apt=102",
    "a=rtpmap:106 H264/90000",
    "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:107 rtx/90000",
    "a=fmtp:107 apt=106",
    "a=rtpmap:39 H264/90000",
    "a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
    "a=rtpmap:40 AV1/90000",
    "",
]
CHROME_OFFER = "\r\n".join(CHROME_LINES)


@pytest.mark.parametrize("spec, pt, rtx", [(VP8, 96, 97), (H264, 106, 107)])
def test_chrome_offer_answered_with_viewer_payload_types(spec, pt, rtx):
    tracks = {"audio": OPUS, "video": spec}
    offer = parse_viewer_offer(CHROME_OFFER, tracks)
    video = offer.lines[1]
    assert (video.mid, video.payload_type, video.rtx_payload_type) == ("1", pt, rtx)
    assert (offer.lines[0].payload_type, offer.lines[0].rtx_payload_type) == (111, None)
    assert offer.remote.ufrag == "abcd" and offer.remote.setup == "actpass"
    answer = build_answer(offer, tracks, LOCAL, SSRCS)
    assert "a=ice-lite" in answer and "a=group:BUNDLE 0 1" in answer
    assert f"m=video 9 UDP/TLS/RTP/SAVPF {pt} {rtx}" in answer
    assert f"a=fmtp:{rtx} apt={pt}" in answer and "a=ssrc-group:FID 21 22" in answer
    assert f"a=rtcp-fb:{pt} nack pli" in answer and f"a=rtcp-fb:{pt} ccm fir" in answer
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" in answer and "a=ssrc:12" not in answer
    assert answer.count("a=sendonly") == 2 and "a=setup:passive" in answer
    assert "a=candidate:1 1 udp 2130706431 192.0.2.10 8189 typ host" in answer


async def test_answer_accepted_by_aiortc():
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        tracks = {"audio": OPUS, "video": VP8}
        offer = parse_viewer_offer(pc.localDescription.sdp, tracks)
        answer = build_answer(offer, tracks, LOCAL, SSRCS)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        kinds = {t.kind: t.currentDirection for t in pc.getTransceivers()}
        assert kinds == {"audio": "recvonly", "video": "recvonly"}
    finally:
        await pc.close()


def test_codec_mismatch_names_offer_and_class_codec():
    offer = CHROME_OFFER.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 VP9/90000")
    with pytest.raises(CodecMismatchError) as info:
        parse_viewer_offer(offer, {"audio": OPUS, "video": VP8})
    message = str(info.value)
    assert (
        "this class sends video as VP8" in message and "VP9" in message and "H264/42e01f" in message
    )


def test_h264_needs_packetization_mode_1():
    offer = CHROME_OFFER.replace("packetization-mode=1", "packetization-mode=0")
    with pytest.raises(CodecMismatchError, match="H264"):
        parse_viewer_offer(offer, {"audio": OPUS, "video": H264})


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello", "not SDP"),
        ("v=0\r\ns=-\r\n", "no media line"),
        (CHROME_OFFER.replace("a=ice-ufrag:abcd\r\n", ""), "ice-ufrag"),
        (CHROME_OFFER.replace("a=fingerprint:sha-256 11:22:33\r\n", ""), "fingerprint"),
        (CHROME_OFFER.replace("a=rtcp-mux\r\n", ""), "rtcp-mux"),
        (CHROME_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"), "BUNDLE"),
        (
            CHROME_OFFER.replace("m=video 9 UDP/TLS/RTP/SAVPF 96", "m=video 9 UDP/TLS/RTP/SAVPF x"),
            "parsed",
        ),
    ],
)
def test_malformed_offers(text, message):
    with pytest.raises(SdpError, match=message):
        parse_viewer_offer(text, {"audio": OPUS, "video": VP8})


def test_unknown_video_codec_setting():
    assert video_codec("vp8") is VP8
    with pytest.raises(CodecMismatchError, match="AV1"):
        video_codec("AV1")


def test_extra_and_datachannel_lines_are_rejected_not_fatal():
    extra = CHROME_OFFER + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n"
    offer = parse_viewer_offer(extra, {"audio": OPUS, "video": VP8})
    assert offer.lines[2] is None
    answer = build_answer(offer, {"audio": OPUS, "video": VP8}, LOCAL, SSRCS)
    assert "m=application 0 UDP/DTLS/SCTP webrtc-datachannel" in answer


@given(st.text(max_size=300))
def test_arbitrary_text_is_an_sdp_error_or_a_codec_error(text):
    try:
        parse_viewer_offer("v=0\r\n" + text, {"audio": OPUS, "video": VP8})
    except (SdpError, CodecMismatchError):
        pass


FULL_CHROME = chrome_offer("abcd", "abcdefghijklmnopqrstuvwx", ("sha-256", "AA:BB"))


@pytest.mark.parametrize("spec", [VP8, H264])
def test_pruned_parse_negotiates_exactly_what_the_whole_offer_does(spec):
    from media.sdp import _negotiate, parse_sdp

    tracks = {"audio": OPUS, "video": spec}
    whole = _negotiate(parse_sdp(FULL_CHROME), tracks)
    fast = parse_viewer_offer(FULL_CHROME, tracks)
    assert fast.lines == whole.lines and fast.remote == whole.remote
    local = {"audio": (1, 2), "video": (3, 4)}
    fast_answer = build_answer(fast, tracks, LOCAL, local).split("\r\n")
    whole_answer = build_answer(whole, tracks, LOCAL, local).split("\r\n")
    del fast_answer[1], whole_answer[1]  # o= carries a random session id
    assert fast_answer == whole_answer


def test_pruned_offer_keeps_only_the_lecture_codec_and_its_rtx():
    from media.sdp import _prune

    pruned = _prune(FULL_CHROME, {"audio": OPUS, "video": H264})
    assert "a=candidate:" not in pruned and "a=extmap:" not in pruned
    assert "VP9" not in pruned and "AV1" not in pruned and "G722" not in pruned
    assert "a=rtpmap:106 H264/90000" in pruned and "a=fmtp:107 apt=106" in pruned
    assert "a=rtpmap:99 rtx/90000" not in pruned  # VP9's RTX
    vp8 = _prune(FULL_CHROME, {"audio": OPUS, "video": VP8})
    assert len(vp8.splitlines()) < len(FULL_CHROME.splitlines()) / 3


def test_codec_mismatch_still_names_every_codec_offered():
    offer = FULL_CHROME
    for pt in ("102", "104", "106", "108", "127", "39", "112"):
        offer = offer.replace(f"a=rtpmap:{pt} H264/90000", f"a=rtpmap:{pt} H265/90000")
    with pytest.raises(CodecMismatchError, match="VP8, VP9.*AV1"):
        parse_viewer_offer(offer, {"audio": OPUS, "video": H264})
