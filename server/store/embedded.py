"""The embedded store: one process, the ledger in a local SQLite file, the rest in memory.

SQLite runs on one writer thread (group commit: every write queued while a commit is on disk
joins the next transaction, so many concurrent appends share one fsync) and one reader thread;
the event loop never blocks on disk. WAL with synchronous=FULL: when `append` returns, the
event survives kill -9 of the process and a power cut.
Presence, pub/sub and nodes are in-process only: this store serves exactly one process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

from server import files
from server.models import ClassSession, Event, EventKind, NodeInfo, ShortLink, Site, User
from server.store import codec, sqlite_ledger
from server.store.base import StoreError
from server.store.subscription import Subscription, SubscriptionHub

log = logging.getLogger(__name__)

T = TypeVar("T")
DB_NAME = "lopso.sqlite3"
MAX_BATCH = 2000
_MISSING = object()


class _Writer:
    """The one thread that writes SQLite, committing queued operations in groups."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop):
        self._path = path
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lopso-sqlite-write", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.commits = 0

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise StoreError(f"cannot open {self._path}: {self._error}") from self._error

    def submit(self, fn: Callable[[sqlite_ledger.Ledger], T]) -> asyncio.Future[T]:
        """Run `fn(ledger)` inside the next group transaction; resolves after the commit."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, future))
        return future

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite_ledger.connect(self._path)
            conn.executescript(sqlite_ledger.SCHEMA)
        except Exception as exc:  # noqa: BLE001 (reported to start())
            self._error = exc
            self._started.set()
            return
        self._started.set()
        ledger = sqlite_ledger.Ledger(conn)
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batch
            ops = [op for op in batch if op is not None]
            if ops:
                self._settle(self._commit(conn, ledger, ops))
        conn.close()

    def _commit(
        self,
        conn: sqlite3.Connection,
        ledger: sqlite_ledger.Ledger,
        ops: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]],
    ) -> list[Any]:
        """One transaction for all ops; a failing op is rolled back alone (savepoint)."""
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            ledger.check_outside_writes()
            for fn, future in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(ledger)
                except Exception as exc:  # noqa: BLE001 (fails this op, not its group)
                    conn.execute("ROLLBACK TO op")
                    ledger.forget_seqs()
                    if isinstance(exc, sqlite3.Error):
                        exc = StoreError(f"sqlite write failed: {exc}")
                    results.append((future, None, exc))
                else:
                    results.append((future, value, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            log.error("sqlite commit failed", extra={"error": str(exc), "ops": len(ops)})
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            ledger.forget_seqs()
            failure = StoreError(f"sqlite commit failed: {exc}")
            results = [(future, None, failure) for _, future in ops]
        return results

    def _settle(self, results: list[Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(_resolve, results)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, exc in results:
        if future.done():
            continue
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)


class _Readers:
    """A few reader threads, each borrowing one of as many connections (WAL: readers never
    wait for the writer), so a small read is not queued behind a whole-ledger export."""

    def __init__(self, path: Path, count: int = 2):
        self._path = path
        self._count = count
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="lopso-sqlite-read")
        self._free: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []

    def open(self) -> None:
        for _ in range(self._count):
            conn = sqlite_ledger.connect(self._path)
            self._all.append(conn)
            self._free.put(conn)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, fn, args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for conn in self._all:
            conn.close()

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._free.get()
        try:
            return fn(conn, *args)
        finally:
            self._free.put(conn)


class EmbeddedStore:
    """Store for one process: SQLite ledger/registry, in-memory presence, pub/sub and nodes."""

    def __init__(self, data_dir: Path, node_id: str = "local", queue_size: int = 1000):
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.path = self.data_dir / DB_NAME
        self._writer: _Writer | None = None
        self._readers: _Readers | None = None
        self._hub = SubscriptionHub(queue_size)
        self._presence: dict[str, dict[str, tuple[dict[str, Any], float]]] = {}
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the data dir and database if needed; start the writer and reader threads."""
        loop = asyncio.get_running_loop()
        files.private_dir(self.data_dir)  # participants' names: this user only
        files.private_file(self.path)  # SQLite gives its -wal and -shm files this mode
        for suffix in ("-wal", "-shm", "-journal"):  # left by an older version
            files.tighten(self.path.with_name(self.path.name + suffix))
        writer = _Writer(self.path, loop)
        await loop.run_in_executor(None, writer.start)
        self._writer = writer
        readers = _Readers(self.path)
        await loop.run_in_executor(None, readers.open)
        self._readers = readers

    async def close(self) -> None:
        """Commit pending writes, stop the threads, end subscriptions."""
        self._hub.close_all()
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await loop.run_in_executor(None, writer.stop)
        if self._readers is not None:
            readers, self._readers = self._readers, None
            await loop.run_in_executor(None, readers.close)

    # registry -----------------------------------------------------------------------------

    async def upsert_sites(self, sites: Iterable[Site]) -> int:
        rows = [(s.code, codec.site_to_json(s)) for s in sites]
        return await self._write(lambda ledger: ledger.upsert("sites", rows))

    async def get_site(self, code: str) -> Site | None:
        bodies = await self._read(sqlite_ledger.select_bodies, "sites", code)
        return codec.site_from_json(bodies[0]) if bodies else None

    async def get_sites(self, codes: Iterable[str]) -> list[Site]:
        wanted = list(codes)
        bodies = await self._read(sqlite_ledger.select_sites, wanted)
        return [codec.site_from_json(bodies[c]) for c in wanted if c in bodies]

    async def list_sites(self) -> list[Site]:
        return [
            codec.site_from_json(b) for b in await self._read(sqlite_ledger.select_bodies, "sites")
        ]

    # classes ------------------------------------------------------------------------------

    async def put_session(self, session: ClassSession) -> None:
        rows = [(session.id, codec.session_to_json(session))]
        await self._write(lambda ledger: ledger.upsert("sessions", rows))

    async def get_session(self, session_id: str) -> ClassSession | None:
        bodies = await self._read(sqlite_ledger.select_bodies, "sessions", session_id)
        return codec.session_from_json(bodies[0]) if bodies else None

    async def list_sessions(self) -> list[ClassSession]:
        bodies = await self._read(sqlite_ledger.select_bodies, "sessions")
        return [codec.session_from_json(b) for b in bodies]

    # short join links ---------------------------------------------------------------------

    async def put_short_links(self, links: Iterable[ShortLink]) -> None:
        rows = [(link.code, codec.short_link_to_json(link)) for link in links]
        if rows:
            await self._write(lambda ledger: ledger.upsert("short_links", rows))

    async def get_short_link(self, code: str) -> ShortLink | None:
        bodies = await self._read(sqlite_ledger.select_bodies, "short_links", code)
        return codec.short_link_from_json(bodies[0]) if bodies else None

    # ledger -------------------------------------------------------------------------------

    async def put_user(self, user: User) -> None:
        rows = [(user.name, codec.user_to_json(user))]
        await self._write(lambda ledger: ledger.upsert("users", rows))

    async def get_user(self, name: str) -> User | None:
        bodies = await self._read(sqlite_ledger.select_bodies, "users", name)
        return codec.user_from_json(bodies[0]) if bodies else None

    async def list_users(self) -> list[User]:
        bodies = await self._read(sqlite_ledger.select_bodies, "users")
        return [codec.user_from_json(b) for b in bodies]

    async def remove_user(self, name: str) -> bool:
        return await self._write(lambda ledger: ledger.delete("users", name))

    async def append(self, event: Event) -> Event:
        """Store the event durably (idempotent on event.id) and return it with its seq."""
        event = self._complete(event)
        body = codec.event_body(event)
        stored = await self._write(
            lambda ledger: ledger.append(
                event.session_id, event.id, event.kind.value, event.site_code, body
            )
        )
        return codec.event_from_body(stored.body, stored.seq)

    async def add_checkin(self, event: Event, dedupe_key: str) -> tuple[Event, bool]:
        """Append a check-in unless `dedupe_key` is taken in this class (atomic)."""
        event = self._complete(event)
        body = codec.event_body(event)
        stored = await self._write(
            lambda ledger: ledger.add_checkin(
                event.session_id, dedupe_key, event.id, event.kind.value, event.site_code, body
            )
        )
        return codec.event_from_body(stored.body, stored.seq), stored.created

    async def events(
        self,
        session_id: str,
        after_seq: int = 0,
        kinds: Iterable[EventKind] | None = None,
        site_code: str | None = None,
    ) -> list[Event]:
        kind_values = None if kinds is None else [EventKind(k).value for k in kinds]
        # decoded on the reader thread: a big ledger does not hold the event loop for seconds
        return await self._read(_decoded_events, session_id, after_seq, kind_values, site_code)

    # presence -----------------------------------------------------------------------------

    async def set_presence(
        self, session_id: str, site_code: str, state: dict[str, Any], ttl_s: float
    ) -> None:
        # a JSON round trip: the same values (lists, not tuples) Redis would give back
        self._presence.setdefault(session_id, {})[site_code] = (
            json.loads(codec.dumps(state)),
            time.monotonic() + ttl_s,
        )

    async def clear_presence(
        self, session_id: str, site_code: str, only_if: dict[str, Any] | None = None
    ) -> bool:
        current = await self.get_presence(session_id, site_code)
        if current is not None and only_if is not None:
            wanted = json.loads(codec.dumps(only_if))
            if any(current.get(k, _MISSING) != v for k, v in wanted.items()):
                return False
        self._presence.get(session_id, {}).pop(site_code, None)
        return True

    async def get_presence(self, session_id: str, site_code: str) -> dict[str, Any] | None:
        entry = self._presence.get(session_id, {}).get(site_code)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return dict(entry[0])

    async def presence(self, session_id: str) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        entries = self._presence.get(session_id, {})
        for code in [c for c, (_, exp) in entries.items() if exp <= now]:
            del entries[code]
        return {code: dict(state) for code, (state, _) in entries.items()}

    # pub/sub ------------------------------------------------------------------------------

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        # A JSON round trip gives subscribers what Redis would: plain JSON values, a copy.
        self._hub.deliver(channel, json.loads(codec.dumps(message)))

    def subscribe(self, channel: str) -> Subscription:
        sub, _ = self._hub.add(channel)
        sub.mark_ready()
        return sub

    # nodes --------------------------------------------------------------------------------

    async def heartbeat(self, node: NodeInfo, ttl_s: float) -> None:
        self._nodes[node.id] = (node, time.monotonic() + ttl_s)

    async def nodes(self) -> list[NodeInfo]:
        now = time.monotonic()
        for node_id in [n for n, (_, exp) in self._nodes.items() if exp <= now]:
            del self._nodes[node_id]
        return [node for node, _ in sorted(self._nodes.values(), key=lambda e: e[0].id)]

    # internals ----------------------------------------------------------------------------

    def _complete(self, event: Event) -> Event:
        """Fill in the id and node when the producer left them empty."""
        if event.id and event.node:
            return event
        return dataclasses.replace(
            event, id=event.id or uuid.uuid4().hex, node=event.node or self.node_id
        )

    async def _write(self, fn: Callable[[sqlite_ledger.Ledger], T]) -> T:
        if self._writer is None:
            raise StoreError("store is not open")
        return await self._writer.submit(fn)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._readers is None:
            raise StoreError("store is not open")
        try:
            return await self._readers.call(fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite read failed: {exc}") from exc


def _decoded_events(
    conn: sqlite3.Connection,
    session_id: str,
    after_seq: int,
    kinds: list[str] | None,
    site_code: str | None,
) -> list[Event]:
    rows = sqlite_ledger.select_events(conn, session_id, after_seq, kinds, site_code)
    return [codec.event_from_body(body, seq) for body, seq in rows]
