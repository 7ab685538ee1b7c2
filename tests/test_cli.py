"""The `lopso` command as a real subprocess: serve --demo-json, sites import, token, class create."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mediaclip import ecdsa_identity
from redisproc import RedisProcess
from serverproc import LopsoServer, LopsoServerError

from server import auth
from server.config import SECRET_FILE
from server.models import Role


def lopso(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10, context=context) as reply:
        return reply.status, reply.read().decode()


def test_serve_demo_json_has_exact_keys_and_working_links(tmp_path: Path) -> None:
    with LopsoServer(tmp_path, demo_sites=12) as srv:
        demo = srv.demo
        assert set(demo) == {"session_id", "lecturer", "presenters", "moderator", "sites"}
        assert set(demo["lecturer"]) == {"url", "whip_url", "token"}
        assert set(demo["moderator"]) == {"url", "token"}
        assert len(demo["sites"]) == 12
        assert all(
            set(s) == {"code", "name", "commune", "url", "whep_url", "replay_url", "token"}
            for s in demo["sites"]
        )
        assert {s["commune"] for s in demo["sites"]} == {
            "Xã Tiên Lữ",
            "Xã Hoàng Hoa Thám",
            "Phường Hiến Nam",
        }
        assert all(s["name"].startswith("Nhà văn hóa ") for s in demo["sites"])
        assert demo["lecturer"]["whip_url"] == f"{srv.url}/whip/{demo['session_id']}"
        for link in (demo["lecturer"]["url"], demo["moderator"]["url"], demo["sites"][0]["url"]):
            assert link.startswith(srv.url + "/")
            status, html = get(link)
            assert status == 200 and 'id="page-config"' in html
        claims = auth.verify(b"test-secret-0123456789abcdef", demo["sites"][3]["token"])
        assert claims.role is Role.SITE and claims.site == demo["sites"][3]["code"]
        status, landing = get(srv.url + "/")
        assert status == 200 and demo["session_id"] in landing
        assert demo["moderator"]["url"] in srv.log()  # links printed on startup


def test_sites_import_then_class_create_then_token(tmp_path: Path) -> None:
    csv_path = tmp_path / "sites.csv"
    csv_path.write_bytes(
        "code,name,village,commune,province\r\n"
        "TL-1,Nhà văn hóa thôn Đông,Thôn Đông,Xã Tiên Lữ,Hưng Yên\r\n"
        "TL-2,Nhà văn hóa thôn Đoài,Thôn Đoài,Xã Tiên Lữ,Hưng Yên\r\n".encode("utf-8-sig")
    )
    data = tmp_path / "data"
    done = lopso("sites", "import", str(csv_path), data=data)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"imported": 2}

    bad = tmp_path / "bad.csv"
    bad.write_text("code,name\nok,x\nnot ok,y\n", encoding="utf-8")
    failed = lopso("sites", "import", str(bad), data=data)
    assert failed.returncode == 1 and "line 3" in failed.stderr

    made = lopso(
        "class",
        "create",
        "--title",
        "Chuyển đổi số",
        "--starts-at",
        "2026-12-01T01:00:00Z",
        "--sites",
        "TL-2",
        "--id",
        "dec1",
        "--presenter",
        "Nguyễn Văn An|Học viện",
        "--presenter",
        "canbo:Trần Thị Bình|Công an tỉnh",
        data=data,
    )
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert body["class"]["id"] == "dec1" and body["class"]["site_codes"] == ["TL-2"]
    studios = body["links"]["presenters"]
    assert [(s["id"], s["organisation"]) for s in studios] == [
        ("p1", "Học viện"),
        ("canbo", "Công an tỉnh"),
    ]
    assert [s["name"] for s in body["links"]["sites"]] == ["Nhà văn hóa thôn Đoài"]

    short = lopso(
        "class",
        "create",
        "--title",
        "Chuyển đổi số",
        "--starts-at",
        "2026-12-01T01:00:00Z",
        "--id",
        "dec2",
        "--public-url",
        "https://lop.example.vn/",
        data=data,
    )
    assert short.returncode == 0, short.stderr
    halls = json.loads(short.stdout)["links"]["sites"]
    assert [h["code"] for h in halls] == ["TL-1", "TL-2"]
    for hall in halls:
        assert hall["url"].startswith("https://lop.example.vn/site/dec2/")
        assert re.fullmatch(r"https://lop\.example\.vn/j/[a-z2-9]{8}", hall["short_url"])
    assert body["links"]["sites"][0]["short_url"].startswith("http://127.0.0.1:8080/j/")

    minted = lopso("token", "--class", "dec1", "--role", "site", "--site", "TL-2", data=data)
    assert minted.returncode == 0, minted.stderr
    secret = (data / SECRET_FILE).read_bytes()
    claims = auth.verify(secret, minted.stdout.strip())
    assert (claims.sid, claims.role, claims.site) == ("dec1", Role.SITE, "TL-2")
    link_claims = auth.verify(secret, body["links"]["sites"][0]["token"])
    assert claims.k == link_claims.k is not None  # both carry the site's current key id
    second = lopso(
        "token", "--class", "dec1", "--role", "lecturer", "--presenter", "canbo", data=data
    )
    assert auth.verify(secret, second.stdout.strip()).p == "canbo"
    assert auth.verify(secret, studios[1]["token"]).p == "canbo"

    rotated = lopso("sites", "rotate", "TL-2", data=data)
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout) == {"code": "TL-2", "rotated": True}
    fresh = lopso("token", "--class", "dec1", "--role", "site", "--site", "TL-2", data=data)
    assert auth.verify(secret, fresh.stdout.strip()).k not in (None, claims.k)
    unknown = lopso("sites", "rotate", "NOPE", data=data)
    assert unknown.returncode == 1 and "NOPE" in unknown.stderr


def test_serve_warns_when_links_would_point_at_loopback(tmp_path: Path) -> None:
    warning = "links point at this machine's loopback address"
    with LopsoServer(tmp_path / "a", demo_sites=1, extra_args=["--host", "0.0.0.0"]) as srv:
        assert srv.demo["sites"][0]["url"].startswith("http://127.0.0.1:")
        assert warning in srv.log() and "LOPSO_PUBLIC_URL" in srv.log()
    public = ["--host", "0.0.0.0", "--public-url", "https://lop.example.vn"]
    with LopsoServer(tmp_path / "b", demo_sites=1, extra_args=public) as srv:
        assert srv.demo["sites"][0]["url"].startswith("https://lop.example.vn/site/")
        assert warning not in srv.log()
    with LopsoServer(tmp_path / "c", demo_sites=1) as srv:  # this machine only: links fit
        assert warning not in srv.log()


def test_token_needs_a_class_but_for_an_admin(tmp_path: Path) -> None:
    """Before: every role defaulted to --class '*', a moderator token good in every class."""
    data = tmp_path / "data"
    for role in ("moderator", "lecturer", "site", "participant"):
        refused = lopso("token", "--role", role, "--site", "S1", data=data)
        assert refused.returncode == 1 and refused.stdout == ""
        assert f"a {role} token needs --class SID" in refused.stderr
    starred = lopso("token", "--class", "*", "--role", "moderator", data=data)
    assert starred.returncode == 1 and "* is for admin tokens only" in starred.stderr
    secret = (data / SECRET_FILE).read_bytes()
    admin = lopso("token", "--role", "admin", data=data)
    assert admin.returncode == 0, admin.stderr
    assert auth.verify(secret, admin.stdout.strip()).sid == auth.ANY_CLASS
    moderator = lopso("token", "--class", "dec1", "--role", "moderator", data=data)
    assert auth.verify(secret, moderator.stdout.strip()).sid == "dec1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "99999"], "port must be between"),
        (["serve", "--tls-cert", "/nonexistent.pem"], "needs both a certificate"),
    ],
)
def test_bad_configuration_exits_2_with_a_precise_message(tmp_path: Path, args, message) -> None:
    done = lopso(*args, data=tmp_path / "data")
    assert done.returncode == 2 and message in done.stderr


def test_https_when_given_a_certificate(tmp_path: Path) -> None:
    with LopsoServer(tmp_path, demo_sites=1, tls=ecdsa_identity(tmp_path, "127.0.0.1")) as srv:
        assert srv.url.startswith("https://")
        assert srv.demo["lecturer"]["url"].startswith(srv.url)
        status, html = get(srv.demo["lecturer"]["url"], ssl._create_unverified_context())
        assert status == 200 and "page-config" in html


def test_json_log_lines_carry_extra_fields() -> None:
    import logging

    from server.cli import JsonFormatter, TextFormatter

    record = logging.LogRecord("server.x", logging.INFO, __file__, 1, "site joined", (), None)
    record.sid, record.site = "c1", "Nhà văn hóa thôn Đông"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "site joined" and line["level"] == "INFO" and line["logger"] == "server.x"
    assert line["sid"] == "c1" and line["site"] == "Nhà văn hóa thôn Đông"
    assert (
        TextFormatter("%(message)s").format(record)
        == "site joined sid=c1 site=Nhà văn hóa thôn Đông"
    )


async def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Acked headcounts and check-ins survive kill -9; the restarted server serves the class."""
    import aiohttp

    with LopsoServer(tmp_path, demo_sites=2) as srv:
        demo = dict(srv.demo)
        sid, site = demo["session_id"], demo["sites"][0]
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{srv.url}/ws/{sid}", params={"token": site["token"]})
            for i in range(20):
                await ws.send_json(
                    {"type": "headcount", "count": i, "phase": "other", "id": f"h{i}"}
                )
            acked = 0
            while acked < 20:
                acked += (await ws.receive_json(timeout=10))["type"] == "ack"
            srv.kill()
            await ws.close()
        srv.start()  # same data dir and port
        async with aiohttp.ClientSession() as http:
            url = f"{srv.url}/api/sessions/{sid}/attendance"
            async with http.get(url, params={"token": demo["moderator"]["token"]}) as reply:
                assert reply.status == 200, await reply.text()
                report = await reply.json()
    record = next(r for r in report["sites"] if r["code"] == site["code"])
    assert record["headcount"]["reports"] == 20 and record["headcount"]["latest"] == 19, record
    # the join survived too, and the connection the crash left open was closed at the
    # last moment the class was seen alive (the last headcount), not left open forever
    assert [i["open"] for i in record["page_intervals"]] == [False], record["page_intervals"]


def test_demo_json_and_data_dir_are_this_users_only(tmp_path: Path) -> None:
    with LopsoServer(tmp_path, demo_sites=1) as srv:
        assert srv.demo["lecturer"]["token"]
        assert srv.demo_path.stat().st_mode & 0o777 == 0o600  # it holds every link's token
        assert srv.data.stat().st_mode & 0o777 == 0o700
        for path in srv.data.iterdir():
            assert path.stat().st_mode & 0o077 == 0, path


def test_serve_refuses_an_empty_secret_file_instead_of_replacing_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / SECRET_FILE).write_bytes(b"")  # a power cut while an older version wrote it
    done = lopso("serve", "--port", "0", data=data)
    assert done.returncode == 2, done.stderr
    assert "secret.key is empty or malformed" in done.stderr and "backup" in done.stderr
    assert (data / SECRET_FILE).read_bytes() == b""


# --- cluster mode checks that Redis keeps what it acknowledges --------------------------------
WARNING = "redis is not durable"


def cluster_node(tmp_path: Path, redis: RedisProcess, durability: str | None) -> LopsoServer:
    env = {"LOPSO_REDIS_DURABILITY": durability} if durability else {}
    return LopsoServer(
        tmp_path / "node", demo_sites=0, extra_args=["--redis-url", redis.url], env=env
    )


def healthz(srv: LopsoServer) -> dict:
    return json.loads(get(srv.url + "/healthz")[1])


def test_strict_refuses_a_redis_without_aof_and_warn_starts_flagged(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "redis", appendonly="no") as redis:
        with pytest.raises(LopsoServerError) as refused:
            cluster_node(tmp_path, redis, None).start()  # strict is the default
        message = str(refused.value)
        assert "lopso: Redis would lose acknowledged attendance in a crash" in message
        assert "appendonly is 'no' (need 'yes')" in message
        assert "LOPSO_REDIS_DURABILITY=warn" in message and "Traceback" not in message
        with cluster_node(tmp_path, redis, "warn") as srv:
            health = healthz(srv)
            assert health["ok"] is True and health["redis_durable"] is False
            assert "appendonly is 'no'" in health["warnings"][0]
            assert srv.log().count(WARNING) == 1


def test_a_redis_with_aof_always_starts_quietly(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "redis") as redis, cluster_node(tmp_path, redis, None) as srv:
        health = healthz(srv)
        assert health["redis_durable"] is True and "warnings" not in health
        assert WARNING not in srv.log()
