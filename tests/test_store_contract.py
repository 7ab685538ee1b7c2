"""One contract suite for every Store: embedded (SQLite in a tmp dir) and Redis (private server).

Each test gets a fresh store: a new tmp dir, or a new key prefix on a module-wide redis-server.
Durability under kill -9 / Redis restart is at the end of the file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from server.models import (
    ClassSession,
    Event,
    EventKind,
    NodeInfo,
    Presenter,
    Role,
    ShortLink,
    Site,
    User,
)
from server.store.embedded import EmbeddedStore
from tests import redisproc
from tests.redisproc import RedisProcess

STORES = ["embedded", "redis"]

redis_module = redisproc.redis_module  # the fixture, shared with other test modules


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], object]:
    """A factory of unopened stores sharing one backing state (for close/reopen tests)."""
    kind = request.param
    if kind == "embedded":
        return lambda: EmbeddedStore(tmp_path / "data", node_id="n1")
    from server.store.redis import RedisStore

    server: RedisProcess = request.getfixturevalue("redis_module")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return lambda: RedisStore(server.url, node_id="n1", prefix=prefix)


@pytest.fixture
async def store(make_store: Callable[[], object]) -> AsyncIterator[object]:
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def ev(
    kind: EventKind = EventKind.SITE_JOINED,
    sid: str = "c1",
    site: str | None = "S1",
    **data: object,
) -> Event:
    return Event(
        session_id=sid,
        kind=kind,
        at=time.time(),
        site_code=site,
        data=dict(data),
        id=uuid.uuid4().hex,
        node="n1",
    )


# registry and classes ---------------------------------------------------------------------


async def test_sites_upsert_get_list(store):
    sites = [
        Site("B-2", "Nhà văn hoá thôn Đông", "Thôn Đông", "Xã Tân Hưng", "Hưng Yên", "k2"),
        Site("A-1", "Hall A", commune="C1"),
    ]
    assert await store.upsert_sites(sites) == 2
    assert await store.get_site("B-2") == sites[0]
    assert await store.get_site("nope") is None
    assert [s.code for s in await store.list_sites()] == ["A-1", "B-2"]
    await store.upsert_sites([Site("A-1", "Hall A renamed")])
    assert (await store.get_site("A-1")).name == "Hall A renamed"
    assert len(await store.list_sites()) == 2
    assert await store.upsert_sites([]) == 0
    assert [s.code for s in await store.get_sites(["B-2", "zz", "A-1"])] == ["B-2", "A-1"]
    assert await store.get_sites([]) == []
    many = [Site(f"S{i:04d}", f"Hall {i}") for i in range(1200)]
    await store.upsert_sites(many)
    codes = [s.code for s in reversed(many)]
    assert await store.get_sites(codes) == many[::-1]


async def test_short_links_put_get(store, make_store):
    links = [ShortLink(f"c{i:07d}", "class-1", f"HY-{i:03d}") for i in range(600)]
    await store.put_short_links(links)
    await store.put_short_links([])  # nothing to write: no error
    assert await store.get_short_link("c0000007") == links[7]
    assert await store.get_short_link("zzzzzzzz") is None
    await store.put_short_links(links[:2])  # written again (the codes are derived): unchanged
    assert await store.get_short_link("c0000001") == links[1]
    await store.close()
    reopened = make_store()  # kept across a restart
    await reopened.open()
    try:
        assert await reopened.get_short_link("c0000599") == links[599]
    finally:
        await reopened.close()
    await store.open()


async def test_a_class_keeps_its_presenters_in_order(store):
    lineup = (
        Presenter("p1", "TS. Nguyễn Văn An", "Học viện Chính trị khu vực I"),
        Presenter("canbo", "Đại úy Trần Thị Bình", "Công an tỉnh Hưng Yên"),
    )
    await store.put_session(ClassSession("c1", "Hai báo cáo viên", 1.0, presenters=lineup))
    stored = await store.get_session("c1")
    assert stored is not None and stored.presenters == lineup
    assert stored.presenter(None) == lineup[0] and stored.presenter("canbo") == lineup[1]
    assert stored.presenter("zz") is None
    await store.put_session(ClassSession("c2", "Một giảng viên", 1.0))
    alone = await store.get_session("c2")
    assert alone is not None and alone.presenters == ()
    assert [p.id for p in alone.lineup()] == ["p1"]  # a class without presenters has one


async def test_sessions_put_get_list(store):
    s1 = ClassSession(
        "c1", "Chuyên đề 1", starts_at=1764122400.123456, site_codes=("A", "B"), created_at=1.5
    )
    s2 = ClassSession("c2", "Topic 2", starts_at=2.0, video_codec="H264")
    await store.put_session(s1)
    await store.put_session(s2)
    assert await store.get_session("c1") == s1
    assert await store.get_session("zz") is None
    assert [s.id for s in await store.list_sessions()] == ["c1", "c2"]
    ended = ClassSession(
        "c1",
        "Chuyên đề 1",
        starts_at=s1.starts_at,
        site_codes=("A", "B"),
        started_at=10.0,
        ended_at=20.0,
    )
    await store.put_session(ended)
    assert await store.get_session("c1") == ended
    assert len(await store.list_sessions()) == 2


async def test_users_put_get_list_remove(store):
    ana = User("ana", Role.MODERATOR, "$argon2id$x", communes=("Xã Tân Lập", "B"), created_at=1.5)
    root = User("root", Role.ADMIN, "$argon2id$y")
    await store.put_user(root)
    await store.put_user(ana)
    assert await store.get_user("ana") == ana
    assert await store.get_user("nobody") is None
    assert [u.name for u in await store.list_users()] == ["ana", "root"]
    await store.put_user(User("ana", Role.MODERATOR, "$argon2id$z"))  # replaced, not added
    assert (await store.get_user("ana")).password_hash == "$argon2id$z"
    assert await store.remove_user("ana") is True
    assert await store.remove_user("ana") is False
    assert [u.name for u in await store.list_users()] == ["root"]


# ledger -----------------------------------------------------------------------------------


async def test_append_assigns_seq_per_class_and_round_trips(store):
    e1 = ev(EventKind.HEADCOUNT, count=37, phase="start", note="Nguyễn Văn Ánh")
    stored = await store.append(e1)
    assert stored.seq == 1
    assert stored == Event(**{**_fields(e1), "seq": 1})
    assert (await store.append(ev(sid="c2"))).seq == 1
    assert (await store.append(ev())).seq == 2
    assert [e.seq for e in await store.events("c1")] == [1, 2]
    assert (await store.events("c1"))[0] == stored


TRICKY_DATA = [
    {},
    {"name": "Nguyễn Thị Ánh Tuyết", "ident": None, "by": "qr"},
    {"text": 'quote " backslash \\ pipe | brace {c1} newline \n tab \t nul \u0000 emoji 🎓'},
    {"at": 1764122400.123456789, "tiny": 5e-324, "big": 2**62, "neg": -0.0, "t": True},
    {"nested": {"list": [1, "2", [3.5, None]], "empty": [], "obj": {}}},
    {"site_code": "S1", "kind": "checkin"},  # look-alikes of the envelope's fields
]


@pytest.mark.parametrize("data", TRICKY_DATA)
async def test_event_data_round_trips_exactly(store, data):
    base = ev(EventKind.QUESTION, site="S|1:{x}")
    stored = await store.append(Event(**{**_fields(base), "data": data}))
    (listed,) = await store.events("c1")
    assert listed == stored and listed.data == data and listed.site_code == "S|1:{x}"
    await store.set_presence("c1", "S|1:{x}", data, ttl_s=30)
    assert await store.get_presence("c1", "S|1:{x}") == data
    assert await store.presence("c1") == {"S|1:{x}": data}


async def test_append_is_idempotent_on_event_id(store):
    e1 = ev()
    first = await store.append(e1)
    await store.append(ev())
    again = await store.append(e1)
    assert again == first
    assert [e.id for e in await store.events("c1")] == [e1.id, (await store.events("c1"))[1].id]
    assert len(await store.events("c1")) == 2


async def test_append_fills_missing_id_and_node(store):
    bare = Event(session_id="c1", kind=EventKind.CLASS_STARTED, at=5.0)
    stored = await store.append(bare)
    assert len(stored.id) == 32 and stored.node == "n1" and stored.seq == 1


async def test_concurrent_appends_get_distinct_gapless_seqs(store):
    events = [ev(site=f"S{i}") for i in range(200)]
    stored = await asyncio.gather(*(store.append(e) for e in events))
    assert sorted(e.seq for e in stored) == list(range(1, 201))
    listed = await store.events("c1")
    assert [e.seq for e in listed] == list(range(1, 201))
    by_id = {e.id: e.seq for e in stored}
    assert all(by_id[e.id] == e.seq for e in listed)


async def test_events_filters(store):
    await store.append(ev(EventKind.SITE_JOINED, site="A"))
    await store.append(ev(EventKind.HEADCOUNT, site="A", count=3))
    await store.append(ev(EventKind.SITE_JOINED, site="B"))
    await store.append(ev(EventKind.CLASS_STARTED, site=None))
    await store.append(ev(EventKind.SITE_LEFT, site="A"))
    await store.append(ev(EventKind.SITE_JOINED, sid="other", site="A"))
    # look-alikes nested in data must not fool a filter
    decoy = ev(EventKind.QUESTION, site="B")
    await store.append(Event(**{**_fields(decoy), "data": {"site_code": "A", "kind": "site_left"}}))

    def seqs(events: list[Event]) -> list[int]:
        return [e.seq for e in events]

    assert seqs(await store.events("c1")) == [1, 2, 3, 4, 5, 6]
    assert seqs(await store.events("c1", after_seq=3)) == [4, 5, 6]
    assert seqs(await store.events("c1", after_seq=6)) == []
    assert seqs(await store.events("c1", kinds=[EventKind.SITE_JOINED])) == [1, 3]
    assert seqs(
        await store.events("c1", kinds=[EventKind.SITE_JOINED, EventKind.SITE_LEFT], site_code="A")
    ) == [1, 5]
    assert seqs(await store.events("c1", site_code="A", after_seq=1)) == [2, 5]
    assert seqs(await store.events("c1", site_code="B")) == [3, 6]
    assert seqs(await store.events("c1", kinds=[EventKind.QUESTION], site_code="A")) == []
    assert seqs(await store.events("c1", kinds=[])) == []
    assert seqs(await store.events("nope")) == []
    assert (await store.events("c1", kinds=[EventKind.HEADCOUNT]))[0].data == {"count": 3}


async def test_checkin_dedupe_under_concurrency(store):
    attempts = [ev(EventKind.CHECKIN, site="A", name=f"P{i % 50}") for i in range(100)]
    results = await asyncio.gather(
        *(store.add_checkin(e, f"A:p{i % 50}") for i, e in enumerate(attempts))
    )
    assert sum(created for _, created in results) == 50
    stored = await store.events("c1", kinds=[EventKind.CHECKIN])
    assert len(stored) == 50
    assert len({e.data["name"] for e in stored}) == 50
    # every loser got the winner's event for its key
    winners = {e.data["name"]: e for e in stored}
    for event, _created in results:
        assert event == winners[event.data["name"]]


async def test_checkin_retry_and_other_class(store):
    first = ev(EventKind.CHECKIN, site="A", name="Lan")
    stored, created = await store.add_checkin(first, "A:lan")
    assert created and stored.seq == 1
    # the same request resent after a lost reply: same answer, nothing new
    assert await store.add_checkin(first, "A:lan") == (stored, True)
    # another person with the same key: rejected, told who holds it
    assert await store.add_checkin(ev(EventKind.CHECKIN, site="A", name="Lan"), "A:lan") == (
        stored,
        False,
    )
    # the same key in another class is a different check-in
    other, created = await store.add_checkin(ev(EventKind.CHECKIN, sid="c2", name="Lan"), "A:lan")
    assert created and other.session_id == "c2"
    assert len(await store.events("c1")) == 1


# presence ---------------------------------------------------------------------------------


async def test_presence_set_clear_and_expiry(store):
    await store.set_presence("c2", "X", {"pair": (1, 2), "name": "Thôn Đông"}, ttl_s=30)
    assert (await store.presence("c2"))["X"] == {"pair": [1, 2], "name": "Thôn Đông"}
    await store.clear_presence("c2", "X")
    await store.set_presence("c1", "A", {"status": "playing", "rtt_ms": 40.5}, ttl_s=30)
    await store.set_presence("c1", "B", {"status": "waiting"}, ttl_s=0.3)
    await store.set_presence("c2", "A", {"status": "offline"}, ttl_s=30)
    assert await store.presence("c1") == {
        "A": {"status": "playing", "rtt_ms": 40.5},
        "B": {"status": "waiting"},
    }
    await store.set_presence("c1", "A", {"status": "reconnecting"}, ttl_s=30)
    await asyncio.sleep(0.45)
    assert await store.presence("c1") == {"A": {"status": "reconnecting"}}
    await store.clear_presence("c1", "A")
    await store.clear_presence("c1", "never-there")
    assert await store.presence("c1") == {}
    assert await store.presence("c2") == {"A": {"status": "offline"}}
    # refreshing keeps it alive
    await store.set_presence("c1", "C", {"n": 1}, ttl_s=0.3)
    await asyncio.sleep(0.2)
    await store.set_presence("c1", "C", {"n": 2}, ttl_s=0.3)
    await asyncio.sleep(0.2)
    assert await store.presence("c1") == {"C": {"n": 2}}


async def test_get_presence_and_conditional_clear(store):
    assert await store.get_presence("c1", "A") is None
    await store.set_presence("c1", "A", {"status": "playing", "node": "n1", "conn": 3}, ttl_s=30)
    await store.set_presence("c1", "B", {"status": "waiting", "node": "n1"}, ttl_s=0.2)
    assert await store.get_presence("c1", "A") == {"status": "playing", "node": "n1", "conn": 3}
    # another node took the site over: n2's "still mine?" clear keeps it
    assert await store.clear_presence("c1", "A", only_if={"node": "n2"}) is False
    assert await store.clear_presence("c1", "A", only_if={"node": "n1", "conn": 4}) is False
    assert await store.clear_presence("c1", "A", only_if={"node": "n1", "gone": None}) is False
    assert await store.get_presence("c1", "A") is not None
    assert await store.clear_presence("c1", "A", only_if={"node": "n1", "conn": 3}) is True
    assert await store.get_presence("c1", "A") is None
    assert await store.clear_presence("c1", "A", only_if={"node": "n2"}) is True  # none left
    await asyncio.sleep(0.3)
    assert await store.get_presence("c1", "B") is None  # expired
    assert await store.clear_presence("c1", "B", only_if={"node": "n2"}) is True
    assert await store.clear_presence("c1", "never") is True
    assert await store.presence("c1") == {}


# pub/sub ----------------------------------------------------------------------------------


async def _next(sub, timeout: float = 3.0):
    return await asyncio.wait_for(sub.__anext__(), timeout)


async def test_pubsub_delivers_in_order_to_every_subscriber(store):
    async with (
        store.subscribe("room") as a,
        store.subscribe("room") as b,
        store.subscribe("elsewhere") as other,
    ):
        for i in range(5):
            await store.publish("room", {"i": i, "text": "Xin chào"})
        await store.publish("elsewhere", {"x": 1})
        assert [(await _next(a))["i"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert [(await _next(b))["i"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert await _next(other) == {"x": 1}
    # closed: the iteration ends, and nothing more arrives
    await store.publish("room", {"i": 99})
    with pytest.raises(StopAsyncIteration):
        await _next(a)


async def test_pubsub_async_for_ends_on_close(store):
    sub = store.subscribe("ch")
    await sub.ready()
    got: list[int] = []

    async def consume() -> None:
        async for message in sub:
            got.append(message["n"])

    task = asyncio.create_task(consume())
    await store.publish("ch", {"n": 1})
    await store.publish("ch", {"n": 2})
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.02)
    sub.close()
    await asyncio.wait_for(task, 2)
    assert got == [1, 2]


async def test_pubsub_slow_subscriber_drops_oldest(store):
    async with store.subscribe("burst") as sub:
        limit = sub._queue.maxsize
        for i in range(limit + 10):
            await store.publish("burst", {"i": i})
        last = None
        for _ in range(200):  # Redis delivers asynchronously
            await asyncio.sleep(0.02)
            if sub.dropped == 10:
                break
        assert sub.dropped == 10
        last = [(await _next(sub))["i"] for _ in range(limit)]
        assert last == list(range(10, limit + 10))


# nodes ------------------------------------------------------------------------------------


async def test_nodes_heartbeat_and_ttl(store):
    a = NodeInfo(
        "edge-a",
        "edge",
        "http://10.0.0.1:8080",
        "10.0.0.1",
        40000,
        0.25,
        50,
        lectures=("c1",),
        at=1.0,
    )
    b = NodeInfo("edge-b", "edge", "http://10.0.0.2:8080", "10.0.0.2", 40001, 0.0, 0, at=1.0)
    await store.heartbeat(a, ttl_s=30)
    await store.heartbeat(b, ttl_s=0.3)
    assert await store.nodes() == [a, b]
    a2 = NodeInfo(**{**_fields(a), "load": 0.5, "viewers": 100})
    await store.heartbeat(a2, ttl_s=30)
    await asyncio.sleep(0.45)
    assert await store.nodes() == [a2]


# persistence ------------------------------------------------------------------------------


async def test_state_survives_close_and_reopen(make_store):
    first = make_store()
    await first.open()
    await first.upsert_sites([Site("A", "Hall")])
    await first.put_session(ClassSession("c1", "T", starts_at=1.0))
    stored = [await first.append(ev(site="A")) for _ in range(3)]
    await first.close()
    second = make_store()
    await second.open()
    try:
        assert await second.get_site("A") == Site("A", "Hall")
        assert await second.get_session("c1") == ClassSession("c1", "T", starts_at=1.0)
        assert await second.events("c1") == stored
        assert (await second.append(ev())).seq == 4
        assert await second.append(stored[0]) == stored[0]
    finally:
        await second.close()


def _fields(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}


# durability -------------------------------------------------------------------------------

APPENDER = textwrap.dedent("""
    import asyncio, sys, time, uuid
    from pathlib import Path
    from server.models import Event, EventKind
    from server.store.embedded import EmbeddedStore

    async def worker(store, n):
        i = 0
        while True:
            i += 1
            event = Event("c1", EventKind.CHECKIN, time.time(), f"S{n}", {"i": i},
                          uuid.uuid4().hex, "child")
            if i % 2:
                stored = await store.append(event)
            else:
                stored, _ = await store.add_checkin(event, f"{n}:{i}")
            print(stored.id, stored.seq, flush=True)

    async def main():
        store = EmbeddedStore(Path(sys.argv[1]), "child")
        await store.open()
        await asyncio.gather(*(worker(store, n) for n in range(16)))

    asyncio.run(main())
""")


async def test_embedded_acknowledged_appends_survive_kill_9(tmp_path: Path):
    """A child appends and prints each acknowledged event; kill -9; all of them are there."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        APPENDER,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    acked: dict[str, int] = {}
    deadline = time.monotonic() + 15
    try:
        while len(acked) < 1500 and time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            if not line:
                break
            event_id, seq = line.split()
            acked[event_id.decode()] = int(seq)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = await proc.communicate()
    for line in rest.splitlines():  # acknowledged before the kill, still in the pipe
        parts = line.split()
        if len(parts) == 2:
            acked[parts[0].decode()] = int(parts[1])
    assert len(acked) >= 1500
    store = EmbeddedStore(tmp_path, "n1")
    await store.open()
    try:
        events = await store.events("c1")
    finally:
        await store.close()
    stored = {e.id: e.seq for e in events}
    assert len(stored) == len(events)  # no event twice
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    missing = [i for i, seq in acked.items() if stored.get(i) != seq]
    assert missing == []


async def test_redis_acknowledged_appends_survive_restart(tmp_path: Path):
    """Writers keep appending while redis-server is kill -9'd and restarted (AOF always):
    every acknowledged append is there afterwards, none twice, and no writer saw an error."""
    from server.store.redis import RedisStore

    with RedisProcess(tmp_path / "redis") as server:
        store = RedisStore(server.url, node_id="n1", retry_for_s=20)
        await store.open()
        acked: dict[str, int] = {}
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                event = ev(EventKind.CHECKIN, site=f"S{n}", i=i)
                if i % 2:
                    stored = await store.append(event)
                else:
                    stored, created = await store.add_checkin(event, f"{n}:{i}")
                    assert created
                acked[stored.id] = stored.seq

        writers = [asyncio.create_task(writer(n)) for n in range(16)]
        try:
            for _ in range(2):
                await asyncio.sleep(0.4)
                before = len(acked)
                await asyncio.to_thread(server.restart)
                await asyncio.sleep(0.4)
                assert len(acked) > before  # writing resumed after the restart
            stop.set()
            await asyncio.wait_for(asyncio.gather(*writers), 20)
            events = await store.events("c1")
        finally:
            stop.set()
            for task in writers:
                task.cancel()
            await store.close()
    assert len(acked) > 200
    assert len(events) == len(acked)  # nothing un-acknowledged slipped in either
    assert len({e.id for e in events}) == len(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    stored = {e.id: e.seq for e in events}
    assert [i for i, seq in acked.items() if stored.get(i) != seq] == []
