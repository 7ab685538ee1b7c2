"""server/admission.py: open WebSockets per site, per token and per address."""

from __future__ import annotations

import pytest

from server.admission import SocketCounts, SocketLimits, TooManySocketsError

SITE, OTHER_SITE = ("site", "c1/S1"), ("site", "c1/S2")
TOKEN = ("token", "f00d")


@pytest.mark.parametrize(
    ("limits", "pages", "admitted"),
    [
        (SocketLimits(per_site=2), [SITE] * 3, 2),
        (SocketLimits(per_site=2), [SITE, OTHER_SITE, SITE, OTHER_SITE, SITE], 4),
        (SocketLimits(per_token=1), [TOKEN, TOKEN], 1),
        (SocketLimits(per_site=0, per_address=3), [SITE] * 5, 3),  # the address cap
        (SocketLimits(per_site=0, per_token=0, per_address=0), [SITE] * 100, 100),  # 0 = none
    ],
)
def test_caps(limits: SocketLimits, pages: list[tuple[str, str]], admitted: int) -> None:
    counts, taken = SocketCounts(limits), 0
    for holder in pages:
        try:
            counts.admit(holder, "192.0.2.1")
            taken += 1
        except TooManySocketsError as exc:
            assert exc.code == "too_many_websockets" and exc.retry_after_s > 0
    assert taken == admitted


def test_a_closed_page_gives_its_place_back_once() -> None:
    counts = SocketCounts(SocketLimits(per_site=1, per_address=2))
    release = counts.admit(SITE, "192.0.2.1")
    with pytest.raises(TooManySocketsError, match="site c1/S1 already has 1 pages open"):
        counts.admit(SITE, "192.0.2.2")
    release()
    release()  # a second call changes nothing
    assert counts.open_count(SITE) == 0
    counts.admit(SITE, "192.0.2.1")
    counts.admit(TOKEN, "192.0.2.1")
    with pytest.raises(TooManySocketsError, match="address 192.0.2.1 already has 2 pages"):
        counts.admit(OTHER_SITE, "192.0.2.1")
    counts.admit(OTHER_SITE, "192.0.2.9")  # another address
    assert counts.open_count(SITE) == 1 and counts.open_count(("address", "192.0.2.1")) == 2
