"""A site's media, as the server sees it, into the attendance ledger: MEDIA_UP / MEDIA_DOWN.

media/ says when a site's WHEP viewer starts or stops flowing (`Viewer.on_flow`: connected,
then heard from by RTCP or consent checks, or unheard for `LOPSO_MEDIA_SILENCE`, or closed).
Each flowing spell gets its own connection id; the events go to the shared store from
whichever node holds the viewer (an edge of a cluster too), durably like every ledger event,
and a `media` broadcast on the class channel tells every node's room (the wall's "page open,
no media"). Relay links between nodes are not sites: only WHEP viewers are recorded.
A MEDIA_UP also says the viewer's path ("udp", "tcp" for ICE-TCP, "turn" through a relay),
which the moderator wall shows per site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from server.models import EventKind
from server.room import channel_of

if TYPE_CHECKING:
    from media import FlowChange
    from server.hub import Hub

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class FlowRecorder:
    """One site viewer's flow changes, recorded in order (a down never overtakes its up)."""

    def __init__(self, hub: Hub, sid: str, site: str, resource: str, spawn: Spawn) -> None:
        self.hub, self.sid, self.site, self.resource = hub, sid, site, resource
        self.spawn = spawn
        self.spells = 0
        self.open: str | None = None  # the connection id of the spell flowing now
        self._last: asyncio.Future[None] | None = None

    def __call__(self, change: FlowChange) -> None:
        """`Viewer.on_flow`: called from the media loop, records in the background."""
        at = self.hub.clock() - change.ago_s
        if change.flowing:
            if self.open is not None:
                return
            self.spells += 1
            conn = self.open = f"{self.resource}.{self.spells}"
            kind = EventKind.MEDIA_UP
        else:
            if self.open is None:
                return
            conn, self.open = self.open, None
            kind = EventKind.MEDIA_DOWN
        previous, done = self._last, asyncio.get_running_loop().create_future()
        self._last = done
        path = change.path if change.flowing else None
        self.spawn(self._record(kind, conn, at, change.reason, path, previous, done))

    async def _record(
        self,
        kind: EventKind,
        conn: str,
        at: float,
        reason: str,
        path: str | None,
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None],
    ) -> None:
        try:
            if previous is not None:
                await previous
            await record(self.hub, self.sid, self.site, kind, conn, at, reason, path)
        except Exception:
            log.exception(
                "media event not recorded",
                extra={"sid": self.sid, "site": self.site, "kind": kind.value, "conn": conn},
            )
        finally:
            done.set_result(None)


async def record(
    hub: Hub,
    sid: str,
    site: str,
    kind: EventKind,
    conn: str,
    at: float,
    reason: str = "",
    path: str | None = None,
) -> None:
    """Append one MEDIA_UP / MEDIA_DOWN (idempotent on `conn`) and tell every node's room."""
    data: dict[str, Any] = {"conn": conn}
    if kind is EventKind.MEDIA_DOWN and reason:
        data["why"] = reason  # "silence" (unheard) or "closed" (DELETE, failed, class ended)
    if kind is EventKind.MEDIA_UP and path:
        data["path"] = path  # "udp" | "tcp" | "turn"
    event = hub.event(sid, kind, site, data, ref=f"{kind.value}:{conn}")
    await hub.store.append(dataclasses.replace(event, at=min(at, event.at)))
    up = kind is EventKind.MEDIA_UP
    message = {"t": "media", "code": site, "conn": conn, "up": up, "path": data.get("path")}
    await hub.store.publish(channel_of(sid), message)
