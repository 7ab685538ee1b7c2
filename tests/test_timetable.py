"""What a class's times make due (server/timetable.py): table-driven, no clock."""

from __future__ import annotations

import pytest

from server.models import ClassSession
from server.timetable import auto_end_at, checkin_closes_at, due_to_end, mid_prompt_at

H = 3600.0


def klass(**times: float | None) -> ClassSession:
    return ClassSession(id="c", title="t", **{"starts_at": 0.0, **times})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("session", "grace", "at"),
    [
        (klass(ends_at=H), 1800.0, H + 1800),
        (klass(ends_at=H), 0.0, None),  # turned off: only a person ends it
        (klass(), 1800.0, None),  # no planned end
        (klass(ends_at=H, ended_at=H - 60), 1800.0, None),  # ended already
    ],
)
def test_auto_end_at(session, grace, at) -> None:
    assert auto_end_at(session, grace) == at


@pytest.mark.parametrize(("now", "due"), [(H + 1799.0, False), (H + 1800.0, True), (100 * H, True)])
def test_a_class_is_due_to_end_at_its_planned_end_plus_the_grace(now, due) -> None:
    assert due_to_end(klass(ends_at=H), now, 1800.0) is due


@pytest.mark.parametrize(
    ("session", "at"),
    [
        (klass(ends_at=H), H + 600),  # the planned end while it goes on
        (klass(ends_at=H, ended_at=H / 2), H / 2 + 600),  # ended early: the actual end
        (klass(ended_at=2 * H), 2 * H + 600),
        (klass(), None),  # nothing known: the link's own expiry holds
    ],
)
def test_checkin_links_close_with_the_class(session, at) -> None:
    assert checkin_closes_at(session, 600.0) == at


@pytest.mark.parametrize(
    ("session", "delay", "at"),
    [
        (klass(ends_at=2 * H), None, None),  # not live yet
        (klass(ends_at=2 * H, started_at=300.0), None, 300.0 + H),  # half the planned class
        (klass(started_at=300.0), None, 300.0 + 45 * 60),  # no planned end: 45 min
        (klass(ends_at=2 * H, started_at=300.0), 5.0, 305.0),  # compressed (tests)
    ],
)
def test_mid_prompt_at(session, delay, at) -> None:
    assert mid_prompt_at(session, delay) == at
