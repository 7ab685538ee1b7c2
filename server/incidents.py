"""A site's story from the ledger, for the moderator's drill-down: help requests with their
resolution, headcount reports, check-ins, questions and quality samples.

Pure: no I/O, imports neither aiohttp, aiortc nor redis. Every function takes ledger events
(any order, any mix of kinds and sites) and returns JSON-ready lists, oldest first unless
a docstring says otherwise; times are ISO 8601 UTC.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from server.alerts import BAD_QUALITY, Alert, AlertKind, AlertRules
from server.attendance import derive_site
from server.models import ClassSession, Event, EventKind, Site

QUALITY_FIELDS = ("rtt_ms", "loss_pct", "jitter_ms", "kbps", "fps")


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (`...Z`); None stays None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _of(events: Iterable[Event], *kinds: EventKind) -> list[Event]:
    return sorted((e for e in events if e.kind in kinds), key=lambda e: (e.at, e.seq))


def help_requests(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Every help request with `resolved_at` / `resolved_by` (None while open).

    Requests are read before resolutions, so a resolution stamped earlier than its request
    (two nodes whose clocks disagree) still closes it."""
    requests: dict[str, dict[str, Any]] = {}
    found = _of(events, EventKind.HELP_REQUESTED, EventKind.HELP_RESOLVED)
    found.sort(key=lambda e: e.kind is EventKind.HELP_RESOLVED)  # stable: times kept in order
    for event in found:
        help_id = str(event.data.get("help_id", ""))
        if event.kind is EventKind.HELP_REQUESTED:
            requests.setdefault(
                help_id,
                {
                    "type": "help",
                    "site": event.site_code,
                    "help_id": help_id,
                    "reason": event.data.get("reason", "other"),
                    "text": event.data.get("text", ""),
                    "at": iso(event.at),
                    "resolved_at": None,
                    "resolved_by": None,
                },
            )
        elif help_id in requests and requests[help_id]["resolved_at"] is None:
            requests[help_id].update(resolved_at=iso(event.at), resolved_by=event.data.get("by"))
    return list(requests.values())


def open_help(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The help requests not resolved yet, as `help` messages (protocol shape), oldest first."""
    return [
        {k: v for k, v in r.items() if k not in ("resolved_at", "resolved_by")}
        for r in help_requests(events)
        if r["resolved_at"] is None
    ]


def headcounts(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Headcount reports: `at`, `count`, `phase`."""
    return [
        {"at": iso(e.at), "count": e.data.get("count"), "phase": e.data.get("phase", "other")}
        for e in _of(events, EventKind.HEADCOUNT)
    ]


def checkins(events: Iterable[Event], limit: int = 500) -> dict[str, Any]:
    """Check-ins: the count, and the latest `limit` (name and how; never the identifier)."""
    found = _of(events, EventKind.CHECKIN)
    latest = [
        {"at": iso(e.at), "name": e.data.get("name", ""), "by": e.data.get("by", "qr")}
        for e in found[-limit:]
    ]
    return {"count": len(found), "latest": latest[::-1]}


def questions(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Questions the site asked: `question_id`, `text`, `at`."""
    return [
        {"question_id": e.data.get("question_id"), "text": e.data.get("text", ""), "at": iso(e.at)}
        for e in _of(events, EventKind.QUESTION)
    ]


def quality_samples(events: Iterable[Event], limit: int = 120) -> list[dict[str, Any]]:
    """The latest `limit` quality samples (class and figures), oldest first."""
    found = _of(events, EventKind.QUALITY)[-limit:]
    return [
        {
            "at": iso(e.at),
            "class": e.data.get("class"),
            **{k: e.data.get(k) for k in QUALITY_FIELDS},
        }
        for e in found
    ]


_PAST_KINDS = frozenset(
    {
        EventKind.SITE_JOINED,
        EventKind.SITE_LEFT,
        EventKind.QUALITY,
        EventKind.HELP_REQUESTED,
        EventKind.HELP_RESOLVED,
    }
)
_CLASS_KINDS = frozenset({EventKind.CLASS_STARTED, EventKind.CLASS_ENDED})


def past_alerts(
    session: ClassSession,
    sites: Iterable[Site],
    events: Iterable[Event],
    now: float,
    rules: AlertRules | None = None,
) -> list[Alert]:
    """The alerts the ledger shows already happened, for a node that (re)builds a class:
    resolved drops (offline longer than the rule), late joins, poor spells that ended, and
    help requests (open or resolved). Conditions still going on are left to the live rules,
    which give them the same ids (`kind:site:since`)."""
    rules = rules or AlertRules()
    by_site: dict[str, list[Event]] = defaultdict(list)
    class_events: list[Event] = []
    for event in events:
        if event.kind in _CLASS_KINDS:
            class_events.append(event)
        elif event.kind in _PAST_KINDS and event.site_code:
            by_site[event.site_code].append(event)
    found: list[Alert] = []
    for site in sites:
        own = by_site.get(site.code, [])
        presence = [e for e in own if e.kind in (EventKind.SITE_JOINED, EventKind.SITE_LEFT)]
        if presence:
            record = derive_site(session, site, class_events + presence, now)
            found += _drops(site.code, record.intervals, rules)
            found += _late(site.code, session.starts_at, record.first_join, rules)
        found += _poor_spells(site.code, own, rules)
        found += _helps(site.code, own)
    return found


def _drops(code: str, intervals: Iterable[Any], rules: AlertRules) -> list[Alert]:
    spans = list(intervals)
    return [
        Alert(AlertKind.OFFLINE, code, a.end, a.end + rules.offline_after_s, b.start)
        for a, b in zip(spans, spans[1:], strict=False)
        if b.start - a.end > rules.offline_after_s
    ]


def _late(code: str, starts_at: float, first_join: float | None, rules: AlertRules) -> list[Alert]:
    threshold = starts_at - rules.not_joined_before_s
    if first_join is None or first_join <= threshold:
        return []
    return [Alert(AlertKind.NOT_JOINED, code, threshold, threshold, first_join)]


def _poor_spells(code: str, own: list[Event], rules: AlertRules) -> list[Alert]:
    """Runs of poor/lost samples that a better sample ended, longer than the rule."""
    found, began = [], None
    for event in _of(own, EventKind.QUALITY):
        bad = event.data.get("class") in BAD_QUALITY
        if bad and began is None:
            began = event.at
        elif not bad and began is not None:
            if event.at - began > rules.poor_after_s:
                found.append(
                    Alert(AlertKind.POOR, code, began, began + rules.poor_after_s, event.at)
                )
            began = None
    return found


def _helps(code: str, own: list[Event]) -> list[Alert]:
    resolved = {str(e.data.get("help_id")): e.at for e in _of(own, EventKind.HELP_RESOLVED)}
    return [
        Alert(AlertKind.HELP, code, e.at, e.at, resolved.get(str(e.data.get("help_id"))))
        for e in _of(own, EventKind.HELP_REQUESTED)
    ]


__all__ = [
    "past_alerts",
    "checkins",
    "headcounts",
    "help_requests",
    "open_help",
    "quality_samples",
    "questions",
]
