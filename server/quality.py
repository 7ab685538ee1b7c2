"""Connection-quality classes of a viewing site, after Jitsi's connection indicator.

Pure rules: no I/O, imports neither aiohttp, aiortc nor redis.

The rule implemented (shared/REFERENCES.md, "Quality classes"), checked in this order:

1. ``lost``: no media for more than 3 s. A sample says so with ``no_media_s > 3``, or with a
   received bitrate of exactly 0 kbit/s (the browser sums getStats over a 5 s window, so zero
   bytes means no media for longer than 3 s).
   Callers should not classify while the lecture is not live (a waiting player receives no
   media by design: that is not ``lost``).
2. ``good``: received bitrate >= 50 % of the target bitrate, OR packet loss < 6 %.
3. ``non_optimal``: bitrate >= 30 % of target, OR loss < 8 %.
4. ``poor``: bitrate >= 10 % of target, OR loss < 12 %.
5. Anything worse than poor that still has media is ``poor`` too: Jitsi has no class between
   poor and lost, and ``lost`` means no media at all.

"OR" is literal, as in the reference: either criterion is enough to reach a class. That is
also what a lecture needs: static slides make the encoder send far below its target bitrate
with nothing wrong, and low loss then still reads as good. A criterion whose input is
missing (no bitrate, or no loss figure) is skipped; a sample with neither is ``None``
(unknown). ``require_both=True`` gives the stricter reading (both measured
criteria must hold) for callers who want it.

The target bitrate is the sample's ``target_kbps`` when given, otherwise VP8's target for the
layer the viewer receives (200 / 500 / 1,500 kbit/s at 180p / 360p / 720p) when the frame
height is known, otherwise ``DEFAULT_TARGET_KBPS`` (the 720p lecture).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_TARGET_KBPS = 1500.0
LOST_AFTER_S = 3.0

# (class, minimum share of the target bitrate, loss strictly below this %)
_THRESHOLDS: tuple[tuple[str, float, float], ...] = (
    ("good", 0.50, 6.0),
    ("non_optimal", 0.30, 8.0),
    ("poor", 0.10, 12.0),
)

# VP8 target bitrates by frame height (kbit/s), smallest layer first.
_VP8_TARGETS: tuple[tuple[int, float], ...] = ((180, 200.0), (360, 500.0), (720, 1500.0))


class QualityClass(str, enum.Enum):
    """A site's connection quality, best first."""

    GOOD = "good"
    NON_OPTIMAL = "non_optimal"
    POOR = "poor"
    LOST = "lost"


_VALUES = frozenset(q.value for q in QualityClass)

QUALITY_LABELS: Mapping[str, Mapping[QualityClass, str]] = {
    "vi": {
        QualityClass.GOOD: "Tốt",
        QualityClass.NON_OPTIMAL: "Chưa tốt",
        QualityClass.POOR: "Kém",
        QualityClass.LOST: "Mất tín hiệu",
    },
    "en": {
        QualityClass.GOOD: "Good",
        QualityClass.NON_OPTIMAL: "Non-optimal",
        QualityClass.POOR: "Poor",
        QualityClass.LOST: "Lost",
    },
}


class QualitySampleError(ValueError):
    """A quality sample field is present but not a finite, non-negative number."""


def quality_label(quality: QualityClass | str | None, lang: str = "vi") -> str:
    """Human label of a quality class in Vietnamese (``vi``) or English (``en``)."""
    if quality is None:
        return ""
    return QUALITY_LABELS.get(lang, QUALITY_LABELS["en"])[QualityClass(quality)]


def target_kbps_for_height(height: int | None) -> float:
    """VP8 target bitrate for a received frame height (the nearest layer at or above it)."""
    if not height or height <= 0:
        return DEFAULT_TARGET_KBPS
    for layer_height, kbps in _VP8_TARGETS:
        if height <= layer_height:
            return kbps
    return _VP8_TARGETS[-1][1]


def classify(
    kbps: float | None,
    loss_pct: float | None,
    *,
    target_kbps: float = DEFAULT_TARGET_KBPS,
    no_media_s: float | None = None,
    require_both: bool = False,
) -> QualityClass | None:
    """Quality class of one measurement (see the module docstring for the exact rule)."""
    if (no_media_s is not None and no_media_s > LOST_AFTER_S) or kbps == 0:
        return QualityClass.LOST
    ratio = kbps / target_kbps if kbps is not None and target_kbps > 0 else None
    if ratio is None and loss_pct is None:
        return None
    for name, min_ratio, max_loss in _THRESHOLDS:
        checks = []
        if ratio is not None:
            checks.append(ratio >= min_ratio)
        if loss_pct is not None:
            checks.append(loss_pct < max_loss)
        if all(checks) if require_both else any(checks):
            return QualityClass(name)
    return QualityClass.POOR


def classify_sample(
    sample: Mapping[str, Any], *, require_both: bool = False
) -> QualityClass | None:
    """Quality class of a QUALITY event's data (``kbps``, ``loss_pct``, optional
    ``target_kbps``, ``height``, ``no_media_s``). Raises QualitySampleError on bad numbers."""
    kbps = _number(sample, "kbps")
    loss = _number(sample, "loss_pct")
    target = _number(sample, "target_kbps")
    if target is None:
        height = _number(sample, "height")
        target = target_kbps_for_height(int(height) if height is not None else None)
    return classify(
        kbps,
        loss,
        target_kbps=target,
        no_media_s=_number(sample, "no_media_s"),
        require_both=require_both,
    )


def sample_class(sample: Mapping[str, Any]) -> QualityClass | None:
    """The class a QUALITY event carries (``data["class"]``) or, failing that, the one its
    figures give. Never raises: a malformed sample is unknown (None)."""
    given = sample.get("class")
    if given:
        try:
            return QualityClass(given)
        except ValueError:
            pass
    try:
        return classify_sample(sample)
    except QualitySampleError:
        return None


def seconds_per_class(
    samples: Iterable[Any], start: float, end: float, hold_s: float
) -> tuple[dict[str, float], str | None]:
    """Seconds spent in each class within [start, end], and the latest class.

    `samples` are time-sorted objects with ``at`` (epoch seconds) and ``data`` (a sample; its
    ``class`` when one was recorded, else it is classified here): each sample's class holds
    until the next sample, at most `hold_s`. Samples that cannot be classified are skipped."""
    seconds: dict[str, float] = {}
    w_start, w_end, hold = start, end, hold_s
    prev_at, prev = 0.0, None
    for event in samples:
        quality = event.data.get("class")
        if quality not in _VALUES:  # not given: classify the figures
            classified = sample_class(event.data)
            if classified is None:
                continue
            quality = classified.value
        at = event.at
        if prev is not None:  # the previous sample holds until this one, or for `hold`
            # (conditional expressions: this loop runs per sample, min()/max() cost 3x more)
            stop = prev_at + hold
            stop = at if at < stop else stop  # noqa: FURB136
            stop = w_end if w_end < stop else stop  # noqa: FURB136
            begin = prev_at if prev_at > w_start else w_start  # noqa: FURB136
            if stop > begin:
                seconds[prev] = seconds.get(prev, 0.0) + (stop - begin)
        prev_at, prev = at, quality
    if prev is not None:
        span = min(prev_at + hold, w_end) - max(prev_at, w_start)
        if span > 0:
            seconds[prev] = seconds.get(prev, 0.0) + span
    return seconds, prev


def _number(sample: Mapping[str, Any], key: str) -> float | None:
    """A finite non-negative float from the sample, None when absent."""
    value = sample.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QualitySampleError(f"quality field {key!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise QualitySampleError(f"quality field {key!r} must be finite and >= 0, got {value!r}")
    return float(value)
