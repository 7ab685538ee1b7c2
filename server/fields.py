"""The one rule for incoming text, applied once at the edge by every parser.

Every text field a page, a script or a file sends (WebSocket messages, REST JSON bodies, the
registry CSV, check-ins, query strings used as text) passes `check_text`: at most `limit`
characters, no lone UTF-16 surrogate, no control character (C0, DEL, C1) except tab, line
feed and carriage return where multi-line text is allowed.

Why surrogates: JSON's "\\udc00" decodes to a lone one, which no UTF-8 encoder takes: SQLite
and redis-py refuse the write (in a cluster, with the whole batch it rides in), and a message
holding it kills the socket writer of every page it is sent to.

Pure: imports neither aiohttp nor the store; `FieldError` is translated in server/errors.py.
"""

from __future__ import annotations

import re

# [\ud800-\udfff] matches only lone surrogates: json.loads joins a valid pair into one character.
_SINGLE_LINE_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MULTI_LINE_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class FieldError(ValueError):
    """A text field is too long (`bad_field`) or holds what no text field may (`bad_text`);
    its message names the field."""

    def __init__(self, field: str, problem: str, code: str = "bad_text") -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.code = field, code


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """What is wrong with the characters of `value` ("holds a lone surrogate U+DC00 at
    character 3"), or None when nothing is."""
    found = (_MULTI_LINE_BAD if multiline else _SINGLE_LINE_BAD).search(value)
    if found is None:
        return None
    point = ord(found.group())
    kind = "a lone surrogate" if 0xD800 <= point <= 0xDFFF else "a control character"
    return f"holds {kind} U+{point:04X} at character {found.start() + 1}"


def check_text(value: str, field: str, limit: int, *, multiline: bool = False) -> str:
    """`value` unchanged when it is at most `limit` characters of acceptable text; else a
    FieldError naming `field`."""
    if len(value) > limit:
        raise FieldError(field, f"is longer than {limit} characters", code="bad_field")
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise FieldError(field, problem)
    return value


__all__ = ["FieldError", "check_text", "text_problem"]
