"""A site's connected intervals from its joins and leaves (see server/attendance.py for the rules).

Pure: no I/O. Joins and leaves that carry the same ``data["conn"]`` are paired by it, whatever
their order (clock skew between nodes cannot matter); the rest are counted (two tabs, or a
reconnect seen before the old node's leave, keep the site connected). A connection never
closed ends where the site's next connection starts (its node died: kill -9 writes no
SITE_LEFT); the last one never closed stays open. Overlapping intervals are merged.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, NamedTuple

from server.models import Event


class Interval(NamedTuple):
    """One connected interval of a site; ``open`` when no leave closed it yet."""

    start: float
    end: float
    open: bool = False

    @property
    def seconds(self) -> float:
        """Length of the interval."""
        return self.end - self.start


def connected_intervals(
    joins: list[Event], leaves: list[Event], open_end: float
) -> tuple[list[Interval], int]:
    """One site's merged connected intervals and its number of distinct connections.

    `joins` and `leaves` are the site's SITE_JOINED / SITE_LEFT events sorted by time; a
    connection still open ends at `open_end` (the class end, or now)."""
    paired: dict[str, list[float]] = {}
    unpaired_joins: list[Event] = []
    for event in joins:
        conn = event.data.get("conn")
        if conn:
            span = paired.setdefault(str(conn), [event.at, float("nan")])
            span[0] = min(span[0], event.at)
        else:
            unpaired_joins.append(event)
    unpaired_leaves = _pair_leaves(leaves, paired)
    raw = _orphans_closed(list(paired.values()))
    raw += _counted(unpaired_joins, unpaired_leaves)
    spans = [(s, max(s, open_end) if is_open else e, is_open) for s, e, is_open in raw]
    return merge(spans), len(paired) + len(unpaired_joins)


def _orphans_closed(spans: list[list[float]]) -> list[tuple[float, float, bool]]:
    """Connection spans (a nan end: never closed); one never closed that a later connection
    of the site follows ends where that one starts: its node died (kill -9 writes no
    SITE_LEFT) or its leave was lost, and the page reconnected."""
    starts = sorted(span[0] for span in spans)
    out: list[tuple[float, float, bool]] = []
    for start, end in spans:
        if math.isnan(end):
            later = bisect.bisect_right(starts, start)
            if later < len(starts):
                out.append((start, starts[later], False))
                continue
            out.append((start, end, True))
        else:
            out.append((start, end, False))
    return out


def _pair_leaves(leaves: list[Event], paired: dict[str, list[float]]) -> list[Event]:
    """Close paired connections by their ``conn``; return the leaves with no pair."""
    rest: list[Event] = []
    for event in leaves:
        span = paired.get(str(event.data.get("conn") or ""))
        if span is None:
            rest.append(event)
        elif math.isnan(span[1]) or event.at > span[1]:
            span[1] = event.at
    for span in paired.values():
        if span[1] < span[0]:  # False for nan
            span[0], span[1] = span[1], span[0]  # skewed clocks: leave stamped before join
    return rest


def _counted(joins: list[Event], leaves: list[Event]) -> list[tuple[float, float, bool]]:
    """Intervals from time-sorted joins/leaves without connection ids, by a count of open
    connections (a leave and a join at the same instant: the leave first)."""
    spans: list[tuple[float, float, bool]] = []
    depth, since, j, n = 0, 0.0, 0, len(joins)
    for leave in leaves:
        at = leave.at
        while j < n and joins[j].at < at:
            if depth == 0:
                since = joins[j].at
            depth, j = depth + 1, j + 1
        if depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((since, at, False))
    if j < n and depth == 0:
        since = joins[j].at
    depth += n - j
    if depth > 0:
        spans.append((since, math.nan, True))
    return spans


def merge(spans: list[tuple[float, float, bool]]) -> list[Interval]:
    """Merge overlapping or touching intervals (two tabs, two nodes, reconnects)."""
    spans.sort(key=lambda s: s[0])
    merged: list[list[Any]] = []
    for start, end, is_open in spans:
        if merged and start <= merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], end)
            last[2] = last[2] or is_open
        else:
            merged.append([start, end, is_open])
    return [Interval(start, end, is_open) for start, end, is_open in merged]


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Length of the overlap of [a0, a1] and [b0, b1]."""
    return max(0.0, min(a1, b1) - max(a0, b0))


__all__ = ["Interval", "connected_intervals", "merge", "overlap"]
