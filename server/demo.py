"""The demo class (`lopso serve --demo-json`) and the links + tokens of any class."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

from server import auth, files
from server.config import Config
from server.models import ClassSession, Role, Site
from server.peer import lineup_wire
from server.store.base import Store

COMMUNES = (
    ("TL", "Xã Tiên Lữ", "thôn"),
    ("HHT", "Xã Hoàng Hoa Thám", "thôn"),
    ("HN", "Phường Hiến Nam", "tổ dân phố"),
)
VILLAGES = (
    "Đông",
    "Đoài",
    "Nam",
    "Bắc",
    "Thượng",
    "Hạ",
    "Trung",
    "An Lạc",
    "Phú Cường",
    "Hòa Bình",
    "Tân Hưng",
    "Yên Phú",
    "Quang Trung",
    "Lê Lợi",
    "Hồng Châu",
)
PROVINCE = "Hưng Yên"
DEMO_TITLE = "Bình dân học vụ số: Kỹ năng số cơ bản (lớp thử)"


def demo_sites(count: int) -> list[Site]:
    """`count` sites spread round-robin over three communes, with Vietnamese names."""
    sites = []
    for index in range(count):
        short, commune, kind = COMMUNES[index % len(COMMUNES)]
        number = index // len(COMMUNES)
        village = VILLAGES[number % len(VILLAGES)]
        if number >= len(VILLAGES):
            village = f"{village} {number // len(VILLAGES) + 1}"
        if kind == "tổ dân phố":
            village = str(number + 1)
        sites.append(
            Site(
                code=f"HY-{short}-{number + 1:03d}",
                name=f"Nhà văn hóa {kind} {village}",
                village=f"{kind.capitalize()} {village}",
                commune=commune,
                province=PROVINCE,
                join_key=uuid.uuid4().hex,
            )
        )
    return sites


async def create_demo(store: Store, config: Config, count: int) -> dict[str, Any]:
    """Register demo sites and a new demo class starting in 10 minutes; return its links."""
    sites = demo_sites(count)
    # A restart must not revoke the links pages already hold: keep known sites' join keys.
    known = {s.code: s for s in await store.get_sites([s.code for s in sites]) if s}
    sites = [
        dataclasses.replace(s, join_key=known[s.code].join_key)
        if s.code in known and known[s.code].join_key
        else s
        for s in sites
    ]
    await store.upsert_sites(sites)
    now = time.time()
    session = ClassSession(
        id=f"demo-{uuid.uuid4().hex[:8]}",
        title=DEMO_TITLE,
        starts_at=now + 600,
        ends_at=now + 600 + 3600,
        video_codec="VP8",
        site_codes=tuple(s.code for s in sites),
        created_at=now,
    )
    await store.put_session(session)
    return class_links(config, session, sites)


def class_links(
    config: Config, session: ClassSession, sites: list[Site], *, presenter: bool = True
) -> dict[str, Any]:
    """Absolute links and tokens of a class, as `--demo-json` and the links API give them.

    Each presenter has a studio link and a WHIP token of their own (`presenters`, lead first);
    `lecturer` is the lead's. `presenter=False` (a caller that may not publish) leaves out
    every presenter's link and token."""
    base, sid = config.base_url, session.id
    # A token must outlive the class, whatever the configured TTL.
    ttl = max(config.token_ttl_s, (session.ends_at or session.starts_at) - time.time() + 86400)

    def token(role: Role, site: Site | None = None, presenter: str | None = None) -> str:
        code, key = (site.code, site.join_key) if site else (None, None)
        return auth.mint(
            config.secret, sid, role, site=code, join_key=key, presenter=presenter, ttl_s=ttl
        )

    moderator = token(Role.MODERATOR)
    links: dict[str, Any] = {"session_id": sid}
    if presenter:
        studios = []
        for wire in lineup_wire(session):
            lecturer = token(Role.LECTURER, presenter=wire["id"])
            studios.append(
                {
                    **wire,
                    "url": f"{base}/studio/{sid}?token={lecturer}",
                    "whip_url": f"{base}/whip/{sid}",
                    "token": lecturer,
                }
            )
        links["lecturer"] = {k: studios[0][k] for k in ("url", "whip_url", "token")}
        links["presenters"] = studios
    links["moderator"] = {"url": f"{base}/moderator/{sid}?token={moderator}", "token": moderator}
    links["sites"] = [_site_links(base, sid, site, token(Role.SITE, site)) for site in sites]
    return links


def _site_links(base: str, sid: str, site: Site, token: str) -> dict[str, str]:
    return {
        "code": site.code,
        "name": site.name,
        "commune": site.commune,
        "url": f"{base}/site/{sid}/{site.code}?token={token}",
        "replay_url": f"{base}/site/{sid}/{site.code}?token={token}&replay=1",
        "whep_url": f"{base}/whep/{sid}/{site.code}",
        "token": token,
    }


def write_demo_json(links: dict[str, Any], path: Path) -> None:
    """Write the links (tokens: mode 0600) atomically: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_private(path, json.dumps(links, ensure_ascii=False, indent=2).encode())


def print_links(links: dict[str, Any]) -> None:
    """Print the demo links for the person who started the server."""
    lines = [
        f"LopSo demo class {links['session_id']}",
        f"  lecturer studio : {links['lecturer']['url']}",
        f"  moderator       : {links['moderator']['url']}",
    ]
    for site in links["sites"][:3]:
        lines.append(f"  site {site['code']:<12}: {site['url']}")
    if len(links["sites"]) > 3:
        lines.append(f"  ... and {len(links['sites']) - 3} more sites (see --demo-json)")
    print("\n".join(lines), flush=True)
