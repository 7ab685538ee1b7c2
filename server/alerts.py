"""Moderator alerts and the incident log of one class: pure rules with an injected clock.

Pure: no I/O, imports neither aiohttp, aiortc nor redis. The hub calls ``AlertBook.evaluate``
about once per second with every site's live state (anything with ``code``, ``status``,
``since``, ``quality`` and ``help_open``, e.g. server.hub.SiteState) and sends what changed
to moderators.

Rules (thresholds in ``AlertRules``):

- ``not_joined``: from ``not_joined_before_s`` (15 min) before the planned start, a site still
  ``never_joined``. Resolved when it connects.
- ``offline``: a site that had joined is ``offline`` for more than ``offline_after_s`` (60 s),
  counted from its status change (``since``). Resolved when it is connected again.
- ``poor``: a connected site whose quality is ``poor`` or ``lost`` for more than
  ``poor_after_s`` (2 min), counted from the first evaluation that saw it so. Resolved when
  its quality is better again, or when it goes offline (the ``offline`` rule takes over).
- ``help``: a site with an open help request. Resolved when none is open.

An alert carries ``since`` (when its condition began), ``opened_at`` (when the rule fired)
and ``resolved_at``. The incident log keeps every alert, open or resolved, most recent first
(by ``since``), up to ``log_size`` entries: sites that dropped stay in it after they return.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

CONNECTED = frozenset({"playing", "connecting", "reconnecting", "waiting", "stalled", "error"})
BAD_QUALITY = frozenset({"poor", "lost"})


class AlertKind(str, enum.Enum):
    """What an alert is about."""

    NOT_JOINED = "not_joined"
    OFFLINE = "offline"
    POOR = "poor"
    HELP = "help"


class SiteLike(Protocol):
    """The live fields of a site the rules read (server.hub.SiteState has them)."""

    code: str
    status: str
    since: float | None
    quality: str | None
    help_open: int


@dataclasses.dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds of the alert rules (seconds) and the incident log's length."""

    not_joined_before_s: float = 15 * 60.0
    offline_after_s: float = 60.0
    poor_after_s: float = 120.0
    log_size: int = 5000


@dataclasses.dataclass(slots=True)
class Alert:
    """One alert: open while ``resolved_at`` is None."""

    kind: AlertKind
    site: str
    since: float
    opened_at: float
    resolved_at: float | None = None

    @property
    def id(self) -> str:
        """Stable for one occurrence: the same on every node that folds the same state."""
        return f"{self.kind.value}:{self.site}:{int(self.since)}"

    @property
    def open(self) -> bool:
        """True until the condition cleared."""
        return self.resolved_at is None

    def wire(self) -> dict[str, Any]:
        """The protocol's alert object."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "site": self.site,
            "since": _iso(self.since),
            "opened_at": _iso(self.opened_at),
            "resolved_at": _iso(self.resolved_at),
            "open": self.open,
        }


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class AlertBook:
    """The open alerts and the incident log of one class."""

    def __init__(self, planned_start: float, rules: AlertRules | None = None) -> None:
        self.planned_start = planned_start
        self.rules = rules or AlertRules()
        self._open: dict[tuple[str, AlertKind], Alert] = {}
        self._log: collections.deque[Alert] = collections.deque(maxlen=self.rules.log_size)
        self._poor_since: dict[str, float] = {}
        self._open_count: collections.Counter[str] = collections.Counter()
        self._watched: set[str] = set()  # sites with an open alert or a bad-quality spell

    def evaluate(self, now: float, sites: Iterable[SiteLike]) -> list[Alert]:
        """Apply the rules to every site; return the alerts opened or resolved by this call."""
        changed: list[Alert] = []
        early = now < self.planned_start - self.rules.not_joined_before_s
        watched = self._watched
        for site in sites:
            if site.code not in watched and _quiet(site, early):
                continue  # the common case at scale: nothing to raise, nothing open
            for kind, since in self._conditions(now, site):
                self._settle(now, site.code, kind, since, changed)
            if self._poor_since.get(site.code) is None and not self._open_count.get(site.code):
                watched.discard(site.code)
            else:
                watched.add(site.code)
        return changed

    def _conditions(self, now: float, site: SiteLike) -> Iterable[tuple[AlertKind, float | None]]:
        """(kind, since) per rule: `since` when the rule holds now, else None."""
        rules, status = self.rules, site.status
        yield AlertKind.NOT_JOINED, self._not_joined_since(now, status)
        offline = status == "offline" and now - (site.since or now) > rules.offline_after_s
        yield AlertKind.OFFLINE, (site.since if offline else None)
        yield AlertKind.POOR, self._poor(now, site)
        yield AlertKind.HELP, now if site.help_open > 0 else None

    def _not_joined_since(self, now: float, status: str) -> float | None:
        threshold = self.planned_start - self.rules.not_joined_before_s
        return threshold if status == "never_joined" and now >= threshold else None

    def _poor(self, now: float, site: SiteLike) -> float | None:
        if site.status not in CONNECTED or site.quality not in BAD_QUALITY:
            self._poor_since.pop(site.code, None)
            return None
        began = self._poor_since.setdefault(site.code, now)
        return began if now - began > self.rules.poor_after_s else None

    def _settle(
        self, now: float, code: str, kind: AlertKind, since: float | None, changed: list[Alert]
    ) -> None:
        key = (code, kind)
        current = self._open.get(key)
        if since is not None and current is None:
            alert = Alert(kind, code, since, now)
            self._open[key] = alert
            self._open_count[code] += 1
            self._log.append(alert)
            changed.append(alert)
        elif since is None and current is not None:
            current.resolved_at = now
            del self._open[key]
            self._open_count[code] -= 1
            changed.append(current)

    def seed(self, alerts: Iterable[Alert]) -> None:
        """Take alerts rebuilt from the ledger (server/incidents.py `past_alerts`) after a
        restart: resolved ones join the log, open ones are open again (not raised twice)."""
        known = {a.id for a in self._log}
        for alert in sorted(alerts, key=lambda a: (a.since, a.opened_at)):
            key = (alert.site, alert.kind)
            if alert.id in known or (alert.open and key in self._open):
                continue
            known.add(alert.id)
            self._log.append(alert)
            if alert.open:
                self._open[key] = alert
                self._open_count[alert.site] += 1
                self._watched.add(alert.site)

    def open_alerts(self, site: str | None = None) -> list[Alert]:
        """Open alerts, most recent first (of one site when `site` is given)."""
        alerts = [a for a in self._open.values() if site is None or a.site == site]
        return sorted(alerts, key=_recent_first)

    def incidents(self, site: str | None = None, limit: int | None = None) -> list[Alert]:
        """The incident log (open and resolved alerts), most recent first."""
        alerts = [a for a in self._log if site is None or a.site == site]
        alerts.sort(key=_recent_first)
        return alerts if limit is None else alerts[:limit]


def _quiet(site: SiteLike, early: bool) -> bool:
    """True when no rule can hold for a site with no open alert (checked cheaply first)."""
    status = site.status
    if site.help_open > 0:
        return False
    if status in CONNECTED:
        return site.quality not in BAD_QUALITY
    return status == "never_joined" and early


def _recent_first(alert: Alert) -> tuple[float, float, str]:
    return (-alert.since, -alert.opened_at, alert.id)


__all__ = ["Alert", "AlertBook", "AlertKind", "AlertRules", "SiteLike"]
