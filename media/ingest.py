"""Ingest: one aiortc RTCPeerConnection per publisher (a browser, OBS, FFmpeg or a relay link).

aiortc does ICE, DTLS, SRTP, NACK, REMB and receiver reports towards the publisher; media.hooks
taps each receiver so every packet goes to the lecture's forwarders and no decoder runs.
Nothing here assumes a browser: a relay link pulling from an origin is just another peer
whose receivers are tapped the same way.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiortc import RTCPeerConnection, RTCRtpCodecCapability, RTCRtpReceiver, RTCSessionDescription
from aiortc import sdp as aiosdp
from aiortc.exceptions import OperationError
from aiortc.rtp import RtcpSrPacket, RtpPacket

from . import hooks
from .errors import CodecMismatchError, MediaError, SdpError
from .sdp import CodecSpec, parse_sdp

logger = logging.getLogger(__name__)

PacketSink = Callable[[str, RtpPacket], None]
ReportSink = Callable[[str, RtcpSrPacket], None]


def _h264_profile(offer: str) -> str:
    """42e01f if the offer has a constrained-baseline H264, else 42001f (plain baseline)."""
    for value in re.findall(r"profile-level-id=([0-9a-fA-F]{6})", offer):
        try:
            profile, _level = aiosdp.parse_h264_profile_level_id(value)
        except ValueError:
            continue
        if profile == aiosdp.H264Profile.PROFILE_CONSTRAINED_BASELINE:
            return "42e01f"
    return "42001f"


def _preferences(kind: str, spec: CodecSpec, offer: str) -> list[RTCRtpCodecCapability]:
    """The receiver capabilities matching the lecture codec (one H264 profile), with RTX."""
    wanted = spec.name.lower()
    capabilities = RTCRtpReceiver.getCapabilities(kind)
    caps = capabilities.codecs if capabilities is not None else []
    chosen = [c for c in caps if c.mimeType.split("/")[-1].lower() == wanted]
    if wanted == "h264":
        profile = _h264_profile(offer)
        chosen = [
            c for c in chosen if str(c.parameters.get("profile-level-id", "")).lower() == profile
        ]
    if kind == "video":
        chosen += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return chosen


def _check_offer(description: aiosdp.SessionDescription, specs: dict[str, CodecSpec]) -> None:
    """What aiortc needs of a publisher's offer, refused here with a precise message."""
    lines = [m for m in description.media if m.kind in specs and m.port != 0]
    if not lines:
        raise SdpError("publisher offer has no audio or video m-line")
    for media in lines:
        kind = media.kind
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise SdpError(f"publisher offer's {kind} m-line has no a=ice-ufrag / a=ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise SdpError(f"publisher offer's {kind} m-line has no a=fingerprint")
        if not media.rtcp_mux:
            raise SdpError(f"publisher offer's {kind} m-line lacks a=rtcp-mux (required)")
        if not media.rtp.muxId:
            raise SdpError(f"publisher offer's {kind} m-line has no a=mid")
        if media.direction is None:
            raise SdpError(
                f"publisher offer's {kind} m-line has no direction (a=sendonly or a=sendrecv)"
            )


def _offered_kinds(offer: str) -> list[str]:
    """Media kinds of the offer's m-lines, in order (a video-only encoder offers no audio)."""
    if not isinstance(offer, str) or not offer.lstrip().startswith("v=0"):
        raise SdpError("publisher offer is not SDP (it must start with v=0)")
    kinds = [line[2:].split(" ", 1)[0] for line in offer.splitlines() if line.startswith("m=")]
    if not kinds:
        raise SdpError("publisher offer has no media line")
    return kinds


class Publisher:
    """One publishing peer; packets and sender reports go to the sinks, tagged by kind."""

    def __init__(
        self,
        specs: dict[str, CodecSpec],
        on_packet: PacketSink,
        on_report: ReportSink,
        on_gone: Callable[[Publisher], None] | None = None,
    ) -> None:
        self.specs = specs
        self.on_packet = on_packet
        self.on_report = on_report
        self.on_gone = on_gone  # the lecture's own bookkeeping, kept apart from on_close
        self.pc = RTCPeerConnection()
        hooks.widen_dtls(self.pc)
        self.receivers: dict[str, RTCRtpReceiver] = {}
        self.ssrcs: dict[str, int] = {}
        self.on_close: Callable[[Publisher], None] | None = None
        self.keyframe_requests = 0
        self.packets = 0
        self.octets = 0
        self.heard_at = time.monotonic()  # answered, then the arrival of its latest packet
        self._closed = False
        self._tapped: set[int] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self.pc.on("connectionstatechange", self._on_state)

    async def start(self, offer: str) -> str:
        """Answer the publisher's offer; media flows once ICE/DTLS connect.

        The offer is checked first, so every refusal is one of our fixed messages (aiortc's
        own errors name its internals, or nothing at all)."""
        _check_offer(parse_sdp(offer), self.specs)
        for kind in _offered_kinds(offer):
            if kind in self.specs:
                transceiver = self.pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(_preferences(kind, self.specs[kind], offer))
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except OperationError:  # aiortc found no codec in common on some m-line
            raise CodecMismatchError(
                f"publisher offer lacks this class's codecs "
                f"({', '.join(s.describe() for s in self.specs.values())})"
            ) from None
        except Exception as exc:
            logger.debug("publisher offer refused by aiortc", exc_info=True)
            raise SdpError("publisher offer cannot be applied to a WebRTC connection") from exc
        if any(t.receiver.transport is None for t in self.pc.getTransceivers()):
            raise SdpError("publisher offer has a media section that cannot be matched")
        self._tap_all()
        hooks.consent_from_media(self.pc)
        hooks.prefer_dtls_server(self.pc, offer)  # after BUNDLE settled the transports
        hooks.legacy_curve_dtls_client(self.pc)
        try:
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)  # gathers: the ICE sockets exist now
        except Exception as exc:
            logger.debug("publisher offer not answerable by aiortc", exc_info=True)
            raise SdpError("publisher offer cannot be answered") from exc
        hooks.enlarge_receive_buffers(self.pc)
        return str(self.pc.localDescription.sdp)

    async def pull(self, signal: Callable[[str], Awaitable[str]]) -> None:
        """Be the offerer instead (a relay link: an edge pulling a lecture from an origin).

        `signal(offer)` delivers our recvonly offer to the source (e.g. the origin's WHEP
        `Lecture.subscribe`) and returns its answer.
        """
        for kind, spec in self.specs.items():
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(_preferences(kind, spec, spec.fmtp))
        self._tap_all()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        hooks.enlarge_receive_buffers(self.pc)  # a relay link carries every hall's packets
        answer = await signal(self.pc.localDescription.sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:
            raise SdpError(f"relay source answer is not usable: {exc}") from exc

    def _tap_all(self) -> None:
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            kind = transceiver.kind
            if id(receiver) in self._tapped or kind not in self.specs:
                continue
            self._tapped.add(id(receiver))
            self.receivers.setdefault(kind, receiver)
            hooks.hook_receiver(receiver, *self._sinks(kind, receiver))

    def _sinks(
        self, kind: str, receiver: RTCRtpReceiver
    ) -> tuple[Callable[[RtpPacket], None], Callable[[RtcpSrPacket], None]]:
        def on_packet(packet: RtpPacket) -> None:
            self._packet(kind, receiver, packet)

        def on_report(report: RtcpSrPacket) -> None:
            self.on_report(kind, report)

        return on_packet, on_report

    def _packet(self, kind: str, receiver: RTCRtpReceiver, packet: RtpPacket) -> None:
        if self._closed:
            return
        if self.ssrcs.get(kind) != packet.ssrc:
            self.ssrcs[kind] = packet.ssrc
            self.receivers[kind] = receiver
        self.packets += 1
        self.octets += len(packet.payload)
        self.heard_at = time.monotonic()
        self.on_packet(kind, packet)

    @property
    def closed(self) -> bool:
        """True once closed (by us, or because its connection failed)."""
        return self._closed

    def request_keyframe(self) -> None:
        """Send a PLI for the current video source (no-op before video arrives)."""
        receiver = self.receivers.get("video")
        ssrc = self.ssrcs.get("video")
        if receiver is None or ssrc is None or self._closed:
            return
        self.keyframe_requests += 1
        self._spawn(hooks.send_pli(receiver, ssrc))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._spawn(self.close())

    async def close(self) -> None:
        """Stop the peer connection (idempotent); calls on_close(publisher) once."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.pc.close()
        except MediaError:
            raise
        except Exception:  # a half-negotiated peer may fail to stop cleanly; it is gone anyway
            logger.debug("publisher close error", exc_info=True)
        if self.on_gone is not None:
            self.on_gone(self)
        if self.on_close is not None:
            self.on_close(self)
