"""A real aiortc viewer over loopback for the media transport tests (endpoint, fanout)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from media.endpoint import Endpoint, MediaSocket

VIDEO_SSRC = 0x1000
AUDIO_SSRC = 0x2000
SETUP_OF_ROLE = {"auto": "actpass", "client": "active", "server": "passive"}


def answer_sdp(offer: SessionDescription, ep: Endpoint, sock: MediaSocket) -> tuple[str, dict]:
    """The SDP answer a WHEP server would build: ice-lite, VP8 + Opus at the offered PTs."""
    lines = [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(m.rtp.muxId for m in offer.media),
        "a=ice-lite",
    ]
    pts = {}
    for m in offer.media:
        codec = next(c for c in m.rtp.codecs if c.mimeType.lower() in ("video/vp8", "audio/opus"))
        pts[m.kind] = codec.payloadType
        name = codec.mimeType.split("/")[1] + f"/{codec.clockRate}"
        name += f"/{codec.channels}" if codec.channels else ""
        ssrc = VIDEO_SSRC if m.kind == "video" else AUDIO_SSRC
        lines += [
            f"m={m.kind} 9 UDP/TLS/RTP/SAVPF {codec.payloadType}",
            "c=IN IP4 127.0.0.1",
            f"a=mid:{m.rtp.muxId}",
            "a=sendonly",
            "a=rtcp-mux",
            f"a=rtpmap:{codec.payloadType} {name}",
            f"a=rtcp-fb:{codec.payloadType} nack pli",
            f"a=ssrc:{ssrc} cname:lopso",
            f"a=ice-ufrag:{ep.local_ufrag}",
            f"a=ice-pwd:{ep.local_pwd}",
            "a=fingerprint:" + " ".join(sock.fingerprint),
            f"a=setup:{ep.setup}",
        ]
        lines += [f"a=candidate:{c}" for c in sock.candidates()] + ["a=end-of-candidates"]
    return "\r\n".join(lines) + "\r\n", pts


class Viewer:
    """A real aiortc peer (recvonly video + audio) whose RTP path ends in a list."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.received: list[bytes] = []
        self.endpoint: Endpoint | None = None
        self.pts: dict[str, int] = {}

    async def connect(
        self, sock: MediaSocket, our_setup: str | None = None, short_circuit: bool = True
    ) -> Endpoint:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = SessionDescription.parse(self.pc.localDescription.sdp)
        media = offer.media[0]
        fp = media.dtls.fingerprints[0]
        setup = our_setup or SETUP_OF_ROLE[media.dtls.role]
        self.endpoint = sock.endpoint(
            media.ice.usernameFragment, media.ice.password, (fp.algorithm, fp.value), setup
        )
        sdp, self.pts = answer_sdp(offer, self.endpoint, sock)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        await self.endpoint.connected(10)
        transport = self.pc.getTransceivers()[0].receiver.transport

        async def count(data: bytes, arrival_time_ms: int) -> None:
            self.received.append(data)

        if short_circuit:
            transport._handle_rtp_data = count  # the test's receive counter
        for _ in range(500):
            if self.pc.connectionState == "connected":
                break
            await asyncio.sleep(0.01)
        assert self.pc.connectionState == "connected"
        return self.endpoint

    async def close(self) -> None:
        await self.pc.close()


def rtp(seq: int, marker: bool = False, size: int = 1000, pt: int = 0) -> bytes:
    """A video RTP packet numbered `seq`; its payload bytes repeat the sequence number."""
    header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, seq * 3000, VIDEO_SSRC)
    return header + bytes([seq & 0xFF]) * size


async def wait_for(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    """Poll `predicate` every 10 ms until it holds; assert it at the deadline."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate()
