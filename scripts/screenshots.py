#!/usr/bin/env python3
"""Take the README's screenshots: a demo class with the lecturer live and two sites playing.

    python scripts/screenshots.py [--out docs/screenshots] [--sites 12]

Starts `lopso serve --demo-json` on a free port (tests/serverproc.py), drives Debian's headless
Chromium with Playwright and its fake camera, and writes landing.png, studio.png, site-waiting.png,
site.png, moderator.png (the drill-down of a site that chose sound only), checkin.png and
wall.png (the wall at province scale: 5,000 made-up sites fed into the page as one snapshot, a
few of them sound only; small: half-scale PNGs) and admin.png (the organiser page, signed in,
with a registry of 72 halls in 6 communes and two classes; `--only organiser` takes it alone).
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import tempfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.serverproc import LopsoServer  # noqa: E402

DESKTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 720}


def new_page(browser: Any, viewport: dict[str, int], scale: float) -> Any:
    context = browser.new_context(
        permissions=["camera", "microphone"],
        viewport=viewport,
        device_scale_factor=scale,
        locale="vi-VN",
    )
    context.set_default_timeout(30_000)
    return context.new_page()


def shoot(page: Any, out: pathlib.Path, name: str, *, full_page: bool = False) -> None:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
        f"{path.stat().st_size // 1024} KiB"
    )


def run(out: pathlib.Path, sites: int, scale: float) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LopsoServer(pathlib.Path(tmp), demo_sites=sites) as srv,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        demo = srv.demo
        landing = new_page(browser, DESKTOP, scale)
        landing.goto(srv.url + "/")
        shoot(landing, out, "landing")

        waiting = new_page(browser, DESKTOP, scale)
        waiting.goto(demo["sites"][-1]["url"])
        waiting.wait_for_function("window.lopso.state === 'waiting'")
        shoot(waiting, out, "site-waiting")

        studio = new_page(browser, DESKTOP, scale)
        studio.goto(demo["lecturer"]["url"])
        studio.wait_for_function("document.getElementById('preview').videoWidth > 0")
        studio.click("#golive")
        studio.wait_for_function("window.lopso.state === 'live'")

        players = []
        for i, site in enumerate(demo["sites"][:2]):
            page = new_page(browser, DESKTOP, scale)
            page.goto(site["url"])
            page.wait_for_function("window.lopso.state === 'playing'")
            page.click("#start")
            page.click("#open-headcount")
            page.fill("#hc-count", str(40 + 13 * i))
            page.click("#hc-submit")
            page.wait_for_selector("#hc-result[data-kind=ok]")
            players.append(page)
        players[1].click("#open-help")
        players[1].check("input[value=no_sound]")
        players[1].click("#form-help button[type=submit]")
        players[1].wait_for_selector("#help-result[data-kind=ok]")
        players[0].wait_for_timeout(2000)
        players[0].mouse.move(640, 300)  # wake the control bar that fades in full screen
        players[0].wait_for_timeout(300)
        shoot(players[0], out, "site")
        players[0].click("#mode-audio")  # then this hall chooses sound only: the wall shows it
        players[0].wait_for_function("window.lopso.mode === 'audio_only'")

        moderator = new_page(browser, DESKTOP, scale)
        moderator.goto(demo["moderator"]["url"])
        moderator.wait_for_function("window.lopso.totals.playing >= 2")
        moderator.wait_for_selector('.tile[data-media="audio_only"]')
        studio.wait_for_timeout(1500)
        shoot(studio, out, "studio")
        moderator.click(f'.tile[data-code="{demo["sites"][0]["code"]}"]')
        moderator.wait_for_function("window.lopso.detail() !== null")
        moderator.wait_for_timeout(300)
        shoot(moderator, out, "moderator")
        province_wall(browser, demo["moderator"]["url"], out, scale)

        site_page = players[0]
        checkin_url = site_page.get_attribute("#checkin-link", "href")
        phone = new_page(browser, PHONE, scale)
        phone.goto(checkin_url)
        phone.fill("#name", "Nguyễn Thị Hoa")
        shoot(phone, out, "checkin")
        browser.close()
    organiser(out, scale)


def organiser(out: pathlib.Path, scale: float) -> None:
    """The organiser page of a province office: halls imported, one class past, one ahead."""
    import datetime
    import json
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        srv = LopsoServer(pathlib.Path(tmp), demo_sites=0)
        subprocess.run(
            [sys.executable, "-m", "server", "users", "add", "tinh", "--role", "admin"]
            + ["--data", str(srv.data)],
            input="mật khẩu ảnh chụp\n",
            text=True,
            check=True,
            capture_output=True,
        )
        with srv, sync_playwright() as pw:
            rows = ["code;name;village;commune;province"]
            for n in range(72):
                commune = f"Xã {COMMUNE_WORDS[n // 12]} {COMMUNE_WORDS[n // 12 + 3]}"
                rows.append(
                    f"HY-{n // 12 + 1:02d}-{n % 12 + 1:03d};Nhà văn hóa thôn "
                    f"{COMMUNE_WORDS[n % 10]} {n % 12 + 1};Thôn {n % 12 + 1};{commune};Hưng Yên"
                )
            token = srv.admin_token()

            def post(path: str, body: bytes, kind: str) -> Any:
                request = urllib.request.Request(
                    srv.url + path,
                    data=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": kind},
                )
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return json.loads(reply.read())

            post("/api/sites/import", "\n".join(rows).encode(), "text/csv")
            day = datetime.date.today()
            for title, when, codes in (
                ("Chuyên đề 3: Dịch vụ công trực tuyến", day + datetime.timedelta(days=5), 36),
                ("Chuyên đề 2: An toàn trên mạng", day - datetime.timedelta(days=9), 60),
            ):
                body = {
                    "title": title,
                    "starts_at": f"{when.isoformat()}T08:00:00+07:00",
                    "ends_at": f"{when.isoformat()}T10:00:00+07:00",
                    "site_codes": [r.split(";")[0] for r in rows[1 : codes + 1]],
                }
                post("/api/sessions", json.dumps(body).encode(), "application/json")
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = new_page(browser, {"width": 1280, "height": 900}, scale)
            page.goto(srv.url + "/login")
            page.fill("#username", "tinh")
            page.fill("#password", "mật khẩu ảnh chụp")
            page.click("#login-submit")
            page.wait_for_selector("#classes-upcoming .class-item")  # (the page policy: no eval)
            page.click("#classes-upcoming .class-communes summary")
            shoot(page, out, "admin", full_page=True)
            browser.close()


COMMUNE_WORDS = ("An", "Bình", "Cường", "Đông", "Hòa", "Hưng", "Lạc", "Minh", "Nam", "Phú")


def province_sites(count: int = 5000, communes: int = 104) -> list[dict[str, Any]]:
    """Made-up site states for a picture of the province wall (never used as test data)."""
    rng = random.Random(7)
    weights = (
        ("playing", "good", 70),
        ("playing", "non_optimal", 10),
        ("playing", "poor", 5),
        ("playing", "lost", 2),
        ("waiting", None, 3),
        ("reconnecting", None, 2),
        ("offline", None, 3),
        ("never_joined", None, 5),
    )
    bag = [(st, q) for st, q, w in weights for _ in range(w)]
    sites = []
    for i in range(count):
        c = i % communes
        status, quality = rng.choice(bag)
        joined = status != "never_joined"
        sites.append(
            {
                "code": f"HY-{c + 1:03d}-{i // communes + 1:03d}",
                "name": f"Nhà văn hóa thôn {COMMUNE_WORDS[i % 10]} {i // communes + 1}",
                "commune": f"Xã {COMMUNE_WORDS[c % 10]} {COMMUNE_WORDS[c // 10 % 10]} {c + 1}",
                "status": status,
                "quality": quality,
                "headcount": rng.randrange(20, 90) if joined else None,
                "peak_headcount": None,
                "rtt_ms": None,
                "loss_pct": None,
                "kbps": None,
                "rejoins": 0,
                "since": None,
                "help_open": int(rng.random() < 0.004),
                "checkins": 0,
                "media_mode": "audio_only" if joined and rng.random() < 0.02 else "auto",
            }
        )
    return sites


def province_wall(browser: Any, url: str, out: pathlib.Path, scale: float) -> None:
    page = new_page(browser, {"width": 1600, "height": 1000}, scale)
    page.goto(url)
    page.wait_for_function("window.lopso && window.lopso.tileCount() >= 2")
    sites = province_sites()
    totals = {
        "expected": len(sites),
        "connected": sum(s["status"] not in ("offline", "never_joined") for s in sites),
        "playing": sum(s["status"] == "playing" for s in sites),
        "people": sum(s["headcount"] or 0 for s in sites),
        "help_open": sum(s["help_open"] for s in sites),
    }
    page.evaluate(
        "(m) => window.lopso.feed(m)",
        {"type": "sites", "sites": sites, "totals": totals, "alerts": [], "incidents": []},
    )
    shoot(page, out, "wall")  # at once: the demo class's own updates would follow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--sites", type=int, default=12, help="demo sites (default 12)")
    parser.add_argument("--scale", type=float, default=0.5, help="device scale factor (0.5)")
    parser.add_argument("--only", choices=("all", "organiser"), default="all")
    args = parser.parse_args(argv)
    if args.only == "organiser":
        args.out.mkdir(parents=True, exist_ok=True)
        organiser(args.out, args.scale)
    else:
        run(args.out, args.sites, args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
