"""Domain records shared by the store, the attendance ledger and the routes.

Pure data: imports neither aiohttp nor aiortc. Times are UTC epoch seconds (float).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Role(str, enum.Enum):
    """Who a token speaks for. What each role may do is data, in server/roles.py."""

    ADMIN = "admin"
    LECTURER = "lecturer"
    MODERATOR = "moderator"
    SITE = "site"  # the operator's player page in a village hall
    PARTICIPANT = "participant"  # a person checking in from a phone


class EventKind(str, enum.Enum):
    """Kinds of attendance-ledger events (append-only, per class)."""

    CLASS_STARTED = "class_started"  # lecturer went live (first time or again)
    CLASS_ENDED = "class_ended"
    # a site's page opened / closed its WebSocket: data {"conn": str, "attendance": "media"};
    # "attendance": "media" (written since media attendance) says the site's media events,
    # not its page, make its attendance (server/attendance.py)
    SITE_JOINED = "site_joined"
    SITE_LEFT = "site_left"
    # media started / stopped flowing to a site's WHEP viewer (ICE consent + DTLS done, RTCP or
    # consent heard lately): data {"conn": str} (one id per flowing spell of one viewer)
    MEDIA_UP = "media_up"
    MEDIA_DOWN = "media_down"
    HEADCOUNT = "headcount"  # data: {"count": int, "phase": "start"|"mid"|"end"|"other"}
    CHECKIN = "checkin"  # data: {"name": str, "ident": str|None, "by": "qr"|"operator"}
    HELP_REQUESTED = "help_requested"  # data: {"help_id": str, "reason": str, "text": str}
    HELP_RESOLVED = "help_resolved"  # data: {"help_id": str, "by": str}
    QUESTION = "question"  # data: {"question_id": str, "text": str}
    # a moderator forwarded or dismissed a question: data {"question_id", "by", "how"}
    QUESTION_CLOSED = "question_closed"
    QUALITY = "quality"  # data: {"rtt_ms", "loss_pct", "jitter_ms", "kbps", "fps", "class"}
    # the programme: a presenter went on air (data {"presenter": id, "by": role}), or the
    # on-air presenter's media stopped with nobody cut to (data {"presenter": id})
    ON_AIR = "on_air"
    OFF_AIR = "off_air"
    # a headcount prompt went out to every page (once per phase): data {"phase": "start"|"mid"|"end"}
    PROMPT = "prompt"
    # a site watched the class's recording: data {"seconds": float} since its last report
    REPLAY = "replay"


@dataclasses.dataclass(frozen=True, slots=True)
class Site:
    """A viewing site (village cultural house) from the registry."""

    code: str  # stable id, e.g. "HY-TX-001"; [A-Za-z0-9_.-]{1,64}
    name: str
    village: str = ""  # village / residential group (thôn, tổ dân phố)
    commune: str = ""
    province: str = ""
    join_key: str = ""  # secret used to mint this site's tokens; never shown to others


DEFAULT_PRESENTER = "p1"


@dataclasses.dataclass(frozen=True, slots=True)
class Presenter:
    """One presenter of a class: their own studio link and token; the first is the lead."""

    id: str  # [a-z0-9_-]{1,32}, unique in the class ("p1", "p2", ... unless given)
    name: str = ""
    organisation: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ClassSession:
    """One class ("buổi học"): a lecture at a planned time, with the sites expected."""

    id: str  # [A-Za-z0-9_-]{1,64}
    title: str
    starts_at: float  # planned start, UTC epoch seconds
    ends_at: float | None = None  # planned end, if known
    video_codec: str = "VP8"  # "VP8" or "H264", fixed before sites connect
    site_codes: tuple[str, ...] = ()  # expected sites; empty = every site in the registry
    created_at: float = 0.0
    started_at: float | None = None  # first time the lecturer went live
    ended_at: float | None = None  # when the lecturer or a moderator ended it
    presenters: tuple[Presenter, ...] = ()  # empty: one default presenter (`lineup`)

    def lineup(self) -> tuple[Presenter, ...]:
        """The class's presenters, lead first: a class created without any has one."""
        return self.presenters or (Presenter(DEFAULT_PRESENTER),)

    def presenter(self, presenter_id: str | None) -> Presenter | None:
        """The presenter with this id (None: the lead), or None when there is none."""
        lineup = self.lineup()
        if presenter_id is None:
            return lineup[0]
        return next((p for p in lineup if p.id == presenter_id), None)


@dataclasses.dataclass(frozen=True, slots=True)
class ShortLink:
    """A short join link `/j/<code>`: which hall of which class it opens (server/halllinks.py)."""

    code: str
    sid: str
    site: str


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One attendance-ledger event. `seq` is assigned by the store on append (1, 2, ...)."""

    session_id: str
    kind: EventKind
    at: float  # when it happened, UTC epoch seconds (server clock of the node that saw it)
    site_code: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = ""  # unique id chosen by the producer (uuid4 hex); appends are idempotent on it
    node: str = ""  # node that recorded it
    seq: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    """An organiser's or moderator's account for the pages (`lopso users add`)."""

    name: str  # [A-Za-z0-9_.@-]{1,64}
    role: Role  # Role.ADMIN or Role.MODERATOR
    password_hash: str  # argon2id, PHC string (server/accounts.py)
    communes: tuple[str, ...] = ()  # a moderator's communes; empty: every commune
    created_at: float = 0.0
    signed_out_at: float = 0.0  # its last sign-out: sessions signed before are over


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """A cluster node's heartbeat (cluster mode only)."""

    id: str
    role: str  # "all" | "origin" | "edge"
    http_url: str  # where other nodes / load balancers reach its HTTP API
    media_host: str  # address viewers send media to
    media_port: int
    load: float  # viewers carried / capacity, 0..1+
    viewers: int
    lectures: tuple[str, ...] = ()  # session ids this node currently carries
    at: float = 0.0
