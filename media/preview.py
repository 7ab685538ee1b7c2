"""A presenter's preview: their own picture and sound, on air or not (the director's monitor).

Every packet of a presenter's source is also handed to their `Preview` while someone watches
it; it has its own outgoing streams (`TrackForwarder`s: own SSRCs, munger, keyframe cache), so
a preview viewer is an ordinary `media.lecture.Viewer` of it. Nothing is decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc.rtp import RtpPacket

from .forwarder import TrackForwarder
from .sdp import OPUS, CodecSpec


class Preview:
    """One presenter's own streams towards whoever previews them."""

    def __init__(
        self,
        lecture_id: str,
        presenter: str,
        video: CodecSpec,
        socket: Any,
        request_keyframe: Callable[[], None],
    ) -> None:
        self.id = f"{lecture_id}/preview/{presenter}"
        self.presenter = presenter
        self.viewers: set[Any] = set()  # media.lecture.Viewer
        self.tracks = {
            "audio": TrackForwarder("audio", OPUS.name, OPUS.clock_rate, socket.fanout()),
            "video": TrackForwarder(
                "video", video.name, video.clock_rate, socket.fanout(), request_keyframe
            ),
        }

    def on_air_presenter(self) -> str | None:
        """A preview is nobody's return feed (`Viewer.hears_programme`)."""
        return None

    def feed(self, kind: str, packet: RtpPacket) -> None:
        """One packet of the presenter's source (forwarded only while someone watches)."""
        if self.viewers:
            self.tracks[kind].on_packet(packet)

    async def close(self) -> None:
        """Close every preview viewer and the streams."""
        for viewer in list(self.viewers):
            await viewer.close()
        for track in self.tracks.values():
            track.close()
