"""A private coturn (Debian `coturn`, `turnserver`) for tests, with LopSo's REST credentials.

    with TurnProcess(tmp_path, secret="0123456789abcdef") as turn:
        turn.url                   # "turn:127.0.0.1:<port>?transport=udp"
        turn.relay_ip              # where it relays from (127.0.0.2: not where browsers are)

Its config is generated in `directory` (no /etc, no shared database): `use-auth-secret`,
a static secret, UDP/TCP on one free port, relay ports from a private range, loopback peers
allowed (the server under test listens on 127.0.0.1). Skips the test when coturn is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import pytest

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP right now."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP")


class TurnProcess:
    """One turnserver child process listening on 127.0.0.1, relaying from `relay_ip`."""

    def __init__(
        self,
        directory: Path,
        secret: str,
        relay_ip: str = "127.0.0.2",
        listening_ip: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.secret = secret
        self.relay_ip = relay_ip
        self.listening_ip = listening_ip
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.directory / "turnserver.log"

    @property
    def url(self) -> str:
        return f"turn:{self.listening_ip}:{self.port}?transport=udp"

    @property
    def tcp_url(self) -> str:
        return f"turn:{self.listening_ip}:{self.port}?transport=tcp"

    def config(self) -> str:
        low = 20000 + (self.port % 400) * 100  # a private relay range per instance
        return "\n".join(
            [
                f"listening-port={self.port}",
                f"listening-ip={self.listening_ip}",
                f"relay-ip={self.relay_ip}",
                f"min-port={low}",
                f"max-port={low + 99}",
                "use-auth-secret",
                f"static-auth-secret={self.secret}",
                "realm=lopso.test",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-cli",
                "no-multicast-peers",
                "allow-loopback-peers",
                f"userdb={self.directory / 'turndb'}",
                f"pidfile={self.directory / 'turnserver.pid'}",
                f"log-file={self.log}",
                "simple-log",
                "no-stdout-log",
                "",
            ]
        )

    def command(self) -> list[str]:
        """Write the config; the command that runs coturn with it (e.g. in a lab namespace)."""
        if not Path(TURNSERVER).exists():
            pytest.skip("coturn is not installed (Debian package coturn, see scripts/test)")
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "turnserver.conf"
        conf.write_text(self.config())
        return [TURNSERVER, "-c", str(conf)]

    def start(self, timeout: float = 10.0) -> None:
        """Start turnserver and wait until it listens on TCP."""
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited: {self.tail()}")
            try:
                with socket.create_connection((self.listening_ip, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"turnserver did not listen within {timeout} s: {self.tail()}")

    def tail(self) -> str:
        """The end of its log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate it (kill after 5 s)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
