"""A class's presenters: validation of a lineup, and their wire form. Pure: no web code.

A class has one or more presenters (the first is the lead), each with their own studio link
and lecturer token naming them (`auth.Claims.p`). One of them is on air; the others publish
on standby (media.lecture.Lecture). Which one was on air when is in the ledger (ON_AIR /
OFF_AIR events, server/programme.py).
"""

from __future__ import annotations

import re
from typing import Any

from server.errors import ValidationError
from server.fields import check_text
from server.models import Presenter

PRESENTER_ID_RE = re.compile(r"[a-z0-9_-]{1,32}")
MAX_PRESENTERS = 16


def parse_presenters(value: Any) -> tuple[Presenter, ...]:
    """A class body's `presenters`: a list of {id?, name, organisation?}; ids default to
    p1, p2, ... by position and must be unique. Raises ValidationError."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_PRESENTERS:
        raise ValidationError(
            f"presenters must be a list of at most {MAX_PRESENTERS} objects", code="bad_field"
        )
    lineup: list[Presenter] = []
    for index, raw in enumerate(value):
        where = f"presenters[{index}]"
        if not isinstance(raw, dict):
            raise ValidationError(f"{where} must be an object", code="bad_field")
        pid = raw.get("id", f"p{index + 1}")
        if not isinstance(pid, str) or not PRESENTER_ID_RE.fullmatch(pid):
            raise ValidationError(f"{where}.id must be 1-32 of a-z 0-9 _ -", code="bad_field")
        if any(p.id == pid for p in lineup):
            raise ValidationError(f"{where}.id {pid} is used twice", code="bad_field")
        lineup.append(
            Presenter(pid, _field(raw, "name", where), _field(raw, "organisation", where))
        )
    return tuple(lineup)


def _field(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise ValidationError(f"{where}.{key} must be a string", code="bad_field")
    return check_text(value, f"{where}.{key}", 200).strip()


def parse_cli_presenter(spec: str) -> dict[str, str]:
    """`lopso class create --presenter "Name|Organisation"` (or `id:Name|Organisation`)."""
    head, _, organisation = spec.partition("|")
    pid, colon, name = head.partition(":")
    if colon and PRESENTER_ID_RE.fullmatch(pid):
        return {"id": pid, "name": name.strip(), "organisation": organisation.strip()}
    return {"name": head.strip(), "organisation": organisation.strip()}
