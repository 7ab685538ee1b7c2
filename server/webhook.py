"""The end-of-class webhook: POST the class summary to a configured URL, signed, until acknowledged.

    sender = WebhookSender(url, secret, data_dir)
    await sender.start()
    await sender.enqueue(f"class_ended:{sid}", await class_summary(store, session))
    ...
    await sender.close()

Each delivery is a POST of one JSON body (serialised once, at enqueue, so every retry sends
the same bytes) with these headers:

- ``X-LopSo-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body with the shared secret
  (check it with ``verify_signature``, in constant time);
- ``X-LopSo-Timestamp``: Unix seconds of this attempt;
- ``X-LopSo-Delivery``: the delivery id, the same on every retry: receivers dedupe on it,
  since a reply lost on the way back means the same delivery arrives again.

Anything but a 2xx (an error status, a redirect, a refused connection, a timeout) is retried
with exponential backoff and jitter, capped (``max_delay_s``), until a 2xx or until the
delivery is older than ``max_age_s`` (then it is dropped with an error in the log).

Pending deliveries live in ``<data_dir>/webhook.json``, rewritten atomically (temp file,
fsync, rename) before ``enqueue`` returns and after every attempt, so a restart or a crash
resumes them. The file also remembers the last delivered ids, which makes ``enqueue``
idempotent: ending a class twice, or on two nodes, posts once per data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from server import files
from server.models import ClassSession
from server.store.base import Store

log = logging.getLogger(__name__)

FILE_NAME = "webhook.json"
SIGNATURE_HEADER = "X-LopSo-Signature"
TIMESTAMP_HEADER = "X-LopSo-Timestamp"
DELIVERY_HEADER = "X-LopSo-Delivery"
REMEMBER_DELIVERED = 1000

Clock = Callable[[], float]


class WebhookError(Exception):
    """The webhook is misconfigured (URL, secret) or its state file cannot be used."""


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for `body`: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when `header` is the signature of `body` under `secret` (constant-time compare)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def backoff_s(attempts: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before the next try after `attempts` failures: base * 2^(n-1), capped, jittered
    down by at most half so that many nodes retrying one receiver spread out."""
    delay: float = min(cap_s, base_s * float(2 ** min(max(attempts - 1, 0), 62)))
    return delay / 2 + rng.random() * delay / 2


@dataclasses.dataclass
class Delivery:
    """One body waiting to be acknowledged."""

    id: str
    body: str  # the JSON text, exactly as sent on every attempt
    created_at: float
    next_at: float
    attempts: int = 0
    last_error: str = ""


class WebhookSender:
    """Delivers enqueued payloads to one URL in the background; see the module docstring."""

    def __init__(
        self,
        url: str,
        secret: bytes | str,
        data_dir: Path,
        *,
        base_delay_s: float = 2.0,
        max_delay_s: float = 600.0,
        timeout_s: float = 15.0,
        max_age_s: float = 7 * 86400,
        clock: Clock = time.time,
        seed: int | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise WebhookError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.secret = secret.encode() if isinstance(secret, str) else secret
        if len(self.secret) < 16:
            raise WebhookError("webhook secret must be at least 16 characters")
        self.url, self.path = url, Path(data_dir) / FILE_NAME
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.timeout_s, self.max_age_s, self.clock = timeout_s, max_age_s, clock
        self._rng = random.Random(seed)
        self._pending: dict[str, Delivery] = {}
        self._delivered: list[str] = []
        self._wake = asyncio.Event()
        self._save_lock = asyncio.Lock()
        self._saves: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load pending deliveries from the data dir and start sending."""
        self._load()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.create_task(self._run(), name="lopso-webhook")
        if self._pending:
            log.info("webhook deliveries resumed", extra={"pending": len(self._pending)})

    async def close(self) -> None:
        """Stop sending; what is still pending stays in the file for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- API ---------------------------------------------------------------------------------
    async def enqueue(self, delivery_id: str, payload: dict[str, Any]) -> bool:
        """Queue `payload` for delivery; returns once it is on disk. False when this id is
        already pending or was delivered (nothing is sent again)."""
        if delivery_id in self._pending or delivery_id in self._delivered:
            return False
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        now = self.clock()
        self._pending[delivery_id] = Delivery(delivery_id, body, created_at=now, next_at=now)
        await self._save()
        self._wake.set()
        return True

    def pending(self) -> list[Delivery]:
        """Deliveries not yet acknowledged (copies), oldest first."""
        items = sorted(self._pending.values(), key=lambda d: d.created_at)
        return [dataclasses.replace(d) for d in items]

    def delivered(self) -> list[str]:
        """Ids of the most recent acknowledged deliveries, oldest first."""
        return list(self._delivered)

    # --- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            due = [d for d in self.pending() if d.next_at <= now]
            for delivery in due:
                await self._attempt(self._pending[delivery.id])
            waits = [d.next_at - self.clock() for d in self._pending.values()]
            timeout = max(0.0, min(waits)) if waits else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _attempt(self, delivery: Delivery) -> None:
        """One POST; then the delivery is done, rescheduled, or dropped as too old."""
        error = await self._post(delivery)
        delivery.attempts += 1
        if error is None:
            del self._pending[delivery.id]
            self._delivered = [*self._delivered, delivery.id][-REMEMBER_DELIVERED:]
            log.info(
                "webhook delivered", extra={"delivery": delivery.id, "attempts": delivery.attempts}
            )
        elif self.clock() - delivery.created_at > self.max_age_s:
            del self._pending[delivery.id]
            log.error(
                "webhook delivery dropped: too old",
                extra={"delivery": delivery.id, "attempts": delivery.attempts, "error": error},
            )
        else:
            delivery.last_error = error
            delay = backoff_s(delivery.attempts, self.base_delay_s, self.max_delay_s, self._rng)
            delivery.next_at = self.clock() + delay
            log.warning(
                "webhook delivery failed; will retry",
                extra={
                    "delivery": delivery.id,
                    "attempts": delivery.attempts,
                    "error": error,
                    "retry_in_s": round(delay, 2),
                },
            )
        await self._save()

    async def _post(self, delivery: Delivery) -> str | None:
        """POST the body; None on a 2xx, else what went wrong."""
        assert self._http is not None
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            TIMESTAMP_HEADER: str(int(self.clock())),
            DELIVERY_HEADER: delivery.id,
            "User-Agent": "LopSo-Webhook/1",
        }
        try:
            async with self._http.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as reply:
                await reply.read()
                return None if 200 <= reply.status < 300 else f"HTTP {reply.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]

    # --- the state file ----------------------------------------------------------------------
    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise WebhookError(f"cannot read webhook state {self.path}: {exc}") from None
        try:
            items = [Delivery(**d) for d in raw.get("pending", [])]
            self._delivered = [str(i) for i in raw.get("delivered", [])][-REMEMBER_DELIVERED:]
        except (TypeError, AttributeError) as exc:
            raise WebhookError(f"webhook state {self.path} is malformed: {exc}") from None
        self._pending = {d.id: d for d in items}

    async def _save(self) -> None:
        """Write the state atomically, off the event loop. Shielded: a sender closed while a
        write is under way still finishes it (close() waits), and writes never overlap."""
        task = asyncio.ensure_future(self._save_now())
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)
        await asyncio.shield(task)

    async def _save_now(self) -> None:
        async with self._save_lock:  # the snapshot is taken in turn: the last write is newest
            state = {
                "pending": [dataclasses.asdict(d) for d in self.pending()],
                "delivered": list(self._delivered),
            }
            text = json.dumps(state, ensure_ascii=False)
            await asyncio.to_thread(files.write_private, self.path, text.encode())


async def class_summary(
    store: Store, session: ClassSession, now: float | None = None
) -> dict[str, Any]:
    """The end-of-class webhook body: ``{"type": "class_ended", ...exports.to_summary}``.

    Derived from the ledger in a worker thread: with 5,000 sites and a quarter of a million
    check-ins that takes seconds, which the event loop must not wait for."""
    from server import attendance, exports

    sites = await store.list_sites()
    events = await store.events(session.id)
    at = time.time() if now is None else now
    report = await asyncio.to_thread(attendance.derive, session, sites, events, at)
    return {"type": "class_ended", **exports.to_summary(report)}


__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Delivery",
    "WebhookError",
    "WebhookSender",
    "backoff_s",
    "class_summary",
    "sign",
    "verify_signature",
]
