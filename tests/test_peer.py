"""What a commune moderator's page may receive (server/peer.py `within`, Peer.post)."""

from __future__ import annotations

import pytest

from server.models import Role
from server.peer import Peer, within

SCOPE = frozenset({"A1", "A2"})


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {"type": "help", "site": "A1", "help_id": "h"},
            {"type": "help", "site": "A1", "help_id": "h"},
        ),
        ({"type": "help", "site": "B1", "help_id": "h"}, None),
        ({"type": "live", "live": True}, {"type": "live", "live": True}),
        (
            {
                "type": "sites_update",
                "sites": [{"code": "A1"}, {"code": "B1"}],
                "alerts": [{"site": "B1"}],
            },
            {"type": "sites_update", "sites": [{"code": "A1"}], "alerts": []},
        ),
        (
            {
                "type": "backlog",
                "questions": [{"site": "A2"}, {"site": "B2"}],
                "help": [{"site": "B2"}],
            },
            {"type": "backlog", "questions": [{"site": "A2"}], "help": []},
        ),
    ],
)
def test_within_keeps_only_the_scope(message, expected) -> None:
    assert within(message, SCOPE) == expected


def test_a_scoped_page_never_queues_another_communes_site() -> None:
    peer = Peer("c1", Role.MODERATOR, scope=SCOPE)
    peer.post({"type": "question", "site": "B1", "text": "?"})
    peer.post({"type": "sites", "sites": [{"code": "B1"}, {"code": "A2"}], "totals": {}})
    assert peer.outbox.qsize() == 1
    assert peer.outbox.get_nowait()["sites"] == [{"code": "A2"}]
    everyone = Peer("c1", Role.MODERATOR)
    everyone.post({"type": "question", "site": "B1", "text": "?"})
    assert everyone.outbox.qsize() == 1
