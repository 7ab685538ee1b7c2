"""Errors raised by media/. server/ maps them to HTTP status in one place."""


class MediaError(Exception):
    """Base class of every error media/ raises on purpose."""


class SdpError(MediaError):
    """The offer is not valid SDP, or lacks what WebRTC requires (ICE, DTLS, a media line)."""


class CodecMismatchError(MediaError):
    """The peer cannot send or receive the codec this lecture is fixed to."""


class LectureClosedError(MediaError):
    """The lecture was closed; no new publisher or viewer is accepted."""


class PublisherBusyError(MediaError):
    """Another publisher is live on this lecture and replacement was not asked for."""


class PresenterOfflineError(MediaError):
    """A presenter asked to go on air is not publishing (no standby source to cut to)."""


class RecordingRefusedError(MediaError):
    """A recording cannot start or be joined (the disk is nearly full, nothing was recorded)."""
