"""docker-compose.yml is a valid, working description of a cluster (no Docker needed).

No docker engine or compose plugin runs here, so the file is checked the way `docker compose
config` would read it (known keys, interpolation, merge keys, dependencies), and its settings
are fed to LopSo's own config loader; the nodes' health check command is run against real
`lopso serve` processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import _SETTINGS, load_config
from tests.clusterproc import LopsoCluster

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
TOP_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "network_mode",
    "networks",
    "restart",
    "healthcheck",
    "depends_on",
    "stop_grace_period",
    "ulimits",
    "deploy",
    "container_name",
    "hostname",
    "logging",
    "cap_add",
    "sysctls",
    "labels",
    "expose",
    "user",
    "working_dir",
    "profiles",
}
ENV = {"LOPSO_SECRET": "compose-secret-0123456789", "LOPSO_ANNOUNCE": "203.0.113.10"}
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::([?-])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return INTERPOLATION.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), ENV)


def test_only_known_keys(compose: dict[str, Any]) -> None:
    assert {k for k in compose if not k.startswith("x-")} <= TOP_KEYS
    assert set(compose["services"]) == {"redis", "origin", "edge", "coturn"}
    for name, service in compose["services"].items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service


def test_required_settings_fail_loudly_when_missing() -> None:
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    with pytest.raises(KeyError, match="LOPSO_SECRET"):
        interpolate(raw, {"LOPSO_ANNOUNCE": "203.0.113.10"})


def test_redis_keeps_every_write(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2]))
    assert command[0] == "redis-server"
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "always"
    assert flags["--bind"] == "127.0.0.1"  # never exposed beyond the host
    assert f"redis-data:{flags['--dir']}" in redis["volumes"]
    assert "redis-data" in compose["volumes"]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]


def test_edges_scale(compose: dict[str, Any]) -> None:
    edge = compose["services"]["edge"]
    assert "container_name" not in edge and "ports" not in edge and "hostname" not in edge
    assert "LOPSO_NODE_ID" not in edge["environment"]  # each replica draws its own
    data = [v for v in edge["volumes"] if isinstance(v, dict) or v.endswith(":/data")]
    assert data and all(isinstance(v, dict) and v["type"] == "tmpfs" for v in data)
    shared = [v for v in edge["volumes"] if not isinstance(v, dict)]
    assert shared == ["recordings:/recordings"]  # the origin's recordings, replayed anywhere
    assert "recordings:/recordings" in compose["services"]["origin"]["volumes"]
    assert "recordings" in compose["volumes"]
    assert edge["depends_on"]["origin"]["condition"] == "service_healthy"


def test_networking_is_the_host_network(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        assert service["network_mode"] == "host"
        assert "ports" not in service  # ignored with host networking


@pytest.mark.parametrize("role", ["origin", "edge"])
def test_node_settings_load(compose: dict[str, Any], role: str, tmp_path: Path) -> None:
    env = {k: str(v) for k, v in compose["services"][role]["environment"].items()}
    known = {var for var, _ in _SETTINGS.values()}
    assert set(env) <= known, set(env) - known
    assert env["LOPSO_ROLE"] == role
    config = load_config({"data_dir": tmp_path}, env={**env, "LOPSO_DATA": str(tmp_path)})
    assert config.role == role and config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.secret == ENV["LOPSO_SECRET"].encode()
    assert config.announce == ("203.0.113.10",)
    if role == "edge":
        assert config.http_ports == (8100, 8199) and config.media_ports == (40000, 40099)
        origin = compose["services"]["origin"]["environment"]
        assert not 8100 <= int(origin["LOPSO_PORT"]) <= 8199
        assert not 40000 <= int(origin["LOPSO_MEDIA_PORT"]) <= 40099


def test_every_service_has_a_healthcheck_and_waits_for_redis(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service["healthcheck"]
        assert check["test"][0] == "CMD" and check["retries"] >= 3, name
        if check["test"][1] == "python":
            compile(check["test"][3], f"{name} healthcheck", "exec")
        if name not in ("redis", "coturn"):  # coturn needs nothing of LopSo's
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"
            assert service["environment"]["LOPSO_DATA"] == "/data"


def test_coturn_takes_lopsos_secret_and_relays_to_its_media_only(tmp_path: Path) -> None:
    env = {**ENV, "LOPSO_TURN_SECRET": "turn-secret-0123456789abcdef",
           "LOPSO_TURN_URLS": "turn:203.0.113.10:3478?transport=udp,turns:turn.example.vn:443"}  # fmt: skip
    compose = interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), env)
    coturn = compose["services"]["coturn"]
    assert coturn["profiles"] == ["turn"] and coturn["network_mode"] == "host"
    flags = dict(arg.removeprefix("--").partition("=")[::2] for arg in coturn["command"])
    assert "use-auth-secret" in flags
    assert flags["static-auth-secret"] == env["LOPSO_TURN_SECRET"]
    assert flags["listening-port"] == "3478" and flags["tls-listening-port"] == "443"
    assert flags["allowed-peer-ip"] == "203.0.113.10"  # only LopSo's media address ...
    denied = [a for a in coturn["command"] if a.startswith("--denied-peer-ip=")]
    assert "--denied-peer-ip=0.0.0.0-255.255.255.255" in denied  # ... not the whole network
    for role in ("origin", "edge"):
        node = {k: str(v) for k, v in compose["services"][role]["environment"].items()}
        config = load_config({"data_dir": tmp_path}, env={**node, "LOPSO_DATA": str(tmp_path)})
        assert config.turn_secret == env["LOPSO_TURN_SECRET"].encode()
        assert len(config.turn_urls) == 2


def test_dockerfile_runs_lopso_serve() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["lopso"]' in text and 'CMD ["serve"]' in text
    assert re.search(r"^FROM python:3\.11", text, re.M)  # the health check runs python


def run_healthcheck(command: list[str], data_dir: Path) -> int:
    script = command[3].replace("/data/", f"{data_dir}/")
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=20
    ).returncode


@pytest.mark.slow
def test_healthcheck_command_tells_a_live_node_from_a_dead_one(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    command = compose["services"]["edge"]["healthcheck"]["test"]
    with LopsoCluster(tmp_path, edges=1, sites=1) as cluster:
        edge = cluster.edges[0]
        assert run_healthcheck(command, edge.data) == 0
        assert run_healthcheck(command, cluster.origin.data) == 0
        edge.kill()
        assert run_healthcheck(command, edge.data) != 0


def test_docker_compose_config_accepts_it() -> None:
    """The Compose tool itself parses and interpolates the file (scripts/test installs
    Debian's docker-compose; `config` needs no engine)."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/test installs it)")
    env = dict(os.environ, LOPSO_SECRET="0123456789abcdef0123", LOPSO_ANNOUNCE="192.0.2.10")
    done = subprocess.run(
        [tool, "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    parsed = yaml.safe_load(done.stdout)
    assert {"redis", "origin", "edge"} <= set(parsed["services"])
    assert parsed["services"]["origin"]["environment"]["LOPSO_ANNOUNCE"] == "192.0.2.10"
    # and without the mandatory settings it refuses, naming the one missing
    env.pop("LOPSO_SECRET")
    refused = subprocess.run(
        [tool, "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "LOPSO_SECRET" in refused.stderr
