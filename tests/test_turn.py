"""TURN for halls without UDP (server/turn.py): credentials a real coturn accepts, refuses when
expired or signed with another secret, and hands out as RFC 9725 Link headers and page config;
a check relayed through coturn reaches a viewer endpoint whose path then reads "turn"."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from serverproc import mint, running_app
from test_api import seed
from test_whip_whep import viewer_offer
from turnproc import TurnProcess

from media import ice
from media.endpoint import MediaSocket
from server.config import ConfigError, load_config
from server.models import Role
from server.turn import IceServer, check_url, credentials, host_of, ice_servers, relay_hosts

SECRET = "turn-secret-0123456789"


def test_credentials_are_coturns_rest_scheme():
    username, password = credentials(SECRET.encode(), "c1.S1", 3600, now=1_800_000_000)
    assert username == "1800003600:c1.S1"
    digest = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    assert password == base64.b64encode(digest).decode()


def test_ice_servers_and_link_headers():
    urls = ("stun:turn.example.org:3478", "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:443?transport=tcp")  # fmt: skip
    stun_server, turn_server = ice_servers(urls, SECRET.encode(), "c1.S1", 60, now=100.0)
    assert stun_server == IceServer(("stun:turn.example.org:3478",))
    assert turn_server.username == "160:c1.S1" and turn_server.credential
    assert turn_server.wire() == {
        "urls": list(urls[1:]),
        "username": "160:c1.S1",
        "credential": turn_server.credential,
    }
    assert stun_server.links() == ['<stun:turn.example.org:3478>; rel="ice-server"']
    assert turn_server.links()[1] == (
        '<turns:turn.example.org:443?transport=tcp>; rel="ice-server"; username="160:c1.S1"; '
        f'credential="{turn_server.credential}"; credential-type="password"'
    )
    assert ice_servers(urls[1:], b"", "x", 60, now=0) == []  # no secret: no TURN


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("turn:203.0.113.5:3478?transport=udp", True),
        ("turns:turn.example.org:443", True),
        ("stun:[2001:db8::1]:3478", True),
        ("http://turn.example.org", False),
        ("turn:", False),
        ('turn:a"b', False),
        ("turn:a b", False),
    ],
)
def test_check_url(url, ok):
    assert (check_url(url) is None) == ok


def test_relay_hosts_resolve_turn_hosts_only():
    assert host_of("turn:[2001:db8::1]:3478?transport=udp") == "2001:db8::1"
    hosts = relay_hosts(
        ["stun:192.0.2.9:3478", "turn:203.0.113.5:3478?transport=udp", "turns:localhost:443"],
        ["198.51.100.20"],
    )
    assert hosts[:2] == ("198.51.100.20", "203.0.113.5")
    assert "127.0.0.1" in hosts and "192.0.2.9" not in hosts


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOPSO_TURN_URLS": "turn:203.0.113.5:3478"}, "LOPSO_TURN_SECRET of at least 16"),
        ({"LOPSO_TURN_SECRET": SECRET}, "needs LOPSO_TURN_URLS"),
        ({"LOPSO_TURN_URLS": "http://x", "LOPSO_TURN_SECRET": SECRET}, "must look like"),
        ({"LOPSO_TURN_RELAY_IPS": "not-an-ip"}, "TURN relay IPs must be IP addresses"),
        ({"LOPSO_TURN_TTL": "5"}, "TURN credential TTL"),
    ],
)
def test_config_refuses_bad_turn_settings(tmp_path: Path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"data_dir": tmp_path}, env=env)


def test_config_reads_turn_settings(tmp_path: Path):
    env = {
        "LOPSO_TURN_URLS": "turn:203.0.113.5:3478?transport=udp, turns:turn.example.org:443",
        "LOPSO_TURN_SECRET": SECRET,
        "LOPSO_TURN_TTL": "600",
        "LOPSO_TURN_RELAY_IPS": "203.0.113.6",
        "LOPSO_MEDIA_TCP": "false",
    }
    config = load_config({"data_dir": tmp_path}, env=env)
    assert config.turn_urls == ("turn:203.0.113.5:3478?transport=udp", "turns:turn.example.org:443")
    assert config.turn_secret == SECRET.encode() and config.turn_ttl_s == 600
    assert config.turn_relay_ips == ("203.0.113.6",) and config.media_tcp is False


# --- a real coturn ------------------------------------------------------------------------


@pytest.fixture
def turn(tmp_path: Path):
    with TurnProcess(tmp_path / "turn", SECRET) as process:
        yield process


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.queue.put_nowait((data, addr))


async def allocate(turn: TurnProcess, username: str, password: str):
    return await asyncio.wait_for(
        create_turn_endpoint(Inbox, ("127.0.0.1", turn.port), username, password, lifetime=600),
        10,
    )


async def test_coturn_accepts_minted_credentials_and_relays_from_its_relay_ip(turn):
    username, password = credentials(SECRET.encode(), "c1.S1", 600, time.time())
    transport, _ = await allocate(turn, username, password)
    try:
        relayed = transport.get_extra_info("sockname")
        assert relayed[0] == turn.relay_ip, turn.tail()
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("secret", "ttl"),
    [(SECRET, -60), ("another-secret-0123456789", 600)],
    ids=["expired", "wrong-secret"],
)
async def test_coturn_refuses_expired_or_foreign_credentials(turn, secret, ttl):
    username, password = credentials(secret.encode(), "c1.S1", ttl, time.time())
    with pytest.raises(stun.TransactionFailed) as failed:
        await allocate(turn, username, password)
    assert failed.value.response.attributes["ERROR-CODE"][0] == 401


async def test_a_check_relayed_by_coturn_reaches_an_endpoint_as_turn(turn):
    sock = MediaSocket(relay_hosts=[turn.relay_ip])
    await sock.start()
    username, password = credentials(SECRET.encode(), "c1.S1", 600, time.time())
    transport, inbox = await allocate(turn, username, password)
    try:
        ufrag, pwd = ice.random_credentials()
        endpoint = sock.endpoint(ufrag, pwd, sock.fingerprint, "actpass")
        txid, check = ice.binding_request(ufrag, endpoint.local_ufrag, endpoint.local_pwd, 7)
        transport.sendto(check, ("127.0.0.1", sock.port))
        data, source = await asyncio.wait_for(inbox.queue.get(), 10)
        assert source == ("127.0.0.1", sock.port)
        answer = ice.parse(data)
        assert ice.is_binding_success(answer, txid, endpoint.local_pwd)
        assert answer.attributes["XOR-MAPPED-ADDRESS"][0] == turn.relay_ip  # what we saw
        assert endpoint.remote_address[0] == turn.relay_ip
        assert endpoint.path == "turn"
    finally:
        transport.close()
        await sock.close()


# --- handed out over HTTP -----------------------------------------------------------------


@pytest.fixture
async def turn_app(tmp_path: Path):
    settings = {
        "turn_urls": "turn:127.0.0.1:3478?transport=udp,turns:127.0.0.1:443?transport=tcp",
        "turn_secret": SECRET,
        "turn_ttl_s": 600,
    }
    async with running_app(tmp_path, media=True, **settings) as (client, state):
        await seed(client)
        yield client, state


def parse_links(values: list[str]) -> list[dict[str, str]]:
    found = []
    for value in values:
        url = re.match(r"<([^>]*)>", value)
        assert url is not None, value
        params = dict(re.findall(r';\s*([a-z-]+)="([^"]*)"', value))
        found.append({"url": url.group(1), **params})
    return found


def check_links(values: list[str], user: str) -> None:
    links = parse_links(values)
    assert [link["url"] for link in links] == [
        "turn:127.0.0.1:3478?transport=udp",
        "turns:127.0.0.1:443?transport=tcp",
    ]
    for link in links:
        assert link["rel"] == "ice-server" and link["credential-type"] == "password"
        expiry, _, named = link["username"].partition(":")
        assert named == user and 0 < int(expiry) - time.time() <= 600
        digest = hmac.new(SECRET.encode(), link["username"].encode(), hashlib.sha1).digest()
        assert link["credential"] == base64.b64encode(digest).decode()


async def test_link_headers_on_201_and_on_authorized_options(turn_app):
    client, _ = turn_app
    site = {"Authorization": f"Bearer {mint(Role.SITE, 'c1', 'S1')}"}
    reply = await client.post(
        "/whep/c1/S1",
        data=await viewer_offer(),
        headers={**site, "Content-Type": "application/sdp"},
    )
    assert reply.status == 201, await reply.text()
    check_links(reply.headers.getall("Link"), "c1.S1")
    reply = await client.options("/whep/c1/S1", headers=site)
    assert reply.status == 204
    check_links(reply.headers.getall("Link"), "c1.S1")
    lecturer = {"Authorization": f"Bearer {mint(Role.LECTURER, 'c1')}"}
    reply = await client.options("/whip/c1", headers=lecturer)
    check_links(reply.headers.getall("Link"), "c1.lecturer")
    reply = await client.options("/whip/c1")  # a CORS preflight carries no token: no credentials
    assert reply.status == 204 and "Link" not in reply.headers
    reply = await client.options("/whep/c1/S1", headers={"Authorization": "Bearer nonsense"})
    assert reply.status == 401 and "Link" not in reply.headers
    reply = await client.options("/whep/c1/S2", headers=site)  # another hall's token
    assert reply.status == 403 and "Link" not in reply.headers


async def test_pages_get_ice_servers_and_the_relay_option(turn_app):
    client, _ = turn_app
    token = mint(Role.SITE, "c1", "S1")

    async def page_config(path: str, **query: str) -> dict:
        reply = await client.get(path, params={"token": token, **query})
        assert reply.status == 200, await reply.text()
        found = re.search(r'id="page-config"[^>]*>(.*?)</script>', await reply.text(), re.S)
        assert found is not None
        return json.loads(found.group(1))

    page = await page_config("/site/c1/S1")
    assert page["ice_transport_policy"] == "all"
    (server,) = page["ice_servers"]
    assert server["username"].endswith(":c1.S1") and len(server["urls"]) == 2
    page = await page_config("/site/c1/S1", ice="relay")
    assert page["ice_transport_policy"] == "relay"
    reply = await client.get("/site/c1/S1", params={"token": token, "ice": "tcp"})
    assert reply.status == 400
    token = mint(Role.LECTURER, "c1")
    page = await page_config("/studio/c1")
    assert page["ice_servers"][0]["username"].endswith(":c1.lecturer")


async def test_no_turn_configured_gives_no_links(tmp_path: Path):
    async with running_app(tmp_path, media=True) as (client, _):
        await seed(client)
        site = {"Authorization": f"Bearer {mint(Role.SITE, 'c1', 'S1')}"}
        reply = await client.options("/whep/c1/S1", headers=site)
        assert reply.status == 204 and "Link" not in reply.headers
