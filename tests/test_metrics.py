"""GET /metrics: who may scrape it, and its numbers moving during a real publish and view."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverproc import mint, running_app
from test_api import ADMIN, seed
from test_whip_whep import decoded_numbers, publish, view

from server.metrics import Metrics, metered
from server.models import Role
from server.store import StoreError, open_store

TOKEN = "metrics-token-0123456789"
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = await client.get("/metrics", headers=SCRAPER)
    assert reply.status == 200, await reply.text()
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    return samples(await reply.text())


def value(found, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def posts(found, kind: str, status: str) -> float:
    """WHIP/WHEP POSTs from clients that got `status`."""
    labels = {"kind": kind, "method": "POST", "status": status, "via": "client"}
    return value(found, "lopso_signalling_requests_total", **labels)


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(tmp_path, media=True, batch_interval_s=0.2, metrics_token=TOKEN) as (
        client,
        state,
    ):
        await seed(client)
        yield client, state


@pytest.fixture
async def signalling_app(tmp_path: Path):
    async with running_app(tmp_path, metrics_token=TOKEN) as (client, state):
        await seed(client)
        yield client, state


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer not-the-token-at-all"}, 401),
        ({"Authorization": f"Bearer {mint(Role.MODERATOR, 'c1')}"}, 403),
        ({"Authorization": f"Bearer {mint(Role.SITE, 'c1', 'S1')}"}, 403),
        (SCRAPER, 200),
        (ADMIN, 200),
    ],
)
async def test_who_may_scrape(signalling_app, headers, status) -> None:
    client, _ = signalling_app
    reply = await client.get("/metrics", headers=headers)
    assert reply.status == status, await reply.text()


async def test_checkins_by_result(signalling_app) -> None:
    client, _ = signalling_app
    url = "/api/sessions/c1/sites/S1/checkins"
    headers = {"Authorization": f"Bearer {mint(Role.PARTICIPANT, 'c1', 'S1')}"}
    for body, status in (
        ({"name": "Lò Thị Mai"}, 201),
        ({"name": "LO THI MAI"}, 200),  # the same person without diacritics: a duplicate
        ({"name": ""}, 400),
        ({"name": "Mai", "shoe": 42}, 400),
    ):
        reply = await client.post(url, json=body, headers=headers)
        assert reply.status == status, await reply.text()
    found = await scrape(client)
    assert value(found, "lopso_checkins_total", result="accepted", reason="") == 1
    assert value(found, "lopso_checkins_total", result="duplicate", reason="") == 1
    assert value(found, "lopso_checkins_total", result="refused", reason="invalid") == 2
    assert value(found, "lopso_ledger_appends_total", operation="add_checkin") == 2
    assert value(found, "lopso_ledger_append_seconds_count", operation="add_checkin") == 2


async def test_numbers_move_during_publish_and_view(app) -> None:
    client, state = app
    before = await scrape(client)
    assert value(before, "lopso_lectures_live") == 0
    assert value(before, "lopso_websocket_connections", role="site") == 0

    site_ws = await client.ws_connect("/ws/c1", params={"token": mint(Role.SITE, "c1", "S1")})
    refused = await client.post(
        "/whep/c1/S1", data="v=0", headers={"Content-Type": "application/sdp"}
    )
    assert refused.status == 401
    viewer, _, frames = await view(client, "S1")
    publisher, _ = await publish(client)
    try:
        assert None not in await decoded_numbers(frames, 10)
        first = await scrape(client)
        assert value(first, "lopso_lectures_live") == 1
        assert value(first, "lopso_lectures") == 1
        assert value(first, "lopso_viewers", sid="c1") == 1
        assert value(first, "lopso_websocket_connections", role="site") == 1
        assert posts(first, "whep", "201") == 1
        assert posts(first, "whep", "401") == 1
        assert posts(first, "whip", "201") == 1
        assert value(first, "lopso_join_seconds_count", path="udp") == 1
        assert 0 < value(first, "lopso_join_seconds_sum", path="udp") < 10
        assert value(first, "lopso_viewers_path", sid="c1", path="udp") == 1
        assert value(first, "lopso_viewers_path", sid="c1", path="tcp") == 0
        assert value(first, "lopso_lecture_packets_in_total", sid="c1") > 0
        assert value(first, "lopso_lecture_bytes_in_total", sid="c1") > 0
        for kind in ("audio", "video"):
            copies = value(first, "lopso_fanout_copies_total", sid="c1", kind=kind)
            assert copies > 0, kind
            # one viewer: every packet since it joined is one copy
            assert copies <= value(first, "lopso_fanout_packets_total", sid="c1", kind=kind)
        assert value(first, "lopso_viewers_bytes_sent", sid="c1") > 0
        assert value(first, "lopso_ledger_appends_total", operation="append") >= 1  # joined, live

        await decoded_numbers(frames, 10)
        later = await scrape(client)
        for name in ("lopso_fanout_copies_total", "lopso_fanout_packets_total"):
            assert value(later, name, sid="c1", kind="video") > value(
                first, name, sid="c1", kind="video"
            )
        assert value(later, "lopso_viewers_packets_sent", sid="c1") > value(
            first, "lopso_viewers_packets_sent", sid="c1"
        )
    finally:
        await viewer.close()
        await publisher.close()
        await site_ws.close()
    deadline = time.monotonic() + 5
    while True:
        after = await scrape(client)
        if value(after, "lopso_websocket_connections", role="site") == 0:
            break
        assert time.monotonic() < deadline, "the page's gauge never went back to 0"
        await asyncio.sleep(0.05)


async def test_store_errors_counted_by_operation(tmp_path: Path) -> None:
    metrics = Metrics(dict)
    store = metered(await open_store(None, tmp_path, "n1"), metrics)
    assert await store.get_session("nope") is None
    await store.close()
    with pytest.raises(StoreError):
        await store.list_sessions()
    found = samples(metrics.render().decode())
    assert value(found, "lopso_store_errors_total", operation="list_sessions") == 1
    assert value(found, "lopso_store_errors_total", operation="get_session") == 0
