"""Errors raised by server/ and the one place that maps every domain error to the wire.

Each error carries a machine `code` (docs/protocol.md) and an HTTP `status`. `describe()`
translates any exception the routes may see (ours, media.errors, the store's) into
(status, code, message); the HTTP middleware and the WebSocket hub both use it.
"""

from __future__ import annotations

from media.errors import (
    CodecMismatchError,
    LectureClosedError,
    MediaError,
    PresenterOfflineError,
    PublisherBusyError,
    SdpError,
)
from server.admission import TooManySocketsError
from server.checkin import CheckinClosedError, CheckinError
from server.checkin import RateLimitedError as CheckinRateLimitedError
from server.fields import FieldError
from server.reports import AfterEndError, TooManyOpenError
from server.store.base import InvalidValueError, NotFoundError, StoreError


class LopsoError(Exception):
    """Base of the server's deliberate errors: a status, a code and a precise message."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ValidationError(LopsoError):
    """Input failed validation (a field is missing, of the wrong type or out of range)."""

    code = "invalid"


class AuthError(LopsoError):
    """The token is missing, malformed, badly signed or expired (who are you?)."""

    status = 401
    code = "token_invalid"


class ForbiddenError(LopsoError):
    """The token is valid but not for this class, site or action (you may not)."""

    status = 403
    code = "forbidden"


class UnknownError(LopsoError):
    """A class, site or resource named in the request does not exist."""

    status = 404
    code = "not_found"


class BodyTooLargeError(LopsoError):
    """A request body or message is over its size limit."""

    status = 413
    code = "body_too_large"


class ContentTypeError(LopsoError):
    """A request body has the wrong Content-Type."""

    status = 415
    code = "content_type"


class ClassEndedError(LopsoError):
    """The class has ended; no publisher or viewer may join it."""

    status = 409
    code = "class_ended"


class RateLimitedError(LopsoError):
    """The caller sent too many requests in too short a time."""

    status = 429
    code = "rate_limited"


_FOREIGN = (
    (SdpError, 400, "sdp_invalid"),
    (CodecMismatchError, 406, "codec_mismatch"),
    (LectureClosedError, 409, "class_ended"),
    (PublisherBusyError, 409, "publisher_busy"),
    (PresenterOfflineError, 409, "presenter_offline"),
    (MediaError, 500, "media_error"),
    (NotFoundError, 404, "not_found"),
    (InvalidValueError, 400, "bad_text"),
    (StoreError, 503, "store_unavailable"),
)


def describe(exc: BaseException) -> tuple[int, str, str] | None:
    """Return (status, code, message) for a known domain error, or None for an unknown one."""
    if isinstance(exc, LopsoError):
        return exc.status, exc.code, str(exc)
    if isinstance(exc, CheckinError):  # server/checkin.py: its own precise codes
        if isinstance(exc, CheckinClosedError):
            return 410, exc.code, str(exc)
        return (429 if isinstance(exc, CheckinRateLimitedError) else 400), exc.code, str(exc)
    if isinstance(exc, TooManySocketsError):  # server/admission.py, before an upgrade
        return 429, exc.code, str(exc)
    if isinstance(exc, AfterEndError):  # server/reports.py: a site's report after the end
        return 409, exc.code, str(exc)
    if isinstance(exc, TooManyOpenError):  # server/reports.py: a site's open questions / help
        return 429, exc.code, str(exc)
    if isinstance(exc, FieldError):  # server/fields.py: bad_text, or bad_field for a length
        return 400, exc.code, str(exc)
    for kind, status, code in _FOREIGN:
        if isinstance(exc, kind):
            return status, code, str(exc) or kind.__name__
    return None


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error shape of docs/protocol.md."""
    return {"error": {"code": code, "message": message}}
