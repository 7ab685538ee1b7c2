"""The end-of-class webhook against a real aiohttp receiver on loopback.

The receiver fails the first attempts in every way a receiver can (error statuses, a
redirect, a reply that never comes), then acknowledges; the sender must retry with growing
delays, sign every attempt, and deliver exactly once, also across a restart.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from serverproc import LopsoServer

from server import attendance, exports
from server.models import ClassSession, Event, EventKind, Site
from server.store.embedded import EmbeddedStore
from server.webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookError,
    WebhookSender,
    backoff_s,
    class_summary,
    sign,
    verify_signature,
)

SECRET = b"webhook-secret-0123456789"
FAST: dict[str, Any] = {"base_delay_s": 0.05, "max_delay_s": 0.4, "timeout_s": 0.3}


class Receiver:
    """An HTTP endpoint that answers from a script of behaviours, then 200; records every hit."""

    def __init__(self, script: list[int | str]) -> None:
        self.script = list(script)
        self.hits: list[dict[str, Any]] = []
        self.acked = asyncio.Event()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hits.append({"at": time.monotonic(), "headers": dict(request.headers), "body": body})
        action = self.script.pop(0) if self.script else 200
        if action == "hang":  # longer than the sender's timeout
            await asyncio.sleep(2)
        if action == 302:
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        if action == 200:
            self.acked.set()
        return web.Response(status=200 if action == "hang" else int(action), text="ok")

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hooks/lopso"))


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def make(script: list[int | str]) -> Receiver:
        receiver = Receiver(script)
        app = web.Application()
        app.router.add_post("/hooks/lopso", receiver.handle)
        receiver.server = TestServer(app, host="127.0.0.1")
        await receiver.server.start_server()
        servers.append(receiver.server)
        return receiver

    yield make
    for server in servers:
        await server.close()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def state_file(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "webhook.json").read_text(encoding="utf-8")))


# --- signatures and backoff --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "body", "header", "ok"),
    [
        (SECRET, b'{"a":1}', sign(SECRET, b'{"a":1}'), True),
        (SECRET, b'{"a":1}', sign(b"another-secret-0123456", b'{"a":1}'), False),
        (SECRET, b'{"a":2}', sign(SECRET, b'{"a":1}'), False),
        (SECRET, b'{"a":1}', sign(SECRET, b'{"a":1}').removeprefix("sha256="), False),
        (SECRET, b'{"a":1}', None, False),
        (SECRET, b"", sign(SECRET, b""), True),
    ],
    ids=["good", "wrong-secret", "tampered-body", "no-prefix", "missing", "empty-body"],
)
def test_verify_signature(secret: bytes, body: bytes, header: str | None, ok: bool) -> None:
    assert verify_signature(secret, body, header) is ok


def test_signature_is_hmac_sha256_hex() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"Jefe", b"what do ya want for nothing?") == f"sha256={expected}"


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempts, full in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (9, 60.0), (500, 60.0)]:
        delays = [backoff_s(attempts, 1.0, 60.0, rng) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full
        assert max(delays) - min(delays) > full / 4  # jittered, not fixed


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("ftp://example.org/hook", SECRET),
        ("example.org/hook", SECRET),
        ("https://example.org/hook", b"short"),
    ],
)
def test_bad_configuration_is_refused(tmp_path: Path, url: str, secret: bytes) -> None:
    with pytest.raises(WebhookError):
        WebhookSender(url, secret, tmp_path)


# --- delivery ------------------------------------------------------------------------------------


async def test_retries_until_acknowledged_then_delivers_once(
    tmp_path: Path, receiver_factory: Any
) -> None:
    receiver = await receiver_factory([500, 404, 302, "hang", 503])
    sender = WebhookSender(receiver.url, SECRET, tmp_path, seed=1, **FAST)
    await sender.start()
    try:
        payload = {"type": "class_ended", "session": {"id": "c1", "title": "Lớp học số"}}
        assert await sender.enqueue("class_ended:c1", payload) is True
        assert state_file(tmp_path)["pending"][0]["id"] == "class_ended:c1"  # on disk at once
        await asyncio.wait_for(receiver.acked.wait(), 10)
        await asyncio.sleep(0.5)  # long enough for a stray retry to show
    finally:
        await sender.close()

    assert len(receiver.hits) == 6  # five failures, then the acknowledged one, nothing after
    bodies = {hit["body"] for hit in receiver.hits}
    assert len(bodies) == 1  # every retry sends the same bytes
    body = bodies.pop()
    assert json.loads(body) == payload
    for hit in receiver.hits:
        headers = hit["headers"]
        assert verify_signature(SECRET, body, headers[SIGNATURE_HEADER])
        assert headers[DELIVERY_HEADER] == "class_ended:c1"
        assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 30
        assert headers["Content-Type"] == "application/json"
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.hits, receiver.hits[1:], strict=False)]
    # backoff 0.05 * 2^(n-1), jittered into [d/2, d], capped at 0.4; the 4th attempt also
    # waited out its 0.3 s timeout. Lower bounds hold on any machine; the cap with some slack.
    least = [0.025, 0.05, 0.1, 0.3 + 0.2, 0.2]
    assert all(g >= low - 0.005 for g, low in zip(gaps, least, strict=True)), gaps
    assert gaps[4] < 0.4 + 0.25, gaps  # capped: not 0.8
    assert sender.pending() == [] and sender.delivered() == ["class_ended:c1"]
    assert state_file(tmp_path) == {"pending": [], "delivered": ["class_ended:c1"]}


async def test_enqueue_is_idempotent_on_the_delivery_id(
    tmp_path: Path, receiver_factory: Any
) -> None:
    receiver = await receiver_factory([500])
    sender = WebhookSender(receiver.url, SECRET, tmp_path, **FAST)
    await sender.start()
    try:
        assert await sender.enqueue("class_ended:c1", {"n": 1}) is True
        assert await sender.enqueue("class_ended:c1", {"n": 2}) is False  # still pending
        await asyncio.wait_for(receiver.acked.wait(), 10)
        assert await sender.enqueue("class_ended:c1", {"n": 3}) is False  # delivered already
        assert await sender.enqueue("class_ended:c2", {"n": 4}) is True
        await wait_for(lambda: not sender.pending())
    finally:
        await sender.close()
    assert [json.loads(h["body"])["n"] for h in receiver.hits] == [1, 1, 4]


async def test_pending_delivery_survives_a_restart(tmp_path: Path, receiver_factory: Any) -> None:
    receiver = await receiver_factory([503] * 1000)  # down until we say so
    first = WebhookSender(receiver.url, SECRET, tmp_path, **FAST)
    await first.start()
    await first.enqueue("class_ended:c9", {"type": "class_ended", "people": 250_000})
    await wait_for(lambda: len(receiver.hits) >= 2)
    await first.close()  # as at a shutdown; a crash leaves the same file (written per attempt)
    hits_before = len(receiver.hits)
    saved = state_file(tmp_path)["pending"]
    assert [d["id"] for d in saved] == ["class_ended:c9"]
    # the attempt under way at close() may not be counted yet: the file is at most one behind
    assert saved[0]["attempts"] >= hits_before - 1 >= 1 and saved[0]["last_error"] == "HTTP 503"

    receiver.script.clear()  # the receiver is back
    second = WebhookSender(receiver.url, SECRET, tmp_path, **FAST)
    await second.start()
    try:
        assert [d.id for d in second.pending()] == ["class_ended:c9"]
        await asyncio.wait_for(receiver.acked.wait(), 10)
        await wait_for(lambda: not second.pending())
        await asyncio.sleep(0.3)
    finally:
        await second.close()
    assert len(receiver.hits) == hits_before + 1  # delivered once after the restart
    assert json.loads(receiver.hits[-1]["body"]) == {"type": "class_ended", "people": 250_000}

    third = WebhookSender(receiver.url, SECRET, tmp_path, **FAST)
    await third.start()
    try:  # a later start remembers what was delivered
        assert await third.enqueue("class_ended:c9", {"again": True}) is False
    finally:
        await third.close()


async def test_too_old_delivery_is_dropped(tmp_path: Path, receiver_factory: Any) -> None:
    receiver = await receiver_factory([500] * 1000)
    sender = WebhookSender(receiver.url, SECRET, tmp_path, max_age_s=0.3, **FAST)
    await sender.start()
    try:
        await sender.enqueue("class_ended:old", {"n": 1})
        await wait_for(lambda: not sender.pending())
    finally:
        await sender.close()
    assert 1 <= len(receiver.hits) < 12  # tried for 0.3 s with delays from 0.025 s up
    assert state_file(tmp_path) == {"pending": [], "delivered": []}


async def test_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "webhook.json").write_text("{not json", encoding="utf-8")
    sender = WebhookSender("http://127.0.0.1:9/hook", SECRET, tmp_path)
    with pytest.raises(WebhookError, match="webhook state"):
        await sender.start()


async def test_class_summary_is_the_export_summary(tmp_path: Path) -> None:
    sites = [
        Site("S1", "Nhà văn hóa thôn Đông", commune="Xã A", province="Hưng Yên"),
        Site("S2", "Nhà văn hóa thôn Đoài", commune="Xã B", province="Hưng Yên"),
    ]
    session = ClassSession(
        "c1",
        "Kỹ năng số",
        starts_at=1_000.0,
        ends_at=4_600.0,
        site_codes=("S1", "S2"),
        ended_at=4_600.0,
    )
    events = [
        Event("c1", EventKind.CLASS_STARTED, 1_000.0, id="e1"),
        Event("c1", EventKind.SITE_JOINED, 990.0, "S1", {"conn": "k1"}, id="e2"),
        Event("c1", EventKind.CHECKIN, 1_100.0, "S1", {"name": "An", "by": "qr"}, id="e3"),
        Event("c1", EventKind.HEADCOUNT, 1_200.0, "S1", {"count": 40, "phase": "start"}, id="e4"),
        Event("c1", EventKind.CLASS_ENDED, 4_600.0, id="e5"),
    ]
    async with EmbeddedStore(tmp_path / "data") as store:
        await store.upsert_sites(sites)
        await store.put_session(session)
        for event in events:
            await store.append(event)
        summary = await class_summary(store, session, now=5_000.0)
    assert summary["type"] == "class_ended"
    assert summary["session"]["id"] == "c1"
    assert summary["province"]["checkins"] == 1
    assert summary["never_joined"] == [
        {"code": "S2", "name": "Nhà văn hóa thôn Đoài", "commune": "Xã B"}
    ]
    assert "sites" not in summary
    expected = exports.to_summary(attendance.derive(session, sites, events, 5_000.0))
    rest = {k: v for k, v in summary.items() if k != "type"}
    assert json.loads(json.dumps(rest)) == json.loads(json.dumps(expected))


# --- through lopso serve ---------------------------------------------------------------------


async def test_lopso_serve_posts_the_summary_when_a_class_ends(
    tmp_path: Path, receiver_factory: Any
) -> None:
    receiver = await receiver_factory([503])  # fails once: the server retries it
    env = {"LOPSO_WEBHOOK_URL": receiver.url, "LOPSO_WEBHOOK_SECRET": SECRET.decode()}
    server = LopsoServer(tmp_path, demo_sites=3, env=env)
    await asyncio.to_thread(server.start)
    try:
        sid = server.demo["session_id"]
        site = server.demo["sites"][0]
        async with aiohttp.ClientSession() as http:
            checkin = f"{server.url}/api/sessions/{sid}/sites/{site['code']}/checkins"
            auth = {"Authorization": f"Bearer {site['token']}"}
            async with http.post(checkin, json={"name": "Trần Thị Bình"}, headers=auth) as reply:
                assert reply.status == 201
            lecturer = {"Authorization": f"Bearer {server.demo['lecturer']['token']}"}
            for _ in range(2):  # ending twice posts once
                async with http.post(f"{server.url}/api/sessions/{sid}/end", headers=lecturer) as r:
                    assert r.status == 200
        await asyncio.wait_for(receiver.acked.wait(), 20)
        await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(server.stop)
    assert len(receiver.hits) == 2, server.log()
    body = receiver.hits[-1]["body"]
    assert verify_signature(SECRET, body, receiver.hits[-1]["headers"][SIGNATURE_HEADER])
    summary = json.loads(body)
    assert summary["type"] == "class_ended" and summary["session"]["id"] == sid
    assert summary["province"]["checkins"] == 1
    assert summary["window"]["ended"] is True
