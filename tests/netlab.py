"""The village network lab: Linux network namespaces built by the test run, as root.

    def test_x(netlab):
        server = netlab.host("server", "203.0.113.10")        # on "the internet"
        hall = netlab.hall("hall1")                          # behind its own NAT router
        hall.router.drop_forwarded_udp()                     # a firewall that drops UDP
        hall.router.rate("8mbit")                            # tc tbf on the hall's downlink
        hall.router.loss(3)                                  # nft numgen random: 3 % loss
        proc = server.popen(["python3", "-m", "server", "serve", "--host", server.address])
        server.call(lambda: urllib.request.urlopen(...))      # Python code inside a namespace
        lopso = LabServer(server, "203.0.113.10", tmp_path)  # `lopso serve --host` only

Documentation addresses only: 203.0.113.0/24 is "the internet" (one bridge in a namespace of
its own: server, lecturer and hall routers hang on it), 2001:db8:113::/64 its IPv6 side, and
hall N sits behind its router's NAT (nftables masquerade) on 198.51.100.16*N/28.

Nothing here touches the host's interfaces, routes or firewall: every link is created inside
the lab's namespaces (`ip -n NS link add ... peer ... netns OTHER`), and every nftables table
or qdisc lives in a lab namespace. Namespaces are named `lopsolab-<pid>-<node>`, so two runs
never collide; they are deleted by the fixture's finalizer, at exit, and swept at the next
start when the pid that built them is gone. Delay is not in the kernel here (no netem):
`Node.relay` starts scripts/impair.py inside a namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.serverproc import SECRET

PREFIX = "lopsolab-"
INTERNET = "203.0.113"
INTERNET6 = "2001:db8:113::"
CLONE_NEWNET = 0x40000000
ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class LabError(Exception):
    """A lab command failed (its output is in the message)."""


def unavailable() -> str | None:
    """Why the lab cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces): run the tests as root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (apt-get install {package})"
    probe = f"{PREFIX}probe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` fails here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(*args: str, check: bool = True) -> str:
    """Run one command; LabError with its output when it fails."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def lab_namespaces() -> list[str]:
    """Every namespace whose name starts with the lab's prefix."""
    out = run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def sweep_stale() -> list[str]:
    """Delete lab namespaces left by runs whose process is gone; returns their names."""
    swept = []
    for name in lab_namespaces():
        match = re.match(rf"{PREFIX}(?:probe-)?(\d+)-?", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            run("ip", "netns", "del", name, check=False)
            swept.append(name)
    return swept


def in_namespace(ns: str, fn: Callable[[], T]) -> T:
    """Call `fn` in a thread that has joined namespace `ns` (sockets it opens stay there)."""
    result: list[Any] = []

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{ns}") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise LabError(f"setns {ns}: errno {ctypes.get_errno()}")
            result.append((True, fn()))
        except BaseException as exc:  # handed to the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=target, name=f"netns-{ns}")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class Node:
    """One namespace of the lab: a host on the internet, a hall router or a hall."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.prefix}{name}"
        self.address = ""
        """Its first IPv4 address (no prefix length)."""
        self.addresses: list[str] = []
        self._nft_ready = False
        self._procs: list[subprocess.Popen[bytes]] = []
        run("ip", "netns", "add", self.ns)
        lab.nodes.append(self)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.ns, *args)

    def exec(self, *args: str, check: bool = True) -> str:
        """Run a command inside this namespace."""
        return run("ip", "netns", "exec", self.ns, *args, check=check)

    def add_address(self, cidr: str, dev: str = "up0") -> None:
        """Give interface `dev` another address (IPv6 too: `2001:db8:113::11/64`)."""
        family = "-6" if ":" in cidr else "-4"
        extra = ["nodad"] if family == "-6" else []
        self.ip(family, "addr", "add", cidr, "dev", dev, *extra)
        address = cidr.split("/")[0]
        self.addresses.append(address)
        if not self.address and family == "-4":
            self.address = address

    def nft(self, *rules: str) -> None:
        """Load nftables rules (one `nft -f` script) into this namespace."""
        script = "\n".join(rules) + "\n"
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise LabError(f"nft in {self.ns}: {done.stderr.strip()}\n{script}")

    def _filter(self) -> None:
        if not self._nft_ready:
            self.nft(
                "table inet lab {",
                "  chain forward { type filter hook forward priority 0; policy accept; }",
                "  chain input { type filter hook input priority 0; policy accept; }",
                "}",
            )
            self._nft_ready = True

    def drop_forwarded_udp(self) -> None:
        """A firewall that drops every forwarded UDP datagram (both ways)."""
        self._filter()
        self.nft("add rule inet lab forward meta l4proto udp drop")

    def allow_only(self, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()) -> None:
        """Forward only new connections to these ports (and replies to them); drop the rest."""
        self._filter()
        rules = ["add rule inet lab forward ct state established,related accept"]
        if tcp:
            rules.append(
                f"add rule inet lab forward tcp dport {{ {', '.join(map(str, tcp))} }} accept"
            )
        if udp:
            rules.append(
                f"add rule inet lab forward udp dport {{ {', '.join(map(str, udp))} }} accept"
            )
        rules.append("add rule inet lab forward drop")
        self.nft(*rules)

    def allow_udp_to(self, address: str) -> None:
        """Drop forwarded UDP except to/from one address (e.g. one of the server's)."""
        self._filter()
        family = "ip6" if ":" in address else "ip"
        self.nft(
            f"add rule inet lab forward meta l4proto udp {family} daddr {address} accept",
            f"add rule inet lab forward meta l4proto udp {family} saddr {address} accept",
            "add rule inet lab forward meta l4proto udp drop",
        )

    def loss(self, percent: int) -> None:
        """Drop `percent` % of forwarded packets at random (nft numgen random)."""
        self._filter()
        self.nft(f"add rule inet lab forward numgen random mod 100 < {percent} drop")

    def rate(self, rate: str, dev: str = "down0", burst: str = "32kbit") -> None:
        """Limit what leaves `dev` (a router's hall side: the hall's downlink) with tc tbf."""
        run(
            "tc", "-n", self.ns, "qdisc", "replace", "dev", dev, "root",
            "tbf", "rate", rate, "burst", burst, "latency", "300ms",
        )  # fmt: skip

    def link(self, up: bool, dev: str = "up0") -> None:
        """Take this node's link to the internet down or up (a hall's outage)."""
        self.ip("link", "set", dev, "up" if up else "down")

    def popen(
        self, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process inside this namespace (output to `log`); stopped with the lab."""
        out = log.open("ab")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
            start_new_session=True,
        )
        out.close()
        self._procs.append(proc)
        return proc

    def relay(self, listen: str, to: str, *impair: str, log: Path) -> subprocess.Popen[bytes]:
        """scripts/impair.py inside this namespace (delay, jitter: the kernel has no netem)."""
        script = str(ROOT / "scripts" / "impair.py")
        args = [sys.executable, script, "--listen", listen, "--to", to, *impair]
        return self.popen(args, log)

    def call(self, fn: Callable[[], T]) -> T:
        """Run Python code inside this namespace (e.g. an HTTP request to a lab address)."""
        return in_namespace(self.ns, fn)

    def chromium(self, directory: Path) -> Path:
        """An executable that starts Chromium inside this namespace (for Playwright)."""
        chromium = os.environ.get("LOPSO_CHROMIUM", "/usr/lib/chromium/chromium")
        wrapper = directory / f"chromium-{self.name}"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.ns} {chromium} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 15)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, 9)
                    proc.wait(5)
        self._procs.clear()


class Hall:
    """A hall: its router (NAT to the internet, firewall, rate, loss) and the hall's own node."""

    def __init__(self, router: Node, node: Node) -> None:
        self.router = router
        self.node = node

    @property
    def address(self) -> str:
        return self.node.address


class Lab:
    """The namespaces of one test run; `close()` deletes them all (idempotent)."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-"
        self.nodes: list[Node] = []
        self._halls = 0
        self._closed = False
        sweep_stale()
        self.internet = Node(self, "internet")
        self.internet.ip("link", "add", "br0", "type", "bridge")
        self.internet.ip("link", "set", "br0", "up")
        atexit.register(self.close)

    def _attach(self, node: Node) -> None:
        """A veth from `node` (up0) to the internet bridge."""
        port = f"p{len(self.nodes)}"
        node.ip(
            "link", "add", "up0", "type", "veth", "peer", "name", port, "netns", self.internet.ns
        )
        self.internet.ip("link", "set", port, "master", "br0", "up")
        node.ip("link", "set", "up0", "up")

    def host(self, name: str, address: str, *more: str) -> Node:
        """A host on the internet bridge with `address` (and more addresses, IPv6 included)."""
        node = Node(self, name)
        self._attach(node)
        for addr in (address, *more):
            node.add_address(addr if "/" in addr else f"{addr}/{64 if ':' in addr else 24}")
        return node

    def hall(self, name: str) -> Hall:
        """A hall behind its own NAT router: router 203.0.113.(100+N), hall 198.51.100.16N+2."""
        self._halls += 1
        n = self._halls
        router = self.host(f"{name}-router", f"{INTERNET}.{100 + n}")
        node = Node(self, name)
        node.ip("link", "add", "up0", "type", "veth", "peer", "name", "down0", "netns", router.ns)
        base = 16 * n
        router.ip("addr", "add", f"198.51.100.{base + 1}/28", "dev", "down0")
        router.ip("link", "set", "down0", "up")
        node.add_address(f"198.51.100.{base + 2}/28")
        node.ip("link", "set", "up0", "up")
        node.ip("route", "add", "default", "via", f"198.51.100.{base + 1}")
        router.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        router.nft(
            "table ip nat {",
            "  chain postrouting { type nat hook postrouting priority 100; policy accept;",
            '    oifname "up0" masquerade',
            "  }",
            "}",
        )
        return Hall(router, node)

    def close(self) -> None:
        """Stop every process started in the lab and delete its namespaces."""
        if self._closed:
            return
        self._closed = True
        for node in reversed(self.nodes):
            node.stop()
        for node in reversed(self.nodes):
            run("ip", "netns", "del", node.ns, check=False)
        for name in lab_namespaces():  # anything of ours a failed step left half-built
            if name.startswith(self.prefix):
                run("ip", "netns", "del", name, check=False)


class LabServer:
    """`lopso serve` inside a lab namespace with its defaults: `--host` only."""

    def __init__(
        self,
        node: Node,
        host: str,
        folder: Path,
        secret: str = SECRET,
        env: dict[str, str] | None = None,
    ) -> None:
        self.node = node
        self.folder = folder
        self.port = 8080
        bracketed = f"[{host}]" if ":" in host else host
        self.url = f"http://{bracketed}:{self.port}"
        self.log = folder / "server.log"
        demo_json = folder / "demo.json"
        args = [sys.executable, "-m", "server", "serve", "--host", host]
        args += ["--data", str(folder / "data"), "--demo-json", str(demo_json)]
        args += ["--demo-sites", "3"]
        self.proc = node.popen(args, self.log, env={"LOPSO_SECRET": secret, **(env or {})})
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"lopso serve exited:\n{self.log.read_text()}")
            if demo_json.exists() and self._healthy():
                self.demo: dict[str, Any] = json.loads(demo_json.read_text(encoding="utf-8"))
                return
            time.sleep(0.2)
        raise LabError(f"lopso serve not healthy in the lab:\n{self.log.read_text()}")

    def _healthy(self) -> bool:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        return self.node.call(probe)

    def on(self, url: str, host: str) -> str:
        """A demo link as seen from a hall that reaches the server at `host`."""
        bracketed = f"[{host}]" if ":" in host else host
        return url.replace(self.demo_base(), f"http://{bracketed}:{self.port}")

    def demo_base(self) -> str:
        link: str = self.demo["lecturer"]["url"]
        return link.split("/", 3)[0] + "//" + link.split("/", 3)[2]


@pytest.fixture
def netlab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh lab per test; skipped loudly where namespaces cannot be built."""
    reason = unavailable()
    if reason:
        pytest.skip(f"NETWORK LAB SKIPPED: {reason}")
    lab = Lab()
    request.addfinalizer(lab.close)
    yield lab
