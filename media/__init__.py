"""LopSo media: forwards a lecturer's RTP packets to many viewers, with no codec on the path.

media/ knows nothing of sites, roles, tokens or Redis; server/ drives it through this API:

    from media import MediaConfig, MediaEngine
    engine = MediaEngine(MediaConfig(host="0.0.0.0", port=8189, announce=["192.0.2.10"]))
    await engine.start()                      # binds the one UDP socket of this process
    lecture = engine.lecture("class-42", video_codec="VP8")   # get or create (VP8 or H264)
    answer, publisher = await lecture.publish(offer_sdp)      # WHIP; replaces a live publisher
    answer, viewer = await lecture.subscribe(offer_sdp)       # WHEP; works before the lecturer is live
    answer, link = await lecture.subscribe(offer_sdp, relay=True)  # a relay link to an edge:
                                         # never paused by loss or silence, LAN RTX budget
    publisher = await lecture.relay_from(signal)   # edge: pull from another node's lecture,
                                                   # signal(offer) -> its subscribe answer
    viewer.stats()         # -> ViewerStats (packets/bytes sent, loss, jitter, rtt, nacks, plis,
                           #    retransmits, state, video_paused, video_pauses, path)
    viewer.path            # "udp" | "tcp" (ICE-TCP on the media port) | "turn" (a TURN relay
                           #    at one of MediaConfig.relay_hosts) | None before its first check
    viewer.set_audio_only(True)   # the site's choice; video also pauses by itself while the
                                  # link loses >= 20 % (retried with backoff) or sends no RTCP
    lecture.stats()        # -> LectureStats (live, viewers, packets/bytes in, rate, keyframe
                           #    requests sent upstream, publishers so far)
    viewer.on_close = cb     # cb(viewer), once, when its transport dies or it is closed
    viewer.on_flow = cb      # cb(FlowChange(flowing, ago_s, reason, path)): media flows (connected,
                             #    heard from) or stopped (unheard for MediaConfig.media_silence_s,
                             #    or closed); `viewer.flowing` is the current state
    publisher.on_close = cb  # cb(publisher), once, when it is closed, replaced or its link dies
    lecture.on_live = cb     # cb(True/False) when a publisher starts/stops sending
    await viewer.close(); await publisher.close(); await lecture.close(); await engine.close()

Errors: media.errors (MediaError and its SdpError, CodecMismatchError, LectureClosedError,
PublisherBusyError). Every name above is importable from `media`; the heavy modules (aiortc)
load on first use, so `import media.errors` stays cheap for nodes that serve no media.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CodecMismatchError,
    LectureClosedError,
    MediaError,
    PublisherBusyError,
    SdpError,
)

if TYPE_CHECKING:
    from .engine import MediaConfig, MediaEngine
    from .ingest import Publisher
    from .lecture import FlowChange, Lecture, LectureStats, Viewer, ViewerStats

_LAZY = {
    "MediaConfig": "engine",
    "MediaEngine": "engine",
    "FlowChange": "lecture",
    "Lecture": "lecture",
    "LectureStats": "lecture",
    "Viewer": "lecture",
    "ViewerStats": "lecture",
    "Publisher": "ingest",
}

__all__ = [
    "CodecMismatchError",
    "FlowChange",
    "Lecture",
    "LectureClosedError",
    "LectureStats",
    "MediaConfig",
    "MediaEngine",
    "MediaError",
    "Publisher",
    "PublisherBusyError",
    "SdpError",
    "Viewer",
    "ViewerStats",
]


def __getattr__(name: str) -> Any:
    """Load MediaEngine, Lecture, ... from their module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'media' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
