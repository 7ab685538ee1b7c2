#!/usr/bin/env python3
"""Soak: one class for hours, with a real-rate lecture and N simulated sites, watched.

    python scripts/soak.py --publisher ffmpeg --sites 200 --minutes 120 --out soak-ffmpeg.jsonl
    python scripts/soak.py --publisher chromium --sites 200 --minutes 120 --storm-at 60
    python scripts/soak.py --publisher ffmpeg --sites 20 --minutes 3 --storm-at 1   # quick look

Runs `lopso serve` (the same runner the tests use), a publisher — FFmpeg's WHIP muxer looping a
noisy H264 clip at `--kbps` into an H264 class, or headless Chromium's studio page with its fake
camera into the demo VP8 class — and `scripts/loadgen.py` sites (WHEP viewers that do not
decode, with the page WebSocket). Every `--sample` seconds one JSON line goes to `--out` and
stderr: the server's memory (RSS), open file descriptors, CPU, viewers, packets in and
forwarded, and the sites playing. It fails (exit 1) when:
- a site stops receiving for more than `--stall-limit` seconds once every site has joined
  (a site is playing while a packet reached it in the last 2 s);
- the server's RSS grows more than `--memory-growth-mb` past its level once all sites play;
- with `--storm-at M`: at minute M every site process is killed (its viewers vanish without a
  DELETE), `--half-open` WHEP offers are posted that never connect, and the sites rejoin;
  90 s later the server must hold exactly `--sites` viewers again and its RSS be back within
  the bound (viewers that never connect, or left, are freed).
The last stdout line is one JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts import loadgen  # noqa: E402
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the e2e tests' browser)
from tests.serverproc import LopsoServer  # noqa: E402  (the same server runner the tests use)

CACHE = pathlib.Path.home() / ".cache" / "lopso"
STORM_SETTLE_S = 90.0  # consent lapses after 30 s; leave room for the rejoin and a sample


# --- the server, seen from outside ------------------------------------------------------------
class ProcWatch:
    """RSS, descriptors and CPU of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self._last = (time.monotonic(), self.cpu_seconds())

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def cpu_percent(self) -> float:
        """Share of one core used since the last call."""
        now, cpu = time.monotonic(), self.cpu_seconds()
        then, before = self._last
        self._last = (now, cpu)
        return 100.0 * (cpu - before) / max(1e-6, now - then)


def scrape(url: str, token: str) -> dict[str, float]:
    """The server's /metrics, summed per family (labels dropped)."""
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        text = reply.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        family = name.split("{", 1)[0]
        try:
            totals[family] = totals.get(family, 0.0) + float(value)
        except ValueError:
            continue
    return totals


def api(url: str, token: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path,
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


# --- publishers -------------------------------------------------------------------------------
class FfmpegPublisher:
    """FFmpeg's WHIP muxer (PyAV) looping a noisy H264 clip in its own process."""

    codec = "H264"

    def __init__(self, kbps: int, seconds: float, log: pathlib.Path) -> None:
        from tests.mediaclip import write_noisy_h264_clip

        CACHE.mkdir(parents=True, exist_ok=True)
        self.clip = write_noisy_h264_clip(CACHE, kbps, seconds=10.0)
        self.seconds = seconds
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, links: dict[str, Any]) -> None:
        lecturer = links["lecturer"]
        args = [lecturer["whip_url"], str(self.clip), lecturer["token"]]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.mediaclip", *args, "--seconds", str(self.seconds)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict[str, Any]:
        return {"publisher_alive": self.alive()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ChromiumPublisher:
    """The studio page in headless Chromium (fake camera and microphone), live."""

    codec = "VP8"

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        self.page: Any = None

    def start(self, links: dict[str, Any]) -> None:
        # Playwright evaluates wait_for_function with eval, which the pages' CSP forbids
        context = self.browser.new_context(permissions=["camera", "microphone"], bypass_csp=True)
        self.page = context.new_page()
        self.page.goto(links["lecturer"]["url"])
        self.page.wait_for_function("document.getElementById('preview').videoWidth > 0")
        self.page.click("#golive")
        self.page.wait_for_function("window.lopso && window.lopso.state === 'live'", timeout=30_000)

    def alive(self) -> bool:
        try:
            return bool(self.page.evaluate("window.lopso && window.lopso.state === 'live'"))
        except Exception:  # noqa: BLE001 - a crashed page is simply not live
            return False

    def stats(self) -> dict[str, Any]:
        sent = self.page.evaluate("window.lopso ? window.lopso.framesSent() : null")
        return {"publisher_alive": self.alive(), "publisher_frames_sent": sent}

    def stop(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()


# --- the simulated sites ----------------------------------------------------------------------
class Sites:
    """loadgen worker processes; progress arrives on a queue once a second per process."""

    def __init__(
        self,
        links: list[loadgen.SiteLink],
        entry: str,
        procs: int,
        seconds: float,
        codec: str,
        decrypt_every: int,
    ) -> None:
        self.links, self.entry, self.procs, self.seconds = links, entry, procs, seconds
        self.codec = codec
        self.decrypt_every = decrypt_every
        self.context = multiprocessing.get_context("spawn")
        self.queue: Any = self.context.Queue()
        self.workers: list[Any] = []
        self.progress: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        options = {
            "procs": self.procs,
            "seconds": self.seconds,
            "ramp": 50.0,
            "stall": 10.0,
            "no_ws": False,
            "codec": self.codec,
            "decrypt_every": self.decrypt_every,
        }
        self.progress.clear()
        self.workers = [
            self.context.Process(
                target=loadgen._worker,
                args=(self.links[i :: self.procs], [self.entry], options, self.queue, i),
                daemon=True,
            )
            for i in range(self.procs)
        ]
        for worker in self.workers:
            worker.start()

    def kill(self) -> None:
        """SIGKILL every site process: their viewers vanish without a DELETE."""
        for worker in self.workers:
            worker.kill()
            worker.join(5)
        self.progress.clear()

    def poll(self) -> None:
        while True:
            try:
                kind, index, body = self.queue.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                return
            if kind == "progress":
                self.progress[index] = body

    def total(self) -> dict[str, Any]:
        parts = list(self.progress.values())
        return {
            "sites": sum(p["sites"] for p in parts),
            "joined": sum(p["joined"] for p in parts),
            "playing": sum(p["playing"] for p in parts),
            "packets": sum(p["packets"] for p in parts),
            "reconnects": sum(p["reconnects"] for p in parts),
            "not_playing": sorted(c for p in parts for c in p.get("not_playing", [])),
        }


def half_open(entry: str, links: list[loadgen.SiteLink], count: int, codec: str) -> int:
    """POST `count` WHEP offers that will never connect; returns how many were accepted.

    In a thread of its own: Playwright's sync API (the Chromium publisher) keeps an event loop
    running in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _half_open(entry, links, count, codec)).result()


async def _half_open(entry: str, links: list[loadgen.SiteLink], count: int, codec: str) -> int:
    import aiohttp

    from media.loadviewer import LoadViewer

    viewer = LoadViewer()
    await viewer.start()
    offer = viewer.offer(codec)  # answered, then nobody ever checks or handshakes
    accepted = 0
    async with aiohttp.ClientSession() as http:
        for n in range(count):
            link = links[n % len(links)]
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {link.token}"}
            async with http.post(entry + link.whep_path, data=offer, headers=headers) as reply:
                accepted += reply.status == 201
    await viewer.close()
    return accepted


# --- the run ----------------------------------------------------------------------------------
def class_links(srv: LopsoServer, codec: str) -> dict[str, Any]:
    """The demo class's links, or a new class in `codec` over the same sites."""
    if codec == "VP8":
        return srv.demo
    admin = srv.admin_token(ttl_s=86400)
    codes = [s["code"] for s in srv.demo["sites"]]
    starts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {"title": "Soak", "starts_at": starts, "video_codec": codec, "site_codes": codes}
    created = api(srv.url, admin, "/api/sessions", body)
    sid = created.get("id") or created["session"]["id"]
    return api(srv.url, admin, f"/api/sessions/{sid}/links")  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    work = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="lopso-soak-"))
    out = open(args.out, "a", encoding="utf-8") if args.out else None  # noqa: SIM115
    # every simulated site comes from this machine's one address: no per-address page cap
    # and the demo class (planned for an hour) must not end by itself mid-soak
    env = {"LOPSO_WS_PER_ADDR": "0", "LOPSO_AUTO_END_GRACE_S": "0"}
    if args.quiet_server:
        env["LOPSO_LOG_LEVEL"] = "WARNING"
    with LopsoServer(work, demo_sites=args.sites, env=env) as srv:
        if args.publisher == "ffmpeg":
            publisher: Any = FfmpegPublisher(args.kbps, seconds + 600, work / "ffmpeg.log")
        else:
            publisher = ChromiumPublisher()
        links = class_links(srv, publisher.codec)
        admin = srv.admin_token(ttl_s=seconds + 7200)
        watch = ProcWatch(srv.proc.pid)  # type: ignore[union-attr]
        publisher.start(links)
        sites = Sites(
            loadgen.links_from_json(links),
            srv.url,
            args.procs,
            seconds + 3600,
            publisher.codec,
            args.decrypt_every,
        )
        sites.start()
        return watch_class(args, srv, admin, watch, publisher, sites, links, out)


def watch_class(
    args: argparse.Namespace,
    srv: LopsoServer,
    admin: str,
    watch: ProcWatch,
    publisher: Any,
    sites: Sites,
    links: dict[str, Any],
    out: Any,
) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.minutes * 60
    storm_at = None if args.storm_at is None else started + args.storm_at * 60
    storm: dict[str, Any] = {}
    silent_since: dict[str, float] = {}
    stalls: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    baseline_rss: float | None = None
    all_joined_at: float | None = None
    next_sample = started + args.sample
    try:
        while time.monotonic() < deadline:
            time.sleep(1.0)
            sites.poll()
            now = time.monotonic()
            total = sites.total()
            in_storm = bool(storm) and "settled" not in storm
            if all_joined_at is None and total["joined"] >= args.sites:
                all_joined_at = now
            if all_joined_at is not None and not in_storm:
                for code in total["not_playing"]:
                    since = silent_since.setdefault(code, now)
                    if now - since > args.stall_limit and not any(
                        s["site"] == code and s["end"] is None for s in stalls
                    ):
                        stalls.append({"site": code, "at_s": round(since - started), "end": None})
                for code in list(silent_since):
                    if code not in total["not_playing"]:
                        for stall in stalls:
                            if stall["site"] == code and stall["end"] is None:
                                stall["end"] = round(now - started)
                        del silent_since[code]
            if storm_at is not None and now >= storm_at and not storm:
                storm = start_storm(args, srv, sites, watch, links, publisher.codec)
                silent_since.clear()
            if storm and "settled" not in storm and now - storm["at"] >= STORM_SETTLE_S:
                storm.update(settle_storm(srv, admin, watch, storm))
            if now >= next_sample:
                next_sample += args.sample
                sample = take_sample(now - started, srv, admin, watch, publisher, total)
                samples.append(sample)
                if baseline_rss is None and all_joined_at is not None:
                    baseline_rss = sample["rss_mb"]
                line = json.dumps(sample)
                print(line, file=sys.stderr, flush=True)
                if out is not None:
                    out.write(line + "\n")
                    out.flush()
    finally:
        final = scrape(srv.url, admin)
        sites.kill()
        publisher.stop()
    return summarise(args, samples, stalls, storm, baseline_rss, final)


def start_storm(
    args: argparse.Namespace,
    srv: LopsoServer,
    sites: Sites,
    watch: ProcWatch,
    links: Any,
    codec: str,
) -> dict[str, Any]:
    before = {"rss_mb": round(watch.rss_mb(), 1), "fds": watch.fds()}
    sites.kill()
    accepted = half_open(srv.url, loadgen.links_from_json(links), args.half_open, codec)
    sites.start()
    print(f"storm: sites killed, {accepted} half-open offers, sites rejoining", file=sys.stderr)
    return {"at": time.monotonic(), "before": before, "half_open_accepted": accepted}


def settle_storm(
    srv: LopsoServer, admin: str, watch: ProcWatch, storm: dict[str, Any]
) -> dict[str, Any]:
    metrics = scrape(srv.url, admin)
    return {
        "settled": True,
        "after": {
            "rss_mb": round(watch.rss_mb(), 1),
            "fds": watch.fds(),
            "viewers": int(metrics.get("lopso_viewers", -1)),
        },
    }


def take_sample(
    t: float, srv: LopsoServer, admin: str, watch: ProcWatch, publisher: Any, total: dict[str, Any]
) -> dict[str, Any]:
    metrics = scrape(srv.url, admin)
    return {
        "t_s": round(t),
        "rss_mb": round(watch.rss_mb(), 1),
        "fds": watch.fds(),
        "cpu_pct": round(watch.cpu_percent(), 1),
        "viewers": int(metrics.get("lopso_viewers", 0)),
        "packets_in": int(metrics.get("lopso_lecture_packets_in_total", 0)),
        "forwarded": int(metrics.get("lopso_fanout_copies_total", 0)),
        "fanout_drops": int(metrics.get("lopso_fanout_drops_total", 0)),
        "sites_playing": total["playing"],
        "sites_joined": total["joined"],
        "site_packets": total["packets"],
        "site_reconnects": total["reconnects"],
        **publisher.stats(),
    }


def summarise(
    args: argparse.Namespace,
    samples: list[dict[str, Any]],
    stalls: list[dict[str, Any]],
    storm: dict[str, Any],
    baseline_rss: float | None,
    final: dict[str, float],
) -> dict[str, Any]:
    rss = [s["rss_mb"] for s in samples]
    cpu = [s["cpu_pct"] for s in samples[1:]]
    problems = []
    if stalls:
        problems.append(f"{len(stalls)} site stalls longer than {args.stall_limit} s")
    if baseline_rss is None:
        problems.append("the sites never all joined")
    elif rss and max(rss) - baseline_rss > args.memory_growth_mb:
        problems.append(f"RSS grew {max(rss) - baseline_rss:.1f} MB past {baseline_rss} MB")
    if samples and not samples[-1].get("publisher_alive", True):
        problems.append("the publisher was not live at the end")
    if storm:
        after = storm.get("after")
        if after is None:
            problems.append("the storm did not settle before the end")
        else:
            if after["viewers"] != args.sites:
                problems.append(f"after the storm {after['viewers']} viewers, not {args.sites}")
            if baseline_rss is not None and after["rss_mb"] - baseline_rss > args.memory_growth_mb:
                problems.append(f"after the storm RSS {after['rss_mb']} MB")
        storm = {k: v for k, v in storm.items() if k != "at"}
    return {
        "publisher": args.publisher,
        "sites": args.sites,
        "minutes": args.minutes,
        "samples": len(samples),
        "packets_in": int(final.get("lopso_lecture_packets_in_total", 0)),
        "packets_forwarded": int(final.get("lopso_fanout_copies_total", 0)),
        "fanout_drops": int(final.get("lopso_fanout_drops_total", 0)),
        "rss_mb_baseline": baseline_rss,
        "rss_mb_max": max(rss, default=None),
        "rss_mb_end": rss[-1] if rss else None,
        "fds_start": samples[0]["fds"] if samples else None,
        "fds_end": samples[-1]["fds"] if samples else None,
        "cpu_pct_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
        "cpu_pct_max": max(cpu, default=None),
        "site_reconnects": samples[-1]["site_reconnects"] if samples else None,
        "stalls": stalls,
        "storm": storm,
        "ok": not problems,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publisher", choices=("ffmpeg", "chromium"), default="ffmpeg")
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--procs", type=int, default=2, help="site processes")
    parser.add_argument("--kbps", type=int, default=1500, help="FFmpeg clip bitrate")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--stall-limit", type=float, default=10.0)
    parser.add_argument("--memory-growth-mb", type=float, default=64.0)
    parser.add_argument("--storm-at", type=float, default=None, help="minute of a rejoin storm")
    parser.add_argument("--half-open", type=int, default=200, help="never-connecting offers")
    parser.add_argument(
        "--decrypt-every",
        type=int,
        default=1,
        help="every Nth site checks and decrypts SRTP; the others count arriving packets",
    )
    parser.add_argument("--out", help="append samples (JSON lines) to this file")
    parser.add_argument("--dir", help="work folder (default: a new temp folder)")
    parser.add_argument("--quiet-server", action="store_true", help="server logs warnings only")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the server, the sites and the publisher are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    summary = run(args)
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
