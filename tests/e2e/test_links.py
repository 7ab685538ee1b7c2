"""Handing out hall links and the moderator page's fixes, in headless Chromium (issue 14):

- a commune's short links copied from the cards page, one opened as a hall: it plays;
- the printed hall cards (Chromium's own PDF, A4): a sheet per commune, a card per hall, and
  every card's QR code decodes (pdfium renders, zxing-cpp reads) to that hall's join link;
- a short link guessed: a Vietnamese 404 page, then 429 for the address;
- "message this site" reaches that hall only; ending the class from the moderator page shows
  it ended (badge, tiles, alerts) without a reload.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from server import auth
from server.models import Role
from tests.e2e.test_class import assert_frames_rising, wait_state
from tests.serverproc import SECRET, LopsoServer

SHORT = re.compile(r"https?://[^\s]+/j/[a-z2-9]{8}")


@pytest.fixture(scope="module")
def lopso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LopsoServer]:
    """Four demo halls over three communes (Xã Tiên Lữ has two)."""
    with LopsoServer(tmp_path_factory.mktemp("lopso-links"), demo_sites=4) as srv:
        yield srv


def moderator_token(lopso: LopsoServer, sid: str) -> str:
    return auth.mint(SECRET.encode(), sid, Role.MODERATOR, ttl_s=3600)


def get_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def halls(lopso: LopsoServer) -> list[dict[str, Any]]:
    sid = lopso.demo["session_id"]
    url = f"{lopso.url}/api/classes/{sid}/hall-links?format=json"
    return list(get_json(url, lopso.token(Role.MODERATOR))["halls"])


def cards_url(lopso: LopsoServer, sid: str, commune: str | None = None) -> str:
    url = f"{lopso.url}/classes/{sid}/cards?token={moderator_token(lopso, sid)}"
    return url + (f"&commune={urllib.parse.quote(commune)}" if commune else "")


def test_copied_short_link_opens_the_hall_and_plays(lopso: Any, browser_pages: Any) -> None:
    sid = lopso.demo["session_id"]
    cards = browser_pages.open(cards_url(lopso, sid), name="cards", enforce_policy=True)
    cards.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sheet = cards.locator('.commune-sheet[data-commune="Xã Tiên Lữ"]')
    sheet.locator(".copy-links").click()
    sheet.locator(".copy-result", has_text="Đã sao chép").wait_for()
    text = cards.evaluate("navigator.clipboard.readText()")
    assert text.startswith("Bình dân học vụ số")
    assert re.search(r"Bắt đầu \d\d:\d\d ngày \d\d/\d\d/\d{4}", text), text
    links = SHORT.findall(text)
    tien_lu = [h for h in halls(lopso) if h["commune"] == "Xã Tiên Lữ"]
    assert sorted(links) == sorted(h["short_url"] for h in tien_lu) and len(links) == 2
    assert "Hiến Nam" not in text and "token=" not in text

    studio = browser_pages.open(lopso.demo["lecturer"]["url"], name="studio")
    studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
    studio.click("#golive")
    wait_state(studio, "live")
    hall = browser_pages.open(links[0], name="hall")  # as a hall types it from the message
    assert "/site/" + sid + "/" in hall.url and "token=" in hall.url
    wait_state(hall, "playing")
    hall.click("#start")
    assert_frames_rising(hall)
    code = hall.evaluate(
        "window.lopso && JSON.parse(document.getElementById('page-config').textContent).site.code"
    )
    assert code == next(h["code"] for h in tien_lu if h["short_url"] == links[0])


def test_printed_cards_decode_to_each_halls_join_link(lopso: Any, browser_pages: Any) -> None:
    pdfium = pytest.importorskip("pypdfium2")
    zxingcpp = pytest.importorskip("zxingcpp")
    sid = lopso.demo["session_id"]
    cards = browser_pages.open(cards_url(lopso, sid), name="print")
    cards.wait_for_function("window.lopso && window.lopso.ready")
    started = time.monotonic()
    pdf = pdfium.PdfDocument(cards.pdf(format="A4", print_background=True))
    print(f"cards PDF: {len(pdf)} pages in {time.monotonic() - started:.1f} s")
    by_commune: dict[str, set[str]] = {}
    for hall in halls(lopso):
        by_commune.setdefault(hall["commune"], set()).add(hall["code"])
    assert len(pdf) == len(by_commune) == 3  # one A4 sheet per commune (≤ 6 halls each)
    seen: dict[str, str] = {}
    for number in range(len(pdf)):
        page = pdf[number]
        width, height = page.get_size()
        assert abs(width - 595.3) < 2 and abs(height - 841.9) < 2  # A4 in points
        image = page.render(scale=2, grayscale=True).to_numpy()
        texts = [code.text for code in zxingcpp.read_barcodes(image)]
        page_halls = set()
        for text in texts:
            parts = urllib.parse.urlsplit(text)
            assert text.startswith(lopso.url + f"/site/{sid}/"), text
            code = parts.path.rsplit("/", 1)[1]
            token = urllib.parse.parse_qs(parts.query)["token"][0]
            claims = auth.verify(SECRET.encode(), token)
            assert (claims.sid, claims.role, claims.site) == (sid, Role.SITE, code)
            page_halls.add(code)
            seen[code] = text
        assert page_halls in by_commune.values(), (number, texts)
    assert set(seen) == {s["code"] for s in lopso.demo["sites"]}
    with urllib.request.urlopen(next(iter(seen.values())), timeout=10) as reply:
        assert reply.status == 200  # the decoded link opens the hall's page


def test_guessed_short_links_get_a_vietnamese_404_then_429(lopso: Any, browser_pages: Any) -> None:
    page = browser_pages.open(lopso.url + "/j/zzzzzzzz", name="guess")
    assert page.locator("html").get_attribute("lang") == "vi"
    assert "Không tìm thấy đường link này" in page.inner_text("main")
    assert not re.search(r"[Nn]ot found|short link", page.inner_text("main"))
    statuses = []
    for attempt in range(12):
        try:
            with urllib.request.urlopen(f"{lopso.url}/j/zzzz{attempt:04d}", timeout=10) as r:
                statuses.append(r.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
    assert statuses.count(404) == 9 and statuses[-1] == 429, statuses  # a burst of 10 in all
    refused = browser_pages.open(halls(lopso)[0]["short_url"], name="refused")
    assert "Gửi quá nhiều lần" in refused.inner_text("main")


def test_message_to_one_hall_reaches_that_hall_only(lopso: Any, browser_pages: Any) -> None:
    one, two = lopso.demo["sites"][:2]
    moderator = browser_pages.open(lopso.demo["moderator"]["url"], name="moderator")
    moderator.wait_for_function("window.lopso && window.lopso.tileCount() >= 4")
    players = {}
    for site in (one, two):
        players[site["code"]] = browser_pages.open(site["url"], name=site["code"])
        players[site["code"]].wait_for_function("window.lopso && window.lopso.wsState === 'open'")
    moderator.click(f'.tile[data-code="{one["code"]}"]')
    moderator.click("#detail-message")
    assert moderator.input_value("#msg-target") == "site:" + one["code"]
    moderator.fill("#msg-text", "Chỉ điểm cầu này: kiểm tra loa")
    moderator.click("#form-message button[type=submit]")
    moderator.locator("#msg-result", has_text="Đã gửi").wait_for()
    first = players[one["code"]]
    first.wait_for_selector("#message:not([hidden])")
    assert "kiểm tra loa" in first.inner_text("#message-text")
    second = players[two["code"]]
    second.wait_for_timeout(3000)  # the first got it; the second had as long as it took, and more
    assert second.locator("#message").is_hidden()
    errors = [line for line in browser_pages.console("moderator") if "pageerror" in line]
    assert not errors, errors
    # A snapshot (the wall's reconnect) keeps the chosen hall as the target.
    sites = [moderator.evaluate("(c) => window.lopso.site(c)", s["code"]) for s in (one, two)]
    moderator.evaluate("(s) => window.lopso.feed({type: 'sites', sites: s})", sites)
    assert moderator.input_value("#msg-target") == "site:" + one["code"]


def test_moderator_ends_the_class_and_the_wall_shows_it(lopso: Any, browser_pages: Any) -> None:
    """On a class of its own: the demo class keeps going for the other tests."""
    sid = f"end-{int(time.time())}"
    one, two = (s["code"] for s in lopso.demo["sites"][:2])
    body = json.dumps(
        {
            "id": sid,
            "title": "Lớp thử kết thúc",
            "starts_at": time.time() + 600,
            "site_codes": [one, two],
        }
    ).encode()
    request = urllib.request.Request(
        f"{lopso.url}/api/sessions",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {lopso.admin_token()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 201
    url = f"{lopso.url}/moderator/{sid}?token={moderator_token(lopso, sid)}"
    moderator = browser_pages.open(url, name="ending")
    moderator.wait_for_function("window.lopso && window.lopso.tileCount() === 2")
    hall = browser_pages.open(
        f"{lopso.url}/site/{sid}/{one}?token={lopso.site_token(sid, one)}", name="waiting-hall"
    )
    wait_state(hall, "waiting")
    moderator.wait_for_function("(c) => window.lopso.tileClass(c) === 'waiting'", arg=one)
    moderator.wait_for_function(  # the hall that never came: its "not joined" alert is open
        "(c) => window.lopso.openAlerts().some((a) => a.site === c && a.kind === 'not_joined')",
        arg=two,
    )
    assert moderator.get_attribute("#live-state", "data-state") == "waiting"

    moderator.click("#end-class")
    moderator.wait_for_selector("#panel-end:not([hidden])")
    moderator.click("#end-cancel")  # the confirmation really asks
    assert moderator.locator("#panel-end").is_hidden() and not moderator.evaluate(
        "window.lopso.ended"
    )
    moderator.click("#end-class")
    moderator.click("#end-confirm")
    moderator.wait_for_function("window.lopso.ended")
    assert moderator.get_attribute("#live-state", "data-state") == "ended"
    assert moderator.inner_text("#live-state") == "Buổi học đã kết thúc"
    assert moderator.evaluate("(c) => window.lopso.tileClass(c)", one) == "ended"
    assert moderator.evaluate("(c) => window.lopso.tileClass(c)", two) == "never_joined"
    assert moderator.evaluate("window.lopso.openAlerts().length") == 0
    assert moderator.inner_text("#alert-count") == "0"
    assert moderator.locator("#panel-end").is_hidden() and moderator.is_disabled("#end-class")
    wait_state(hall, "ended")
    moderator.wait_for_timeout(2500)  # later batches (live: false, updates) change none of it
    assert moderator.get_attribute("#live-state", "data-state") == "ended"
    assert moderator.evaluate("(c) => window.lopso.tileClass(c)", one) == "ended"
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{lopso.url}/api/sessions/{sid}",
            headers={"Authorization": f"Bearer {moderator_token(lopso, sid)}"},
        ),
        timeout=10,
    ) as reply:
        assert json.loads(reply.read())["ended_at"] is not None
