"""What only the Redis store has: several nodes on one Redis, restarts, lost replies."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from server.models import Event, EventKind
from server.store import open_store
from server.store.base import StoreError
from server.store.redis import RedisStore
from tests import redisproc
from tests.redisproc import RedisProcess, free_port

redis_proc = redisproc.redis_proc  # the fixture, shared with other test modules


def checkin(i: int, sid: str = "c1") -> Event:
    return Event(
        sid, EventKind.CHECKIN, time.time(), f"S{i % 50}", {"name": f"P{i}"}, uuid.uuid4().hex, "n1"
    )


@pytest.fixture
async def two_nodes(redis_proc: RedisProcess) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    a = RedisStore(redis_proc.url, node_id="node-a", retry_for_s=10)
    b = RedisStore(redis_proc.url, node_id="node-b", retry_for_s=10)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


class ReplyDroppingProxy:
    """TCP proxy to Redis that, when armed, cuts the connection instead of passing on the
    next reply: the command ran on Redis, the client never hears so."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.armed = False
        self.dropped = 0
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool):
            try:
                while data := await src.read(65536):
                    if replies and self.armed:
                        self.armed = False
                        self.dropped += 1
                        break
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()
                up_writer.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))


async def _evalsha_calls(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        await client.aclose()


async def test_append_whose_reply_was_lost_is_retried_not_duplicated(redis_proc):
    proxy = ReplyDroppingProxy(redis_proc.port)
    await proxy.start()
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", node_id="n1", retry_for_s=5)
    await store.open()
    try:
        await store.append(checkin(0))  # loads the script: NOSCRIPT is not the point here
        calls = await _evalsha_calls(redis_proc.url)
        proxy.armed = True
        second = await store.append(checkin(1))
        assert proxy.dropped == 1
        assert await _evalsha_calls(redis_proc.url) == calls + 2  # ran twice on Redis
        assert second.seq == 2
        assert [e.id for e in await store.events("c1")][1:] == [second.id]
        proxy.armed = True
        _, created = await store.add_checkin(checkin(2), "lan")
        assert proxy.dropped == 2 and created  # the retry of the winner still says created
        assert len(await store.events("c1")) == 3
    finally:
        await store.close()
        await proxy.close()


async def test_two_nodes_share_ledger_and_dedupe(two_nodes):
    a, b = two_nodes
    tries = [(a if i % 2 else b).add_checkin(checkin(i), f"key{i % 30}") for i in range(120)]
    results = await asyncio.gather(*tries)
    assert sum(created for _, created in results) == 30
    assert len(await a.events("c1")) == 30
    assert await a.events("c1") == await b.events("c1")
    assert {e.node for e in await a.events("c1")} == {"n1"}  # the producer's node is kept
    bare = await b.append(Event("c1", EventKind.CLASS_ENDED, 1.0))
    assert bare.node == "node-b" and bare.seq == 31


async def test_pubsub_and_presence_cross_nodes(two_nodes):
    a, b = two_nodes
    async with b.subscribe("wall") as sub:
        await a.publish("wall", {"from": "a"})
        assert await asyncio.wait_for(sub.__anext__(), 3) == {"from": "a"}
    await a.set_presence("c1", "S1", {"status": "playing"}, ttl_s=10)
    assert await b.presence("c1") == {"S1": {"status": "playing"}}
    await b.clear_presence("c1", "S1")
    assert await a.presence("c1") == {}


async def test_subscription_survives_redis_restart(two_nodes, redis_proc):
    a, b = two_nodes
    async with b.subscribe("wall") as sub:
        await asyncio.to_thread(redis_proc.restart)
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            # publishes before the reader has re-subscribed are lost (pub/sub is at most once)
            await a.publish("wall", {"n": 1})
            try:
                got = await asyncio.wait_for(sub.__anext__(), 0.2)
            except TimeoutError:
                pass
        assert got == {"n": 1}


async def test_state_survives_redis_kill_9(two_nodes, redis_proc):
    a, _ = two_nodes
    stored = [await a.append(checkin(i)) for i in range(20)]
    await asyncio.to_thread(redis_proc.restart)
    assert await a.events("c1") == stored
    assert (await a.append(checkin(99))).seq == 21


async def test_redis_down_too_long_is_a_store_error(redis_proc):
    store = RedisStore(redis_proc.url, retry_for_s=0.5)
    await store.open()
    try:
        redis_proc.kill()
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.append(checkin(1))
        assert time.monotonic() - started < 3
    finally:
        await store.close()
    with pytest.raises(StoreError):
        await RedisStore(redis_proc.url, retry_for_s=0.3).open()


async def test_open_store_with_url_is_redis_and_prefixes_keys(redis_proc, tmp_path: Path):
    store = await open_store(redis_proc.url, tmp_path, "n9")
    try:
        assert isinstance(store, RedisStore)
        await store.append(checkin(1, sid="c7"))
        client = aioredis.Redis.from_url(redis_proc.url)
        keys = sorted(k.decode() for k in await client.keys("*"))
        await client.aclose()
        assert keys and all(k.startswith("lopso:") for k in keys)
        assert "lopso:ev:{c7}:log" in keys
    finally:
        await store.close()


async def test_concurrent_append_rate(redis_proc):
    """Prints check-ins/s through one store (AOF fsync always). Only a loose floor is asserted:
    the rate swings with the shared machine's load; the report carries the measured figure."""
    async with RedisStore(redis_proc.url) as store:
        await store.append(checkin(0))
        n = 2000
        started = time.perf_counter()
        results = await asyncio.gather(
            *(store.add_checkin(checkin(i), f"k{i}") for i in range(1, n + 1))
        )
        rate = n / (time.perf_counter() - started)
        print(f"\nredis add_checkin: {rate:.0f}/s concurrent (appendfsync always)")
        assert all(created for _, created in results)
        assert rate > 100


async def test_scripts_reload_after_script_flush(two_nodes, redis_proc):
    a, _ = two_nodes
    await a.append(checkin(1))
    client = aioredis.Redis.from_url(redis_proc.url)
    await client.script_flush()
    await client.aclose()
    stored = await asyncio.gather(*(a.append(checkin(i)) for i in range(2, 12)))
    assert sorted(e.seq for e in stored) == list(range(2, 12))
    assert await a.presence("c1") == {}


# --- durability: does this Redis keep what it acknowledged? -----------------------------------
@pytest.mark.parametrize(
    ("redis_args", "problem"),
    [
        ({}, None),
        ({"appendonly": "no"}, "appendonly is 'no' (need 'yes')"),
        ({"appendfsync": "everysec"}, "appendfsync is 'everysec' (need 'always')"),
        ({"args": ["--rename-command", "CONFIG", ""]}, "cannot read Redis persistence settings"),
    ],
    ids=["aof-always", "no-aof", "everysec", "config-renamed"],
)
async def test_persistence_names_what_would_lose_acknowledged_writes(
    tmp_path: Path, redis_args: dict, problem: str | None
):
    from server.store.durability import DurabilityError, check

    with RedisProcess(tmp_path / "redis", **redis_args) as server:
        async with RedisStore(server.url, retry_for_s=2) as store:
            found = (await store.persistence()).problem()
            if problem is None:
                assert found is None
                assert await check(store, "strict") is None
                return
            assert found is not None and problem in found
            assert "LOPSO_REDIS_DURABILITY=warn" in found
            with pytest.raises(DurabilityError, match="LOPSO_REDIS_DURABILITY=strict"):
                await check(store, "strict")
            assert await check(store, "warn") == found


# --- one bad write in a pipelined batch -------------------------------------------------------
async def test_an_unencodable_write_fails_alone_and_the_rest_of_its_batch_is_stored(redis_proc):
    """A lone surrogate redis-py cannot encode fails its own call (400 bad_text at the edge);
    the other halls' check-ins and appends riding in the same pipeline are stored once each."""
    from server.errors import describe
    from server.store.base import InvalidValueError

    async with RedisStore(redis_proc.url, retry_for_s=2) as store:
        checkins = [checkin(i, sid="c9") for i in range(150)]
        appends = [checkin(i, sid="c8") for i in range(100)]
        bad = dataclasses.replace(checkin(999, sid="c9"), data={"name": "Lan\udc00"})
        calls = [store.add_checkin(e, f"k{i}") for i, e in enumerate(checkins)]
        calls += [store.append(e) for e in appends]
        calls.insert(75, store.add_checkin(bad, "bad"))  # mid-batch: all made in one tick
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = results.pop(75)
        assert isinstance(failed, InvalidValueError), failed
        assert describe(failed)[:2] == (400, "bad_text")  # type: ignore[index]
        assert not [r for r in results if isinstance(r, BaseException)], results[:3]
        assert all(created for _, created in results[:150])  # type: ignore[misc]
        stored = await store.events("c9")
        assert sorted(e.id for e in stored) == sorted(e.id for e in checkins)  # each once
        assert [e.id for e in await store.events("c8")] == [e.id for e in appends]
