"""Recordings over HTTP: a site's replay (range requests, aiohttp's FileResponse), the
moderators' info and download, and the replay minutes a site page reports to the ledger.

    GET  /replay/{sid}/{site}/recording          site token: the joined file (Range works)
    POST /api/sessions/{sid}/sites/{site}/replay  site token: {"seconds": 0 < s <= 120}
    GET  /api/sessions/{sid}/recording           export: duration, size, start, state
    GET  /api/sessions/{sid}/recording/file      export: the joined file as a download
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from server.app import STATE, AppState, authorize_request, session_or_404
from server.errors import UnknownError, ValidationError
from server.models import EventKind
from server.roles import Action
from server.routes.api import read_json

MAX_REPORT_S = 120.0  # a page reports every 30 s; a longer claim is refused
TYPES = {"webm": "video/webm", "mp4": "video/mp4"}


def _recordings(state: AppState) -> object:
    if state.recordings is None:
        raise UnknownError("this node serves no recordings", code="no_recording")
    return state.recordings


async def _file(state: AppState, sid: str) -> Path:
    _recordings(state)
    try:
        path: Path | None = await state.recordings.joined(sid)
    except ValueError:
        path = None
    if path is None:
        raise UnknownError(f"class {sid} has no recording", code="no_recording")
    return path


def _response(path: Path, download: str | None = None) -> web.FileResponse:
    headers = {"Content-Type": TYPES.get(path.suffix.lstrip("."), "application/octet-stream")}
    if download is not None:
        headers["Content-Disposition"] = f'attachment; filename="{download}"'
    return web.FileResponse(path, headers=headers)


async def replay_file(request: web.Request) -> web.FileResponse:
    """A site's replay of its class: the joined recording, seekable (Range requests)."""
    state = request.app[STATE]
    sid, code = request.match_info["sid"], request.match_info["site"]
    authorize_request(request, Action.VIEW, sid, code)
    await session_or_404(state.store, sid)
    return _response(await _file(state, sid))


async def report_replay(request: web.Request) -> web.Response:
    """`{"seconds": s}` of replay a site watched since its last report: a ledger event."""
    state = request.app[STATE]
    sid, code = request.match_info["sid"], request.match_info["site"]
    authorize_request(request, Action.REPORT, sid, code)
    body = await read_json(request)
    seconds = body.get("seconds")
    if (
        not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or not 0 < seconds <= MAX_REPORT_S
    ):
        raise ValidationError(
            f"seconds must be a number above 0 and at most {MAX_REPORT_S:g}", code="bad_field"
        )
    await session_or_404(state.store, sid)
    await state.hub.append(sid, EventKind.REPLAY, code, {"seconds": round(float(seconds), 1)})
    return web.json_response({"ok": True}, status=201)


async def recording_info(request: web.Request) -> web.Response:
    """Duration, size, start and state of a class's recording, and its download link."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    authorize_request(request, Action.EXPORT, sid)
    await session_or_404(state.store, sid)
    _recordings(state)
    try:
        info = await state.recordings.info(sid)
    except ValueError:
        info = None
    if info is None:
        raise UnknownError(f"class {sid} has no recording", code="no_recording")
    info["download"] = f"/api/sessions/{quote(sid)}/recording/file"
    return web.json_response(info)


async def recording_file(request: web.Request) -> web.FileResponse:
    """The joined recording as a download."""
    state = request.app[STATE]
    sid = request.match_info["sid"]
    authorize_request(request, Action.EXPORT, sid)
    await session_or_404(state.store, sid)
    path = await _file(state, sid)
    return _response(path, download=f"{sid}{path.suffix}")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/replay/{sid}/{site}/recording", replay_file)
    r.add_post("/api/sessions/{sid}/sites/{site}/replay", report_replay)
    r.add_get("/api/sessions/{sid}/recording", recording_info)
    r.add_get("/api/sessions/{sid}/recording/file", recording_file)
