"""One class on one node: its sites' live state, the pages connected here, the pub/sub loop
that folds every node's site patches into this node's view, and batched moderator updates.

Every broadcast goes through the store's pub/sub (channel `class:<sid>`), so pages on other
nodes of a cluster get it too. The room reaches the store, the clock and the ledger through
its `Hub` (server/hub.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from server.alerts import AlertBook
from server.incidents import open_help, past_alerts
from server.models import ClassSession, Event, EventKind, Role, Site
from server.peer import (
    CONNECTED,
    PATHS,
    WATCHERS,
    Peer,
    SiteState,
    iso,
    lineup_wire,
    question_wire,
    session_wire,
    site_wire,
)

if TYPE_CHECKING:
    from server.hub import Hub

log = logging.getLogger(__name__)


class ClassLive:
    """One class on this node: its sites' state, local pages, and the pub/sub loop."""

    def __init__(self, hub: Hub, session: ClassSession, sites: list[Site]) -> None:
        self.hub, self.session = hub, session
        self.sites = {s.code: SiteState(s.code, s.name, s.commune) for s in sites}
        self.registry = {s.code: s for s in sites}
        self.peers: set[Peer] = set()
        self.local_joins: dict[str, int] = {}
        self.open_help: dict[str, set[str]] = {}
        self.known_help: set[str] = set()
        self.questions: dict[str, dict[str, Any]] = {}
        self.open_questions: dict[str, set[str]] = {}  # by site: not forwarded or dismissed
        self.media_conns: dict[str, dict[str, str | None]] = {}  # by site: conn -> its path
        self.alerts = AlertBook(session.starts_at)  # server/alerts.py, evaluated per batch
        self.dirty: set[str] = set()
        self.live = False
        self.quality_sampled_at: dict[str, float] = {}
        self.origin = uuid.uuid4().hex  # this room instance: its own increments come back
        self.counted_to = 0  # ledger seq folded at start: increments up to it are counted
        self.prompted: set[str] = set()  # headcount prompts sent (phases), from the ledger
        self.end_announced_at: float | None = None  # when the end was announced (not its time)
        self.presenter_states: dict[str, str] = {}  # publishing presenters: standby / on_air
        self.on_air: str | None = None  # the presenter whose media goes out (ledger, then live)
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def channel(self) -> str:
        return channel_of(self.session.id)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Follow the class channel, rebuild state from the ledger and presence, then apply
        what was published meanwhile (increments the ledger read already held are skipped)."""
        subscription = self.hub.store.subscribe(self.channel)
        try:
            await self._rebuild(subscription)
        except BaseException:
            subscription.close()
            raise
        self._tasks.append(asyncio.create_task(self._follow(subscription)))
        self._tasks.append(asyncio.create_task(self._flush_loop()))

    async def _rebuild(self, subscription: Any) -> None:
        try:  # Redis down: start anyway; the store subscribes when it reconnects
            await asyncio.wait_for(subscription.ready(), self.hub.limits.subscribe_timeout_s)
        except TimeoutError:
            log.warning("class channel not live yet, continuing", extra={"sid": self.session.id})
        events = await self.hub.store.events(self.session.id)
        for event in events:
            self._fold(event)
        self.counted_to = max((e.seq for e in events), default=0)
        present = await self.hub.store.presence(self.session.id)
        for code, state in present.items():
            if code in self.sites and isinstance(state, dict):
                self.sites[code].status = str(state.get("status", "connecting"))
        # Connections left open by a crash: closed at the last moment the class was seen alive.
        last_seen = max((e.at for e in events), default=self.hub.clock())
        lost = [  # one pass over the ledger, not one per site
            self.close_lost(code, last_seen, conns)
            for code, conns in open_connections_by_site(events).items()
            if code in self.sites and code not in present
        ]
        await asyncio.gather(*lost)  # appended together: one group commit, not one fsync each
        await self._close_lost_media(events, last_seen)
        # The incident log survives a restart: past drops, late joins, poor spells, help.
        self.alerts.seed(
            past_alerts(self.session, self.registry.values(), events, self.hub.clock())
        )
        if self.hub.live_probe is not None and self.session.ended_at is None:
            self.live = self.live or await self.hub.live_probe(self.session.id)

    async def stop(self) -> None:
        """Stop the room's loops (all but the one calling) and shut its pages."""
        others = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for peer in list(self.peers):
            peer.shut()

    def _fold(self, event: Event) -> None:
        """Apply one ledger event to the site states (rebuilding after a restart)."""
        state = self.sites.get(event.site_code or "")
        if event.kind is EventKind.CLASS_ENDED:
            self.session = dataclasses.replace(self.session, ended_at=event.at)
            self.end_announced_at = float(event.data.get("announced_at", event.at))
        elif event.kind is EventKind.CLASS_STARTED and self.session.started_at is None:
            self.session = dataclasses.replace(self.session, started_at=event.at)
        elif event.kind is EventKind.PROMPT:
            self.prompted.add(str(event.data.get("phase")))
        elif event.kind is EventKind.ON_AIR:
            self.on_air = str(event.data.get("presenter"))
        elif event.kind is EventKind.OFF_AIR:
            self.on_air = None
        if state is None:
            return
        if event.kind is EventKind.SITE_JOINED:
            state.joins += 1
            state.rejoins = max(0, state.joins - 1)
            state.status, state.since = "offline", event.at  # connected again only via presence
        elif event.kind is EventKind.SITE_LEFT:
            state.status, state.since = "offline", event.at
        elif event.kind is EventKind.HEADCOUNT:
            self._count(state, int(event.data.get("count", 0)))
        elif event.kind is EventKind.HELP_REQUESTED:
            self.known_help.add(event.data.get("help_id", ""))
            self.open_help.setdefault(state.code, set()).add(event.data.get("help_id", ""))
            state.help_open = len(self.open_help[state.code])
        elif event.kind is EventKind.HELP_RESOLVED:
            self.open_help.setdefault(state.code, set()).discard(event.data.get("help_id", ""))
            state.help_open = len(self.open_help[state.code])
        elif event.kind is EventKind.QUESTION:
            self.questions[event.data.get("question_id", "")] = question_wire(event)
            self.open_questions.setdefault(state.code, set()).add(event.data.get("question_id", ""))
        elif event.kind is EventKind.QUESTION_CLOSED:
            self.open_questions.setdefault(state.code, set()).discard(
                event.data.get("question_id", "")
            )
        elif event.kind is EventKind.CHECKIN:
            state.checkins += 1
        elif event.kind in (EventKind.MEDIA_UP, EventKind.MEDIA_DOWN):
            up = event.kind is EventKind.MEDIA_UP
            self._media(state, str(event.data.get("conn", "")), up, event.data.get("path"))

    def _media(self, state: SiteState, conn: str, up: bool, path: Any = None) -> None:
        """A site's viewer started or stopped flowing (any node): `media` while one flows,
        `path` the way its newest flowing viewer reaches the server (udp / tcp / turn)."""
        conns = self.media_conns.setdefault(state.code, {})
        if up:
            conns[conn] = str(path) if path in PATHS else None
        else:
            conns.pop(conn, None)
        state.media = bool(conns)
        state.path = next(reversed(conns.values())) if conns else None

    @staticmethod
    def _count(state: SiteState, count: int) -> None:
        state.headcount = count
        state.peak_headcount = max(count, state.peak_headcount or 0)

    # --- pub/sub -----------------------------------------------------------------------------
    async def _follow(self, subscription: Any) -> None:
        async with contextlib.aclosing(subscription):
            async for message in subscription:
                try:
                    self._on_broadcast(message)
                except Exception:
                    log.exception("bad broadcast ignored", extra={"sid": self.session.id})

    def _on_broadcast(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "site":
            state = self.sites.get(message["code"])
            if state is not None:
                state.apply(message["patch"])
                if "add" in message and self._uncounted(message):
                    state.add(message["add"])
                self.dirty.add(state.code)
                mode = message["patch"].get("media_mode")
                if mode is not None and self.hub.on_media_mode is not None:  # every node's viewers
                    self.hub.on_media_mode(self.session.id, state.code, str(mode))
        elif kind == "media":
            state = self.sites.get(message["code"])
            if state is not None:
                self._media(state, str(message["conn"]), bool(message["up"]), message.get("path"))
                self.dirty.add(state.code)
        elif kind == "live":
            self.live = bool(message["live"])
            started_at = message.get("started_at")
            if started_at is not None and self.session.started_at is None:
                self.session = dataclasses.replace(self.session, started_at=float(started_at))
        elif kind == "prompted":
            self.prompted.add(str(message["phase"]))
        elif kind == "presenters":
            self.presenter_states, self.on_air = dict(message["states"]), message["on_air"]
        elif kind == "cue" and self.hub.on_cue is not None:  # the node with the source cuts
            self._tasks.append(
                asyncio.ensure_future(self.hub.on_cue(self.session.id, str(message["presenter"])))
            )
        elif kind == "question":
            self.questions[message["question_id"]] = message["question"]
            site = str(message["question"].get("site"))
            self.open_questions.setdefault(site, set()).add(message["question_id"])
        elif kind == "question_closed":
            self.open_questions.setdefault(message["site"], set()).discard(message["question_id"])
        elif kind == "ended":
            self.session = dataclasses.replace(self.session, ended_at=message["at"])
            self.end_announced_at = float(message.get("announced_at", message["at"]))
            if self.hub.on_class_ended is not None:  # every node closes its media of the class
                task = asyncio.ensure_future(self.hub.on_class_ended(self.session.id))
                self._tasks.append(task)
        if "deliver" in message:
            self._deliver(message["to"], message["deliver"])
        if kind == "revoked":  # the site's join key was rotated: its open pages go too
            for peer in list(self.peers):
                if peer.role is Role.SITE and peer.site_code == message["site"]:
                    peer.shut()
            if self.hub.on_site_revoked is not None:  # and its media, on every node
                revoked = self.hub.on_site_revoked(self.session.id, str(message["site"]))
                self._tasks.append(asyncio.ensure_future(revoked))

    def _uncounted(self, message: dict[str, Any]) -> bool:
        """An increment not yet in this room's counts: not its own (applied when made), not
        one the ledger read at start already folded."""
        return message.get("from") != self.origin and int(message.get("seq", 0)) > self.counted_to

    def _deliver(self, to: dict[str, Any], body: dict[str, Any]) -> None:
        for peer in list(self.peers):
            if peer.matches(to):
                peer.post(body)

    async def broadcast(self, to: dict[str, Any], body: dict[str, Any], **extra: Any) -> None:
        """Send `body` to every page (on any node) addressed by `to`."""
        await self.hub.store.publish(self.channel, {"to": to, "deliver": body, **extra})

    async def patch(self, code: str, **fields: Any) -> None:
        """Change a site's state on every node (moderators get it in the next batch)."""
        self.sites[code].apply(fields)  # local view at once; the echo is idempotent
        self.dirty.add(code)
        await self.hub.store.publish(self.channel, {"t": "site", "code": code, "patch": fields})

    async def tally(self, code: str, event: Event, counter: str, **fields: Any) -> None:
        """`event` (just stored) adds one to a site's `counter` on every node's wall. Published
        as an increment with the event's seq: nodes counting at once add up instead of
        overwriting each other, and a room opened meanwhile does not count it twice."""
        state = self.sites[code]
        state.apply(fields)
        state.add({counter: 1})
        self.dirty.add(code)
        message = {"t": "site", "code": code, "patch": fields, "add": {counter: 1}}
        await self.hub.store.publish(
            self.channel, {**message, "seq": event.seq, "from": self.origin}
        )

    # --- batched updates ---------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        last_sweep = self.hub.clock()
        while True:
            await asyncio.sleep(self.hub.limits.batch_interval_s)
            if self.done():  # an ended class nobody looks at: no loop left behind
                self.hub.forget(self)
                await self.stop()
                log.info("room of an ended class closed", extra={"sid": self.session.id})
                return
            if self.hub.clock() - last_sweep >= self.hub.limits.presence_ttl_s / 3:
                last_sweep = self.hub.clock()
                try:
                    await self.sweep()
                except Exception:
                    log.exception("presence sweep failed", extra={"sid": self.session.id})
            self.flush()
            try:  # what the class's times make due: the mid prompt, the end by itself
                await self.hub.prompt_if_due(self)
                await self.hub.end_if_due(self.session)
            except Exception:
                log.exception("could not act on the class's times", extra={"sid": self.session.id})

    def done(self) -> bool:
        """The class has ended, no page of it is open here, and the linger has passed."""
        ended_at = self.session.ended_at
        return (
            ended_at is not None
            and not self.peers
            and not self.local_joins
            and self.hub.clock() - ended_at >= self.hub.limits.room_linger_s
        )

    async def sweep(self) -> None:
        """Mark offline the sites whose presence expired (their node died without a word),
        and close their connections in the ledger."""
        present = await self.hub.store.presence(self.session.id)
        now = self.hub.clock()
        for code, state in self.sites.items():
            if state.status in CONNECTED and code not in present and code not in self.local_joins:
                await self.close_lost(code, now)
                state.status, state.since = "offline", now
                self.dirty.add(code)

    async def close_lost(self, code: str, at: float, conns: set[str] | None = None) -> None:
        """Append SITE_LEFT for each of the site's connections the ledger still has open and
        no page of this node holds. Idempotent across nodes (the event id comes from `conn`).
        `conns`: the site's open connections when the caller read them from the ledger already."""
        if conns is None:
            kinds = (EventKind.SITE_JOINED, EventKind.SITE_LEFT)
            events = await self.hub.store.events(self.session.id, kinds=kinds, site_code=code)
            conns = open_connections(events, code)
        local = {p.conn for p in self.peers if p.site_code == code}
        for conn in conns - local:
            left = dataclasses.replace(
                self.hub.event(
                    self.session.id,
                    EventKind.SITE_LEFT,
                    code,
                    {"conn": conn, "lost": True},
                    ref=f"lost:{conn}",
                ),
                at=at,
            )
            await self.hub.store.append(left)

    async def _close_lost_media(self, events: list[Event], at: float) -> None:
        """Append MEDIA_DOWN for media spells no running process holds: this node's from
        before it (re)started, and those of nodes with no heartbeat (none without a cluster).
        The id is the one the holder's own MEDIA_DOWN would have: stored once either way."""
        alive = {node.id for node in await self.hub.store.nodes()} - {self.hub.node_id}
        for code, conn in lost_media(events, alive, self.hub.node_id, self.hub.started_at):
            kind = EventKind.MEDIA_DOWN
            down = self.hub.event(
                self.session.id, kind, code, {"conn": conn, "why": "lost"}, f"{kind.value}:{conn}"
            )
            await self.hub.store.append(dataclasses.replace(down, at=at))
            if code in self.sites:
                self._media(self.sites[code], conn, False)

    def flush(self) -> None:
        """Send one `sites_update` with the changed sites (and alerts) to this node's watchers."""
        alerts = self.alerts.evaluate(self.hub.clock(), self.sites.values())
        if not self.dirty and not alerts:
            return
        changed = [self.sites[code].wire() for code in sorted(self.dirty) if code in self.sites]
        self.dirty.clear()
        update = {"type": "sites_update", "sites": changed, "totals": self.totals()}
        if alerts:
            update["alerts"] = [alert.wire() for alert in alerts]
        for peer in list(self.peers):
            if peer.role in WATCHERS:  # a commune moderator's totals: its communes' (peer.py)
                scoped = peer.scope is not None
                peer.post({**update, "totals": self.totals(peer.scope)} if scoped else update)

    def snapshot(self, scope: frozenset[str] | None = None) -> dict[str, Any]:
        """The full `sites` message a watcher gets when it connects (of the sites in `scope`:
        a commune moderator's)."""
        sites = [state.wire() for state in self.sites.values()]
        return {
            "type": "sites",
            "sites": sites,
            "totals": self.totals(scope),
            "alerts": [a.wire() for a in self.alerts.open_alerts()],
            "incidents": [a.wire() for a in self.alerts.incidents(limit=500)],
        }

    async def backlog(self) -> dict[str, Any]:
        """The `backlog` message a moderator gets when it connects: every open question and
        help request (help read from the ledger), oldest first. One message however many
        there are, so a connect never fills the page's outbox."""
        kinds = (EventKind.HELP_REQUESTED, EventKind.HELP_RESOLVED)
        help_open = open_help(await self.hub.store.events(self.session.id, kinds=kinds))
        questions = [
            {"type": "question", **question}
            for question_id, question in self.questions.items()
            if question_id in self.open_questions.get(str(question.get("site")), ())
        ]
        return {"type": "backlog", "questions": questions, "help": help_open}

    def totals(self, scope: frozenset[str] | None = None) -> dict[str, int]:
        """The class's totals (over the sites in `scope` only, when given)."""
        states = [s for s in self.sites.values() if scope is None or s.code in scope]
        return {
            "expected": len(states),
            "connected": sum(1 for s in states if s.status in CONNECTED),
            "playing": sum(1 for s in states if s.status == "playing"),
            "media": sum(1 for s in states if s.media),
            "people": sum(s.headcount or 0 for s in states if s.headcount is not None),
            "help_open": sum(s.help_open for s in states),
        }

    # --- presence ---------------------------------------------------------------------------
    async def join(self, peer: Peer) -> None:
        """A page opened: record a site's connection, then send the welcome (and snapshot)."""
        if peer.role is Role.SITE and peer.site_code is not None:
            await self._site_joined(peer)
        self.peers.add(peer)
        peer.post(self.welcome(peer))
        if peer.role in WATCHERS:
            peer.post(self.snapshot(peer.scope))
            if peer.role is not Role.LECTURER:
                peer.post(await self.backlog())

    async def _site_joined(self, peer: Peer) -> None:
        """Every connection is one SITE_JOINED (with its `conn` id), so a reload is a rejoin."""
        code = peer.site_code or ""
        state = self.sites[code]
        # "attendance": "media": this site's attendance comes from its media (server/attendance.py)
        details = {"conn": peer.conn, "attendance": "media"}
        joined = await self.hub.append(self.session.id, EventKind.SITE_JOINED, code, details)
        self.local_joins[code] = self.local_joins.get(code, 0) + 1
        status = (
            state.status
            if state.status in CONNECTED
            else ("connecting" if self.live else "waiting")
        )
        await self._present(peer, status)
        await self.tally(code, joined, "joins", status=status, since=self.hub.clock())

    async def _present(self, peer: Peer, status: str) -> None:
        await self.hub.store.set_presence(
            self.session.id,
            peer.site_code or "",
            {"status": status, "node": self.hub.node_id, "conn": peer.conn},
            self.hub.limits.presence_ttl_s,
        )

    async def leave(self, peer: Peer) -> None:
        """A page closed: SITE_LEFT; the site goes offline when no page of it is left."""
        self.peers.discard(peer)
        code = peer.site_code
        if code is None or peer.role is not Role.SITE or code not in self.local_joins:
            return
        await self.hub.append(self.session.id, EventKind.SITE_LEFT, code, {"conn": peer.conn})
        self.local_joins[code] -= 1
        if self.local_joins[code] > 0:
            return
        del self.local_joins[code]
        mine = {"node": self.hub.node_id}  # atomic "still mine?": another node may hold it now
        if not await self.hub.store.clear_presence(self.session.id, code, only_if=mine):
            return  # the site is connected through another node now
        await self.patch(code, status="offline", since=self.hub.clock())

    async def refresh(self, peer: Peer, status: str | None = None) -> None:
        """Heartbeat or status from a site page: keep its presence alive, record its status."""
        code = peer.site_code
        if code is None or peer.role is not Role.SITE:
            return
        state = self.sites[code]
        status = status or state.status
        await self._present(peer, status)
        if status != state.status:
            await self.patch(code, status=status, since=self.hub.clock())

    def welcome(self, peer: Peer) -> dict[str, Any]:
        site = site_wire(peer.site) if peer.site else None
        return {
            "type": "welcome",
            "role": peer.role.value,
            "session": session_wire(self.session),
            "site": site,
            "live": self.live,
            "ended": self.session.ended_at is not None,
            "server_time": iso(self.hub.clock()),
            "headcount": self.sites[peer.site.code].headcount if peer.site else None,
            "presenter": peer.presenter,
            "presenters": lineup_wire(self.session, self.presenter_states),
            "on_air": self.on_air,
        }

    def presenters_message(self) -> dict[str, Any]:
        """The `presenters` message: every presenter's state and who is on air."""
        states = self.presenter_states
        return {
            "type": "presenters",
            "presenters": lineup_wire(self.session, states),
            "on_air": self.on_air,
        }


def channel_of(sid: str) -> str:
    """The pub/sub channel of a class: every broadcast and site patch, on every node."""
    return f"class:{sid}"


def open_connections(events: list[Event], code: str) -> set[str]:
    """The `conn` ids of a site's SITE_JOINED events with no SITE_LEFT yet."""
    joined: set[str] = set()
    left: set[str] = set()
    for event in events:
        if event.site_code != code or "conn" not in event.data:
            continue
        if event.kind is EventKind.SITE_JOINED:
            joined.add(str(event.data["conn"]))
        elif event.kind is EventKind.SITE_LEFT:
            left.add(str(event.data["conn"]))
    return joined - left


def open_connections_by_site(events: Iterable[Event]) -> dict[str, set[str]]:
    """Every site's open `conn` ids (SITE_JOINED with no SITE_LEFT yet), in one pass."""
    joined: dict[str, set[str]] = defaultdict(set)
    left: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.site_code is None or "conn" not in event.data:
            continue
        if event.kind is EventKind.SITE_JOINED:
            joined[event.site_code].add(str(event.data["conn"]))
        elif event.kind is EventKind.SITE_LEFT:
            left[event.site_code].add(str(event.data["conn"]))
    found = {code: conns - left[code] for code, conns in joined.items()}
    return {code: conns for code, conns in found.items() if conns}


def lost_media(
    events: Iterable[Event], alive: set[str], node_id: str, started_at: float
) -> list[tuple[str, str]]:
    """(site, conn) of the media spells the ledger has open (MEDIA_UP, no MEDIA_DOWN) that no
    running process holds: recorded by a node not `alive`, or by this node before
    `started_at` (it restarted: its viewers went with it)."""
    opened: dict[str, Event] = {}
    closed: set[str] = set()
    for event in events:
        conn = str(event.data.get("conn", ""))
        if event.kind is EventKind.MEDIA_UP and event.site_code:
            opened[conn] = event
        elif event.kind is EventKind.MEDIA_DOWN:
            closed.add(conn)
    return [
        (str(up.site_code), conn)
        for conn, up in opened.items()
        if conn not in closed
        and (up.node not in alive and (up.node != node_id or up.at < started_at))
    ]


def event_id(sid: str, site: str | None, kind: EventKind, ref: str | None) -> str:
    """A fresh id, or one derived from the sender's message id (idempotent resends)."""
    if ref is None:
        return uuid.uuid4().hex
    key = f"{sid}\x1f{site or ''}\x1f{kind.value}\x1f{ref}".encode()
    return hashlib.sha256(key).hexdigest()[:32]
