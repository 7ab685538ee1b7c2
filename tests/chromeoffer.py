"""A recvonly offer shaped like Chrome 120+ sends for WHEP: every codec, extension, candidate.

Real browser offers are long (about 160 lines, 35 payload types) and their parse cost is what a
join storm pays per site; tests/test_sdp.py and scripts/bench_join.py use this one.
"""

from __future__ import annotations


def chrome_offer(
    ufrag: str, pwd: str, fingerprint: tuple[str, str], host: str = "127.0.0.1", port: int = 9
) -> str:
    """A recvonly offer shaped like Chrome 120+'s (all its codecs, extensions, candidates)."""
    fb = ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    video = [  # (pt, codec, fmtp, rtx pt)
        (96, "VP8", "", 97),
        (98, "VP9", "profile-id=0", 99),
        (100, "VP9", "profile-id=2", 101),
        (
            102,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            103,
        ),
        (
            104,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
            105,
        ),
        (
            106,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            107,
        ),
        (
            108,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
            109,
        ),
        (
            127,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
            125,
        ),
        (39, "H264", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f", 40),
        (41, "AV1", "level-idx=5;profile=0;tier=0", 42),
        (
            112,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
            113,
        ),
    ]
    vpts = []
    vlines = []
    for pt, name, fmtp, rtx in video:
        vpts += [pt, rtx]
        vlines.append(f"a=rtpmap:{pt} {name}/90000")
        vlines += [f"a=rtcp-fb:{pt} {f}" for f in fb]
        if fmtp:
            vlines.append(f"a=fmtp:{pt} {fmtp}")
        vlines += [f"a=rtpmap:{rtx} rtx/90000", f"a=fmtp:{rtx} apt={pt}"]
    vpts += [114, 115, 116]
    vlines += [
        "a=rtpmap:114 red/90000",
        "a=rtpmap:115 rtx/90000",
        "a=fmtp:115 apt=114",
        "a=rtpmap:116 ulpfec/90000",
    ]
    vext = [
        "urn:ietf:params:rtp-hdrext:toffset",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "urn:3gpp:video-orientation",
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
        "http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
        "http://www.webrtc.org/experiments/rtp-hdrext/video-timing",
        "http://www.webrtc.org/experiments/rtp-hdrext/color-space",
        "urn:ietf:params:rtp-hdrext:sdes:mid",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    ]
    transport = [
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        "a=ice-options:trickle",
        f"a=fingerprint:{fingerprint[0]} {fingerprint[1]}",
        "a=setup:actpass",
    ]
    cands = [
        f"a=candidate:1 1 udp 2122260223 {host} {port} typ host generation 0 network-id 1",
        "a=candidate:2 1 tcp 1518280447 192.0.2.55 9 typ host tcptype active generation 0 network-id 1",
        f"a=candidate:3 1 udp 1686052607 198.51.100.7 {port} typ srflx raddr {host} rport {port} generation 0 network-id 1",
        "a=end-of-candidates",
    ]
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        *cands,
        *transport,
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        f"m=video 9 UDP/TLS/RTP/SAVPF {' '.join(map(str, vpts))}",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        *transport,
        "a=mid:1",
        *[f"a=extmap:{i + 5} {uri}" for i, uri in enumerate(vext)],
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        *vlines,
    ]
    return "\r\n".join(lines) + "\r\n"
