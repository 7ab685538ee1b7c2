"""Two presenters in headless Chromium (issue 12): two studios and a moderator page; the
moderator puts each on air in turn; a site page shows the cut (a keyframe, the caption) and
keeps decoding; the studio on standby plays the return feed."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.e2e.test_class import assert_frames_rising, wait_state

SID = "hai-bao-cao-vien"
LOADED = 60_000  # three pages sending or decoding video on a 2-core machine: slow, not stuck
PRESENTERS = [
    {"id": "hocvien", "name": "TS. Nguyễn Văn An", "organisation": "Học viện"},
    {"id": "congan", "name": "Đại úy Trần Thị Bình", "organisation": "Công an tỉnh"},
]


def api(lopso: Any, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        lopso.url + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {lopso.admin_token()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def on_air(page: Any) -> str | None:
    return page.evaluate("window.lopso.presenters && window.lopso.presenters.on_air")


def key_frames(page: Any) -> int:
    return int(
        page.evaluate("""async () => { let n = 0;
            (await window.lopso.peerConnection().getStats()).forEach((s) => {
                if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.keyFramesDecoded || 0; });
            return n; }""")
    )


def cut(moderator: Any, site: Any, presenter: str) -> float:
    """The moderator clicks "Lên sóng"; seconds until the site decoded the cut's keyframe."""
    before = key_frames(site)
    moderator.click(f'li[data-presenter="{presenter}"] .presenter-cut')
    clicked = time.monotonic()
    site.wait_for_function(
        """async (n) => { let k = 0;
            (await window.lopso.peerConnection().getStats()).forEach((s) => {
                if (s.type === 'inbound-rtp' && s.kind === 'video') k += s.keyFramesDecoded || 0; });
            return k > n; }""",
        arg=before,
        polling=50,
        timeout=10_000,
    )
    seconds = time.monotonic() - clicked
    moderator.wait_for_function("(p) => window.lopso.presenters.on_air === p", arg=presenter)
    site.wait_for_selector(f'#on-air-caption[data-presenter="{presenter}"]:not([hidden])')
    return seconds


@pytest.mark.timeout(600)  # five Chromium pages with video: minutes on a loaded 2-core machine
def test_moderator_cuts_between_two_studios_and_a_site_follows(
    lopso: Any, browser_pages: Any
) -> None:
    site_code = lopso.demo["sites"][0]["code"]
    api(
        lopso,
        "POST",
        "/api/sessions",
        {
            "id": SID,
            "title": "Hai báo cáo viên",
            "starts_at": time.time(),
            "site_codes": [site_code],
            "presenters": PRESENTERS,
        },
    )
    links = api(lopso, "GET", f"/api/sessions/{SID}/links")
    moderator = browser_pages.open(links["moderator"]["url"], name="moderator", timeout_ms=LOADED)
    moderator.wait_for_selector('li[data-presenter="congan"][data-state="offline"]')

    studios = {}
    for link in links["presenters"]:  # the lead first: it goes on air, the other on standby
        studio = browser_pages.open(link["url"], name=f"studio-{link['id']}", timeout_ms=LOADED)
        studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
        studio.click("#golive")
        wait_state(studio, "live")
        studios[link["id"]] = studio
        moderator.wait_for_selector(
            f'li[data-presenter="{link["id"]}"]:not([data-state="offline"])'
        )
    # (waited for, not read once: on a loaded machine a studio's encoder may stall past the
    # 3 s silence timeout, and the lecture is briefly off air)
    moderator.wait_for_selector('li[data-presenter="hocvien"][data-state="on_air"]')
    moderator.wait_for_selector('li[data-presenter="congan"][data-state="standby"] .presenter-cut')
    moderator.wait_for_function(
        "!document.querySelector('li[data-presenter=\"hocvien\"] .presenter-cut')"
    )
    studios["hocvien"].wait_for_selector("#live-badge:not([hidden])")
    assert studios["congan"].locator("#live-badge").is_hidden()

    site_url = next(s["url"] for s in links["sites"] if s["code"] == site_code)
    site = browser_pages.open(site_url, name="site", timeout_ms=LOADED)
    wait_state(site, "playing")
    site.click("#start")
    assert_frames_rising(site)
    site.wait_for_selector('#on-air-caption[data-presenter="hocvien"]:not([hidden])')

    # The studio on standby sees the programme on its return feed; the moderator previews it.
    standby = studios["congan"]
    standby.wait_for_function("window.lopso.returnFrames() > 10", timeout=20_000)
    moderator.wait_for_function("window.lopso.previewFrames('congan') > 10", timeout=20_000)

    to_b = cut(moderator, site, "congan")
    assert_frames_rising(site)
    studios["congan"].wait_for_selector("#live-badge:not([hidden])")
    studios["hocvien"].wait_for_selector("#live-badge", state="hidden")
    to_a = cut(moderator, site, "hocvien")
    assert_frames_rising(site)
    print(f"Chromium site: cut to B decoded {to_b:.3f} s after the click, back to A {to_a:.3f} s")
    # A click, an HTTP round trip, Chromium's keyframe, the site's jitter buffer and getStats
    # polling, on a loaded 2-core machine (the server's own part is logged: "cut on air").
    assert max(to_b, to_a) < 10.0
    assert site.evaluate("window.lopso.state") == "playing"
