"""What a class's times make due: its end by itself, the close of its check-in links, the
mid-class headcount prompt.

Pure rules: no I/O, imports neither aiohttp, aiortc nor redis. Times are UTC epoch seconds.
Everything here is derived from the stored class (and the ledger), never from a timer, so a
restart neither loses nor repeats what was due while the server was down.
"""

from __future__ import annotations

from server.models import ClassSession

DEFAULT_MID_PROMPT_S = 45 * 60.0  # after going live, for a class without a planned end
UNPLANNED_LINK_S = 12 * 3600.0  # a QR link of a class without a planned end: one day's class


def auto_end_at(session: ClassSession, grace_s: float) -> float | None:
    """When the class ends by itself: its planned end plus `grace_s`. None when it has ended
    already, has no planned end, or the organiser turned this off (`grace_s` 0)."""
    if grace_s <= 0 or session.ends_at is None or session.ended_at is not None:
        return None
    return session.ends_at + grace_s


def due_to_end(session: ClassSession, now: float, grace_s: float) -> bool:
    """True when the class should end by itself now (see `auto_end_at`)."""
    at = auto_end_at(session, grace_s)
    return at is not None and now >= at


def checkin_closes_at(session: ClassSession, grace_s: float) -> float | None:
    """When participant check-in links stop working: the class's end (actual, else planned)
    plus `grace_s`. None when neither is known (the link's own expiry holds)."""
    end = session.ended_at if session.ended_at is not None else session.ends_at
    return None if end is None else end + grace_s


def checkin_link_expiry(session: ClassSession, now: float, grace_s: float) -> float:
    """The expiry to give a participant's check-in link minted now: when check-in closes
    (`checkin_closes_at`), else (no planned end) `UNPLANNED_LINK_S` from now."""
    closes = checkin_closes_at(session, grace_s)
    return closes if closes is not None else now + UNPLANNED_LINK_S


def mid_prompt_at(session: ClassSession, delay_s: float | None = None) -> float | None:
    """When the mid-class headcount prompt is due: the middle of the planned class after the
    lecturer first went live (`delay_s` after it, when given; 45 min without a planned end).
    None before the class has gone live."""
    if session.started_at is None:
        return None
    if delay_s is None:
        planned = session.ends_at - session.starts_at if session.ends_at is not None else None
        delay_s = planned / 2 if planned is not None else DEFAULT_MID_PROMPT_S
    return session.started_at + max(delay_s, 0.0)


__all__ = [
    "DEFAULT_MID_PROMPT_S",
    "auto_end_at",
    "UNPLANNED_LINK_S",
    "checkin_closes_at",
    "checkin_link_expiry",
    "due_to_end",
    "mid_prompt_at",
]
