"""The organiser's day in pages: sign in, import 1,000 halls from an Excel `;` CSV (bad lines
named, nothing saved), create a class for two communes, open its wall; a commune moderator
sees only its commune; a form post without its CSRF token is refused; wrong passwords are
rate-limited. Real `lopso serve`, real `lopso users add`, headless Chromium."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import LopsoServer

ADMIN = ("root", "mật khẩu tổ chức 1")
MODERATOR = ("xa03", "mật khẩu xã ba 3")
COMMUNES = [f"Xã Số {i:02d}" for i in range(1, 11)]  # 100 halls each
BAD_LINES = (101, 702)  # line 1 is the header: row n is on line n + 1


def add_user(data: Path, name: str, password: str, *role: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "users", "add", name, *role, "--data", str(data)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def lopso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LopsoServer]:
    """A server without a demo class, with an organiser and one commune's moderator."""
    srv = LopsoServer(tmp_path_factory.mktemp("admin"), demo_sites=0)
    add_user(srv.data, ADMIN[0], ADMIN[1], "--role", "admin")
    add_user(srv.data, MODERATOR[0], MODERATOR[1], "--role", "moderator", "--commune", "Xã Số 03")
    with srv:
        yield srv


def halls_csv(bad: bool) -> bytes:
    """1,000 halls as Excel writes them under Vietnamese settings: `;`, BOM, CRLF."""
    lines = ["code;name;village;commune;province"]
    for n in range(1, 1001):
        commune = COMMUNES[(n - 1) // 100]
        code, name = f"HY-{n:04d}", f"Nhà văn hóa thôn {n}, {commune}"
        if bad and n + 1 == BAD_LINES[0]:
            code = "HY 0100"  # a space: not a code
        if bad and n + 1 == BAD_LINES[1]:
            name = ""
        lines.append(f"{code};{name};Thôn {n};{commune};Hưng Yên")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8-sig")


def sign_in(browser_pages: Any, url: str, who: tuple[str, str], name: str) -> Any:
    page = browser_pages.open(f"{url}/login", name=name)
    page.fill("#username", who[0])
    page.fill("#password", who[1])
    page.click("#login-submit")
    page.wait_for_url(f"{url}/admin")
    page.wait_for_function("window.lopso && window.lopso.ready")
    return page


def api(page: Any, path: str) -> Any:
    reply = page.request.get(page.url.split("/admin")[0] + path)
    assert reply.status == 200, reply.text()
    return reply.json()


def test_organiser_imports_halls_and_creates_a_class_for_two_communes(
    lopso: LopsoServer, browser_pages: Any
) -> None:
    page = sign_in(browser_pages, lopso.url, ADMIN, "admin")
    cookie = next(c for c in page.context.cookies() if c["name"] == "lopso_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "Ban tổ chức" in page.inner_text("#who")

    # a file with two bad lines: both named, nothing saved
    page.set_input_files(
        "#csv-file",
        files=[{"name": "diem-cau.csv", "mimeType": "text/csv", "buffer": halls_csv(True)}],
    )
    page.click("#csv-preview-btn")
    page.wait_for_selector("#csv-problems li")
    problems = page.locator("#csv-problems li")
    assert problems.count() == 2
    assert [int(problems.nth(i).get_attribute("data-line")) for i in range(2)] == list(BAD_LINES)
    assert "Dòng 101" in problems.nth(0).inner_text() and "HY 0100" in problems.nth(0).inner_text()
    assert (
        "Dòng 702" in problems.nth(1).inner_text()
        and "name is empty" in problems.nth(1).inner_text()
    )
    assert page.locator("#csv-save").is_hidden()
    assert api(page, "/api/sites")["sites"] == []

    # the fixed file: previewed, then saved
    page.set_input_files(
        "#csv-file",
        files=[{"name": "diem-cau.csv", "mimeType": "text/csv", "buffer": halls_csv(False)}],
    )
    page.click("#csv-preview-btn")
    page.wait_for_selector("#csv-save:visible")
    assert "1.000 điểm cầu (1.000 mới, 0 cập nhật) ở 10 xã" in page.inner_text("#csv-summary")
    assert api(page, "/api/sites")["sites"] == []  # a preview saves nothing
    page.click("#csv-save")
    page.wait_for_function("document.getElementById('hall-count').textContent === '(1.000)'")
    sites = api(page, "/api/sites")["sites"]
    assert len(sites) == 1000 and sites[0]["name"] == "Nhà văn hóa thôn 1, Xã Số 01"
    assert page.locator("#hall-registry details").count() == 10

    # search the registry
    page.fill("#hall-search", "thôn 777,")
    page.wait_for_function("document.querySelectorAll('#hall-registry tr').length === 1")
    assert page.locator("#hall-registry tr").get_attribute("data-code") == "HY-0777"

    # a class for two communes, tomorrow at 08:30 in Viet Nam
    tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).date()
    page.click("#class-new")
    page.fill("#class-title", "Chuyên đề chuyển đổi số")
    page.fill("#class-date", tomorrow.isoformat())
    page.fill("#class-time", "08:30")
    page.select_option("#class-codec", "H264")
    page.check("#class-communes input[value='Xã Số 03']")
    page.check("#class-communes input[value='Xã Số 07']")
    page.click("#class-submit")
    page.wait_for_selector("#classes-upcoming .class-item")
    assert "200 điểm cầu ở 2 xã" in page.inner_text("#classes-upcoming .class-item")
    (klass,) = api(page, "/api/sessions")["classes"]
    assert klass["title"] == "Chuyên đề chuyển đổi số" and klass["video_codec"] == "H264"
    assert klass["starts_at"] == f"{tomorrow.isoformat()}T01:30:00Z"
    by_code = {s["code"]: s["commune"] for s in sites}
    assert len(klass["site_codes"]) == 200
    assert {by_code[c] for c in klass["site_codes"]} == {"Xã Số 03", "Xã Số 07"}
    communes = page.locator("#classes-upcoming [data-class-commune]")
    assert communes.count() == 2
    cards = communes.nth(0).locator("a").first.get_attribute("href")
    assert cards == f"/classes/{klass['id']}/cards?commune=X%C3%A3%20S%E1%BB%91%2003"

    # its wall opens signed in (no token in the link) and expects its 200 halls
    page.click(f"[data-open-wall='{klass['id']}']")
    page.wait_for_url(f"{lopso.url}/moderator/{klass['id']}")
    page.wait_for_function("document.getElementById('t-expected').textContent.trim() === '200'")


def test_commune_moderator_sees_only_its_commune(lopso: LopsoServer, browser_pages: Any) -> None:
    page = sign_in(browser_pages, lopso.url, MODERATOR, "moderator")
    assert "Người điều phối" in page.inner_text("#who") and "Xã Số 03" in page.inner_text("#who")
    page.wait_for_function("document.getElementById('hall-count').textContent === '(100)'")
    groups = page.locator("#hall-registry details")
    assert groups.count() == 1 and groups.get_attribute("data-commune") == "Xã Số 03"
    assert page.locator("#csv-file").count() == 0  # the registry is the organisers'
    assert page.locator("[data-end-class]").count() == 0  # and the class everyone's
    assert {s["commune"] for s in api(page, "/api/sites")["sites"]} == {"Xã Số 03"}
    (klass,) = api(page, "/api/sessions")["classes"]
    assert len(klass["site_codes"]) == 100
    sid = klass["id"]
    report = api(page, f"/api/sessions/{sid}/attendance")
    assert {r["commune"] for r in report["sites"]} == {"Xã Số 03"} and len(report["sites"]) == 100
    links = api(page, f"/api/sessions/{sid}/links")
    assert len(links["sites"]) == 100
    assert "lecturer" not in links and "moderator" not in links  # those see every hall
    other = page.request.get(
        f"{lopso.url}/api/sessions/{sid}/attendance?commune=X%C3%A3%20S%E1%BB%91%2007"
    )
    assert other.status == 403
    csrf = json.loads(page.locator("#page-config").text_content())["csrf"]
    refused = page.request.post(
        f"{lopso.url}/api/sites/preview",
        data="code,name\nA,B\n",
        headers={"Content-Type": "text/csv", "X-CSRF-Token": csrf},
    )
    assert refused.status == 403
    end = page.request.post(f"{lopso.url}/api/sessions/{sid}/end", headers={"X-CSRF-Token": csrf})
    assert end.status == 403 and end.json()["error"]["code"] == "wrong_commune"
    for path in (f"/api/sessions/{sid}/incidents", f"/api/sessions/{sid}/sites/HY-0700"):
        assert page.request.get(lopso.url + path).status == 403  # another commune's, or all
    assert page.request.get(f"{lopso.url}/api/sessions/{sid}/sites/HY-0250").status == 200

    # its wall: the tiles and the totals of its commune only
    page.click(f"[data-open-wall='{sid}']")
    page.wait_for_url(f"{lopso.url}/moderator/{sid}")
    page.wait_for_function("window.lopso && window.lopso.tileCount() === 100")
    page.wait_for_function("document.getElementById('t-expected').textContent.trim() === '100'")
    codes = page.eval_on_selector_all(".tile[data-code]", "ts => ts.map(t => t.dataset.code)")
    assert len(codes) == 100 and all("HY-0201" <= c <= "HY-0300" for c in codes)


def test_a_form_post_without_its_csrf_token_is_refused(
    lopso: LopsoServer, browser_pages: Any
) -> None:
    page = sign_in(browser_pages, lopso.url, ADMIN, "csrf")
    sid = api(page, "/api/sessions")["classes"][0]["id"]
    logout = page.request.post(f"{lopso.url}/logout", form={"x": "1"})
    assert logout.status == 403 and logout.json()["error"]["code"] == "csrf_failed"
    wrong = page.request.post(f"{lopso.url}/logout", form={"csrf_token": "forged"})
    assert wrong.status == 403
    end = page.request.post(
        f"{lopso.url}/api/sessions/{sid}/end",
        data="{}",
        headers={"Content-Type": "application/json"},
    )
    assert end.status == 403
    assert api(page, "/api/sessions")["classes"][0]["ended_at"] is None  # nothing happened
    assert page.request.get(f"{lopso.url}/admin").status == 200  # still signed in
    page.click("#logout")  # the page's own form carries it
    page.wait_for_url(f"{lopso.url}/login")
    assert page.request.get(f"{lopso.url}/api/sessions").status == 401
    # the sign-in form itself: without the field, or with another form's, refused
    fresh = browser_pages.open(f"{lopso.url}/login", name="fresh")
    bare = fresh.request.post(
        f"{lopso.url}/login", form={"username": ADMIN[0], "password": ADMIN[1]}
    )
    assert bare.status == 403 and "lopso_session" not in str(fresh.context.cookies())


def test_organiser_edits_halls_rotates_a_key_edits_and_ends_the_class(
    lopso: LopsoServer, browser_pages: Any
) -> None:
    page = sign_in(browser_pages, lopso.url, ADMIN, "edit")
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
    sid = api(page, "/api/sessions")["classes"][0]["id"]
    links = {s["code"]: s["url"] for s in api(page, f"/api/sessions/{sid}/links")["sites"]}
    hall_link = links["HY-0201"]

    # one new hall
    page.click("#hall-new")
    page.fill("#hall-code", "HY-9999")
    page.fill("#hall-name", "Nhà văn hóa tổ dân phố mới")
    page.fill("#hall-commune", "Xã Số 03")
    page.click("#hall-submit")
    page.wait_for_function("document.getElementById('hall-count').textContent === '(1.001)'")
    # one hall edited: its link keeps working
    page.fill("#hall-search", "HY-0201")
    page.click("[data-edit='HY-0201']")
    assert (
        page.input_value("#hall-code") == "HY-0201"
        and page.locator("#hall-code").is_editable() is False
    )
    page.fill("#hall-name", "Nhà văn hóa thôn Đông (mới)")
    page.click("#hall-submit")
    page.wait_for_selector("#hall-result:has-text('Đã lưu')")
    by_code = {s["code"]: s for s in api(page, "/api/sites")["sites"]}
    assert by_code["HY-0201"]["name"] == "Nhà văn hóa thôn Đông (mới)"
    assert by_code["HY-9999"]["commune"] == "Xã Số 03"
    assert page.request.get(hall_link).status == 200
    # its key rotated: the link handed out before stops working
    page.fill("#hall-search", "HY-0201")
    page.click("[data-rotate='HY-0201']")
    page.wait_for_selector("#toast:has-text('Đã đổi khóa')")
    assert page.request.get(hall_link).status == 401

    # the class edited, then ended
    page.click(f"[data-edit-class='{sid}']")
    page.fill("#class-title", "Chuyên đề chuyển đổi số (buổi 1)")
    page.fill("#class-time", "09:00")
    page.click("#class-submit")
    page.wait_for_selector("#classes-upcoming .class-title:has-text('(buổi 1)')")
    klass = api(page, "/api/sessions")["classes"][0]
    assert klass["title"] == "Chuyên đề chuyển đổi số (buổi 1)"
    assert klass["starts_at"].endswith("T02:00:00Z")
    assert len(klass["site_codes"]) == 201 and "HY-9999" in klass["site_codes"]  # by commune
    page.click(f"[data-end-class='{sid}']")
    page.wait_for_selector(f"#classes-past [data-class='{sid}']")
    assert "Đã kết thúc" in page.inner_text(f"#classes-past [data-class='{sid}']")
    assert api(page, "/api/sessions")["classes"][0]["ended_at"] is not None


def test_wrong_passwords_are_rate_limited(lopso: LopsoServer, browser_pages: Any) -> None:
    page = browser_pages.open(f"{lopso.url}/login", name="guess")
    seen: list[int] = []
    while 429 not in seen and len(seen) < 10:  # 5 at once, then one a minute (accounts.py)
        page.fill("#username", ADMIN[0])
        page.fill("#password", f"đoán sai {len(seen)}")
        with page.expect_response(
            lambda r: r.url.endswith("/login") and r.request.method == "POST"
        ) as reply:
            page.click("#login-submit")
        seen.append(reply.value.status)
        page.wait_for_selector("#login-error")
    assert seen[:5] == [401] * 5 and seen[-1] == 429, seen
    assert "quá nhiều lần" in page.inner_text("#login-error")
    # now even the right password waits: guessing costs time
    page.fill("#username", ADMIN[0])
    page.fill("#password", ADMIN[1])
    page.click("#login-submit")
    page.wait_for_selector("#login-error")
    assert page.url.endswith("/login") and "quá nhiều lần" in page.inner_text("#login-error")
