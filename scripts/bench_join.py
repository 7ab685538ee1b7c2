#!/usr/bin/env python3
"""Join storm benchmark: N viewers subscribe at once (sites rejoining after a power cut).

The server's CPU per connect — SDP parse + answer, ICE, DTLS handshake, SRTP setup — and so
connects per second per core, measured from outside on the server process (/proc/PID/stat,
all threads). Two ways in:
- `--mode direct`: a process running `media.MediaEngine`; viewers' offers reach
  `Lecture.subscribe` over a pipe (no HTTP);
- `--mode http`: a real `lopso serve` subprocess (demo class with N sites, signalling rate
  limit off); viewers POST to its WHEP route.
Viewers are `media.loadviewer.LoadViewer`s (full ICE, DTLS, SRTP, receiver reports) in one
client process; by default their offers are shaped like Chrome's (tests/chromeoffer.py: every
codec and extension a browser offers, which is what the server parses in a real storm). `--live` feeds the lecture synthetic VP8 + Opus (keyframe every second), so a
join also pays its keyframe replay; `--profile` prints the server's hottest functions during
the storm (cProfile in direct mode, py-spy in http mode) to stderr.

    python scripts/bench_join.py --viewers 500                  # direct, all at once
    python scripts/bench_join.py --viewers 500 --mode http
    python scripts/bench_join.py --viewers 1000 --live --profile

CPU per connect is given raw (server CPU during the storm / connects) and net of the cost the
connected viewers keep causing (their RTCP, consent), measured just after the storm. Then every
viewer leaves at once (DTLS close_notify) and the server's CPU for that is given per viewer.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import io
import json
import logging
import multiprocessing
import os
import pathlib
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.serverproc import LopsoServer  # noqa: E402  (the same server runner the tests use)

TICKS = os.sysconf("SC_CLK_TCK")
SIGNAL_WINDOW = 32  # offers in flight on the pipe (keeps both pipe directions under 64 KiB)


class BenchError(Exception):
    """A process of the benchmark failed or did not answer in time."""


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- pipe RPC (offers in, answers out) --------------------------------------------------------


class PipeReader:
    """Calls `handle(message)` for each message arriving on a multiprocessing Connection."""

    def __init__(self, conn: Any, handle: Any) -> None:
        self.conn = conn
        self.handle = handle
        asyncio.get_running_loop().add_reader(conn.fileno(), self._ready)

    def _ready(self) -> None:
        while self.conn.poll():
            try:
                message = self.conn.recv()
            except EOFError:
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
                return
            self.handle(message)

    def close(self) -> None:
        """Stop reading."""
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())


# -- the server side (direct mode) ------------------------------------------------------------


class LiveFeed:
    """Synthetic lecture media straight into the forwarders: Opus 50 pps, VP8 30 fps."""

    KEY = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])
    DELTA = bytes([0x10, 0x01, 0x00])
    CONT = bytes([0x00, 0x00])

    def __init__(self, lecture: Any) -> None:
        self.lecture = lecture
        self.seq = {"audio": 0, "video": 0}
        self.frame = 0
        self.task = asyncio.ensure_future(self._run())

    def _send(self, kind: str, marker: bool, ts: int, payload: bytes) -> None:
        self.seq[kind] = (self.seq[kind] + 1) & 0xFFFF
        ssrc = 1111 if kind == "audio" else 2222
        self.lecture.tracks[kind].on_rtp(ssrc, marker, self.seq[kind], ts, payload)

    async def _run(self) -> None:
        start = time.monotonic()
        audio = 0
        while True:
            await asyncio.sleep(0.01)
            elapsed = time.monotonic() - start
            while audio < elapsed * 50:
                self._send("audio", False, audio * 960, bytes(120))
                audio += 1
            while self.frame < elapsed * 30:
                key = self.frame % 30 == 0
                packets = 15 if key else 5
                ts = self.frame * 3000
                for i in range(packets):
                    head = (self.KEY if key else self.DELTA) if i == 0 else self.CONT
                    self._send("video", i == packets - 1, ts, head + bytes(1100))
                self.frame += 1


async def direct_server(ctrl: Any, sig: Any, options: dict[str, Any]) -> None:
    """Run a MediaEngine; answer offers from `sig`; obey `ctrl` (stats, profile, quit)."""
    from media.engine import MediaConfig, MediaEngine

    engine = MediaEngine(MediaConfig("127.0.0.1", 0))
    await engine.start()
    lecture = engine.lecture("storm", video_codec="VP8")
    feed = LiveFeed(lecture) if options.get("live") else None
    tasks: set[asyncio.Task[None]] = set()
    failures = collections.Counter[str]()
    profiler = cProfile.Profile()

    async def answer(rid: int, offer: str) -> None:
        try:
            text, _viewer = await lecture.subscribe(offer)
        except Exception as exc:  # reported to the client as a failed join
            failures[type(exc).__name__] += 1
            sig.send((rid, None))
            return
        sig.send((rid, text))

    def on_offer(message: tuple[int, str]) -> None:
        task = asyncio.ensure_future(answer(*message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    reader = PipeReader(sig, on_offer)
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, ctrl.recv)
        if command == "stats":
            states = collections.Counter(v.endpoint.state for v in lecture.viewers)
            ctrl.send(
                {
                    "viewers": len(lecture.viewers),
                    "states": dict(states),
                    "failures": dict(failures),
                    "dropped": engine.socket.dropped,
                }
            )
        elif command == "profile_on":
            profiler.enable()
            ctrl.send(None)
        elif command == "profile_off":
            profiler.disable()
            ctrl.send(_top_functions(profiler))
        elif command == "quit":
            reader.close()
            if feed is not None:
                feed.task.cancel()
            await engine.close()
            ctrl.send(None)
            return


def _top_functions(profiler: cProfile.Profile, count: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(count)
    stats.sort_stats("cumulative").print_stats(count)
    return out.getvalue()


# -- the viewers ------------------------------------------------------------------------------


class Clients:
    """N LoadViewers joining at once, through the pipe (direct) or WHEP over HTTP."""

    def __init__(self, sig: Any, options: dict[str, Any]) -> None:
        self.sig = sig
        self.options = options
        self.viewers: list[Any] = []
        self.pending: dict[int, asyncio.Future[str | None]] = {}
        self.window = asyncio.Semaphore(SIGNAL_WINDOW)
        self.reader = PipeReader(sig, self._on_answer) if sig is not None else None
        self.http: Any = None

    def _on_answer(self, message: tuple[int, str | None]) -> None:
        future = self.pending.pop(message[0], None)
        if future is not None and not future.done():
            future.set_result(message[1])

    async def prepare(self) -> int:
        """Open every viewer's socket (one shared DTLS identity: clients are not measured)."""
        from media.dtls import DtlsIdentity
        from media.loadviewer import LoadViewer

        identity = DtlsIdentity()
        for _ in range(self.options["viewers"]):
            viewer = LoadViewer(identity)
            await viewer.start()
            self.viewers.append(viewer)
        if self.options["mode"] == "http":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=SIGNAL_WINDOW)
            self.http = aiohttp.ClientSession(connector=connector)
        return len(self.viewers)

    def _offer(self, viewer: Any) -> str:
        own = viewer.offer()
        if self.options["offer"] != "chrome":
            return str(own)
        from tests.chromeoffer import chrome_offer

        candidate = next(line for line in own.splitlines() if line.startswith("a=candidate:"))
        host, port = candidate.split()[4:6]
        return chrome_offer(viewer.ufrag, viewer.pwd, viewer.identity.fingerprint, host, int(port))

    async def _join_direct(self, rid: int, viewer: Any) -> None:
        async with self.window:
            future = asyncio.get_running_loop().create_future()
            self.pending[rid] = future
            self.sig.send((rid, self._offer(viewer)))
            answer = await future
        if answer is None:
            raise BenchError("subscribe refused the offer")
        await viewer.connect(answer, timeout=self.options["timeout"])

    async def _join_http(self, rid: int, viewer: Any) -> None:
        link = self.options["links"][rid % len(self.options["links"])]
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {link['token']}"}
        async with self.http.post(link["whep_url"], data=self._offer(viewer), headers=headers) as r:
            answer = await r.text()
            if r.status != 201:
                raise BenchError(f"WHEP answered {r.status}: {answer[:100]}")
        await viewer.connect(answer, timeout=self.options["timeout"])

    async def storm(self) -> dict[str, Any]:
        """Every viewer joins now; returns latencies (offer sent -> DTLS/SRTP up) and failures."""
        join = self._join_http if self.options["mode"] == "http" else self._join_direct
        latencies: list[float] = []
        failures = collections.Counter[str]()

        async def one(rid: int, viewer: Any) -> None:
            began = time.monotonic()
            try:
                await join(rid, viewer)
            except Exception as exc:  # counted: a storm may refuse or time out some joins
                failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                return
            latencies.append(time.monotonic() - began)

        began = time.monotonic()
        await asyncio.gather(*(one(i, v) for i, v in enumerate(self.viewers)))
        return {
            "wall_s": time.monotonic() - began,
            "latencies": latencies,
            "failures": dict(failures),
        }

    async def close(self) -> None:
        """Close every viewer (and the HTTP session)."""
        await asyncio.gather(*(v.close() for v in self.viewers), return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        if self.reader is not None:
            self.reader.close()


async def client_main(ctrl: Any, sig: Any, options: dict[str, Any]) -> None:
    """Obey the orchestrator: prepare, storm, quit."""
    clients = Clients(sig, options)
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, ctrl.recv)
        if command == "prepare":
            ctrl.send(await clients.prepare())
        elif command == "storm":
            ctrl.send(await clients.storm())
        elif command == "leave":  # every site goes at once (DTLS close_notify)
            await clients.close()
            clients.viewers.clear()
            ctrl.send(None)
        elif command == "quit":
            await clients.close()
            ctrl.send(None)
            return


def _child(role: str, ctrl: Any, sig: Any, options: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT))
    main = direct_server if role == "server" else client_main
    runner = asyncio.run
    if options.get("uvloop"):
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    runner(main(ctrl, sig, options))


class Child:
    """The orchestrator's handle on one child process (commands over a pipe)."""

    def __init__(self, role: str, sig: Any, options: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_child, args=(role, child, sig, options), name=role)
        self.process.start()
        self.role = role

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.process.pid is not None
        return self.process.pid

    async def call(self, command: str, timeout: float = 120.0) -> Any:
        """Send a command, wait for its result."""
        loop = asyncio.get_running_loop()
        self.conn.send(command)
        if not await loop.run_in_executor(None, self.conn.poll, timeout):
            raise BenchError(f"{self.role} did not answer {command!r} within {timeout} s")
        return self.conn.recv()

    async def stop(self) -> None:
        """Ask it to quit; kill it if it does not."""
        with contextlib.suppress(BenchError, OSError, EOFError):
            if self.process.is_alive():
                await self.call("quit", timeout=30)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


# -- http mode: a real `lopso serve` ----------------------------------------------------------


def py_spy_top(pid: int, seconds: float, out: pathlib.Path) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record` on the server for the storm (raw collapsed stacks)."""
    try:
        return subprocess.Popen(
            [
                "py-spy",
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, int(seconds))),
                "-r",
                "100",
                "--gil",  # only the thread holding the GIL: Python CPU, not idle waits
                "--format",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def summarize_raw_stacks(path: pathlib.Path, count: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]  # per function
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples; self:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(count)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(count)]
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """One storm: start the server and the clients, measure, stop everything."""
    options: dict[str, Any] = {
        "viewers": args.viewers,
        "mode": args.mode,
        "live": args.live,
        "timeout": args.timeout,
        "uvloop": args.uvloop,
        "offer": args.offer,
    }
    tmp = tempfile.TemporaryDirectory(prefix="bench-join-")
    children: list[Child] = []
    serve: LopsoServer | None = None
    try:
        if args.mode == "direct":
            ctx = multiprocessing.get_context("spawn")
            server_end, client_end = ctx.Pipe()
            server = Child("server", server_end, options)
            children.append(server)
            server_pid = server.pid
        else:
            serve = LopsoServer(
                pathlib.Path(tmp.name),
                demo_sites=args.viewers,
                env={"LOPSO_SIGNALLING_RATE": "0", "LOPSO_LOG_LEVEL": "WARNING"},
                startup_timeout_s=60.0,
            )
            await asyncio.to_thread(serve.start)
            options["links"] = [
                {"whep_url": s["whep_url"], "token": s["token"]} for s in serve.demo["sites"]
            ]
            client_end, server_pid = None, serve.proc.pid
        clients = Child("clients", client_end, options)
        children.append(clients)
        await clients.call("prepare")
        await asyncio.sleep(1.0)
        idle_before = process_cpu(server_pid)
        await asyncio.sleep(1.0)
        idle_before = process_cpu(server_pid) - idle_before
        spy_file = pathlib.Path(tmp.name) / "spy.txt"
        spy = None
        if args.profile and args.mode == "direct":
            await children[0].call("profile_on")
        elif args.profile:
            spy = py_spy_top(server_pid, args.timeout, spy_file)
            await asyncio.sleep(1.0)  # py-spy attaches
        cpu0, t0 = process_cpu(server_pid), time.monotonic()
        storm = await clients.call("storm", timeout=args.timeout + 60)
        cpu1, t1 = process_cpu(server_pid), time.monotonic()
        profile = None
        if args.profile and args.mode == "direct":
            profile = await children[0].call("profile_off")
        elif spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
            profile = summarize_raw_stacks(spy_file) if spy_file.exists() else "py-spy failed"
        await asyncio.sleep(args.settle)
        cpu2, t2 = process_cpu(server_pid), time.monotonic()
        server_stats = await children[0].call("stats") if args.mode == "direct" else None
        await clients.call("leave")
        await asyncio.sleep(2.0)
        leave_cpu = process_cpu(server_pid) - cpu2
        after_leave = await children[0].call("stats") if args.mode == "direct" else None
        if profile:
            print(profile, file=sys.stderr)
    finally:
        for child in reversed(children):
            await child.stop()
        if serve is not None:
            serve.stop()
        tmp.cleanup()
    connected = len(storm["latencies"])
    storm_cpu, storm_wall = cpu1 - cpu0, t1 - t0
    steady_rate = (cpu2 - cpu1) / (t2 - t1)
    net_cpu = max(1e-9, storm_cpu - steady_rate * storm_wall / 2)  # viewers join over the storm
    lat = storm["latencies"]
    return {
        "bench": "join",
        "mode": args.mode,
        "live": args.live,
        "offer": args.offer,
        "viewers": args.viewers,
        "connected": connected,
        "failed": args.viewers - connected,
        "failures": storm["failures"],
        "storm_wall_s": round(storm_wall, 3),
        "server_cpu_s": round(storm_cpu, 3),
        "server_idle_cpu_per_s_before": round(idle_before, 4),
        "server_steady_cpu_per_s_after": round(steady_rate, 4),
        "cpu_ms_per_connect": round(1000 * storm_cpu / max(1, connected), 3),
        "cpu_ms_per_connect_net": round(1000 * net_cpu / max(1, connected), 3),
        "connects_per_core_s": round(connected / net_cpu, 1),
        "connects_per_s_wall": round(connected / storm_wall, 1),
        "latency_p50_s": _round(_percentile(lat, 0.5)),
        "latency_p95_s": _round(_percentile(lat, 0.95)),
        "latency_max_s": _round(max(lat) if lat else None),
        "latency_mean_s": _round(statistics.fmean(lat) if lat else None),
        "server": server_stats,
        "leave_cpu_ms_per_viewer": round(1000 * leave_cpu / max(1, connected), 3),
        "server_after_leave": after_leave,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one storm, print the JSON result last."""
    parser = argparse.ArgumentParser(description="join storm: server CPU per WHEP connect")
    parser.add_argument("--viewers", type=int, default=300)
    parser.add_argument("--mode", choices=("direct", "http"), default="direct")
    parser.add_argument(
        "--offer",
        choices=("chrome", "loadviewer"),
        default="chrome",
        help="a Chrome-shaped offer (160 lines) or LoadViewer's minimal one",
    )
    parser.add_argument("--live", action="store_true", help="feed synthetic media (replays)")
    parser.add_argument("--profile", action="store_true", help="hottest server functions")
    parser.add_argument("--timeout", type=float, default=60.0, help="per join, seconds")
    parser.add_argument("--settle", type=float, default=3.0, help="steady window after, s")
    parser.add_argument("--uvloop", action="store_true", help="server and clients on uvloop")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0 if result["connected"] else 1


if __name__ == "__main__":
    sys.exit(main())
