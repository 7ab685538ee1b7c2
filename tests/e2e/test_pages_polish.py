"""Pages polish (issue 14): the check-in dialog fits a 1280×720 projector, numbers and dates in
the page's language, error pages without English in a Vietnamese page, one word per concept."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest

WEB = pathlib.Path(__file__).resolve().parents[2] / "web"
FORMATS = """async () => {
    const m = await import('/static/js/i18n.js');
    m.loadStrings();
    return [m.formatNumber(0.94), m.formatPercent(61.63), m.formatNumber(12345, 0),
            m.formatNumber(null), m.dateTime('2026-12-03T01:00:00Z', document.documentElement.lang),
            m.errorText({status: 410, code: 'checkin_closed', message: 'check-in closed at 03:00'}),
            m.errorText({status: 500, code: 'something_new', message: 'a new English message'})];
}"""


def test_checkin_dialog_fits_a_projector(lopso: Any, browser_pages: Any) -> None:
    page = browser_pages.open(
        lopso.demo["sites"][0]["url"], name="checkin", viewport={"width": 1280, "height": 720}
    )
    page.wait_for_function("window.lopso && window.lopso.wsState === 'open'")
    page.click("#open-checkin")
    page.wait_for_selector("#panel-checkin:not([hidden])")
    submit = page.locator("#form-checkin button[type=submit]")
    box = submit.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 720, box
    body = page.evaluate(
        "(() => { const b = document.querySelector('#panel-checkin .panel-body');"
        " return [b.scrollHeight, b.clientHeight, b.scrollTop]; })()"
    )
    assert body[0] <= body[1] and body[2] == 0, body  # nothing below the fold, nothing scrolled
    hit = page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).closest('button[type=submit]') !== null",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
    )
    assert hit  # the button itself is there, not under something else
    assert page.locator("#checkin-qr").is_visible()
    page.fill("#ci-name", "Nguyễn Thị Hoa")
    submit.click()  # no scrolling: Playwright would scroll, so check the page did not move
    page.wait_for_selector("#ci-result[data-kind=ok]")
    assert page.evaluate("window.scrollY") == 0


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        (
            "vi",
            [
                "0,9",
                "61,6%",
                "12.345",
                "–",
                "08:00 ngày 03/12/2026",
                "Đã hết thời gian điểm danh của buổi học này.",
                "Đã có lỗi xảy ra (mã lỗi: something_new). Vui lòng thử lại.",
            ],
        ),
        (
            "en",
            [
                "0.9",
                "61.6%",
                "12,345",
                "–",
                "08:00, 03/12/2026",
                "Check-in for this class has closed.",
                "Error: a new English message",
            ],
        ),
    ],
)
def test_numbers_dates_and_errors_in_the_pages_language(
    lopso: Any, browser_pages: Any, lang: str, expected: list[str]
) -> None:
    page = browser_pages.open(lopso.demo["moderator"]["url"], name=f"formats-{lang}", lang=lang)
    page.wait_for_function("window.lopso && window.lopso.tileCount() >= 1")
    assert page.evaluate(FORMATS) == expected
    start = page.inner_text("#starts-at")  # the class's start: a date beside the time
    pattern = r"\d\d:\d\d ngày \d\d/\d\d/\d{4}" if lang == "vi" else r"\d\d:\d\d, \d\d/\d\d/\d{4}"
    assert re.fullmatch(pattern, start), start


def test_site_page_start_shows_its_date(lopso: Any, browser_pages: Any) -> None:
    page = browser_pages.open(lopso.demo["sites"][1]["url"], name="start-date")
    page.wait_for_function("window.lopso && window.lopso.wsState === 'open'")
    text = page.inner_text(".card-time")
    assert re.fullmatch(r"Giờ bắt đầu: \d\d:\d\d ngày \d\d/\d\d/\d{4}", text.strip()), text


def test_moderator_detail_percentages_in_vietnamese(lopso: Any, browser_pages: Any) -> None:
    site = lopso.demo["sites"][0]
    hall = browser_pages.open(site["url"], name="detail-hall")
    hall.wait_for_function("window.lopso && window.lopso.wsState === 'open'")
    moderator = browser_pages.open(lopso.demo["moderator"]["url"], name="detail")
    moderator.wait_for_function("window.lopso && window.lopso.tileCount() >= 1")
    moderator.click(f'.tile[data-code="{site["code"]}"]')
    moderator.wait_for_function("window.lopso.detail() !== null")
    fields = moderator.inner_text("#detail-more")
    minutes = re.findall(r"[\d.,]+ phút · [\d.,]+ ?%", fields)
    assert minutes, fields
    for text in minutes:
        assert re.fullmatch(r"\d+(,\d)? phút · \d+(,\d)?%", text), text  # "0,9 phút · 61,6%"


@pytest.mark.parametrize(("token", "status"), [("not-a-token", 401), ("eyJ4IjoxfQ.AAAA", 401)])
def test_error_pages_carry_no_english_in_vietnamese(
    lopso: Any, browser_pages: Any, token: str, status: int
) -> None:
    url = lopso.demo["sites"][0]["url"].split("?")[0] + "?token=" + token
    page = browser_pages.open(url, name=f"error-{status}")
    assert page.inner_text(".error-status").strip() == str(status)
    text = page.inner_text("main")
    assert not re.search(r"\b(token|malformed|signature|base64|claims|the|is)\b", text), text
    english = browser_pages.open(url, name=f"error-{status}-en", lang="en")
    assert "token" in english.inner_text("main")  # the precise reason, on the English page


def test_one_word_per_concept_in_the_vietnamese_catalogue() -> None:
    vi = json.loads((WEB / "static" / "i18n" / "vi.json").read_text(encoding="utf-8"))
    text = "\n".join(vi.values()).lower()
    for avoided, chosen in (("đường dẫn", "đường link"), ("liên kết", "đường link")):
        assert avoided not in text, f"say {chosen!r}, not {avoided!r}"
    assert "trung bình" not in text  # quality: "Chưa tốt", as on the wall and in reports
    assert vi["quality_non_optimal"] == vi["wall_non_optimal"] == "Chưa tốt"
