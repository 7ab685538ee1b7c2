"""Auto-pipelining of ledger scripts: calls made in the same event-loop tick go to Redis as
one pipeline. A flood of check-ins then costs one round trip (and, with `appendfsync always`,
one fsync) per batch instead of per call, and far less client CPU per call.

Each call's arguments are encoded when it is queued: redis-py encodes a pipeline's commands
all at once, so a string it refuses (a lone surrogate) would fail the whole batch, other
halls' check-ins too. Encoded early, the bad call fails alone (InvalidValueError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from server.store.base import InvalidValueError

UNENCODABLE = (UnicodeEncodeError, rexc.DataError)


def invalid_value(exc: Exception) -> InvalidValueError:
    """A precise InvalidValueError for what redis-py refused to encode (never the value
    itself: it may be a person's name)."""
    if isinstance(exc, UnicodeEncodeError):
        point = ord(exc.object[exc.start])
        return InvalidValueError(f"text holds U+{point:04X}, which UTF-8 cannot encode")
    return InvalidValueError(f"value cannot be written to redis: {exc}")


class ScriptBatcher:
    """Queues EVALSHA calls and flushes them as pipelines (no MULTI: each script is atomic)."""

    def __init__(
        self,
        client: aioredis.Redis,
        scripts: dict[str, str],
        max_batch: int = 256,
        max_in_flight: int = 8,
    ):
        self._client = client
        self._source = scripts
        self._sha: dict[str, str] = {}
        self._queue: list[tuple[str, Sequence[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Load every script (again after a Redis restart emptied its script cache)."""
        for name, source in self._source.items():
            self._sha[name] = await self._client.script_load(source)

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run script `name`; resolves with its reply or raises its error."""
        encoded = self._encode([len(keys), *keys, *args])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((name, encoded, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _encode(self, args: Sequence[Any]) -> list[bytes]:
        """The arguments as the bytes Redis gets; InvalidValueError for one it cannot take."""
        encoder = self._client.get_encoder()  # type: ignore[no-untyped-call]
        try:
            return [encoder.encode(arg) for arg in args]
        except UNENCODABLE as exc:
            raise invalid_value(exc) from None

    def close(self) -> None:
        """Cancel batches in flight (their callers see CancelledError)."""
        for task in self._tasks:
            task.cancel()

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, Sequence[Any], asyncio.Future[Any]]]) -> None:
        try:
            async with self._slots:
                results = await self._execute(batch)
                if any(isinstance(r, rexc.NoScriptError) for r in results):
                    await self.load()
                    results = await self._execute(batch)
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(
        self, batch: list[tuple[str, Sequence[Any], asyncio.Future[Any]]]
    ) -> list[Any]:
        if not self._sha:
            await self.load()
        async with self._client.pipeline(transaction=False) as pipe:
            for name, args, _ in batch:
                pipe.evalsha(self._sha[name], *args)
            return await pipe.execute(raise_on_error=False)
