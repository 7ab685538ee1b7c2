"""The recorder against real aiortc publishers: what a lecture forwards ends up in playable
segments, joined into one file that PyAV decodes, in sync with the source.

Video frames show their number (tests/mediaclip.py); the audio beeps once a second of its own
clock. Both tracks know when they started, so each decoded frame and each beep has a source
time: the recording's audio/video offset is measured against the source itself.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import statistics
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import AudioStreamTrack
from av import AudioFrame

from media.depacketize import FrameAssembler, h264_nals, vp8_size
from media.recorder import Recorder, join_segments
from tests.mediaclip import read_number
from tests.test_lecture import PublisherPeer, wait_for

FPS = 30
CLASS_S = float(os.environ.get("LOPSO_TEST_CLASS_S", "60"))  # shorter while developing
BEEP_S = 0.1


class BeepAudioTrack(AudioStreamTrack):
    """A quiet 440 Hz tone with a loud 1 kHz beep for BEEP_S at each whole second of the
    track's own clock (its first sample is at `started`)."""

    def __init__(self) -> None:
        super().__init__()
        self.sample = 0
        self.started: float | None = None

    async def recv(self) -> AudioFrame:
        frame = await super().recv()
        if self.started is None:
            self.started = self._start  # aiortc's wall-clock time of sample 0
        rate = frame.sample_rate
        t = (np.arange(frame.samples) + self.sample) / rate
        loud = (t % 1.0) < BEEP_S
        wave = np.where(
            loud, 14000 * np.sin(2 * math.pi * 1000 * t), 600 * np.sin(2 * math.pi * 440 * t)
        )
        self.sample += frame.samples
        data = np.repeat(wave.astype(np.int16)[None, :], 2, axis=0).T.reshape(1, -1)
        out = AudioFrame.from_ndarray(data, format="s16", layout="stereo")
        out.sample_rate = rate
        out.pts = frame.pts
        out.time_base = fractions.Fraction(1, rate)
        return out


class BeepingPublisher(PublisherPeer):
    """PublisherPeer whose audio is the beep track (the video: numbered frames)."""

    def __init__(self, offset: int = 0, codec: str | None = None) -> None:
        super().__init__(offset, codec=codec)
        self.beeps = BeepAudioTrack()
        audio = next(t for t in self.pc.getTransceivers() if t.kind == "audio")
        audio.sender.replaceTrack(self.beeps)


def decode(path: Path) -> tuple[list[tuple[float, int | None]], np.ndarray, float]:
    """(video (pts s, number) list, mono audio samples, audio start pts s) of a file."""
    video: list[tuple[float, int | None]] = []
    chunks: list[np.ndarray] = []
    audio_start: float | None = None
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0], container.streams.audio[0]):
            if isinstance(frame, av.VideoFrame):
                video.append((float(frame.time), read_number(frame)))
            else:
                if audio_start is None:
                    audio_start = float(frame.time)
                chunks.append(frame.to_ndarray().reshape(-1)[:: len(frame.layout.channels)])
    assert audio_start is not None, "no audio decoded"
    return video, np.concatenate(chunks).astype(np.float64), audio_start


def beep_onsets(samples: np.ndarray, start: float, rate: int = 48000) -> list[float]:
    """Times (s, file clock) where a beep starts: the envelope crossing half the beep level."""
    loud = np.abs(samples) > 0.2  # the beep peaks at 0.43 of full scale, the tone at 0.02
    onsets, last = [], -1.0
    for index in np.flatnonzero(loud):
        at = start + index / rate
        if at - last > 0.5:
            onsets.append(at)
        last = at
    return onsets


def av_offset(publisher: BeepingPublisher, video, samples, audio_start) -> float:
    """How much later the recording puts audio than video, against the source (s)."""
    assert publisher.video.started is not None and publisher.beeps.started is not None
    v = statistics.median(
        pts - (publisher.video.started + n / FPS) for pts, n in video if n is not None
    )
    onsets = beep_onsets(samples, audio_start)
    assert len(onsets) >= 3, onsets
    started = publisher.beeps.started
    a = statistics.median(at - (started + round(at - v - started)) for at in onsets)
    return a - v


@pytest.fixture(autouse=True)
def _started_at(monkeypatch):
    """NumberedVideoTrack gains `started` (its wall-clock start) like BeepAudioTrack."""
    from tests.mediaclip import NumberedVideoTrack

    original = NumberedVideoTrack.recv

    async def recv(self):
        frame = await original(self)
        if getattr(self, "started", None) is None:
            self.started = self._start
        return frame

    monkeypatch.setattr(NumberedVideoTrack, "recv", recv)


async def record_class(engine, folder: Path, seconds: float, codec: str = "VP8"):
    lecture = engine.lecture("rec-" + codec, video_codec=codec)
    recorder = Recorder(folder, codec, segment_s=4.0)
    recorder.start()
    lecture.record(recorder)
    publisher = BeepingPublisher(codec=codec)
    try:
        await publisher.publish(lecture)
        await wait_for(lambda: lecture.live, timeout=10)
        await asyncio.sleep(seconds)
        stats = lecture.stats()
        print(f"lecture: {stats}, recorder queue {recorder.queue.qsize()}")
        assert stats.live, "the publisher stopped sending"
    finally:
        await publisher.close()
    manifest = await recorder.stop()
    return publisher, manifest


@pytest.mark.timeout(180)
async def test_a_60_second_class_is_recorded_whole_and_in_sync(engine, tmp_path):
    publisher, manifest = await record_class(engine, tmp_path, CLASS_S)
    assert manifest.state == "ended"
    assert len(manifest.segments) >= manifest.duration / 4 - 1  # ~4 s each
    final = join_segments(tmp_path)
    video, samples, audio_start = decode(final)
    numbers = [n for _, n in video if n is not None]
    assert len(numbers) >= 0.98 * len(video)
    span = numbers[-1] - numbers[0] + 1  # frames the publisher sent while recorded
    assert abs(len(video) - span) <= 0.02 * span, (len(video), span)
    assert len(video) >= 0.98 * (video[-1][0] - video[0][0]) * FPS
    assert len(samples) / 48000 >= (video[-1][0] - video[0][0]) - 0.5  # audio all along
    offset = av_offset(publisher, video, samples, audio_start)
    print(f"A/V offset against the source: {1000 * offset:+.1f} ms")
    sent = publisher.video.count
    if sent < 0.8 * CLASS_S * FPS:  # its own clock mapping is then off by its lateness
        pytest.skip(f"the publisher made {sent} frames in {CLASS_S:g} s: too busy to time sync")
    assert abs(offset) <= 0.040


def test_vp8_size_and_h264_units():
    keyframe = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00])
    assert vp8_size(keyframe) == (320, 240)
    fu_start = bytes([0x7C, 0x85]) + b"idr"
    units, open_fu = h264_nals(fu_start, False)
    assert units == [b"\x00\x00\x00\x01\x65idr"] and open_fu


def test_a_hole_drops_frames_until_the_next_keyframe():
    assembler = FrameAssembler("VP8")
    key = bytes([0x10]) + bytes([0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00])
    inter = bytes([0x10, 0x01])
    now = time.time()
    assert len(assembler.push(1, True, 10, 100, key, now)) == 1
    assert assembler.push(1, False, 11, 200, inter, now) == []
    # seq 12 (the end of frame 200) never comes; frame 300 is whole but needs its reference
    assert assembler.push(1, True, 13, 300, inter, now + 1.0) == []
    assert assembler.push(1, True, 14, 400, key, now + 1.1)[0].keyframe
    assert assembler.dropped >= 2


@pytest.mark.timeout(240)
async def test_an_h264_class_from_ffmpeg_whip_is_recorded(engine, tmp_path):
    """FFmpeg's WHIP muxer (H264, the clip looped for CLASS_S) into an MP4 recording."""
    from tests.mediaclip import write_h264_clip
    from tests.serverproc import whip_route
    from tests.test_ffmpeg_whip import CACHE, run_ffmpeg

    lecture = engine.lecture("rec-ffmpeg", video_codec="H264")
    recorder = Recorder(tmp_path / "rec", "H264", segment_s=4.0)
    recorder.start()
    lecture.record(recorder)
    runner, url = await whip_route(lecture, token="secret-token")
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        clip = write_h264_clip(CACHE)
        code, output = await run_ffmpeg(
            url, str(clip), "secret-token", "--seconds", str(CLASS_S), timeout=CLASS_S + 60
        )
        assert code == 0, output[-2000:]
        sent = int(output.strip().splitlines()[-1])
    finally:
        await runner.cleanup()
    manifest = await recorder.stop()
    assert manifest.state == "ended" and manifest.container == "mp4"
    final = join_segments(tmp_path / "rec")
    with av.open(str(final)) as container:
        frames = [
            (float(f.time), read_number(f)) for f in container.decode(container.streams.video[0])
        ]
    numbers = [n for _, n in frames if n is not None]
    assert len(numbers) >= 0.98 * len(frames)
    span = frames[-1][0] - frames[0][0]
    assert abs(len(frames) - span * FPS) <= 0.02 * span * FPS + 2, (len(frames), span)
    assert len(frames) >= 0.95 * sent - 3 * FPS  # all but the start (hold, first keyframe)
