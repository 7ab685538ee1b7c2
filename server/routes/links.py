"""Hall links: short join links (`/j/<code>`), the hall-links export and printable hall cards.

`/j/<code>` is open to anyone holding the code; wrong codes are counted per client address
and, once an address has used up its budget, everything it asks is refused for a while, so
codes cannot be guessed. The export and the cards carry halls' links only (never a lecturer's
or a moderator's token) and need a token that may hand out links (moderator or admin).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web
from markupsafe import Markup

from server import halllinks
from server.app import STATE, authorize_request, client_address, pick_lang, session_or_404
from server.errors import UnknownError, ValidationError
from server.fields import check_text
from server.halllinks import HallLink
from server.models import ClassSession
from server.roles import Action
from server.routes.pages import page_errors, render

log = logging.getLogger(__name__)
FORMATS = ("csv", "text", "json")
CARDS_MAX = 120  # cards drawn on one page (20 A4 sheets); a province's are drawn per commune


@page_errors
async def short_link(request: web.Request) -> web.Response:
    """`GET /j/<code>` → 303 to the hall's join link, minted now; a page in the hall's
    language for an unknown code or too many wrong ones."""
    state = request.app[STATE]
    address = client_address(request)
    state.short_link_limiter.refuse_if_empty(address)
    try:
        path = await halllinks.resolve(state.store, state.config, request.match_info["code"])
    except UnknownError:
        state.short_link_limiter.check(address)  # a wrong code costs one of the address's tries
        raise
    raise web.HTTPSeeOther(path, headers={"Cache-Control": "no-store"})


async def _class_links(request: web.Request) -> tuple[ClassSession, list[HallLink], str | None]:
    """The class's hall links (one commune's with `?commune=`), after authorization."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    authorize_request(request, Action.LINKS, sid)
    session = await session_or_404(state.store, sid)
    commune = request.query.get("commune")
    if commune is not None:
        check_text(commune, "commune", 200)
    sites = [
        site
        for site in await state.hub.expected_sites(session)
        if commune is None or site.commune == commune
    ]
    if commune is not None and not sites:
        raise UnknownError(
            f"no hall of class {sid} is in commune {commune}", code="unknown_commune"
        )
    links = await halllinks.hall_links(state.store, state.config, session, sites)
    return session, halllinks.by_commune(links, None), commune


async def hall_links_export(request: web.Request) -> web.Response:
    """`GET /api/classes/{sid}/hall-links?commune=&format=csv|text|json` (halls only)."""
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}", code="bad_query")
    session, links, commune = await _class_links(request)
    headers = {"Cache-Control": "no-store"}
    stem = f"lopso-{session.id}-hall-links"
    if fmt == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{stem}.csv"'
        return web.Response(body=halllinks.to_csv(links), content_type="text/csv", headers=headers)
    if fmt == "text":
        text = halllinks.to_text(session, links, pick_lang(request))
        return web.Response(text=text, content_type="text/plain", headers=headers)
    body = json.dumps(halllinks.to_json(session, links), ensure_ascii=False)
    return web.Response(text=body, content_type="application/json", headers=headers)


@page_errors
async def hall_cards(request: web.Request) -> web.Response:
    """`GET /classes/{sid}/cards?commune=`: printable cards, each commune from a new A4 page,
    with the commune's text block of short links to copy (on screen only). Over CARDS_MAX
    halls (a province), the cards are drawn per commune: the page links to each commune's."""
    session, links, commune = await _class_links(request)
    lang = pick_lang(request)
    drawn = commune is not None or len(links) <= CARDS_MAX
    # ~10-30 ms a code: off the event loop, which carries the classes' signalling
    codes = await asyncio.to_thread(
        lambda: [Markup(halllinks.qr_svg(x.url)) if drawn else None for x in links]
    )
    communes: dict[str, list[dict[str, Any]]] = {}
    for link, qr in zip(links, codes, strict=True):
        card: dict[str, Any] = {"name": link.name, "village": link.village, "qr": qr}
        card.update(short_url=link.short_url, url=link.url, code=link.code)
        communes.setdefault(link.commune, []).append(card)
    token = request.query.get("token", "")
    mine = f"/classes/{quote(session.id)}/cards?token={quote(token)}&lang={lang}&commune="
    export = f"/api/classes/{quote(session.id)}/hall-links?token={quote(token)}&format=csv"
    page = {
        "lang": lang,
        "sid": session.id,
        "title": session.title,
        "starts": halllinks.start_text(session, lang),
        "commune": commune,
        "cards_drawn": drawn,
        "csv_url": export + (f"&commune={quote(commune)}" if commune else ""),
    }
    view = {
        "communes": [
            {
                "name": name,
                "cards": cards if drawn else [],
                "count": len(cards),
                "cards_url": mine + quote(name),
                "text": halllinks.to_text(
                    session, [link for link in links if link.commune == name], lang
                ),
            }
            for name, cards in communes.items()
        ],
    }
    return render(request, "cards", page, view)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/j/{code}", short_link)
    r.add_get("/api/classes/{sid}/hall-links", hall_links_export)
    r.add_get("/classes/{sid}/cards", hall_cards)
