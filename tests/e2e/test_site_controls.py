"""The site player's own controls in headless Chromium against a real `lopso serve`:
the media choice (Tự động / Chỉ âm thanh) reaches the site's viewer, and a revoked link
(the site's join key rotated) stops the site page and the check-in page with a clear card
instead of retrying forever.

Its own module (own server): rotating a demo site's key breaks that site's links.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.e2e.test_class import assert_frames_rising, frames, wait_state

REVOKED_VI = "Đường link này đã được thay."


def rotate(lopso: Any, code: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{lopso.url}/api/sites/{code}/rotate",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Bearer {lopso.admin_token()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.loads(reply.read())


def go_live(lopso: Any, browser_pages: Any) -> Any:
    studio = browser_pages.open(lopso.demo["lecturer"]["url"], name="studio")
    studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
    studio.click("#golive")
    wait_state(studio, "live")
    return studio


def test_audio_only_control_stops_video_keeps_playing_and_auto_brings_it_back(
    lopso: Any, browser_pages: Any
) -> None:
    go_live(lopso, browser_pages)
    site = browser_pages.open(lopso.demo["sites"][0]["url"], name="site-mode")
    wait_state(site, "playing")
    assert site.get_attribute("#mode-auto", "aria-pressed") == "true"
    assert "Chỉ âm thanh" in site.inner_text("#mode-audio")
    assert_frames_rising(site)

    site.click("#mode-audio")
    assert site.get_attribute("#mode-audio", "aria-pressed") == "true"
    assert site.evaluate("window.lopso.mode") == "audio_only"
    site.wait_for_timeout(1500)  # the server stops forwarding video; frames in flight land
    before = frames(site)
    site.wait_for_timeout(7000)  # longer than the page's stall limit (5 s)
    assert frames(site) - before <= 2, "video kept coming in audio-only mode"
    assert site.evaluate("window.lopso.state") == "playing"  # the sound counts: no stall
    connects = site.evaluate("window.lopso.whepConnects")
    assert site.locator("#media-note").is_visible()
    assert "âm thanh" in site.inner_text("#media-note")

    site.reload()  # the choice survives a reload and the new viewer starts audio only
    wait_state(site, "playing")
    assert site.evaluate("window.lopso.mode") == "audio_only"
    site.wait_for_timeout(3000)
    assert frames(site) <= 2

    site.click("#mode-auto")
    assert site.get_attribute("#mode-auto", "aria-pressed") == "true"
    site.wait_for_function("window.lopso.framesDecoded() > 10", timeout=15_000)
    assert_frames_rising(site)
    assert site.locator("#media-note").is_hidden()
    assert connects >= 1


def test_the_wall_shows_a_sites_sound_only_choice(lopso: Any, browser_pages: Any) -> None:
    code = lopso.demo["sites"][0]["code"]  # left in "auto" by the test above
    moderator = browser_pages.open(lopso.demo["moderator"]["url"], name="moderator-mode")
    moderator.wait_for_function("window.lopso && window.lopso.tileCount() >= 2")
    tile = f'.tile[data-code="{code}"]'
    assert moderator.get_attribute(tile, "data-media") is None
    site = browser_pages.open(lopso.demo["sites"][0]["url"], name="site-mode-wall")
    site.wait_for_function("window.lopso && window.lopso.wsState === 'open'")

    site.click("#mode-audio")
    moderator.wait_for_selector(f'{tile}[data-media="audio_only"]', timeout=10_000)
    assert "Chỉ âm thanh" in moderator.get_attribute(tile, "aria-label")
    moderator.click(tile)
    moderator.wait_for_function(
        "document.getElementById('detail-fields').textContent.indexOf('Chỉ âm thanh') >= 0"
    )

    site.click("#mode-auto")
    moderator.wait_for_selector(f"{tile}:not([data-media])", timeout=10_000)
    moderator.wait_for_function(
        "document.getElementById('detail-fields').textContent.indexOf('Tự động') >= 0"
    )
    assert "Chỉ âm thanh" not in moderator.get_attribute(tile, "aria-label")


def test_a_revoked_link_stops_the_site_and_checkin_pages(lopso: Any, browser_pages: Any) -> None:
    demo_site = lopso.demo["sites"][1]
    site = browser_pages.open(demo_site["url"], name="site-revoked")
    site.wait_for_function("window.lopso && window.lopso.wsState === 'open'")
    link = site.get_attribute("#checkin-link", "href")
    phone = browser_pages.open(link, name="phone-revoked", viewport={"width": 360, "height": 640})
    ws_path = site.evaluate("JSON.parse(document.getElementById('page-config').textContent).ws_url")

    assert rotate(lopso, demo_site["code"])["rotated"] is True
    wait_state(site, "revoked", timeout_ms=15_000)
    assert REVOKED_VI in site.inner_text("#card-title")
    assert "ban tổ chức" in site.inner_text("#card-detail")
    for control in ("#start", "#open-help", "#open-checkin", "#mode-audio"):
        assert site.locator(control).is_hidden(), f"{control} still offered on a revoked link"
    connects = site.evaluate("window.lopso.whepConnects")
    site.wait_for_timeout(4000)  # no reconnect loop: the socket stays closed, no new viewer
    assert site.evaluate("[window.lopso.wsState, window.lopso.revoked]") == ["closed", True]
    assert site.evaluate("window.lopso.whepConnects") == connects

    # A page that missed the message (it was offline) learns it on its next connect attempt.
    rejected = site.evaluate(
        """async (path) => {
        const { Channel } = await import('/static/js/protocol.js');
        const ch = new Channel(path);
        const err = await new Promise((resolve) => { ch.on('rejected', resolve); ch.connect(); });
        return [err.code, ch.state, ch.reconnects]; }""",
        ws_path,
    )
    assert rejected == ["token_revoked", "closed", 0]

    phone.fill("#name", "Lê Thị Mai")
    phone.click("#submit")
    phone.wait_for_selector("#revoked:not([hidden])")
    assert REVOKED_VI in phone.inner_text("#revoked")
    assert phone.locator("#form").is_hidden()

    site.reload()  # the old link no longer opens the page: the error page says why
    assert site.inner_text(".error-status").strip() == "401"
    assert REVOKED_VI in site.inner_text("h1")
    try:
        urllib.request.urlopen(demo_site["url"], timeout=10)
        raise AssertionError("the revoked link still opens the page")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
