"""A private redis-server for tests: its own port and directory, AOF with fsync on every write.

Never touches the shared Redis on 6379. Use the context manager or the fixtures:

    with RedisProcess(tmp_path) as redis_proc:
        url = redis_proc.url
        redis_proc.restart()          # kill -9 and start again on the same port (AOF reload)

    def test_x(redis_proc): ...       # a fresh server per test (import the fixture)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcessError(Exception):
    """redis-server did not start or answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on `port` answers PING with PONG (not LOADING, not refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One redis-server child process with AOF (appendfsync always) in `directory`.

    `appendonly="no"` runs it as a default Redis does (durability tests); `args` go to
    redis-server last (`["--rename-command", "CONFIG", ""]`)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        appendfsync: str = "always",
        appendonly: str = "yes",
        args: Sequence[str] = (),
    ):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING (after loading its AOF)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                self.appendonly,
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisProcessError(
                    f"redis-server exited with {self.proc.returncode}, "
                    f"see {self.directory / 'redis.log'}"
                )
            if ping(self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RedisProcessError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (Redis fsyncs its AOF on the way out); SIGKILL if it lingers."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, hard: bool = True) -> None:
        """Kill (or stop) and start again on the same port and directory."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def _signal(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh private redis-server for one test."""
    with RedisProcess(tmp_path / "redis") as proc:
        yield proc


@pytest.fixture(scope="module")
def redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One private redis-server shared by a test module (tests isolate by key prefix)."""
    with RedisProcess(tmp_path_factory.mktemp("redis")) as proc:
        yield proc
