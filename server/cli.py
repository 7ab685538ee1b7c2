"""The `lopso` command: serve, sites import, token, class create.

lopso serve [--host H] [--port P] [--data DIR] [--tls-cert F --tls-key F]
            [--demo-json PATH] [--demo-sites N] [--media-port P] [--announce IP,...]
lopso sites import FILE.csv [--data DIR]
lopso sites rotate CODE [--data DIR]      (a new join key: the site's old links stop working)
lopso token --role ROLE [--class SID] [--site CODE] [--presenter ID] [--ttl SECONDS]
                                         (--class required but for admin)
lopso users add NAME --role admin|moderator [--commune NAME ...]
                                         (password prompted twice, or read from stdin)
lopso users list | lopso users remove NAME
lopso class create --title T --starts-at ISO [--ends-at ISO] [--codec VP8|H264]
                   [--sites CODE,...] [--id SID] [--public-url URL]
                   [--presenter "Name|Organisation" ...]
                                         (links and each hall's short link /j/CODE)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from media.errors import MediaError
from server import auth
from server.config import Config, ConfigError, load_config
from server.errors import LopsoError
from server.models import Role
from server.store.base import StoreError

log = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extra fields."""

    _PLAIN = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update({k: v for k, v in vars(record).items() if k not in self._PLAIN})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...` with the record's extra fields."""

    _PLAIN = JsonFormatter._PLAIN

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in self._PLAIN)
        return f"{line} {extra}" if extra else line


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lopso", description="LopSo live classes for village halls"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (all-in-one by default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    _data(serve)
    serve.add_argument("--tls-cert", dest="tls_cert")
    serve.add_argument("--tls-key", dest="tls_key")
    serve.add_argument(
        "--demo-json", dest="demo_json", help="create a demo class, write its links here"
    )
    serve.add_argument("--demo-sites", dest="demo_sites", type=int, help="demo sites (default 12)")
    serve.add_argument("--media-host", dest="media_host")
    serve.add_argument(
        "--media-port", dest="media_port", type=int, help="the one UDP port for media"
    )
    serve.add_argument("--announce", help="addresses viewers send media to, comma-separated")
    serve.add_argument("--redis-url", dest="redis_url")
    serve.add_argument(
        "--redis-durability",
        dest="redis_durability",
        choices=("strict", "warn"),
        help="on a Redis without AOF + fsync always: refuse to start (strict) or warn",
    )
    serve.add_argument("--role", choices=("all", "origin", "edge"))
    serve.add_argument("--upstream-url", dest="upstream_url", help="edge: pull from this node")
    serve.add_argument("--node-url", dest="node_url", help="cluster: where nodes reach this one")
    serve.add_argument("--public-url", dest="public_url", help="base of the links handed out")
    serve.add_argument("--log-format", dest="log_format", choices=("text", "json"))
    serve.add_argument(
        "--trust-proxy",
        dest="trust_proxy",
        action="store_true",
        default=None,
        help="behind a reverse proxy: take the client address from X-Forwarded-For",
    )
    serve.add_argument(
        "--trusted-proxies",
        dest="trusted_proxies",
        help="the reverse proxies' addresses or networks, comma-separated (default: loopback)",
    )

    sites = commands.add_parser("sites", help="site registry").add_subparsers(
        dest="sites_cmd", required=True
    )
    imp = sites.add_parser("import", help="import sites from a CSV file")
    imp.add_argument("file", type=Path)
    _data(imp)
    rotate = sites.add_parser(
        "rotate", help="give a site a new join key (its old links stop working)"
    )
    rotate.add_argument("code")
    _data(rotate)

    users = commands.add_parser("users", help="accounts for the organiser page").add_subparsers(
        dest="users_cmd", required=True
    )
    add = users.add_parser("add", help="add or replace an account (password on the terminal)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("admin", "moderator"))
    add.add_argument(
        "--commune",
        dest="communes",
        action="append",
        default=[],
        help="a moderator sees only the halls of this commune (repeatable)",
    )
    _data(add)
    _data(users.add_parser("list", help="list the accounts"))
    remove = users.add_parser("remove", help="remove an account (its sign-ins end)")
    remove.add_argument("name")
    _data(remove)

    token = commands.add_parser("token", help="mint a token")
    token.add_argument(
        "--class",
        dest="sid",
        help=f"class id; required but for an admin token (default {auth.ANY_CLASS}: every class)",
    )
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--site")
    token.add_argument("--presenter", help="a lecturer token's presenter id (default: the lead)")
    token.add_argument("--ttl", type=int, help="seconds (default: the configured token TTL)")
    _data(token)

    klass = commands.add_parser("class", help="classes").add_subparsers(
        dest="class_cmd", required=True
    )
    create = klass.add_parser("create", help="create a class and print its links")
    create.add_argument("--title", required=True)
    create.add_argument("--starts-at", dest="starts_at", required=True, help="ISO time with zone")
    create.add_argument("--ends-at", dest="ends_at")
    create.add_argument("--codec", default="VP8", choices=("VP8", "H264"))
    create.add_argument("--sites", default="", help="site codes, comma-separated (default: all)")
    create.add_argument("--id", dest="sid")
    create.add_argument(
        "--public-url", dest="public_url", help="base of the links printed (LOPSO_PUBLIC_URL)"
    )
    create.add_argument(
        "--presenter",
        dest="presenters",
        action="append",
        default=[],
        help='a presenter "Name|Organisation" (or "id:Name|Organisation"), repeatable; '
        "the first is the lead (default: one presenter)",
    )
    _data(create)

    recordings = commands.add_parser("recordings", help="class recordings").add_subparsers(
        dest="recordings_cmd", required=True
    )
    _data(recordings.add_parser("list", help="list the recordings (JSON lines)"))
    export = recordings.add_parser("export", help="join a class's recording into one file")
    export.add_argument("sid")
    export.add_argument("--out", type=Path, help="copy it here (default: print its path)")
    _data(export)
    return parser


def _data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", dest="data_dir", help="data directory (default ./data)")


_SERVE_KEYS = (
    "host",
    "port",
    "data_dir",
    "tls_cert",
    "tls_key",
    "demo_json",
    "demo_sites",
    "media_host",
    "media_port",
    "announce",
    "redis_url",
    "redis_durability",
    "role",
    "public_url",
    "log_format",
    "trust_proxy",
    "trusted_proxies",
    "upstream_url",
    "node_url",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lopso` console command; returns the exit status."""
    args = _parser().parse_args(argv)
    keys = _SERVE_KEYS if args.command == "serve" else ("data_dir", "public_url")
    try:
        config = load_config({key: getattr(args, key, None) for key in keys})
    except ConfigError as exc:
        print(f"lopso: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    try:
        if args.command == "serve":
            serve(config)
        elif args.command == "sites" and args.sites_cmd == "rotate":
            print(json.dumps(asyncio.run(_rotate(config, args.code))))
        elif args.command == "sites":
            print(json.dumps(asyncio.run(_import_sites(config, args.file))))
        elif args.command == "users":
            print(json.dumps(asyncio.run(_users(config, args)), ensure_ascii=False))
        elif args.command == "token":
            print(asyncio.run(_token(config, args)))
        elif args.command == "class":
            print(
                json.dumps(asyncio.run(_create_class(config, args)), ensure_ascii=False, indent=2)
            )
        elif args.command == "recordings":
            print(_recordings(config, args))
    except (LopsoError, StoreError, MediaError, ValueError, OSError) as exc:  # DurabilityError too
        print(f"lopso: {exc}", file=sys.stderr)
        return 1
    return 0


def _recordings(config: Config, args: argparse.Namespace) -> str:
    """`recordings list`: one JSON line per recording; `recordings export SID`: the path of
    the joined file (copied to --out when given)."""
    import shutil

    from media.recorder import Manifest, join_segments
    from server.recordings import Recordings

    recordings = Recordings(config, lambda sid, problem: None)
    if args.recordings_cmd == "list":
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in recordings.listing())
    folder = recordings.folder(args.sid)
    try:
        manifest = Manifest.load(folder)
    except (OSError, ValueError, TypeError):
        raise ValueError(f"class {args.sid} has no recording in {config.recordings}") from None
    joined = join_segments(folder, manifest)
    if args.out is None:
        return str(joined)
    shutil.copyfile(joined, args.out)
    return str(args.out)


def serve(config: Config) -> None:
    """Run the server until interrupted."""
    from aiohttp import web

    from server.app import create_app
    from server.cluster import resolve_ports

    config = resolve_ports(config)  # LOPSO_HTTP_PORTS / LOPSO_MEDIA_PORTS: first free port
    context = None
    if config.tls_cert is not None and config.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.links_unreachable:
        log.warning(
            "links point at this machine's loopback address: halls elsewhere cannot open them; "
            "set LOPSO_PUBLIC_URL or --public-url to the address halls reach",
            extra={"url": config.base_url, "host": config.host},
        )
    log.info(
        "starting",
        extra={
            "url": config.base_url,
            "role": config.role,
            "data": str(config.data_dir),
            "node": config.node_id,
        },
    )
    web.run_app(
        create_app(config),
        # "::" means every address, IPv4 too (asyncio would make it IPv6-only): None binds both
        host=None if config.host == "::" else config.host,
        port=config.port,
        ssl_context=context,
        access_log=None,
        print=lambda text: print(text, flush=True),
    )


async def _import_sites(config: Config, path: Path) -> dict[str, int]:
    from server.registry import import_sites
    from server.store import open_store

    data = path.read_bytes()
    store = await open_store(config.redis_url, config.data_dir, config.node_id)
    try:
        return {"imported": await import_sites(store, data)}
    finally:
        await store.close()


async def _rotate(config: Config, code: str) -> dict[str, Any]:
    from server.hub import Hub
    from server.registry import rotate_join_key
    from server.store import open_store

    store = await open_store(config.redis_url, config.data_dir, config.node_id)
    try:
        site = await rotate_join_key(store, code)
        if config.redis_url:  # cluster: running nodes close the site's open pages now
            await Hub(store, config.node_id).revoke_site(code)
    finally:
        await store.close()
    return {"code": site.code, "rotated": True}


def read_password(stdin: Any = None) -> str:
    """The new password: typed twice on a terminal, else the first line of standard input."""
    import getpass

    stream = stdin or sys.stdin
    if not stream.isatty():
        return str(stream.readline()).rstrip("\r\n")
    first = getpass.getpass("Mật khẩu / password: ")
    if getpass.getpass("Nhập lại / again: ") != first:
        raise ValueError("the two passwords differ")
    return first


async def _users(config: Config, args: argparse.Namespace) -> Any:
    from server import accounts
    from server.store import open_store

    user = None
    if args.users_cmd == "add":  # validated and hashed before the store is opened
        password = read_password()
        user = accounts.new_user(args.name, Role(args.role), password, args.communes)
    store = await open_store(config.redis_url, config.data_dir, config.node_id)
    try:
        if user is not None:
            await store.put_user(user)
            return {"name": user.name, "role": user.role.value, "communes": list(user.communes)}
        if args.users_cmd == "remove":
            if not await store.remove_user(args.name):
                raise ValueError(f"no account named {args.name}")
            return {"name": args.name, "removed": True}
        return [
            {"name": u.name, "role": u.role.value, "communes": list(u.communes)}
            for u in await store.list_users()
        ]
    finally:
        await store.close()


async def _token(config: Config, args: argparse.Namespace) -> str:
    """Mint a token; a site or participant token carries its site's current join key id."""
    from server.roles import SITE_ROLES

    role, join_key = Role(args.role), None
    sid = args.sid or (auth.ANY_CLASS if role is Role.ADMIN else None)
    if sid is None:
        raise ValueError(
            f"a {role.value} token needs --class SID "
            f"(only an admin token may be for every class, --class '{auth.ANY_CLASS}')"
        )
    if role in SITE_ROLES and args.site:
        from server.store import open_store

        store = await open_store(config.redis_url, config.data_dir, config.node_id)
        try:
            site = await store.get_site(args.site)
        finally:
            await store.close()
        if site is None:
            raise ValueError(f"site {args.site} is not in the registry")
        join_key = site.join_key
    ttl = args.ttl or config.token_ttl_s
    return auth.mint(
        config.secret,
        sid,
        role,
        site=args.site,
        join_key=join_key,
        presenter=args.presenter,
        ttl_s=ttl,
    )


async def _create_class(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    from server.demo import class_links
    from server.halllinks import hall_links
    from server.hub import Hub, session_wire
    from server.presenters import parse_cli_presenter
    from server.routes.api import session_from_body
    from server.store import open_store

    body = {
        "id": args.sid,
        "title": args.title,
        "starts_at": args.starts_at,
        "ends_at": args.ends_at,
        "video_codec": args.codec,
        "site_codes": [c.strip() for c in args.sites.split(",") if c.strip()],
        "presenters": [parse_cli_presenter(p) for p in args.presenters],
    }
    store = await open_store(config.redis_url, config.data_dir, config.node_id)
    try:
        session = await session_from_body(body, store)
        if await store.get_session(session.id) is not None:
            raise ValueError(f"class {session.id} already exists")
        await store.put_session(session)
        sites = await Hub(store, config.node_id).expected_sites(session)
        links = class_links(config, session, sites)
        shorts = await hall_links(store, config, session, sites)
        for entry, hall in zip(links["sites"], shorts, strict=True):
            entry["short_url"] = hall.short_url
        return {"class": session_wire(session), "links": links}
    finally:
        await store.close()
