"""Run LopSo for tests: a real `lopso serve` subprocess, or the app in-process.

Subprocess (what e2e tests use):

    with LopsoServer(tmp_path, demo_sites=2) as srv:
        srv.url            # "http://127.0.0.1:<port>"
        srv.demo           # the --demo-json content: session_id, lecturer, moderator, sites
        srv.admin_token()  # a token for the admin API
        srv.log()          # what the server printed so far (stdout + stderr)

In-process (fast signalling tests, no media unless asked):

    async with running_app(tmp_path) as (client, state):
        await client.get("/healthz")
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from server import auth
from server.models import Role

SECRET = "test-secret-0123456789abcdef"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 free right now (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_media_port() -> int:
    """A port number free right now for UDP and TCP both (media and its ICE-TCP twin)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue  # its TCP twin is someone's (e.g. an outgoing connection's) port
        return port
    raise OSError("no port free for both UDP and TCP")


class LopsoServerError(Exception):
    """The server did not come up (its output is in the message)."""


class LopsoServer:
    """`lopso serve` in a subprocess on a free port with a temp data dir and a demo class."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        demo_sites: int = 2,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 30.0,
        tls: tuple[Path, Path] | None = None,
        addressing: list[str] | None = None,
    ) -> None:
        self.dir = Path(tmp_path)
        self.data = self.dir / "data"
        self.demo_path = self.dir / "demo.json"
        self.port = free_port()
        self.media_port = free_media_port()
        self.tls = tls
        self.addressing = addressing
        """Flags that choose the HTTP host and media addresses; None: loopback for everything.
        `[]` leaves `lopso serve`'s defaults (what scripts/serve does)."""
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.demo_sites = demo_sites
        self.extra_args = extra_args or []
        self.env = env or {}
        self.timeout = startup_timeout_s
        self.demo: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = self.dir / "server.log"

    def __enter__(self) -> LopsoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--port",
            str(self.port),
            "--data",
            str(self.data),
            "--media-port",
            str(self.media_port),
        ]
        if self.addressing is None:
            args += ["--host", "127.0.0.1", "--media-host", "127.0.0.1", "--announce", "127.0.0.1"]
        else:
            args += self.addressing
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        if self.demo_sites:
            args += ["--demo-json", str(self.demo_path), "--demo-sites", str(self.demo_sites)]
        return args + self.extra_args

    def start(self) -> None:
        """Start the process and wait until /healthz answers and the demo JSON is written."""
        env = {**os.environ, "LOPSO_SECRET": SECRET, "PYTHONUNBUFFERED": "1", **self.env}
        self.dir.mkdir(parents=True, exist_ok=True)
        out = self._log.open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LopsoServerError(f"lopso serve exited {self.proc.returncode}:\n{self.log()}")
            if self._healthy() and (not self.demo_sites or self.demo_path.exists()):
                if self.demo_sites:
                    self.demo = json.loads(self.demo_path.read_text(encoding="utf-8"))
                return
            time.sleep(0.1)
        self.stop()
        raise LopsoServerError(f"lopso serve not healthy after {self.timeout}s:\n{self.log()}")

    def _healthy(self) -> bool:
        try:
            context = ssl._create_unverified_context() if self.tls else None
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1, context=context) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self._log.read_text(encoding="utf-8", errors="replace") if self._log.exists() else ""

    def admin_token(self, ttl_s: float = 3600) -> str:
        return auth.mint(SECRET.encode(), auth.ANY_CLASS, Role.ADMIN, ttl_s=ttl_s)

    def token(self, role: Role, site: str | None = None, ttl_s: float = 3600) -> str:
        """A token for the demo class (a site token: the one in the demo JSON)."""
        if role is Role.SITE and site is not None:
            return str(next(s["token"] for s in self.demo["sites"] if s["code"] == site))
        return auth.mint(SECRET.encode(), self.demo["session_id"], role, site=site, ttl_s=ttl_s)

    def site_token(self, sid: str, site: str) -> str:
        """A site token of any class, as the links API hands it out (with the site's key id)."""
        request = urllib.request.Request(
            f"{self.url}/api/sessions/{sid}/links",
            headers={"Authorization": f"Bearer {self.admin_token()}"},
        )
        context = ssl._create_unverified_context() if self.tls else None
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            links = json.loads(reply.read())
        return str(next(s["token"] for s in links["sites"] if s["code"] == site))


@contextlib.asynccontextmanager
async def running_app(
    tmp_path: Path, *, media: bool = False, **settings: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """The app on a loopback TestServer: yields (aiohttp TestClient, AppState)."""
    from aiohttp.test_utils import TestClient, TestServer

    from server.app import STATE, create_app
    from server.config import load_config

    overrides = {
        "data_dir": Path(tmp_path) / "data",
        "secret": SECRET,
        "media_host": "127.0.0.1",
        "media_port": 0,
        "announce": "127.0.0.1",
        # The tests' classes are planned in the past (2026-11-26): they would end by themselves
        # and their QR links would be closed. Tests of those rules set these themselves.
        "auto_end_grace_s": 0,
        "checkin_grace_s": 9 * 366 * 86400,
        **settings,
    }
    app = create_app(load_config(overrides, env={}), media=media)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, app[STATE]
    finally:
        await client.close()


def join_key_of(code: str) -> str:
    """The join key the tests' registry CSVs give site `code` (tests/test_api.py CSV)."""
    return f"test-join-key-{code}"


def mint(
    role: Role,
    sid: str = auth.ANY_CLASS,
    site: str | None = None,
    ttl_s: float = 3600,
    join_key: str | None = None,
    presenter: str | None = None,
) -> str:
    """A token signed with the tests' secret; a site or participant token carries the key id
    of `join_key` (default: the tests' key of that site, `join_key_of`); a lecturer token may
    name its `presenter`."""
    if join_key is None and site is not None and role in (Role.SITE, Role.PARTICIPANT):
        join_key = join_key_of(site)
    return auth.mint(
        SECRET.encode(),
        sid,
        role,
        site=site,
        join_key=join_key,
        presenter=presenter,
        ttl_s=ttl_s,
    )


async def whip_route(lecture: Any, token: str = "token", presenter: str = "p1") -> tuple[Any, str]:
    """A bare WHIP endpoint for one media lecture on a loopback port, as server/ reduces to its
    media call: POST (with `Bearer <token>`) publishes as `presenter`, DELETE ends. Returns
    (runner, URL)."""
    from aiohttp import web

    publishers: dict[str, Any] = {}

    async def post(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401)
        answer, publisher = await lecture.publish(await request.text(), presenter=presenter)
        publishers["1"] = publisher
        headers = {"Location": f"{request.path}/1"}
        return web.Response(
            status=201, text=answer, content_type="application/sdp", headers=headers
        )

    async def delete(request: web.Request) -> web.Response:
        publisher = publishers.pop(request.match_info["resource"], None)
        if publisher is not None:
            await publisher.close()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/whip/{lecture}", post)
    app.router.add_delete("/whip/{lecture}/{resource}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/whip/{lecture.id}"
