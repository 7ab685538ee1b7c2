"""deploy/: the systemd unit starts a command `lopso` accepts, with settings LopSo knows."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from server import cli
from server.config import _SETTINGS, load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(DEPLOY / "lopso.service", encoding="utf-8")
    return parser


def example_env() -> dict[str, str]:
    lines = (DEPLOY / "lopso.env").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_the_unit_runs_lopso_serve_on_its_state_directory() -> None:
    service = unit()["Service"]
    binary, *args = shlex.split(service["ExecStart"])
    assert binary.endswith("/bin/lopso")
    parsed = cli._parser().parse_args(args)
    assert parsed.command == "serve"
    assert parsed.data_dir == f"/var/lib/{service['StateDirectory']}" == service["WorkingDirectory"]
    assert service["EnvironmentFile"] == "/etc/lopso/lopso.env"
    assert service["User"] == "lopso" and service["Restart"] == "on-failure"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_example_settings_are_known_and_valid(tmp_path: Path) -> None:
    env = example_env()
    known = {var for var, _ in _SETTINGS.values()}
    assert set(env) <= known, set(env) - known
    config = load_config({"data_dir": tmp_path}, env=env)
    assert config.public_url == "https://lop.example.vn" and config.trust_proxy


@pytest.mark.parametrize("name", ["LOPSO_PUBLIC_URL", "LOPSO_ANNOUNCE", "LOPSO_HOST"])
def test_the_example_sets_what_a_server_for_halls_needs(name: str) -> None:
    assert example_env().get(name)
