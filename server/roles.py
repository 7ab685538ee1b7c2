"""Roles as data: which actions each role may perform. Pure; imports no web code."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from server.models import Role


class Action(str, enum.Enum):
    """Everything a route or WebSocket message may be asked to do."""

    ADMIN = "admin"  # registry import, create classes, mint tokens for any class
    VIEW_CLASS = "view_class"  # read class info, open a WebSocket
    PUBLISH = "publish"  # WHIP
    END_CLASS = "end_class"
    VIEW = "view"  # WHEP
    REPORT = "report"  # site status, headcount, quality, help, question
    CHECKIN = "checkin"  # count a participant at a site
    SEE_ALL = "see_all"  # every site's live state, help requests
    MODERATE = "moderate"  # message, command, resolve help, forward questions
    EXPORT = "export"  # attendance queries and exports
    LINKS = "links"  # links and tokens of a class


_ALL = frozenset(Action)

ROLE_ACTIONS: Mapping[Role, frozenset[Action]] = MappingProxyType(
    {
        Role.ADMIN: _ALL,
        Role.LECTURER: frozenset(
            {Action.VIEW_CLASS, Action.PUBLISH, Action.END_CLASS, Action.SEE_ALL}
        ),
        Role.MODERATOR: frozenset(
            {
                Action.VIEW_CLASS,
                Action.END_CLASS,
                Action.SEE_ALL,
                Action.MODERATE,
                Action.EXPORT,
                Action.LINKS,
            }
        ),
        Role.SITE: frozenset({Action.VIEW_CLASS, Action.VIEW, Action.REPORT, Action.CHECKIN}),
        Role.PARTICIPANT: frozenset({Action.CHECKIN}),
    }
)

# Roles whose tokens name one site.
SITE_ROLES = frozenset({Role.SITE, Role.PARTICIPANT})


def may(role: Role, action: Action) -> bool:
    """True when `role` is allowed to perform `action`."""
    return action in ROLE_ACTIONS.get(role, frozenset())
