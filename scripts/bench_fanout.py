#!/usr/bin/env python3
"""The forwarding benchmark of issue 2: publisher -> relay -> N viewers, relay CPU per packet.

Three processes besides this orchestrator, talking over pipes:
- publisher: a real aiortc peer sending a pre-encoded clip (VP8 ~1.5 Mbit/s with noise, Opus)
  with `MediaPlayer(decode=False)`, so publishing costs almost nothing;
- relay: `media.MediaEngine` + `Lecture` (mode "lopso"), or aiortc's `MediaRelay` with one
  RTCPeerConnection per viewer (`--baseline mediarelay`);
- viewers: N `media.loadviewer.LoadViewer`s (ICE + DTLS + SRTP, counting, receiver reports) and
  ONE aiortc peer that decodes every frame and checks the number drawn in it.
Only the relay process's CPU time (user + sys, all its threads, getrusage) over a steady window
is measured. The clip's frames carry their number as a 4x4 block pattern (tests/mediaclip.py).

    python scripts/bench_fanout.py --quick                 # 100 viewers, under a minute
    python scripts/bench_fanout.py --viewers 300 --seconds 20
    python scripts/bench_fanout.py --baseline mediarelay   # aiortc MediaRelay, 4 viewers

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import itertools
import json
import logging
import multiprocessing
import os
import pathlib
import resource
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "lopso"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the clip ---------------------------------------------------------------------------------


def make_clip(seconds: float, fps: int = 30, bitrate: int = 1_500_000) -> pathlib.Path:
    """A WebM of numbered 640x480 frames with noise (VP8 at `bitrate`) and an Opus tone."""
    import av
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tests.mediaclip import number_image

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"bench-vp8-opus-{int(seconds)}s-{bitrate // 1000}k.webm"
    if path.exists():
        return path
    rng = np.random.default_rng(7)
    noise = [rng.integers(-20, 21, (480, 640, 3), dtype=np.int16) for _ in range(7)]
    tmp = path.with_suffix(f".{os.getpid()}.tmp.webm")  # concurrent runs never share one
    with av.open(str(tmp), "w", format="webm") as out:
        video = out.add_stream("libvpx", rate=fps)
        video.width, video.height, video.pix_fmt = 640, 480, "yuv420p"
        video.bit_rate = bitrate
        video.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "g": str(2 * fps),
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
        }
        audio = out.add_stream("libopus", rate=48000)
        audio.layout = "stereo"
        samples = 960
        for n in range(int(seconds * fps)):
            image = number_image(n).repeat(2, axis=0).repeat(2, axis=1).astype(np.int16)
            image = np.clip(image + noise[n % len(noise)], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = n
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(int(seconds * 48000)) / 48000
        tone = (np.sin(2 * np.pi * 440 * t) * 6000).astype(np.int16)
        for i in range(0, len(tone) - samples, samples):
            chunk = np.repeat(tone[None, i : i + samples], 2, axis=0).T.reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
            sound.sample_rate, sound.pts = 48000, i
            sound.time_base = fractions.Fraction(1, 48000)
            for packet in audio.encode(sound):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


# -- worker plumbing --------------------------------------------------------------------------


def worker(kind: str, conn, options: dict) -> None:
    """Child entry point: run the named worker's command loop."""
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT))
    try:
        import uvloop  # the relay may run on uvloop, like production

        runner = uvloop.run if options.get("uvloop") and kind == "relay" else asyncio.run
    except ImportError:
        runner = asyncio.run
    runner(serve(conn, WORKERS[kind](options)))


async def serve(conn, handlers) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        try:
            result = await getattr(handlers, command)(arg)
        except Exception as exc:  # report to the orchestrator, which stops the run
            logging.getLogger("bench_fanout").exception("worker command failed")
            conn.send(("error", f"{command}: {type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", result))
        if command == "quit":
            return


class Remote:
    """The orchestrator's handle on one worker process."""

    def __init__(self, kind: str, options: dict) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker, args=(kind, child, options), name=kind)
        self.process.start()
        self.kind = kind

    async def call(self, command: str, arg=None, timeout: float = 60.0):
        loop = asyncio.get_running_loop()
        self.conn.send((command, arg))
        if not await loop.run_in_executor(None, self.conn.poll, timeout):
            raise RuntimeError(f"{self.kind} did not answer {command} within {timeout} s")
        status, result = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.kind} failed: {result}")
        return result

    async def stop(self) -> None:
        try:
            if self.process.is_alive():
                await self.call("quit", timeout=15)
        except (RuntimeError, OSError, EOFError):
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


# -- workers ----------------------------------------------------------------------------------


class Publisher:
    """An aiortc peer playing the pre-encoded clip without decoding it."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self.pc: Any = None

    async def offer(self, _arg) -> str:
        from aiortc import RTCPeerConnection
        from aiortc.contrib.media import MediaPlayer

        self.player = MediaPlayer(self.options["clip"], decode=False)
        self.pc = RTCPeerConnection()
        self.pc.addTrack(self.player.audio)
        self.pc.addTrack(self.player.video)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> str:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        return "ok"

    async def quit(self, _arg) -> None:
        if self.pc is not None:
            await self.pc.close()


class LopsoRelay:
    """The relay under test: MediaEngine + one Lecture."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self.mark: tuple = ()

    async def start(self, _arg) -> str:
        from media.endpoint import Fanout
        from media.engine import MediaConfig, MediaEngine

        self.fanout_cpu = 0.0
        send = Fanout.send

        def timed_send(fanout, packet):  # diagnostic: the fan-out's share of the relay's CPU
            t0 = time.thread_time()
            try:
                return send(fanout, packet)
            finally:
                self.fanout_cpu += time.thread_time() - t0

        Fanout.send = timed_send  # type: ignore[method-assign]
        # "::" is the server's default: replies carry their source address (IP_PKTINFO)
        host = self.options.get("media_host", "127.0.0.1")
        self.engine = MediaEngine(MediaConfig(host=host, announce=("127.0.0.1",)))
        await self.engine.start()
        self.lecture = self.engine.lecture("bench", video_codec="VP8")
        if self.options.get("record"):  # the recorder's writer thread counts in the relay's CPU
            import tempfile

            from media.recorder import Recorder

            folder = pathlib.Path(tempfile.mkdtemp(prefix="lopso-bench-rec-"))
            self.recorder = Recorder(folder, "VP8")
            self.recorder.start()
            self.lecture.record(self.recorder)
        return "ok"

    async def publish(self, offer: str) -> str:
        answer, self.publisher = await self.lecture.publish(offer)
        return answer

    async def subscribe(self, offers: list[str]) -> list[str]:
        answers = []
        for offer in offers:
            answer, _viewer = await self.lecture.subscribe(offer)
            answers.append(answer)
        return answers

    def counters(self) -> tuple:
        stats = [v.stats() for v in list(self.lecture.viewers)]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (
            cpu_seconds(),
            sum(s.packets_sent for s in stats),
            self.lecture.stats().packets_in,
            time.monotonic(),
            usage.ru_utime,
            usage.ru_stime,
            self.fanout_cpu,
            self.lecture.stats().bytes_in,
            sum(s.bytes_sent for s in stats),
        )

    async def measure_start(self, _arg) -> str:
        self.mark = self.counters()
        if self.options.get("profile"):
            import cProfile

            self.profiler = cProfile.Profile(time.process_time)  # CPU, not wall, time
            self.profiler.enable()
        return "ok"

    async def measure_stop(self, _arg) -> dict:
        if self.options.get("profile"):
            import pstats

            self.profiler.disable()
            pstats.Stats(self.profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        cpu, copies, packets_in, now, user, system, fanout, bytes_in, out = self.counters()
        cpu0, copies0, in0, then, user0, system0, fanout0, bytes0, out0 = self.mark
        drops = sum(
            getattr(getattr(t, "fanout", None), "drops", 0) for t in self.lecture.tracks.values()
        )
        pauses = sum(getattr(v.stats(), "video_pauses", 0) for v in list(self.lecture.viewers))
        return {
            "fanout_drops": drops,
            "video_pauses": pauses,
            "cpu_s": cpu - cpu0,
            "copies": copies - copies0,
            "packets_in": packets_in - in0,
            "seconds": now - then,
            "viewers": len(self.lecture.viewers),
            "user_s": user - user0,
            "sys_s": system - system0,
            "fanout_cpu_s": fanout - fanout0,
            "bytes_in": bytes_in - bytes0,
            "bytes_out": out - out0,
        }

    async def quit(self, _arg) -> None:
        await self.engine.close()


class MediaRelayBaseline(LopsoRelay):
    """aiortc's MediaRelay: one RTCPeerConnection per viewer, decode once, encode per viewer."""

    async def start(self, _arg) -> str:
        from aiortc.contrib.media import MediaRelay

        self.relay = MediaRelay()
        self.tracks: list = []
        self.pcs: list = []
        self.packets_in = 0
        return "ok"

    async def publish(self, offer: str) -> str:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        self.pcs.append(pc)
        pc.on("track", self.tracks.append)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.publisher_pc = pc
        return pc.localDescription.sdp

    async def subscribe(self, offers: list[str]) -> list[str]:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        answers = []
        for offer in offers:
            pc = RTCPeerConnection()
            self.pcs.append(pc)
            for track in sorted(self.tracks, key=lambda t: t.kind):  # audio first, as offered
                pc.addTrack(self.relay.subscribe(track))
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            answers.append(pc.localDescription.sdp)
        return answers

    async def _packets(self, pcs) -> int:
        total = 0
        for pc in pcs:
            for sender_or_receiver in (
                pc.getSenders() if pc is not self.publisher_pc else pc.getReceivers()
            ):
                for stat in (await sender_or_receiver.getStats()).values():
                    if stat.type in ("outbound-rtp", "inbound-rtp"):
                        total += (
                            stat.packetsSent
                            if stat.type == "outbound-rtp"
                            else stat.packetsReceived
                        )
        return total

    async def measure_start(self, _arg) -> str:
        viewers = [pc for pc in self.pcs if pc is not self.publisher_pc]
        self.mark = (
            cpu_seconds(),
            await self._packets(viewers),
            await self._packets([self.publisher_pc]),
            time.monotonic(),
        )
        return "ok"

    async def measure_stop(self, _arg) -> dict:
        viewers = [pc for pc in self.pcs if pc is not self.publisher_pc]
        cpu = cpu_seconds()
        copies, packets_in, now = (
            await self._packets(viewers),
            await self._packets([self.publisher_pc]),
            time.monotonic(),
        )
        cpu0, copies0, in0, then = self.mark
        return {
            "fanout_drops": None,  # MediaRelay has no fan-out drop counter
            "cpu_s": cpu - cpu0,
            "copies": copies - copies0,
            "packets_in": packets_in - in0,
            "seconds": now - then,
            "viewers": len(viewers),
        }

    async def quit(self, _arg) -> None:
        for pc in self.pcs:
            await pc.close()


class Viewers:
    """Load viewers (options["verifier"] False) or the one decoding, verifying aiortc viewer.

    The verifier runs in its own process so that N load viewers cannot starve its decoder.
    """

    def __init__(self, options: dict) -> None:
        self.options = options
        self.verifier = bool(options.get("verifier"))
        self.load: list = []
        self.pc: Any = None
        self.tasks: list = []
        self.verified = 0
        self.corrupt = 0
        self.numbers: list[int] = []

    async def offers(self, count: int) -> list[str]:
        if self.verifier:
            from aiortc import RTCPeerConnection

            self.pc = RTCPeerConnection()
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
            self.pc.on("track", lambda t: self.tasks.append(asyncio.ensure_future(self.watch(t))))
            await self.pc.setLocalDescription(await self.pc.createOffer())
            return [self.pc.localDescription.sdp]
        from media.dtls import DtlsIdentity
        from media.loadviewer import LoadViewer

        identity = DtlsIdentity()
        decrypt = bool(self.options.get("decrypt"))
        self.load = [LoadViewer(identity=identity, decrypt=decrypt) for _ in range(count)]
        for viewer in self.load:
            await viewer.start()
        return [v.offer("VP8") for v in self.load]

    async def watch(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        from tests.mediaclip import read_number

        if track.kind != "video":
            return
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            number = read_number(frame)
            if number is None:
                self.corrupt += 1
            else:
                self.verified += 1
                self.numbers.append(number)

    async def connect(self, answers: list[str]) -> int:
        if self.pc is not None:
            from aiortc import RTCSessionDescription

            await self.pc.setRemoteDescription(RTCSessionDescription(answers[0], "answer"))
            return 1
        results = await asyncio.gather(
            *(v.connect(a, timeout=30) for v, a in zip(self.load, answers)), return_exceptions=True
        )
        return sum(1 for r in results if r is None)

    async def stats(self, _arg) -> dict:
        stats = [v.stats() for v in self.load]
        numbers = self.numbers
        return {
            "packets": sum(s["packets"] for s in stats),
            "lost": sum(s["lost"] for s in stats),
            "srtp_errors": sum(s["srtp_errors"] for s in stats),
            "receiving": sum(1 for s in stats if s["packets"] > 0),
            "verified_frames": self.verified,
            "corrupt_frames": self.corrupt,
            "out_of_order_frames": sum(1 for a, b in itertools.pairwise(numbers) if b <= a),
        }

    async def quit(self, _arg) -> None:
        if self.pc is not None:
            await self.pc.close()
        for task in self.tasks:
            task.cancel()
        for viewer in self.load:
            await viewer.close()


WORKERS = {
    "publisher": Publisher,
    "relay": LopsoRelay,
    "mediarelay": MediaRelayBaseline,
    "viewers": Viewers,
}


# -- orchestration ----------------------------------------------------------------------------


async def wait_until(predicate, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(step)
    return False


async def run(args: argparse.Namespace) -> dict:
    mode = "mediarelay" if args.baseline == "mediarelay" else "lopso"
    clip = make_clip(args.warmup + args.seconds + 15)
    options = {
        "clip": str(clip),
        "uvloop": args.uvloop,
        "profile": args.profile,
        "decrypt": args.decrypt,
        "media_host": args.media_host,
        "record": args.record,
    }
    relay = Remote("mediarelay" if mode == "mediarelay" else "relay", options)
    publisher = Remote("publisher", options)
    viewers = Remote("viewers", options)
    verifier = Remote("viewers", {**options, "verifier": True})
    try:
        await relay.call("start")
        answer = await relay.call("publish", await publisher.call("offer"))
        await publisher.call("answer", answer)
        connected = 0
        for group, count in ((verifier, 1), (viewers, args.viewers)):
            offers = await group.call("offers", count)
            answers = await relay.call("subscribe", offers, timeout=120)
            connected += await group.call("connect", answers, timeout=120)

        async def receiving() -> bool:
            load, checked = await viewers.call("stats"), await verifier.call("stats")
            return load["receiving"] == args.viewers and checked["verified_frames"] > 0

        await wait_until(receiving, 20)
        await asyncio.sleep(args.warmup)
        await relay.call("measure_start")
        await asyncio.sleep(args.seconds)
        window = await relay.call("measure_stop")
        seen = await viewers.call("stats")
        checked = await verifier.call("stats")
    finally:
        for remote in (publisher, viewers, verifier, relay):
            await remote.stop()
    seen.update(
        {k: checked[k] for k in ("verified_frames", "corrupt_frames", "out_of_order_frames")}
    )
    return summarise(mode, args, connected, window, seen)


def summarise(mode: str, args, connected: int, window: dict, seen: dict) -> dict:
    seconds, copies, cpu = window["seconds"], window["copies"], window["cpu_s"]
    in_pps = window["packets_in"] / seconds if seconds else 0.0
    per_packet = 1e6 * cpu / copies if copies else None
    per_viewer_s = per_packet * in_pps / 1e6 if per_packet and in_pps else None
    return {
        "mode": mode,
        "viewers": args.viewers + 1,
        "connected": connected,
        "seconds": round(seconds, 2),
        "in_pps": round(in_pps, 1),
        "in_payload_kbps": round(8 * window["bytes_in"] / seconds / 1e3, 1)
        if seconds and "bytes_in" in window
        else None,
        "out_kbps_per_viewer": round(8 * window["bytes_out"] / seconds / 1e3 / window["viewers"], 1)
        if seconds and window.get("viewers") and "bytes_out" in window
        else None,
        "fwd_pps": round(copies / seconds, 1) if seconds else 0.0,
        "relay_cpu_pct": round(100 * cpu / seconds, 1) if seconds else 0.0,
        "cpu_us_per_fwd_packet": round(per_packet, 2) if per_packet else None,
        "viewers_per_core": int(1 / per_viewer_s) if per_viewer_s else None,
        "verified_frames": seen["verified_frames"],
        "corrupt_frames": seen["corrupt_frames"],
        "out_of_order_frames": seen["out_of_order_frames"],
        "lost_packets": seen["lost"],
        "srtp_errors": seen["srtp_errors"],
        "receiving_viewers": seen["receiving"],
        "uvloop": args.uvloop,
        "media_host": args.media_host,
        "record": args.record,
        "relay_cpu_us_per_in_packet": round(1e6 * cpu / window["packets_in"], 2)
        if window["packets_in"]
        else None,
        "fanout_drops": window.get("fanout_drops"),
        "video_pauses": window.get("video_pauses"),
        "relay_user_s": round(window.get("user_s", 0.0), 3),
        "relay_sys_s": round(window.get("sys_s", 0.0), 3),
        "fanout_us_per_fwd_packet": round(1e6 * window["fanout_cpu_s"] / copies, 2)
        if copies and "fanout_cpu_s" in window
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="publisher -> relay -> N viewers benchmark")
    parser.add_argument("--viewers", type=int, default=None, help="load viewers (plus 1 verifier)")
    parser.add_argument("--seconds", type=float, default=None, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="100 viewers, under a minute")
    parser.add_argument("--baseline", choices=["mediarelay"], default=None)
    parser.add_argument("--uvloop", action="store_true", help="run the relay on uvloop")
    parser.add_argument("--profile", action="store_true", help="cProfile the relay's window")
    parser.add_argument("--decrypt", action="store_true", help="load viewers check SRTP too")
    parser.add_argument(
        "--media-host",
        default="127.0.0.1",
        help='where the relay binds; "::" (the server default) sends with IP_PKTINFO',
    )
    parser.add_argument("--record", action="store_true", help="record the lecture (media.recorder)")
    args = parser.parse_args()
    default_viewers = 4 if args.baseline else 100
    args.viewers = max(2, args.viewers if args.viewers is not None else default_viewers) - 1
    args.seconds = args.seconds or (10.0 if args.quick else 20.0)
    result = asyncio.run(run(args))
    per_packet = result["cpu_us_per_fwd_packet"]
    result["target_met"] = bool(  # issue 2: <= 10 us per forwarded packet, nothing corrupt
        per_packet is not None and per_packet <= 10.0 and result["corrupt_frames"] == 0
    )
    print(json.dumps(result))
    ok = result["verified_frames"] > 0 and result["corrupt_frames"] == 0 and result["fwd_pps"] > 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
