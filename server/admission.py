"""How many WebSockets this node holds open per site, per token and per client address.

routes/ws.py asks before the upgrade, so a page refused has written nothing to the ledger
(no `site_joined`, no rejoin), and gives the place back when the page closes. A hall has one
player and a few pages; a moderator or lecturer link a few tabs per person. Pure: no aiohttp.
Counted per node (a cluster's nodes each allow as many).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

RETRY_AFTER_S = 5.0  # a page closing frees its place: worth trying again soon


@dataclasses.dataclass(frozen=True)
class SocketLimits:
    """Open WebSockets allowed at once; 0 = no limit."""

    per_site: int = 8  # every page of one site in one class, whichever of its tokens
    per_token: int = 32  # one lecturer, moderator or admin token
    per_address: int = 64  # one client address (a hall's router, a carrier's NAT)


class TooManySocketsError(Exception):
    """A site, token or address already has as many WebSockets open as it may."""

    code = "too_many_websockets"
    retry_after_s = RETRY_AFTER_S


Holder = tuple[str, str]  # ("site", "<class>/<code>") or ("token", "<fingerprint>")


class SocketCounts:
    """Open WebSockets by holder and by address on this node."""

    def __init__(self, limits: SocketLimits) -> None:
        self.limits = limits
        self._open: collections.Counter[Holder] = collections.Counter()

    def open_count(self, holder: Holder) -> int:
        return self._open[holder]

    def admit(self, holder: Holder, address: str) -> Callable[[], None]:
        """Count one more page of `holder` from `address`, or raise TooManySocketsError.
        Returns the function that gives the place back (idempotent)."""
        cap = self.limits.per_site if holder[0] == "site" else self.limits.per_token
        if cap and self._open[holder] >= cap:
            who = f"site {holder[1]}" if holder[0] == "site" else "this link"
            raise TooManySocketsError(f"{who} already has {cap} pages open on this server")
        by_address: Holder = ("address", address)
        if self.limits.per_address and self._open[by_address] >= self.limits.per_address:
            raise TooManySocketsError(
                f"address {address} already has {self.limits.per_address} pages open"
            )
        self._open[holder] += 1
        self._open[by_address] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                for key in (holder, by_address):
                    self._open[key] -= 1
                    if self._open[key] <= 0:  # no key kept per past client
                        del self._open[key]

        return release
