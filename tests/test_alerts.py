"""Alert rules and the incident log (server/alerts.py): table-driven, with an injected clock."""

from __future__ import annotations

import dataclasses
import time

import pytest

from server.alerts import AlertBook, AlertKind, AlertRules

START = 1_800_000_000.0  # planned start of the class


@dataclasses.dataclass
class Site:
    """A site's live state as the hub keeps it (the fields the rules read)."""

    code: str
    status: str = "never_joined"
    since: float | None = None
    quality: str | None = None
    help_open: int = 0


def run(
    steps: list[tuple[float, dict[str, object]]], code: str = "S1"
) -> tuple[AlertBook, list[tuple[float, str, str]]]:
    """Evaluate once per second from the first step's time to the last; `steps` change the
    site at their time (relative to START). Returns the book and (t, kind, opened|resolved)."""
    book = AlertBook(START)
    site = Site(code)
    events: list[tuple[float, str, str]] = []
    pending = sorted(steps, key=lambda step: step[0])
    t = pending[0][0]
    end = pending[-1][0]
    while t <= end:
        while pending and pending[0][0] <= t:
            for key, value in pending.pop(0)[1].items():
                setattr(site, key, START + value if key == "since" else value)
        for alert in book.evaluate(START + t, [site]):
            events.append((t, alert.kind.value, "opened" if alert.open else "resolved"))
        t += 1.0
    return book, events


CASES = {
    "not joined 15 min before start": (
        [(-1000.0, {}), (-890.0, {})],
        [(-900.0, "not_joined", "opened")],
    ),
    "joined in time: no alert": (
        [(-1000.0, {}), (-950.0, {"status": "waiting", "since": -950.0}), (-800.0, {})],
        [],
    ),
    "late join resolves not_joined": (
        [(-905.0, {}), (-600.0, {"status": "waiting", "since": -600.0}), (-590.0, {})],
        [(-900.0, "not_joined", "opened"), (-600.0, "not_joined", "resolved")],
    ),
    "offline 60 s is not yet an alert": (
        [
            (0.0, {"status": "playing", "since": 0.0}),
            (10.0, {"status": "offline", "since": 10.0}),
            (70.0, {}),
        ],
        [],
    ),
    "offline more than 60 s, then back": (
        [
            (0.0, {"status": "playing", "since": 0.0}),
            (10.0, {"status": "offline", "since": 10.0}),
            (100.0, {"status": "playing", "since": 100.0}),
            (101.0, {}),
        ],
        [(71.0, "offline", "opened"), (100.0, "offline", "resolved")],
    ),
    "short drops never alert": (
        [
            (0.0, {"status": "playing", "since": 0.0}),
            (5.0, {"status": "offline", "since": 5.0}),
            (40.0, {"status": "playing", "since": 40.0}),
            (50.0, {"status": "offline", "since": 50.0}),
            (100.0, {"status": "playing", "since": 100.0}),
            (200.0, {}),
        ],
        [],
    ),
    "poor for 2 min": (
        [(0.0, {"status": "playing", "since": 0.0, "quality": "poor"}), (130.0, {})],
        [(121.0, "poor", "opened")],
    ),
    "lost counts as poor, recovery resolves": (
        [
            (0.0, {"status": "playing", "since": 0.0, "quality": "lost"}),
            (150.0, {"quality": "good"}),
            (151.0, {}),
        ],
        [(121.0, "poor", "opened"), (150.0, "poor", "resolved")],
    ),
    "poor interrupted by non_optimal starts over": (
        [
            (0.0, {"status": "playing", "since": 0.0, "quality": "poor"}),
            (100.0, {"quality": "non_optimal"}),
            (101.0, {"quality": "poor"}),
            (200.0, {}),
        ],
        [],
    ),
    "going offline ends poor; offline takes over": (
        [
            (0.0, {"status": "playing", "since": 0.0, "quality": "poor"}),
            (130.0, {"status": "offline", "since": 130.0}),
            (200.0, {}),
        ],
        [(121.0, "poor", "opened"), (130.0, "poor", "resolved"), (191.0, "offline", "opened")],
    ),
    "help request opens at once, resolving closes it": (
        [
            (0.0, {"status": "playing", "since": 0.0}),
            (5.0, {"help_open": 1}),
            (9.0, {"help_open": 2}),
            (20.0, {"help_open": 0}),
            (21.0, {}),
        ],
        [(5.0, "help", "opened"), (20.0, "help", "resolved")],
    ),
}


@pytest.mark.parametrize("steps, expected", CASES.values(), ids=list(CASES))
def test_rules(
    steps: list[tuple[float, dict[str, object]]], expected: list[tuple[float, str, str]]
) -> None:
    _, events = run(steps)
    assert events == expected


def test_incident_log_keeps_sites_that_dropped_most_recent_first() -> None:
    book = AlertBook(START)
    a = Site("A", "playing", START)
    b = Site("B", "playing", START)
    book.evaluate(START, [a, b])
    a.status, a.since = "offline", START + 10
    book.evaluate(START + 80, [a, b])  # A offline > 60 s
    b.help_open = 1
    book.evaluate(START + 90, [a, b])  # B asks for help
    a.status, a.since = "playing", START + 95  # A is back
    book.evaluate(START + 95, [a, b])
    log = book.incidents()
    assert [(x.site, x.kind) for x in log] == [("B", AlertKind.HELP), ("A", AlertKind.OFFLINE)]
    assert log[1].resolved_at == START + 95 and not log[1].open
    assert log[1].since == START + 10 and log[1].opened_at == START + 80
    assert [x.site for x in book.open_alerts()] == ["B"]
    assert book.incidents(site="A")[0].wire() == {
        "id": f"offline:A:{int(START + 10)}",
        "kind": "offline",
        "site": "A",
        "since": "2027-01-15T08:00:10Z",
        "opened_at": "2027-01-15T08:01:20Z",
        "resolved_at": "2027-01-15T08:01:35Z",
        "open": False,
    }


def test_an_alert_is_reported_once_while_it_stays_open() -> None:
    book = AlertBook(START)
    site = Site("A", "offline", START)
    assert [x.kind for x in book.evaluate(START + 61, [site])] == [AlertKind.OFFLINE]
    for t in range(62, 100):
        assert book.evaluate(START + t, [site]) == []
    assert len(book.incidents()) == 1


def test_the_log_is_bounded() -> None:
    book = AlertBook(START, AlertRules(log_size=3))
    site = Site("A", "playing", START)
    for i in range(5):
        site.help_open = 1
        book.evaluate(START + 2 * i, [site])
        site.help_open = 0
        book.evaluate(START + 2 * i + 1, [site])
    assert len(book.incidents()) == 3
    assert book.incidents()[0].since == START + 8


def test_rebuilt_after_restart_an_offline_site_keeps_its_drop_time() -> None:
    """A new book (a restarted node) sees the ledger's `since`: same alert id on every node."""
    site = Site("A", "offline", START + 5)
    first, second = AlertBook(START), AlertBook(START)
    (a,) = first.evaluate(START + 70, [site])
    (b,) = second.evaluate(START + 300, [site])
    assert a.id == b.id and a.since == b.since == START + 5


def test_5000_sites_evaluate_quickly() -> None:
    sites = [
        Site(
            f"S{i}",
            ("playing", "offline", "never_joined")[i % 3],
            START,
            ("good", "poor", None)[i % 3],
            i % 7 == 0,
        )
        for i in range(5000)
    ]
    book = AlertBook(START)
    book.evaluate(START + 200, sites)
    began = time.perf_counter()
    for t in range(201, 206):
        book.evaluate(START + t, sites)
    per_call_ms = (time.perf_counter() - began) / 5 * 1000
    print(f"evaluate(5000 sites): {per_call_ms:.2f} ms")
    assert per_call_ms < 50
    assert len(book.open_alerts()) > 1000
