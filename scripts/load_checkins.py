#!/usr/bin/env python3
"""Check-in load: many participants checking in at thousands of sites through the HTTP API.

By default it starts its own `lopso serve` (a temp data dir, check-in rate limits off) and,
through the REST API with an admin token, registers `--sites` sites and a class expecting them.
With `--url URL --admin-token T` it does the same against a running deployment (a new class
with its own site codes each run, so earlier runs never count).

Then it sends `--checkins` check-ins spread round-robin over the sites with `--concurrency`
requests in flight on keep-alive connections; `--dup-share` of them resend a person already
checked in (the server must answer 200 duplicate). Finally it reads the ledger back through
the attendance JSON export and counts the class's stored check-ins.

    python scripts/load_checkins.py --quick             # 20,000 check-ins, 5,000 sites, < 60 s
    python scripts/load_checkins.py                     # 250,000 check-ins over 5,000 sites
    python scripts/load_checkins.py --url http://127.0.0.1:8080 --admin-token "$(lopso token --role admin)"
    python scripts/load_checkins.py --quick --profile   # py-spy the server, top functions at the end

A live progress line goes to stderr. The last line on stdout is JSON: accepted (201), stored
(check-ins in the ledger), duplicates (200), errors (with `error_kinds`), per_second, p50_ms,
p99_ms, checkins, sites; with its own server also the server's CPU time per check-in,
`stored_export` (the export's count) and `ids_match` (the stored check-ins are exactly the
answered ones, by event id: `stored` is then read from the store files after the server
stopped). Exit status 1 when stored != accepted (or the ids differ).

Against a remote server the per-address limit (LOPSO_CHECKIN_RATE_ADDR) applies; on loopback
`--spread N` binds the client to N source addresses 127.0.0.2... (all of 127.0.0.0/8 is local
on Linux) to stay under it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.serverproc import LopsoServer  # noqa: E402  (the same server runner the tests use)

SURNAMES = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô")
MIDDLES = ("Văn", "Thị", "Đức", "Minh", "Hữu", "Ngọc", "Quang", "Thu")


class LoadError(Exception):
    """The load run could not be set up (server down, API refused the setup)."""


# --- the server ------------------------------------------------------------------------------


# --- class setup through the REST API --------------------------------------------------------


def sites_csv(prefix: str, count: int) -> bytes:
    """A registry CSV of `count` sites over 104 communes."""
    rows = ["code,name,village,commune,province"]
    for i in range(count):
        rows.append(
            f"{prefix}-{i:05d},Nhà văn hóa thôn {i + 1},Thôn {i + 1},Xã {i % 104 + 1},Hưng Yên"
        )
    return ("\n".join(rows) + "\n").encode("utf-8")


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, **kwargs: Any
) -> Any:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as reply:
        body = await reply.read()
        if reply.status >= 300:
            raise LoadError(f"{method} {url} -> {reply.status}: {body[:500]!r}")
        return json.loads(body)


async def setup_class(url: str, admin: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    """Register `count` fresh sites and a class expecting them; return (class id, [(code, token)])."""
    run = f"LD{random.randrange(36**5):05X}"
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await _call(
            http,
            "POST",
            f"{url}/api/sites/import",
            admin,
            data=sites_csv(run, count),
            headers={"Content-Type": "text/csv"},
        )
        now = time.time()
        body = {
            "id": f"load-{run.lower()}",
            "title": "Tải điểm danh (load test)",
            "starts_at": now - 60,
            "ends_at": now + 3 * 3600,
            "site_codes": [f"{run}-{i:05d}" for i in range(count)],
        }
        session = await _call(http, "POST", f"{url}/api/sessions", admin, json=body)
        links = await _call(http, "GET", f"{url}/api/sessions/{session['id']}/links", admin)
    return session["id"], [(s["code"], s["token"]) for s in links["sites"]]


async def stored_checkins(url: str, sid: str, admin: str) -> int:
    """Check-ins of the class in the ledger, as the attendance JSON export counts them."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        report = await _call(http, "GET", f"{url}/api/sessions/{sid}/attendance", admin)
    return int(sum(site["checkins"] for site in report["sites"]))


# --- the load ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Person:
    """One check-in request: who, at which site (index into the site list)."""

    site: int
    name: str
    ident: str | None


def plan(checkins: int, sites: int, dup_share: float, seed: int = 1) -> Iterator[Person]:
    """`checkins` requests round-robin over the sites; a `dup_share` of them repeat an earlier
    person (same site, name and identifier). Half the people give an identifier."""
    rng = random.Random(seed)
    people: list[Person] = []
    for _ in range(checkins):
        if people and rng.random() < dup_share:
            yield rng.choice(people)
            continue
        n = len(people)
        name = f"{SURNAMES[n % 10]} {MIDDLES[n // 10 % 8]} Người {n}"
        person = Person(n % sites, name, f"LS{n:08d}" if n % 2 else None)
        people.append(person)
        yield person


@dataclasses.dataclass
class Tally:
    """What the server answered, and how long each answer took."""

    accepted: int = 0
    duplicates: int = 0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    latencies: list[float] = dataclasses.field(default_factory=list)
    event_ids: set[str] = dataclasses.field(default_factory=set)

    @property
    def done(self) -> int:
        return self.accepted + self.duplicates + sum(self.errors.values())

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def check_in(
    http: aiohttp.ClientSession, url: str, token: str, person: Person, tally: Tally
) -> None:
    """One check-in; records its outcome and latency."""
    body: dict[str, Any] = {"name": person.name}
    if person.ident:
        body["ident"] = person.ident
    started = time.perf_counter()
    try:
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as reply:
            data = await reply.read()
            status = reply.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.errors[type(exc).__name__] += 1
        return
    tally.latencies.append(time.perf_counter() - started)
    if status == 201:
        tally.accepted += 1
        tally.event_ids.add(json.loads(data)["event_id"])
    elif status == 200:
        tally.duplicates += 1
    else:
        tally.errors[str(status)] += 1


@contextlib.asynccontextmanager
async def client_sessions(
    spread: int, concurrency: int
) -> AsyncIterator[list[aiohttp.ClientSession]]:
    """Keep-alive client sessions, one per source address (127.0.0.2, ...) when spreading."""
    timeout = aiohttp.ClientTimeout(total=60)
    count = max(1, spread)
    per = max(1, concurrency // count + 1)
    sessions = []
    for k in range(count):
        local = (f"127.0.{(k + 2) // 256}.{(k + 2) % 256}", 0) if spread else None
        connector = aiohttp.TCPConnector(limit=per, local_addr=local)
        sessions.append(aiohttp.ClientSession(connector=connector, timeout=timeout))
    try:
        yield sessions
    finally:
        for session in sessions:
            await session.close()


async def run_load(
    url: str, sid: str, sites: list[tuple[str, str]], args: argparse.Namespace, tally: Tally
) -> float:
    """Send the planned check-ins; return the elapsed seconds."""
    people = plan(args.checkins, len(sites), args.dup_share)
    targets = [(f"{url}/api/sessions/{sid}/sites/{code}/checkins", token) for code, token in sites]
    async with client_sessions(args.spread, args.concurrency) as sessions:
        turns = itertools.count()

        async def worker(index: int) -> None:
            for person in people:  # a shared iterator: each person is taken once
                target, token = targets[person.site]
                # source addresses in turn, so each carries an equal share of the rate
                http = sessions[next(turns) % len(sessions)]
                await check_in(http, target, token, person, tally)

        started = time.perf_counter()
        progress = asyncio.create_task(report_progress(tally, args.checkins, started))
        try:
            await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        elapsed = time.perf_counter() - started
    print(progress_line(tally, args.checkins, elapsed), file=sys.stderr)
    return elapsed


def progress_line(tally: Tally, total: int, elapsed: float) -> str:
    rate = tally.done / elapsed if elapsed > 0 else 0.0
    return (
        f"{tally.done}/{total} accepted {tally.accepted} duplicates {tally.duplicates} "
        f"errors {sum(tally.errors.values())}  {rate:,.0f}/s  {elapsed:.1f}s"
    )


async def report_progress(tally: Tally, total: int, started: float) -> None:
    """A live progress line on stderr, once a second."""
    while True:
        await asyncio.sleep(1.0)
        line = progress_line(tally, total, time.perf_counter() - started)
        print(f"\r{line}   ", end="", file=sys.stderr, flush=True)


# --- profiling -------------------------------------------------------------------------------


class Profiler:
    """py-spy recording the server process while the load runs (`--profile`)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            raise LoadError("--profile needs py-spy (pip install py-spy)")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--gil",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def summary(self, top: int = 25) -> str:
        """Functions by share of samples where they are on the stack (inclusive) and on top."""
        if not self.out.exists():
            return "no profile written"
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        total = 0
        for line in self.out.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [
                f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                for f in stack.split(";")
                if f
            ]
            total += count
            for frame in set(frames):
                inclusive[frame] += count
            if frames:
                own[frames[-1]] += count
        lines = [
            f"py-spy --gil: {total} samples of the server holding the GIL (its Python CPU time)",
            "inclusive % / self % / function",
        ]
        for frame, count in inclusive.most_common(top):
            lines.append(f"{100 * count / total:5.1f} {100 * own[frame] / total:5.1f}  {frame}")
        lines.append("top by self time:")
        for frame, count in own.most_common(top):
            lines.append(f"{100 * count / total:5.1f}  {frame}")
        return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running deployment (default: start lopso serve)")
    parser.add_argument("--admin-token", help="admin token for --url (lopso token --role admin)")
    parser.add_argument("--checkins", type=int, default=250_000)
    parser.add_argument("--sites", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--dup-share",
        type=float,
        default=0.05,
        help="share of requests that repeat an earlier person",
    )
    parser.add_argument(
        "--spread",
        type=int,
        default=0,
        help="bind to this many loopback source addresses (per-address limit)",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 check-ins (under 60 s)")
    parser.add_argument("--profile", action="store_true", help="py-spy the server (own server)")
    parser.add_argument(
        "--profile-top", type=int, default=25, help="functions listed by the profile summary"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.checkins = min(args.checkins, 20_000)
    if args.url and not args.admin_token:
        parser.error("--url needs --admin-token")
    if args.checkins < 1 or args.sites < 1 or args.concurrency < 1:
        parser.error("--checkins, --sites and --concurrency must be positive")
    return args


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str,
    admin: str,
    args: argparse.Namespace,
    server_pid: int | None = None,
    profiler: Profiler | None = None,
) -> tuple[dict[str, Any], Tally]:
    """Set up the class, run the load, read the ledger back (the attendance JSON export);
    the result as a dict, and the tally of answers.

    With the server's pid, also the server's CPU time per check-in during the load (a figure
    that holds on a busy machine, where wall-clock rates depend on the neighbours)."""
    started = time.perf_counter()
    sid, sites = await setup_class(url, admin, args.sites)
    print(
        f"class {sid}: {len(sites)} sites ready in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    tally = Tally()
    if profiler is not None:
        profiler.start()
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    try:
        elapsed = await run_load(url, sid, sites, args, tally)
    finally:
        cpu_used = cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
        if profiler is not None:
            profiler.stop()
    try:
        stored: int | None = await stored_checkins(url, sid, admin)
        export_error = None
    except (LoadError, aiohttp.ClientError, TimeoutError) as exc:
        stored, export_error = None, str(exc)[:300]
        print(f"reading the attendance export failed: {export_error}", file=sys.stderr)
    extra: dict[str, Any] = {"export_error": export_error} if export_error else {}
    if server_pid:
        extra = {
            **extra,
            "server_cpu_s": round(cpu_used, 2),
            "server_cpu_us_per_checkin": round(1e6 * cpu_used / max(1, tally.done), 1),
        }
    return {
        "accepted": tally.accepted,
        "stored": stored,
        "duplicates": tally.duplicates,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "per_second": round(tally.done / elapsed, 1),
        "p50_ms": round(tally.percentile(0.50), 2),
        "p99_ms": round(tally.percentile(0.99), 2),
        "checkins": args.checkins,
        "sites": len(sites),
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "unique_event_ids": len(tally.event_ids),
        "session_id": sid,
        **extra,
    }, tally


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.url:
        result, _ = asyncio.run(measure(args.url.rstrip("/"), args.admin_token, args))
    else:
        result = run_own_server(args)
    print(json.dumps(result, ensure_ascii=False))
    ok = result["stored"] == result["accepted"] and result.get("ids_match", True)
    return 0 if ok else 1


def run_own_server(args: argparse.Namespace) -> dict[str, Any]:
    """The load against a `lopso serve` started here (and stopped, whatever happens).

    After the server stops, the ledger is also read straight from its store: `stored` is that
    count, `stored_export` what the attendance export said, `ids_match` whether the stored
    check-ins are exactly the ones answered 201 (by event id)."""
    with tempfile.TemporaryDirectory(prefix="lopso-load-") as tmp:
        server = LopsoServer(
            Path(tmp),
            demo_sites=0,
            env={
                "LOPSO_CHECKIN_RATE_SITE": "0",
                "LOPSO_CHECKIN_RATE_ADDR": "0",
                "LOPSO_LOG_LEVEL": "WARNING",
            },
        )
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        profiler = Profiler(pid, Path(tmp) / "profile.txt") if args.profile else None
        try:
            result, tally = asyncio.run(
                measure(server.url, server.admin_token(), args, pid, profiler)
            )
            if profiler is not None:
                print(profiler.summary(args.profile_top), file=sys.stderr)
        except BaseException:
            print(f"server log (tail):\n{server.log()[-4000:]}", file=sys.stderr)
            raise
        finally:
            server.stop()
        if "export_error" in result:
            print(f"server log (tail):\n{server.log()[-4000:]}", file=sys.stderr)
        ids = asyncio.run(ledger_checkin_ids(Path(tmp) / "data", result["session_id"]))
    result["stored_export"] = result["stored"]
    result["stored"] = len(ids)
    result["ids_match"] = ids == tally.event_ids
    return result


async def ledger_checkin_ids(data_dir: Path, sid: str) -> set[str]:
    """Ids of the class's CHECKIN events in an embedded store's files (server stopped)."""
    from server.models import EventKind
    from server.store.embedded import EmbeddedStore

    async with EmbeddedStore(data_dir, "load-verifier") as store:
        events = await store.events(sid, kinds=[EventKind.CHECKIN])
    ids = {event.id for event in events}
    if len(ids) != len(events):
        raise LoadError(f"{len(events) - len(ids)} check-in event ids stored twice")
    return ids


if __name__ == "__main__":
    sys.exit(main())
