"""A restart on a large ledger is prompt and closes every lost connection exactly once.

The data dir gets 2,000 sites and a class with ~100,000 ledger events written straight
through the embedded store (joins and leaves, quality samples, headcounts, check-ins), as if
a server had died mid-class: some sites still have one or two connections open. A real
`lopso serve` is started on it; it reopens the class, rebuilding its state from the ledger
and closing the lost connections before it answers. Rebuilding used to cost sites × events
(minutes at this size); it must be one pass over the ledger.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import SECRET, LopsoServer

from server import auth
from server.models import ClassSession, Event, EventKind, Role, Site
from server.store import open_store

SITES = 2_000
CONNECTIONS = 10  # per site: a join and a leave each (the last one open at some sites)
QUALITY = 24  # quality samples per site
CHECKINS = 4  # per site
SID = "big-class"
STARTUP_BOUND_S = 20.0  # generous: one pass over 100k events takes a few seconds here

pytestmark = pytest.mark.slow


def code_of(i: int) -> str:
    return f"HY-{i:04d}"


def lost_conns(i: int) -> list[str]:
    """The connections site `i` still has open when the server dies."""
    if i % 20 == 0:
        return [f"{code_of(i)}-c{CONNECTIONS - 2}", f"{code_of(i)}-c{CONNECTIONS - 1}"]
    if i % 4 == 0:
        return [f"{code_of(i)}-c{CONNECTIONS - 1}"]
    return []


def site_events(i: int, start: float) -> Iterator[Event]:
    """One site's share of the ledger, in time order."""
    code, lost = code_of(i), set(lost_conns(i))
    at = start + i * 0.01

    def event(kind: EventKind, data: dict[str, object], when: float) -> Event:
        return Event(SID, kind, when, code, data, id=uuid.uuid4().hex, node="dead-node")

    for n in range(CONNECTIONS):
        conn = f"{code}-c{n}"
        yield event(EventKind.SITE_JOINED, {"conn": conn}, at + n * 100)
        if conn not in lost:
            yield event(EventKind.SITE_LEFT, {"conn": conn}, at + n * 100 + 60)
    for n in range(QUALITY):
        sample = {"rtt_ms": 120, "loss_pct": 1.0, "kbps": 900, "class": "good"}
        yield event(EventKind.QUALITY, sample, at + n * 40 + 5)
    for n in range(CHECKINS):
        person = {"name": f"Người {n}", "by": "qr"}
        yield event(EventKind.CHECKIN, person, at + n * 30 + 7)
    yield event(EventKind.HEADCOUNT, {"count": 40 + i % 30, "phase": "start"}, at + 20)


async def fill(data_dir: Path, now: float) -> tuple[int, float]:
    """Write the registry, the class and its ledger; return (events, last event time)."""
    start = now - 1800
    sites = [Site(code_of(i), f"Nhà văn hóa {i}", commune=f"Xã {i % 104}") for i in range(SITES)]
    sites = [Site(s.code, s.name, commune=s.commune, join_key=f"key-{s.code}") for s in sites]
    store = await open_store(None, data_dir, "filler")
    try:
        await store.upsert_sites(sites)
        await store.put_session(
            ClassSession(SID, "Lớp lớn", starts_at=start, site_codes=tuple(s.code for s in sites))
        )
        events = [e for i in range(SITES) for e in site_events(i, start)]
        for i in range(0, len(events), 2000):  # concurrent appends: group-committed
            await asyncio.gather(*(store.append(e) for e in events[i : i + 2000]))
    finally:
        await store.close()
    return len(events), max(e.at for e in events)


async def ledger(data_dir: Path) -> list[Event]:
    store = await open_store(None, data_dir, "reader")
    try:
        return await store.events(SID)
    finally:
        await store.close()


def get(url: str) -> tuple[int, float]:
    began = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as reply:
        reply.read()
        return reply.status, time.monotonic() - began


async def test_restart_on_a_large_ledger_is_prompt_and_closes_lost_connections(
    tmp_path: Path,
) -> None:
    now = time.time()
    filled = time.monotonic()
    count, last_seen = await fill(tmp_path / "data", now)
    print(f"ledger: {count} events for {SITES} sites in {time.monotonic() - filled:.1f} s")
    assert count >= 95_000

    server = LopsoServer(tmp_path, demo_sites=0, startup_timeout_s=120)
    began = time.monotonic()
    with server:
        startup = time.monotonic() - began
        code = code_of(7)
        token = auth.mint(
            SECRET.encode(), SID, Role.SITE, site=code, join_key=f"key-{code}", ttl_s=600
        )
        status, page_s = await asyncio.to_thread(
            get, f"{server.url}/site/{SID}/{code}?token={token}"
        )
        print(f"restart: healthy after {startup:.2f} s, site page in {page_s * 1000:.0f} ms")
        assert status == 200
        assert startup < STARTUP_BOUND_S, server.log()[-2000:]
        assert page_s < 2.0
    events = await ledger(tmp_path / "data")

    closed = [e for e in events if e.kind is EventKind.SITE_LEFT and e.data.get("lost")]
    expected = {(code_of(i), conn) for i in range(SITES) for conn in lost_conns(i)}
    assert len(expected) == 600
    assert sorted((e.site_code, e.data["conn"]) for e in closed) == sorted(expected)  # once each
    assert {e.at for e in closed} == {last_seen}  # closed when the class was last seen alive
    still_open = {(e.site_code, e.data["conn"]) for e in events if e.kind is EventKind.SITE_JOINED}
    still_open -= {(e.site_code, e.data["conn"]) for e in events if e.kind is EventKind.SITE_LEFT}
    assert not still_open
    assert len(events) == count + len(expected)  # nothing else appended on the way up
