"""The recorder: a lecture's forwarded packets muxed to disk in segments, no codec on the path.

The forwarding path only puts a tuple on a queue (`Recorder.rtp`, `Recorder.sender_report`);
a writer thread depacketizes (media.depacketize) and muxes with PyAV: VP8 + Opus into WebM,
H264 + Opus into Matroska segments joined into an MP4. A segment is a whole file of about
`segment_s` seconds, written as `seg-NNNNNN.<ext>.part` and renamed when closed, then listed
in `recording.json`: a kill -9 loses at most the open segment. Segments are cut on time, not
at keyframes (asking the lecturer's encoder for one every few seconds costs every hall
picture quality), so a segment plays in the chain of those before it: joined, or in order.

One timeline: every frame is placed at its sender's wall-clock time (the NTP <-> RTP mapping
of the source's sender reports, the one viewers get for lip sync), so audio and video stay in
sync, and a reconnect or a camera <-> screen switch (a new source) leaves a gap, not a jump.
A new source is held HOLD_S while its sender reports come in, and placed by the earliest
of them (the least delayed by a busy sender); without one its arrival times stand in. A source whose clock is off from the first one's by more than SKEW_S (another
presenter's computer) is moved onto the first one's clock.

Timestamps in segments count from the recording's start, so joining them (`join_segments`)
is a plain remux.
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import io
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

from . import rtp
from .depacketize import Frame as CodedFrame
from .depacketize import FrameAssembler, annexb_to_avcc, h264_is_keyframe, vp8_size
from .errors import RecordingRefusedError
from .rtcp import ClockMapping

logger = logging.getLogger(__name__)

HOLD_S = 3.0  # how long a new source's frames wait for its sender reports
SKEW_S = 1.0  # a source whose clock differs more than this from the first one is re-based
WAKE_S = 0.05  # the writer thread wakes this often and takes everything queued
KEYFRAME_ASK_S = 1.0  # while frames are dropped, a keyframe is asked for this often
EARLY_AUDIO = 500  # audio frames (10 s) kept while the first picture is awaited
MANIFEST = "recording.json"
# (format, extension) of the segments and of the joined file. H264 segments are Matroska:
# a fragmented MP4 restarts every track's timestamps at 0, Matroska keeps the recording's
# clock, so segments join by a plain remux; the joined file is an MP4 browsers play.
CONTAINERS = {"VP8": ("webm", "webm"), "H264": ("matroska", "mkv")}
JOINED = {"VP8": ("webm", "webm"), "H264": ("mp4", "mp4")}
CLOCK = {"audio": 48000, "video": 90000}
_STOP = object()


@dataclasses.dataclass
class Segment:
    """One closed segment file: its name, first and last timestamp (s) and size."""

    file: str
    start: float
    end: float
    bytes: int


@dataclasses.dataclass
class Manifest:
    """What `recording.json` holds about one recording."""

    codec: str
    container: str
    started_at: float = 0.0  # Unix time of timestamp 0
    segments: list[Segment] = dataclasses.field(default_factory=list)
    state: str = "recording"  # recording | ended | stopped
    problem: str | None = None  # why it stopped: disk_full | disk_nearly_full | error
    file: str | None = None  # the joined file, once made
    duration: float = 0.0
    size: int = 0

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """The manifest in `folder` (OSError / ValueError when missing or damaged)."""
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        data["segments"] = [Segment(**s) for s in data.get("segments", [])]
        return cls(**data)

    def save(self, folder: Path) -> None:
        """Write atomically (a crash leaves the old or the new manifest, never half of one)."""
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)), encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)


def free_bytes(folder: Path) -> int:
    """Free space on the file system holding `folder`."""
    return shutil.disk_usage(folder).free


class Timeline:
    """One track's frames to seconds on the recording's clock (see the module docstring)."""

    def __init__(self, clock_rate: int, clock: SharedClock) -> None:
        self.clock_rate = clock_rate
        self.shared = clock
        self.mappings: dict[int, ClockMapping] = {}
        self.bases: dict[int, tuple[float, int]] = {}
        self.held: list[CodedFrame] = []

    def add_mapping(self, mapping: ClockMapping) -> None:
        """A sender report of a source. Until the source is placed, the earliest mapping
        wins: a report sent late (a busy sender) states a later time for the same timestamp."""
        if mapping.ssrc in self.bases:
            return
        best = self.mappings.get(mapping.ssrc)
        later = mapping.time - rtp.ts_diff(mapping.rtp, best.rtp) / self.clock_rate if best else 0
        if best is None or later < best.time:
            self.mappings[mapping.ssrc] = mapping

    def place(self, frame: CodedFrame | None, now: float) -> list[tuple[CodedFrame, float]]:
        """Frames now placed (in order) with their wall-clock time; others stay held."""
        if frame is not None:
            self.held.append(frame)
        out = []
        while self.held:
            first = self.held[0]
            base = self.bases.get(first.ssrc) or self._fix(first, now)
            if base is None:
                break
            self.held.pop(0)
            diff = rtp.ts_diff(first.timestamp, base[1])
            out.append((first, base[0] + diff / self.clock_rate))
        return out

    def _fix(self, frame: CodedFrame, now: float) -> tuple[float, int] | None:
        if now - frame.arrival < HOLD_S:
            return None
        mapping = self.mappings.get(frame.ssrc)
        if mapping is not None:
            base = (mapping.time, mapping.rtp)
        else:
            base = (frame.arrival, frame.timestamp)
        diff = rtp.ts_diff(frame.timestamp, base[1]) / self.clock_rate
        shift = self.shared.shift(base[0] + diff - frame.arrival)
        self.bases[frame.ssrc] = base = (base[0] + shift, base[1])
        return base


class SharedClock:
    """The offset of the first source's clock from arrival, shared by every track."""

    def __init__(self) -> None:
        self.skew: float | None = None

    def shift(self, skew: float) -> float:
        """How far to move a new source whose clock is `skew` s from its arrival times."""
        if self.skew is None:
            self.skew = skew
            return 0.0
        return self.skew - skew if abs(skew - self.skew) > SKEW_S else 0.0


class Recorder:
    """Records one lecture into `folder`; `rtp` and `sender_report` are the forwarder's taps."""

    def __init__(
        self,
        folder: Path,
        video_codec: str,
        segment_s: float = 4.0,
        min_free_bytes: int = 0,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        if video_codec not in CONTAINERS:
            raise RecordingRefusedError(f"no recording container for {video_codec}")
        self.folder = folder
        self.codec = video_codec
        self.segment_s = segment_s
        self.min_free_bytes = min_free_bytes
        self.on_stop = on_stop  # called from the writer thread with the problem
        self.on_keyframe: Callable[[], None] | None = None  # from the writer thread too
        self.active = False
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        fmt, ext = CONTAINERS[video_codec]
        self.manifest = Manifest(video_codec, JOINED[video_codec][1])
        self._writer = SegmentWriter(self, fmt, ext)
        self._thread: threading.Thread | None = None

    def resume(self, old: Manifest) -> None:
        """Go on with a recording a process left behind (kill -9, a restart): the same clock,
        its closed segments kept, the next ones numbered after them; its open one is lost."""
        for part in self.folder.glob("*.part"):
            part.unlink(missing_ok=True)
        self.manifest = dataclasses.replace(old, state="recording", problem=None, file=None)
        self.manifest.segments = list(old.segments)
        writer = self._writer
        writer.t0 = old.started_at if old.segments else None
        writer.segments = max((int(s.file[4:10]) for s in old.segments), default=0)
        writer.last = {"audio": old.duration, "video": old.duration}
        writer.latest = old.duration

    def start(self) -> None:
        """Create the folder and start the writer; RecordingRefusedError when the disk is
        nearly full (below `min_free_bytes`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        free = free_bytes(self.folder)
        if free < self.min_free_bytes:
            raise RecordingRefusedError(
                f"only {free // 2**20} MiB free for recordings "
                f"(at least {self.min_free_bytes // 2**20} MiB needed)"
            )
        self.manifest.save(self.folder)
        self.active = True
        self._thread = threading.Thread(target=self._run, name="lopso-recorder", daemon=True)
        self._thread.start()

    # -- the taps (event loop, per packet: one tuple on a queue) ----------------------------

    def rtp(self, kind: str, ssrc: int, marker: bool, seq: int, ts: int, payload: bytes) -> None:
        """A forwarded packet: `seq` on the track's outgoing sequence, `ts` the source's own."""
        if self.active:
            self.queue.put((kind, ssrc, marker, seq, ts, payload, time.time()))

    def sender_report(self, kind: str, mapping: ClockMapping) -> None:
        """A source's NTP <-> RTP mapping (the same the viewers' lip sync uses)."""
        if self.active:
            self.queue.put((kind, mapping))

    async def stop(self) -> Manifest:
        """Close the open segment and end the writer; the manifest as it ends."""
        import asyncio

        self.active = False
        self.queue.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        return self.manifest

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        writer = self._writer
        try:
            while self._drain(writer):
                time.sleep(WAKE_S)  # batches: no thread wake-up (GIL hand-off) per packet
            writer.finish()
            if self.manifest.state == "recording":
                self.manifest.state = "ended"
        except OSError as exc:
            self._fail("disk_full" if exc.errno == 28 else "error", exc)
        except Exception as exc:
            self._fail("error", exc)
        try:
            self.manifest.save(self.folder)
        except OSError as exc:  # the disk is still full: the closed segments stay listed
            logger.error("recording manifest not saved", extra={"error": str(exc)})

    def _drain(self, writer: SegmentWriter) -> bool:
        """Handle what the queue holds (a tick when empty); False once told to stop."""
        now = time.time()
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                writer.handle(None, now)
                return True
            if item is _STOP:
                return False
            writer.handle(item, now)

    def _fail(self, problem: str, exc: BaseException | None) -> None:
        logger.error("recording stopped", extra={"folder": str(self.folder), "error": str(exc)})
        self.stop_writing(problem)
        self._writer.abandon()

    def want_keyframe(self) -> None:
        """The writer lost video (a hole, or it is just starting): ask the publisher for a
        keyframe, as a viewer's PLI would (throttled by the forwarder)."""
        if self.on_keyframe is not None:
            try:
                self.on_keyframe()
            except RuntimeError:  # the event loop is closing: nobody to ask
                pass

    def stop_writing(self, problem: str) -> None:
        """Stop recording for good (the writer thread), telling `on_stop` why."""
        self.active = False
        self.manifest.state = "stopped"
        self.manifest.problem = problem
        if self.on_stop is not None:
            try:
                self.on_stop(problem)
            except Exception:
                logger.exception("recording stop callback failed")


class SegmentWriter:
    """The writer thread's state: depacketizers, timelines and the open segment."""

    def __init__(self, recorder: Recorder, fmt: str, ext: str) -> None:
        self.recorder = recorder
        self.fmt, self.ext = fmt, ext
        shared = SharedClock()
        self.timelines = {k: Timeline(rate, shared) for k, rate in CLOCK.items()}
        self.assembler = FrameAssembler(recorder.codec)
        self.t0: float | None = None
        self.last: dict[str, float] = {}
        self.container: Any = None
        self.streams: dict[str, Any] = {}
        self.segment: tuple[Path, float] | None = None  # (part file, first timestamp)
        self.latest = 0.0
        self.video_params: Any = None  # VP8 (w, h) or an H264 template stream
        self.early: collections.deque[tuple[CodedFrame, float]] = collections.deque(
            maxlen=EARLY_AUDIO
        )
        self.segments = 0
        self.asked = 0.0

    def handle(self, item: Any, now: float) -> None:
        """One queue item (a packet, a sender report or None for a tick)."""
        placed: list[tuple[str, tuple[CodedFrame, float]]] = []
        if item is not None and len(item) == 2:
            self.timelines[item[0]].add_mapping(item[1])
        elif item is not None:
            kind, ssrc, marker, seq, ts, payload, arrival = item
            if kind == "video":
                frames = self.assembler.push(ssrc, marker, seq, ts, payload, arrival)
                if self.assembler.broken and now - self.asked > KEYFRAME_ASK_S:
                    self.asked = now  # a hole: frames are dropped until the next keyframe
                    self.recorder.want_keyframe()
            else:
                frames = [CodedFrame(ssrc, ts, payload, True, arrival)]
            for frame in frames:
                placed += [(kind, p) for p in self.timelines[kind].place(frame, now)]
        for kind, timeline in self.timelines.items():
            if timeline.held:
                placed += [(kind, p) for p in timeline.place(None, now)]
        for kind, (frame, at) in placed:
            self.write(kind, frame, at)

    def write(self, kind: str, frame: CodedFrame, at: float) -> None:
        """Mux one placed frame, opening or rolling the segment at a keyframe."""
        if kind == "video" and frame.keyframe:
            self._keyframe(frame)
        if self.video_params is None:  # recording starts with the first picture; the sound
            if kind == "audio":  # placed before it may belong after it (placing is per track)
                self.early.append((frame, at))
            return
        if self.early and kind == "video":
            early, self.early = self.early, collections.deque(maxlen=EARLY_AUDIO)
            self._mux("video", frame, at)
            for audio, when in early:
                if when >= at:
                    self._mux("audio", audio, when)
            return
        self._mux(kind, frame, at)

    def _mux(self, kind: str, frame: CodedFrame, at: float) -> None:
        if self.t0 is None:
            self.t0 = at
            self.recorder.manifest.started_at = at
        seconds = max(at - self.t0, self.last.get(kind, -1.0) + 0.001, 0.0)
        self.last[kind] = seconds
        if self._due(seconds):
            self._roll(seconds)
        if self.container is None:
            return
        stream = self.streams[kind]
        data = frame.data
        if kind == "video" and self.recorder.codec == "H264":
            data = annexb_to_avcc(data)  # the stream's parameters are an avcC
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = stream.time_base
        packet.pts = packet.dts = round(seconds / stream.time_base)
        packet.is_keyframe = frame.keyframe
        self.container.mux(packet)
        self.latest = max(self.latest, seconds)

    def _keyframe(self, frame: CodedFrame) -> None:
        if self.recorder.codec == "VP8":
            size = vp8_size(frame.data)
            if size is not None and self.video_params is None:
                self.video_params = size
        elif self.video_params is None and h264_is_keyframe(frame.data):
            self.video_params = h264_template(frame.data)

    def _due(self, seconds: float) -> bool:
        if self.container is None or self.segment is None:
            return True
        return seconds - self.segment[1] >= self.recorder.segment_s

    def _roll(self, seconds: float) -> None:
        self._close_segment()
        recorder = self.recorder
        if recorder.min_free_bytes and free_bytes(recorder.folder) < recorder.min_free_bytes // 4:
            recorder.stop_writing("disk_nearly_full")
            return
        self.segments += 1
        part = recorder.folder / f"seg-{self.segments:06d}.{self.ext}.part"
        self.container = av.open(str(part), "w", format=self.fmt)
        self.streams = open_streams(self.container, recorder.codec, self.video_params)
        self.segment = (part, seconds)

    def _close_segment(self) -> None:
        if self.container is None or self.segment is None:
            return
        self.container.close()
        self.container = None
        part, start = self.segment
        final = part.with_suffix("")  # drops ".part"
        os.replace(part, final)
        manifest = self.recorder.manifest
        manifest.segments.append(Segment(final.name, start, self.latest, final.stat().st_size))
        manifest.duration = self.latest
        manifest.size = sum(s.bytes for s in manifest.segments)
        manifest.save(self.recorder.folder)
        self.segment = None

    def finish(self) -> None:
        """Write what is still held and close the open segment (the end of the class)."""
        for kind, timeline in self.timelines.items():
            for frame, at in timeline.place(None, float("inf")):
                self.write(kind, frame, at)
        self._close_segment()

    def abandon(self) -> None:
        """After a write error: drop the open segment (the disk may be full)."""
        container, self.container = self.container, None
        if container is not None:
            try:
                container.close()
            except Exception:
                pass
        if self.segment is not None:
            self.segment[0].unlink(missing_ok=True)
            self.segment = None


def open_streams(container: Any, codec: str, video: Any) -> dict[str, Any]:
    """The video and Opus streams of a new segment (no codec opened: packets are muxed)."""
    if codec == "VP8":
        width, height = video
        vstream = container.add_mux_stream("vp8", width=width, height=height)
        vstream.time_base = fractions.Fraction(1, 1000)
    else:
        vstream = container.add_stream_from_template(video[1])
        vstream.time_base = fractions.Fraction(1, 90000)
    astream = container.add_stream_from_template(opus_template())
    astream.time_base = fractions.Fraction(1, 1000 if codec == "VP8" else 48000)
    return {"video": vstream, "audio": astream}


_TEMPLATES: dict[str, Any] = {}
_TEMPLATE_LOCK = threading.Lock()


def opus_template() -> Any:
    """A stream whose parameters (the OpusHead) describe WebRTC's 48 kHz stereo Opus.

    Made once per process by opening a libopus encoder on one frame of silence: the muxer
    needs the header, browsers refuse Opus in WebM without it, and a stream's parameters can
    only be copied from another stream."""
    with _TEMPLATE_LOCK:
        if "opus" not in _TEMPLATES:
            buffer = io.BytesIO()
            with av.open(buffer, "w", format="matroska") as out:
                stream = out.add_stream("libopus", rate=48000, layout="stereo")
                frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
                for plane in frame.planes:
                    plane.update(bytes(plane.buffer_size))
                frame.sample_rate = 48000
                for packet in stream.encode(frame):
                    out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            buffer.seek(0)
            source = av.open(buffer)
            _TEMPLATES["opus"] = (source, source.streams.audio[0])
        return _TEMPLATES["opus"][1]


def h264_template(keyframe: bytes) -> tuple[Any, Any]:
    """A stream carrying the SPS/PPS of an H264 keyframe (Annex-B) as its parameters, made
    by muxing that one frame into memory (Matroska builds the avcC) and reading it back."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_mux_stream("h264", width=16, height=16)
        stream.time_base = fractions.Fraction(1, 1000)
        packet = av.Packet(keyframe)
        packet.stream = stream
        packet.pts = packet.dts = 0
        packet.time_base = stream.time_base
        packet.is_keyframe = True
        out.mux(packet)
    buffer.seek(0)
    source = av.open(buffer)
    return source, source.streams.video[0]  # the container must outlive the stream's use


def join_segments(folder: Path, manifest: Manifest | None = None) -> Path:
    """Join a recording's closed segments into one seekable file (a remux, no codec):
    `recording.webm` or `recording.mp4` next to them; the manifest names it."""
    manifest = manifest or Manifest.load(folder)
    if not manifest.segments:
        raise RecordingRefusedError("the recording has no closed segment")
    final = folder / f"recording.{manifest.container}"
    part = folder / f"recording.part-{os.getpid()}-{threading.get_ident()}.{manifest.container}"
    fmt = JOINED[manifest.codec][0]
    options = {"movflags": "faststart"} if fmt == "mp4" else {}
    with av.open(str(part), "w", format=fmt, options=options) as out:
        streams: dict[str, Any] = {}
        for segment in manifest.segments:
            with av.open(str(folder / segment.file)) as source:
                for stream in source.streams:
                    if stream.type not in streams:
                        streams[stream.type] = out.add_stream_from_template(stream)
                for packet in source.demux():
                    if packet.dts is None or packet.stream.type not in streams:
                        continue
                    packet.stream = streams[packet.stream.type]
                    out.mux(packet)
    os.replace(part, final)  # atomic: nodes sharing the folder may join at once
    manifest.file = final.name
    manifest.size = final.stat().st_size
    manifest.save(folder)
    return final
