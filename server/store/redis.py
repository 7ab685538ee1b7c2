"""The Redis store: shared state for a cluster of LopSo nodes.

Ledger appends, check-in dedupe and presence run as Lua scripts (atomic across nodes; see
redis_scripts.py). Every call retries through a Redis restart for up to `retry_for_s`: appends
are idempotent on the event id, so a retry of an append that was in flight when Redis went
down is never stored twice. With AOF `appendfsync always`, Redis replies only after the write
is on disk, so an acknowledged append survives a Redis crash.
Pub/sub is Redis PUBLISH/SUBSCRIBE on one connection per store, re-established (and every
channel re-subscribed) after a disconnect; messages published while it is down are lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.models import ClassSession, Event, EventKind, NodeInfo, ShortLink, Site, User
from server.store import codec, redis_scripts
from server.store.base import StoreError
from server.store.durability import WANTED, Persistence
from server.store.redis_batch import UNENCODABLE, ScriptBatcher, invalid_value
from server.store.subscription import Subscription, SubscriptionHub

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError)
LRANGE_CHUNK = 2000  # per round trip; each chunk is decoded on the event loop
PUBSUB_POLL_S = 1.0


class RedisStore:
    """Store on a Redis server (AOF on); keys under `prefix`, so deployments can share one."""

    def __init__(
        self,
        url: str,
        node_id: str = "local",
        prefix: str = "lopso",
        retry_for_s: float = 30.0,
        max_connections: int = 64,
        queue_size: int = 1000,
    ):
        self.url = url
        self.node_id = node_id
        self.prefix = prefix
        self.retry_for_s = retry_for_s
        self._max_connections = max_connections
        self._client: aioredis.Redis | None = None
        self._scripts: ScriptBatcher | None = None
        self._hub = SubscriptionHub(queue_size)
        self._hub.on_empty = self._on_channel_empty
        self._pubsub: Any = None
        self._pubsub_task: asyncio.Task[None] | None = None
        self._sub_lock = asyncio.Lock()
        self._sent: set[str] = set()  # channel keys SUBSCRIBE was sent for, this connection
        self._live: set[str] = set()  # channels Redis confirmed, this connection
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (retrying while Redis starts), load the scripts, start the pub/sub reader."""
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=self.retry_for_s,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
        )
        self._client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))
        self._closing = False
        self._scripts = ScriptBatcher(
            self._client,
            {name: getattr(redis_scripts, name) for name in redis_scripts.NAMES},
        )
        try:
            await self._call(self._client.ping)
            await self._call(self._scripts.load)
        except BaseException:
            client, self._client = self._client, None
            await client.aclose(close_connection_pool=True)
            raise
        self._pubsub_task = asyncio.create_task(self._pubsub_loop(), name="lopso-redis-pubsub")

    async def close(self) -> None:
        """End subscriptions, stop the reader, close the connections."""
        self._closing = True
        self._hub.close_all()
        tasks = [t for t in (self._pubsub_task, *self._tasks) if t is not None]
        self._pubsub_task = None
        for task in tasks:
            task.cancel()
        # redis-py can swallow a cancel during a read; the reader also polls `_closing`
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=PUBSUB_POLL_S + 1)
            if pending:
                log.warning("redis store tasks did not stop", extra={"pending": len(pending)})
        if self._scripts is not None:
            self._scripts.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose(close_connection_pool=True)

    async def persistence(self) -> Persistence:
        """Redis's AOF settings (CONFIG GET), or why they could not be read."""
        settings: dict[str, str] = {}
        for name in WANTED:
            try:
                reply = await self._call(functools.partial(self._redis.config_get, name))
            except StoreError as exc:
                if not isinstance(exc.__cause__, rexc.ResponseError):
                    raise  # Redis unreachable: not a persistence verdict
                return Persistence(unreadable=str(exc.__cause__))
            settings.update({_text(k): _text(v) for k, v in dict(reply).items()})
        return Persistence(settings)

    # registry -----------------------------------------------------------------------------

    async def upsert_sites(self, sites: Iterable[Site]) -> int:
        mapping = {s.code: codec.site_to_json(s) for s in sites}
        if mapping:
            key = self._key("sites")
            await self._call(lambda: self._redis.hset(key, mapping=mapping))  # type: ignore[arg-type]
        return len(mapping)

    async def get_site(self, code: str) -> Site | None:
        body = await self._call(lambda: self._redis.hget(self._key("sites"), code))
        return None if body is None else codec.site_from_json(body)

    async def get_sites(self, codes: Iterable[str]) -> list[Site]:
        wanted = list(codes)
        if not wanted:
            return []
        key = self._key("sites")
        bodies = await self._call(lambda: self._redis.hmget(key, wanted))
        return [codec.site_from_json(b) for b in bodies if b is not None]

    async def list_sites(self) -> list[Site]:
        bodies = await self._call(lambda: self._redis.hgetall(self._key("sites")))
        return [codec.site_from_json(bodies[k]) for k in sorted(bodies)]

    # classes ------------------------------------------------------------------------------

    async def put_short_links(self, links: Iterable[ShortLink]) -> None:
        mapping = {link.code: codec.short_link_to_json(link) for link in links}
        if mapping:
            key = self._key("short_links")
            await self._call(lambda: self._redis.hset(key, mapping=mapping))  # type: ignore[arg-type]

    async def get_short_link(self, code: str) -> ShortLink | None:
        body = await self._call(lambda: self._redis.hget(self._key("short_links"), code))
        return None if body is None else codec.short_link_from_json(body)

    async def put_session(self, session: ClassSession) -> None:
        body = codec.session_to_json(session)
        await self._call(lambda: self._redis.hset(self._key("sessions"), session.id, body))

    async def get_session(self, session_id: str) -> ClassSession | None:
        body = await self._call(lambda: self._redis.hget(self._key("sessions"), session_id))
        return None if body is None else codec.session_from_json(body)

    async def list_sessions(self) -> list[ClassSession]:
        bodies = await self._call(lambda: self._redis.hgetall(self._key("sessions")))
        return [codec.session_from_json(bodies[k]) for k in sorted(bodies)]

    # accounts -----------------------------------------------------------------------------

    async def put_user(self, user: User) -> None:
        body = codec.user_to_json(user)
        await self._call(lambda: self._redis.hset(self._key("users"), user.name, body))

    async def get_user(self, name: str) -> User | None:
        body = await self._call(lambda: self._redis.hget(self._key("users"), name))
        return None if body is None else codec.user_from_json(body)

    async def list_users(self) -> list[User]:
        bodies = await self._call(lambda: self._redis.hgetall(self._key("users")))
        return [codec.user_from_json(bodies[k]) for k in sorted(bodies)]

    async def remove_user(self, name: str) -> bool:
        removed = await self._call(lambda: self._redis.hdel(self._key("users"), name))
        return bool(removed)

    # ledger -------------------------------------------------------------------------------

    async def append(self, event: Event) -> Event:
        """Store the event durably (idempotent on event.id) and return it with its seq."""
        event = self._complete(event)
        keys = self._ledger_keys(event.session_id)[:2]
        args = [event.id, codec.event_body(event)]
        seq, body, _ = await self._call(lambda: self._script("APPEND", keys, args))
        return codec.event_from_body(body, int(seq))

    async def add_checkin(self, event: Event, dedupe_key: str) -> tuple[Event, bool]:
        """Append a check-in unless `dedupe_key` is taken in this class (atomic across nodes)."""
        event = self._complete(event)
        keys = self._ledger_keys(event.session_id)
        args = [event.id, codec.event_body(event), dedupe_key]
        seq, body, created = await self._call(lambda: self._script("CHECKIN", keys, args))
        return codec.event_from_body(body, int(seq)), bool(created)

    async def events(
        self,
        session_id: str,
        after_seq: int = 0,
        kinds: Iterable[EventKind] | None = None,
        site_code: str | None = None,
    ) -> list[Event]:
        kind_set = None if kinds is None else {EventKind(k).value for k in kinds}
        if kind_set is not None and not kind_set:
            return []
        log_key = self._ledger_keys(session_id)[0]
        out: list[Event] = []
        start = max(after_seq, 0)
        may_match = codec.body_prefilter(kind_set, site_code)
        while True:
            chunk = await self._lrange(log_key, start, start + LRANGE_CHUNK - 1)
            for offset, body in enumerate(chunk):
                if not may_match(body):  # type: ignore[arg-type]
                    continue
                raw = json.loads(body)
                if kind_set is not None and raw["kind"] not in kind_set:
                    continue
                if site_code is not None and raw["site_code"] != site_code:
                    continue
                out.append(codec.event_from_raw(raw, start + offset + 1))
            if len(chunk) < LRANGE_CHUNK:
                return out
            start += LRANGE_CHUNK

    # presence -----------------------------------------------------------------------------

    async def set_presence(
        self, session_id: str, site_code: str, state: dict[str, Any], ttl_s: float
    ) -> None:
        keys = [self._presence_key(session_id)]
        args = [site_code, codec.dumps(state), max(1, int(ttl_s * 1000))]
        await self._call(lambda: self._script("SET_PRESENCE", keys, args))

    async def clear_presence(
        self, session_id: str, site_code: str, only_if: dict[str, Any] | None = None
    ) -> bool:
        keys = [self._presence_key(session_id)]
        args = [site_code, "" if only_if is None else codec.dumps(only_if)]
        return bool(await self._call(lambda: self._script("CLEAR_PRESENCE", keys, args)))

    async def get_presence(self, session_id: str, site_code: str) -> dict[str, Any] | None:
        keys = [self._presence_key(session_id)]
        body = await self._call(lambda: self._script("GET_PRESENCE", keys, [site_code]))
        return None if body is None else json.loads(body)

    async def presence(self, session_id: str) -> dict[str, dict[str, Any]]:
        keys = [self._presence_key(session_id)]
        flat = await self._call(lambda: self._script("PRESENCE", keys, []))
        return {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    # pub/sub ------------------------------------------------------------------------------

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """PUBLISH to every node (this one included). Retried through a restart."""
        body = codec.dumps(message)
        await self._call(lambda: self._redis.publish(self._channel_key(channel), body))

    def subscribe(self, channel: str) -> Subscription:
        sub, first = self._hub.add(channel)
        if self._channel_key(channel) in self._live:
            sub.mark_ready()
        elif first:
            self._spawn(self._sync_subscriptions())
        return sub

    # nodes --------------------------------------------------------------------------------

    async def heartbeat(self, node: NodeInfo, ttl_s: float) -> None:
        body = codec.node_to_json(node)
        ttl_ms = max(1, int(ttl_s * 1000))

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key("node", node.id), body, px=ttl_ms)
                pipe.sadd(self._key("nodes"), node.id)
                await pipe.execute()

        await self._call(write)

    async def nodes(self) -> list[NodeInfo]:
        index = self._key("nodes")
        members = await self._call(lambda: self._redis.smembers(index))
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if not ids:
            return []
        bodies = await self._call(lambda: self._redis.mget([self._key("node", i) for i in ids]))
        gone = [i for i, body in zip(ids, bodies) if body is None]
        if gone:
            await self._call(lambda: self._redis.srem(index, *gone))
        return [codec.node_from_json(body) for body in bodies if body is not None]

    # internals ----------------------------------------------------------------------------

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError("store is not open")
        return self._client

    async def _lrange(self, key: str, first: int, last: int) -> list[bytes | str]:
        return await self._call(lambda: self._redis.lrange(key, first, last))

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        if self._scripts is None or self._client is None:
            raise StoreError("store is not open")
        return self._scripts.call(name, keys, args)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _ledger_keys(self, session_id: str) -> list[str]:
        base = f"{self.prefix}:ev:{{{session_id}}}"
        return [f"{base}:log", f"{base}:ids", f"{base}:chk"]

    def _presence_key(self, session_id: str) -> str:
        return f"{self.prefix}:presence:{{{session_id}}}"

    def _channel_key(self, channel: str) -> str:
        return f"{self.prefix}:ch:{channel}"

    def _complete(self, event: Event) -> Event:
        if event.id and event.node:
            return event
        return dataclasses.replace(
            event, id=event.id or uuid.uuid4().hex, node=event.node or self.node_id
        )

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation, retrying connection failures for up to `retry_for_s`."""
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.02
        attempt = 0
        while True:
            try:
                return await fn()
            except RETRYABLE as exc:
                attempt += 1
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"redis unavailable after {attempt} attempts: {exc}") from exc
                if attempt == 1:
                    log.warning("redis call failed, retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except UNENCODABLE as exc:  # a bad value: retrying cannot help
                raise invalid_value(exc) from None
            except rexc.RedisError as exc:
                raise StoreError(f"redis error: {exc}") from exc

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # pub/sub connection -------------------------------------------------------------------

    async def _pubsub_loop(self) -> None:
        """Hold one subscribed connection; on any failure, reconnect and re-subscribe."""
        delay = 0.05
        control = self._channel_key(f"_control:{uuid.uuid4().hex}")
        while not self._closing:
            pubsub = self._redis.pubsub()
            try:
                async with self._sub_lock:
                    # always subscribed to something, so reading is always valid
                    await pubsub.subscribe(control)
                    self._pubsub = pubsub
                await self._sync_subscriptions()
                delay = 0.05
                while not self._closing:
                    message = await pubsub.get_message(timeout=PUBSUB_POLL_S)
                    if message is not None:
                        self._on_pubsub_message(message)
            except RETRYABLE as exc:
                log.warning(
                    "redis pub/sub connection lost, reconnecting", extra={"error": str(exc)}
                )
            except Exception:  # a bug must not end pub/sub for good: start over
                log.exception("redis pub/sub reader failed, reconnecting")
            finally:
                async with self._sub_lock:
                    self._pubsub = None
                    self._sent.clear()
                    self._live.clear()
                await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _sync_subscriptions(self) -> None:
        """Make the channels subscribed on the connection those with live subscribers."""
        async with self._sub_lock:
            pubsub = self._pubsub
            if pubsub is None:
                return  # the reader subscribes everything when it connects
            want = {self._channel_key(c) for c in self._hub.channels()}
            add, drop = want - self._sent, self._sent - want
            try:
                if add:
                    await pubsub.subscribe(*add)
                    self._sent |= add
                if drop:
                    await pubsub.unsubscribe(*drop)
                    self._sent -= drop
            except RETRYABLE as exc:  # the reader sees the same failure and reconnects
                log.info("redis subscribe deferred to reconnect", extra={"error": str(exc)})

    def _on_pubsub_message(self, message: dict[str, Any]) -> None:
        kind, raw_key = message.get("type"), message.get("channel")
        if not isinstance(raw_key, bytes):
            return  # pong and the like
        key = raw_key.decode()
        channel = key[len(self._channel_key("")) :]
        if kind == "subscribe":
            self._live.add(key)
            self._hub.mark_ready(channel)
        elif kind == "message":
            try:
                body = json.loads(message["data"])
            except ValueError:
                log.warning("undecodable pub/sub message dropped", extra={"channel": channel})
                return
            if self._hub.deliver(channel, body) == 0 and key in self._sent:
                self._spawn(self._sync_subscriptions())  # its last subscriber is gone

    def _on_channel_empty(self, channel: str) -> None:
        self._live.discard(self._channel_key(channel))
        if self._client is not None:
            self._spawn(self._sync_subscriptions())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception as exc:  # noqa: BLE001 (closing a broken connection may fail again)
        log.debug("ignored error while closing", extra={"error": str(exc)})
