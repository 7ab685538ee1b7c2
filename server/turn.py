"""ICE servers for halls without UDP: time-limited TURN credentials for coturn.

coturn's `use-auth-secret` REST scheme: the username is "<expiry unix time>:<user>" and the
password is base64(HMAC-SHA1(static-auth-secret, username)); coturn recomputes it and refuses
it once the expiry has passed. LopSo hands the servers out in page config (site player,
studio) and as RFC 9725 `Link: <turn:...>; rel="ice-server"` headers on WHIP/WHEP answers and
on authorized `OPTIONS`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SCHEMES = ("stun", "turn", "turns")


@dataclass(frozen=True)
class IceServer:
    """One RTCIceServer: its URLs and, for TURN, the minted username and credential."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def wire(self) -> dict[str, object]:
        """The RTCIceServer dictionary a page passes to RTCPeerConnection."""
        out: dict[str, object] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
            out["credential"] = self.credential
        return out

    def links(self) -> list[str]:
        """One RFC 9725 `Link` header value per URL."""
        extra = ""
        if self.username is not None:
            extra = (
                f'; username="{_quoted(self.username)}"; credential="{_quoted(self.credential)}"'
                '; credential-type="password"'
            )
        return [f'<{url}>; rel="ice-server"{extra}' for url in self.urls]


def _quoted(value: str | None) -> str:
    return (value or "").replace("\\", "\\\\").replace('"', '\\"')


def credentials(secret: bytes, user: str, ttl_s: float, now: float) -> tuple[str, str]:
    """(username, password) valid until `now + ttl_s`, the coturn REST way."""
    username = f"{int(now + ttl_s)}:{user}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(
    urls: Iterable[str], secret: bytes, user: str, ttl_s: float, now: float
) -> list[IceServer]:
    """The ICE servers to hand one client: STUN URLs bare, TURN URLs with fresh credentials."""
    urls = tuple(urls)
    stun = tuple(u for u in urls if u.startswith("stun:"))
    turn = tuple(u for u in urls if not u.startswith("stun:"))
    servers = [IceServer(stun)] if stun else []
    if turn and secret:
        username, password = credentials(secret, user, ttl_s, now)
        servers.append(IceServer(turn, username, password))
    return servers


def check_url(url: str) -> str | None:
    """Why `url` is not a usable stun:/turn:/turns: URI (RFC 7064/7065), or None."""
    scheme, _, rest = url.partition(":")
    if scheme not in SCHEMES or not rest or rest.startswith("/"):
        return "must look like turn:host:3478?transport=udp, turns:host:443 or stun:host:3478"
    if any(c in url for c in ' "<>,;\\'):
        return "must not contain spaces, quotes, <, >, commas, semicolons or backslashes"
    return None


def host_of(url: str) -> str:
    """The host part of a stun:/turn:/turns: URI ("[::1]" gives "::1")."""
    rest = url.partition(":")[2].split("?", 1)[0]
    parsed = urlsplit("//" + rest)
    return parsed.hostname or ""


def relay_hosts(urls: Iterable[str], extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The IP addresses TURN relays reach us from: each TURN URL's host (names resolved once,
    at startup) plus `extra` (coturn's relay-ip/external-ip where it differs)."""
    found: list[str] = list(extra)
    for url in urls:
        if url.startswith("stun:"):
            continue
        host = host_of(url)
        try:
            found.append(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
        except OSError as exc:
            log.warning("TURN host does not resolve", extra={"host": host, "error": str(exc)})
            continue
        found += [str(info[4][0]) for info in infos]
    return tuple(dict.fromkeys(found))
