"""Hall links: a short join link (`/j/<code>`) per hall per class, and the hall-only exports.

A code is derived, not drawn: HMAC(secret, class, hall, the hall's join key), 8 characters of
a 32-letter alphabet without look-alikes (40 bits). Handing out the links again gives the same
codes; rotating a hall's join key gives it a new code and the old one stops resolving. The
store keeps code → (class, hall) so any node resolves it. These exports carry only halls'
links: never a lecturer's or a moderator's token (those are the staff links).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import hmac
import io
import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import qrcode
import qrcode.constants

from server import auth
from server.config import Config
from server.errors import UnknownError
from server.exports import csv_text
from server.models import ClassSession, Role, ShortLink, Site
from server.store.base import Store

ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o, 1/l/i: read aloud or typed from paper
CODE_CHARS = 8
CODE_RE = re.compile(f"[{ALPHABET}]{{{CODE_CHARS}}}")
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


@dataclasses.dataclass(frozen=True, slots=True)
class HallLink:
    """One hall's links for one class."""

    code: str  # the hall's code in the registry
    name: str
    village: str
    commune: str
    short_url: str  # base/j/<short code>
    url: str  # the signed join link the short one leads to


def short_code(secret: bytes, sid: str, site: str, join_key: str) -> str:
    """The short code of a hall in a class, for its current join key."""
    message = "\x1f".join(("lopso-short-link", sid, site, join_key)).encode()
    number = int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:8], "big")
    chars = []
    for _ in range(CODE_CHARS):
        number, index = divmod(number, len(ALPHABET))
        chars.append(ALPHABET[index])
    return "".join(chars)


def link_ttl(config: Config, session: ClassSession, now: float) -> float:
    """A hall's token outlives its class, whatever the configured TTL."""
    return max(config.token_ttl_s, (session.ends_at or session.starts_at) - now + 86400)


def join_path(config: Config, session: ClassSession, site: Site, now: float) -> str:
    """`/site/<class>/<hall>?token=…`: a hall token minted now with the hall's join key."""
    token = auth.mint(
        config.secret,
        session.id,
        Role.SITE,
        site=site.code,
        join_key=site.join_key,
        ttl_s=link_ttl(config, session, now),
        now=now,
    )
    return f"/site/{quote(session.id)}/{quote(site.code)}?token={token}"


async def hall_links(
    store: Store, config: Config, session: ClassSession, sites: Iterable[Site]
) -> list[HallLink]:
    """Each hall's short and signed links, its short code stored so `/j/<code>` resolves."""
    now, base = time.time(), config.base_url
    links, shorts = [], []
    for site in sites:
        code = short_code(config.secret, session.id, site.code, site.join_key)
        shorts.append(ShortLink(code=code, sid=session.id, site=site.code))
        links.append(
            HallLink(
                code=site.code,
                name=site.name,
                village=site.village,
                commune=site.commune,
                short_url=f"{base}/j/{code}",
                url=base + join_path(config, session, site, now),
            )
        )
    await store.put_short_links(shorts)
    return links


async def resolve(store: Store, config: Config, code: str) -> str:
    """The join path a short code leads to now; UnknownError for a code that leads nowhere
    (never handed out, its class or hall gone, or the hall's join key rotated since)."""
    link = await store.get_short_link(code) if CODE_RE.fullmatch(code) else None
    session = await store.get_session(link.sid) if link else None
    site = await store.get_site(link.site) if link else None
    if link is None or session is None or site is None:
        raise UnknownError("no class link has this code", code="unknown_short_link")
    if not hmac.compare_digest(code, short_code(config.secret, link.sid, site.code, site.join_key)):
        raise UnknownError("this link was replaced by a new one", code="unknown_short_link")
    return join_path(config, session, site, time.time())


def qr_svg(text: str) -> str:
    """A QR code of `text` as a small inline SVG (one path, dark modules as runs per row).

    The `qrcode` library builds the matrix; its mask is fixed (any mask decodes; trying all
    eight triples the time) and its own SVG writer, a few times slower, is not used: a cards
    page for a commune draws dozens of codes, a province's a thousand."""
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M, border=4, mask_pattern=0
    )
    code.add_data(text)
    code.make(fit=True)
    matrix = code.get_matrix()
    runs = []
    for y, row in enumerate(matrix):
        x = 0
        while x < len(row):
            if not row[x]:
                x += 1
                continue
            start = x
            while x < len(row) and row[x]:
                x += 1
            runs.append(f"M{start} {y}h{x - start}v1h-{x - start}z")
    size = len(matrix)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" '
        f'shape-rendering="crispEdges"><rect width="{size}" height="{size}" fill="#fff"/>'
        f'<path d="{"".join(runs)}" fill="#000"/></svg>'
    )


def by_commune(links: Iterable[HallLink], commune: str | None) -> list[HallLink]:
    """The links of one commune (all when `commune` is None), in name order."""
    chosen = [link for link in links if commune is None or link.commune == commune]
    return sorted(chosen, key=lambda link: (link.commune, link.name, link.code))


def start_text(session: ClassSession, lang: str = "vi") -> str:
    """The class's start as people read it, in Asia/Ho_Chi_Minh: `08:00 ngày 14/12/2026`."""
    at = datetime.fromtimestamp(session.starts_at, ZONE)
    if lang == "en":
        return at.strftime("%H:%M on %d/%m/%Y")
    return at.strftime("%H:%M ngày %d/%m/%Y")


def to_text(session: ClassSession, links: list[HallLink], lang: str = "vi") -> str:
    """A block to paste into a commune's Zalo group: the class, then one line per hall."""
    head = f"{session.title}\n"
    head += ("Starts " if lang == "en" else "Bắt đầu ") + start_text(session, lang) + "\n"
    lines = []
    commune = None
    for link in links:
        if link.commune != commune:
            commune = link.commune
            lines.append(f"\n{commune}:" if commune else "")
        lines.append(f"- {link.name}: {link.short_url}")
    return head + "\n".join(lines).rstrip() + "\n"


def to_csv(links: list[HallLink]) -> bytes:
    """UTF-8 with BOM (Excel); a cell starting with = + - @ is kept as text."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["code", "name", "village", "commune", "short_url", "url"])
    for link in links:
        row = [link.code, link.name, link.village, link.commune, link.short_url, link.url]
        writer.writerow([csv_text(value) for value in row])
    return ("\ufeff" + out.getvalue()).encode()


def to_json(session: ClassSession, links: list[HallLink]) -> dict[str, Any]:
    """The JSON export: the class and one object per hall."""
    return {
        "session_id": session.id,
        "title": session.title,
        "starts_at": session.starts_at,
        "halls": [dataclasses.asdict(link) for link in links],
    }
