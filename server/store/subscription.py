"""In-process side of pub/sub: bounded per-subscriber queues that drop the oldest message.

The embedded store delivers published messages straight to these; the Redis store's reader
task delivers what Redis sends. A slow subscriber loses its oldest messages (with a warning),
never blocks the publisher nor other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any, Self

log = logging.getLogger(__name__)

_CLOSED = object()


class Subscription:
    """An async iterator of messages on one channel; also an async context manager.

    Registered when created, so nothing published afterwards (and, for Redis, after `ready()`)
    is missed. `async with store.subscribe(ch) as sub:` waits until it is ready and closes it on
    exit; `async for message in sub:` ends when the subscription or the store is closed.
    Messages are shared between subscribers of one process: treat them as read-only.
    """

    def __init__(self, channel: str, maxsize: int, on_close: Callable[[Subscription], None]):
        self.channel = channel
        self.dropped = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._ready = asyncio.Event()
        self._closed = False
        self._on_close = on_close

    def deliver(self, message: dict[str, Any]) -> None:
        """Queue one message, dropping the oldest queued one when full."""
        if self._closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "subscriber too slow, dropped oldest messages",
                    extra={"channel": self.channel, "dropped": self.dropped},
                )
        self._queue.put_nowait(message)

    def mark_ready(self) -> None:
        """Called by the store once the channel is subscribed (at once for the embedded one)."""
        self._ready.set()

    async def ready(self) -> None:
        """Wait until messages published from now on will be delivered."""
        await self._ready.wait()

    def close(self) -> None:
        """Stop the subscription; a pending or later `__anext__` ends the iteration."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)
        self._ready.set()

    async def aclose(self) -> None:
        """Async spelling of `close`, as async generators have."""
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    async def __aenter__(self) -> Self:
        await self.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class SubscriptionHub:
    """The subscriptions of one store, by channel.

    Subscriptions are held weakly: one dropped without `close()` (say, a `break` out of
    `async for`) disappears with its last reference instead of filling its queue forever.
    """

    def __init__(self, maxsize: int = 1000):
        self.maxsize = maxsize
        self._by_channel: dict[str, weakref.WeakSet[Subscription]] = {}
        self.on_empty: Callable[[str], None] = lambda channel: None

    def add(self, channel: str) -> tuple[Subscription, bool]:
        """A new subscription; also says whether it is the channel's first live one."""
        sub = Subscription(channel, self.maxsize, self._remove)
        subs = self._by_channel.setdefault(channel, weakref.WeakSet())
        first = not subs
        subs.add(sub)
        return sub, first

    def deliver(self, channel: str, message: dict[str, Any]) -> int:
        """Hand a message to every live subscriber of `channel`; returns how many got it."""
        subs = self._by_channel.get(channel)
        if not subs:
            return 0
        targets = list(subs)
        for sub in targets:
            sub.deliver(message)
        return len(targets)

    def mark_ready(self, channel: str) -> None:
        """Every current subscription of `channel` is now live."""
        for sub in list(self._by_channel.get(channel, ())):
            sub.mark_ready()

    def channels(self) -> list[str]:
        """Channels with at least one live subscription."""
        return [ch for ch, subs in self._by_channel.items() if subs]

    def close_all(self) -> None:
        """End every subscription (the store is closing)."""
        for subs in list(self._by_channel.values()):
            for sub in list(subs):
                sub.close()
        self._by_channel.clear()

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_channel.get(sub.channel)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._by_channel[sub.channel]
            self.on_empty(sub.channel)
