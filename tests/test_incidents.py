"""Alerts rebuilt from the ledger after a restart (server/incidents.py `past_alerts`), and how
the alert book takes them (`AlertBook.seed`): table-driven, pure."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from server.alerts import AlertBook
from server.incidents import past_alerts
from server.models import ClassSession, Event, EventKind, Site

T0 = 1_800_000_000.0  # planned start
SESSION = ClassSession(id="c1", title="t", starts_at=T0, ends_at=T0 + 3600)
SITE = Site("S1", "Nhà văn hóa thôn Đông", commune="Xã A")
J, L, Q = EventKind.SITE_JOINED, EventKind.SITE_LEFT, EventKind.QUALITY
H, R, S = EventKind.HELP_REQUESTED, EventKind.HELP_RESOLVED, EventKind.CLASS_STARTED


def ledger(*rows: tuple[EventKind, float, dict[str, Any]]) -> list[Event]:
    return [
        Event("c1", kind, T0 + at, None if kind is S else "S1", data, id=f"e{i}")
        for i, (kind, at, data) in enumerate(rows)
    ]


def summary(
    rows: list[tuple[EventKind, float, dict[str, Any]]], now: float = 3000.0
) -> list[tuple]:
    alerts = past_alerts(SESSION, [SITE], ledger(*rows), T0 + now)
    return sorted(
        (
            a.kind.value,
            a.since - T0,
            a.opened_at - T0,
            None if a.resolved_at is None else a.resolved_at - T0,
        )
        for a in alerts
    )


CASES = {
    "joined early, never dropped: nothing": ([(J, -1200, {"conn": "a"}), (S, 0, {})], []),
    "joined 5 min before start: late join resolved": (
        [(J, -300, {"conn": "a"}), (S, 0, {})],
        [("not_joined", -900, -900, -300)],
    ),
    "a drop of 30 s: nothing": (
        [(J, -1200, {"conn": "a"}), (L, 100, {"conn": "a"}), (J, 130, {"conn": "b"})],
        [],
    ),
    "a drop of 5 min: offline, resolved at the rejoin": (
        [(J, -1200, {"conn": "a"}), (L, 100, {"conn": "a"}), (J, 400, {"conn": "b"})],
        [("offline", 100, 160, 400)],
    ),
    "offline now: left to the live rules": (
        [(J, -1200, {"conn": "a"}), (L, 100, {"conn": "a"})],
        [],
    ),
    "poor for 3 min, then good": (
        [
            (J, -1200, {"conn": "a"}),
            (Q, 0, {"class": "poor"}),
            (Q, 90, {"class": "lost"}),
            (Q, 180, {"class": "good"}),
        ],
        [("poor", 0, 120, 180)],
    ),
    "poor for 1 min: nothing": (
        [(J, -1200, {"conn": "a"}), (Q, 0, {"class": "poor"}), (Q, 60, {"class": "good"})],
        [],
    ),
    "poor still: left to the live rules": (
        [(J, -1200, {"conn": "a"}), (Q, 0, {"class": "poor"}), (Q, 200, {"class": "poor"})],
        [],
    ),
    "help resolved, help open": (
        [
            (J, -1200, {"conn": "a"}),
            (H, 10, {"help_id": "h1"}),
            (R, 50, {"help_id": "h1"}),
            (H, 70, {"help_id": "h2"}),
        ],
        [("help", 10, 10, 50), ("help", 70, 70, None)],
    ),
}


@pytest.mark.parametrize("rows, expected", CASES.values(), ids=list(CASES))
def test_past_alerts(
    rows: list[tuple[EventKind, float, dict[str, Any]]], expected: list[tuple]
) -> None:
    assert summary(rows) == expected


@dataclasses.dataclass
class Live:
    code: str = "S1"
    status: str = "playing"
    since: float | None = T0 + 400
    quality: str | None = "good"
    help_open: int = 1


def test_a_rebuilt_book_keeps_the_log_and_raises_nothing_twice() -> None:
    rows = ledger(
        (J, -1200, {"conn": "a"}),
        (L, 100, {"conn": "a"}),
        (J, 400, {"conn": "b"}),
        (H, 500, {"help_id": "h1"}),
    )
    book = AlertBook(T0)
    book.seed(past_alerts(SESSION, [SITE], rows, T0 + 600))
    book.seed(past_alerts(SESSION, [SITE], rows, T0 + 600))  # twice (a second rebuild): once
    assert [(a.kind.value, a.open) for a in book.incidents()] == [
        ("help", True),
        ("offline", False),
    ]
    site = Live()
    assert book.evaluate(T0 + 601, [site]) == []  # the open help is not raised again
    site.help_open = 0
    (resolved,) = book.evaluate(T0 + 602, [site])
    assert resolved.kind.value == "help" and resolved.resolved_at == T0 + 602
