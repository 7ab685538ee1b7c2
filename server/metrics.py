"""Prometheus metrics of one node, served at `GET /metrics` (routes in server/routes/api.py).

Two kinds: events the signalling path counts as they happen (WHIP/WHEP replies, join
latency, WebSocket pages, check-ins, ledger appends, store errors), and media numbers read
from media/'s stats only when Prometheus scrapes (`MediaCollector`), so the forwarding path
pays nothing. Every app has its own registry: no module-level metric, nothing to reset.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from server.checkin import RateLimitedError as CheckinRateLimitedError
from server.peer import PATHS
from server.store.base import NotFoundError, Store

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
JOIN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)
"""Seconds from WHEP POST to connected: ICE + DTLS over a rural link take a second or more."""
LEDGER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LEDGER_OPERATIONS = frozenset({"append", "add_checkin"})
Family = CounterMetricFamily | GaugeMetricFamily


class Metrics:
    """The registry of one node and the instruments the server bumps."""

    def __init__(self, lectures_of: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.signalling = Counter(
            "lopso_signalling_requests",
            "WHIP (publish) and WHEP (view) HTTP requests by kind, method, status, and whether a"
            " client or another node (cluster placement) sent them",
            ["kind", "method", "status", "via"],
            registry=r,
        )
        self.join_seconds = Histogram(
            "lopso_join_seconds",
            "Seconds from a WHEP POST arriving to its viewer connected (ICE + DTLS done), by"
            " the path it connected on (udp, tcp: ICE-TCP, turn: through a TURN relay)",
            ["path"],
            buckets=JOIN_BUCKETS,
            registry=r,
        )
        self.websockets = Gauge(
            "lopso_websocket_connections",
            "Pages connected to this node by role",
            ["role"],
            registry=r,
        )
        self.ledger_appends = Counter(
            "lopso_ledger_appends",
            "Attendance ledger appends by operation (append, add_checkin)",
            ["operation"],
            registry=r,
        )
        self.ledger_seconds = Histogram(
            "lopso_ledger_append_seconds",
            "Seconds until a ledger append is durable, by operation",
            ["operation"],
            buckets=LEDGER_BUCKETS,
            registry=r,
        )
        self.checkins = Counter(
            "lopso_checkins",
            "Check-ins by result (accepted, duplicate, refused) and refusal reason",
            ["result", "reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "lopso_store_errors", "Store calls that failed, by operation", ["operation"], registry=r
        )
        self._redis_durable: Gauge | None = None  # cluster only: made on the first reading
        r.register(MediaCollector(lectures_of))

    def render(self) -> bytes:
        """The text exposition format, collected now."""
        return generate_latest(self.registry)

    def redis_durable(self, durable: bool) -> None:
        """Cluster: 1 when Redis keeps every acknowledged write (AOF, fsync always), else 0."""
        if self._redis_durable is None:
            self._redis_durable = Gauge(
                "lopso_redis_durable",
                "1 when the cluster's Redis runs with appendonly yes and appendfsync always;"
                " 0 when a Redis crash may lose acknowledged attendance (or it cannot tell)",
                registry=self.registry,
            )
        self._redis_durable.set(1 if durable else 0)

    def checkin(self, created: bool) -> None:
        """A check-in reached the ledger: a new person, or one already counted."""
        self.checkins.labels("accepted" if created else "duplicate", "").inc()

    def checkin_refused(self, error: Exception) -> None:
        """A check-in was refused before the ledger: rate_limited or invalid."""
        reason = "rate_limited" if isinstance(error, CheckinRateLimitedError) else "invalid"
        self.checkins.labels("refused", reason).inc()

    def watch_join(self, viewer: Any, started: float) -> None:
        """Observe the join latency when `viewer`'s endpoint first says connected.

        Chains the endpoint's state callback (which media's Viewer set) instead of waiting
        in a task: a join storm makes thousands of viewers."""
        endpoint = getattr(viewer, "endpoint", None)
        if endpoint is None:
            return
        previous = endpoint.on_state_change
        observed = False

        def on_state(state: str) -> None:
            nonlocal observed
            if previous is not None:
                previous(state)
            if state == "connected" and not observed:
                observed = True
                path = getattr(endpoint, "path", None) or "udp"
                self.join_seconds.labels(path).observe(time.monotonic() - started)

        endpoint.on_state_change = on_state
        if endpoint.state == "connected":  # connected before we looked (not expected)
            on_state("connected")


class MediaCollector:
    """Reads lectures, viewers and fan-out counters at scrape time (media/ stats APIs)."""

    def __init__(self, lectures_of: Callable[[], dict[str, Any]]) -> None:
        self._lectures_of = lectures_of

    def describe(self) -> list[Metric]:
        return []  # families depend on the lectures present; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        lectures = dict(self._lectures_of() or {})
        live = GaugeMetricFamily("lopso_lectures_live", "Lectures with a publisher sending now")
        total = GaugeMetricFamily("lopso_lectures", "Lectures open on this node (live or not)")
        families = _class_families()
        live_count = 0
        for sid, lecture in sorted(lectures.items()):
            try:
                live_count += _collect_lecture(families, sid, lecture)
            except Exception:  # a lecture closing mid-scrape must not fail the whole scrape
                log.exception("could not read a lecture's stats", extra={"sid": sid})
        live.add_metric([], live_count)
        total.add_metric([], len(lectures))
        yield live
        yield total
        yield from families.values()


def _class_families() -> dict[str, Family]:
    c, g = CounterMetricFamily, GaugeMetricFamily
    sid = ["sid"]
    track = ["sid", "kind"]
    return {
        "viewers": g(
            "lopso_viewers", "Viewers (WHEP and relays) per class on this node", labels=sid
        ),
        "paths": g(
            "lopso_viewers_path",
            "Connected viewers per class by path (udp, tcp: ICE-TCP, turn: a TURN relay)",
            labels=["sid", "path"],
        ),
        "paused": g(
            "lopso_viewers_video_paused", "Viewers receiving audio only (video paused)", labels=sid
        ),
        "packets_in": c(
            "lopso_lecture_packets_in", "RTP packets received from the publisher", labels=sid
        ),
        "bytes_in": c(
            "lopso_lecture_bytes_in", "RTP bytes received from the publisher", labels=sid
        ),
        "keyframes": c(
            "lopso_lecture_keyframe_requests", "Keyframe requests sent to the publisher", labels=sid
        ),
        "fan_packets": c(
            "lopso_fanout_packets",
            "Packets given to the fan-out (each copied to every viewer)",
            labels=track,
        ),
        "fan_copies": c(
            "lopso_fanout_copies", "Copies sent by the fan-out (packets forwarded)", labels=track
        ),
        "fan_drops": c(
            "lopso_fanout_drops",
            "Copies refused by the kernel or SRTP (socket buffer full)",
            labels=track,
        ),
        "sent_packets": g(
            "lopso_viewers_packets_sent",
            "Packets sent to the viewers connected now (sum)",
            labels=sid,
        ),
        "sent_bytes": g(
            "lopso_viewers_bytes_sent", "Bytes sent to the viewers connected now (sum)", labels=sid
        ),
        "retransmits": g(
            "lopso_viewers_retransmits",
            "Retransmissions to the viewers connected now (sum)",
            labels=sid,
        ),
        "lost": g(
            "lopso_viewers_lost_packets",
            "Packets the connected viewers report lost (RTCP cumulative, sum)",
            labels=sid,
        ),
    }


def _collect_lecture(families: dict[str, Family], sid: str, lecture: Any) -> int:
    """Add one lecture's samples; returns 1 when it is live."""
    stats = lecture.stats()
    f = families
    f["viewers"].add_metric([sid], stats.viewers)
    f["packets_in"].add_metric([sid], stats.packets_in)
    f["bytes_in"].add_metric([sid], stats.bytes_in)
    f["keyframes"].add_metric([sid], stats.keyframe_requests)
    for kind, forwarder in sorted(getattr(lecture, "tracks", {}).items()):
        fanout = getattr(forwarder, "fanout", None)
        if fanout is not None:
            f["fan_packets"].add_metric([sid, kind], fanout.packets)
            f["fan_copies"].add_metric([sid, kind], fanout.copies)
            f["fan_drops"].add_metric([sid, kind], fanout.drops)
    sums = {"sent_packets": 0, "sent_bytes": 0, "retransmits": 0, "lost": 0, "paused": 0}
    paths = dict.fromkeys(PATHS, 0)
    for viewer in list(lecture.viewers):
        v = viewer.stats()
        if v.state == "connected" and v.path in paths:
            paths[v.path] += 1
        sums["sent_packets"] += v.packets_sent
        sums["sent_bytes"] += v.bytes_sent
        sums["retransmits"] += v.retransmits
        sums["lost"] += v.cumulative_lost
        sums["paused"] += int(v.video_paused)
    for name, value in sums.items():
        f[name].add_metric([sid], value)
    for path, count in paths.items():
        f["paths"].add_metric([sid, path], count)
    return int(bool(stats.live))


class MeteredStore:
    """The store, with ledger appends timed and failed calls counted; otherwise the same.

    Wraps only coroutine methods (found on first use, then cached on the instance); plain
    attributes and `subscribe` pass through untouched."""

    def __init__(self, inner: Store, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def inner(self) -> Store:
        """The wrapped store."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr
        wrapped = self._wrap(name, attr)
        self.__dict__[name] = wrapped
        return wrapped

    def _wrap(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        metrics = self._metrics
        timed = name in LEDGER_OPERATIONS
        # labelled children looked up once: a label lookup costs more than the increment
        appends = metrics.ledger_appends.labels(name) if timed else None
        seconds = metrics.ledger_seconds.labels(name) if timed else None

        async def metered(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await call(*args, **kwargs)
            except NotFoundError:
                raise  # an answer, not a failure
            except Exception:
                metrics.store_errors.labels(name).inc()
                raise
            if appends is not None and seconds is not None:
                appends.inc()
                seconds.observe(time.perf_counter() - started)
            return result

        metered.__name__ = name
        metered.__doc__ = call.__doc__
        return metered


def metered(store: Store, metrics: Metrics) -> Store:
    """`store` with its calls counted into `metrics` (typed as the Store it stands for)."""
    return cast(Store, MeteredStore(store, metrics))
