"""What the hub knows of a page and a site, and how classes and sites look on the wire.

A page is a `Peer` with an outbox: routes/ws.py moves frames between the socket and the
outbox, the hub never sees a socket. `SiteState` is one site's live state as moderators see
it, patched by every node of a cluster. Pure: no aiohttp, no store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from server.models import ClassSession, Event, Presenter, Role, Site

log = logging.getLogger(__name__)

WATCHERS = frozenset({Role.MODERATOR, Role.LECTURER, Role.ADMIN})
CONNECTED = frozenset({"playing", "connecting", "reconnecting", "waiting", "stalled", "error"})
OUTBOX_SIZE = 512


def iso(at: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string (`...Z`), None stays None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def session_wire(session: ClassSession) -> dict[str, Any]:
    """A class as the API and pages show it."""
    return {
        "id": session.id,
        "title": session.title,
        "starts_at": iso(session.starts_at),
        "ends_at": iso(session.ends_at),
        "video_codec": session.video_codec,
        "site_codes": list(session.site_codes),
        "started_at": iso(session.started_at),
        "ended_at": iso(session.ended_at),
        "presenters": lineup_wire(session),
    }


def presenter_wire(presenter: Presenter, lead: bool, state: str | None = None) -> dict[str, Any]:
    """A presenter as the API and pages show them (with their state when known)."""
    wire: dict[str, Any] = {
        "id": presenter.id,
        "name": presenter.name,
        "organisation": presenter.organisation,
        "lead": lead,
    }
    if state is not None:
        wire["state"] = state
    return wire


def lineup_wire(session: ClassSession, states: dict[str, str] | None = None) -> list[Any]:
    """Every presenter of a class, lead first, with their state when `states` is given."""
    lineup = session.lineup()
    return [
        presenter_wire(p, i == 0, None if states is None else states.get(p.id, "offline"))
        for i, p in enumerate(lineup)
    ]


def site_wire(site: Site) -> dict[str, str]:
    """A registry site as others may see it (never the join key)."""
    return {
        "code": site.code,
        "name": site.name,
        "village": site.village,
        "commune": site.commune,
        "province": site.province,
    }


PATHS = ("udp", "tcp", "turn")
"""How a site's media reaches it: UDP, ICE-TCP on the media port, or through a TURN relay."""


@dataclasses.dataclass
class SiteState:
    """One site's live state in a class, as moderators see it."""

    code: str
    name: str
    commune: str
    status: str = "never_joined"
    headcount: int | None = None
    peak_headcount: int | None = None
    quality: str | None = None
    rtt_ms: float | None = None
    loss_pct: float | None = None
    kbps: float | None = None
    rejoins: int = 0
    since: float | None = None
    help_open: int = 0
    checkins: int = 0
    joins: int = 0
    media_mode: str = "auto"  # the site's own choice: "auto" | "audio_only" (media_mode)
    media: bool = False  # media flows to one of its viewers, as the server sees it
    path: str | None = None  # how that media reaches it: one of PATHS (None: no media)

    def wire(self) -> dict[str, Any]:
        """The protocol's site state object."""
        return {
            "code": self.code,
            "name": self.name,
            "commune": self.commune,
            "status": self.status,
            "headcount": self.headcount,
            "peak_headcount": self.peak_headcount,
            "quality": self.quality,
            "rtt_ms": self.rtt_ms,
            "loss_pct": self.loss_pct,
            "kbps": self.kbps,
            "rejoins": self.rejoins,
            "since": iso(self.since),
            "help_open": self.help_open,
            "checkins": self.checkins,
            "media_mode": self.media_mode,
            "media": self.media,
            "path": self.path,
        }

    def apply(self, patch: dict[str, Any]) -> None:
        """Take the fields of a patch published by any node."""
        for key, value in patch.items():
            if key in _PATCHABLE:
                setattr(self, key, value)

    def add(self, counts: dict[str, Any]) -> None:
        """Take a node's counter increments (check-ins, joins): increments from several nodes
        add up, where absolute counts would overwrite each other."""
        for key, step in counts.items():
            if key in COUNTERS:
                setattr(self, key, getattr(self, key) + int(step))
        self.rejoins = max(0, self.joins - 1)


COUNTERS = frozenset({"checkins", "joins"})  # what nodes publish as increments (ClassLive.tally)
_PATCHABLE = frozenset(f.name for f in dataclasses.fields(SiteState)) - {"code", "name", "commune"}


class Peer:
    """One open page: who it is and a bounded outbox that routes/ws.py drains to the socket."""

    def __init__(
        self,
        sid: str,
        role: Role,
        site: Site | None = None,
        scope: frozenset[str] | None = None,
        presenter: str | None = None,
    ) -> None:
        self.sid, self.role, self.site = sid, role, site
        # a commune moderator's page: the codes of the class's sites it may see (None: all)
        self.scope = scope
        self.presenter = presenter  # a studio page: which presenter it is
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_SIZE)
        self.closed = False
        self.conn = uuid.uuid4().hex[:12]  # this connection, in SITE_JOINED / SITE_LEFT

    @property
    def site_code(self) -> str | None:
        return self.site.code if self.site else None

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message; a page too slow to take OUTBOX_SIZE messages is disconnected."""
        if self.closed:
            return
        if self.scope is not None:
            scoped = within(message, self.scope)
            if scoped is None:
                return
            message = scoped
        if self.outbox.full():
            log.warning(
                "page too slow, closing it", extra={"sid": self.sid, "site": self.site_code}
            )
            self.shut()
            return
        self.outbox.put_nowait(message)

    def shut(self) -> None:
        """Ask the socket side to close this page."""
        if not self.closed:
            self.closed = True
            if self.outbox.full():  # make room for the close: the page is going anyway
                self.outbox.get_nowait()
            self.outbox.put_nowait(None)

    def matches(self, to: dict[str, Any]) -> bool:
        """True when a delivery addressed `to` is meant for this page."""
        if "roles" in to:
            return bool(self.role.value in to["roles"])
        if self.site is None:
            return False
        if to.get("all"):
            return True
        if "site" in to:
            return bool(self.site.code == to["site"])
        if "commune" in to:
            return bool(self.site.commune == to["commune"])
        return False


SCOPED_LISTS = ("sites", "alerts", "incidents", "questions", "help")


def within(message: dict[str, Any], scope: frozenset[str]) -> dict[str, Any] | None:
    """`message` as a page that sees only the sites in `scope` may get it: about another
    site, None; its lists of sites, alerts, incidents, questions and help only of its own.
    Totals are the room's to scope (ClassLive.totals): they are not derivable from an update."""
    if message.get("site") is not None and message["site"] not in scope:
        return None
    lists = [key for key in SCOPED_LISTS if isinstance(message.get(key), list)]
    if not lists:
        return message
    out = dict(message)
    for key in lists:
        out[key] = [
            item
            for item in message[key]
            if not isinstance(item, dict) or item.get("site", item.get("code")) in scope
        ]
    return out


def question_wire(event: Event) -> dict[str, Any]:
    """A question as watchers see it."""
    return {
        "site": event.site_code,
        "question_id": event.data.get("question_id"),
        "text": event.data.get("text", ""),
        "at": iso(event.at),
    }
