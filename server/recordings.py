"""Class recordings on this node: started with a class's first publish, stopped and joined at
its end, listed, replayed and expired after the retention days.

Layout: ``<LOPSO_RECORDINGS>/<class id>/`` holds the segments, ``recording.json``
(media.recorder.Manifest) and, once joined, ``recording.webm`` (VP8) or ``recording.mp4``
(H264). Any node that can read the folder (a shared volume in a cluster) serves replays: it
reads the manifest, never a recorder. The origin records (it alone takes publishers).

Replay is one joined file, not a playlist: a browser's <video> seeks in one file served with
range requests and needs no player script, and the download is the same file. While a class
runs the closed segments are joined again at most every JOIN_EVERY_S, so a hall can replay it
from the start before the end.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from media.errors import RecordingRefusedError
from server.config import Config

log = logging.getLogger(__name__)

JOIN_EVERY_S = 60.0
SID_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class Recordings:
    """This node's recorders and the shared recordings folder."""

    def __init__(self, config: Config, on_problem: Callable[[str, str], None]) -> None:
        self.config = config
        self.root = config.recordings
        self.on_problem = on_problem  # (class id, problem): tell the class's moderators
        self.active: dict[str, Any] = {}  # class id -> media.recorder.Recorder
        self.joined_at: dict[str, tuple[float, int]] = {}  # class id -> (when, segments)
        self.stopping: dict[str, asyncio.Future[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def folder(self, sid: str) -> Path:
        """The folder of one class's recording (class ids are checked at creation)."""
        if not sid or not set(sid) <= SID_SAFE or sid.startswith("."):
            raise ValueError(f"class id {sid!r} cannot name a recording folder")
        return self.root / sid

    def start(self, sid: str, lecture: Any, codec: str) -> None:
        """Record the lecture from now (idempotent); a refusal alerts the moderators."""
        if not self.config.record or sid in self.active:
            return
        from media.recorder import Recorder

        loop = asyncio.get_running_loop()

        def on_stop(problem: str) -> None:  # from the writer thread
            loop.call_soon_threadsafe(self.on_problem, sid, problem)

        recorder = Recorder(
            self.folder(sid),
            codec,
            segment_s=self.config.record_segment_s,
            min_free_bytes=self.config.record_min_free_mb * 2**20,
            on_stop=on_stop,
        )
        if (self.folder(sid) / "recording.json").exists():
            recorder = self._continue(recorder)
        try:
            recorder.start()
        except (RecordingRefusedError, OSError) as exc:
            log.warning("recording refused", extra={"sid": sid, "error": str(exc)})
            self.on_problem(sid, "disk_nearly_full")
            return
        self.active[sid] = recorder
        lecture.record(recorder)
        log.info("recording", extra={"sid": sid, "folder": str(recorder.folder)})

    def _continue(self, recorder: Any) -> Any:
        """A restart of the origin mid-class: keep the closed segments, number on after them."""
        from media.recorder import Manifest

        try:
            old = Manifest.load(recorder.folder)
        except (OSError, ValueError, TypeError):
            return recorder
        recorder.resume(old)
        return recorder

    async def stop(self, sid: str, join: bool = True) -> dict[str, Any] | None:
        """Stop recording a class (its end; idempotent, concurrent callers wait for the same
        stop) and join its segments; its info, or None when it has none."""
        task = self.stopping.get(sid)
        if task is None and sid in self.active:
            task = self.stopping[sid] = asyncio.ensure_future(self.active.pop(sid).stop())
        if task is not None:
            await asyncio.shield(task)
        return await self.info(sid, join=join)

    async def ended(self, sid: str, timeout_s: float = 15.0) -> dict[str, Any] | None:
        """The info of a class's recording once its recorder (here or on the origin, through
        the shared folder) has stopped, or as it is after `timeout_s`."""
        if sid in self.active or sid in self.stopping:
            return await self.stop(sid, join=False)
        deadline = time.monotonic() + timeout_s
        info = await self.info(sid)
        while info is not None and info["state"] == "recording" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            info = await self.info(sid)
        return info

    async def close(self) -> None:
        """Stop every recorder (the node shuts down): the open segments are closed."""
        for sid in list(self.active):
            recorder = self.active.pop(sid)
            await recorder.stop()

    async def info(self, sid: str, join: bool = False) -> dict[str, Any] | None:
        """Duration, size, start, state and file of a class's recording (None: none)."""
        from media.recorder import Manifest

        folder = self.folder(sid)
        try:
            manifest = await asyncio.to_thread(Manifest.load, folder)
        except (OSError, ValueError, TypeError):
            return None
        if join and manifest.segments:
            await self.joined(sid)
            manifest = await asyncio.to_thread(Manifest.load, folder)
        recorder = self.active.get(sid)
        if recorder is not None:  # its writer knows best (a full disk may stop the manifest)
            manifest = recorder.manifest
        return {
            "state": manifest.state,
            "problem": manifest.problem,
            "codec": manifest.codec,
            "started_at": manifest.started_at,
            "duration_s": round(manifest.duration, 3),
            "size_bytes": manifest.size,
            "segments": len(manifest.segments),
            "file": manifest.file,
        }

    async def joined(self, sid: str) -> Path | None:
        """The joined file of a class, joined (again) when segments came since, at most
        every JOIN_EVERY_S while the class records; None when nothing was recorded."""
        from media.recorder import Manifest, join_segments

        folder = self.folder(sid)
        lock = self._locks.setdefault(sid, asyncio.Lock())
        async with lock:
            try:
                manifest = await asyncio.to_thread(Manifest.load, folder)
            except (OSError, ValueError, TypeError):
                return None
            if not manifest.segments:
                return None
            final = folder / f"recording.{manifest.container}"
            when, count = self.joined_at.get(sid, (0.0, -1))
            recording = sid in self.active or manifest.state == "recording"
            fresh = final.exists() and (
                count == len(manifest.segments)
                or (not recording and manifest.file is not None and count < 0)
                or (recording and time.time() - when < JOIN_EVERY_S)
            )
            if not fresh:
                final = await asyncio.to_thread(join_segments, folder, manifest)
                self.joined_at[sid] = (time.time(), len(manifest.segments))
            return final

    def listing(self) -> list[dict[str, Any]]:
        """Every recording in the folder: class id, start, duration, size, state (blocking)."""
        from media.recorder import Manifest

        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for folder in sorted(self.root.iterdir()):
            try:
                m = Manifest.load(folder)
            except (OSError, ValueError, TypeError):
                continue
            out.append(
                {
                    "session_id": folder.name,
                    "started_at": m.started_at,
                    "duration_s": round(m.duration, 3),
                    "size_bytes": m.size,
                    "state": m.state,
                    "file": m.file,
                }
            )
        return out

    def expire(self, now: float | None = None) -> list[str]:
        """Delete recordings older than the retention days (0: keep for ever); their ids."""
        days = self.config.record_retention_days
        if days <= 0 or not self.root.is_dir():
            return []
        limit = (time.time() if now is None else now) - days * 86400
        gone = []
        for folder in self.root.iterdir():
            manifest = folder / "recording.json"
            if folder.name in self.active or not manifest.exists():
                continue
            if manifest.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(folder.name)
        return gone
