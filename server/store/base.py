"""The Store contract. Two implementations: embedded (SQLite, one process) and Redis (cluster).

Both run through one contract-test suite (tests/test_store_contract.py). Every method is async.
Durability: `append` and `add_checkin` return only once the event is durable (SQLite commit
with synchronous=FULL; Redis with AOF `appendfsync always` — with `everysec` a Redis crash may
lose up to a second); an event the server has acknowledged must survive a crash of the process
that recorded it. Calls retry through a Redis restart; appends are idempotent on `event.id`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from server.models import ClassSession, Event, EventKind, NodeInfo, ShortLink, Site, User

if TYPE_CHECKING:
    from server.store.subscription import Subscription


class StoreError(Exception):
    """The store could not complete an operation (I/O, connection lost after retries)."""


class NotFoundError(StoreError):
    """The record asked for does not exist."""


class InvalidValueError(StoreError):
    """A value cannot be stored as given (a string with a lone surrogate no encoder takes).
    Text is checked at the edge (server/fields.py); this keeps one bad write to itself."""


class Store(Protocol):
    """Shared state: registry, classes, the attendance ledger, presence, pub/sub, nodes."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # registry
    async def upsert_sites(self, sites: Iterable[Site]) -> int: ...
    async def get_site(self, code: str) -> Site | None: ...
    async def list_sites(self) -> list[Site]: ...
    async def get_sites(self, codes: Iterable[str]) -> list[Site]:
        """The known sites among `codes`, in the order given (unknown codes left out)."""
        ...

    # classes
    async def put_session(self, session: ClassSession) -> None: ...
    async def get_session(self, session_id: str) -> ClassSession | None: ...
    async def list_sessions(self) -> list[ClassSession]: ...

    # short join links (/j/<code>): codes are derived, so writing one again changes nothing
    async def put_short_links(self, links: Iterable[ShortLink]) -> None: ...
    async def get_short_link(self, code: str) -> ShortLink | None: ...
    # accounts of organisers and moderators (the pages' sign-in)
    async def put_user(self, user: User) -> None: ...
    async def get_user(self, name: str) -> User | None: ...
    async def list_users(self) -> list[User]: ...
    async def remove_user(self, name: str) -> bool:
        """Delete the account; False when there was none."""
        ...

    # attendance ledger (append-only, durable, ordered per class by seq)
    async def append(self, event: Event) -> Event:
        """Store the event (idempotent on event.id) and return it with its seq."""
        ...

    async def add_checkin(self, event: Event, dedupe_key: str) -> tuple[Event, bool]:
        """Append a CHECKIN unless `dedupe_key` was already checked in for this class.

        Returns (stored_or_existing_event, created). Atomic across nodes.
        """
        ...

    async def events(
        self,
        session_id: str,
        after_seq: int = 0,
        kinds: Iterable[EventKind] | None = None,
        site_code: str | None = None,
    ) -> list[Event]: ...

    # presence: ephemeral per-site live state, expires unless refreshed
    async def set_presence(
        self, session_id: str, site_code: str, state: dict[str, Any], ttl_s: float
    ) -> None: ...
    async def clear_presence(
        self, session_id: str, site_code: str, only_if: dict[str, Any] | None = None
    ) -> bool:
        """Remove a site's presence; with `only_if`, only when its state holds those values
        (scalars, compared atomically: "still mine?"). True when no presence is left."""
        ...

    async def get_presence(self, session_id: str, site_code: str) -> dict[str, Any] | None:
        """One site's live state, or None (never set, cleared or expired)."""
        ...

    async def presence(self, session_id: str) -> dict[str, dict[str, Any]]: ...

    # pub/sub between nodes (in-process for the embedded store)
    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Send a JSON-able message to every subscriber of `channel` (at most once, no replay)."""
        ...

    def subscribe(self, channel: str) -> Subscription:
        """Subscribe at once; an async iterator of messages (read-only dicts).

        `Subscription` (server/store/subscription.py) is an AsyncIterator[dict] as before, and
        also an async context manager: `async with store.subscribe(ch) as sub:` waits until the
        subscription is live (Redis) and closes it on exit; `sub.close()` ends it. A slow
        subscriber loses its oldest messages, never blocks the publisher.
        """
        ...

    # cluster nodes
    async def heartbeat(self, node: NodeInfo, ttl_s: float) -> None: ...
    async def nodes(self) -> list[NodeInfo]: ...
