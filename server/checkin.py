"""Participant check-in rules: validation, dedupe keys, and rate limiters.

Pure rules: no I/O, imports neither aiohttp, aiortc nor redis.

A participant (QR on their phone) or the site operator (for people without phones) checks a
person in with a name and an optional short identifier (a phone number, a citizen-ID tail...).

- ``parse_checkin`` validates once, with precise messages (CheckinError and subclasses).
- ``dedupe_key`` gives the key ``Store.add_checkin`` dedupes on. With an identifier the person
  is counted once per class, whichever site they check in at; without one, once per name per
  site, names compared without case, spacing, punctuation or Vietnamese diacritics
  ("Nguyễn Văn Ân" = "nguyen van an"), since cheap phones often type without them. The key is
  a SHA-256 digest: the dedupe index holds no names or identifiers in clear.
- ``refuse_closed``: a participant's (QR) link stops working with its class (its end plus a
  grace the organiser sets), so a photo of the hall's screen is no good the next week.
- ``reply_as_duplicate``: a duplicate is revealed only to the site it was counted at.
- ``mask_ident`` keeps only the last 3 characters of an identifier for the ledger and reports
  (personal data kept to what the report needs).
- ``TokenBucket``, ``KeyedLimiter`` and ``CheckinLimiter``: token buckets with an injectable
  clock, per site and per client address, memory bounded (least recently used keys dropped).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from server.fields import text_problem

NAME_MAX = 100
IDENT_MAX = 40
BY_VALUES = ("qr", "operator")
_IDENT_SEPARATORS = re.compile(r"[\s.\-_/]+")
_IDENT_OK = re.compile(r"[A-Z0-9+]{1,40}")
_VN_PHONE = re.compile(r"\+?84(\d{9})")

Clock = Callable[[], float]


class CheckinError(ValueError):
    """A check-in was refused; ``code`` is the machine code the edge reports."""

    code = "checkin_invalid"


class InvalidNameError(CheckinError):
    """The name is missing, too long, or not a name."""

    code = "checkin_name"


class InvalidIdentError(CheckinError):
    """The identifier is too long or holds characters an identifier cannot have."""

    code = "checkin_ident"


class RateLimitedError(CheckinError):
    """Too many check-ins for one site or from one address; retry after ``retry_after_s``."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CheckinClosedError(CheckinError):
    """A participant's check-in link has expired with its class (end plus the grace)."""

    code = "checkin_closed"


def refuse_closed(closes_at: float | None, now: float) -> None:
    """Raise CheckinClosedError once a participant link's class has closed check-in
    (server/timetable.py `checkin_closes_at`; None: not known yet, the link's own expiry holds)."""
    if closes_at is not None and now >= closes_at:
        raise CheckinClosedError("check-in for this class has closed: the class is over")


@dataclasses.dataclass(frozen=True, slots=True)
class Checkin:
    """A validated check-in: the name as shown, the normalised identifier (or None)."""

    name: str
    ident: str | None
    by: str = "qr"

    @property
    def ident_masked(self) -> str | None:
        """The identifier with all but its last 3 characters hidden."""
        return mask_ident(self.ident)

    def event_data(self) -> dict[str, Any]:
        """Data for the CHECKIN ledger event (the identifier masked)."""
        return {"name": self.name, "ident": self.ident_masked, "by": self.by}


def clean_name(raw: Any) -> str:
    """A person's name as shown: NFC, trimmed, inner spaces collapsed; validated."""
    if not isinstance(raw, str):
        raise InvalidNameError("name must be a string")
    problem = text_problem(raw)
    if problem is not None:
        raise InvalidNameError(f"name {problem}")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        raise InvalidNameError("name is required")
    if len(name) > NAME_MAX:
        raise InvalidNameError(f"name is longer than {NAME_MAX} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidNameError("name contains control or invisible characters")
    if not any(unicodedata.category(ch).startswith("L") for ch in name):
        raise InvalidNameError("name must contain letters")
    return name


def normalize_ident(raw: Any) -> str | None:
    """An identifier without separators, upper-case; Vietnamese +84 phones as 0xxxxxxxxx.

    Empty or missing -> None."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidIdentError("ident must be a string")
    if len(raw) > IDENT_MAX:
        raise InvalidIdentError(f"ident is longer than {IDENT_MAX} characters")
    problem = text_problem(raw)
    if problem is not None:
        raise InvalidIdentError(f"ident {problem}")
    ident = _IDENT_SEPARATORS.sub("", unicodedata.normalize("NFKC", raw)).upper()
    if not ident:
        return None
    if not _IDENT_OK.fullmatch(ident) or "+" in ident[1:]:
        raise InvalidIdentError("ident may hold only letters A-Z, digits, spaces, '.', '-', '/'")
    phone = _VN_PHONE.fullmatch(ident)
    return "0" + phone.group(1) if phone else ident


def mask_ident(ident: str | None) -> str | None:
    """Hide all but the last 3 characters ("0912345678" -> "•••••••678")."""
    if not ident:
        return None
    keep = 3 if len(ident) > 4 else 1
    return "•" * (len(ident) - keep) + ident[-keep:]


def name_key(name: str) -> str:
    """A name folded for comparison: no case, diacritics (đ -> d), punctuation or extra spaces."""
    decomposed = unicodedata.normalize("NFD", name.replace("đ", "d").replace("Đ", "D"))
    letters = (ch if ch.isalnum() else " " for ch in decomposed if unicodedata.category(ch) != "Mn")
    return " ".join("".join(letters).casefold().split())


def dedupe_key(session_id: str, site_code: str, name: str, ident: str | None) -> str:
    """The key one person is counted under (see the module docstring)."""
    if ident:
        scope, value = "id", ident
    else:
        scope, value = f"name:{site_code}", name_key(name)
    digest = hashlib.sha256(f"{session_id}\x1f{scope}\x1f{value}".encode()).hexdigest()[:32]
    return f"{scope}:{digest}"


def reply_as_duplicate(counted: bool, counted_at: str | None, site_code: str) -> bool:
    """Whether the caller is told "already checked in": only for its own site. A person
    whose identifier was counted at ANOTHER site is still counted once, but the reply is the
    one a fresh check-in gets: the QR link of one hall must not tell whether a given ID
    number checked in anywhere in the class."""
    return not counted and counted_at == site_code


def parse_checkin(body: Mapping[str, Any], by: str = "qr") -> Checkin:
    """Validate a check-in body ``{"name": ..., "ident": ...}``."""
    if not isinstance(body, Mapping):
        raise CheckinError("check-in must be a JSON object")
    if by not in BY_VALUES:
        raise CheckinError(f"check-in 'by' must be one of {', '.join(BY_VALUES)}")
    unknown = set(body) - {"name", "ident"}
    if unknown:
        raise CheckinError(f"unknown check-in fields: {', '.join(sorted(map(str, unknown)))}")
    return Checkin(
        name=clean_name(body.get("name")), ident=normalize_ident(body.get("ident")), by=by
    )


# --- rate limits ------------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("_at", "_clock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        if not (rate > 0 and burst >= 1 and math.isfinite(rate) and math.isfinite(burst)):
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = float(burst), clock()

    def _refill(self) -> float:
        now = self._clock()
        elapsed = max(0.0, now - self._at)  # a clock stepping back adds nothing
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._at = now
        return self._tokens

    def available(self) -> float:
        """Tokens available now."""
        return self._refill()

    def take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available now."""
        if self._refill() >= n:
            self._tokens -= n
            return True
        return False

    def retry_after(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens will be available."""
        return max(0.0, (n - self._refill()) / self.rate)

    def is_full(self) -> bool:
        """True when the bucket holds ``burst`` tokens (it can be forgotten)."""
        return self._refill() >= self.burst


class KeyedLimiter:
    """One token bucket per key (a site, an address), at most ``max_keys`` remembered."""

    def __init__(
        self, rate: float, burst: float, clock: Clock = time.monotonic, max_keys: int = 100_000
    ) -> None:
        TokenBucket(rate, burst, clock)  # validates the figures early
        self.rate, self.burst, self._clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str) -> TokenBucket:
        """The key's bucket, created full; the least recently used key is dropped first."""
        found = self._buckets.get(key)
        if found is not None:
            self._buckets.move_to_end(key)
            return found
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)
        made = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        return made

    def allow(self, key: str) -> bool:
        """Take a token for ``key`` if it has one."""
        return self.bucket(key).take()

    def check(self, key: str, what: str = "") -> None:
        """Take a token for ``key`` or raise RateLimitedError."""
        bucket = self.bucket(key)
        if not bucket.take():
            raise RateLimitedError(
                f"too many check-ins {what or 'for ' + key}; slow down", bucket.retry_after()
            )


@dataclasses.dataclass(frozen=True, slots=True)
class CheckinLimits:
    """Rates (per second) and bursts of the check-in limiters.

    Per site [10/s, burst 300]: a hall of 300 people scanning the QR code when it is shown.
    Per address [5/s, burst 100]: the phones of a hall's Wi-Fi, or of a carrier's NAT, share
    one address, so this only stops a single machine flooding; load tests from one address
    need it raised.
    """

    site_rate: float = 10.0
    site_burst: float = 300.0
    address_rate: float = 5.0
    address_burst: float = 100.0


class CheckinLimiter:
    """Check-in rate limits per (class, site) and per client address, one budget for
    participants' QR check-ins and another for the hall operator's: a stranger with the QR
    link who spends the participants' budget cannot get the operator refused."""

    def __init__(
        self,
        limits: CheckinLimits | None = None,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        limits = limits or CheckinLimits()
        self.sites = KeyedLimiter(limits.site_rate, limits.site_burst, clock, max_keys)
        self.addresses = KeyedLimiter(limits.address_rate, limits.address_burst, clock, max_keys)

    def check(self, session_id: str, site_code: str, address: str | None, by: str = "qr") -> None:
        """Admit one check-in (`by` "qr" or "operator": separate budgets) or raise
        RateLimitedError; a refused one takes no token."""
        site = self.sites.bucket(f"{by}\x1f{session_id}\x1f{site_code}")
        addr = self.addresses.bucket(f"{by}\x1f{address}") if address else None
        for bucket, what in ((site, f"for site {site_code}"), (addr, "from this address")):
            if bucket is not None and bucket.available() < 1.0:
                raise RateLimitedError(
                    f"too many check-ins {what}; slow down", bucket.retry_after()
                )
        site.take()
        if addr is not None:
            addr.take()


__all__ = [
    "Checkin",
    "CheckinClosedError",
    "CheckinError",
    "CheckinLimiter",
    "CheckinLimits",
    "InvalidIdentError",
    "InvalidNameError",
    "KeyedLimiter",
    "RateLimitedError",
    "TokenBucket",
    "clean_name",
    "dedupe_key",
    "mask_ident",
    "name_key",
    "normalize_ident",
    "parse_checkin",
    "refuse_closed",
    "reply_as_duplicate",
]
