"""Cluster mode: node tokens, placement, relay links, and one lecture across processes.

The integration test runs a real redis-server, an origin and two edges as `lopso serve`
processes, an aiortc lecturer publishing through WHIP to the origin, and 20 simulated sites
(scripts/loadgen.py: non-decoding WHEP viewers + the site page's WebSocket) entering through
any node. Then: kill -9 of an edge, and a restart of the origin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.cluster import (
    CARRY_PENALTY,
    HEARTBEAT_S,
    NODE_TOKEN_HEADER,
    _changed,
    first_free_port,
    mint_node_token,
    node_url,
    pick_source,
    rank_edges,
    verify_node_token,
)
from server.config import load_config
from server.errors import AuthError
from server.models import ClassSession, NodeInfo, Role
from tests import redisproc
from tests.clusterproc import LopsoCluster, WhipPublisher, load_script
from tests.redisproc import RedisProcess
from tests.serverproc import SECRET as SERVER_SECRET
from tests.serverproc import mint, running_app

SECRET = b"cluster-secret-0123456789"


def node(
    node_id: str, role: str = "edge", load: float = 0.0, lectures: tuple[str, ...] = ()
) -> NodeInfo:
    return NodeInfo(
        id=node_id,
        role=role,
        http_url=f"http://{node_id}",
        media_host="127.0.0.1",
        media_port=1,
        load=load,
        viewers=int(load * 100),
        lectures=lectures,
        at=1.0,
    )


# --- node tokens ------------------------------------------------------------------------------
def test_node_token_names_its_node_until_it_expires() -> None:
    token = mint_node_token(SECRET, "edge-7", ttl_s=60, now=1000)
    assert verify_node_token(SECRET, token, now=1059) == "edge-7"
    odd = mint_node_token(SECRET, "rack|3", ttl_s=60, now=1000)
    assert verify_node_token(SECRET, odd, now=1001) == "rack|3"
    with pytest.raises(AuthError, match="expired"):
        verify_node_token(SECRET, token, now=1061)


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t.replace("edge-7", "edge-8"),  # another node's name on this signature
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # a flipped signature digit
        lambda t: "",
        lambda t: "edge-7|notanumber|00",
    ],
)
def test_forged_node_tokens_are_refused(forge: Callable[[str], str]) -> None:
    token = mint_node_token(SECRET, "edge-7", ttl_s=60, now=1000)
    with pytest.raises(AuthError):
        verify_node_token(SECRET, forge(token), now=1001)


def test_a_viewer_token_is_no_node_token() -> None:
    viewer = mint(Role.ADMIN)
    with pytest.raises(AuthError):
        verify_node_token(SECRET, viewer)


# --- placement --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "nodes, pending, best",
    [
        ([node("a", load=0.5), node("b", load=0.2)], {}, "b"),  # least loaded
        ([node("a", load=0.15, lectures=("c1",)), node("b", load=0.1)], {}, "a"),  # carries c1
        ([node("a", load=0.4, lectures=("c1",)), node("b", load=0.1)], {}, "b"),  # too loaded
        ([node("a", load=0.1), node("b", load=0.1)], {"a": 30}, "b"),  # a's placements in flight
        ([node("a", load=1.2, lectures=("c1",)), node("b", load=0.9)], {}, "b"),  # a is full
        ([node("o", role="origin"), node("b", load=0.9)], {}, "b"),  # viewers go to edges only
    ],
)
def test_rank_edges(nodes: list[NodeInfo], pending: dict[str, int], best: str) -> None:
    ranked = rank_edges(nodes, "c1", pending=pending, capacity=100)
    assert ranked[0].id == best
    assert all(n.role == "edge" for n in ranked)


def test_rank_edges_spreads_a_burst_by_counting_placements() -> None:
    nodes, pending = [node("a"), node("b")], {"a": 0, "b": 0}
    for _ in range(20):
        pending[rank_edges(nodes, "c1", pending=pending, capacity=100)[0].id] += 1
    assert pending == {"a": 10, "b": 10}
    assert CARRY_PENALTY > 0


@pytest.mark.parametrize(
    "change, due",
    [
        ({}, False),
        ({"at": 1.0 + HEARTBEAT_S}, True),  # time for the regular beat
        ({"viewers": 12}, False),  # a couple of viewers more: wait for the beat
        ({"viewers": 13}, True),  # a join storm: tell placement now
        ({"lectures": ("c1",)}, True),  # a link came up
    ],
)
def test_heartbeat_is_sent_early_when_load_or_lectures_change(
    change: dict[str, Any], due: bool
) -> None:
    last = node("e1", load=0.1)  # 10 viewers, at=1.0
    assert _changed(last, dataclasses.replace(last, **change), step=3) is due


def test_pick_source_prefers_the_origin_carrying_the_class() -> None:
    nodes = [node("o1", role="origin"), node("o2", role="origin", lectures=("c1",)), node("e1")]
    assert pick_source(nodes, "c1", "e1").id == "o2"  # type: ignore[union-attr]
    assert pick_source(nodes, "c9", "e1").id == "o1"  # type: ignore[union-attr]
    assert pick_source([node("e2")], "c1", "e1") is None


@pytest.mark.parametrize(
    "settings, url",
    [
        ({"node_url": "http://10.0.0.5:9000/"}, "http://10.0.0.5:9000"),
        ({"node_url": "http://10.0.0.5"}, "http://10.0.0.5:8123"),  # the port bound
        ({"host": "0.0.0.0", "announce": "203.0.113.7"}, "http://203.0.113.7:8123"),
        ({"host": "127.0.0.1"}, "http://127.0.0.1:8123"),
    ],
)
def test_node_url(settings: dict[str, str], url: str, tmp_path: Path) -> None:
    config = load_config({"data_dir": tmp_path, "port": 8123, **settings}, env={})
    assert node_url(config) == url


def test_first_free_port_skips_busy_ports() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        chosen = first_free_port(port, port + 5, socket.SOCK_DGRAM, "127.0.0.1")
        assert port < chosen <= port + 5
    with pytest.raises(OSError):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
            busy.bind(("127.0.0.1", 0))
            port = busy.getsockname()[1]
            first_free_port(port, port, socket.SOCK_DGRAM, "127.0.0.1")


def test_a_media_port_needs_its_tcp_twin_free_for_ice_tcp() -> None:
    with socket.socket() as busy:  # a TCP listener holds the port number, UDP is free
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert first_free_port(port, port + 5, socket.SOCK_DGRAM, "127.0.0.1") == port
        chosen = first_free_port(port, port + 5, socket.SOCK_DGRAM, "127.0.0.1", also_tcp=True)
        assert port < chosen <= port + 5


# --- one lecture across processes -------------------------------------------------------------
async def wait_until(
    check: Callable[[], bool], timeout: float, what: str, cluster: LopsoCluster
) -> float:
    """Seconds until `check()` held; fails with the nodes' logs after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout} s\n{cluster.logs()}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def attendance(http: aiohttp.ClientSession, url: str, sid: str) -> dict[str, dict]:
    token = mint(Role.MODERATOR, sid)
    async with http.get(
        f"{url}/api/sessions/{sid}/attendance", headers={"Authorization": f"Bearer {token}"}
    ) as reply:
        assert reply.status == 200, await reply.text()
        return {s["code"]: s for s in (await reply.json())["sites"]}


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_one_lecture_over_an_origin_and_two_edges_survives_an_edge_and_the_origin(
    tmp_path: Path,
) -> None:
    loadgen = load_script("loadgen")
    with LopsoCluster(tmp_path, edges=2, sites=20, capacity=20) as cluster:
        demo = cluster.demo
        sid = demo["session_id"]
        links = loadgen.links_from_json(demo)
        assert len(links) == 20
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            publisher = WhipPublisher(http)
            await publisher.publish(f"{cluster.origin.url}/whip/{sid}", demo["lecturer"]["token"])
            sites = [
                loadgen.SimSite(link, cluster.urls, http, first_entry=i)
                for i, link in enumerate(links)
            ]
            try:
                for site in sites:
                    site.start()
                await wait_until(
                    lambda: all(s.playing() for s in sites), 40, "all 20 sites playing", cluster
                )
                on = {
                    e.dir.name: [s for s in sites if s.node_id == e.dir.name] for e in cluster.edges
                }
                assert sum(len(v) for v in on.values()) == 20, [s.node_id for s in sites]
                assert all(len(v) >= 4 for v in on.values()), {k: len(v) for k, v in on.items()}
                await asyncio.sleep(1.5)  # the WebSockets' joins reach the ledger

                # kill -9 one edge: its sites play again on the other within 10 s
                victim, survivor = cluster.edges
                moved = on[victim.dir.name]
                packets = {s.link.code: s.packets for s in moved}
                victim.kill()
                took = await wait_until(
                    lambda: all(
                        s.playing(1.0)
                        and s.node_id == survivor.dir.name
                        and s.packets > packets[s.link.code]
                        for s in moved
                    ),
                    10,
                    "the killed edge's sites playing on the other edge",
                    cluster,
                )
                assert all(s.playing() for s in sites)
                print(f"edge kill -9: {len(moved)} sites playing again in {took:.1f} s")

                # one record per site; a rejoin for each moved site (the ledger is written by
                # the nodes' WebSocket handlers, so give the last joins a moment to land)
                want = {s.link.code: 1 if s in moved else 0 for s in sites}
                deadline = time.monotonic() + 8
                while True:
                    records = await attendance(http, cluster.origin.url, sid)
                    rejoins = {code: r["rejoins"] for code, r in records.items()}
                    if rejoins == want or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                assert len(records) == 20
                assert all(r["first_join"] is not None for r in records.values())
                assert rejoins == want

                # the origin crashes and restarts: the lecturer republishes, viewers play again
                restarted = time.monotonic()
                await asyncio.to_thread(cluster.restart_origin, crash=True)
                print(f"origin back (healthy) {time.monotonic() - restarted:.1f} s after kill -9")
                for _ in range(50):
                    try:
                        await publisher.publish(
                            f"{cluster.origin.url}/whip/{sid}", demo["lecturer"]["token"]
                        )
                        break
                    except (aiohttp.ClientError, AssertionError):
                        await asyncio.sleep(0.3)
                marks = {s.link.code: s.packets for s in sites}
                await wait_until(
                    lambda: all(
                        s.packets > marks[s.link.code] + 50 and s.playing(1.0) for s in sites
                    ),
                    30 - (time.monotonic() - restarted),
                    "all sites playing after the origin restarted",
                    cluster,
                )
                print(
                    f"origin restart: all sites playing {time.monotonic() - restarted:.1f} s "
                    "after it was killed"
                )
                assert all(s.reconnects == (1 if s in moved else 0) for s in sites)
            finally:
                for site in sites:
                    await site.stop()
                await publisher.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_an_edge_pulls_from_another_edge_and_links_drop_when_the_last_viewer_leaves(
    tmp_path: Path,
) -> None:
    loadgen = load_script("loadgen")
    with LopsoCluster(tmp_path, edges=2, sites=6, capacity=2, upstreams={1: 0}) as cluster:
        demo, sid = cluster.demo, cluster.demo["session_id"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            publisher = WhipPublisher(http)
            await publisher.publish(f"{cluster.origin.url}/whip/{sid}", demo["lecturer"]["token"])
            sites = [
                loadgen.SimSite(link, [cluster.origin.url], http)
                for link in loadgen.links_from_json(demo)
            ]
            try:
                for site in sites:
                    site.start()
                    await asyncio.sleep(0.2)
                await wait_until(
                    lambda: all(s.playing() for s in sites), 30, "all 6 sites playing", cluster
                )
                served = {s.node_id for s in sites}
                assert served == {"edge1", "edge2"}, [s.node_id for s in sites]
                await asyncio.sleep(2.5)  # a heartbeat with the links in it
                nodes = await cluster.nodes()
                edge1_sites = sum(s.node_id == "edge1" for s in sites)
                assert nodes["origin"].viewers == 1  # only edge1 pulls from the origin
                assert nodes["edge1"].viewers == edge1_sites + 1  # its sites + edge2's link
                assert sid in nodes["edge1"].lectures and sid in nodes["edge2"].lectures
            finally:
                for site in sites:
                    await site.stop()

            # the last viewer left: links linger 5 s, then both edges let go
            async def dropped() -> bool:
                nodes = await cluster.nodes()
                return nodes["origin"].viewers == 0 and not nodes["edge2"].lectures

            start = time.monotonic()
            while not await dropped():
                assert time.monotonic() - start < 15, f"links not dropped\n{cluster.logs()}"
                await asyncio.sleep(0.5)
            await publisher.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_whip_through_an_edge_reaches_the_origin_and_the_cluster_outlives_a_redis_restart(
    tmp_path: Path,
) -> None:
    from media.loadviewer import LoadViewer

    loadgen = load_script("loadgen")
    with LopsoCluster(tmp_path, edges=1, sites=2) as cluster:
        demo, sid = cluster.demo, cluster.demo["session_id"]
        edge = cluster.edges[0]
        links = loadgen.links_from_json(demo)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            publisher = WhipPublisher(http)
            await publisher.publish(f"{edge.url}/whip/{sid}", demo["lecturer"]["token"])
            assert publisher.location.startswith(f"/whip/{sid}/origin.")  # the origin took it
            first = loadgen.SimSite(links[0], [cluster.origin.url], http)
            second = loadgen.SimSite(links[1], [cluster.origin.url], http)
            try:
                first.start()
                await wait_until(first.playing, 20, "a site playing", cluster)
                assert first.node_id == "edge1"

                await asyncio.to_thread(cluster.redis.restart)  # kill -9, AOF reloaded
                await asyncio.sleep(2 * 2.0 + 0.5)  # a heartbeat round after the restart
                assert set(await cluster.nodes()) == {"origin", "edge1"}
                second.start()
                await wait_until(
                    second.playing, 20, "a site joining after Redis restarted", cluster
                )
                assert second.node_id == "edge1" and first.playing() and first.reconnects == 0

                # a viewer's DELETE through the origin reaches the edge serving it
                viewer = LoadViewer()
                await viewer.start()
                try:
                    location = await viewer.whep(
                        http, cluster.origin.url + links[1].whep_path, links[1].token
                    )
                    assert location.startswith(f"{cluster.origin.url}/whep/{sid}/")
                    assert location.split("/")[-1].startswith("edge1.")
                    site_token = {"Authorization": f"Bearer {links[1].token}"}
                    async with http.delete(location, headers=site_token) as reply:
                        assert reply.status == 200, await reply.text()
                    async with http.delete(location, headers=site_token) as reply:
                        assert reply.status == 404
                finally:
                    await viewer.close()

                # the lecturer's DELETE through the edge reaches the origin
                token = {"Authorization": f"Bearer {demo['lecturer']['token']}"}
                async with http.delete(edge.url + publisher.location, headers=token) as reply:
                    assert reply.status == 200, await reply.text()
                async with http.delete(edge.url + publisher.location, headers=token) as reply:
                    assert reply.status == 404
            finally:
                await first.stop()
                await second.stop()
                await publisher.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_an_edge_records_its_viewers_media_in_the_shared_ledger(tmp_path: Path) -> None:
    """The page's WebSocket is on the origin, its viewer on the edge: the edge appends the
    site's media_up / media_down to the shared store, the origin's report counts them, and the
    relay link between the nodes writes nothing. Before: no media events at all."""
    from server.models import EventKind
    from server.store import open_store

    loadgen = load_script("loadgen")
    with LopsoCluster(tmp_path, edges=1, sites=2) as cluster:
        demo, sid = cluster.demo, cluster.demo["session_id"]
        links = loadgen.links_from_json(demo)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            publisher = WhipPublisher(http)
            await publisher.publish(f"{cluster.origin.url}/whip/{sid}", demo["lecturer"]["token"])
            site = loadgen.SimSite(links[0], [cluster.origin.url], http)
            try:
                site.start()
                await wait_until(site.playing, 20, "a site playing", cluster)
                assert site.node_id == "edge1"
                await asyncio.sleep(3)
            finally:
                await site.stop()  # its DELETE through the origin reaches the edge
                await publisher.close()
            store = await open_store(cluster.redis.url, tmp_path / "reader", "reader")
            try:
                kinds = [EventKind.MEDIA_UP, EventKind.MEDIA_DOWN]
                deadline = time.monotonic() + 10
                while len(events := await store.events(sid, kinds=kinds)) < 2:
                    assert time.monotonic() < deadline, events
                    await asyncio.sleep(0.2)
            finally:
                await store.close()
            assert [e.kind for e in events] == kinds, events
            assert {(e.site_code, e.node) for e in events} == {(links[0].code, "edge1")}
            assert events[0].data["conn"] == events[1].data["conn"]
            record = (await attendance(http, cluster.origin.url, sid))[links[0].code]
            assert record["basis"] == "media" and len(record["intervals"]) == 1, record
            assert not record["intervals"][0]["open"]
            assert record["intervals"][0]["seconds"] > 2.5, record


# --- the /relay routes, in-process --------------------------------------------------------------
redis_module = redisproc.redis_module  # one private redis-server for this module's app tests


async def test_relay_routes_take_node_tokens_only(
    tmp_path: Path, redis_module: RedisProcess
) -> None:
    from media.loadviewer import LoadViewer

    settings = {"redis_url": redis_module.url, "role": "origin", "node_id": "o1"}
    async with running_app(tmp_path, media=True, **settings) as (client, state):
        session = ClassSession(id=f"c-{uuid.uuid4().hex[:6]}", title="t", starts_at=time.time())
        await state.store.put_session(session)
        viewer = LoadViewer()
        await viewer.start()
        offer = viewer.offer()
        sdp = {"Content-Type": "application/sdp"}
        url = f"/relay/{session.id}"
        try:
            for headers in (
                {},
                {"Authorization": f"Bearer {mint(Role.ADMIN)}"},
                {NODE_TOKEN_HEADER: mint_node_token(b"another-secret-0123456", "x")},
            ):
                reply = await client.post(url, data=offer, headers={**sdp, **headers})
                assert reply.status == 401, await reply.text()
            node = {NODE_TOKEN_HEADER: mint_node_token(SERVER_SECRET.encode(), "e1")}
            reply = await client.post(url, data=offer, headers={**sdp, **node})
            assert reply.status == 201, await reply.text()
            location = reply.headers["Location"]
            assert location.startswith(f"/relay/{session.id}/o1.")
            await viewer.connect(await reply.text())
            assert (await client.get(location, headers=node)).status == 200
            assert (await client.get(location)).status == 401
            assert (await client.delete(location, headers=node)).status == 200
            assert (await client.get(location, headers=node)).status == 404
            await state.store.put_session(dataclasses.replace(session, ended_at=time.time()))
            reply = await client.post(url, data=offer, headers={**sdp, **node})
            assert reply.status == 409 and (await reply.json())["error"]["code"] == "class_ended"
        finally:
            await viewer.close()


# --- the moderator wall's counters with two nodes taking check-ins at once ---------------------
class Wall:
    """A moderator page's WebSocket on one node: the check-ins it shows per site."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.checkins, self.joins_seen = ws, {}, 0

    async def read(self, until: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            try:
                message = await self.ws.receive_json(timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                return
            for site in (
                message.get("sites", ()) if message["type"] in ("sites", "sites_update") else ()
            ):
                self.checkins[site["code"]] = site["checkins"]


@pytest.mark.timeout(120)
async def test_check_ins_taken_on_two_nodes_at_once_add_up_on_every_wall(tmp_path: Path) -> None:
    """Each node publishes its check-ins as increments: walls on both nodes show the exact
    total, where absolute counts from two nodes overwrote each other (an undercount)."""
    env = {
        "LOPSO_CHECKIN_RATE_SITE": "0",
        "LOPSO_CHECKIN_RATE_ADDR": "0",
        "LOPSO_WS_IDLE_TIMEOUT": "120",  # the walls only listen
    }
    per_node = 60
    with LopsoCluster(tmp_path, edges=1, sites=2, env=env) as cluster:
        sid, site = cluster.demo["session_id"], cluster.demo["sites"][0]
        moderator = cluster.demo["moderator"]["token"]
        async with aiohttp.ClientSession() as http:
            walls = []
            for url in cluster.urls:
                ws = await http.ws_connect(f"{url}/ws/{sid}", params={"token": moderator})
                walls.append(Wall(ws))
            for wall in walls:  # the snapshot: the room is open on both nodes
                await wall.read(lambda w=wall: site["code"] in w.checkins, 10)
                assert wall.checkins[site["code"]] == 0

            async def check_in(url: str, name: str) -> int:
                async with http.post(
                    f"{url}/api/sessions/{sid}/sites/{site['code']}/checkins",
                    json={"name": name},
                    headers={"Authorization": f"Bearer {site['token']}"},
                ) as reply:
                    return reply.status

            statuses = await asyncio.gather(
                *(
                    check_in(url, f"Người {n} {i}")
                    for i in range(per_node)
                    for n, url in enumerate(cluster.urls)
                )
            )
            assert statuses == [201] * (2 * per_node)
            total = 2 * per_node
            for wall in walls:
                await wall.read(lambda w=wall: w.checkins[site["code"]] == total, 15)
            await asyncio.gather(*(wall.read(lambda: False, 2.5) for wall in walls))  # settled
            assert [w.checkins[site["code"]] for w in walls] == [total, total], cluster.logs()
            report = await attendance(http, cluster.origin.url, sid)
            assert report[site["code"]]["checkins"] == total  # the ledger was right all along
            for wall in walls:
                await wall.ws.close()
