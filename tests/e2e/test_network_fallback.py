"""Halls whose firewall drops all UDP, in the village network lab (tests/netlab.py): behind NAT,
every forwarded UDP datagram dropped, the hall plays over ICE-TCP on the server's media port
with the server's defaults, and through coturn on "the internet" (TURN over TCP), each within
5 s of a normal hall's join. The path each hall took is read from its Chromium (the selected
candidate pair) and from the server's /metrics.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from server import auth
from server.models import Role
from tests.e2e.test_network import (
    GET_FRAMES,
    SELECTED_PAIR,
    LabBrowsers,
    go_live,
    keep_server_log,
    lab_browsers,
)
from tests.netlab import Lab, LabServer, Node, netlab
from tests.serverproc import SECRET
from tests.turnproc import TurnProcess

__all__ = ["keep_server_log", "lab_browsers", "netlab"]

FALLBACK_WITHIN_S = 5.0
TURN_HOST = "203.0.113.30"
JOINS: dict[str, float] = {}
"""Join seconds (peer connection created → first frame) per network case, for the closing
note."""


def decoded_fps(page: Any, seconds: float) -> float:
    """Frames decoded per second over `seconds`, from the page's own getStats."""
    before = page.evaluate(GET_FRAMES)
    page.wait_for_timeout(int(seconds * 1000))
    return float((page.evaluate(GET_FRAMES) - before) / seconds)


def report(case: str, joined: float, fps: float) -> None:
    print(f"\nNETWORK CASE {case}: join {joined:.2f} s, {fps:.1f} fps decoded", file=sys.stderr)


def paths_counted(server: LabServer) -> dict[str, float]:
    """lopso_viewers_path per path, from the server's /metrics (read inside its namespace)."""
    token = auth.mint(SECRET.encode(), auth.ANY_CLASS, Role.ADMIN, ttl_s=600)

    def scrape() -> str:
        request = urllib.request.Request(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return str(reply.read().decode())

    counts: dict[str, float] = {}
    for line in server.node.call(scrape).splitlines():
        if line.startswith("lopso_viewers_path{"):
            path = line.split('path="', 1)[1].split('"', 1)[0]
            counts[path] = counts.get(path, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


PC_CLOCK = """(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    window.lopsoPcAt = performance.now();
    return new Native(...args);
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();"""
"""Notes when the page creates its peer connection (its join starts: offer, ICE, DTLS)."""
FIRST_FRAME = """() => {
  const video = document.querySelector("video");
  if (!video || video.readyState < 2 || window.lopsoPcAt === undefined) return false;
  return performance.now() - window.lopsoPcAt;
}"""
"""Milliseconds from the peer connection's creation to the first decoded frame shown."""


def join_from_offer(pages: Any, url: str, name: str, timeout_s: float = 45.0) -> tuple[Any, float]:
    """Open a site page; seconds from its peer connection's creation to its first decoded
    frame, timed inside the page (loading the page itself takes 1 to 15 s on this machine)."""
    page = pages.open(url, name=name, timeout_ms=60_000, init_script=PC_CLOCK)
    waited = page.wait_for_function(FIRST_FRAME, polling=20, timeout=timeout_s * 1000)
    return page, float(waited.json_value()) / 1000


def hall_plays(pages: Any, url: str, case: str, studio: Any | None) -> tuple[Any, float]:
    """Join a hall; it must decode at least half the frames the studio sends (the lab's
    Chromiums share two busy cores with a soak test: the studio is the yardstick). Without
    `studio`, a baseline: only its join time is taken."""
    page, joined = join_from_offer(pages, url, case.replace(" ", "-"))
    JOINS[case] = joined
    if studio is None:
        report(case, joined, decoded_fps(page, 2.0))
        return page, joined
    sent = int(studio.evaluate("window.lopso.framesSent()"))
    fps = decoded_fps(page, 6.0)
    sent_fps = (int(studio.evaluate("window.lopso.framesSent()")) - sent) / 6.0
    report(case, joined, fps)
    print(f"  the studio sent {sent_fps:.1f} fps meanwhile")
    JOINS[case] = joined
    assert sent_fps > 0 and fps >= 0.5 * sent_fps, f"{case}: {fps:.1f} of {sent_fps:.1f} fps"
    return page, joined


def wait_for_path(server: LabServer, path: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while paths_counted(server).get(path, 0) < 1:
        assert time.monotonic() < deadline, paths_counted(server)
        time.sleep(0.5)


def test_a_hall_whose_firewall_drops_udp_plays_over_ice_tcp(
    netlab: Lab, lab_browsers: LabBrowsers, tmp_path: Path, keep_server_log: list[LabServer]
) -> None:
    server_node = netlab.host("server", "203.0.113.10")
    lecturer = netlab.host("lecturer", "203.0.113.20")
    normal = netlab.hall("hall1")
    blocked = netlab.hall("hall2")
    blocked.router.drop_forwarded_udp()
    server = LabServer(server_node, "203.0.113.10", tmp_path)  # its defaults
    keep_server_log.append(server)
    studio = go_live(lab_browsers.on(lecturer, server.url), server.demo["lecturer"]["url"])
    sites = server.demo["sites"]

    page, normal_s = hall_plays(
        lab_browsers.on(normal.node, server.url),
        sites[0]["url"],
        "hall behind NAT (UDP), baseline",
        None,
    )
    assert page.evaluate(SELECTED_PAIR)["remote_protocol"] == "udp"
    page, tcp_s = hall_plays(
        lab_browsers.on(blocked.node, server.url), sites[1]["url"], "UDP dropped: ICE-TCP", studio
    )
    pair = page.evaluate(SELECTED_PAIR)
    assert pair["remote_protocol"] == "tcp" and pair["tcptype"] == "passive", pair
    wait_for_path(server, "tcp")
    assert tcp_s <= normal_s + FALLBACK_WITHIN_S, JOINS


def start_coturn(node: Node, folder: Path) -> TurnProcess:
    turn = TurnProcess(folder, SECRET, relay_ip=TURN_HOST, listening_ip=TURN_HOST, port=3478)
    node.popen(turn.command(), folder / "coturn.out")

    def listening() -> bool:
        try:
            with socket.create_connection((TURN_HOST, 3478), timeout=0.5):
                return True
        except OSError:
            return False

    deadline = time.monotonic() + 15
    while not node.call(listening):
        assert time.monotonic() < deadline, f"coturn did not start: {turn.tail()}"
        time.sleep(0.2)
    return turn


def test_a_hall_whose_firewall_drops_udp_plays_through_coturn(
    netlab: Lab, lab_browsers: LabBrowsers, tmp_path: Path, keep_server_log: list[LabServer]
) -> None:
    server_node = netlab.host("server", "203.0.113.10")
    lecturer = netlab.host("lecturer", "203.0.113.20")
    turn_node = netlab.host("turn", TURN_HOST)
    normal = netlab.hall("hall1")
    blocked = netlab.hall("hall2")
    blocked.router.drop_forwarded_udp()
    start_coturn(turn_node, tmp_path / "turn")
    env = {
        "LOPSO_TURN_URLS": f"turn:{TURN_HOST}:3478?transport=udp,turn:{TURN_HOST}:3478?transport=tcp",
        "LOPSO_TURN_SECRET": SECRET,
    }
    server = LabServer(server_node, "203.0.113.10", tmp_path, env=env)
    keep_server_log.append(server)
    studio = go_live(lab_browsers.on(lecturer, server.url), server.demo["lecturer"]["url"])
    sites = server.demo["sites"]

    _, normal_s = hall_plays(
        lab_browsers.on(normal.node, server.url),
        sites[0]["url"],
        "hall behind NAT (UDP), baseline",
        None,
    )
    # TURN only (`?ice=relay`): ICE-TCP would otherwise win this hall, as it should.
    page, turn_s = hall_plays(
        lab_browsers.on(blocked.node, server.url),
        sites[1]["url"] + "&ice=relay",
        "UDP dropped: TURN over TCP",
        studio,
    )
    pair = page.evaluate(SELECTED_PAIR)
    assert pair["local_type"] == "relay" and pair["relay"] == "tcp", pair
    wait_for_path(server, "turn")
    assert turn_s <= normal_s + FALLBACK_WITHIN_S, JOINS
