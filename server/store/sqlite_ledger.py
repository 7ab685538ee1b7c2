"""The SQLite side of the embedded store: schema and the statements run on the writer thread.

Every function here runs on one thread that owns its connection; none touches asyncio.
The writer keeps the last seq of each class in memory (it is the only writer), which makes an
append one INSERT; the cache is dropped whenever a transaction fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    site_code TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_site ON events (session_id, site_code, seq);
CREATE TABLE IF NOT EXISTS checkins (
    session_id TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (session_id, dedupe_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sites (code TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS short_links (code TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
"""

KEYS = {
    "sites": "code",
    "sessions": "id",
    "short_links": "code",
    "users": "name",
}  # table -> key column


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with synchronous=FULL: a commit is on disk when it returns."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    # 64 MiB of pages (default 2 MiB): the random-keyed id and check-in indexes of a class
    # with 250k check-ins stay cached; appends measured 2.4-2.9k/s -> 5.2-5.4k/s at the end.
    conn.execute("PRAGMA cache_size=-65536")
    return conn


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event row as the writer returns it: body text and seq."""

    body: str
    seq: int
    created: bool


class Ledger:
    """Writes on the writer thread's connection (callers wrap them in one transaction)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._last_seq: dict[str, int] = {}
        self._data_version = -1

    def check_outside_writes(self) -> None:
        """Drop the seq cache if another connection (say a CLI command) committed meanwhile.

        Call inside the write transaction: `data_version` changes only for others' commits.
        """
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._last_seq.clear()

    def forget_seqs(self) -> None:
        """Drop the seq cache (after a rolled-back transaction)."""
        self._last_seq.clear()

    def append(
        self, session_id: str, event_id: str, kind: str, site: str | None, body: str
    ) -> StoredEvent:
        """Insert the event unless its id exists; return the stored row either way."""
        row = self.conn.execute("SELECT body, seq FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is not None:
            return StoredEvent(row[0], row[1], False)
        seq = self._next_seq(session_id)
        self.conn.execute(
            "INSERT INTO events (session_id, seq, id, kind, site_code, body) VALUES (?,?,?,?,?,?)",
            (session_id, seq, event_id, kind, site, body),
        )
        self._last_seq[session_id] = seq
        return StoredEvent(body, seq, True)

    def add_checkin(
        self,
        session_id: str,
        dedupe_key: str,
        event_id: str,
        kind: str,
        site: str | None,
        body: str,
    ) -> StoredEvent:
        """Append a check-in unless the key is taken; `created` is True for the key's owner.

        A retry of the very request that took the key (same event id) answers as the first
        time did, so a client resending after a lost reply sees the same outcome.
        """
        row = self.conn.execute(
            "SELECT event_id FROM checkins WHERE session_id = ? AND dedupe_key = ?",
            (session_id, dedupe_key),
        ).fetchone()
        if row is not None:
            existing = self.conn.execute(
                "SELECT body, seq FROM events WHERE id = ?", (row[0],)
            ).fetchone()
            return StoredEvent(existing[0], existing[1], row[0] == event_id)
        stored = self.append(session_id, event_id, kind, site, body)
        self.conn.execute(
            "INSERT INTO checkins (session_id, dedupe_key, event_id) VALUES (?,?,?)",
            (session_id, dedupe_key, event_id),
        )
        return stored

    def upsert(self, table: str, rows: Sequence[tuple[str, str]]) -> int:
        """Insert or replace (key, body) rows in `sites`, `sessions`, `short_links` or `users`."""
        key = KEYS[table]
        self.conn.executemany(
            f"INSERT INTO {table} ({key}, body) VALUES (?, ?) "
            f"ON CONFLICT({key}) DO UPDATE SET body = excluded.body",
            rows,
        )
        return len(rows)

    def delete(self, table: str, key: str) -> bool:
        """Delete the row with `key` from `users` (True when there was one)."""
        column = KEYS[table]
        return self.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,)).rowcount > 0

    def _next_seq(self, session_id: str) -> int:
        last = self._last_seq.get(session_id)
        if last is None:
            row = self.conn.execute(
                "SELECT MAX(seq) FROM events WHERE session_id = ?", (session_id,)
            ).fetchone()
            last = row[0] or 0
        return last + 1


def select_events(
    conn: sqlite3.Connection,
    session_id: str,
    after_seq: int,
    kinds: Iterable[str] | None,
    site: str | None,
) -> list[tuple[str, int]]:
    """(body, seq) of a class's events after `after_seq`, filtered, in seq order."""
    sql = "SELECT body, seq FROM events WHERE session_id = ? AND seq > ?"
    args: list[Any] = [session_id, after_seq]
    if kinds is not None:
        kind_list = list(kinds)
        sql += f" AND kind IN ({','.join('?' * len(kind_list))})" if kind_list else " AND 0"
        args += kind_list
    if site is not None:
        sql += " AND site_code = ?"
        args.append(site)
    return conn.execute(sql + " ORDER BY seq", args).fetchall()


def select_sites(conn: sqlite3.Connection, codes: list[str]) -> dict[str, str]:
    """Bodies of the sites with these codes, by code (500 codes per statement)."""
    found: dict[str, str] = {}
    for i in range(0, len(codes), 500):
        part = codes[i : i + 500]
        sql = f"SELECT code, body FROM sites WHERE code IN ({','.join('?' * len(part))})"
        found.update(conn.execute(sql, part).fetchall())
    return found


def select_bodies(conn: sqlite3.Connection, table: str, key: str | None = None) -> list[str]:
    """Bodies of `sites`, `sessions`, `short_links` or `users`, all of them or the one with `key`."""
    column = KEYS[table]
    if key is None:
        return [r[0] for r in conn.execute(f"SELECT body FROM {table} ORDER BY {column}")]
    return [r[0] for r in conn.execute(f"SELECT body FROM {table} WHERE {column} = ?", (key,))]
