"""A whole class in headless Chromium (issue 3): studio goes live, two sites play, the moderator
sees them with their headcounts, a reload is one rejoin, the CSV export lists both sites.

Plus quick static checks of the pages' strings and scripts that need no browser.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import re
import time
import urllib.request
from typing import Any

import pytest

WEB = pathlib.Path(__file__).resolve().parents[2] / "web"
HEADCOUNTS = (37, 52)


# ---- helpers -----------------------------------------------------------------------------


def http_get(url: str, token: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return reply.status, dict(reply.headers), reply.read()


def frames(page: Any) -> int:
    return int(page.evaluate("window.lopso.framesDecoded()"))


def wait_state(page: Any, state: str, timeout_ms: int = 30_000) -> None:
    try:
        page.wait_for_function(
            "(s) => window.lopso && window.lopso.state === s", arg=state, timeout=timeout_ms
        )
    except Exception as exc:  # noqa: BLE001 - say what the page was doing instead
        seen = page.evaluate(
            "window.lopso ? {state: window.lopso.state, ws: window.lopso.wsState,"
            " whep: window.lopso.whepConnects} : null"
        )
        raise AssertionError(f"{page.url}: never reached {state!r}; page says {seen}") from exc


def assert_frames_rising(page: Any, seconds: float = 2.0) -> tuple[int, int]:
    """framesDecoded grows over `seconds`: the site really decodes video."""
    before = frames(page)
    page.wait_for_timeout(int(seconds * 1000))
    after = frames(page)
    assert after > before, f"framesDecoded stuck at {before} → {after}"
    return before, after


def codecs_in_use(page: Any) -> list[str]:
    """MIME types of the codecs the page's peer connection is receiving with."""
    return page.evaluate("""async () => {
        const out = [];
        (await window.lopso.peerConnection().getStats()).forEach((s) => {
            if (s.type === 'codec') out.push(s.mimeType); });
        return out; }""")


def report_headcount(page: Any, count: int) -> None:
    page.click("#open-headcount")
    page.fill("#hc-count", str(count))
    page.select_option("#hc-phase", "start")
    page.click("#hc-submit")
    page.wait_for_selector("#hc-result[data-kind=ok]")


def site_on_wall(moderator: Any, code: str) -> dict[str, Any] | None:
    return moderator.evaluate("(c) => window.lopso.site(c)", code)


def wait_wall(moderator: Any, code: str, status: str, headcount: int) -> None:
    moderator.wait_for_function(
        "([c, s, h]) => { const x = window.lopso && window.lopso.site(c);"
        " return !!x && x.status === s && x.headcount === h; }",
        arg=[code, status, headcount],
        timeout=20_000,
    )


def find_record(payload: Any, code: str) -> dict[str, Any]:
    """The per-site record for `code` in the attendance JSON, wherever the list sits."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                code in (node.get("code"), node.get("site_code"), node.get("site"))
                and "rejoins" in node
            ):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(payload)
    assert len(found) == 1, f"expected one record for {code}, found {len(found)}"
    return found[0]


# ---- the class ---------------------------------------------------------------------------


def test_class_end_to_end(lopso: Any, browser_pages: Any) -> None:
    demo = lopso.demo
    sites = demo["sites"][:2]
    assert len(sites) == 2
    started = time.monotonic()

    moderator = browser_pages.open(demo["moderator"]["url"], name="moderator")
    moderator.wait_for_function("window.lopso && window.lopso.tileCount() >= 2")
    for s in sites:
        assert moderator.locator(f'.tile[data-code="{s["code"]}"]').count() == 1

    # A site opened before the lecture waits, then plays by itself when the lecturer goes live.
    early = browser_pages.open(sites[0]["url"], name="site1")
    wait_state(early, "waiting")
    assert early.locator("#card").is_visible()

    studio = browser_pages.open(demo["lecturer"]["url"], name="studio")
    studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
    studio.click("#golive")
    wait_state(studio, "live")

    # Going live prompts the sites already there for their start headcount.
    early.wait_for_selector("#prompt[data-phase=start]:not([hidden])")

    late = browser_pages.open(sites[1]["url"], name="site2")
    for page in (early, late):
        wait_state(page, "playing")
        page.click("#start")  # the operator's one click: sound + full screen
        assert_frames_rising(page)
    assert early.locator("#card").is_hidden()
    assert "video/VP8" in codecs_in_use(late)  # the demo class's codec

    for page, count in zip((early, late), HEADCOUNTS):
        report_headcount(page, count)
    for s, count in zip(sites, HEADCOUNTS):
        wait_wall(moderator, s["code"], "playing", count)
        tile = moderator.locator(f'.tile[data-code="{s["code"]}"]')
        assert tile.get_attribute("data-status") == "playing"
        assert str(count) in tile.inner_text()
    moderator.wait_for_function(
        "(n) => window.lopso.totals.people === n && window.lopso.totals.playing === 2",
        arg=sum(HEADCOUNTS),
    )
    assert moderator.locator("#t-playing").inner_text().strip() == "2"

    # Each site's getStats summary (every 5 s) gives the wall a quality class and figures.
    moderator.wait_for_function(
        "(c) => { const x = window.lopso.site(c); return !!x && x.quality === 'good'"
        " && x.kbps > 100 && x.loss_pct < 5; }",
        arg=sites[1]["code"],
        timeout=15_000,
    )
    print("wall sees", site_on_wall(moderator, sites[1]["code"]))

    # The studio sees the same counts.
    studio.wait_for_function("window.lopso.totals.playing === 2")

    # Slides with the camera as picture-in-picture, slides alone, camera again: one video
    # track whose source is swapped, so the sites keep decoding and never renegotiate.
    for mode in ("pip", "screen", "camera"):
        studio.click(f"#src-{mode}")
        studio.wait_for_function("(m) => window.lopso.mode === m", arg=mode)
        assert_frames_rising(late, 1.5)
    assert late.evaluate("window.lopso.whepConnects") == 1
    assert studio.evaluate("window.lopso.state") == "live"

    # Reload one site: it plays again, and stays one site record with one rejoin.
    early.reload()
    wait_state(early, "playing")
    assert_frames_rising(early)
    # ... and shows the headcount it reported before the reload (from `welcome`).
    assert str(HEADCOUNTS[0]) in early.text_content("#headcount-shown")
    moderator.wait_for_function(
        "(c) => { const x = window.lopso.site(c); return !!x && x.status === 'playing'"
        " && x.rejoins === 1; }",
        arg=sites[0]["code"],
    )

    token = demo["moderator"]["token"]
    sid = demo["session_id"]
    _, _, body = http_get(f"{lopso.url}/api/sessions/{sid}/attendance", token)
    attendance = json.loads(body)
    first = find_record(attendance, sites[0]["code"])
    second = find_record(attendance, sites[1]["code"])
    assert first["rejoins"] == 1, first
    assert second["rejoins"] == 0, second

    # The CSV export behind the moderator's button lists both sites (UTF-8 with BOM).
    csv_href = moderator.get_attribute("#export-csv", "href")
    status, headers, raw = http_get(f"{lopso.url}{csv_href}", token)
    assert status == 200 and raw.startswith(b"\xef\xbb\xbf"), headers
    text = raw.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    for s in sites:
        assert any(s["code"] in row for row in rows), f"{s['code']} not in CSV:\n{text[:800]}"
        assert s["name"] in text

    for name in ("moderator", "site1", "site2", "studio"):
        errors = [line for line in browser_pages.console(name) if line.startswith("pageerror")]
        assert not errors, f"{name}: {errors}"
    elapsed = time.monotonic() - started
    print(f"e2e class: {elapsed:.1f}s")


def test_english_switch_keeps_the_token(lopso: Any, browser_pages: Any) -> None:
    site = lopso.demo["sites"][0]
    page = browser_pages.open(site["url"], name="site-en", lang="en")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("#open-help").inner_text().strip().endswith("Need help")
    href = page.get_attribute("[data-lang-switch=vi]", "href")
    assert "token=" in href and "lang=vi" in href
    page.click("[data-lang-switch=vi]")
    page.wait_for_function("document.documentElement.lang === 'vi'")
    assert page.locator("#open-help").inner_text().strip().endswith("Cần hỗ trợ")


# ---- static checks of the pages (no browser) ----------------------------------------------


def catalogue(lang: str) -> dict[str, str]:
    return json.loads((WEB / "static" / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))


def test_catalogues_have_the_same_keys_and_no_blanks() -> None:
    vi, en = catalogue("vi"), catalogue("en")
    assert set(vi) == set(en), set(vi) ^ set(en)
    assert all(v.strip() for v in vi.values()) and all(v.strip() for v in en.values())
    placeholders = re.compile(r"\{(\w+)\}")
    for key in vi:
        assert set(placeholders.findall(vi[key])) == set(placeholders.findall(en[key])), key


def used_keys() -> set[str]:
    keys: set[str] = set()
    for path in (WEB / "templates").glob("*.html"):
        keys |= set(re.findall(r"\bt\.([a-z][a-z0-9_]*)\b", path.read_text(encoding="utf-8")))
    for path in (WEB / "static" / "js").glob("*.js"):
        keys |= set(re.findall(r"\bt\(\"([a-z][a-z0-9_]*)\"", path.read_text(encoding="utf-8")))
    keys.discard("get")
    return {k for k in keys if not k.endswith("_")}  # prefixes of dynamic keys, listed below


def test_every_string_the_pages_use_is_in_the_catalogue() -> None:
    vi = catalogue("vi")
    dynamic = {
        f"state_{s}"
        for s in (
            "connecting",
            "reconnecting",
            "waiting",
            "playing",
            "stalled",
            "ended",
            "offline",
            "never_joined",
            "revoked",
        )
    }
    dynamic |= {f"help_{r}" for r in ("no_picture", "no_sound", "connection", "other")}
    dynamic |= {f"quality_{q}" for q in ("good", "non_optimal", "poor", "lost")}
    dynamic |= {
        f"studio_state_{s}" for s in ("idle", "connecting", "live", "reconnecting", "ended")
    }
    dynamic |= {f"prompt_{p}" for p in ("start", "mid", "end")}
    dynamic |= {f"presenter_state_{s}" for s in ("offline", "standby", "on_air")}
    dynamic |= {f"phase_{p}" for p in ("start", "mid", "end", "other")}
    dynamic |= {
        f"wall_{k}"
        for k in (
            "good",
            "non_optimal",
            "poor",
            "lost",
            "waiting",
            "connecting",
            "no_media",
            "offline",
            "never_joined",
            "ended",
        )
    }
    dynamic |= {f"alert_{k}" for k in ("not_joined", "offline", "poor", "help")}
    dynamic |= {f"mod_recording_state_{k}" for k in ("recording", "ended", "stopped")}
    dynamic |= {f"mod_recording_problem_{k}" for k in ("disk_full", "disk_nearly_full", "error")}
    dynamic |= {
        f"attendance_{k}"
        for k in ("present", "late", "left_early", "absent", "page_only", "never_joined", "replay")
    }
    missing = sorted((used_keys() | dynamic) - set(vi))
    assert not missing, missing


# Syntax newer than the old Chromium / Android WebViews in village halls (Chrome 61+ runs
# ES modules): optional chaining and nullish coalescing (80), class fields (72), and the like.
MODERN = [
    r"\?\.[A-Za-z_$(\[]",
    r"\?\?",
    r"^\s+(static\s+)?#?[A-Za-z_$][\w$]*\s*=[^=]",
    r"\.toggleAttribute\(",
    r"\.replaceAll\(",
    r"\.at\(",
    r"structuredClone",
]


@pytest.mark.parametrize("path", sorted((WEB / "static" / "js").glob("*.js")), ids=lambda p: p.name)
def test_scripts_avoid_syntax_old_browsers_lack(path: pathlib.Path) -> None:
    text = path.read_text(encoding="utf-8")
    in_class = False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^(export\s+)?class\s", line):
            in_class = True
        elif line.startswith("}"):
            in_class = False
        for pattern in MODERN:
            if pattern.startswith("^") and not (
                in_class and line.startswith("  ") and not line.startswith("    ")
            ):
                continue
            assert not re.search(pattern, line), f"{path.name}:{number}: {line.strip()}"


def test_protocol_library_has_no_dom_code() -> None:
    text = (WEB / "static" / "js" / "protocol.js").read_text(encoding="utf-8")
    for word in ("document.", "getElementById", "querySelector", "innerHTML", "textContent"):
        assert word not in text, word


# ---- moderation round trip -----------------------------------------------------------------


def test_moderator_resolves_help_and_messages_a_site(lopso: Any, browser_pages: Any) -> None:
    site = lopso.demo["sites"][1]
    moderator = browser_pages.open(lopso.demo["moderator"]["url"], name="moderator")
    moderator.wait_for_function("window.lopso && window.lopso.tileCount() >= 2")
    player = browser_pages.open(site["url"], name="site")
    player.wait_for_function("window.lopso && window.lopso.wsState === 'open'")

    player.click("#open-help")
    player.check("input[value=no_sound]")
    player.fill("#help-text", "Loa hỏng")
    player.click("#form-help button[type=submit]")
    player.wait_for_selector("#help-result[data-kind=ok]")
    player.wait_for_selector("#panel-help", state="hidden")
    item = moderator.locator(f'#help-list li[data-site="{site["code"]}"]')
    item.wait_for()
    assert "Loa hỏng" in item.inner_text()
    moderator.wait_for_selector(f'.tile[data-code="{site["code"]}"][data-help]')
    item.locator("button", has_text="Đã xử lý").click()
    item.wait_for(state="detached")
    player.wait_for_function(
        "document.getElementById('toast').textContent.indexOf('đã xử lý') >= 0"
    )
    moderator.wait_for_selector(f'.tile[data-code="{site["code"]}"]:not([data-help])')

    player.click("#open-question")
    player.fill("#q-text", "Xin giảng lại phần mật khẩu?")
    player.click("#form-question button[type=submit]")
    player.wait_for_selector("#q-result[data-kind=ok]")
    player.wait_for_selector("#panel-question", state="hidden")
    moderator.locator("#question-list li", has_text="mật khẩu").wait_for()

    moderator.click(f'.tile[data-code="{site["code"]}"]')
    moderator.click("#detail-message")
    moderator.fill("#msg-text", "Điểm cầu kiểm tra loa giúp nhé")
    moderator.click("#form-message button[type=submit]")
    player.wait_for_selector("#message:not([hidden])")
    assert "kiểm tra loa" in player.inner_text("#message-text")


def test_wall_of_5000_sites_updates_only_what_changed(lopso: Any, browser_pages: Any) -> None:
    """The province wall: a 5,000-site snapshot, then batches of changes, timed in the page.

    On a class of its own: the demo class's halls, still settling from the tests before (a
    media spell closing), would add their own tiles to the fed snapshot."""
    admin = lopso.admin_token()
    created = http_post_json(
        f"{lopso.url}/api/sessions",
        admin,
        {
            "title": "Tường 5.000 điểm cầu",
            "starts_at": "2026-11-26T03:00:00Z",
            "site_codes": [lopso.demo["sites"][0]["code"]],
        },
    )
    sid = created.get("id") or created["session"]["id"]
    links = json.loads(http_get(f"{lopso.url}/api/sessions/{sid}/links", admin)[2])
    moderator = browser_pages.open(
        links["moderator"]["url"], name="wall", viewport={"width": 1600, "height": 900}
    )
    moderator.wait_for_function("window.lopso && window.lopso.tileCount() >= 1")
    statuses = ["playing", "waiting", "reconnecting", "offline", "never_joined"]
    sites = [
        {
            "code": f"W{i:05d}",
            "name": f"Nhà văn hóa thôn {i}",
            "commune": f"Xã {i % 104:03d}",
            "status": statuses[i % 5],
            "headcount": i % 90,
            "peak_headcount": 90,
            "quality": "good" if i % 5 == 0 else None,
            "rtt_ms": 80,
            "loss_pct": 0.5,
            "kbps": 1400,
            "rejoins": 0,
            "since": "2026-11-26T03:00:00Z",
            "help_open": 0,
        }
        for i in range(5000)
    ]
    totals = {
        "expected": 5000,
        "connected": 3000,
        "playing": 1000,
        "people": 222500,
        "help_open": 0,
    }
    moderator.evaluate(
        "(m) => window.lopso.feed(m)", {"type": "sites", "sites": sites, "totals": totals}
    )
    assert moderator.evaluate("window.lopso.tileCount()") == 5000
    assert moderator.locator("section.commune").count() == 104
    snapshot_ms = moderator.evaluate("window.lopso.metrics.lastMs")

    times = []
    for batch in range(5):
        changed = [
            dict(sites[(batch * 997 + k * 7) % 5000], status="reconnecting", headcount=batch)
            for k in range(500)
        ]
        moderator.evaluate(
            "(m) => window.lopso.feed(m)",
            {"type": "sites_update", "sites": changed, "totals": totals},
        )
        times.append(moderator.evaluate("window.lopso.metrics.lastMs"))
    code = sites[(4 * 997) % 5000]["code"]
    tile = moderator.locator(f'.tile[data-code="{code}"]')
    assert tile.get_attribute("data-status") == "reconnecting"
    assert "4 người" in (tile.text_content() or "")
    moderator.select_option("#filter-status", "reconnecting")
    shown = moderator.evaluate("document.querySelectorAll('.tile:not([hidden])').length")
    assert 1000 <= shown <= 5000
    print(
        f"wall: snapshot of 5000 in {snapshot_ms:.0f} ms; 500-site updates in "
        f"{', '.join(f'{t:.0f}' for t in times)} ms"
    )
    # Generous bound for a loaded 2-core CI machine; issue 5's test measures the real budget.
    assert max(times) < 1000


# ---- resilience --------------------------------------------------------------------------


def test_pages_recover_by_themselves_when_the_server_restarts(
    tmp_path: pathlib.Path, browser_pages: Any
) -> None:
    """Server down mid-lecture: the studio republishes and the site plays again, untouched."""
    from tests.serverproc import LopsoServer

    with LopsoServer(tmp_path, demo_sites=1) as srv:
        demo = srv.demo  # the class survives the restart (same data dir and secret)
        studio = browser_pages.open(demo["lecturer"]["url"], name="studio")
        studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
        studio.click("#golive")
        wait_state(studio, "live")
        site = browser_pages.open(demo["sites"][0]["url"], name="site")
        wait_state(site, "playing")

        srv.stop()
        wait_state(site, "reconnecting", 30_000)
        wait_state(studio, "reconnecting", 30_000)
        down_at = time.monotonic()
        srv.start()
        wait_state(studio, "live", 45_000)
        wait_state(site, "playing", 45_000)
        recovered_s = time.monotonic() - down_at
        assert_frames_rising(site)
        site.wait_for_function("window.lopso.wsState === 'open'", timeout=20_000)
        print(f"recovered {recovered_s:.1f}s after the server came back")

        # The lecturer ends the class: the site says so and stops reconnecting.
        studio.click("#end")
        studio.click("#end-confirm")
        wait_state(studio, "ended")
        wait_state(site, "ended")
        assert "kết thúc" in site.inner_text("#card-title")
        site.wait_for_selector("#prompt[data-phase=end]:not([hidden])")


# A hall whose WHEP request never comes back (a proxy that swallows it, a media bug): its page
# sits on "connecting" with no media at all.
NO_WHEP = """(() => { const real = window.fetch;
  window.fetch = function (url) {
    if (String(url).indexOf("/whep/") >= 0) return new Promise(function () {});
    return real.apply(this, arguments);
  }; })();"""


def test_a_page_without_media_is_its_own_tile_and_not_present(
    tmp_path: pathlib.Path, browser_pages: Any
) -> None:
    """Before: the hall stuck on "Đang kết nối…" was a "connecting" tile and, at the end,
    `present` (its page was open). Now: a "page open, no media" tile, and `page_only`."""
    from tests.serverproc import LopsoServer

    with LopsoServer(tmp_path, demo_sites=2) as srv:
        demo = srv.demo
        stuck, playing = demo["sites"][:2]
        moderator = browser_pages.open(demo["moderator"]["url"], name="moderator")
        moderator.wait_for_function("window.lopso && window.lopso.tileCount() >= 2")
        hall = browser_pages.open(stuck["url"], name="stuck", init_script=NO_WHEP)
        other = browser_pages.open(playing["url"], name="playing")
        wait_state(other, "waiting")
        studio = browser_pages.open(demo["lecturer"]["url"], name="studio")
        studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
        studio.click("#golive")
        wait_state(studio, "live")
        wait_state(other, "playing")
        wait_state(hall, "connecting")
        tile = moderator.locator(f'.tile[data-code="{stuck["code"]}"]')
        moderator.wait_for_function(
            '(c) => document.querySelector(`.tile[data-code="${c}"]`)'
            ".getAttribute('data-wall') === 'no_media'",
            arg=stuck["code"],
        )
        colour = tile.evaluate("(el) => getComputedStyle(el).backgroundColor")
        assert colour == "rgb(123, 31, 162)", colour
        legend = moderator.locator('.class-count[data-wall="no_media"]').inner_text()
        assert "Mở trang, không có hình/tiếng" in legend and legend.strip().startswith("1")
        other_tile = moderator.locator(f'.tile[data-code="{playing["code"]}"]')
        assert other_tile.get_attribute("data-wall") != "no_media"
        time.sleep(6)
        studio.click("#end")
        studio.click("#end-confirm")
        wait_state(studio, "ended")
        token, sid = demo["moderator"]["token"], demo["session_id"]
        _, _, body = http_get(f"{srv.url}/api/sessions/{sid}/attendance", token)
        attendance = json.loads(body)
        record = find_record(attendance, stuck["code"])
        assert record["status"] == "page_only" and record["connected_seconds"] == 0, record
        assert record["page_seconds"] > 0
        other_record = find_record(attendance, playing["code"])
        assert other_record["status"] == "present", other_record
        assert other_record["connected_pct"] > 80, other_record


# ---- the class codec -----------------------------------------------------------------------


def http_post_json(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.loads(reply.read())


def test_h264_class_publishes_and_plays_h264(lopso: Any, browser_pages: Any) -> None:
    """A class fixed to H264: the studio forces it with setCodecPreferences, a site decodes it."""
    admin = lopso.admin_token()
    code = lopso.demo["sites"][0]["code"]
    created = http_post_json(
        f"{lopso.url}/api/sessions",
        admin,
        {
            "title": "Lớp H264",
            "starts_at": "2026-11-26T03:00:00Z",
            "video_codec": "H264",
            "site_codes": [code],
        },
    )
    sid = created.get("id") or created["session"]["id"]
    _, _, body = http_get(f"{lopso.url}/api/sessions/{sid}/links", admin)
    links = json.loads(body)

    studio = browser_pages.open(links["lecturer"]["url"], name="studio-h264")
    studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
    assert studio.inner_text("#codec").strip() == "H264"
    studio.click("#golive")
    wait_state(studio, "live")
    site = browser_pages.open(links["sites"][0]["url"], name="site-h264")
    wait_state(site, "playing")
    assert_frames_rising(site)
    assert "video/H264" in codecs_in_use(site)
    assert "video/VP8" not in codecs_in_use(site)


# ---- check-in --------------------------------------------------------------------------------


def test_checkin_from_a_phone_and_by_the_operator(lopso: Any, browser_pages: Any) -> None:
    site = lopso.demo["sites"][1]
    player = browser_pages.open(site["url"], name="site-checkin")
    link = player.get_attribute("#checkin-link", "href")
    assert link and "/checkin/" in link and "token=" in link

    phone = browser_pages.open(link, name="phone", viewport={"width": 360, "height": 640})
    assert site["name"] in phone.inner_text(".checkin-site")
    phone.fill("#name", "Nguyễn Thị Hoa")
    phone.fill("#ident", "0912345678")
    phone.click("#submit")
    phone.wait_for_selector("#result[data-kind=ok]")
    assert "Nguyễn Thị Hoa" in phone.inner_text("#result")
    phone.click("#submit")  # the same person again
    phone.wait_for_selector("#result[data-kind=warn]")

    player.wait_for_function("window.lopso && window.lopso.wsState === 'open'")
    player.click("#open-checkin")
    player.fill("#ci-name", "Trần Văn Ba")
    player.click("#form-checkin button[type=submit]")
    player.wait_for_selector("#ci-result[data-kind=ok]")
    player.fill("#ci-name", "Trần Văn Ba")
    player.click("#form-checkin button[type=submit]")
    player.wait_for_selector("#ci-result[data-kind=warn]")


def test_a_bad_link_shows_a_page_in_vietnamese(lopso: Any, browser_pages: Any) -> None:
    site = lopso.demo["sites"][0]
    url = site["url"].split("?")[0] + "?token=not-a-token"
    page = browser_pages.open(url, name="bad-link")
    assert page.inner_text(".error-status").strip() == "401"
    assert "Mã truy cập" in page.inner_text("h1")


# ---- the client library, in the browser ------------------------------------------------------


def test_protocol_library_pure_parts(lopso: Any, browser_pages: Any) -> None:
    page = browser_pages.open(lopso.url + "/", name="protocol")
    result = page.evaluate("""async () => {
        const p = await import('/static/js/protocol.js');
        const b = new p.Backoff({ base: 100, max: 1000, jitter: 0 });
        const delays = [b.next(), b.next(), b.next(), b.next(), b.next(), b.next()];
        b.reset();
        const afterReset = b.next();
        const prev = { t: 0, bytes: 0, packets: 100, lost: 0, framesDecoded: 0, framesSent: 0,
                       freezes: 0, jitter: null, rtt: null, fps: null };
        const now = { t: 2000, bytes: 250000, packets: 290, lost: 10, framesDecoded: 50,
                      framesSent: 0, freezes: 1, jitter: 12.34, rtt: 80.04, fps: null };
        const q = p.summarise(prev, now);
        const first = p.qualityMessage(p.summarise(null, now));
        const msg = p.qualityMessage(Object.assign({}, q, { rtt_ms: null }));
        // Acked messages wait in storage until acked, and come back after a reload.
        const a = new p.Channel('/ws/none?token=x', { storageKey: 'lopso:test' });
        a.request({ type: 'headcount', count: 5, phase: 'start' });
        const b2 = new p.Channel('/ws/none?token=x', { storageKey: 'lopso:test' });
        const restored = Array.from(b2.pending.values()).map((e) => e.msg.count);
        localStorage.removeItem('lopso:test');
        return { delays, afterReset, q, msg, restored, first };
    }""")
    assert result["delays"] == [100, 200, 400, 800, 1000, 1000]
    assert result["afterReset"] == 100
    q = result["q"]
    assert q["kbps"] == 1000 and q["loss_pct"] == 5 and q["fps"] == 25
    assert q["rtt_ms"] == 80 and q["jitter_ms"] == 12.3 and q["freeze_count"] == 1
    assert "rtt_ms" not in result["msg"] and "frames_sent" not in result["msg"]
    assert result["msg"]["type"] == "quality" and result["msg"]["kbps"] == 1000
    assert result["restored"] == [5]
    # the first sample has no rate yet: its message leaves kbps out rather than report 0
    assert "kbps" not in result["first"] and result["first"]["type"] == "quality"


def test_moderator_downloads_every_sites_link(lopso: Any, browser_pages: Any) -> None:
    moderator = browser_pages.open(lopso.demo["moderator"]["url"], name="links")
    with moderator.expect_download() as info:
        moderator.click("#export-links")
    raw = pathlib.Path(info.value.path()).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == ["code", "name", "village", "commune", "short_url", "url"]
    urls = {row[0]: row[5] for row in rows[1:]}
    for s in lopso.demo["sites"]:
        assert urls[s["code"]].startswith(lopso.url + "/site/"), urls
    # The halls' CSV carries no staff link; those are their own download.
    assert "/moderator/" not in raw.decode() and "/studio/" not in raw.decode()
    with moderator.expect_download() as info:
        moderator.click("#export-staff-links")
    staff = list(csv.reader(io.StringIO(pathlib.Path(info.value.path()).read_text("utf-8-sig"))))
    assert [row[0] for row in staff] == ["role", "moderator"]  # a moderator never gets the studio
    assert "/moderator/" in staff[1][2] and "/site/" not in str(staff)
