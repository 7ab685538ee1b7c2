"""Stores behind one contract (server/store/base.py): embedded SQLite, or Redis for a cluster.

Usage: `store = await open_store(config.redis_url, config.data_dir, config.node_id)`, then
`await store.close()` when done.

Modules: embedded.py + sqlite_ledger.py (one process; SQLite file `lopso.sqlite3` in the data
dir, group-committed on one writer thread); redis.py + redis_scripts.py + redis_batch.py
(cluster; Lua scripts, auto-pipelined); subscription.py (bounded per-subscriber queues, both);
codec.py (JSON records, both). Both pass tests/test_store_contract.py.
"""

from __future__ import annotations

from pathlib import Path

from server.store.base import NotFoundError, Store, StoreError
from server.store.subscription import Subscription

__all__ = ["NotFoundError", "Store", "StoreError", "Subscription", "make_store", "open_store"]


def make_store(redis_url: str | None, data_dir: Path, node_id: str) -> Store:
    """The store for this deployment, not yet opened: embedded when `redis_url` is None."""
    if redis_url is None:
        from server.store.embedded import EmbeddedStore

        return EmbeddedStore(Path(data_dir), node_id)
    from server.store.redis import RedisStore

    return RedisStore(redis_url, node_id)


async def open_store(redis_url: str | None, data_dir: Path, node_id: str) -> Store:
    """`make_store(...)`, opened: ready to use. The caller closes it (`await store.close()`)."""
    store = make_store(redis_url, data_dir, node_id)
    await store.open()
    return store
