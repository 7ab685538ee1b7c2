"""A site's story from the ledger, for the moderator's drill-down: help requests with their
resolution, headcount reports, check-ins, questions and quality samples.

Pure: no I/O, imports neither aiohttp, aiortc nor redis. Every function takes ledger events
(any order, any mix of kinds and sites) and returns JSON-ready lists, oldest first unless
a docstring says otherwise; times are ISO 8601 UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from server.models import Event, EventKind

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


__all__ = ["checkins", "headcounts", "help_requests", "open_help", "quality_samples", "questions"]
