"""Does the Redis of a cluster keep what it acknowledged? Read at startup, judged here.

The Redis store acknowledges a check-in once Redis replied; only with the append-only file
on and `appendfsync always` is that reply given after the write is on disk. A default Redis
(`appendonly no`, or `everysec`) loses acknowledged attendance when it crashes, silently.
Policy (LOPSO_REDIS_DURABILITY): `strict` refuses to start on such a Redis, `warn` starts
with one loud structured warning, shown again in /healthz and the metric lopso_redis_durable.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from server.store.base import StoreError

if TYPE_CHECKING:
    from server.store.redis import RedisStore

log = logging.getLogger(__name__)

MODES = ("strict", "warn")
WANTED = {"appendonly": "yes", "appendfsync": "always"}


class DurabilityError(StoreError):
    """The cluster's Redis would lose acknowledged writes in a crash (or cannot tell)."""


@dataclasses.dataclass(frozen=True)
class Persistence:
    """Redis's persistence settings as CONFIG GET gave them; `unreadable` when it refused."""

    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    unreadable: str | None = None  # why CONFIG GET failed (renamed, forbidden by an ACL)

    def problem(self) -> str | None:
        """What is wrong, precisely, or None when every acknowledged write reaches disk."""
        if self.unreadable is not None:
            return (
                f"cannot read Redis persistence settings: CONFIG GET failed ({self.unreadable}); "
                "a managed Redis may rename or forbid CONFIG. Make sure it runs with "
                "appendonly yes and appendfsync always (ask the provider), then set "
                "LOPSO_REDIS_DURABILITY=warn to start without this check"
            )
        wrong = [
            f"{name} is {self.settings.get(name, 'unset')!r} (need {want!r})"
            for name, want in WANTED.items()
            if self.settings.get(name) != want
        ]
        if not wrong:
            return None
        return (
            f"Redis would lose acknowledged attendance in a crash: {' and '.join(wrong)}. "
            "Start redis-server with --appendonly yes --appendfsync always (redis.conf: "
            "appendonly yes, appendfsync always; or CONFIG SET both, then CONFIG REWRITE), "
            "or set LOPSO_REDIS_DURABILITY=warn to start anyway"
        )


def judge(persistence: Persistence, mode: str, url: str) -> str | None:
    """Apply the policy: DurabilityError in strict mode; in warn mode one warning, returned
    so the node can show it. None when Redis is durable."""
    problem = persistence.problem()
    if problem is None:
        return None
    if mode == "strict":
        raise DurabilityError(f"{problem} (LOPSO_REDIS_DURABILITY=strict)")
    log.warning(
        "redis is not durable: a crash loses acknowledged attendance",
        extra={"redis": _safe(url), "problem": problem, "durability": mode},
    )
    return problem


def _safe(url: str) -> str:
    """The URL without its password (logs are shared more widely than secrets)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def check(store: RedisStore, mode: str) -> str | None:
    """Read the store's Redis persistence and judge it (see `judge`)."""
    return judge(await store.persistence(), mode, store.url)
