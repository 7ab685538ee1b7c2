"""The pages under their Content-Security-Policy (no 'unsafe-inline') in headless Chromium
against a real `lopso serve`: the studio goes live, a site plays, the moderator's wall fills,
and no page logs a policy violation; the moderator's links CSV keeps a hall named like a
formula as text.

Its own module (own server): a demo site is renamed.
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.request
from typing import Any

# Every violation, also ones the console would not show (a report-only directive, a worker).
WATCH_POLICY = """
window.__policyViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__policyViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

READY = "window.lopso && window.lopso.ready === true"  # the landing and error pages' script ran


def wait_until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Poll `expression` from the test (DevTools evaluation is not the page's eval, which the
    policy forbids and Playwright's wait_for_function uses)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{page.url}: never {expression}"
        page.wait_for_timeout(200)


def open_enforced(browser_pages: Any, url: str, name: str) -> Any:
    return browser_pages.open(url, name=name, init_script=WATCH_POLICY, enforce_policy=True)


def violations(browser_pages: Any, name: str, page: Any) -> list[str]:
    seen = [line for line in browser_pages.console(name) if "Refused to" in line]
    seen += [line for line in browser_pages.console(name) if "Content Security Policy" in line]
    return seen + list(page.evaluate("window.__policyViolations || []"))


def test_pages_reach_their_ready_states_without_policy_violations(
    lopso: Any, browser_pages: Any
) -> None:
    demo = lopso.demo
    opened = {}
    landing = open_enforced(browser_pages, lopso.url + "/", "landing")
    wait_until(landing, READY)
    opened["landing"] = landing
    moderator = open_enforced(browser_pages, demo["moderator"]["url"], "moderator")
    wait_until(moderator, "window.lopso && window.lopso.tileCount() >= 2")
    opened["moderator"] = moderator
    studio = open_enforced(browser_pages, demo["lecturer"]["url"], "studio")
    wait_until(studio, "document.getElementById('preview').videoWidth > 0")
    studio.click("#golive")
    wait_until(studio, "window.lopso && window.lopso.state === 'live'")
    opened["studio"] = studio
    site = open_enforced(browser_pages, demo["sites"][0]["url"], "site")
    wait_until(site, "window.lopso && window.lopso.state === 'playing'")
    wait_until(site, "window.lopso.framesDecoded() > 5")
    opened["site"] = site
    error = open_enforced(
        browser_pages, f"{lopso.url}/studio/{demo['session_id']}?token=x", "error"
    )
    wait_until(error, READY)
    opened["error"] = error
    moderator.wait_for_timeout(1500)  # late fetches, WebSocket messages, the wall's refresh
    found = {name: violations(browser_pages, name, page) for name, page in opened.items()}
    assert found == {name: [] for name in opened}, found


def test_links_csv_keeps_a_formula_named_hall_as_text(lopso: Any, browser_pages: Any) -> None:
    demo = lopso.demo
    code = demo["sites"][1]["code"]
    hostile = '=HYPERLINK("http://evil.example","Bấm")'
    row = f'code,name,commune\n{code},"{hostile.replace(chr(34), chr(34) * 2)}",@SUM(A1)\n'
    request = urllib.request.Request(
        f"{lopso.url}/api/sites/import",
        data=row.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {lopso.admin_token()}", "Content-Type": "text/csv"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert json.loads(reply.read()) == {"imported": 1}
    moderator = open_enforced(browser_pages, demo["moderator"]["url"], "moderator-links")
    wait_until(moderator, "window.lopso && window.lopso.tileCount() >= 2")
    with moderator.expect_download() as download:
        moderator.click("#export-links")
    with open(download.value.path(), encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(io.StringIO(f.read())))
    by_code = {r[0]: r for r in rows[1:]}
    assert rows[0] == ["code", "name", "village", "commune", "short_url", "url"]  # the halls'
    assert by_code[code][1] == "'" + hostile and by_code[code][3] == "'@SUM(A1)"
    assert by_code[demo["sites"][0]["code"]][1].startswith("Nhà văn hóa")  # others untouched
    assert by_code[code][5].startswith(lopso.url + "/site/")  # links are not escaped
    assert by_code[code][4].startswith(lopso.url + "/j/")
