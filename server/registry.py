"""The site registry's CSV import: parse and validate, with line numbers in every error.

Header row: `code,name,village,commune,province[,join_key]` (any order, case-insensitive).
UTF-8 with or without BOM (what Excel writes). Pure: no I/O beyond the text given.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import secrets
from collections.abc import Callable

from server.errors import ValidationError
from server.models import Site
from server.store.base import Store

CODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
REQUIRED = ("code", "name")
OPTIONAL = ("village", "commune", "province", "join_key")
MAX_FIELD = 200
MAX_ERRORS_SHOWN = 20


class SiteImportError(ValidationError):
    """The CSV has bad rows; `problems` lists (line number, message) for each."""

    code = "csv_invalid"

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"line {line}: {msg}" for line, msg in problems[:MAX_ERRORS_SHOWN])
        more = len(problems) - MAX_ERRORS_SHOWN
        super().__init__(shown + (f"; and {more} more" if more > 0 else ""))


def decode_csv(data: bytes) -> str:
    """Decode UTF-8 (BOM optional) or raise a ValidationError naming the byte offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SiteImportError([(data[: exc.start].count(b"\n") + 1, "not UTF-8 text")]) from None


def parse_sites(
    text: str, new_key: Callable[[], str] = lambda: secrets.token_urlsafe(12)
) -> list[Site]:
    """Parse the registry CSV into Sites; raise SiteImportError listing every bad row."""
    text = text.lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = _header(next(reader, None))
    sites: list[Site] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        site = _site(header, row, new_key)
        if isinstance(site, Site) and site.code in seen:
            site = f"duplicate code {site.code!r} (first on line {seen[site.code]})"
        if isinstance(site, str):
            problems.append((line, site))
            continue
        seen[site.code] = line
        sites.append(site)
    if problems:
        raise SiteImportError(problems)
    if not sites:
        raise SiteImportError([(1, "no site rows after the header")])
    return sites


def _header(row: list[str] | None) -> dict[str, int]:
    if row is None:
        raise SiteImportError([(1, "the file is empty; expected a header row")])
    names = [cell.strip().lower() for cell in row]
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise SiteImportError([(1, f"header lacks column(s): {', '.join(missing)}")])
    unknown = [name for name in names if name and name not in REQUIRED + OPTIONAL]
    if unknown:
        raise SiteImportError([(1, f"unknown column(s): {', '.join(unknown)}")])
    return {name: index for index, name in enumerate(names) if name}


def _site(header: dict[str, int], row: list[str], new_key: Callable[[], str]) -> Site | str:
    """The row's Site, or the problem with it."""
    if len(row) > len(header):
        return f"{len(row)} fields, header has {len(header)}"
    fields = {name: (row[i].strip() if i < len(row) else "") for name, i in header.items()}
    code = fields["code"]
    if not CODE_RE.fullmatch(code):
        return f"code {code!r} must be 1-64 of A-Z a-z 0-9 _ . -"
    if not fields["name"]:
        return "name is empty"
    long = [name for name, value in fields.items() if len(value) > MAX_FIELD]
    if long:
        return f"{long[0]} longer than {MAX_FIELD} characters"
    return Site(
        code=code,
        name=fields["name"],
        village=fields.get("village", ""),
        commune=fields.get("commune", ""),
        province=fields.get("province", ""),
        join_key=fields.get("join_key") or new_key(),
    )


async def import_sites(store: Store, data: bytes) -> int:
    """Parse CSV bytes and upsert the sites, keeping a known site's join key when none is given."""
    sites = parse_sites(decode_csv(data), new_key=lambda: "")
    merged = []
    for site in sites:
        key = site.join_key
        if not key:
            known = await store.get_site(site.code)
            key = known.join_key if known and known.join_key else secrets.token_urlsafe(12)
        merged.append(dataclasses.replace(site, join_key=key))
    return int(await store.upsert_sites(merged))
