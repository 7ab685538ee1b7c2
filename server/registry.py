"""The site registry: CSV import (parse and validate, with line numbers in every error), join
key rotation, and a cache of the sites' key ids for token checks.

Header row: `code,name,village,commune,province[,join_key]` (any order, case-insensitive).
UTF-8 with or without BOM (what Excel writes); fields separated by `,` or by `;` (what Excel
writes under Vietnamese regional settings, where `,` is the decimal mark), told apart by the
header row. Parsing is pure; the rest talks to the store.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from server import auth
from server.errors import UnknownError, ValidationError
from server.fields import text_problem
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
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter_of(text))
    rows = _rows(reader)
    header = _header(next(rows, None))
    sites: list[Site] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for row in rows:
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


def delimiter_of(text: str) -> str:
    """`;` when the header row has more `;` than `,` (no column name holds either), else `,`."""
    header = text.split("\n", 1)[0]
    return ";" if header.count(";") > header.count(",") else ","


def _rows(reader: Any) -> Iterator[list[str]]:
    """The reader's rows; a row the csv module cannot read (a field over its 128 KiB limit)
    is a SiteImportError naming its line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SiteImportError([(reader.line_num, f"unreadable CSV ({exc})")]) from None


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
    for name, value in fields.items():
        problem = text_problem(value)
        if problem is not None:
            return f"{name} {problem}"
    return Site(
        code=code,
        name=fields["name"],
        village=fields.get("village", ""),
        commune=fields.get("commune", ""),
        province=fields.get("province", ""),
        join_key=fields.get("join_key") or new_key(),
    )


def check_site(fields: dict[str, str], join_key: str) -> Site:
    """One hall from a form (code, name, village, commune, province) by the CSV's rules."""
    names = REQUIRED + OPTIONAL[:-1]
    header = {name: i for i, name in enumerate(names)}
    site = _site(header, [str(fields.get(name) or "") for name in names], lambda: join_key)
    if isinstance(site, str):
        raise ValidationError(site, code="bad_field")
    return dataclasses.replace(site, join_key=join_key)


async def import_sites(store: Store, data: bytes) -> int:
    """Parse CSV bytes and upsert the sites, keeping a known site's join key when none is given."""
    sites = parse_sites(decode_csv(data), new_key=lambda: "")
    merged = []
    for site in sites:
        key = site.join_key
        if not key:
            known = await store.get_site(site.code)
            key = known.join_key if known and known.join_key else new_join_key()
        merged.append(dataclasses.replace(site, join_key=key))
    return int(await store.upsert_sites(merged))


def new_join_key() -> str:
    """A fresh random join key."""
    return secrets.token_urlsafe(12)


async def rotate_join_key(store: Store, code: str) -> Site:
    """Give a site a new join key: every link and token of it minted before stops working."""
    site = await store.get_site(code)
    if site is None:
        raise UnknownError(f"site {code} is not in the registry", code="unknown_site")
    rotated = dataclasses.replace(site, join_key=new_join_key())
    await store.upsert_sites([rotated])
    return rotated


class KeyIdCache:
    """Each site's current key id (auth.key_id of its join key), read from the registry at most
    once per `ttl_s` per site: a token check costs no store round trip per message, and a
    rotation made elsewhere (the CLI, another node) takes effect within `ttl_s`."""

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[Site | None]],
        secret: bytes,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_sites: int = 100_000,
    ) -> None:
        self._lookup, self._secret, self.ttl_s, self._clock = lookup, secret, ttl_s, clock
        self._max = max_sites
        self._ids: dict[str, tuple[str | None, float]] = {}

    async def refresh(self, code: str) -> None:
        """Read the site's key id unless a fresh one is cached."""
        cached = self._ids.get(code)
        if cached is not None and self._clock() - cached[1] < self.ttl_s:
            return
        site = await self._lookup(code)
        if len(self._ids) >= self._max:
            self._ids.clear()  # bounded under floods of made-up codes; refilled on use
        self._ids[code] = (
            auth.key_id(self._secret, site.join_key) if site else None,
            self._clock(),
        )

    def current(self, code: str) -> str | None:
        """The cached key id (None for a site not in the registry); KeyError when never read."""
        return self._ids[code][0]

    def forget(self, code: str) -> None:
        """Drop the cached key id (after a rotation on this node)."""
        self._ids.pop(code, None)
