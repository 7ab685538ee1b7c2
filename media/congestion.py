"""When a viewer's link cannot carry the lecture's video: audio only, then try video again.

A site on a link slower than the lecture loses video packets at the bottleneck queue, and its
audio with them (they share the queue): measured with scripts/impair.py at 400 kbit/s for a
~600 kbit/s lecture, an aiortc viewer decoded 9 audio frames in 8 s. Forwarding has no codec
to transcode with and no lower layer without simulcast, so the useful fallback is audio only:
after `reports` consecutive receiver reports with video loss >= `loss`, the viewer's video
pauses (its last frame stays on screen) and is tried again after `retry` seconds, doubling up
to `retry_max` while the link keeps failing, reset after `clean` good reports in a row.

    gate = VideoGate()
    if gate.on_video_report(fraction_lost, now): pause video
    if gate.should_resume(now): join video again (it starts at a keyframe)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VideoGate:
    """Pause/resume decisions for one viewer's video, from its receiver reports."""

    loss: float = 0.2
    reports: int = 3
    retry: float = 8.0
    retry_max: float = 64.0
    grace: float = 2.0
    clean: int = 10
    paused: bool = False
    manual: bool = False
    pauses: int = 0
    _bad: int = 0
    _good: int = 0
    _resume_at: float = 0.0
    _grace_until: float = 0.0
    _next_retry: float = 0.0

    def __post_init__(self) -> None:
        self._next_retry = self.retry

    def started(self, now: float) -> None:
        """Video (re)started: reports in the next `grace` seconds cover the gap, ignore them."""
        self._grace_until = now + self.grace
        self._bad = self._good = 0

    def on_video_report(self, fraction_lost: float, now: float) -> bool:
        """One video receiver report; True when video must pause now."""
        if self.paused or now < self._grace_until:
            return False
        if fraction_lost < self.loss:
            self._bad, self._good = 0, self._good + 1
            if self._good >= self.clean:
                self._next_retry = self.retry
            return False
        self._bad, self._good = self._bad + 1, 0
        if self._bad < self.reports:
            return False
        self.paused = True
        self.pauses += 1
        self._resume_at = now + self._next_retry
        self._next_retry = min(self.retry_max, 2 * self._next_retry)
        return True

    def should_resume(self, now: float) -> bool:
        """True once when a paused (not manually audio-only) video is due for another try."""
        if not self.paused or self.manual or now < self._resume_at:
            return False
        self.paused = False
        self.started(now)
        return True

    @property
    def resume_in(self) -> float:
        """Seconds of backoff the next pause will wait."""
        return self._next_retry
