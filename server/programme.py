"""The programme of a class: who was on air when, and which halls watched each segment.

Derived from the ledger's ON_AIR / OFF_AIR events (written by the node holding the
presenters' sources, server/hub.py) and the halls' connected intervals. Pure: no web code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from server.intervals import Interval
from server.models import ClassSession, Event, EventKind


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """One presenter's spell on air, with the halls that had media during it."""

    presenter: str
    name: str
    organisation: str
    start: float
    end: float
    open: bool  # still on air when the report was made
    halls: int = 0  # halls with media flowing at some time during the segment
    hall_minutes: float = 0.0  # their connected minutes within the segment, summed

    @property
    def seconds(self) -> float:
        """Length of the segment."""
        return self.end - self.start


def segments(session: ClassSession, events: Iterable[Event], end: float) -> list[Segment]:
    """The programme from ON_AIR / OFF_AIR / CLASS_ENDED events (any order); a segment still
    open closes at `end` (now, or the class's end)."""
    marks = sorted(
        (
            e
            for e in events
            if e.kind in (EventKind.ON_AIR, EventKind.OFF_AIR, EventKind.CLASS_ENDED)
        ),
        key=lambda e: (e.at, e.seq),
    )
    out: list[Segment] = []
    current: tuple[str, float] | None = None
    for event in marks:
        if current is not None:
            out.append(_segment(session, current[0], current[1], min(event.at, end), False))
            current = None
        if event.kind is EventKind.ON_AIR:
            current = (str(event.data.get("presenter", "")), event.at)
    if current is not None and current[1] < end:
        out.append(_segment(session, current[0], current[1], end, True))
    return [s for s in out if s.end > s.start]


def _segment(session: ClassSession, pid: str, start: float, end: float, is_open: bool) -> Segment:
    presenter = session.presenter(pid)
    name, organisation = (presenter.name, presenter.organisation) if presenter else (pid, "")
    return Segment(pid, name, organisation, start, end, is_open)


def with_halls(programme: Sequence[Segment], halls: Iterable[Sequence[Interval]]) -> list[Segment]:
    """Each segment with the halls (their connected intervals) that watched it."""
    counts = [0] * len(programme)
    seconds = [0.0] * len(programme)
    for intervals in halls:
        for index, segment in enumerate(programme):
            overlap = sum(
                max(0.0, min(i.end, segment.end) - max(i.start, segment.start)) for i in intervals
            )
            if overlap > 0:
                counts[index] += 1
                seconds[index] += overlap
    return [
        dataclasses.replace(s, halls=counts[i], hall_minutes=seconds[i] / 60)
        for i, s in enumerate(programme)
    ]
