"""Quality classes after Jitsi's connection indicator (server/quality.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.quality import (
    DEFAULT_TARGET_KBPS,
    QualityClass,
    QualitySampleError,
    classify,
    classify_sample,
    quality_label,
    sample_class,
    seconds_per_class,
    target_kbps_for_height,
)

G, N, P, L = (QualityClass.GOOD, QualityClass.NON_OPTIMAL, QualityClass.POOR, QualityClass.LOST)


@pytest.mark.parametrize(
    ("kbps", "loss", "no_media_s", "expected"),
    [
        # bitrate alone (target 1500): 50 % / 30 % / 10 % boundaries are inclusive
        (1500, None, None, G),
        (750, None, None, G),
        (749, None, None, N),
        (450, None, None, N),
        (449, None, None, P),
        (150, None, None, P),
        (149, None, None, P),  # worse than poor but media flows: still poor
        # loss alone: 6 / 8 / 12 % boundaries are exclusive
        (None, 0.0, None, G),
        (None, 5.99, None, G),
        (None, 6.0, None, N),
        (None, 7.99, None, N),
        (None, 8.0, None, P),
        (None, 11.99, None, P),
        (None, 30.0, None, P),
        # either criterion is enough (literal "or")
        (100, 2.0, None, G),
        (1400, 20.0, None, G),
        (500, 7.0, None, N),
        (200, 9.0, None, P),
        # lost: no media for more than 3 s, or a zero bitrate
        (1500, 0.0, 3.5, L),
        (1500, 0.0, 3.0, G),
        (0, 0.0, None, L),
        (None, None, None, None),
    ],
)
def test_classify_table(kbps, loss, no_media_s, expected):
    assert classify(kbps, loss, no_media_s=no_media_s) == expected


@pytest.mark.parametrize(
    ("kbps", "loss", "expected"),
    [(1400, 20.0, P), (100, 2.0, P), (800, 7.0, N), (800, 2.0, G), (500, 2.0, N)],
)
def test_require_both_takes_the_worse(kbps, loss, expected):
    assert classify(kbps, loss, require_both=True) == expected


@pytest.mark.parametrize(
    ("height", "target"),
    [
        (None, DEFAULT_TARGET_KBPS),
        (0, DEFAULT_TARGET_KBPS),
        (180, 200),
        (170, 200),
        (360, 500),
        (480, 1500),
        (720, 1500),
        (1080, 1500),
    ],
)
def test_vp8_targets_by_height(height, target):
    assert target_kbps_for_height(height) == target


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"kbps": 120, "loss_pct": 9.0, "height": 180}, G),  # 60 % of the 180p target
        ({"kbps": 120, "loss_pct": 9.0}, P),  # 8 % of the 720p target
        ({"kbps": 120, "loss_pct": 9.0, "target_kbps": 150}, G),
        ({"kbps": 900, "rtt_ms": 250}, G),
        ({"rtt_ms": 250}, None),
        ({"kbps": 0}, L),
        ({"kbps": 900, "no_media_s": 4}, L),
    ],
)
def test_classify_sample(sample, expected):
    assert classify_sample(sample) == expected


@pytest.mark.parametrize(
    "sample",
    [{"kbps": "900"}, {"loss_pct": -1}, {"kbps": math.nan}, {"kbps": True}, {"kbps": math.inf}],
)
def test_classify_sample_rejects_bad_numbers(sample):
    with pytest.raises(QualitySampleError, match="quality field"):
        classify_sample(sample)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"class": "poor", "kbps": 1500}, P),  # a class given by the producer wins
        ({"class": "bogus", "kbps": 1500}, G),  # an unknown class: classified from figures
        ({"kbps": "bad"}, None),  # malformed: unknown, never raises
    ],
)
def test_sample_class(sample, expected):
    assert sample_class(sample) == expected


@pytest.mark.parametrize(
    ("quality", "lang", "label"),
    [
        (G, "vi", "Tốt"),
        ("poor", "vi", "Kém"),
        (L, "en", "Lost"),
        (N, "xx", "Non-optimal"),
        (None, "vi", ""),
    ],
)
def test_labels(quality, lang, label):
    assert quality_label(quality, lang) == label


@given(
    st.floats(min_value=0.1, max_value=5000),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=100),
)
def test_more_loss_never_improves_the_class(kbps, loss, extra):
    order = [G, N, P, L]
    better = classify(kbps, loss)
    worse = classify(kbps, loss + extra)
    assert order.index(worse) >= order.index(better)


def _samples(*items: tuple[float, dict[str, object]]) -> list[SimpleNamespace]:
    return [SimpleNamespace(at=at, data=data) for at, data in items]


@pytest.mark.parametrize(
    ("samples", "window", "expected"),
    [
        # each class holds until the next sample; the last one for hold_s (30 s)
        (
            [(0, {"class": "good"}), (10, {"class": "poor"})],
            (0, 100),
            ({"good": 10, "poor": 30}, "poor"),
        ),
        # a gap longer than hold_s counts only hold_s
        ([(0, {"class": "good"}), (100, {"class": "good"})], (0, 200), ({"good": 60}, "good")),
        # clipped to the window at both ends
        (
            [(-20, {"class": "lost"}), (5, {"class": "good"})],
            (0, 20),
            ({"lost": 5, "good": 15}, "good"),
        ),
        # no recorded class: classified from the figures; unclassifiable samples skipped
        ([(0, {"kbps": 0}), (10, {"rtt_ms": 50})], (0, 100), ({"lost": 30}, "lost")),
        ([], (0, 100), ({}, None)),
    ],
    ids=["holds-until-next", "hold-cap", "window-clip", "classified", "none"],
)
def test_seconds_per_class(samples, window, expected):
    seconds, last = seconds_per_class(_samples(*samples), window[0], window[1], 30.0)
    assert (seconds, last) == (pytest.approx(expected[0]), expected[1])
