#!/usr/bin/env python3
"""The cluster benchmark of issue 4: one lecture through an origin and 1, then 2, edge processes.

For each edge count: a private redis-server, an origin and the edges as `lopso serve --role`
processes; a publisher (aiortc playing a pre-encoded VP8 ~1.5 Mbit/s + Opus clip, no
decoding) through WHIP to the origin; `--viewers` non-decoding viewers (media/loadviewer.py,
in `--procs` processes) entering through the origin's WHEP, which places them on the edges.
Over a steady window it reads each edge's CPU time (/proc/<pid>/stat, all threads) and the
packets its viewers received, giving CPU-µs per forwarded packet and the viewers one edge
process would carry at one full core. Scaling efficiency = per-edge capacity with 2 edges /
per-edge capacity with 1 edge (1.0 = edges add capacity linearly).

Relay hop latency: one viewer on the origin (a relay subscribe) and one on an edge, in this
process; each video packet (matched by its payload, which forwarding leaves untouched) is
timed at both, so edge - origin = the relay link's added latency (link + edge fan-out).

    python scripts/bench_cluster.py --quick          # 40 viewers, 8 s windows
    python scripts/bench_cluster.py --viewers 200 --seconds 20

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import importlib.util
import json
import logging
import multiprocessing
import os
import pathlib
import statistics
import struct
import sys
import tempfile
import time
from typing import Any, NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TICK = os.sysconf("SC_CLK_TCK")
VIDEO_PT = 96  # what LoadViewer offers for VP8


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"lopso_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_queue(pid: int) -> tuple[float, int]:
    """(seconds spent runnable but waiting for a CPU, times scheduled) of a process's main
    thread (its event loop), from /proc/<pid>/schedstat."""
    _on_cpu, waited_ns, slices = pathlib.Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
    return int(waited_ns) / 1e9, int(slices)


def waits(before: tuple[float, int], after: tuple[float, int], elapsed: float) -> dict[str, float]:
    """A loop's run-queue wait over a window: ms per second, and mean ms per wake-up."""
    waited, slices = after[0] - before[0], after[1] - before[1]
    return {
        "ms_per_s": round(1000 * waited / elapsed, 2),
        "ms_per_wakeup": round(1000 * waited / slices, 3) if slices else 0.0,
    }


def renice(pid: int, nice: int) -> None:
    """Set the nice value of every thread of `pid` (Linux schedules threads, not processes)."""
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def start_profile(pid: int, seconds: float, out: pathlib.Path) -> Any:
    """py-spy on `pid` for `seconds`, idle frames included, as collapsed stacks in `out`."""
    import subprocess

    command = ["py-spy", "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "250"]
    command += ["--idle", "--nonblocking", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --- viewer processes -------------------------------------------------------------------------
def viewer_worker(conn: Any, links: list[tuple[str, str, str]], entry: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT))
    asyncio.run(_viewers(conn, links, entry))


async def _viewers(conn: Any, links: list[tuple[str, str, str]], entry: str) -> None:
    import aiohttp

    from media.dtls import DtlsIdentity
    from media.loadviewer import LoadViewer

    identity = DtlsIdentity()
    viewers: list[tuple[Any, str]] = []  # (viewer, serving node)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for path, token, _code in links:
            viewer = LoadViewer(identity)
            await viewer.start()
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
            async with http.post(entry + path, data=viewer.offer(), headers=headers) as reply:
                body = await reply.text()
                assert reply.status == 201, (reply.status, body)
                node = reply.headers.get("X-Lopso-Node", "?")
            await viewer.connect(body)
            viewers.append((viewer, node))
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "count":
                per_node: dict[str, int] = {}
                placed: dict[str, int] = {}
                for viewer, node in viewers:
                    per_node[node] = per_node.get(node, 0) + viewer.counters.packets
                    placed[node] = placed.get(node, 0) + 1
                lost = sum(v.stats()["lost"] for v, _ in viewers)
                conn.send(
                    {
                        "per_node": per_node,
                        "placed": placed,
                        "lost": lost,
                        "playing": sum(v.counters.packets > 0 for v, _ in viewers),
                    }
                )
            elif command == "quit":
                for viewer, _ in viewers:
                    await viewer.close()
                conn.send("bye")
                return


class ViewerProcs:
    def __init__(self, links: list[tuple[str, str, str]], entry: str, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(procs):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=viewer_worker, args=(theirs, links[i::procs], entry), daemon=True
            )
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)

    async def count(self) -> dict[str, Any]:
        total: dict[str, Any] = {"per_node": {}, "placed": {}, "lost": 0, "playing": 0}
        for conn in self.conns:
            conn.send("count")
        for conn in self.conns:
            if not await asyncio.get_running_loop().run_in_executor(None, conn.poll, 60):
                raise RuntimeError("a viewer process did not answer")
            part = conn.recv()
            for key in ("per_node", "placed"):
                for node, n in part[key].items():
                    total[key][node] = total[key].get(node, 0) + n
            total["lost"] += part["lost"]
            total["playing"] += part["playing"]
        return total

    def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send("quit")
                conn.poll(10) and conn.recv()
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


# --- hop latency ------------------------------------------------------------------------------
SIOCGSTAMPNS = 0x8907  # Linux: the kernel's receive time of a socket's last datagram


def kernel_stamp(sock: Any) -> float | None:
    """When the kernel received `sock`'s last datagram (CLOCK_REALTIME seconds), or None.
    The first call turns stamping on, a moment later (a deferred kernel switch): a datagram
    that came before is stamped with the time of the call."""
    try:
        seconds, nanos = struct.unpack("qq", fcntl.ioctl(sock, SIOCGSTAMPNS, bytes(16)))
    except OSError:
        return None
    return seconds + nanos / 1e9


class Arrival(NamedTuple):
    """One video packet at one probe viewer: read by the loop, queued by the kernel (seconds,
    wall clock), and its RTP sequence number and timestamp as that viewer got them."""

    read: float
    kernel: float | None
    seq: int
    stamp: int


class HopProbe:
    """Viewers on the origin ("origin", "origin2") and on an edge ("edge"): each video payload
    is timed at each, twice: when the kernel queued it on the viewer's socket (SIOCGSTAMPNS)
    and when this process's loop read it. edge - origin is the relay hop; origin2 - origin is
    the measurement's own noise (two viewers of one node get the packet in the same sendmmsg).
    The kernel times leave out this process's own waits for a CPU; the loop times include
    them (what the hop looked like before)."""

    def __init__(self) -> None:
        self.arrivals: dict[bytes, dict[str, Arrival]] = {}
        self.hops: list[float] = []
        self.noise: list[float] = []
        self.loop_hops: list[float] = []
        self.loop_noise: list[float] = []
        self.frames: dict[int, list[tuple[int, float]]] = {}  # edge RTP ts -> [(seq, hop)]

    @staticmethod
    def key(data: bytes) -> bytes | None:
        if data[1] & 0x7F != VIDEO_PT:
            return None
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10:
            offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
        return data[offset : offset + 64] + len(data[offset:]).to_bytes(4, "big")

    def sink(self, name: str, sock: Any = None) -> Any:
        """An on_rtp callback for the viewer called `name`; `sock` is its UDP socket (read
        just before the callback, so its last kernel timestamp is this packet's)."""

        def on_rtp(data: bytes) -> None:
            key = self.key(data)
            if key is None:
                return
            seen = self.arrivals.setdefault(key, {})
            seq, stamp = struct.unpack_from("!HI", data, 2)
            kernel = kernel_stamp(sock) if sock is not None else None
            seen[name] = Arrival(time.time(), kernel, seq, stamp)
            if len(seen) == 3:
                self._record(seen)
                del self.arrivals[key]
            if len(self.arrivals) > 20000:
                self.arrivals.pop(next(iter(self.arrivals)))

        return on_rtp

    def _record(self, seen: dict[str, Arrival]) -> None:
        edge, origin, origin2 = seen["edge"], seen["origin"], seen["origin2"]
        self.loop_hops.append(edge.read - origin.read)
        self.loop_noise.append(abs(origin2.read - origin.read))
        if edge.kernel is not None and origin.kernel is not None and origin2.kernel is not None:
            self.hops.append(edge.kernel - origin.kernel)
            self.noise.append(abs(origin2.kernel - origin.kernel))
            hop = edge.kernel - origin.kernel
            self.frames.setdefault(edge.stamp, []).append((edge.seq, hop))

    def by_place_in_frame(self) -> dict[str, list[float]]:
        """Hops split by a packet's place in its video frame: "first" packets (no packet of
        their frame ahead of them in the edge's fan-out) and "later" ones, plus the hop added
        per packet ahead (least squares slope, ms per packet), which is the edge's fan-out of
        one packet to all its viewers."""
        first: list[float] = []
        later: list[float] = []
        points: list[tuple[float, float]] = []
        for samples in self.frames.values():
            base = min(seq for seq, _hop in samples)
            for seq, hop in samples:
                ahead = (seq - base) & 0xFFFF
                (first if ahead == 0 else later).append(hop)
                points.append((float(ahead), hop))
        _fixed, slope = fit(points) if len(points) > 2 else (0.0, 0.0)
        return {"first": first, "later": later, "slope": [slope]}

    def clear(self) -> None:
        for values in (self.hops, self.noise, self.loop_hops, self.loop_noise):
            values.clear()
        self.frames.clear()


async def hop_viewers(
    http: Any,
    origin: Any,
    edge: Any,
    secret: bytes,
    sid: str,
    site: tuple[str, str, str],
    probe: HopProbe,
) -> list[Any]:
    from media.loadviewer import LoadViewer
    from server.cluster import NODE_TOKEN_HEADER, mint_node_token

    node_token = mint_node_token(secret, "bench")
    on_origin, on_origin2, on_edge = LoadViewer(), LoadViewer(), LoadViewer()
    for viewer, name in ((on_origin, "origin"), (on_origin2, "origin2"), (on_edge, "edge")):
        await viewer.start()
        sock = getattr(viewer._udp, "_sock", None)  # media/udp.py's socket: read-only use
        if sock is not None:
            kernel_stamp(sock)  # the first call turns the socket's receive timestamps on
        viewer.on_rtp = probe.sink(name, sock)
    headers = {"Content-Type": "application/sdp", NODE_TOKEN_HEADER: node_token}
    for viewer in (on_origin, on_origin2):  # relay subscribes: served by the origin itself
        async with http.post(
            f"{origin.url}/relay/{sid}", data=viewer.offer(), headers=headers
        ) as r:
            assert r.status == 201, await r.text()
            await viewer.connect(await r.text())
    headers["Authorization"] = f"Bearer {site[1]}"  # forwarded by "a node": served by this edge
    async with http.post(edge.url + site[0], data=on_edge.offer(), headers=headers) as r:
        assert r.status == 201, await r.text()
        await on_edge.connect(await r.text())
    return [on_origin, on_origin2, on_edge]


# --- one run ------------------------------------------------------------------------------------
async def run(
    edges: int, viewers: int, options: dict[str, Any], clip: pathlib.Path
) -> dict[str, Any]:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    from tests.clusterproc import LopsoCluster
    from tests.serverproc import SECRET

    loadgen = load_script("loadgen")
    with (
        tempfile.TemporaryDirectory(prefix="lopso-bench-cluster-") as tmp,
        LopsoCluster(
            pathlib.Path(tmp),
            edges=edges,
            sites=viewers,
            capacity=max(1, viewers // (2 * edges)),  # spread evenly (placement)
            env={"LOPSO_LOG_LEVEL": "WARNING"},
        ) as cluster,
    ):
        demo, sid = cluster.demo, cluster.demo["session_id"]
        links = [(link.whep_path, link.token, link.code) for link in loadgen.links_from_json(demo)]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            player = MediaPlayer(str(clip), decode=False)
            pc = RTCPeerConnection()
            pc.addTrack(player.audio)
            pc.addTrack(player.video)
            await pc.setLocalDescription(await pc.createOffer())
            headers = {
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {demo['lecturer']['token']}",
            }
            async with http.post(
                f"{cluster.origin.url}/whip/{sid}", data=pc.localDescription.sdp, headers=headers
            ) as reply:
                assert reply.status == 201, await reply.text()
                await pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))
            probe = HopProbe()
            hop = await hop_viewers(
                http, cluster.origin, cluster.edges[0], SECRET.encode(), sid, links[0], probe
            )
            procs = ViewerProcs(links, cluster.origin.url, options["procs"])
            try:
                deadline = time.monotonic() + 60 + viewers / 10
                while (await procs.count())["playing"] < viewers:
                    if time.monotonic() > deadline:
                        raise RuntimeError("viewers did not all start playing")
                    await asyncio.sleep(1.0)
                await asyncio.sleep(options["warmup"])
                pids = {e.dir.name: e.proc.pid for e in cluster.edges}
                loops = {"origin": cluster.origin.proc.pid, "bench": os.getpid(), **pids}
                if options.get("nice") is not None:
                    for pid in pids.values():
                        renice(pid, options["nice"])
                profiler = None
                if options.get("profile"):
                    out = pathlib.Path(options["profile"]) / f"edge-{edges}x{viewers}.txt"
                    profiler = start_profile(cluster.edges[0].proc.pid, options["seconds"], out)
                cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
                queue0 = {k: run_queue(p) for k, p in loops.items()}
                origin0, count0 = cpu_seconds(cluster.origin.proc.pid), await procs.count()
                probe.clear()
                started, window = time.monotonic(), [round(time.time(), 3)]
                await asyncio.sleep(options["seconds"])
                cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
                queue1 = {k: run_queue(p) for k, p in loops.items()}
                origin1, count1 = cpu_seconds(cluster.origin.proc.pid), await procs.count()
                elapsed = time.monotonic() - started
                window.append(round(time.time(), 3))
                if profiler is not None:
                    await asyncio.to_thread(profiler.wait, 30)
            finally:
                procs.stop()
                for viewer in hop:
                    await viewer.close()
                await pc.close()
    points = []
    per_edge = {}
    for name in cpu0:
        packets = count1["per_node"].get(name, 0) - count0["per_node"].get(name, 0)
        cpu = cpu1[name] - cpu0[name]
        per_edge[name] = {
            "viewers": count1["placed"].get(name, 0),
            "packets": packets,
            "cpu_pct": round(100 * cpu / elapsed, 1),
            "cpu_us_per_fwd_packet": round(1e6 * cpu / packets, 2) if packets else None,
        }
        points.append((packets / elapsed, cpu / elapsed))
    packets = sum(v["packets"] for v in per_edge.values())
    cpu = sum(cpu1[k] - cpu0[k] for k in cpu0)
    us = 1e6 * cpu / packets if packets else float("nan")
    rate = packets / elapsed / viewers  # packets/s one viewer gets
    hops = sorted(1000 * h for h in probe.hops)
    noise = sorted(1000 * h for h in probe.noise)
    loop_hops = sorted(1000 * h for h in probe.loop_hops)
    place = probe.by_place_in_frame()
    first, later = (
        sorted(1000 * h for h in place["first"]),
        sorted(1000 * h for h in place["later"]),
    )
    loop_noise = sorted(1000 * h for h in probe.loop_noise)

    def pct(p: float, values: list[float] = hops) -> float | None:
        return (
            round(values[min(len(values) - 1, int(p / 100 * len(values)))], 3) if values else None
        )

    return {
        "edges": edges,
        "viewers": viewers,
        "seconds": round(elapsed, 1),
        "window": window,  # wall clock, to match against the nodes' logs
        "cpu_us_per_fwd_packet": round(us, 2),
        "packets_per_viewer_per_s": round(rate, 1),
        "viewers_per_edge_core": int(1e6 / (us * rate)) if packets else 0,
        "edge_viewers": {k: v["viewers"] for k, v in per_edge.items()},
        "edge_cpu_pct": {k: v["cpu_pct"] for k, v in per_edge.items()},
        "edge_packets": {k: v["packets"] for k, v in per_edge.items()},
        "origin_cpu_pct": round(100 * (origin1 - origin0) / elapsed, 1),
        "loss_pct": round(100 * (count1["lost"] - count0["lost"]) / max(1, packets), 3),
        "points": points,  # (forwarded packets/s, CPU s/s) per edge, for the fit
        "hop_ms_p50": pct(50),
        "hop_ms_p99": pct(99),
        "hop_samples": len(hops),
        "hop_ms_mean": round(statistics.fmean(hops), 3) if hops else None,
        "hop_ms_p90": pct(90),
        "hop_ms_max": pct(100),
        "noise_ms_p50": pct(50, noise),
        "noise_ms_p99": pct(99, noise),
        # the link itself: packets first in their frame (nothing of theirs queued ahead)
        "hop_first_in_frame_ms_p50": pct(50, first),
        "hop_first_in_frame_ms_p99": pct(99, first),
        "hop_later_in_frame_ms_p99": pct(99, later),
        "hop_ms_per_packet_ahead": round(1000 * place["slope"][0], 3),
        "loop_hop_ms_p50": pct(50, loop_hops),  # read by this process's loop, its waits in
        "loop_hop_ms_p99": pct(99, loop_hops),
        "loop_noise_ms_p99": pct(99, loop_noise),
        # each event loop's wait for a CPU (runnable, not running): the machine's share
        "run_queue": {k: waits(queue0[k], queue1[k], elapsed) for k in loops},
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    bench_fanout = load_script("bench_fanout")
    clip = bench_fanout.make_clip(args.warmup + args.seconds + 90)
    options = {"procs": args.procs, "warmup": args.warmup, "seconds": args.seconds}
    options["profile"], options["nice"] = args.profile, args.edge_nice
    runs = []
    for edges in args.edges:
        result = await run(edges, args.viewers, options, clip)
        print(json.dumps(result), flush=True)
        runs.append(result)
    if len(runs) != 2:
        result = runs[-1]
        result.pop("points")
        return {**result, "cores": os.cpu_count(), "loadavg": os.getloadavg()[0]}
    one, two = runs
    fixed, marginal = fit([p for r in runs for p in r.pop("points")])
    rate = statistics.fmean(r["packets_per_viewer_per_s"] for r in runs)
    efficiency = (
        one["cpu_us_per_fwd_packet"] / two["cpu_us_per_fwd_packet"]
        if two["cpu_us_per_fwd_packet"]
        else None
    )
    return {
        "edges": [r["edges"] for r in runs],
        "viewers": [r["viewers"] for r in runs],
        "viewers_per_edge_core": [r["viewers_per_edge_core"] for r in runs],
        "cpu_us_per_fwd_packet": [r["cpu_us_per_fwd_packet"] for r in runs],
        "efficiency": round(efficiency, 3) if efficiency else None,
        "hop_ms_p50": [r["hop_ms_p50"] for r in runs],
        "hop_ms_p99": [r["hop_ms_p99"] for r in runs],
        "hop_first_in_frame_ms_p99": [r["hop_first_in_frame_ms_p99"] for r in runs],  # the link
        "hop_ms_per_packet_ahead": [r["hop_ms_per_packet_ahead"] for r in runs],  # edge fan-out
        "edge_run_queue_ms_per_s": [
            max(v["ms_per_s"] for k, v in r["run_queue"].items() if k.startswith("edge"))
            for r in runs
        ],
        "noise_ms_p99": [r["noise_ms_p99"] for r in runs],  # same-node viewers: the floor
        "loss_pct": [r["loss_pct"] for r in runs],
        "origin_cpu_pct": [r["origin_cpu_pct"] for r in runs],
        "edge_fixed_cpu_pct": round(100 * fixed, 2),  # the relay link's ingest, per edge
        "marginal_us_per_fwd_packet": round(1e6 * marginal, 2),
        "viewers_per_edge_core_fit": int((1 - fixed) / (marginal * rate)) if marginal > 0 else None,
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg()[0],
    }


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares cpu = fixed + marginal * packets_per_s over the edges of both runs."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    marginal = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else my / mx
    return max(0.0, my - marginal * mx), marginal


def edge_counts(text: str) -> list[int]:
    """--edges: a comma-separated list of edge counts, each 1 or more."""
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("edge counts are whole numbers from 1")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=100, help="viewers in each run")
    parser.add_argument("--procs", type=int, default=2, help="viewer processes")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true", help="40 viewers, 8 s windows")
    parser.add_argument(
        "--edges", type=edge_counts, default=[1, 2], help="edge counts to run, e.g. 1 (1,2)"
    )
    parser.add_argument(
        "--edge-nice",
        type=int,
        help="nice value for the edges (e.g. -10: a busy machine's "
        "other work waits; shows how much of the hop is waiting for a CPU)",
    )
    parser.add_argument("--profile", help="py-spy the first edge into this folder (raw stacks)")
    args = parser.parse_args()
    if args.quick:
        args.viewers, args.seconds, args.warmup = 40, 8.0, 3.0
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
