"""A hall replays a recorded class in Chromium: the site's replay link opens the site page in
replay mode, plays, seeks to the middle and plays on; the ledger gets the replay minutes and
the report the status "Xem lại".

The lecturer is an aiortc peer (a thread with its own event loop) publishing over WHIP.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from typing import Any

import pytest

from server.models import Role
from tests.serverproc import LopsoServer

CLASS_S = 14.0


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server whose demo class was published CLASS_S seconds, ended and recorded."""
    env = {"LOPSO_RECORD_SEGMENT_S": "2", "LOPSO_RECORD_MIN_FREE_MB": "1"}
    with LopsoServer(tmp_path_factory.mktemp("replay"), demo_sites=2, env=env) as srv:
        # the class's room opens before the lecturer goes live (as a hall's page would open
        # it): a room first opened by the live announcement itself records no class start
        _api(srv, f"/api/sessions/{srv.demo['session_id']}")
        thread = threading.Thread(target=lambda: asyncio.run(_publish(srv, CLASS_S)))
        thread.start()
        thread.join(CLASS_S + 30)
        sid = srv.demo["session_id"]
        _api(srv, f"/api/sessions/{sid}/end", method="POST")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                info = _api(srv, f"/api/sessions/{sid}/recording")
                if info["state"] == "ended" and info["file"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield srv


async def _publish(srv: LopsoServer, seconds: float) -> None:
    import aiohttp

    from tests.clusterproc import WhipPublisher

    async with aiohttp.ClientSession() as http:
        publisher = WhipPublisher(http)
        await publisher.publish(srv.demo["lecturer"]["whip_url"], srv.demo["lecturer"]["token"])
        await asyncio.sleep(seconds)
        await publisher.close()


def _api(srv: LopsoServer, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(
        srv.url + path,
        method=method,
        headers={"Authorization": f"Bearer {srv.token(Role.MODERATOR)}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read() or b"{}")


def test_a_hall_replays_seeks_and_the_ledger_counts_it(recorded: Any, browser_pages: Any) -> None:
    srv = recorded
    sid = srv.demo["session_id"]
    site = srv.demo["sites"][1]
    page = browser_pages.open(site["replay_url"], name="replay")
    assert page.locator("#status").inner_text() == "Xem lại buổi học"  # Vietnamese first
    page.click("#start")
    page.wait_for_function("window.lopso.video.currentTime > 2", timeout=20_000)
    duration = page.evaluate("window.lopso.video.duration")
    assert CLASS_S - 6 <= duration <= CLASS_S + 3, duration
    page.evaluate(f"window.lopso.video.currentTime = {duration / 2}")
    page.wait_for_function(
        f"window.lopso.video.currentTime > {duration / 2 + 2} && !window.lopso.video.paused",
        timeout=20_000,
    )
    page.wait_for_function("window.lopso.video.ended", timeout=30_000)
    decoded = page.evaluate("window.lopso.video.getVideoPlaybackQuality().totalVideoFrames")
    assert decoded > 30
    page.evaluate("window.lopso.report()")
    assert page.evaluate("window.lopso.reports") == 1
    report = _api(srv, f"/api/sessions/{sid}/attendance")
    record = next(s for s in report["sites"] if s["code"] == site["code"])
    watched = page.evaluate("window.lopso.watched")
    assert record["replay_seconds"] == pytest.approx(watched, abs=1.5)
    assert record["replay_seconds"] >= duration / 2
    assert record["status"] == "replay", (record, report["window"])
    assert report["province"]["replay_minutes"] > 0
