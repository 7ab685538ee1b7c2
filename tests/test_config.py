"""Config: environment, flags, defaults, the kept secret, and precise failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import SECRET_FILE, ConfigError, load_config


def test_defaults(tmp_path: Path) -> None:
    config = load_config({"data_dir": tmp_path}, env={})
    assert (config.host, config.port, config.role, config.log_format) == (
        "127.0.0.1",
        8080,
        "all",
        "text",
    )
    assert config.redis_url is None and config.tls is False
    assert config.base_url == "http://127.0.0.1:8080"
    assert len(config.secret) >= 16 and config.node_id


def test_environment_then_flags_win(tmp_path: Path) -> None:
    env = {
        "LOPSO_HOST": "0.0.0.0",
        "LOPSO_PORT": "9000",
        "LOPSO_DATA": str(tmp_path / "envdata"),
        "LOPSO_ANNOUNCE": "192.0.2.10, 198.51.100.7",
        "LOPSO_LOG_FORMAT": "JSON",
        "LOPSO_SECRET": "s" * 20,
    }
    config = load_config({"port": 9001, "host": None}, env=env)
    assert config.host == "0.0.0.0" and config.port == 9001
    assert config.announce == ("192.0.2.10", "198.51.100.7")
    assert config.log_format == "json" and config.secret == b"s" * 20
    assert config.base_url == "http://192.0.2.10:9001"
    assert (tmp_path / "envdata").is_dir()


def test_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_config({"data_dir": tmp_path}, env={})
    second = load_config({"data_dir": tmp_path}, env={})
    assert first.secret == second.secret == (tmp_path / SECRET_FILE).read_bytes()
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o077 == 0


def test_demo_json_implies_twelve_sites(tmp_path: Path) -> None:
    config = load_config({"data_dir": tmp_path, "demo_json": tmp_path / "d.json"}, env={})
    assert config.demo_sites == 12
    assert (
        load_config({"data_dir": tmp_path, "demo_json": "x", "demo_sites": 3}, env={}).demo_sites
        == 3
    )


def test_https_base_url(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x"), key.write_text("y")
    config = load_config(
        {"data_dir": tmp_path, "tls_cert": cert, "tls_key": key, "port": 8443}, env={}
    )
    assert config.tls and config.base_url == "https://127.0.0.1:8443"
    public = load_config(
        {"data_dir": tmp_path}, env={"LOPSO_PUBLIC_URL": "https://lop.example.vn/"}
    )
    assert public.base_url == "https://lop.example.vn"


def test_trusted_proxies_default_to_loopback_behind_a_proxy(tmp_path: Path) -> None:
    import ipaddress

    assert load_config({"data_dir": tmp_path}, env={}).proxy_networks == ()
    behind = load_config({"data_dir": tmp_path, "trust_proxy": True}, env={})
    assert [str(n) for n in behind.proxy_networks] == ["127.0.0.0/8", "::1/128"]
    env = {"LOPSO_TRUSTED_PROXIES": "10.1.2.3, 172.16.0.0/12,fd00::/8"}
    listed = load_config({"data_dir": tmp_path}, env=env)
    assert listed.proxy_networks == tuple(
        ipaddress.ip_network(n) for n in ("10.1.2.3/32", "172.16.0.0/12", "fd00::/8")
    )


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        ({"port": "80a"}, {}, "port must be an integer"),
        ({}, {"LOPSO_PORT": "70000"}, "port must be between 0 and 65535"),
        ({}, {"LOPSO_ROLE": "relay"}, "role must be one of all, origin, edge"),
        ({"role": "edge"}, {}, "role edge needs cluster mode"),
        ({}, {"LOPSO_LOG_FORMAT": "xml"}, "log format must be one of text, json"),
        ({}, {"LOPSO_SECRET": "short"}, "at least 16 characters"),
        ({"tls_cert": "/nonexistent/c.pem"}, {}, "needs both a certificate"),
        (
            {"tls_cert": "/nonexistent/c.pem", "tls_key": "/nonexistent/k.pem"},
            {},
            "certificate file not found",
        ),
        ({}, {"LOPSO_REDIS_URL": "localhost:6379"}, "redis URL must start with"),
        ({}, {"LOPSO_PUBLIC_URL": "lop.example.vn"}, "public URL must start with"),
        ({"bogus": 1}, {}, "unknown setting 'bogus'"),
        ({}, {"LOPSO_WS_IDLE_TIMEOUT": "-1"}, "idle timeout must be positive"),
        ({}, {"LOPSO_TRUST_PROXY": "maybe"}, "trust proxy must be true or false"),
        ({}, {"LOPSO_TRUSTED_PROXIES": "10.0.0.1, nginx"}, "trusted proxies must be IP"),
        ({}, {"LOPSO_CHECKIN_RATE_ADDR": "-2"}, "must be 0 \\(no limit\\) or positive"),
        ({}, {"LOPSO_METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 16"),
        ({}, {"LOPSO_OPEN_QUESTIONS_PER_SITE": "0"}, "open questions per site must be between"),
        ({}, {"LOPSO_OPEN_HELP_PER_SITE": "x"}, "open help per site must be an integer"),
        ({}, {"LOPSO_WS_PER_SITE": "-1"}, "WebSockets per site must be between 0"),
        ({}, {"LOPSO_REDIS_DURABILITY": "off"}, "redis durability must be one of strict, warn"),
        ({}, {"LOPSO_AUTO_END_GRACE_S": "-1"}, "auto-end grace must be from 0"),
        ({}, {"LOPSO_CHECKIN_GRACE_S": "half an hour"}, "check-in grace must be a number"),
        ({}, {"LOPSO_CHECKIN_GRACE_S": "nan"}, "check-in grace must be from 0"),
    ],
)
def test_bad_settings_fail_early_and_precisely(tmp_path: Path, overrides, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"data_dir": tmp_path, **overrides}, env=env)


def test_open_item_caps_per_site(tmp_path: Path) -> None:
    assert load_config({"data_dir": tmp_path}, env={}).open_questions_per_site == 5
    env = {"LOPSO_OPEN_QUESTIONS_PER_SITE": "20", "LOPSO_OPEN_HELP_PER_SITE": "1"}
    config = load_config({"data_dir": tmp_path}, env=env)
    assert (config.open_questions_per_site, config.open_help_per_site) == (20, 1)


def test_websocket_caps(tmp_path: Path) -> None:
    config = load_config({"data_dir": tmp_path}, env={})
    assert (config.ws_per_site, config.ws_per_token, config.ws_per_addr) == (8, 32, 64)
    env = {"LOPSO_WS_PER_SITE": "3", "LOPSO_WS_PER_TOKEN": "0", "LOPSO_WS_PER_ADDR": "500"}
    config = load_config({"data_dir": tmp_path}, env=env)
    assert (config.ws_per_site, config.ws_per_token, config.ws_per_addr) == (3, 0, 500)


def test_redis_durability_is_strict_unless_told(tmp_path: Path) -> None:
    assert load_config({"data_dir": tmp_path}, env={}).redis_durability == "strict"
    env = {"LOPSO_REDIS_DURABILITY": "Warn"}
    assert load_config({"data_dir": tmp_path}, env=env).redis_durability == "warn"
    flag = {"data_dir": tmp_path, "redis_durability": "strict"}
    assert load_config(flag, env=env).redis_durability == "strict"


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create data directory"):
        load_config({"data_dir": blocker / "sub"}, env={})


def test_default_announce_covers_what_a_browser_uses(tmp_path: Path) -> None:
    from media.udp import local_addresses
    from server.config import lan_address

    lan = lan_address()
    loopback = load_config({"data_dir": tmp_path}, env={})
    assert loopback.announce == (("127.0.0.1", lan) if lan else ("127.0.0.1",))
    assert loopback.base_url == "http://127.0.0.1:8080"
    assert load_config({"data_dir": tmp_path, "host": "192.0.2.10"}, env={}).announce == (
        "192.0.2.10",
    )
    wildcard = load_config({"data_dir": tmp_path, "host": "0.0.0.0"}, env={})
    assert wildcard.announce == tuple(local_addresses(ipv6=True))  # IPv6 too: "::" media
    assert lan is None or lan in wildcard.announce
    assert not any(a.startswith(("127.", "fe80")) or a == "::1" for a in wildcard.announce)
    if wildcard.announce:
        assert wildcard.base_url == f"http://{wildcard.announce[0]}:8080"  # IPv4 comes first
    ipv4_only = load_config(
        {"data_dir": tmp_path, "host": "0.0.0.0", "media_host": "0.0.0.0"}, env={}
    )
    assert ipv4_only.announce == tuple(local_addresses(ipv6=False))
    given = load_config(
        {"data_dir": tmp_path, "host": "0.0.0.0", "announce": "198.51.100.7"}, env={}
    )
    assert given.announce == ("198.51.100.7",)  # --announce wins (a NAT'd server)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_data_dir_and_secret_are_this_users_only(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    load_config({"data_dir": fresh}, env={})
    assert mode(fresh) == 0o700 and mode(fresh / SECRET_FILE) == 0o600
    assert sorted(p.name for p in fresh.iterdir()) == [SECRET_FILE]  # no temp file left
    older = tmp_path / "older"  # what an older version left: readable by everyone
    older.mkdir(mode=0o755)
    older.chmod(0o755)
    (older / SECRET_FILE).write_bytes(b"k" * 43)
    (older / SECRET_FILE).chmod(0o644)
    assert load_config({"data_dir": older}, env={}).secret == b"k" * 43
    assert mode(older) == 0o700 and mode(older / SECRET_FILE) == 0o600


def test_the_secret_is_written_durably_before_it_is_used(tmp_path: Path, monkeypatch) -> None:
    import os

    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        steps.append(f"rename to {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    load_config({"data_dir": tmp_path}, env={})
    assert steps == ["fsync file", f"rename to {SECRET_FILE}", "fsync dir"]


def test_a_power_cut_before_the_rename_leaves_no_secret_file(tmp_path: Path, monkeypatch) -> None:
    import os

    def cut(src: str | Path, dst: str | Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", cut)
    with pytest.raises(ConfigError, match="cannot write"):
        load_config({"data_dir": tmp_path}, env={})
    assert not (tmp_path / SECRET_FILE).exists()  # never an empty one; the next start makes it
    monkeypatch.undo()
    assert len(load_config({"data_dir": tmp_path}, env={}).secret) >= 16


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"\x00" * 43, b"short-secret\n", b"\xff" * 20, b"with a space inside it"],
)
def test_a_damaged_secret_file_stops_the_start_and_is_kept(tmp_path: Path, content: bytes) -> None:
    (tmp_path / SECRET_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match="is empty or malformed.*will not replace it"):
        load_config({"data_dir": tmp_path}, env={})
    assert (tmp_path / SECRET_FILE).read_bytes() == content


def test_grace_after_the_planned_end(tmp_path: Path) -> None:
    config = load_config({"data_dir": tmp_path}, env={})
    assert (config.auto_end_grace_s, config.checkin_grace_s) == (1800.0, 1800.0)
    env = {"LOPSO_AUTO_END_GRACE_S": "0", "LOPSO_CHECKIN_GRACE_S": "600"}
    config = load_config({"data_dir": tmp_path}, env=env)
    assert (config.auto_end_grace_s, config.checkin_grace_s) == (0.0, 600.0)
