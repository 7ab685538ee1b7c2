"""What only the embedded store has: group commit, its SQLite file, a bad data dir."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from server.models import Event, EventKind
from server.store import open_store
from server.store.base import StoreError
from server.store.embedded import DB_NAME, EmbeddedStore


def checkin(i: int) -> Event:
    return Event(
        "c1",
        EventKind.CHECKIN,
        time.time(),
        f"S{i % 5000}",
        {"name": f"P{i}"},
        uuid.uuid4().hex,
        "n1",
    )


async def test_open_store_without_redis_is_embedded(tmp_path: Path):
    store = await open_store(None, tmp_path / "d", "n7")
    try:
        assert isinstance(store, EmbeddedStore)
        assert (await store.append(Event("c1", EventKind.CLASS_STARTED, 1.0))).node == "n7"
        assert (tmp_path / "d" / DB_NAME).exists()
    finally:
        await store.close()


async def test_file_is_wal_with_full_sync(tmp_path: Path):
    async with EmbeddedStore(tmp_path) as store:
        await store.append(checkin(1))
        conn = sqlite3.connect(store.path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        sync = await store._read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert sync == 2  # FULL


async def test_concurrent_appends_share_commits_and_are_fast(tmp_path: Path):
    """Group commit: 2,000 concurrent check-ins in far fewer transactions; prints the rate."""
    async with EmbeddedStore(tmp_path) as store:
        n = 2000
        started = time.perf_counter()
        results = await asyncio.gather(*(store.add_checkin(checkin(i), f"k{i}") for i in range(n)))
        elapsed = time.perf_counter() - started
        commits = store._writer.commits
        print(f"\nembedded add_checkin: {n / elapsed:.0f}/s concurrent, {commits} commits")
        assert all(created for _, created in results)
        assert commits < n / 10
        assert n / elapsed > 1000
        started = time.perf_counter()
        for i in range(200):
            await store.append(checkin(n + i))
        serial = 200 / (time.perf_counter() - started)
        print(f"embedded append: {serial:.0f}/s one at a time (one fsync each)")


async def test_failed_operation_does_not_spoil_its_group(tmp_path: Path):
    async with EmbeddedStore(tmp_path) as store:

        def explode(ledger):
            ledger.conn.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            store.append(checkin(1)),
            store._write(explode),
            store.append(checkin(2)),
            return_exceptions=True,
        )
        assert isinstance(results[1], StoreError)
        assert [r.seq for r in (results[0], results[2])] == [1, 2]
        assert [e.seq for e in await store.events("c1")] == [1, 2]


async def test_unusable_data_dir_is_a_store_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises((StoreError, OSError)):
        await EmbeddedStore(blocker / "sub").open()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / DB_NAME).write_text("garbage, not sqlite" * 100)
    with pytest.raises(StoreError):
        await EmbeddedStore(tmp_path / "d").open()


async def test_closed_store_refuses_work(tmp_path: Path):
    store = EmbeddedStore(tmp_path)
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.append(checkin(1))
    with pytest.raises(StoreError):
        await store.events("c1")


async def test_another_writer_on_the_same_file_does_not_break_seqs(tmp_path: Path):
    """A second process (a CLI command) appending to the file between our writes."""
    async with EmbeddedStore(tmp_path) as ours:
        assert (await ours.append(checkin(1))).seq == 1
        async with EmbeddedStore(tmp_path, node_id="cli") as other:
            assert (await other.append(checkin(2))).seq == 2
        assert (await ours.append(checkin(3))).seq == 3
        assert [e.seq for e in await ours.events("c1")] == [1, 2, 3]


async def test_small_read_is_not_queued_behind_a_whole_ledger_read(tmp_path: Path):
    async with EmbeddedStore(tmp_path) as store:
        await asyncio.gather(*(store.append(checkin(i)) for i in range(40000)))
        big = asyncio.create_task(store.events("c1"))
        await asyncio.sleep(0.005)  # the big read is under way on one reader thread
        assert await store.get_site("nope") is None
        assert not big.done()
        assert len(await big) == 40000


async def test_database_files_are_this_users_only(tmp_path: Path) -> None:
    """Check-ins hold names: the database and its -wal and -shm files are 0600, the folder 0700,
    also where an older version left them readable."""
    data = tmp_path / "data"
    async with EmbeddedStore(data, "n1") as store:
        await store.append(checkin(1))
        files = sorted(data.iterdir())  # while open: the -wal and -shm files exist
        assert {f.name for f in files} == {DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"}
        assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
        assert data.stat().st_mode & 0o777 == 0o700
    data.chmod(0o755)
    (data / DB_NAME).chmod(0o644)
    async with EmbeddedStore(data, "n1") as store:
        assert len(await store.events("c1")) == 1
        assert {f.stat().st_mode & 0o777 for f in data.iterdir()} == {0o600}
    assert data.stat().st_mode & 0o777 == 0o700
