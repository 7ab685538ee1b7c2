"""Configuration: LOPSO_* environment variables and CLI flags, read once into a frozen Config.

Nothing else in LopSo reads os.environ. Flags win over the environment, the environment
over defaults. Invalid values fail here, at startup, with a message naming the setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import secrets
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server import files
from server.turn import check_url

ROLES = ("all", "origin", "edge")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
LOG_FORMATS = ("text", "json")
DURABILITY = ("strict", "warn")
SECRET_FILE = "secret.key"


class ConfigError(Exception):
    """A setting is missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a LopSo process needs to know at startup."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    media_host: str = "::"  # dual-stack (IPv4 too); 0.0.0.0 where the kernel has no IPv6
    media_port: int = 8189
    announce: tuple[str, ...] = ()
    # a connected viewer unheard (no RTCP, no consent check) this long: its media stopped
    media_silence_s: float = 10.0
    redis_url: str | None = None
    # A Redis without AOF + fsync always loses acknowledged attendance in a crash:
    # "strict" refuses to start on one, "warn" starts with a warning (server/store/durability.py)
    redis_durability: str = "strict"
    role: str = "all"
    secret: bytes = b""
    token_ttl_s: int = 30 * 86400  # links are handed out days before a class
    log_format: str = "text"
    log_level: str = "INFO"
    public_url: str = ""
    node_id: str = ""
    demo_json: Path | None = None
    demo_sites: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    ws_idle_timeout_s: float = 30.0
    batch_interval_s: float = 1.0
    signalling_rate: float = 50.0  # WHIP/WHEP requests per second per client address; 0 = off
    # Wrong short-link codes (/j/<code>) per second per client address, in bursts of 10; 0 = off.
    short_link_rate: float = 0.2
    checkin_rate_site: float = 20.0  # check-ins per second per site; 0 = off
    checkin_burst_site: int = 200  # check-ins a site may send at once
    # A hall's Wi-Fi (or a carrier's NAT) puts hundreds of phones behind one address.
    checkin_rate_addr: float = 5.0  # check-ins per second per client address; 0 = off
    checkin_burst_addr: int = 100
    trust_proxy: bool = False  # behind a reverse proxy: the client comes from X-Forwarded-For
    # The reverse proxies whose X-Forwarded-For entries are believed (default with trust_proxy:
    # loopback); the client is the right-most entry that is not one of them.
    trusted_proxies: tuple[Network, ...] = ()
    node_url: str = ""  # cluster: where other nodes reach this node's HTTP (default: host:port)
    upstream_url: str = ""  # edge: the node to pull lectures from (default: the origin)
    node_capacity: int = 500  # cluster: viewers at load 1.0, for placement
    http_ports: tuple[int, int] | None = None  # bind the first free TCP port of this range
    media_ports: tuple[int, int] | None = None  # bind the first free UDP port of this range
    webhook_url: str = ""  # POST the class summary here when a class ends (server/webhook.py)
    webhook_secret: bytes = b""  # HMAC-SHA256 key of the webhook's signature header
    metrics_token: str = ""  # bearer token Prometheus sends to GET /metrics (or an admin token)
    # A moderator gets every open question and help request on connect: cap them per site.
    open_questions_per_site: int = 5  # unanswered questions a site may have at once
    open_help_per_site: int = 3  # unresolved help requests a site may have at once
    # WebSockets open at once on a node (server/admission.py); 0 = no limit
    ws_per_site: int = 8  # a hall: one player and a few pages
    ws_per_token: int = 32  # one lecturer, moderator or admin link: a few tabs per person
    ws_per_addr: int = 64  # one client address (several halls may share a carrier's NAT)
    # A class ends by itself this long after its planned end (ends_at); 0: only by a person.
    auto_end_grace_s: float = 1800.0
    # A participant's QR check-in link stops working this long after the class's end.
    checkin_grace_s: float = 1800.0
    # Halls whose firewall drops UDP (server/turn.py, docs/deployment.md): ICE-TCP on the
    # media port, and coturn with `use-auth-secret`; its static-auth-secret is turn_secret.
    media_tcp: bool = True
    turn_urls: tuple[str, ...] = ()  # turn:host:3478?transport=udp, turns:host:443, stun:...
    turn_secret: bytes = b""
    turn_ttl_s: int = 12 * 3600  # a TURN credential lives this long (a page gets fresh ones)
    turn_relay_ips: tuple[str, ...] = ()  # coturn's relay addresses, where not its URLs' hosts
    # Tests that stand for a hall whose firewall drops UDP: announce only TCP candidates.
    media_udp_candidates: bool = True
    # Recording (server/recordings.py): on unless LOPSO_RECORD=0; into recordings_dir
    # (default <data>/recordings), refused below record_min_free_mb free, kept retention days
    record: bool = True
    recordings_dir: Path | None = None
    record_min_free_mb: int = 1024
    record_segment_s: float = 4.0
    record_retention_days: int = 90

    @property
    def recordings(self) -> Path:
        """The folder recordings are written to and replayed from."""
        return self.recordings_dir or self.data_dir / "recordings"

    @property
    def tls(self) -> bool:
        """True when the HTTP server must speak HTTPS."""
        return self.tls_cert is not None

    @property
    def proxy_networks(self) -> tuple[Network, ...]:
        """Where X-Forwarded-For is believed from: none unless behind a reverse proxy."""
        if self.trusted_proxies:
            return self.trusted_proxies
        return LOOPBACK_NETWORKS if self.trust_proxy else ()

    @property
    def loopback_only(self) -> bool:
        """True when the HTTP server listens on a loopback address only (this machine)."""
        return self.host in LOOPBACKS or self.host.startswith("127.")

    @property
    def links_unreachable(self) -> bool:
        """True when the links handed out would point at this machine's loopback address while
        the server listens on other addresses too: halls elsewhere could not open them."""
        host = urlsplit(self.base_url).hostname or ""
        loopback = host in LOOPBACKS or host.startswith("127.")
        return loopback and not self.loopback_only

    @property
    def base_url(self) -> str:
        """Absolute URL that links handed to people start with (no trailing slash)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in WILDCARDS:
            host = self.announce[0] if self.announce else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


# setting name -> (environment variable, parser)
def _int(name: str, low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return parse


def _choice(name: str, options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _path(raw: Any) -> Path:
    return Path(str(raw)).expanduser()


def _addresses(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)):
        items = [str(x) for x in raw]
    else:
        items = str(raw).split(",")
    return tuple(x.strip() for x in items if x.strip())


def _networks(name: str) -> Callable[[Any], tuple[Network, ...]]:
    def parse(raw: Any) -> tuple[Network, ...]:
        networks = []
        for item in _addresses(raw):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(
                    f"{name} must be IP addresses or networks (10.0.0.0/8), got {item!r}"
                ) from None
        return tuple(networks)

    return parse


def _ips(name: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(raw: Any) -> tuple[str, ...]:
        try:
            return tuple(str(ipaddress.ip_address(item)) for item in _addresses(raw))
        except ValueError:
            raise ConfigError(f"{name} must be IP addresses, got {raw!r}") from None

    return parse


def _rate(name: str) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if value < 0:
            raise ConfigError(f"{name} must be 0 (no limit) or positive, got {value}")
        return value

    return parse


def _port_range(name: str) -> Callable[[Any], tuple[int, int]]:
    def parse(raw: Any) -> tuple[int, int]:
        low, _, high = str(raw).partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ConfigError(f"{name} must look like 40000-40099, got {raw!r}") from None
        if not 1 <= first <= last <= 65535:
            raise ConfigError(f"{name} must be a range within 1-65535, got {raw!r}")
        return first, last

    return parse


def _flag(name: str) -> Callable[[Any], bool]:
    def parse(raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        value = str(raw).strip().lower()
        if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"{name} must be true or false, got {raw!r}")
        return value in ("1", "true", "yes", "on")

    return parse


def _positive_float(name: str) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
        return value

    return parse


def _seconds(name: str) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
        if not 0 <= value <= 10 * 366 * 86400:  # also NaN
            raise ConfigError(f"{name} must be from 0 to 316224000 seconds, got {raw!r}")
        return value

    return parse


_SETTINGS: Mapping[str, tuple[str, Any]] = {
    "host": ("LOPSO_HOST", str),
    "port": ("LOPSO_PORT", _int("port", 0, 65535)),
    "data_dir": ("LOPSO_DATA", _path),
    "tls_cert": ("LOPSO_TLS_CERT", _path),
    "tls_key": ("LOPSO_TLS_KEY", _path),
    "media_host": ("LOPSO_MEDIA_HOST", str),
    "media_port": ("LOPSO_MEDIA_PORT", _int("media port", 0, 65535)),
    "announce": ("LOPSO_ANNOUNCE", _addresses),
    "media_silence_s": ("LOPSO_MEDIA_SILENCE", _positive_float("media silence (seconds)")),
    "redis_url": ("LOPSO_REDIS_URL", str),
    "redis_durability": ("LOPSO_REDIS_DURABILITY", _choice("redis durability", DURABILITY)),
    "role": ("LOPSO_ROLE", _choice("role", ROLES)),
    "secret": ("LOPSO_SECRET", lambda raw: str(raw).encode()),
    "token_ttl_s": ("LOPSO_TOKEN_TTL", _int("token TTL (seconds)", 60, 366 * 86400)),
    "log_format": ("LOPSO_LOG_FORMAT", _choice("log format", LOG_FORMATS)),
    "log_level": ("LOPSO_LOG_LEVEL", lambda raw: str(raw).upper()),
    "public_url": ("LOPSO_PUBLIC_URL", str),
    "node_id": ("LOPSO_NODE_ID", str),
    "demo_json": ("LOPSO_DEMO_JSON", _path),
    "demo_sites": ("LOPSO_DEMO_SITES", _int("demo sites", 0, 10000)),
    "max_body_bytes": ("LOPSO_MAX_BODY", _int("max body bytes", 1024, 1 << 30)),
    "ws_idle_timeout_s": ("LOPSO_WS_IDLE_TIMEOUT", _positive_float("WebSocket idle timeout")),
    "batch_interval_s": ("LOPSO_BATCH_INTERVAL", _positive_float("batch interval")),
    "signalling_rate": ("LOPSO_SIGNALLING_RATE", _rate("signalling rate")),
    "short_link_rate": ("LOPSO_SHORT_LINK_RATE", _rate("short link guess rate")),
    "checkin_rate_site": ("LOPSO_CHECKIN_RATE_SITE", _rate("check-in rate per site")),
    "checkin_rate_addr": ("LOPSO_CHECKIN_RATE_ADDR", _rate("check-in rate per address")),
    "checkin_burst_site": (
        "LOPSO_CHECKIN_BURST_SITE",
        _int("check-in burst per site", 1, 1_000_000),
    ),
    "checkin_burst_addr": (
        "LOPSO_CHECKIN_BURST_ADDR",
        _int("check-in burst per address", 1, 1_000_000),
    ),
    "trust_proxy": ("LOPSO_TRUST_PROXY", _flag("trust proxy")),
    "trusted_proxies": ("LOPSO_TRUSTED_PROXIES", _networks("trusted proxies")),
    "node_url": ("LOPSO_NODE_URL", str),
    "upstream_url": ("LOPSO_UPSTREAM_URL", str),
    "node_capacity": ("LOPSO_NODE_CAPACITY", _int("node capacity", 1, 1_000_000)),
    "http_ports": ("LOPSO_HTTP_PORTS", _port_range("HTTP port range")),
    "media_ports": ("LOPSO_MEDIA_PORTS", _port_range("media port range")),
    "webhook_url": ("LOPSO_WEBHOOK_URL", str),
    "webhook_secret": ("LOPSO_WEBHOOK_SECRET", lambda raw: str(raw).encode()),
    "metrics_token": ("LOPSO_METRICS_TOKEN", str),
    "open_questions_per_site": (
        "LOPSO_OPEN_QUESTIONS_PER_SITE",
        _int("open questions per site", 1, 10_000),
    ),
    "open_help_per_site": ("LOPSO_OPEN_HELP_PER_SITE", _int("open help per site", 1, 10_000)),
    "ws_per_site": ("LOPSO_WS_PER_SITE", _int("WebSockets per site", 0, 1_000_000)),
    "ws_per_token": ("LOPSO_WS_PER_TOKEN", _int("WebSockets per token", 0, 1_000_000)),
    "ws_per_addr": ("LOPSO_WS_PER_ADDR", _int("WebSockets per address", 0, 1_000_000)),
    "auto_end_grace_s": ("LOPSO_AUTO_END_GRACE_S", _seconds("auto-end grace")),
    "checkin_grace_s": ("LOPSO_CHECKIN_GRACE_S", _seconds("check-in grace")),
    "media_tcp": ("LOPSO_MEDIA_TCP", _flag("media TCP")),
    "turn_urls": ("LOPSO_TURN_URLS", _addresses),
    "turn_secret": ("LOPSO_TURN_SECRET", lambda raw: str(raw).encode()),
    "turn_ttl_s": ("LOPSO_TURN_TTL", _int("TURN credential TTL (seconds)", 60, 7 * 86400)),
    "turn_relay_ips": ("LOPSO_TURN_RELAY_IPS", _ips("TURN relay IPs")),
    "media_udp_candidates": ("LOPSO_MEDIA_UDP_CANDIDATES", _flag("media UDP candidates")),
    "record": ("LOPSO_RECORD", _flag("record")),
    "recordings_dir": ("LOPSO_RECORDINGS", _path),
    "record_min_free_mb": ("LOPSO_RECORD_MIN_FREE_MB", _int("record min free MB", 0, 1 << 30)),
    "record_segment_s": ("LOPSO_RECORD_SEGMENT_S", _positive_float("record segment seconds")),
    "record_retention_days": (
        "LOPSO_RECORD_RETENTION_DAYS",
        _int("record retention days", 0, 100 * 366),
    ),
}


def load_config(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Build the Config from `env` (default os.environ) and `overrides` (CLI flags, not None).

    Creates the data directory, and the secret file in it when no secret is given.
    """
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (var, parse) in _SETTINGS.items():
        raw = environ.get(var)
        if raw is not None and raw != "":
            values[name] = parse(raw)
    for name, raw in (overrides or {}).items():
        if name not in _SETTINGS:
            raise ConfigError(f"unknown setting {name!r}")
        if raw is not None:
            values[name] = _SETTINGS[name][1](raw)
    if values.get("demo_json") and not values.get("demo_sites"):
        values["demo_sites"] = 12
    config = Config(**values)
    _check(config)
    _prepare_data_dir(config.data_dir)
    if not config.secret:
        config = dataclasses.replace(config, secret=_load_or_create_secret(config.data_dir))
    if not config.node_id:
        config = dataclasses.replace(config, node_id=uuid.uuid4().hex[:12])
    if not config.announce:
        announce = default_announce(config.host, config.media_host)
        config = dataclasses.replace(config, announce=announce)
    return config


WILDCARDS = ("0.0.0.0", "::", "")
LOOPBACKS = ("127.0.0.1", "::1", "localhost")


def default_announce(host: str, media_host: str = "::") -> tuple[str, ...]:
    """Addresses to give viewers when none are configured: what a browser will use.

    On a real HTTP address, that address. On a wildcard, every non-loopback local address
    (IPv6 too when the media socket is dual-stack), so a machine with several addresses plays
    on each. On loopback, loopback and the LAN address: a browser on this machine checks from
    its LAN address and may never try loopback (media/udp.py answers from the address each
    check reached).
    """
    from media.udp import local_addresses

    ipv6 = media_host == "::"
    if host in LOOPBACKS:
        lan = lan_address()
        loopback = "::1" if host == "::1" and ipv6 else "127.0.0.1"
        return (loopback, lan) if lan else (loopback,)
    if host not in WILDCARDS:
        return (host,)
    return tuple(local_addresses(ipv6))


def lan_address() -> str | None:
    """The address this machine uses to reach other networks (no packet is sent)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing decides, nothing is sent
        address = str(probe.getsockname()[0])
        return None if address.startswith("127.") or address == "0.0.0.0" else address
    return None


def _check(config: Config) -> None:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("HTTPS needs both a certificate (--tls-cert) and a key (--tls-key)")
    for label, path in (("TLS certificate", config.tls_cert), ("TLS key", config.tls_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{label} file not found: {path}")
    if config.secret and len(config.secret) < 16:
        raise ConfigError("LOPSO_SECRET must be at least 16 characters")
    if config.public_url and not config.public_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"public URL must start with http:// or https://, got {config.public_url!r}"
        )
    if config.redis_url and not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"redis URL must start with redis://, rediss:// or unix://, got {config.redis_url!r}"
        )
    if config.webhook_url and not config.webhook_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"webhook URL must start with http:// or https://, got {config.webhook_url!r}"
        )
    if config.webhook_url and len(config.webhook_secret) < 16:
        raise ConfigError("LOPSO_WEBHOOK_URL needs LOPSO_WEBHOOK_SECRET of at least 16 characters")
    if config.metrics_token and len(config.metrics_token) < 16:
        raise ConfigError("LOPSO_METRICS_TOKEN must be at least 16 characters")
    for url in config.turn_urls:
        problem = check_url(url)
        if problem is not None:
            raise ConfigError(f"LOPSO_TURN_URLS: {url!r} {problem}")
    turn = [u for u in config.turn_urls if not u.startswith("stun:")]
    if turn and len(config.turn_secret) < 16:
        raise ConfigError("LOPSO_TURN_URLS needs LOPSO_TURN_SECRET of at least 16 characters")
    if config.turn_secret and not turn:
        raise ConfigError("LOPSO_TURN_SECRET needs LOPSO_TURN_URLS (turn: or turns: URLs)")
    if config.role != "all" and not config.redis_url:
        raise ConfigError(f"role {config.role} needs cluster mode (LOPSO_REDIS_URL)")


def _prepare_data_dir(path: Path) -> None:
    try:
        files.private_dir(path)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {path}: {exc.strerror}") from None


def _load_or_create_secret(data_dir: Path) -> bytes:
    """Keep one random signing secret per data directory so tokens survive restarts.

    A secret file that exists but is empty or malformed (a power cut while an older version
    wrote it) stops the start: a new secret would silently kill every link handed out."""
    path = data_dir / SECRET_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32).encode()
        try:
            files.write_private(path, secret)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        return secret
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    secret = raw.strip()
    if len(secret) < 16 or not all(0x21 <= byte <= 0x7E for byte in secret):
        raise ConfigError(
            f"{path} is empty or malformed ({len(raw)} bytes; a secret is at least 16 printable "
            "ASCII characters). LopSo will not replace it: every link handed out is signed "
            "with it. Restore it from a backup, or delete it to start with a new secret (then "
            "hand out every link again)."
        )
    files.tighten(path)
    return secret
