"""Every class this node serves: a registry of rooms (server/room.py), the ledger's event
ids, going live, the mid-class prompt and the end of a class (by a person, or by itself at its
planned end plus a grace: server/timetable.py).

The hub never sees a socket. A page is a `Peer` (server/peer.py) with an outbox;
routes/ws.py moves frames between the socket and the outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from server.models import ClassSession, Event, EventKind, Site
from server.peer import (  # re-exported: routes and tests import them from here
    CONNECTED,
    OUTBOX_SIZE,
    WATCHERS,
    Peer,
    SiteState,
    iso,
    session_wire,
    site_wire,
)
from server.room import ClassLive, channel_of, event_id, open_connections
from server.store.base import Store
from server.timetable import due_to_end, mid_prompt_at

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HubLimits:
    """Timings of the hub (shortened by tests)."""

    batch_interval_s: float = 1.0
    presence_ttl_s: float = 45.0
    quality_event_every_s: float = 15.0
    # the mid prompt this long after going live; default: half the planned class, else 45 min
    mid_prompt_s: float | None = None
    subscribe_timeout_s: float = 5.0  # a class opens without waiting longer for pub/sub
    open_questions_per_site: int = 5  # a site's unanswered questions (reports.question)
    open_help_per_site: int = 3  # a site's unresolved help requests (reports.help_request)
    end_headcount_s: float = 900.0  # the end prompt's headcount is taken this long after the end
    auto_end_grace_s: float = 1800.0  # a class ends by itself this long after ends_at; 0: never
    room_linger_s: float = 60.0  # an ended class's room is closed this long after its last page


class Hub:
    """Every class this node serves, created on first use and rebuilt from the store."""

    def __init__(
        self,
        store: Store,
        node_id: str,
        limits: HubLimits | None = None,
        clock: Callable[[], float] = time.time,
        live_probe: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.store, self.node_id = store, node_id
        self.limits = limits or HubLimits()
        self.clock = clock
        self.started_at = clock()  # media spells this node recorded before it are gone
        self.live_probe = live_probe  # is this class's lecture live right now (any node)?
        self.on_class_ended: Callable[[str], Awaitable[None]] | None = None
        # a site's join key was rotated: close its media in that class (sid, site)
        self.on_site_revoked: Callable[[str, str], Awaitable[None]] | None = None
        # a site chose "auto" or "audio_only": apply it to this node's viewers (sid, site, mode)
        self.on_media_mode: Callable[[str, str, str], None] | None = None
        # a director cut to a presenter (sid, presenter): the node holding their source cuts
        self.on_cue: Callable[[str, str], Awaitable[None]] | None = None
        # this node ended a class (a person or its planned end): the summary goes out once
        self.on_ended_here: Callable[[ClassSession], None] | None = None
        self._ending: set[str] = set()
        self._rooms: dict[str, asyncio.Task[ClassLive]] = {}

    async def room(self, session: ClassSession) -> ClassLive:
        """The live state of `session` on this node (created once, concurrently safe)."""
        task = self._rooms.get(session.id)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.create_task(self._open_room(session))
            self._rooms[session.id] = task
        return await asyncio.shield(task)

    def open_room(self, sid: str) -> ClassLive | None:
        """The class's room when it is open and started on this node (no store read), else
        None: the caller reads the class and opens it with `room()`."""
        task = self._rooms.get(sid)
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def forget(self, room: ClassLive) -> None:
        """Drop an ended class's room (it stops itself): the next `room()` opens it again
        from the ledger, e.g. for a report."""
        task = self._rooms.get(room.session.id)
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            if task.result() is room:
                del self._rooms[room.session.id]

    async def _open_room(self, session: ClassSession) -> ClassLive:
        sites = await self.expected_sites(session)
        room = ClassLive(self, session, sites)
        await room.start()
        return room

    async def resume(self, now: float, window_s: float = 2 * 86400) -> None:
        """After a (re)start: open the classes planned around now that have not ended, so
        their state is rebuilt and connections a crash left open are closed."""
        for session in await self.store.list_sessions():
            if session.ended_at is None and abs(session.starts_at - now) < window_s:
                try:
                    await self.room(session)
                except Exception:  # opened again on first use (room() retries a failed open)
                    log.exception("could not reopen a class", extra={"sid": session.id})

    async def expected_sites(self, session: ClassSession) -> list[Site]:
        """The sites a class expects: its list, or the whole registry when the list is empty."""
        if not session.site_codes:
            return await self.store.list_sites()
        return await self.store.get_sites(session.site_codes)

    def event(
        self,
        sid: str,
        kind: EventKind,
        site: str | None = None,
        data: dict[str, Any] | None = None,
        ref: str | None = None,
    ) -> Event:
        """A new ledger event; `ref` (a page's message id) makes its id repeatable, so a
        message resent after a reconnect is stored once."""
        return Event(
            session_id=sid,
            kind=kind,
            at=self.clock(),
            site_code=site,
            data=data or {},
            id=event_id(sid, site, kind, ref),
            node=self.node_id,
        )

    async def append(
        self,
        sid: str,
        kind: EventKind,
        site: str | None = None,
        data: dict[str, Any] | None = None,
        ref: str | None = None,
    ) -> Event:
        """Append to the ledger; returns once durable (the earlier event for a resent `ref`)."""
        return await self.store.append(self.event(sid, kind, site, data, ref))

    async def set_live(self, session: ClassSession, live: bool) -> None:
        """The lecturer started or stopped sending: tell every page; prompt headcounts."""
        room = await self.room(session)
        room.session = session
        # A room opened by this very call probed the lecture and found it live already: the
        # class's first start must still be recorded (its event, started_at, the prompt).
        first = live and session.started_at is None
        if live == room.live and not first:
            return
        room.live = live
        started_at = session.started_at
        if live:
            await self.append(session.id, EventKind.CLASS_STARTED)
            if started_at is None:
                started_at = self.clock()
                room.session = dataclasses.replace(session, started_at=started_at)
                await self.store.put_session(room.session)
                await self.prompt(room, "start")  # the first time only, as before the ledger knew
        await room.broadcast(
            {"roles": ["site", "moderator", "lecturer", "admin"]},
            {"type": "live", "live": live},
            t="live",
            live=live,
            started_at=started_at,
        )

    async def set_presenters(
        self, session: ClassSession, states: dict[str, str], on_air: str | None, cut: bool
    ) -> None:
        """The presenters' sources changed (the node holding them says): every page learns
        each one's state; a `cut` (who is on air changed) goes into the ledger, ON_AIR for
        the one now on air, OFF_AIR when nobody's media goes out any more."""
        room = await self.room(session)
        if cut:
            if on_air is not None:
                await self.append(session.id, EventKind.ON_AIR, data={"presenter": on_air})
            elif room.on_air is not None:
                await self.append(session.id, EventKind.OFF_AIR, data={"presenter": room.on_air})
        room.presenter_states, room.on_air = dict(states), on_air
        await room.broadcast(
            {"roles": ["site", "moderator", "lecturer", "admin"]},
            room.presenters_message(),
            t="presenters",
            states=states,
            on_air=on_air,
        )

    async def cue(self, session: ClassSession, presenter: str) -> None:
        """Ask whichever node holds `presenter`'s source to cut to it."""
        room = await self.room(session)
        await self.store.publish(room.channel, {"t": "cue", "presenter": presenter})

    async def prompt(self, room: ClassLive, phase: str) -> None:
        """Ask every page for a headcount, once per class and phase whatever the nodes and the
        restarts: the ledger remembers it (one PROMPT event per phase, by its ref)."""
        if phase in room.prompted:
            return
        event = self.event(room.session.id, EventKind.PROMPT, None, {"phase": phase}, f"p:{phase}")
        stored = await self.store.append(event)
        room.prompted.add(phase)
        if (stored.node, stored.at) != (event.node, event.at):
            return  # another node, or this one before a restart, sent it already
        await room.broadcast(
            {"all": True}, {"type": "headcount_prompt", "phase": phase}, t="prompted", phase=phase
        )

    async def prompt_if_due(self, room: ClassLive) -> None:
        """The mid-class prompt, due at the middle of the planned class after it went live
        (server/timetable.py): derived from the class's times, not a timer a restart loses."""
        session = room.session
        due = mid_prompt_at(session, self.limits.mid_prompt_s)
        if session.ended_at is None and due is not None and self.clock() >= due:
            await self.prompt(room, "mid")

    async def end_class(self, session: ClassSession, at: float | None = None) -> ClassSession:
        """End the class once: ledger, stored class, end-of-class prompt, `class_ended`.
        `at`: the end to record when it is not now (a class ending by itself ended at its
        planned end; the grace after it was only a wait for a person to end it)."""
        room = await self.room(session)
        current = await self.store.get_session(session.id) or session
        if current.ended_at is not None:
            return current
        now = self.clock()
        ended_at = now if at is None else min(at, now)
        ended = dataclasses.replace(current, ended_at=ended_at)
        room.session, room.end_announced_at = ended, now  # refuses site reports at once
        await self.store.put_session(ended)
        # one CLASS_ENDED however many nodes (or an operator and the clock) end it together
        event = self.event(session.id, EventKind.CLASS_ENDED, data={"announced_at": now}, ref="end")
        await self.store.append(dataclasses.replace(event, at=ended_at))
        await self.prompt(room, "end")
        await room.broadcast(
            {"roles": ["site", "moderator", "lecturer", "admin"]},
            {"type": "class_ended"},
            t="ended",
            at=ended_at,
            announced_at=now,
        )
        if self.on_ended_here is not None:
            self.on_ended_here(ended)
        return ended

    async def end_if_due(self, session: ClassSession) -> None:
        """End the class if its planned end plus the grace has passed (once, however often
        the rooms' loops and the sweep ask)."""
        if not due_to_end(session, self.clock(), self.limits.auto_end_grace_s):
            return
        if session.id in self._ending:
            return
        self._ending.add(session.id)
        try:
            await self.end_class(session, at=session.ends_at)
            log.info("class ended by itself at its planned end", extra={"sid": session.id})
        finally:
            self._ending.discard(session.id)

    async def end_overdue(self) -> None:
        """End every class whose planned end plus the grace has passed: at start (it passed
        while the server was down) and now and then for classes no page has opened here."""
        for session in await self.store.list_sessions():
            try:
                await self.end_if_due(session)
            except Exception:
                log.exception("could not end a class at its planned end", extra={"sid": session.id})

    async def revoke_site(self, code: str) -> int:
        """A site's join key changed: close its open pages in every class not ended, on every
        node (their old token no longer opens a new one). Returns how many classes."""
        classes = 0
        for session in await self.store.list_sessions():
            if session.ended_at is None and (not session.site_codes or code in session.site_codes):
                await self.store.publish(
                    channel_of(session.id),
                    {
                        "t": "revoked",
                        "site": code,
                        "to": {"site": code},
                        "deliver": {"type": "revoked"},
                    },
                )
                classes += 1
        return classes

    async def close(self) -> None:
        for task in self._rooms.values():
            if task.done() and task.exception() is None:
                await task.result().stop()
            else:
                task.cancel()
        self._rooms.clear()


__all__ = [
    "CONNECTED",
    "OUTBOX_SIZE",
    "WATCHERS",
    "ClassLive",
    "Hub",
    "HubLimits",
    "Peer",
    "SiteState",
    "event_id",
    "iso",
    "open_connections",
    "session_wire",
    "site_wire",
]
