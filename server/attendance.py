"""Attendance derived from a class's ledger: per-site records, commune and province roll-ups.

Pure rules: no I/O, imports neither aiohttp, aiortc nor redis. ``derive`` is linear in the
number of events (events are grouped per site in one pass, then each site's few events are
sorted; the ledger is nearly sorted already, which Python's sort handles in linear time).

Definitions (all times UTC epoch seconds):

- Lecture window: first CLASS_STARTED .. last CLASS_ENDED. Without a CLASS_STARTED event,
  ``session.started_at``, else the planned ``session.starts_at``. Without a CLASS_ENDED,
  ``session.ended_at``; else, for a class that never went live, the planned ``session.ends_at``
  once it has passed; else ``now`` (the class is still going on). A class that went live again
  after its last CLASS_ENDED is going on again.
- Basis: a site is connected while media flows to it as the server sees it (its WHEP
  viewer connected and heard from): MEDIA_UP opens, MEDIA_DOWN closes. Its page's WebSocket
  (SITE_JOINED / SITE_LEFT) is kept apart as ``page_intervals``. A site is counted from media
  (``basis`` "media") when it has a media event or a SITE_JOINED with ``data["attendance"] ==
  "media"`` (every page join since media attendance); otherwise (a ledger written before,
  with neither) from its page, as it always was (``basis`` "page"), so an old report does not
  change. Both kinds of intervals follow the pairing rules below.
- Connected intervals: an opening event (SITE_JOINED, MEDIA_UP) opens, a closing one closes. When both carry the same
  ``data["conn"]`` (a connection id) they are paired by it, whatever their order, so clock skew
  between the nodes that saw them cannot matter. Otherwise a per-site count of open connections
  is kept (two tabs, or a reconnect on another node seen before the old node's leave, keep the
  site connected; a leave with nothing open is ignored). A connection (with a ``conn``) never
  closed ends where the site's next connection starts: its node died (``kill -9`` writes no
  SITE_LEFT) and the page reconnected elsewhere. The last one never closed stays open until
  the class end (or ``now`` while it goes on). Overlapping intervals are merged. Events are
  sorted by ``at``; an ``at`` later than ``now + Rules.skew_s`` is clamped to ``now``.
- Rejoins: distinct SITE_JOINED connections (by ``conn``, else by event) minus one, as
  Blackboard Collaborate counts them; a reload is one rejoin.
- Connected seconds and % of the lecture: the merged intervals clipped to the lecture window.
- Status, first match wins: ``never_joined`` (no interval at all, neither media nor page),
  ``page_only`` (no media interval but the page was open; or, below, ``absent`` while its page
  was open for at least ``Rules.absent_below_pct`` of the lecture or is open now), ``absent``
  (connected less than ``Rules.absent_below_pct`` of the lecture), ``late`` (first connected in the lecture more
  than ``Rules.late_after_s`` after it started), ``left_early`` (last connected in the lecture
  more than ``Rules.left_early_s`` before its end; while the class goes on, a site gone for that
  long), else ``present``. Before the lecture starts, every site that connected is ``present``;
  while it goes on, a site connected now is never ``absent`` (it may still make it: it is
  ``late`` or ``present``). ``late`` and ``left_early`` are also kept as separate flags.
- Headcounts: at start / mid / end, the latest report with that explicit ``phase``; failing
  that, the report nearest to that point of the lecture (its start, middle, end) within
  ``Rules.headcount_near_s``. The end figure waits for the class to end. Latest and peak too.
- Quality: each QUALITY sample's class (``data["class"]``, or classified from its figures by
  server.quality) holds until the site's next sample, at most ``Rules.quality_hold_s``, clipped
  to the lecture window. ``poor_s`` counts ``poor`` and ``lost`` time.
- Replay: a site's REPLAY events (``data["seconds"]`` watched of the recording, each at most
  120) add up to ``replay_s``, apart from its live intervals. A site that missed the class
  live (``never_joined``, ``absent`` or ``page_only``) and watched at least
  ``Rules.absent_below_pct`` of the lecture's length in replay is ``replay`` ("Xem lại").
- People, in roll-ups: the sum over sites of max(peak headcount, check-ins): the most people a
  site reported at once, and never fewer than were checked in there. ``people_latest`` sums
  the latest headcounts (what the live wall shows).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import enum
import gc
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from operator import attrgetter
from typing import NamedTuple

from server.intervals import Interval, connected_intervals, overlap
from server.models import ClassSession, Event, EventKind, Site
from server.programme import Segment, segments, with_halls
from server.quality import QualityClass, seconds_per_class

_BY_AT = attrgetter("at")
_KINDS = tuple(kind.value for kind in EventKind)


class Status(str, enum.Enum):
    """A site's attendance status for one class."""

    PRESENT = "present"
    LATE = "late"
    LEFT_EARLY = "left_early"
    ABSENT = "absent"
    PAGE_ONLY = "page_only"  # the page was open, media did not flow (or hardly)
    NEVER_JOINED = "never_joined"
    REPLAY = "replay"  # not there live, watched the recording (REPLAY events) instead


STATUS_LABELS: Mapping[str, Mapping[Status, str]] = {
    "vi": {
        Status.PRESENT: "Có mặt trực tuyến",
        Status.LATE: "Vào muộn",
        Status.LEFT_EARLY: "Rời sớm",
        Status.ABSENT: "Vắng mặt",
        Status.PAGE_ONLY: "Mở trang, không có hình/tiếng",
        Status.NEVER_JOINED: "Chưa tham gia",
        Status.REPLAY: "Xem lại",
    },
    "en": {
        Status.PRESENT: "Present online",
        Status.LATE: "Late",
        Status.LEFT_EARLY: "Left early",
        Status.ABSENT: "Absent",
        Status.PAGE_ONLY: "Page open, no media",
        Status.NEVER_JOINED: "Never joined",
        Status.REPLAY: "Watched the replay",
    },
}


def status_label(status: Status | str, lang: str = "vi") -> str:
    """Human label of a status in Vietnamese (``vi``, default) or English (``en``)."""
    return STATUS_LABELS.get(lang, STATUS_LABELS["en"])[Status(status)]


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """Thresholds of the attendance rules (defaults in brackets).

    late_after_s [900]: first connected more than 15 min after the lecture start -> late.
    left_early_s [900]: last connected more than 15 min before the lecture end -> left early.
    absent_below_pct [50]: connected for less than half of the lecture -> absent.
    headcount_near_s [1200]: a report within 20 min of start / mid / end stands for it.
    quality_hold_s [60]: a quality sample stands for at most 60 s (samples come every 5-30 s).
    skew_s [5]: event times up to 5 s in the future (a node's clock ahead) are clamped to now.
    """

    late_after_s: float = 900.0
    left_early_s: float = 900.0
    absent_below_pct: float = 50.0
    headcount_near_s: float = 1200.0
    quality_hold_s: float = 60.0
    skew_s: float = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class LectureWindow:
    """When the lecture ran (or is running: ``ended`` False and ``end`` = now)."""

    start: float
    end: float
    started: bool  # the lecturer went live (or the class records a start)
    ended: bool

    @property
    def seconds(self) -> float:
        """Length of the lecture so far, never negative."""
        return max(0.0, self.end - self.start)


@dataclasses.dataclass(frozen=True, slots=True)
class SiteRecord:
    """Everything the report says about one site for one class."""

    site: Site
    expected: bool
    status: Status
    late: bool
    left_early: bool
    connected_now: bool
    first_join: float | None
    last_leave: float | None  # None while still connected during the class
    intervals: tuple[Interval, ...]
    rejoins: int
    connected_s: float  # within the lecture window
    connected_pct: float
    online_s: float  # all connected time, before and after the lecture too
    headcount_start: int | None
    headcount_mid: int | None
    headcount_end: int | None
    headcount_latest: int | None
    headcount_peak: int | None
    headcount_reports: int
    checkins: int
    checkins_by_operator: int
    quality_s: Mapping[str, float]  # seconds per quality class within the lecture
    poor_s: float  # poor + lost
    last_quality: str | None
    help_requests: int
    help_open: int
    questions: int
    basis: str = "page"  # "media": intervals are media flowing; "page": an old ledger's pages
    page_intervals: tuple[Interval, ...] = ()  # the page's WebSocket open
    page_s: float = 0.0  # page open within the lecture window
    page_pct: float = 0.0
    page_open_now: bool = False
    replay_s: float = 0.0  # recording watched (REPLAY events), apart from live presence

    @property
    def code(self) -> str:
        """The site's code."""
        return self.site.code

    @property
    def connected_minutes(self) -> float:
        """Connected minutes within the lecture."""
        return self.connected_s / 60.0

    @property
    def help_resolved(self) -> int:
        """Help requests marked resolved."""
        return self.help_requests - self.help_open

    @property
    def people(self) -> int:
        """People this site counts for: max(peak headcount, check-ins)."""
        return max(self.headcount_peak or 0, self.checkins)


@dataclasses.dataclass(frozen=True, slots=True)
class Rollup:
    """Totals over a set of sites: one commune, or the whole province."""

    name: str
    sites_expected: int
    sites_joined: int
    sites_never_joined: int
    sites_connected_now: int
    status_counts: Mapping[str, int]
    people: int  # sum of max(peak headcount, check-ins)
    people_latest: int  # sum of latest headcounts
    checkins: int
    connected_minutes: float
    poor_minutes: float
    help_requests: int
    help_open: int
    questions: int
    replay_minutes: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class AttendanceReport:
    """The derived attendance of one class at time ``generated_at``."""

    session: ClassSession
    generated_at: float
    window: LectureWindow
    rules: Rules
    sites: tuple[SiteRecord, ...]  # by commune, then code
    communes: tuple[Rollup, ...]  # by commune name
    province: Rollup
    never_joined: tuple[SiteRecord, ...]
    programme: tuple[Segment, ...] = ()  # who was on air when (server/programme.py)

    def site(self, code: str) -> SiteRecord | None:
        """The record of one site, or None."""
        return next((r for r in self.sites if r.site.code == code), None)


def derive(
    session: ClassSession,
    sites: list[Site],
    events: Iterable[Event],
    now: float,
    rules: Rules | None = None,
) -> AttendanceReport:
    """Derive the attendance report of a class from its ledger events (any order)."""
    with _gc_paused():
        return _derive(session, sites, events, now, rules or Rules())


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: deriving makes no reference cycles, but its many
    small allocations make it scan the caller's freshly loaded events (half a million objects
    with their data dicts) again and again: 10-30 % of the time for 5,000 sites."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _derive(
    session: ClassSession, sites: list[Site], events: Iterable[Event], now: float, rules: Rules
) -> AttendanceReport:
    class_events, by_site = _group(events, session.id, now, now + rules.skew_s)
    window = lecture_window(session, class_events, now)
    registry = {s.code: s for s in sites}
    expected = session.site_codes or tuple(registry)
    expected_set = set(expected)
    codes = list(expected) + sorted(c for c in by_site if c not in expected_set)
    records = [
        _record(
            registry.get(code) or Site(code=code, name=code),
            by_site.get(code) or _empty_parts(),
            window,
            now,
            rules,
            expected=code in expected_set,
        )
        for code in dict.fromkeys(codes)
    ]
    records.sort(key=lambda r: (r.site.commune, r.site.code))
    communes = _commune_rollups(records)
    on_air = segments(session, class_events, window.end)
    programme = with_halls(on_air, (r.intervals for r in records)) if on_air else []
    return AttendanceReport(
        session=session,
        generated_at=now,
        window=window,
        rules=rules,
        sites=tuple(records),
        communes=communes,
        province=rollup(_province_name(records), records),
        never_joined=tuple(r for r in records if r.status is Status.NEVER_JOINED),
        programme=tuple(programme),
    )


def derive_site(
    session: ClassSession,
    site: Site,
    events: Iterable[Event],
    now: float,
    rules: Rules | None = None,
) -> SiteRecord:
    """One site's record (a moderator's drill-down) from the class's CLASS_STARTED/ENDED
    events and that site's events, without deriving every other site."""
    rules = rules or Rules()
    class_events, by_site = _group(events, session.id, now, now + rules.skew_s)
    window = lecture_window(session, class_events, now)
    expected = not session.site_codes or site.code in session.site_codes
    parts = by_site.get(site.code) or _empty_parts()
    return _record(site, parts, window, now, rules, expected)


_Parts = dict[str, list[Event]]  # by EventKind value: enum members hash slowly


def _group(
    events: Iterable[Event], session_id: str, now: float, latest: float
) -> tuple[list[Event], dict[str, _Parts]]:
    """Split a class's events into class-level ones (times after ``latest``, a node's clock
    ahead, become ``now``) and per-site, per-kind lists (one pass)."""
    started, ended = EventKind.CLASS_STARTED, EventKind.CLASS_ENDED
    on_air, off_air = EventKind.ON_AIR, EventKind.OFF_AIR
    class_events: list[Event] = []
    by_site: dict[str, _Parts] = {}
    for event in events:
        if event.session_id != session_id:
            continue
        kind = event.kind
        if kind.__class__ is not EventKind:  # a plain string from a lax producer
            try:
                kind = EventKind(kind)
            except ValueError:
                continue  # a kind this version does not know says nothing of attendance
            event = dataclasses.replace(event, kind=kind)
        if kind is started or kind is ended or kind is on_air or kind is off_air:
            class_events.append(_clamp(event, latest, now))
        elif event.site_code:
            parts = by_site.get(event.site_code)
            if parts is None:
                by_site[event.site_code] = parts = _empty_parts()
            parts[kind._value_].append(event)
    return class_events, by_site


def _clamp(event: Event, latest: float, now: float) -> Event:
    """The event, with its time set to ``now`` when it is after ``latest``."""
    return dataclasses.replace(event, at=now) if event.at > latest else event


def _empty_parts() -> _Parts:
    """One empty event list per kind."""
    return {kind: [] for kind in _KINDS}


def lecture_window(session: ClassSession, class_events: list[Event], now: float) -> LectureWindow:
    """The lecture window from CLASS_STARTED/ENDED events, the session, the plan or now."""
    starts = [e.at for e in class_events if e.kind is EventKind.CLASS_STARTED]
    ends = [e.at for e in class_events if e.kind is EventKind.CLASS_ENDED]
    started_at = min(starts) if starts else session.started_at
    start = started_at if started_at is not None else session.starts_at
    ended_at = max(ends) if ends else session.ended_at
    if ended_at is not None and starts and max(starts) > ended_at:
        ended_at = None  # went live again after it was ended: still going on
    never_live = ended_at is None and started_at is None
    if never_live and session.ends_at is not None and session.ends_at <= now:
        ended_at = session.ends_at  # never went live: the planned window, once past
    end = max(start, min(ended_at, now) if ended_at is not None else now)
    return LectureWindow(
        start=start, end=end, started=started_at is not None, ended=ended_at is not None
    )


def site_record(
    site: Site,
    events: list[Event],
    window: LectureWindow,
    now: float,
    rules: Rules,
    expected: bool = True,
) -> SiteRecord:
    """Derive one site's record from its own events (any order) and the lecture window."""
    parts = _empty_parts()
    for event in events:
        bucket = parts.get(getattr(event.kind, "value", event.kind))
        if bucket is not None:  # unknown kinds say nothing of attendance
            bucket.append(event)
    return _record(site, parts, window, now, rules, expected)


def _record(
    site: Site, parts: _Parts, window: LectureWindow, now: float, rules: Rules, expected: bool
) -> SiteRecord:
    """One site's record from its events split by kind (lists sorted and clamped in place)."""
    latest = now + rules.skew_s
    for events in parts.values():
        if len(events) > 1:
            events.sort(key=_BY_AT)
        if events and events[-1].at > latest:  # clamp after sorting: keeps their order
            for i in range(bisect.bisect_right(events, latest, key=_BY_AT), len(events)):
                events[i] = _clamp(events[i], latest, now)
    open_end = window.end if window.ended else now
    page_joins = parts[EventKind.SITE_JOINED.value]
    pages, page_conns = connected_intervals(page_joins, parts[EventKind.SITE_LEFT.value], open_end)
    basis = _basis(parts)
    if basis == "media":
        intervals, joins = connected_intervals(
            parts[EventKind.MEDIA_UP.value], parts[EventKind.MEDIA_DOWN.value], open_end
        )
    else:
        intervals, joins = pages, page_conns
    connected_s = _within(intervals, window)
    pct = _pct(connected_s, window)
    page_s = _within(pages, window)
    page = _Page(pages, _pct(page_s, window), bool(pages) and pages[-1].open and not window.ended)
    late, left_early = _lateness(intervals, window, rules)
    heads = _headcounts(parts[EventKind.HEADCOUNT.value], window, rules)
    quality_s, last_quality = seconds_per_class(
        parts[EventKind.QUALITY.value], window.start, window.end, rules.quality_hold_s
    )
    help_total, help_open = _help(
        parts[EventKind.HELP_REQUESTED.value], parts[EventKind.HELP_RESOLVED.value]
    )
    checkins = parts[EventKind.CHECKIN.value]
    connected_now = bool(intervals) and intervals[-1].open and not window.ended
    status = _status(intervals, pct, late, left_early, window, rules, connected_now, page)
    replay_s = _replay_seconds(parts[EventKind.REPLAY.value])
    if status in MISSED and _pct(replay_s, window) >= rules.absent_below_pct:
        status = Status.REPLAY
    return SiteRecord(
        site=site,
        expected=expected,
        status=status,
        late=late,
        left_early=left_early,
        connected_now=connected_now,
        first_join=intervals[0].start if intervals else None,
        last_leave=None if connected_now or not intervals else intervals[-1].end,
        intervals=tuple(intervals),
        rejoins=max(0, joins - 1),
        connected_s=connected_s,
        connected_pct=min(100.0, pct),
        online_s=sum(i.seconds for i in intervals),
        headcount_start=heads[0],
        headcount_mid=heads[1],
        headcount_end=heads[2],
        headcount_latest=heads[3],
        headcount_peak=heads[4],
        headcount_reports=heads[5],
        checkins=len(checkins),
        checkins_by_operator=sum(1 for e in checkins if e.data.get("by") == "operator"),
        quality_s=quality_s,
        poor_s=quality_s.get("poor", 0.0) + quality_s.get("lost", 0.0),
        last_quality=last_quality,
        help_requests=help_total,
        help_open=help_open,
        questions=len(parts[EventKind.QUESTION.value]),
        basis=basis,
        page_intervals=tuple(pages),
        page_s=page_s,
        page_pct=min(100.0, page.pct),
        page_open_now=page.open_now,
        replay_s=replay_s,
    )


MISSED = frozenset({Status.NEVER_JOINED, Status.ABSENT, Status.PAGE_ONLY})


def _replay_seconds(events: list[Event]) -> float:
    """Seconds of the recording a site watched (each report's ``seconds``; bad ones skipped)."""
    total = 0.0
    for event in events:
        seconds = event.data.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
            total += min(float(seconds), 120.0)
    return total


def _basis(parts: _Parts) -> str:
    """ "media" when the site's ledger speaks of media (media events, or page joins written
    since media attendance), else "page" (a ledger written before: derived as it was)."""
    if parts[EventKind.MEDIA_UP.value] or parts[EventKind.MEDIA_DOWN.value]:
        return "media"
    joins = parts[EventKind.SITE_JOINED.value]
    return "media" if any(e.data.get("attendance") == "media" for e in joins) else "page"


def _within(intervals: list[Interval], window: LectureWindow) -> float:
    """Seconds of the intervals within the lecture window."""
    return sum(overlap(i.start, i.end, window.start, window.end) for i in intervals)


def _pct(seconds: float, window: LectureWindow) -> float:
    """`seconds` as a percentage of the lecture (0 before it starts)."""
    return 100.0 * seconds / window.seconds if window.seconds > 0 else 0.0


class _Page(NamedTuple):
    """What a site's page (WebSocket) did: its intervals, % of the lecture, open now."""

    intervals: list[Interval]
    pct: float
    open_now: bool


def _lateness(intervals: list[Interval], window: LectureWindow, rules: Rules) -> tuple[bool, bool]:
    """(late, left_early) relative to the lecture window."""
    inside = [i for i in intervals if overlap(i.start, i.end, window.start, window.end) > 0]
    if not inside or window.seconds <= 0:
        return False, False
    first_in = max(inside[0].start, window.start)
    last_out = min(inside[-1].end, window.end)
    return first_in - window.start > rules.late_after_s, window.end - last_out > rules.left_early_s


def _status(
    intervals: list[Interval],
    pct: float,
    late: bool,
    left_early: bool,
    window: LectureWindow,
    rules: Rules,
    connected_now: bool,
    page: _Page,
) -> Status:
    """The one status of a site (see the module docstring for the order). With a page
    basis the page is the intervals, so ``page_only`` never comes out of an old ledger."""
    if not intervals:
        return Status.PAGE_ONLY if page.intervals else Status.NEVER_JOINED
    if window.seconds <= 0:
        return Status.PRESENT
    if pct < rules.absent_below_pct and not connected_now:
        if page.open_now or (page.pct >= rules.absent_below_pct):
            return Status.PAGE_ONLY
        return Status.ABSENT
    if late:
        return Status.LATE
    if left_early:
        return Status.LEFT_EARLY
    return Status.PRESENT


_Heads = tuple[int | None, int | None, int | None, int | None, int | None, int]


def _headcounts(events: list[Event], window: LectureWindow, rules: Rules) -> _Heads:
    """(start, mid, end, latest, peak, reports) headcounts of one site."""
    reports = [(e.at, c, e.data.get("phase")) for e in events if (c := _count(e)) is not None]
    if not reports:
        return None, None, None, None, None, 0
    points = {"start": window.start, "mid": (window.start + window.end) / 2, "end": window.end}
    phased = {}
    for phase, at in points.items():
        if phase == "end" and not window.ended:
            explicit = [c for _, c, p in reports if p == "end"]
            phased[phase] = explicit[-1] if explicit else None
        else:
            phased[phase] = _phase_count(reports, phase, at, rules.headcount_near_s)
    peak = max(c for _, c, _ in reports)
    return phased["start"], phased["mid"], phased["end"], reports[-1][1], peak, len(reports)


def _count(event: Event) -> int | None:
    """A headcount event's count, None when missing or malformed."""
    count = event.data.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    return count


def _phase_count(
    reports: list[tuple[float, int, str | None]], phase: str, point: float, near_s: float
) -> int | None:
    """Latest report with this explicit phase, else the report nearest to ``point``."""
    explicit = [c for _, c, p in reports if p == phase]
    if explicit:
        return explicit[-1]
    at, count, _ = min(reports, key=lambda r: abs(r[0] - point))
    return count if abs(at - point) <= near_s else None


def _help(requested: list[Event], resolved: list[Event]) -> tuple[int, int]:
    """(requests, still open) for one site, matched by ``help_id``."""
    ids = [str(e.data.get("help_id") or e.id or id(e)) for e in requested]
    done = {str(e.data.get("help_id")) for e in resolved}
    unique = set(ids)
    return len(unique), len(unique - done)


def rollup(name: str, records: Iterable[SiteRecord]) -> Rollup:
    """Totals over some site records (a commune, or the province)."""
    records = list(records)
    statuses = Counter(r.status.value for r in records)
    return Rollup(
        name=name,
        sites_expected=sum(1 for r in records if r.expected),
        sites_joined=sum(1 for r in records if r.intervals or r.page_intervals),
        sites_never_joined=statuses.get(Status.NEVER_JOINED.value, 0),
        sites_connected_now=sum(1 for r in records if r.connected_now),
        status_counts={s.value: statuses.get(s.value, 0) for s in Status},
        people=sum(r.people for r in records),
        people_latest=sum(r.headcount_latest or 0 for r in records),
        checkins=sum(r.checkins for r in records),
        connected_minutes=sum(r.connected_s for r in records) / 60.0,
        poor_minutes=sum(r.poor_s for r in records) / 60.0,
        help_requests=sum(r.help_requests for r in records),
        help_open=sum(r.help_open for r in records),
        questions=sum(r.questions for r in records),
        replay_minutes=sum(r.replay_s for r in records) / 60.0,
    )


def _commune_rollups(records: list[SiteRecord]) -> tuple[Rollup, ...]:
    """One roll-up per commune, by commune name."""
    groups: dict[str, list[SiteRecord]] = {}
    for record in records:
        groups.setdefault(record.site.commune, []).append(record)
    return tuple(rollup(name, groups[name]) for name in sorted(groups))


def _province_name(records: list[SiteRecord]) -> str:
    """The most common province among the sites ('' when none is set)."""
    names = Counter(r.site.province for r in records if r.site.province)
    return names.most_common(1)[0][0] if names else ""


__all__ = [
    "STATUS_LABELS",
    "AttendanceReport",
    "Interval",
    "LectureWindow",
    "QualityClass",
    "Rollup",
    "Rules",
    "SiteRecord",
    "Status",
    "derive",
    "derive_site",
    "lecture_window",
    "rollup",
    "site_record",
    "status_label",
]
