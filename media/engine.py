"""MediaEngine: the process's media side — one UDP socket, many lectures."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .endpoint import MediaSocket
from .errors import CodecMismatchError, MediaError
from .lecture import MEDIA_SILENCE, Lecture
from .sdp import video_codec as codec_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaConfig:
    """Where the one UDP socket binds, which addresses its candidates announce, and how long
    a viewer may stay unheard before its media counts as stopped (`Viewer.on_flow`).

    `tcp`: also listen for ICE-TCP on the same port number (halls whose firewall drops UDP).
    `udp_candidates`: False announces only TCP candidates (tests that stand for such a hall).
    `relay_hosts`: the addresses TURN servers relay from, so a viewer's path reads "turn".
    """

    host: str = "0.0.0.0"
    port: int = 0
    announce: tuple[str, ...] | list[str] = field(default_factory=tuple)
    media_silence_s: float = MEDIA_SILENCE
    tcp: bool = True
    udp_candidates: bool = True
    relay_hosts: tuple[str, ...] = ()


class MediaEngine:
    """Owns the MediaSocket and the lectures of this process."""

    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self.socket = MediaSocket(
            config.host,
            config.port,
            tuple(config.announce),
            tcp=config.tcp,
            udp_candidates=config.udp_candidates,
            relay_hosts=config.relay_hosts,
        )
        self.lectures: dict[str, Lecture] = {}
        self.started = False

    async def start(self) -> None:
        """Bind the UDP socket."""
        await self.socket.start()
        self.started = True

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return self.socket.port

    def lecture(self, lecture_id: str, video_codec: str = "VP8") -> Lecture:
        """The lecture with this id, created on first use with its fixed video codec."""
        if not self.started:
            raise MediaError("MediaEngine.start() was not awaited")
        spec = codec_spec(video_codec)
        lecture = self.lectures.get(lecture_id)
        if lecture is not None:
            if lecture.specs["video"].name != spec.name:
                raise CodecMismatchError(
                    f"lecture {lecture_id} uses {lecture.specs['video'].name}, not {spec.name}"
                )
            return lecture
        lecture = Lecture(lecture_id, spec, self.socket, self.config.media_silence_s)
        lecture.on_closed = self._forget
        self.lectures[lecture_id] = lecture
        return lecture

    def _forget(self, lecture: Lecture) -> None:
        if self.lectures.get(lecture.id) is lecture:
            del self.lectures[lecture.id]

    async def close(self) -> None:
        """Close every lecture, then the socket."""
        for lecture in list(self.lectures.values()):
            await lecture.close()
        if self.started:
            await self.socket.close()
            self.started = False
