#!/usr/bin/env python3
"""Simulated sites against any LopSo deployment: WHEP viewers that do not decode, plus the
site page's WebSocket, spread over several processes.

Each simulated site does what a site page does: POST its WHEP offer (through any node; the
cluster places it on an edge), connect (media/loadviewer.py: ICE, DTLS, SRTP, receiver
reports), open its WebSocket to the node serving it, say `playing` once media flows, heartbeat,
and start over (re-POST WHEP, through the next node if one is down) when its WebSocket closes
or, with --stall, when media stops for that long while the class is live.

    python scripts/loadgen.py --demo-json data/demo.json --sites 200 --procs 2 --seconds 60
    python scripts/loadgen.py --url https://lopso.example --token <admin or moderator token> \\
        --class demo-1234 --sites 1000 --procs 4 --ramp 50

A progress line is rewritten on stderr every second; the last line on stdout is one JSON object:
join latency percentiles (POST → first RTP packet), packets and loss per site, how many sites
are playing (a packet in the last 2 s) at the end.

Every simulated site comes from this machine's address: a server under test must allow that
many pages from one address (`LOPSO_WS_PER_ADDR=0`, or at least --sites).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger("loadgen")

HEARTBEAT_S = 10.0
PLAYING_WINDOW_S = 2.0


@dataclass(frozen=True)
class SiteLink:
    """What a site needs to join: its class, code and token, and the path of its WHEP URL."""

    sid: str
    code: str
    token: str
    whep_path: str  # "/whep/<sid>/<code>"


@dataclass
class SiteReport:
    code: str
    state: str
    node: str
    joins: int
    join_latency_s: list[float]
    packets: int
    lost: int
    reconnects: int
    playing: bool
    errors: list[str] = field(default_factory=list)


class SimSite:
    """One simulated site: a LoadViewer for media and a WebSocket for presence."""

    def __init__(
        self,
        link: SiteLink,
        entries: list[str],
        http: aiohttp.ClientSession,
        *,
        identity: Any = None,
        websocket: bool = True,
        stall_s: float | None = None,
        codec: str = "VP8",
        decrypt: bool = True,
        first_entry: int = 0,
    ) -> None:
        self.link = link
        self.entries = [e.rstrip("/") for e in entries]
        self.http = http
        self.identity = identity
        self.websocket = websocket
        self.stall_s = stall_s
        self.codec = codec
        self.decrypt = decrypt  # False: count arriving SRTP without checking it (cheaper)
        self.first_entry = first_entry % len(self.entries)
        self.state = "new"
        self.node_url = ""
        self.node_id = ""
        self.joins = 0
        self.join_latency_s: list[float] = []
        self.reconnects = 0
        self.last_packet = 0.0
        self.live = False
        self.errors: list[str] = []
        self._packets_before = 0
        self._lost_before = 0
        self._viewer: Any = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._trouble = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._joined_at = 0.0  # when the current join began, until its first packet
        self._connected_at = 0.0  # when the current connection was made
        self._stopped = False

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._teardown()
        self.state = "stopped"

    def playing(self, window: float = PLAYING_WINDOW_S) -> bool:
        return self.last_packet > 0 and time.monotonic() - self.last_packet < window

    @property
    def packets(self) -> int:
        viewer = self._viewer
        return self._packets_before + (viewer.counters.packets if viewer else 0)

    @property
    def lost(self) -> int:
        viewer = self._viewer
        return self._lost_before + (viewer.stats()["lost"] if viewer else 0)

    def report(self) -> SiteReport:
        return SiteReport(
            self.link.code,
            self.state,
            self.node_id,
            self.joins,
            list(self.join_latency_s),
            self.packets,
            self.lost,
            self.reconnects,
            self.playing(),
            self.errors[-3:],
        )

    async def _run(self) -> None:
        delay = 0.3
        while not self._stopped:
            try:
                await self._join()
                delay = 0.3
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.append(repr(exc)[:200])
            await self._teardown()
            if self._stopped:
                return
            self.state, self.reconnects = "reconnecting", self.reconnects + 1
            await asyncio.sleep(delay * random.uniform(0.7, 1.3))
            delay = min(2 * delay, 3.0)

    # joining --------------------------------------------------------------------------------
    async def _join(self) -> None:
        from media.loadviewer import LoadViewer

        self.state = "joining"
        self._trouble.clear()
        viewer = LoadViewer(self.identity, decrypt=self.decrypt)
        self._viewer = viewer
        viewer.on_rtp = self._on_rtp
        await viewer.start()
        started = time.monotonic()
        answer, node_url = await self._post(viewer.offer(self.codec))
        await viewer.connect(answer)
        self.node_url, self._joined_at = node_url, started
        self._connected_at = time.monotonic()
        self.joins += 1
        if self.websocket:
            await self._open_ws()
        self.state = "connected"

    async def _post(self, offer: str) -> tuple[str, str]:
        """POST the offer through the first entry that answers; (answer, serving node URL)."""
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.link.token}"}
        order = self.entries[self.first_entry :] + self.entries[: self.first_entry]
        last: Exception | None = None
        for entry in order:
            try:
                async with self.http.post(
                    entry + self.link.whep_path, data=offer, headers=headers
                ) as reply:
                    body = await reply.text()
                    if reply.status != 201:
                        raise RuntimeError(f"WHEP {entry} answered {reply.status}: {body[:200]}")
                    self.node_id = reply.headers.get("X-Lopso-Node", entry)
                    return body, reply.headers.get("X-Lopso-Node-Url", entry)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
        raise RuntimeError(f"no entry node answered: {last!r}")

    async def _open_ws(self) -> None:
        url = f"{self.node_url}/ws/{self.link.sid}"
        self._ws = await self.http.ws_connect(
            url,
            params={"token": self.link.token},
            heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(10),
        )
        asyncio.get_running_loop().create_task(self._read_ws(self._ws))

    async def _read_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data.get("type") == "welcome":
                        self.live = bool(data.get("live"))
                    elif data.get("type") == "live":
                        self.live = bool(data.get("live"))
                    elif data.get("type") == "command" and data.get("action") == "reconnect":
                        break
        except (aiohttp.ClientError, ValueError):
            pass
        if ws is self._ws:
            self._trouble.set()

    def _on_rtp(self, _data: bytes) -> None:
        now = time.monotonic()
        if self.state == "connected" and self._joined_at:
            self.join_latency_s.append(now - self._joined_at)
            self._joined_at = 0.0
            self.state = "playing"
            self._send({"type": "status", "state": "playing"})
        self.last_packet = now

    def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            task = asyncio.get_running_loop().create_task(ws.send_json(message))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    # watching -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Return when the site must start over: WebSocket closed, or media stalled (--stall)."""
        next_beat = time.monotonic() + HEARTBEAT_S
        while not self._trouble.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trouble.wait(), 0.5)
            now = time.monotonic()
            if now >= next_beat:
                self._send({"type": "heartbeat"})
                next_beat = now + HEARTBEAT_S
            quiet_since = max(self.last_packet, self._connected_at)
            if self.stall_s and self.live and now - quiet_since > self.stall_s:
                raise RuntimeError("media stalled")

    async def _teardown(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        viewer, self._viewer = self._viewer, None
        if viewer is not None:
            self._packets_before += viewer.counters.packets
            self._lost_before += viewer.stats()["lost"]
            with contextlib.suppress(Exception):
                await viewer.close()


# --- links -----------------------------------------------------------------------------------
def links_from_json(data: dict[str, Any]) -> list[SiteLink]:
    """Site links from a `--demo-json` file or the links API (same shape)."""
    sid = data["session_id"]
    links = []
    for site in data["sites"]:
        path = "/" + site["whep_url"].split("://", 1)[-1].split("/", 1)[1]
        links.append(SiteLink(sid, site["code"], site["token"], path))
    return links


async def fetch_links(url: str, token: str, sid: str) -> list[SiteLink]:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{url.rstrip('/')}/api/sessions/{sid}/links",
            headers={"Authorization": f"Bearer {token}"},
        ) as reply:
            reply.raise_for_status()
            return links_from_json(await reply.json())


# --- one worker process ----------------------------------------------------------------------
def _worker(
    links: list[SiteLink], entries: list[str], options: dict[str, Any], out: Any, index: int
) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop  # noqa: F401

        runner = uvloop.run  # type: ignore[attr-defined]
    except ImportError:
        runner = asyncio.run
    runner(_work(links, entries, options, out, index))


async def _work(
    links: list[SiteLink], entries: list[str], options: dict[str, Any], out: Any, index: int
) -> None:
    from media.dtls import DtlsIdentity

    identity = DtlsIdentity()  # one certificate per process: generating one per site is slow
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sites = []
        ramp = options["ramp"] / options["procs"]
        for n, link in enumerate(links):
            site = SimSite(
                link,
                entries,
                http,
                identity=identity,
                stall_s=options["stall"],
                websocket=not options["no_ws"],
                codec=options.get("codec", "VP8"),
                decrypt=n % options.get("decrypt_every", 1) == 0,
                first_entry=index + n,
            )
            site.start()
            sites.append(site)
            if ramp > 0:
                await asyncio.sleep(1 / ramp)
        deadline = time.monotonic() + options["seconds"]
        while time.monotonic() < deadline:
            out.put(("progress", index, _summary(sites)))
            await asyncio.sleep(1.0)
        out.put(("done", index, [vars(s.report()) for s in sites]))
        for site in sites:
            await site.stop()


def _summary(sites: list[SimSite]) -> dict[str, Any]:
    return {
        "not_playing": [s.link.code for s in sites if not s.playing()],
        "sites": len(sites),
        "playing": sum(s.playing() for s in sites),
        "joined": sum(s.joins > 0 for s in sites),
        "packets": sum(s.packets for s in sites),
        "reconnects": sum(s.reconnects for s in sites),
    }


# --- the orchestrator -----------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def final_report(reports: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    first_joins = [r["join_latency_s"][0] for r in reports if r["join_latency_s"]]
    packets = [r["packets"] for r in reports]
    losses = [r["lost"] / max(1, r["lost"] + r["packets"]) for r in reports]
    nodes: dict[str, int] = {}
    for r in reports:
        nodes[r["node"]] = nodes.get(r["node"], 0) + 1
    ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
    return {
        "sites": len(reports),
        "playing": sum(r["playing"] for r in reports),
        "joined": sum(r["joins"] > 0 for r in reports),
        "seconds": seconds,
        "join_ms_p50": ms(percentile(first_joins, 50)),
        "join_ms_p90": ms(percentile(first_joins, 90)),
        "join_ms_p99": ms(percentile(first_joins, 99)),
        "packets_per_site_mean": round(statistics.fmean(packets), 1) if packets else 0,
        "packets_per_site_min": min(packets, default=0),
        "loss_pct_mean": round(100 * statistics.fmean(losses), 3) if losses else 0.0,
        "loss_pct_max": round(100 * max(losses, default=0.0), 3),
        "reconnects": sum(r["reconnects"] for r in reports),
        "sites_per_node": nodes,
        "per_site": [
            {k: r[k] for k in ("code", "node", "packets", "lost", "reconnects", "playing")}
            for r in reports
        ],
    }


def run(links: list[SiteLink], entries: list[str], options: dict[str, Any]) -> dict[str, Any]:
    procs = max(1, min(options["procs"], len(links)))
    options = {**options, "procs": procs}
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    shares = [links[i::procs] for i in range(procs)]
    workers = [
        context.Process(target=_worker, args=(share, entries, options, out, i), daemon=True)
        for i, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    progress: dict[int, dict[str, Any]] = {}
    reports: list[dict[str, Any]] = []
    done, started = 0, time.monotonic()
    deadline = started + options["seconds"] + 60 + len(links) / max(options["ramp"], 1)
    while done < procs and time.monotonic() < deadline:
        try:
            kind, index, body = out.get(timeout=1.0)
        except Exception:
            if not any(w.is_alive() for w in workers):
                break
            continue
        if kind == "progress":
            progress[index] = body
            total = {k: sum(p[k] for p in progress.values()) for k in body if k != "not_playing"}
            print(
                f"\r[{time.monotonic() - started:5.0f}s] sites {total['sites']} joined "
                f"{total['joined']} playing {total['playing']} packets {total['packets']} "
                f"reconnects {total['reconnects']}   ",
                end="",
                file=sys.stderr,
                flush=True,
            )
        else:
            reports.extend(body)
            done += 1
    print(file=sys.stderr)
    for worker in workers:
        worker.join(10)
        if worker.is_alive():
            worker.kill()
    return final_report(reports, options["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="entry node(s), comma-separated (default: from the links)")
    parser.add_argument("--demo-json", help="a `lopso serve --demo-json` file")
    parser.add_argument("--token", help="admin or moderator token (with --class)")
    parser.add_argument("--class", dest="sid", help="class id (with --token)")
    parser.add_argument("--sites", type=int, default=0, help="how many sites (default: all)")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--ramp", type=float, default=50.0, help="new sites per second (0 = all)")
    parser.add_argument("--stall", type=float, default=None, help="restart after N s without media")
    parser.add_argument("--no-ws", action="store_true", help="media only, no WebSocket")
    args = parser.parse_args(argv)
    if args.demo_json:
        with open(args.demo_json, encoding="utf-8") as handle:
            demo = json.load(handle)
        links = links_from_json(demo)
        default_entry = demo["sites"][0]["whep_url"].split("/whep/")[0]
    elif args.token and args.sid and args.url:
        links = asyncio.run(fetch_links(args.url.split(",")[0], args.token, args.sid))
        default_entry = args.url.split(",")[0]
    else:
        parser.error("give --demo-json, or --url with --token and --class")
    entries = [u.strip() for u in (args.url or default_entry).split(",") if u.strip()]
    if args.sites:
        links = (links * (args.sites // max(1, len(links)) + 1))[: args.sites]
    options = {
        "procs": args.procs,
        "seconds": args.seconds,
        "ramp": args.ramp,
        "stall": args.stall,
        "no_ws": args.no_ws,
    }
    result = run(links, entries, options)
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result["playing"] else 1


if __name__ == "__main__":
    sys.exit(main())
