"""JSON encoding of store records, shared by the embedded and the Redis store.

Both stores keep records as compact JSON text so that one codec (and one set of round-trip
tests) serves both; `json` keeps Python floats exact, which epoch times with microseconds need.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from server.models import (
    ClassSession,
    Event,
    EventKind,
    NodeInfo,
    Presenter,
    Role,
    ShortLink,
    Site,
    User,
)

_KINDS = {kind.value: kind for kind in EventKind}


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 text kept as is (Vietnamese names stay readable in the store)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def event_body(event: Event) -> str:
    """The event without its seq (the store assigns seq), as JSON text."""
    return dumps(
        {
            "id": event.id,
            "session_id": event.session_id,
            "kind": event.kind.value,
            "at": event.at,
            "site_code": event.site_code,
            "node": event.node,
            "data": event.data,
        }
    )


def event_from_body(body: str | bytes, seq: int) -> Event:
    """Rebuild an event from `event_body` text and the seq the store gave it."""
    return event_from_raw(json.loads(body), seq)


def event_from_raw(raw: dict[str, Any], seq: int) -> Event:
    """Rebuild an event from decoded `event_body` JSON and its seq."""
    return Event(
        session_id=raw["session_id"],
        kind=_KINDS[raw["kind"]],
        at=raw["at"],
        site_code=raw["site_code"],
        data=raw["data"],
        id=raw["id"],
        node=raw["node"],
        seq=seq,
    )


def body_prefilter(kinds: set[str] | None, site_code: str | None) -> Callable[[bytes], bool]:
    """A cheap test on stored `event_body` bytes, run before decoding them.

    It never rejects a body that matches (`event_body` writes "kind" and "site_code" in a fixed
    place and form), but may accept one that does not (the same text nested in `data`): callers
    still check the decoded fields.
    """
    kind_needles = None if kinds is None else [f'"kind":{dumps(k)},'.encode() for k in kinds]
    site_needle = None if site_code is None else f'"site_code":{dumps(site_code)},'.encode()

    def may_match(body: bytes) -> bool:
        if site_needle is not None and site_needle not in body:
            return False
        return kind_needles is None or any(needle in body for needle in kind_needles)

    return may_match


def site_to_json(site: Site) -> str:
    """A registry site as JSON text (join key included: the store is trusted)."""
    return dumps(dataclasses.asdict(site))


def site_from_json(text: str | bytes) -> Site:
    """Inverse of `site_to_json`."""
    return Site(**json.loads(text))


def short_link_to_json(link: ShortLink) -> str:
    """A short join link as JSON text."""
    return dumps(dataclasses.asdict(link))


def short_link_from_json(text: str | bytes) -> ShortLink:
    """Inverse of `short_link_to_json`."""
    return ShortLink(**json.loads(text))


def session_to_json(session: ClassSession) -> str:
    """A class as JSON text."""
    raw = dataclasses.asdict(session)
    raw["site_codes"] = list(session.site_codes)
    raw["presenters"] = [dataclasses.asdict(p) for p in session.presenters]
    return dumps(raw)


def session_from_json(text: str | bytes) -> ClassSession:
    """Inverse of `session_to_json` (site_codes back to a tuple; a class stored before
    presenters has none)."""
    raw = json.loads(text)
    raw["site_codes"] = tuple(raw.get("site_codes", ()))
    raw["presenters"] = tuple(Presenter(**p) for p in raw.get("presenters", ()))
    return ClassSession(**raw)


def user_to_json(user: User) -> str:
    """An account as JSON text (the password hash included: the store is trusted)."""
    raw = dataclasses.asdict(user)
    raw["role"] = user.role.value
    raw["communes"] = list(user.communes)
    return dumps(raw)


def user_from_json(text: str | bytes) -> User:
    """Inverse of `user_to_json`."""
    raw = json.loads(text)
    raw["role"] = Role(raw["role"])
    raw["communes"] = tuple(raw.get("communes", ()))
    return User(**raw)


def node_to_json(node: NodeInfo) -> str:
    """A node heartbeat as JSON text."""
    raw = dataclasses.asdict(node)
    raw["lectures"] = list(node.lectures)
    return dumps(raw)


def node_from_json(text: str | bytes) -> NodeInfo:
    """Inverse of `node_to_json`."""
    raw = json.loads(text)
    raw["lectures"] = tuple(raw.get("lectures", ()))
    return NodeInfo(**raw)
