"""A lecture: presenters publishing, one of them on air, any number of viewers, no codec.

`Lecture.publish(offer, presenter=...)` answers a presenter's publisher (WHIP); while that
presenter already has one live it is refused (PublisherBusyError) unless it takes over, and
then the old one keeps forwarding until the new one's first keyframe has gone out, so
viewers see no gap. Every presenter's publisher is a source of the lecture; only the one on
air (`programme`) is forwarded, the others are on standby. `Lecture.cue(presenter)` cuts to
another: a keyframe is asked of it (again until it comes), the on-air one keeps going until
that keyframe is forwarded, and the tracks' mungers carry sequence numbers and timestamps
on, so viewers see a cut, never a renegotiation. `Lecture.subscribe(offer)` answers a viewer
(WHEP) on the process's one UDP socket, before or after the lecture is live; a presenter's
return feed is a viewer that does not hear its own presenter's voice while they are on air.
Each track (audio, video) is a `TrackForwarder`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc.rtp import RtcpSrPacket, RtpPacket

from .congestion import VideoGate
from .errors import LectureClosedError, PresenterOfflineError, PublisherBusyError
from .forwarder import TrackForwarder, ViewerTrack
from .ingest import Publisher
from .preview import Preview
from .rtcp import ClockMapping, Feedback, RtcpError, parse_feedback, rtt_seconds
from .sdp import OPUS, CodecSpec, LocalTransport, MediaLine, build_answer, parse_viewer_offer

logger = logging.getLogger(__name__)

SENDER_REPORT_INTERVAL = 1.0
DEFAULT_PRESENTER = "p1"
CUE_KEYFRAME_INTERVAL = 0.2  # a cue asks the new source for a keyframe this often ...
CUE_KEYFRAME_TRIES = 15  # ... until it is on air (a lost PLI, an encoder that ignores one)
SILENCE_TIMEOUT = 3.0  # seconds without publisher packets before the lecture counts as off air
RTCP_SILENCE = 3.0
"""Seconds without RTCP from a viewer (while live) before its video pauses: its link is
down, so sending video is wasted egress, and when the link returns the viewer must restart at
a keyframe (a decoder fed inter frames after a gap shows corruption; aiortc's does)."""
MEDIA_SILENCE = 10.0
"""Default seconds with neither RTCP nor a consent check from a connected viewer before its
media counts as stopped (`Viewer.on_flow`): browsers refresh consent every ~5 s (RFC 7675)
and send RTCP every second or so, so two missed consent checks mean the link is gone."""


@dataclass(frozen=True)
class FlowChange:
    """A viewer's media started or stopped flowing, as this server sees it."""

    flowing: bool
    ago_s: float  # how long before the call it happened (a stop: when the viewer was last heard)
    reason: str  # "connected" | "resumed" | "silence" | "closed"
    path: str | None = None  # how the viewer reaches us: "udp" | "tcp" | "turn"


@dataclass
class ViewerStats:
    """What a viewer's RTCP and our counters say about its stream."""

    packets_sent: int
    bytes_sent: int
    loss_fraction: float
    cumulative_lost: int
    jitter_ms: float
    rtt_ms: float | None
    nacks: int
    plis: int
    retransmits: int
    state: str
    video_paused: bool = False
    video_pauses: int = 0
    path: str | None = None  # "udp" | "tcp" (ICE-TCP) | "turn" (through a TURN relay)


@dataclass
class LectureStats:
    """The publisher side of a lecture."""

    live: bool
    viewers: int
    packets_in: int
    bytes_in: int
    in_packets_per_s: float
    keyframe_requests: int
    publishers: int


class Viewer:
    """One viewer's endpoint and its membership of the lecture's tracks.

    A relay viewer (`relay=True`: an edge pulling the lecture for every site behind it) has no
    VideoGate: neither loss nor RTCP silence nor an audio-only choice pauses its video, and its
    retransmissions are budgeted for a LAN link (media.forwarder.RELAY_RTX_*).
    """

    def __init__(
        self,
        lecture: Lecture | Preview,
        endpoint: Any,
        lines: list[MediaLine],
        relay: bool = False,
        presenter: str | None = None,
    ) -> None:
        self.lecture = lecture
        self.endpoint = endpoint
        self.relay = relay
        self.presenter = presenter
        """A presenter's return feed: their own voice is not sent back while on air."""
        member = ViewerTrack.relay if relay else ViewerTrack
        self.tracks = {
            line.kind: member(endpoint, line.payload_type, line.rtx_payload_type) for line in lines
        }
        self.on_close: Callable[[Viewer], None] | None = None
        self._kinds = {lecture.tracks[kind].ssrc: kind for kind in self.tracks}
        """Which of our tracks an SSRC in this viewer's RTCP is about (fixed per lecture)."""
        self.reports: dict[str, Any] = {}
        self.rtt: float | None = None
        self.closed = False
        self.gate: VideoGate | None = None if relay else VideoGate()
        self.silent = False
        self.last_rtcp: float | None = None
        self.flowing = False
        """Connected (ICE consent + DTLS) and heard from (RTCP or consent) lately."""
        self.on_flow: Callable[[FlowChange], None] | None = None
        endpoint.on_rtcp = self._on_rtcp
        endpoint.on_state_change = self._on_state
        # No task per viewer (a join storm makes thousands): the endpoint says when it is
        # connected, and the socket fails one that has not connected within its consent
        # timeout (30 s), which closes the viewer here.

    @property
    def path(self) -> str | None:
        """How this viewer reaches us now: "udp", "tcp" (ICE-TCP) or "turn" (a TURN relay)."""
        path: str | None = getattr(self.endpoint, "path", None)
        return path

    def _on_state(self, state: str) -> None:
        if state == "connected":
            self._joined()
        elif state in ("failed", "closed"):
            self._close()

    def _joined(self) -> None:
        if self.closed or self.last_rtcp is not None:
            return
        for kind, track in self.tracks.items():
            if kind == "video" and not self._paused():
                self.lecture.tracks[kind].join(track)
            elif kind == "audio" and self.hears_programme():
                self.lecture.tracks[kind].join(track)
        self.last_rtcp = time.monotonic()
        if self.gate is not None:
            self.gate.started(self.last_rtcp)
        self._flow(True, 0.0, "connected")

    def _paused(self) -> bool:
        return self.gate is not None and self.gate.paused

    def hears_programme(self) -> bool:
        """False for a presenter's return feed while that presenter is on air (no echo)."""
        return self.presenter is None or self.presenter != self.lecture.on_air_presenter()

    def refresh_return(self) -> None:
        """After a cut: a return feed's audio stops while its own presenter is on air."""
        audio = self.tracks.get("audio")
        if audio is None or self.closed or self.last_rtcp is None:
            return
        if self.hears_programme():
            self.lecture.tracks["audio"].join(audio)
        else:
            self.lecture.tracks["audio"].pause(audio)

    def _on_rtcp(self, data: bytes) -> None:
        if self.last_rtcp is not None:
            self.last_rtcp = time.monotonic()
            if self.silent and self.gate is not None:
                self.silent = False
                if not self.gate.paused:
                    self.gate.started(self.last_rtcp)
                    self._resume_video()
        try:
            feedback = parse_feedback(data)
        except RtcpError as exc:
            logger.debug("bad viewer RTCP", extra={"error": str(exc)})
            return
        self._apply(feedback)

    def _apply(self, feedback: Feedback) -> None:
        by_ssrc = self._kinds
        clock = time.monotonic()
        gate = self.gate
        rtt = None
        for report in feedback.reports:
            kind = by_ssrc.get(report.ssrc)
            if kind is not None:
                self.reports[kind] = report
                if (
                    kind == "video"
                    and gate is not None
                    and gate.on_video_report(report.fraction_lost, clock)
                ):
                    self._pause_video("sustained loss")
                measured = rtt_seconds(report.lsr, report.dlsr, time.time()) if report.lsr else None
                if measured is not None:
                    rtt = measured
        if rtt is not None:
            self.rtt = rtt
            for track in self.tracks.values():
                track.set_rtt(rtt)
        for ssrc, seqs in feedback.nacks.items():
            kind = by_ssrc.get(ssrc)
            if kind is not None:
                self.lecture.tracks[kind].on_nack(self.tracks[kind], seqs)
        video = self.tracks.get("video")
        if feedback.keyframes and video is not None:
            self.lecture.tracks["video"].on_keyframe_request(video)
        if gate is not None and gate.should_resume(clock) and not self.silent:
            self._resume_video()

    def check_silence(self, now: float, live_since: float) -> None:
        """Pause video while the viewer sends no RTCP (its link is down); RTCP resumes it.

        Never a relay link's: a busy edge that is late with its RTCP still carries every site
        behind it (a dead relay link is closed by the socket's consent timeout instead)."""
        if self.gate is None or self.last_rtcp is None or self.silent or self.closed:
            return
        if now - max(self.last_rtcp, live_since) > RTCP_SILENCE:
            self.silent = True
            if not self.gate.paused:
                self._pause_video("no RTCP")

    def check_flow(self, now: float, silence: float) -> None:
        """Say (`on_flow`) when the viewer has not been heard for `silence` s, or is again."""
        if self.closed or self.last_rtcp is None:
            return
        quiet = max(0.0, now - self.endpoint.last_seen)
        if self.flowing and quiet > silence:
            self._flow(False, quiet, "silence")
        elif not self.flowing and quiet <= silence and self.endpoint.state == "connected":
            self._flow(True, quiet, "resumed")

    def _flow(self, flowing: bool, ago_s: float, reason: str) -> None:
        self.flowing = flowing
        if self.on_flow is None:
            return
        try:
            self.on_flow(FlowChange(flowing, ago_s, reason, self.path))
        except Exception:
            logger.exception("viewer flow callback failed", extra={"lecture": self.lecture.id})

    def _pause_video(self, why: str) -> None:
        video = self.tracks.get("video")
        if video is not None:
            logger.info("viewer video paused", extra={"lecture": self.lecture.id, "why": why})
            self.lecture.tracks["video"].pause(video)

    def _resume_video(self) -> None:
        video = self.tracks.get("video")
        if video is not None and not self.closed and self.endpoint.state == "connected":
            self.lecture.tracks["video"].join(video)  # starts at a keyframe

    def set_audio_only(self, audio_only: bool) -> None:
        """The site's own choice: no video at all (True) or video again (False).

        Ignored for a relay link: it carries video to sites that made their own choice."""
        if self.gate is None:
            logger.warning("audio-only ignored on a relay link", extra={"lecture": self.lecture.id})
            return
        self.gate.manual = audio_only
        if audio_only and not self.gate.paused:
            self.gate.paused = True
            self._pause_video("audio only chosen")
        elif not audio_only and self.gate.paused:
            self.gate.paused = False
            self.gate.started(time.monotonic())
            if not self.silent:
                self._resume_video()

    def stats(self) -> ViewerStats:
        """Counters and the latest RTCP receiver reports of this viewer."""
        counters = self.endpoint.stats()
        reports = list(self.reports.items())
        clock = {k: self.lecture.tracks[k].clock_rate for k in self.tracks}
        return ViewerStats(
            packets_sent=counters.get("packets_sent", 0),
            bytes_sent=counters.get("bytes_sent", 0),
            loss_fraction=max((r.fraction_lost for _, r in reports), default=0.0),
            cumulative_lost=sum(max(0, r.cumulative_lost) for _, r in reports),
            jitter_ms=max((1000.0 * r.jitter / clock[k] for k, r in reports), default=0.0),
            rtt_ms=None if self.rtt is None else 1000.0 * self.rtt,
            nacks=sum(t.nacks for t in self.tracks.values()),
            plis=sum(t.plis for t in self.tracks.values()),
            retransmits=sum(t.retransmits for t in self.tracks.values()),
            state=self.endpoint.state,
            video_paused=self._paused() or self.silent,
            video_pauses=0 if self.gate is None else self.gate.pauses,
            path=self.path,
        )

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.flowing:
            self._flow(False, max(0.0, time.monotonic() - self.endpoint.last_seen), "closed")
        for kind, track in self.tracks.items():
            self.lecture.tracks[kind].leave(track)
        self.endpoint.close()
        self.lecture.viewers.discard(self)
        if self.on_close is not None:
            self.on_close(self)

    async def close(self) -> None:
        """Leave the lecture and close the endpoint (idempotent); calls on_close(viewer) once."""
        self._close()


class Lecture:
    """One class's media: a fixed video codec, Opus audio, presenters' sources, viewers."""

    def __init__(
        self, lecture_id: str, video: CodecSpec, socket: Any, media_silence: float = MEDIA_SILENCE
    ) -> None:
        self.id = lecture_id
        self.media_silence = media_silence
        self.specs = {"audio": OPUS, "video": video}
        self.socket = socket
        self.tracks = {
            "audio": TrackForwarder("audio", OPUS.name, OPUS.clock_rate, socket.fanout()),
            "video": TrackForwarder(
                "video", video.name, video.clock_rate, socket.fanout(), self._request_keyframe
            ),
        }
        self.publisher: Publisher | None = None  # the source being forwarded (on air)
        self.pending: Publisher | None = None  # cut to; on air at its first keyframe
        self.sources: dict[str, Publisher] = {}  # each presenter's latest publisher
        self.previews: dict[str, Preview] = {}  # a presenter's own streams, while watched
        self.programme: str | None = None  # the presenter chosen to be on air
        self._presenter_of: dict[Publisher, str] = {}
        self.viewers: set[Viewer] = set()
        self.on_live: Callable[[bool], None] | None = None
        self.on_air_change: Callable[[str | None], None] | None = None
        """The presenter whose media goes to viewers changed (None: nobody's)."""
        self.on_sources: Callable[[], None] | None = None
        """A presenter's source came, went, or was cut to: `presenter_states()` changed."""
        self.on_closed: Callable[[Lecture], None] | None = None
        self.live = False
        self.closed = False
        self._aired: str | None = None
        self._last_packet = 0.0
        self._adopted_at = 0.0
        self._closing: set[asyncio.Future[None]] = set()
        self._cue_task: asyncio.Task[None] | None = None
        self._cued_at: float | None = None
        self.live_since = 0.0
        self.publishers = 0
        self.cuts = 0
        self.cut_waits: list[float] = []  # seconds from each cue to its keyframe on air (last 32)
        self._rate = (time.monotonic(), 0, 0.0)
        self._retired = (0, 0, 0)
        self._reporter = asyncio.ensure_future(self._report_loop())

    # -- publishing -------------------------------------------------------------------------

    async def publish(
        self, offer: str, takeover: bool = False, presenter: str = DEFAULT_PRESENTER
    ) -> tuple[str, Publisher]:
        """Answer a presenter's publisher. While that presenter has another one live this
        raises PublisherBusyError unless `takeover`: the new one then replaces it (on air:
        once its first keyframe is forwarded; the old one keeps going until then).

        The first presenter to publish goes on air; any other stays on standby until cut to
        (`cue`). The programme's presenter coming back goes on air again. Viewers keep going."""
        self._check_open()
        self._check_free(presenter, takeover)
        publisher = self._new_publisher()
        try:
            answer = await publisher.start(offer)
            self._check_open()
            self._check_free(presenter, takeover)  # another one may have come meanwhile
        except BaseException:
            await publisher.close()
            raise
        superseded = self.sources.get(presenter)
        self.sources[presenter] = publisher
        self._presenter_of[publisher] = presenter
        if self.programme is None:
            self.programme = presenter
        if presenter != self.programme:
            if superseded is not None and superseded is not self.pending:
                await superseded.close()  # an older standby device of the same presenter
        elif takeover and self.on_air():
            await self._hand_over(publisher)
        else:
            await self._adopt(publisher)
        self._sources_changed()
        return answer, publisher

    async def cue(self, presenter: str) -> None:
        """Cut to `presenter`: their standby source goes on air at its next keyframe (asked
        for now, and again until it comes); the one on air keeps going until then.

        Raises PresenterOfflineError when they have no live source."""
        self._check_open()
        source = self.sources.get(presenter)
        if source is None or source.closed or not self._heard(source):
            raise PresenterOfflineError(f"presenter {presenter} is not publishing")
        self.programme = presenter
        if source is self.publisher:
            if self.pending is not None and not self._superseded(self.pending):
                self.pending = None  # cut back before the other one's keyframe came
                self._sources_changed()
            return
        if source is self.pending:
            return
        self.cuts += 1
        self._cued_at = time.monotonic()
        for kind, track in self.tracks.items():
            track.readmit(source.ssrcs.get(kind))  # it may have been on air before
        if self.publisher is None or self.publisher.closed:
            await self._adopt(source)
        else:
            self.pending = source  # an earlier cut that never showed a picture is dropped
        self._chase_keyframe(source)
        self._sources_changed()

    def _chase_keyframe(self, source: Publisher) -> None:
        if self._cue_task is not None:
            self._cue_task.cancel()
        self._cue_task = asyncio.ensure_future(self._ask_keyframes(source))

    async def _ask_keyframes(self, source: Publisher) -> None:
        for _ in range(CUE_KEYFRAME_TRIES):
            source.request_keyframe()  # not throttled: a cut waits for nothing else
            await asyncio.sleep(CUE_KEYFRAME_INTERVAL)
            if source is not self.pending or source.closed:
                return

    def on_air_presenter(self) -> str | None:
        """The presenter whose media goes to viewers now (None: nobody's, or a relay)."""
        return self._aired

    def presenter_states(self) -> dict[str, str]:
        """Each publishing presenter's state: "on_air" or "standby" (absent: offline)."""
        states = {}
        for presenter, source in self.sources.items():
            if source.closed:
                continue
            on_air = source is self.publisher and self.live and presenter == self._aired
            states[presenter] = "on_air" if on_air else "standby"
        return states

    def on_air(self) -> bool:
        """Whether a publisher holds the lecture: not closed, and heard from (or answered)
        within the silence timeout. One that is gone or silent yields to a new publish."""
        publisher = self.publisher
        if publisher is None or publisher.closed:
            return False
        return time.monotonic() - max(self._last_packet, self._adopted_at) <= SILENCE_TIMEOUT

    @staticmethod
    def _heard(publisher: Publisher) -> bool:
        return time.monotonic() - publisher.heard_at <= SILENCE_TIMEOUT

    def _check_free(self, presenter: str, takeover: bool) -> None:
        source = self.sources.get(presenter)
        if takeover or source is None or source.closed:
            return
        live = self.on_air() if source is self.publisher else self._heard(source)
        if live:
            raise PublisherBusyError(
                f"presenter {presenter} of lecture {self.id} already has a live publisher; "
                "publish with takeover to replace it"
            )

    async def relay_from(self, signal: Callable[[str], Awaitable[str]]) -> Publisher:
        """Ingest from another LopSo node (an edge pulling from its origin, or a tree).

        `signal(offer)` sends our offer to the source lecture's subscribe (WHEP) and returns
        the answer; the link then replaces the live source like a publisher reconnect.
        """
        self._check_open()
        publisher = self._new_publisher()
        try:
            await publisher.pull(signal)
        except BaseException:
            await publisher.close()
            raise
        await self._adopt(publisher)
        return publisher

    def _new_publisher(self) -> Publisher:
        publisher = Publisher(
            self.specs,
            lambda kind, packet: self._on_packet(publisher, kind, packet),
            lambda kind, report: self._on_report(publisher, kind, report),
            self._on_publisher_closed,
        )
        return publisher

    def _superseded(self, publisher: Publisher | None) -> bool:
        """A publisher no presenter holds any more (replaced by a newer device, or a relay
        link): closed when it leaves the air. A presenter's source goes back to standby."""
        return publisher is not None and publisher not in self.sources.values()

    async def _adopt(self, publisher: Publisher) -> None:
        self._check_open()
        old, self.publisher = self.publisher, publisher
        stale, self.pending = self.pending, None
        self.publishers += 1
        self._adopted_at = time.monotonic()
        for kind, track in self.tracks.items():
            track.source_changed()
            track.readmit(publisher.ssrcs.get(kind))
        if self.live:
            self._air(self._presenter_of.get(publisher))
        for gone in (old, stale):
            if gone is not None and gone is not publisher and self._superseded(gone):
                await gone.close()

    async def _hand_over(self, publisher: Publisher) -> None:
        stale, self.pending = self.pending, publisher
        if stale is not None and self._superseded(stale):  # a takeover that never showed
            await stale.close()

    def _promote(self) -> None:
        """The pending source is on air: every track moves to it; the old one goes back to
        standby (a presenter's) or is closed (superseded)."""
        new, old = self.pending, self.publisher
        assert new is not None
        self.pending, self.publisher = None, new
        self.publishers += 1
        self._adopted_at = time.monotonic()
        for kind, track in self.tracks.items():
            if track.source != new.ssrcs.get(kind):
                track.source_gone()  # audio: the new one's starts with its next packet
        self._air(self._presenter_of.get(new))
        if self._cued_at is not None:
            waited = time.monotonic() - self._cued_at
            self._cued_at = None
            self.cut_waits = [*self.cut_waits[-31:], waited]
            logger.info(
                "cut on air", extra={"lecture": self.id, "keyframe_wait_ms": round(1000 * waited)}
            )
        if old is not None and not old.closed and self._superseded(old):
            closing = asyncio.ensure_future(old.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self._sources_changed()

    def _on_packet(self, publisher: Publisher, kind: str, packet: RtpPacket) -> None:
        if not packet.payload:
            return
        if self.previews:
            monitor = self.previews.get(self._presenter_of.get(publisher, ""))
            if monitor is not None:
                monitor.feed(kind, packet)
        if publisher is self.pending:
            # Its audio waits for its picture (unless it sends none), so both switch together.
            if kind == "video" or "video" not in publisher.receivers:
                self._forward(kind, packet)
                if self.tracks[kind].source == packet.ssrc:
                    self._promote()
        elif publisher is self.publisher:
            self._forward(kind, packet)

    def _forward(self, kind: str, packet: RtpPacket) -> None:
        self._last_packet = time.monotonic()
        if not self.live:
            self._set_live(True)
        self.tracks[kind].on_packet(packet)

    def _on_report(self, publisher: Publisher, kind: str, report: RtcpSrPacket) -> None:
        # Every source's mappings are kept (they are per SSRC): a cut finds its own ready.
        if publisher is self.publisher or publisher in self._presenter_of:
            track = self.tracks[kind]
            track.on_sender_report(ClockMapping.from_sr(report, track.clock_rate))

    def _on_publisher_closed(self, publisher: Publisher) -> None:
        p = self._retired
        self._retired = (
            p[0] + publisher.packets,
            p[1] + publisher.octets,
            p[2] + publisher.keyframe_requests,
        )
        presenter = self._presenter_of.pop(publisher, None)
        if presenter is not None and self.sources.get(presenter) is publisher:
            del self.sources[presenter]
        if publisher is self.pending:
            self.pending = None
        elif publisher is self.publisher and self.pending is not None:
            self._promote()  # gone before the new one showed a picture: the new one goes on
        elif publisher is self.publisher:
            self.publisher = None
            for track in self.tracks.values():
                track.source_changed()
            self._set_live(False)
        if presenter is not None:
            self._sources_changed()

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            self.live_since = time.monotonic()
            publisher = self.publisher
            self._air(self._presenter_of.get(publisher) if live and publisher else None)
            if self.on_live is not None:
                self.on_live(live)

    def _air(self, presenter: str | None) -> None:
        if presenter == self._aired:
            return
        self._aired = presenter
        for viewer in self.viewers:
            if viewer.presenter is not None:
                viewer.refresh_return()
        self._callback(self.on_air_change, presenter)
        self._sources_changed()

    def _sources_changed(self) -> None:
        self._callback(self.on_sources)

    def _callback(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("lecture callback failed", extra={"lecture": self.id})

    def _request_keyframe(self) -> None:
        for publisher in (self.publisher, self.pending):  # a cut starts at a keyframe
            if publisher is not None:
                publisher.request_keyframe()

    # -- recording (media.recorder) ---------------------------------------------------------

    def record(self, recorder: Any) -> None:
        """Give every forwarded packet and sender report to `recorder` (None: stop); its
        writer thread may ask for a keyframe like a viewer (`recorder.on_keyframe`)."""
        for track in self.tracks.values():
            track.recorder = recorder
        if recorder is not None:
            loop = asyncio.get_running_loop()
            video = self.tracks["video"]
            recorder.on_keyframe = lambda: loop.call_soon_threadsafe(video.request_keyframe)

    # -- viewing ----------------------------------------------------------------------------

    async def subscribe(
        self, offer: str, relay: bool = False, presenter: str | None = None
    ) -> tuple[str, Viewer]:
        """Answer a viewer's offer; media starts (at a keyframe) once it connects.

        `relay=True` for another LopSo node pulling the lecture (an edge, or an edge of a
        tree): its video is never paused by per-viewer congestion logic (see `Viewer`).
        `presenter`: the viewer is that presenter's return feed (see `Viewer.presenter`).
        """
        return self._answer(offer, self, relay, presenter)

    async def preview(self, offer: str, presenter: str) -> tuple[str, Viewer]:
        """Answer a viewer of one presenter's own picture and sound (on air or standby)."""
        monitor = self.previews.get(presenter)
        if monitor is None:
            monitor = self.previews[presenter] = Preview(
                self.id,
                presenter,
                self.specs["video"],
                self.socket,
                lambda: self._preview_keyframe(presenter),
            )
        return self._answer(offer, monitor, False, None)

    def _preview_keyframe(self, presenter: str) -> None:
        source = self.sources.get(presenter)
        if source is not None:
            source.request_keyframe()

    def _answer(
        self, offer: str, target: Lecture | Preview, relay: bool, presenter: str | None
    ) -> tuple[str, Viewer]:
        self._check_open()
        parsed = parse_viewer_offer(offer, self.specs)
        remote = parsed.remote
        endpoint = self.socket.endpoint(remote.ufrag, remote.pwd, remote.fingerprint, remote.setup)
        local = LocalTransport(
            endpoint.local_ufrag,
            endpoint.local_pwd,
            self.socket.fingerprint,
            endpoint.setup,
            self.socket.candidates(),
        )
        ssrcs = {k: (t.ssrc, t.rtx_ssrc) for k, t in target.tracks.items()}
        answer = build_answer(parsed, self.specs, local, ssrcs)
        lines = [line for line in parsed.lines if line is not None]
        viewer = Viewer(target, endpoint, lines, relay=relay, presenter=presenter)
        target.viewers.add(viewer)
        return answer, viewer

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(SENDER_REPORT_INTERVAL)
            self.send_sender_reports()
            for track in self.tracks.values():
                track.refresh_idle()
            now = time.monotonic()
            if self.live and now - self._last_packet > SILENCE_TIMEOUT:
                self._set_live(False)  # connected but silent (camera stopped, network gone)
            for viewer in list(self.viewers):
                viewer.check_flow(now, self.media_silence)
                if self.live:
                    viewer.check_silence(now, self.live_since)

    def send_sender_reports(self) -> None:
        """One SR per track to every joined viewer, batched by the track's fanout.

        The SR is the same bytes for every viewer: one outgoing stream per track (one SSRC,
        one munger timestamp offset, one packet/octet count), so it goes out like an RTP
        packet of that stream (one sendmmsg per 64 viewers, SRTCP per viewer). Nothing in it
        differs per viewer; the fanout's members are exactly the track's joined viewers.
        """
        now = time.time()
        for track in self.tracks.values():
            report = track.sender_report(now)
            if report is not None:
                track.fanout.send_rtcp(report)

    # -- the rest ---------------------------------------------------------------------------

    def stats(self) -> LectureStats:
        """Publisher-side counters: packets/bytes in, rate, keyframe requests sent upstream."""
        p = self.publisher
        packets = self._retired[0] + (p.packets if p else 0)
        octets = self._retired[1] + (p.octets if p else 0)
        requests = self._retired[2] + (p.keyframe_requests if p else 0)
        now = time.monotonic()
        then, count, rate = self._rate
        if now - then >= 0.5:
            rate = (packets - count) / (now - then)
            self._rate = (now, packets, rate)
        return LectureStats(
            self.live, len(self.viewers), packets, octets, rate, int(requests), self.publishers
        )

    def _check_open(self) -> None:
        if self.closed:
            raise LectureClosedError(f"lecture {self.id} is closed")

    async def close(self) -> None:
        """Close the publisher, every viewer and the forwarders (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._reporter.cancel()
        if self._cue_task is not None:
            self._cue_task.cancel()
        for viewer in list(self.viewers):
            await viewer.close()
        for monitor in self.previews.values():
            await monitor.close()
        for publisher in (self.pending, self.publisher, *self.sources.values()):
            if publisher is not None:
                await publisher.close()
        for track in self.tracks.values():
            track.close()
        if self.on_closed is not None:
            self.on_closed(self)
