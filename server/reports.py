"""What a site reports during a class: headcounts, quality, help requests, questions and
check-ins. Each is appended to the ledger (durably, before the page gets its ack), then
patched into the room's live state on every node (server/room.py).

A site may have only so many questions unanswered and help requests unresolved at once
(`HubLimits`): every moderator page is sent all of them when it connects, so one site link
must not be able to bury the moderators.

Once the class has ended its attendance is final: headcounts, questions, help requests and
check-ins are refused (`AfterEndError`), quality reports are ignored. One exception: the
end-of-class headcount the end prompt asks for (phase ``end``) is taken for
`HubLimits.end_headcount_s` after the end was announced (a class that ended by itself is
recorded as ended at its planned end, announced later).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from server.checkin import Checkin, dedupe_key, reply_as_duplicate
from server.models import EventKind
from server.peer import iso, question_wire
from server.quality import QualityClass, classify_sample
from server.room import ClassLive, event_id


class AfterEndError(Exception):
    """The class has ended: a site's report would change its final attendance."""

    code = "class_ended"


def refuse_after_end(room: ClassLive, what: str, *, grace_s: float = 0.0) -> None:
    """Raise AfterEndError when the class's end was announced more than `grace_s` ago."""
    ended_at = room.session.ended_at
    if ended_at is None:
        return
    announced = room.end_announced_at if room.end_announced_at is not None else ended_at
    if room.hub.clock() - announced >= grace_s:
        raise AfterEndError(f"the class has ended: no {what} is taken any more")


class TooManyOpenError(Exception):
    """A site already has as many open questions or help requests as it may; it asks again
    once a moderator has answered, forwarded or resolved one."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


async def headcount(
    room: ClassLive, code: str, count: int, phase: str, ref: str | None = None
) -> None:
    grace_s = room.hub.limits.end_headcount_s if phase == "end" else 0.0
    refuse_after_end(room, "headcount", grace_s=grace_s)
    await room.hub.append(
        room.session.id, EventKind.HEADCOUNT, code, {"count": count, "phase": phase}, ref
    )
    state = room.sites[code]
    await room.patch(code, headcount=count, peak_headcount=max(count, state.peak_headcount or 0))


async def quality(room: ClassLive, code: str, sample: dict[str, Any]) -> None:
    """Record a quality report: live figures now, a ledger sample every ~15 s; nothing once
    the class has ended (the player may still run, the lecture no longer does)."""
    if room.session.ended_at is not None:
        return
    klass = classify_sample(sample)
    if klass is QualityClass.LOST and not room.live:
        klass = None  # no lecture, no media: nothing is lost before (or between) lectures
    value = klass.value if klass else None
    now = room.hub.clock()
    if now - room.quality_sampled_at.get(code, 0.0) >= room.hub.limits.quality_event_every_s:
        room.quality_sampled_at[code] = now
        await room.hub.append(room.session.id, EventKind.QUALITY, code, {**sample, "class": value})
    await room.patch(
        code,
        quality=value,
        rtt_ms=sample.get("rtt_ms"),
        loss_pct=sample.get("loss_pct"),
        kbps=sample.get("kbps"),
    )


async def help_request(
    room: ClassLive, code: str, reason: str, text: str, ref: str | None = None
) -> str:
    help_id = event_id(room.session.id, code, EventKind.HELP_REQUESTED, ref)[:12]
    if help_id in room.known_help:
        return help_id  # a resend
    refuse_after_end(room, "help request")
    open_ids = room.open_help.setdefault(code, set())
    limit = room.hub.limits.open_help_per_site
    if max(len(open_ids), room.sites[code].help_open) >= limit:  # help_open: every node's
        raise TooManyOpenError(
            f"site {code} has {limit} help requests open; a moderator resolves one first",
            code="too_many_help",
        )
    # held before the write, so pages writing at the same moment cannot pass the cap together
    room.known_help.add(help_id)
    open_ids.add(help_id)
    try:
        event = await room.hub.append(
            room.session.id,
            EventKind.HELP_REQUESTED,
            code,
            {"help_id": help_id, "reason": reason, "text": text},
            ref,
        )
    except BaseException:
        room.known_help.discard(help_id)
        open_ids.discard(help_id)
        raise
    await room.patch(code, help_open=len(room.open_help[code]))
    body = {
        "type": "help",
        "site": code,
        "help_id": help_id,
        "reason": reason,
        "text": text,
        "at": iso(event.at),
    }
    await room.broadcast({"roles": ["moderator", "lecturer", "admin"]}, body)
    return help_id


async def resolve_help(room: ClassLive, code: str, help_id: str, by: str) -> bool:
    if help_id not in room.open_help.get(code, set()):
        return False
    await room.hub.append(
        room.session.id, EventKind.HELP_RESOLVED, code, {"help_id": help_id, "by": by}
    )
    room.open_help[code].discard(help_id)
    await room.patch(code, help_open=len(room.open_help[code]))
    await room.broadcast({"site": code}, {"type": "help_resolved", "help_id": help_id})
    return True


async def question(room: ClassLive, code: str, text: str, ref: str | None = None) -> str:
    question_id = event_id(room.session.id, code, EventKind.QUESTION, ref)[:12]
    if question_id in room.questions:
        return question_id  # a resend
    refuse_after_end(room, "question")
    open_ids = room.open_questions.setdefault(code, set())
    limit = room.hub.limits.open_questions_per_site
    if len(open_ids) >= limit:
        raise TooManyOpenError(
            f"site {code} has {limit} questions unanswered; a moderator answers one first",
            code="too_many_questions",
        )
    open_ids.add(question_id)  # held before the write: concurrent pages cannot pass the cap
    try:
        event = await room.hub.append(
            room.session.id,
            EventKind.QUESTION,
            code,
            {"question_id": question_id, "text": text},
            ref,
        )
    except BaseException:
        open_ids.discard(question_id)
        raise
    question = question_wire(event)
    room.questions[question_id] = question
    await room.broadcast(
        {"roles": ["moderator", "admin"]},
        {"type": "question", **question},
        t="question",
        question_id=question_id,
        question=question,
    )
    return question_id


async def close_question(room: ClassLive, question_id: str, by: str, how: str) -> bool:
    """A moderator forwarded (`how` = "forwarded") or dismissed a question: it no longer
    counts against its site. False when no such question is open."""
    question = room.questions.get(question_id)
    code = str(question["site"]) if question is not None else ""
    open_ids = room.open_questions.get(code, set())
    if question_id not in open_ids:
        return False
    open_ids.discard(question_id)  # before the write: two moderators close it once
    try:
        await room.hub.append(
            room.session.id,
            EventKind.QUESTION_CLOSED,
            code,
            {"question_id": question_id, "by": by, "how": how},
            ref=f"closed:{question_id}",  # one event whichever node closes it first
        )
    except BaseException:
        open_ids.add(question_id)
        raise
    await room.broadcast(
        {"roles": ["moderator", "admin"]},
        {"type": "question_closed", "question_id": question_id, "site": code, "how": how},
        t="question_closed",
        site=code,
        question_id=question_id,
    )
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class CheckinReply:
    """What a check-in did (`counted`: a new person) and what its sender is told."""

    event_id: str
    counted: bool
    duplicate: bool  # already counted at this same site (never says so for another site)


async def checkin(room: ClassLive, code: str, person: Checkin) -> CheckinReply:
    """Count a person once (server/checkin.py: an identifier counts once per class, a name
    once per site, without diacritics); the ledger keeps the identifier masked. A person
    counted at another site gets the reply of a fresh check-in, with an id never stored."""
    refuse_after_end(room, "check-in")
    event = room.hub.event(room.session.id, EventKind.CHECKIN, code, person.event_data())
    key = dedupe_key(room.session.id, code, person.name, person.ident)
    stored, created = await room.hub.store.add_checkin(event, key)
    if created:
        await room.tally(code, stored, "checkins")
    duplicate = reply_as_duplicate(created, stored.site_code, code)
    shown = stored.id if created or duplicate else event.id
    return CheckinReply(event_id=shown, counted=created, duplicate=duplicate)
