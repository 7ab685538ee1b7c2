"""A LopSo cluster for tests: a private redis-server, an origin and edges as `lopso serve`
processes, a WHIP publisher (aiortc, numbered frames) and simulated sites (scripts/loadgen.py).

    with LopsoCluster(tmp_path, edges=2) as cluster:
        cluster.origin.url, [e.url for e in cluster.edges], cluster.demo
        cluster.edges[0].kill()          # kill -9
        cluster.restart_origin()         # SIGTERM (crash=True: kill -9), start on the same ports
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.mediaclip import NumberedVideoTrack, ToneAudioTrack
from tests.redisproc import RedisProcess
from tests.serverproc import LopsoServer

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str) -> Any:
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"lopso_script_{name}", ROOT / "scripts" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class LopsoCluster:
    """Redis + origin (with a demo class of `sites` sites) + `edges` edges, on loopback."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        edges: int = 2,
        sites: int = 20,
        capacity: int = 20,
        env: dict[str, str] | None = None,
        upstreams: dict[int, int] | None = None,
    ) -> None:
        """`upstreams` {i: j}: edge i pulls from edge j (a tree), not from the origin."""
        self.upstreams = upstreams or {}
        self.dir = Path(tmp_path)
        self.redis = RedisProcess(self.dir / "redis")
        self.n_edges, self.sites, self.capacity = edges, sites, capacity
        self.env = env or {}
        self.origin: LopsoServer = None  # type: ignore[assignment]
        self.edges: list[LopsoServer] = []

    def _env(self) -> dict[str, str]:
        return {
            "LOPSO_NODE_CAPACITY": str(self.capacity),
            "LOPSO_SIGNALLING_RATE": "0",
            "LOPSO_WS_PER_ADDR": "0",  # simulated sites all come from 127.0.0.1
            "LOPSO_LOG_LEVEL": "INFO",
            **self.env,
        }

    def _node(self, name: str, role: str, demo_sites: int, env: dict[str, str]) -> LopsoServer:
        return LopsoServer(
            self.dir / name,
            demo_sites=demo_sites,
            extra_args=["--role", role, "--redis-url", self.redis.url],
            env={**self._env(), "LOPSO_NODE_ID": name, **env},
        )

    def start(self) -> None:
        self.redis.start()
        self.origin = self._node("origin", "origin", self.sites, {})
        self.origin.start()
        for i in range(self.n_edges):
            self.edges.append(self._node(f"edge{i + 1}", "edge", 0, {}))
        for i, j in self.upstreams.items():
            self.edges[i].extra_args += ["--upstream-url", self.edges[j].url]
        for edge in self.edges:
            edge.start()

    async def nodes(self) -> dict[str, Any]:
        """The cluster's heartbeats as Redis holds them, by node id."""
        from server.store import open_store

        store = await open_store(self.redis.url, self.dir / "reader", "reader")
        try:
            return {n.id: n for n in await store.nodes()}
        finally:
            await store.close()

    @property
    def demo(self) -> dict[str, Any]:
        return self.origin.demo

    @property
    def urls(self) -> list[str]:
        return [self.origin.url] + [e.url for e in self.edges]

    def restart_origin(self, crash: bool = False) -> None:
        """Stop the origin (SIGTERM, or kill -9 with `crash`) and start it again on the same
        ports, without a new demo class."""
        if crash:
            self.origin.kill()
        else:
            self.origin.stop()
        self.origin.demo_sites = 0
        self.origin.start()

    def stop(self) -> None:
        for node in [*self.edges, self.origin]:
            if node is not None:
                node.stop()
        self.redis.kill()

    def logs(self) -> str:
        return "\n".join(
            f"===== {n.dir.name}\n{n.log()[-6000:]}"
            for n in [self.origin, *self.edges]
            if n is not None
        )

    def __enter__(self) -> LopsoCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WhipPublisher:
    """An aiortc lecturer publishing numbered VP8 frames and a tone through WHIP."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.pc: RTCPeerConnection | None = None
        self.location = ""

    async def publish(self, whip_url: str, token: str) -> None:
        """(Re)publish: a new peer connection and a new WHIP POST, as the studio page does."""
        await self.close()
        pc = self.pc = RTCPeerConnection()
        pc.addTransceiver(NumberedVideoTrack(), direction="sendonly")
        pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
        async with self.http.post(whip_url, data=pc.localDescription.sdp, headers=headers) as reply:
            body = await reply.text()
            assert reply.status == 201, (reply.status, body)
            self.location = reply.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            self.pc = None
