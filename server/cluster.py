"""Cluster mode: node heartbeats, WHEP placement, and the relay links an edge pulls through.

Every node announces itself (role, HTTP URL, media address, load, lectures carried) to the
store every HEARTBEAT_S with a short expiry. A viewer's WHEP offer is placed on the
least-loaded live edge, preferring edges that already carry the class (server/routes/relay.py
forwards it there). An edge pulls a class's lecture over a relay link the first time a viewer
of that class lands on it, drops the link when the last viewer has been gone LINK_LINGER_S,
and pulls again with capped backoff when the link dies or its source restarts.

Nodes trust each other through node tokens: HMAC-SHA256 under the shared LOPSO_SECRET, with
a domain tag so no viewer or lecturer token can pass for one (and the other way round).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from server.config import Config
from server.errors import AuthError
from server.models import NodeInfo

log = logging.getLogger(__name__)

NODE_TOKEN_HEADER = "X-Lopso-Node-Token"
NODE_HEADER = "X-Lopso-Node"
NODE_URL_HEADER = "X-Lopso-Node-Url"
HEARTBEAT_S = 2.0
NODE_TTL_S = 3 * HEARTBEAT_S
NODE_TOKEN_TTL_S = 60.0
CARRY_PENALTY = 0.1  # load an edge not yet carrying the class must be lighter by to win
DOWN_FOR_S = NODE_TTL_S  # a node that refused a connection is skipped until its key expires
LINK_LINGER_S = 5.0  # a link outlives its last viewer this long (a page reload keeps it)
LINK_PROBE_S = 1.0  # how often an edge asks its source whether the link is still known
LINK_MISSES = 2  # unanswered probes before the link counts as dead
BACKOFF = (0.5, 5.0)  # first and largest delay between pulls
SWEEP_S = 1.0
NODE_FILE = "node.json"
NODES_CACHE_S = 0.5
BEAT_CHECK_S = 0.5
_TOKEN_TAG = b"lopso-node-token|"


class RelayError(Exception):
    """A relay link could not be set up (no source, refused, bad answer)."""


# --- node tokens ----------------------------------------------------------------------------
def mint_node_token(
    secret: bytes, node_id: str, *, ttl_s: float = NODE_TOKEN_TTL_S, now: float | None = None
) -> str:
    """`node_id|expiry|hex(hmac)`: what one node shows another."""
    body = f"{node_id}|{int((time.time() if now is None else now) + ttl_s)}"
    return f"{body}|{_node_sig(secret, body)}"


def verify_node_token(secret: bytes, token: str, *, now: float | None = None) -> str:
    """The node id a valid, unexpired node token speaks for; AuthError otherwise."""
    parts = (token or "").rsplit("|", 2)  # the node id may hold a '|' itself
    node_id, expiry, sig = parts if len(parts) == 3 else ("", "", "")
    if not node_id or not expiry.isdigit() or not sig or len(token) > 512:
        raise AuthError("node token is malformed", code="token_malformed")
    if not hmac.compare_digest(sig, _node_sig(secret, f"{node_id}|{expiry}")):
        raise AuthError("node token signature is wrong", code="token_invalid")
    if int(expiry) < (time.time() if now is None else now):
        raise AuthError("node token has expired", code="token_expired")
    return node_id


def _node_sig(secret: bytes, body: str) -> str:
    return hmac.new(secret, _TOKEN_TAG + body.encode(), hashlib.sha256).hexdigest()


def node_forwarded(request: web.Request, secret: bytes) -> bool:
    """True when another node of this cluster forwarded `request` (valid node token)."""
    token = request.headers.get(NODE_TOKEN_HEADER)
    if not token:
        return False
    try:
        verify_node_token(secret, token)
    except AuthError:
        return False
    return True


# --- placement (pure) -----------------------------------------------------------------------
def rank_edges(
    nodes: Iterable[NodeInfo],
    sid: str,
    *,
    pending: Mapping[str, int] | None = None,
    capacity: int = 500,
    exclude: Iterable[str] = (),
) -> list[NodeInfo]:
    """Live edges best first: least loaded (counting placements not yet in a heartbeat),
    preferring edges that carry `sid` already; full edges (load ≥ 1) last; ties at random."""
    pending, skip = pending or {}, set(exclude)

    def score(node: NodeInfo) -> tuple[bool, float, float]:
        load = node.load + pending.get(node.id, 0) / capacity
        if sid not in node.lectures:
            load += CARRY_PENALTY
        return (load >= 1.0 + CARRY_PENALTY, load, random.random())

    return sorted((n for n in nodes if n.role == "edge" and n.id not in skip), key=score)


def pick_source(nodes: Iterable[NodeInfo], sid: str, own_id: str) -> NodeInfo | None:
    """Where an edge pulls `sid` from by default: the origin carrying it, else any origin."""
    origins = [n for n in nodes if n.role in ("origin", "all") and n.id != own_id]
    carrying = [n for n in origins if sid in n.lectures]
    return next(iter(carrying or origins), None)


# --- ports ----------------------------------------------------------------------------------
def first_free_port(
    low: int, high: int, kind: int, host: str = "0.0.0.0", also_tcp: bool = False
) -> int:
    """The first port of [low, high] that `host` can bind now (TCP or UDP; `also_tcp`: a
    UDP port whose TCP twin is free too, for ICE-TCP on the media port)."""
    kinds = (kind, socket.SOCK_STREAM) if also_tcp and kind != socket.SOCK_STREAM else (kind,)
    for port in range(low, high + 1):
        if all(_bindable(host, port, k) for k in kinds):
            return port
    raise OSError(f"no free port in {low}-{high}")


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def resolve_ports(config: Config) -> Config:
    """Choose the HTTP and media ports from their ranges, when ranges are configured (so
    `docker compose up --scale edge=N` on the host network gives each edge its own ports)."""
    if config.http_ports:
        port = first_free_port(*config.http_ports, socket.SOCK_STREAM, config.host)
        config = dataclasses.replace(config, port=port)
    if config.media_ports:
        port = first_free_port(
            *config.media_ports, socket.SOCK_DGRAM, config.media_host, also_tcp=config.media_tcp
        )
        config = dataclasses.replace(config, media_port=port)
    return config


def node_url(config: Config) -> str:
    """Where other nodes reach this node's HTTP: LOPSO_NODE_URL (its port defaults to the
    bound one), else the announced address (or this host's) and the bound port."""
    if config.node_url:  # without a port: the one bound (it may come from LOPSO_HTTP_PORTS)
        url = URL(config.node_url.rstrip("/"))
        return str(url if url.explicit_port else url.with_port(config.port))
    host = config.host
    if host in ("0.0.0.0", "::", "") and config.announce:
        host = config.announce[0]  # host networking: the address viewers reach reaches nodes too
    elif host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if config.tls else 'http'}://{host}:{config.port}"


# --- the node's cluster side ----------------------------------------------------------------
class Cluster:
    """Heartbeat, placement bookkeeping, relay links of one node (cluster mode only)."""

    def __init__(self, config: Config, store_of: Callable[[], Any], engine_of: Callable[[], Any]):
        self.config = config
        self.url = node_url(config)
        self._store_of, self._engine_of = store_of, engine_of
        self.links: dict[str, RelayLink] = {}
        self.relays: dict[str, Any] = {}  # rid -> media Viewer serving another node's link
        self.http: aiohttp.ClientSession | None = None
        self._pending: dict[str, tuple[float, int]] = {}  # node -> (heartbeat at, placements)
        self._down: dict[str, float] = {}  # node -> until
        self._nodes: tuple[float, list[NodeInfo]] = (-NODES_CACHE_S, [])  # (read at, nodes)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def role(self) -> str:
        return self.config.role

    @property
    def node_id(self) -> str:
        return self.config.node_id

    def token(self) -> str:
        return mint_node_token(self.config.secret, self.node_id)

    def headers(self, **extra: str) -> dict[str, str]:
        return {NODE_TOKEN_HEADER: self.token(), **extra}

    async def start(self) -> None:
        self.write_node_file()
        timeout = aiohttp.ClientTimeout(total=10, sock_connect=2)
        self.http = aiohttp.ClientSession(timeout=timeout)
        self._tasks = [
            asyncio.create_task(self._beat_forever()),
            asyncio.create_task(self._sweep_forever()),
        ]

    def write_node_file(self) -> None:
        """data/node.json: this node's id, role and URL, for health checks (its port may have
        been picked from a range at startup)."""
        body = {"id": self.node_id, "role": self.role, "url": self.url}
        path = self.config.data_dir / NODE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body), encoding="utf-8")
        tmp.replace(path)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(self.links.values()):
            await link.stop()
        self.links.clear()
        if self.http is not None:
            await self.http.close()

    # heartbeat ----------------------------------------------------------------------------
    def node_info(self) -> NodeInfo:
        """This node as placement sees it: viewers (relay viewers too), lectures carried."""
        engine = self._engine_of()
        lectures = dict(getattr(engine, "lectures", {}) or {})
        viewers = sum(len(lecture.viewers) for lecture in lectures.values())
        if self.role == "edge":
            carried = [sid for sid, link in self.links.items() if link.connected]
        else:
            carried = [sid for sid, lecture in lectures.items() if lecture.publisher is not None]
        cfg = self.config
        return NodeInfo(
            id=cfg.node_id,
            role=cfg.role,
            http_url=self.url,
            media_host=cfg.announce[0] if cfg.announce else cfg.media_host,
            media_port=engine.port if engine is not None else cfg.media_port,
            load=viewers / cfg.node_capacity,
            viewers=viewers,
            lectures=tuple(sorted(carried)),
            at=time.time(),
        )

    async def beat(self) -> NodeInfo:
        info = self.node_info()
        await self._store_of().heartbeat(info, ttl_s=NODE_TTL_S)
        return info

    async def _beat_forever(self) -> None:
        """Beat every HEARTBEAT_S, and sooner when the viewer count moved by a few percent of
        capacity (placement elsewhere then sees a join storm within BEAT_CHECK_S)."""
        last: NodeInfo | None = None
        step = max(3, self.config.node_capacity // 50)
        while True:
            if last is None or _changed(last, self.node_info(), step):
                try:
                    last = await self.beat()
                except Exception:
                    log.exception("node heartbeat failed", extra={"node": self.node_id})
            await asyncio.sleep(BEAT_CHECK_S)

    # placement ----------------------------------------------------------------------------
    async def nodes(self) -> list[NodeInfo]:
        """Live nodes, minus those this node saw refuse a connection lately. The list is read
        from the store at most every NODES_CACHE_S (a join storm is one read, not thousands)."""
        now = time.monotonic()
        if now - self._nodes[0] >= NODES_CACHE_S:
            self._nodes = (now, await self._store_of().nodes())
        self._down = {k: until for k, until in self._down.items() if until > now}
        return [n for n in self._nodes[1] if n.id not in self._down]

    async def rank(self, sid: str) -> list[NodeInfo]:
        """Edges for a viewer of `sid`, best first (this node's own entry kept fresh)."""
        nodes = [n for n in await self.nodes() if n.id != self.node_id]
        if self.role == "edge":
            nodes.append(self.node_info())
        pending = {}
        for node in nodes:
            at, count = self._pending.get(node.id, (0.0, 0))
            pending[node.id] = count if at == node.at else 0
        return rank_edges(nodes, sid, pending=pending, capacity=self.config.node_capacity)

    def placed(self, node: NodeInfo) -> None:
        """Count a viewer sent to `node` until its next heartbeat reports it."""
        at, count = self._pending.get(node.id, (node.at, 0))
        self._pending[node.id] = (node.at, count + 1 if at == node.at else 1)

    def mark_down(self, node_id: str) -> None:
        self._down[node_id] = time.monotonic() + DOWN_FOR_S

    async def node(self, node_id: str) -> NodeInfo | None:
        return next((n for n in await self._store_of().nodes() if n.id == node_id), None)

    async def source_url(self, sid: str) -> str | None:
        """Where this edge pulls `sid` from: LOPSO_UPSTREAM_URL, else the origin."""
        if self.config.upstream_url:
            return self.config.upstream_url.rstrip("/")
        source = pick_source(await self.nodes(), sid, self.node_id)
        return None if source is None else source.http_url

    # relay links --------------------------------------------------------------------------
    def want(self, lecture: Any) -> None:
        """An edge needs `lecture` from its source: pull it unless a link already does."""
        if self.role != "edge":
            return
        lecture.on_live = None  # the origin announces live; an edge's link state is not news
        link = self.links.get(lecture.id)
        if link is None or link.lecture is not lecture:
            self.links[lecture.id] = RelayLink(self, lecture)
        else:
            link.idle_since = None

    async def sweep(self) -> None:
        """Drop links whose last viewer left LINK_LINGER_S ago, or whose lecture closed."""
        now = time.monotonic()
        for sid, link in list(self.links.items()):
            if link.lecture.closed:
                idle = True
            elif link.lecture.viewers:
                link.idle_since, idle = None, False
            else:
                link.idle_since = link.idle_since or now
                idle = now - link.idle_since >= LINK_LINGER_S
            if idle and self.links.get(sid) is link:
                del self.links[sid]
                await link.stop()
                log.info("relay link dropped", extra={"sid": sid})

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("relay sweep failed", extra={"node": self.node_id})


def _changed(last: NodeInfo, now: NodeInfo, step: int) -> bool:
    """A heartbeat is due: HEARTBEAT_S passed, viewers moved by `step`, or lectures changed."""
    return (
        now.at - last.at >= HEARTBEAT_S
        or abs(now.viewers - last.viewers) >= step
        or now.lectures != last.lectures
    )


class RelayLink:
    """An edge's pull of one lecture from its source, kept alive until stopped."""

    def __init__(self, cluster: Cluster, lecture: Any) -> None:
        self.cluster = cluster
        self.lecture = lecture
        self.sid: str = lecture.id
        self.publisher: Any = None
        self.resource: str | None = None  # the source's URL of our relay viewer
        self.connected = False
        self.pulls = 0
        self.idle_since: float | None = None
        self._stopped = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        delay = BACKOFF[0]
        while not self._stopped:
            started = time.monotonic()
            try:
                await self._pull_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("relay link failed", extra={"sid": self.sid, "error": repr(exc)})
            await self._teardown()
            if self._stopped:
                return
            if time.monotonic() - started > 10 * BACKOFF[1]:
                delay = BACKOFF[0]  # it lived a while: start over quickly
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(2 * delay, BACKOFF[1])

    async def _pull_once(self) -> None:
        source = await self.cluster.source_url(self.sid)
        if source is None:
            raise RelayError(f"no live origin carries {self.sid}")
        gone = asyncio.Event()
        self.publisher = await self.lecture.relay_from(self._signal(source))
        self.publisher.on_close = lambda _publisher: gone.set()
        self.connected, self.pulls = True, self.pulls + 1
        log.info("relay link up", extra={"sid": self.sid, "source": source, "pulls": self.pulls})
        misses = 0
        while not gone.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), LINK_PROBE_S)
            alive = await self._probe()
            if alive is False:
                raise RelayError("the source no longer knows this link (it restarted?)")
            misses = 0 if alive else misses + 1
            if misses >= LINK_MISSES:
                raise RelayError("the source does not answer")
        raise RelayError("the link's transport closed")

    def _signal(self, source: str) -> Callable[[str], Awaitable[str]]:
        async def signal(offer: str) -> str:
            http = self.cluster.http
            assert http is not None
            url = f"{source}/relay/{self.sid}"
            headers = self.cluster.headers(**{"Content-Type": "application/sdp"})
            async with http.post(url, data=offer, headers=headers) as reply:
                body = await reply.text()
                if reply.status != 201:
                    raise RelayError(f"{url} answered {reply.status}: {body[:200]}")
                self.resource = str(reply.url.join(URL(reply.headers["Location"])))
            return body

        return signal

    async def _probe(self) -> bool | None:
        """True: the source knows our link; False: it does not (404); None: no answer."""
        http = self.cluster.http
        if http is None or self.resource is None:
            return None
        try:
            timeout = aiohttp.ClientTimeout(total=LINK_PROBE_S)
            async with http.get(
                self.resource, headers=self.cluster.headers(), timeout=timeout
            ) as reply:
                if reply.status == 404:
                    return False
                return True if reply.status == 200 else None  # a 5xx is a miss, not a verdict
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _teardown(self) -> None:
        self.connected = False
        publisher, self.publisher = self.publisher, None
        resource, self.resource = self.resource, None
        if publisher is not None:
            await publisher.close()
        if resource is not None and self.cluster.http is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.cluster.http.delete(
                    resource, headers=self.cluster.headers(), timeout=aiohttp.ClientTimeout(total=1)
                ):
                    pass

    async def stop(self) -> None:
        """Stop pulling and close the link (idempotent)."""
        self._stopped = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._teardown()


# --- wiring ---------------------------------------------------------------------------------
CLUSTER = web.AppKey("cluster", Cluster)


def install(
    app: web.Application, config: Config, store_of: Callable[[], Any], engine_of: Callable[[], Any]
) -> Cluster:
    """Put a Cluster on `app` (started after the store and media engine) and the /relay routes."""
    from server.routes import relay

    cluster = Cluster(config, store_of, engine_of)
    app[CLUSTER] = cluster

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await cluster.start()
        try:
            yield
        finally:
            await cluster.close()

    async def name_node(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith("/whep/") and NODE_HEADER not in response.headers:
            response.headers[NODE_HEADER] = cluster.node_id  # which node serves this viewer
            response.headers[NODE_URL_HEADER] = cluster.url

    app.cleanup_ctx.append(ctx)
    app.on_response_prepare.append(name_node)
    relay.add_routes(app)
    return cluster
