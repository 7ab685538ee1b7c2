"""The moderator wall at province scale (issue 5): 5,000 sites in 104 communes, in headless
Chromium, fed over its real WebSocket by a real `lopso serve` in cluster mode.

How the 5,000 sites are simulated: a few hundred are real site WebSockets (status, headcount,
quality, a help request, through routes/ws.py and the hub); the rest are what other cluster
nodes would publish: presence written with `store.set_presence` and site patches published on
the class channel (`class:<sid>`) of a private Redis, which the server folds into its view and
batches to the moderator page exactly as it does for sites on other nodes. Then about 1,000
sites change every second (each site's quality figures every ~5 s, as the site pages report
them), while the page measures its main-thread time per batch (script + style + layout).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import auth
from server.models import Role
from tests.e2e.conftest import ARTIFACTS
from tests.redisproc import RedisProcess
from tests.serverproc import SECRET, LopsoServer

SITES = 5000
COMMUNES = 104
WS_SITES = 200  # real site WebSockets; the rest come through the store
NEVER = 150  # sites that never join: `not_joined` alerts (the class starts in 10 minutes)
OFFLINE = 120  # dropped two minutes ago: `offline` alerts
CHURN_S = 12
CHURN_PER_S = 1000
# The wall's colours (web/static/css/lopso.css, --w-*), as getComputedStyle reports them.
COLOURS = {
    "good": "rgb(26, 138, 58)",
    "non_optimal": "rgb(212, 168, 0)",
    "poor": "rgb(230, 81, 0)",
    "lost": "rgb(38, 50, 56)",
    "waiting": "rgb(11, 92, 173)",
    "connecting": "rgb(95, 168, 230)",
    "no_media": "rgb(123, 31, 162)",
    "offline": "rgb(198, 40, 40)",
    "never_joined": "rgb(183, 192, 200)",
}
QUALITIES = ("good", "good", "good", "non_optimal", "poor", "lost")
WORDS = (
    "An",
    "Bình",
    "Cường",
    "Đông",
    "Hòa",
    "Hưng",
    "Lạc",
    "Minh",
    "Nam",
    "Phú",
    "Quang",
    "Tân",
    "Thịnh",
    "Tiến",
    "Trung",
    "Vĩnh",
    "Xuân",
    "Yên",
)


def registry_csv() -> tuple[str, list[tuple[str, str]]]:
    """5,000 sites over 104 communes: the CSV to import and (code, commune) in order."""
    rows, sites = ["code,name,village,commune,province"], []
    for i in range(SITES):
        c = i % COMMUNES
        commune = f"Xã {WORDS[c % len(WORDS)]} {WORDS[(c // len(WORDS)) % len(WORDS)]} {c + 1}"
        code = f"HY-{c + 1:03d}-{i // COMMUNES + 1:03d}"
        village = f"Thôn {WORDS[(i // COMMUNES) % len(WORDS)]} {i // COMMUNES + 1}"
        rows.append(f"{code},Nhà văn hóa {village},{village},{commune},Hưng Yên")
        sites.append((code, commune))
    return "\n".join(rows) + "\n", sites


def get(url: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as reply:
        return json.loads(reply.read())


def post(url: str, token: str, body: bytes, content_type: str) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(req, timeout=60) as reply:
        return json.loads(reply.read())


def wall_class(status: str, quality: str | None, media: bool = True) -> str:
    """What the page must colour a site (web/static/js/wall.js wallClass)."""
    if status in ("never_joined", "offline", "waiting"):
        return status
    if status in ("connecting", "error") and not media:
        return "no_media"
    if status in ("playing", "reconnecting", "stalled") and quality:
        return quality
    return "connecting" if status != "playing" else "good"


class Simulator:
    """An asyncio loop in a thread: the site WebSockets and the 'other nodes' of the cluster."""

    def __init__(self, server: LopsoServer, redis_url: str, sid: str, data_dir: Path) -> None:
        self.server, self.redis_url, self.sid, self.data_dir = server, redis_url, sid, data_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.expected: dict[str, dict[str, Any]] = {}
        self.sockets: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None
        self.store: Any = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.rng = random.Random(5)

    def run(self, coro: Any, timeout: float = 120) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def open(self) -> None:
        from server.store import open_store

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.store = await open_store(self.redis_url, self.data_dir, "sim-node")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ws in self.sockets.values():
            await ws.close()
        if self.session:
            await self.session.close()
        if self.store:
            await self.store.close()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.run(self.close(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    # --- real site pages ------------------------------------------------------------------
    async def connect_sites(self, codes: list[str], tokens: dict[str, str]) -> None:
        sem = asyncio.Semaphore(20)

        async def one(code: str, index: int) -> None:
            async with sem:
                token = tokens[code]
                ws = await self.session.ws_connect(  # type: ignore[union-attr]
                    f"{self.server.url.replace('http', 'ws')}/ws/{self.sid}?token={token}"
                )
                welcome = json.loads((await ws.receive(timeout=20)).data)
                assert welcome["type"] == "welcome", welcome
                self.sockets[code] = ws
                count = 20 + index % 60
                await ws.send_json({"type": "status", "state": "playing"})
                await ws.send_json({"type": "headcount", "count": count, "phase": "start"})
                await ws.send_json(
                    {
                        "type": "quality",
                        "rtt_ms": 80.0,
                        "loss_pct": 0.5,
                        "kbps": 1200.0,
                        "fps": 25.0,
                    }
                )
                self.expected[code] = {"status": "playing", "quality": "good", "headcount": count}
                self.tasks.append(asyncio.create_task(self._heartbeat(ws)))

        await asyncio.gather(*(one(code, i) for i, code in enumerate(codes)))

    async def _heartbeat(self, ws: Any) -> None:
        while not ws.closed:
            await asyncio.sleep(8)
            await ws.send_json({"type": "heartbeat"})
            await ws.send_json(
                {
                    "type": "quality",
                    "rtt_ms": 80.0 + self.rng.random() * 20,
                    "loss_pct": 0.5,
                    "kbps": 1200.0,
                    "fps": 25.0,
                }
            )

    async def ask_help(self, code: str) -> None:
        await self.sockets[code].send_json(
            {"type": "help", "reason": "no_sound", "text": "mất tiếng"}
        )

    # --- sites on the other nodes -------------------------------------------------------------
    async def publish(self, code: str, **patch: Any) -> None:
        if patch.get("status") == "offline":
            await self.store.clear_presence(self.sid, code)
        elif "status" in patch:
            await self.store.set_presence(
                self.sid, code, {"status": patch["status"], "node": "sim-node", "conn": code}, 600
            )
        await self.store.publish(f"class:{self.sid}", {"t": "site", "code": code, "patch": patch})
        current = self.expected.setdefault(
            code, {"status": "never_joined", "quality": None, "headcount": None}
        )
        for key in ("status", "quality", "headcount"):
            if key in patch:
                current[key] = patch[key]

    async def populate(self, codes: list[str], offline: list[str]) -> None:
        now = time.time()
        for i, code in enumerate(codes):
            count = 10 + (i * 7) % 90
            await self.publish(
                code,
                status="playing",
                since=now - 600,
                quality=QUALITIES[i % 6],
                headcount=count,
                peak_headcount=count,
                rtt_ms=120.0,
                loss_pct=1.0,
                kbps=900.0,
            )
        for code in offline:
            await self.publish(
                code, status="offline", since=now - 120, headcount=15, peak_headcount=15
            )

    async def churn(self, codes: list[str], per_second: int, seconds: float) -> None:
        """Every second, `per_second` sites report new figures; a few change class or count."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.monotonic()
            for code in self.rng.sample(codes, per_second):
                patch: dict[str, Any] = {
                    "rtt_ms": round(80 + self.rng.random() * 200, 1),
                    "loss_pct": round(self.rng.random() * 3, 2),
                    "kbps": round(300 + self.rng.random() * 1200),
                }
                if self.rng.random() < 0.08:
                    patch["quality"] = self.rng.choice(QUALITIES)
                if self.rng.random() < 0.05:
                    patch["headcount"] = self.rng.randrange(5, 120)
                await self.publish(code, **patch)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LopsoServer, str]]:
    """A private Redis and `lopso serve` in cluster mode on it."""
    base = tmp_path_factory.mktemp("wall")
    with RedisProcess(base / "redis", appendfsync="everysec") as redis_proc:
        env = {
            "LOPSO_REDIS_URL": redis_proc.url,
            "LOPSO_SIGNALLING_RATE": "0",
            "LOPSO_REDIS_DURABILITY": "warn",  # everysec: this test measures the wall, not AOF
            "LOPSO_WS_PER_ADDR": "0",  # 5,000 halls' pages, all from this machine's address
        }
        with LopsoServer(base / "lopso", demo_sites=0, env=env) as srv:
            yield srv, redis_proc.url


def test_wall_of_5000_sites_fed_by_the_real_server(
    cluster: tuple[LopsoServer, str], browser_pages: Any, tmp_path: Path
) -> None:
    srv, redis_url = cluster
    admin = srv.admin_token()
    text, sites = registry_csv()
    assert (
        post(f"{srv.url}/api/sites/import", admin, text.encode(), "text/csv")["imported"] == SITES
    )
    starts = time.time() + 600  # in 10 minutes: sites not joined yet are alerts already
    created = post(
        f"{srv.url}/api/sessions",
        admin,
        json.dumps({"title": "Bình dân học vụ số: lớp toàn tỉnh", "starts_at": starts}).encode(),
        "application/json",
    )
    sid = created["id"]
    codes = [code for code, _ in sites]
    ws_codes = codes[:WS_SITES]
    never = codes[-NEVER:]
    offline = codes[-NEVER - OFFLINE : -NEVER]
    fed = codes[WS_SITES : -NEVER - OFFLINE]

    sim = Simulator(srv, redis_url, sid, tmp_path)
    try:
        sim.run(sim.open())
        began = time.monotonic()
        links = get(f"{srv.url}/api/sessions/{sid}/links", admin)
        tokens = {s["code"]: s["token"] for s in links["sites"]}
        sim.run(
            sim.connect_sites(ws_codes, tokens), timeout=60
        )  # also opens the class's room on the server
        ws_s = time.monotonic() - began
        sim.run(sim.populate(fed, offline))
        sim.run(sim.ask_help(ws_codes[3]))
        for code in never:
            sim.expected[code] = {"status": "never_joined", "quality": None, "headcount": None}
        time.sleep(2.5)  # two batches: the hub has folded every patch

        token = auth.mint(SECRET.encode(), sid, Role.MODERATOR, ttl_s=3600)
        moderator = browser_pages.open(
            f"{srv.url}/moderator/{sid}?token={token}",
            name="wall",
            viewport={"width": 1600, "height": 1000},
        )
        moderator.wait_for_function(
            f"window.lopso && window.lopso.tileCount() === {SITES}", timeout=60_000
        )
        snapshot_ms = moderator.evaluate("window.lopso.metrics.snapshotMs")
        moderator.evaluate("window.lopso.metrics.samples.length = 0")

        sim.run(sim.churn(fed, CHURN_PER_S, CHURN_S), timeout=CHURN_S + 60)
        want = Counter(wall_class(e["status"], e["quality"]) for e in sim.expected.values())
        people = sum(e["headcount"] or 0 for e in sim.expected.values())
        try:
            moderator.wait_for_function(
                "(w) => { const c = window.lopso.counts;"
                " return Object.keys(w).every((k) => c[k] === w[k]); }",
                arg=dict(want),
                timeout=15_000,
            )
        except Exception as exc:  # noqa: BLE001 - say what the page shows instead
            shown = moderator.evaluate("window.lopso.counts")
            raise AssertionError(f"wall counts {shown} != expected {dict(want)}") from exc
        totals = moderator.evaluate("window.lopso.totals")
        metrics = moderator.evaluate("window.lopso.metrics")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        moderator.screenshot(path=str(ARTIFACTS / "wall-5000.png"))

        # totals, as the server counts them, agree with the simulation
        assert totals["expected"] == SITES
        assert totals["connected"] == SITES - NEVER - OFFLINE
        assert totals["people"] == people
        assert totals["help_open"] == 1
        # every tile's colour class, and the real painted colour of a sample of each class
        shown = moderator.evaluate(
            "() => { const out = {}; document.querySelectorAll('.tile').forEach((el) =>"
            " { out[el.getAttribute('data-code')] = el.getAttribute('data-wall'); }); return out; }"
        )
        wrong = {
            c: (shown.get(c), wall_class(e["status"], e["quality"]))
            for c, e in sim.expected.items()
            if shown.get(c) != wall_class(e["status"], e["quality"])
        }
        assert not wrong, list(wrong.items())[:10]
        for klass, colour in COLOURS.items():
            code = next(
                (
                    c
                    for c, e in sim.expected.items()
                    if wall_class(e["status"], e["quality"]) == klass
                ),
                None,
            )
            if code is None:
                continue
            painted = moderator.evaluate(
                '(c) => getComputedStyle(document.querySelector(`.tile[data-code="${c}"]`))'
                ".backgroundColor",
                code,
            )
            assert painted == colour, (klass, code, painted)
        # alerts: sites not joined 10 min before the start, sites offline for 2 minutes, help
        alerts = Counter(a["kind"] for a in moderator.evaluate("window.lopso.openAlerts()"))
        assert alerts["not_joined"] == NEVER and alerts["offline"] == OFFLINE
        assert alerts["help"] == 1

        samples = metrics["samples"]
        assert len(samples) >= CHURN_S - 3, metrics  # about one batch per second
        p95 = sorted(samples)[int(0.95 * (len(samples) - 1))]
        per_batch = metrics["sites"] / max(1, metrics["updates"])
        print(
            f"\nwall: {SITES} sites, {WS_SITES} site WebSockets (connected in {ws_s:.1f} s), "
            f"snapshot {snapshot_ms:.0f} ms; {len(samples)} batches of ~{per_batch:.0f} sites: "
            f"median {statistics.median(samples):.1f} ms, p95 {p95:.1f} ms, "
            f"max {max(samples):.1f} ms (main thread per batch: script + style + layout)"
        )
        # The target is 100 ms per batch; the machine is shared, so the bound on the worst
        # batch is looser than the one on the 95th percentile.
        assert p95 < 100, samples
        assert max(samples) < 250, samples

        drill_down_filter_and_resolve(moderator, sites, ws_codes[3], len(offline))
        errors = [x for x in browser_pages.console("wall") if x.startswith("pageerror")]
        assert not errors, errors
    finally:
        sim.stop()


def drill_down_filter_and_resolve(
    moderator: Any, sites: list[tuple[str, str]], helped: str, offline: int
) -> None:
    """One click on a tile opens its drill-down (from the REST API); filters narrow the wall;
    "resolve" in the drill-down closes the help request and its alert."""
    commune = dict(sites)[helped]
    moderator.select_option("#filter-commune", commune)
    in_commune = sum(1 for _, c in sites if c == commune)
    assert (
        moderator.evaluate("document.querySelectorAll('.tile:not([hidden])').length") == in_commune
    )
    assert moderator.input_value("#msg-target") == f"commune:{commune}"  # messages go there
    moderator.select_option("#filter-commune", "")
    assert moderator.input_value("#msg-target") == "all"
    moderator.select_option("#filter-alert", "offline")
    assert moderator.evaluate("document.querySelectorAll('.tile:not([hidden])').length") == offline
    moderator.select_option("#filter-alert", "")
    moderator.check("#filter-help")
    assert moderator.evaluate(
        "Array.from(document.querySelectorAll('.tile:not([hidden])')).map((e) => e.dataset.code)"
    ) == [helped]
    moderator.click(f'.tile[data-code="{helped}"]')
    moderator.wait_for_function("window.lopso.detail() !== null")
    detail = moderator.evaluate("window.lopso.detail()")
    # a simulated hall opens its page only: its time is page time, not media time
    assert detail["site"]["code"] == helped and detail["record"]["page_intervals"]
    assert [h["reason"] for h in detail["help"]] == ["no_sound"]
    drawn = moderator.text_content("#detail-more")  # the record's sections are drawn
    assert f"Các lần kết nối ({len(detail['record']['intervals'])})" in drawn
    assert "Thời gian mở trang" in drawn and "Yêu cầu hỗ trợ" in drawn
    moderator.click("#detail-more button[data-help-id]")
    moderator.wait_for_function("window.lopso.totals.help_open === 0")
    moderator.wait_for_function("!window.lopso.openAlerts().some((a) => a.kind === 'help')")
    resolved = [
        a
        for a in moderator.evaluate("window.lopso.incidents()")
        if a["kind"] == "help" and a["site"] == helped
    ]
    assert resolved and not resolved[0]["open"] and resolved[0]["resolved_at"]
    moderator.uncheck("#filter-help")
