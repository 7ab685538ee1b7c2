"""Hostile input against one real in-process app, driven by hypothesis.

A careless script or a hostile hall sends: random bytes and mutated real offers (aiortc's and
a Chrome-shaped one) to WHIP/WHEP, random JSON shapes and binary frames on the WebSocket,
random class and check-in bodies, hostile registry CSVs, mutated and forged tokens. Every
reply must be a 2xx the input deserves, or a 4xx in the JSON error shape, or a clean WebSocket
close (1008/1009) — never a 500, never a hang (every call is bounded). One app serves the whole
module; the last test checks that a normal client still works and that every record the server
acknowledged during the barrage is in the ledger, read back from disk by a second store.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from chromeoffer import chrome_offer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serverproc import SECRET, mint, running_app
from test_api import ADMIN, seed
from test_bad_input import publisher_offer, viewer_offer

from server import auth
from server.checkin import CheckinError, parse_checkin
from server.fields import text_problem
from server.models import EventKind, Role
from server.routes.ws import HANDLERS
from server.store import open_store

pytestmark = pytest.mark.asyncio(loop_scope="module")

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CALL_S = 10.0  # no single request may take longer: a hang fails the test
SDP = "application/sdp"
SITE_ROLES = (Role.SITE, Role.PARTICIPANT)


@dataclasses.dataclass
class Acked:
    """A ledger record the server acknowledged: kind, site and what its data must hold."""

    kind: EventKind
    site: str
    data: dict[str, Any]


@dataclasses.dataclass
class Hall:
    """The app under attack, real offers to mutate, and what the server acknowledged."""

    client: Any
    state: Any
    data_dir: Path
    offers: dict[str, str]
    acked: list[Acked] = dataclasses.field(default_factory=list)
    ids: set[str] = dataclasses.field(default_factory=set)  # message ids used so far


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hall(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    unlimited = {"signalling_rate": 0, "checkin_rate_site": 0, "checkin_rate_addr": 0}
    async with running_app(tmp, media=True, ws_idle_timeout_s=5.0, **unlimited) as (client, state):
        await seed(client)
        chrome = chrome_offer("abcd", "abcdefghijklmnopqrstuvwx", ("sha-256", "AA:BB"))
        offers = {
            "aiortc_viewer": await viewer_offer(),
            "aiortc_publisher": await publisher_offer(),
            "chrome_viewer": chrome,
            "chrome_publisher": chrome.replace("a=recvonly", "a=sendonly"),
        }
        yield Hall(client, state, tmp / "data", offers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(coro: Any) -> aiohttp.ClientResponse:
    """A request that must answer within CALL_S seconds."""
    return await asyncio.wait_for(coro, CALL_S)


async def assert_error(reply: aiohttp.ClientResponse, *statuses: int) -> dict[str, str]:
    """A 4xx (one of `statuses` when given) in the JSON error shape; its `error` object."""
    text = await reply.text()
    assert 400 <= reply.status < 500, (reply.status, text[:500])
    if statuses:
        assert reply.status in statuses, (reply.status, text[:500])
    assert reply.content_type == "application/json", (reply.content_type, text[:200])
    body = json.loads(text)
    assert list(body) == ["error"], body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str), body
    return error


# --- WHIP / WHEP bodies ---------------------------------------------------------------------
S1 = mint(Role.SITE, "c1", "S1")
LECTURER = mint(Role.LECTURER, "c1")
ENDPOINTS = {  # kind -> (path, token, the real offers that fit it)
    "whep": ("/whep/c1/S1", S1, ("aiortc_viewer", "chrome_viewer")),
    "whip": ("/whip/c1", LECTURER, ("aiortc_publisher", "chrome_publisher")),
}


async def post_offer(hall: Hall, kind: str, body: bytes, media: str | None = None) -> int:
    """POST `body` as an offer (`?media=` when given): a 201 with an SDP answer (then
    DELETE'd) or a JSON 4xx."""
    path, token, _ = ENDPOINTS[kind]
    headers = {**bearer(token), "Content-Type": SDP}
    params = {"media": media} if media is not None else {}
    reply = await call(hall.client.post(path, data=body, headers=headers, params=params))
    if reply.status != 201:
        await assert_error(reply)
        return reply.status
    answer = await reply.text()
    assert reply.content_type == SDP and answer.startswith("v=0"), answer[:200]
    gone = await call(hall.client.delete(reply.headers["Location"], headers=bearer(token)))
    assert gone.status == 200, await gone.text()
    return 201


def mutate_lines(sdp: str, data: st.DataObject) -> str:
    """Drop, duplicate, replace, corrupt or insert a few lines of a real offer."""
    lines = sdp.split("\r\n")
    junk = st.one_of(
        st.text(max_size=80),
        st.sampled_from(
            ["m=video 0 RTP/AVP", "a=rtpmap:96", "a=fingerprint:sha-256 zz", "c=IN IP4 x", "m="]
        ),
        st.integers(-(2**70), 2**70).map(lambda n: f"a=rtpmap:{n} VP8/{n}"),
        st.integers(-(2**70), 2**70).map(
            lambda n: f"a=candidate:1 1 udp {n} 127.0.0.1 {n} typ host"
        ),
    )
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = data.draw(st.integers(0, max(0, len(lines) - 1)), label="line")
        op = data.draw(st.sampled_from(["drop", "dup", "replace", "insert", "digits"]), label="op")
        if op == "drop" and lines:
            del lines[at]
        elif op == "dup" and lines:
            lines.insert(at, lines[at])
        elif op == "replace" and lines:
            lines[at] = data.draw(junk, label="junk")
        elif op == "insert":
            lines.insert(at, data.draw(junk, label="junk"))
        elif op == "digits" and lines:
            big = str(data.draw(st.integers(-(2**70), 2**70), label="number"))
            lines[at] = "".join(big if ch.isdigit() else ch for ch in lines[at][:200])
    separator = data.draw(st.sampled_from(["\r\n", "\n", "\r"]), label="eol")
    return separator.join(lines)


MEDIA_QUERY = st.one_of(st.none(), st.sampled_from(["auto", "audio_only"]), st.text(max_size=12))


@FUZZ
@given(kind=st.sampled_from(sorted(ENDPOINTS)), body=st.binary(max_size=4096))
async def test_random_bytes_as_offer(hall: Hall, kind: str, body: bytes) -> None:
    await post_offer(hall, kind, body)


@FUZZ
@given(kind=st.sampled_from(sorted(ENDPOINTS)), data=st.data())
async def test_truncated_real_offers(hall: Hall, kind: str, data: st.DataObject) -> None:
    offer = hall.offers[data.draw(st.sampled_from(ENDPOINTS[kind][2]), label="offer")]
    cut = data.draw(st.integers(0, len(offer)), label="cut")
    await post_offer(hall, kind, offer[:cut].encode())


@FUZZ
@given(kind=st.sampled_from(sorted(ENDPOINTS)), data=st.data())
async def test_mutated_real_offers(hall: Hall, kind: str, data: st.DataObject) -> None:
    offer = hall.offers[data.draw(st.sampled_from(ENDPOINTS[kind][2]), label="offer")]
    body = mutate_lines(offer, data).encode("utf-8", "surrogatepass")
    await post_offer(hall, kind, body, data.draw(MEDIA_QUERY, label="media"))


# --- text: every text field also gets lone surrogates and control characters ---------------
BAD_CHARS = ("\udc00", "\ud800", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\t", "\n", "\r")


def hostile_text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Any text, lone surrogates and control characters included (st.text() leaves out
    surrogates), and text with one of BAD_CHARS somewhere in it."""
    anything = st.text(st.characters(exclude_categories=()), min_size=min_size, max_size=max_size)
    salted = st.tuples(
        st.text(max_size=max_size // 2), st.sampled_from(BAD_CHARS), st.text(max_size=max_size // 2)
    ).map("".join)
    return st.one_of(anything, salted, st.text(min_size=min_size, max_size=max_size))


# --- WebSocket frames -----------------------------------------------------------------------
WS_TYPES = tuple(sorted(HANDLERS))  # every message type the server knows, new ones too
FIELDS = (
    "state",
    "count",
    "phase",
    "reason",
    "text",
    "name",
    "ident",
    "to",
    "site",
    "action",
    "help_id",
    "question_id",
    "rtt_ms",
    "loss_pct",
    "kbps",
    "fps",
    "mode",
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text(max_size=40),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(hostile_text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
PLAUSIBLE = {  # values a real page sends, so that some fuzzed messages are accepted
    "state": st.sampled_from(["waiting", "playing", "stalled", "nope"]),
    "count": st.integers(-5, 20_000),
    "phase": st.sampled_from(["start", "mid", "end", "other", "later"]),
    "reason": st.sampled_from(["no_picture", "no_sound", "connection", "other", "x"]),
    "text": hostile_text(min_size=1, max_size=600),
    "name": hostile_text(min_size=1, max_size=120),
    "ident": hostile_text(max_size=45),
    "help_id": hostile_text(max_size=70),
    "question_id": hostile_text(max_size=70),
    "to": st.one_of(
        st.sampled_from([{"all": True}, {"site": "S1"}, {"commune": "Xã Tiên Lữ"}, {"site": 1}]),
        hostile_text(max_size=30).map(lambda name: {"commune": name}),
    ),
    "site": st.sampled_from(["S1", "S2", "S9", ""]),
    "action": st.sampled_from(["reconnect", "explode"]),
    "mode": st.sampled_from(["auto", "audio_only", "video_only"]),
}
MESSAGE = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(WS_TYPES), JSON)},
    optional={
        "id": st.one_of(
            st.uuids().map(str), JSON, hostile_text(max_size=64), st.text(min_size=65, max_size=70)
        ),
        **{key: st.one_of(JSON, PLAUSIBLE.get(key, JSON)) for key in FIELDS},
    },
)
FRAME = st.one_of(
    MESSAGE.map(lambda m: ("text", json.dumps(m))),
    MESSAGE.map(lambda m: ("text", json.dumps(m))),
    st.text(max_size=300).map(lambda t: ("text", t)),  # a frame on the wire is UTF-8
    st.binary(max_size=300).map(lambda b: ("bytes", b)),
    st.integers(1, 16_000).map(lambda n: ("text", "[" * n + "]" * n)),
    st.integers(4_000, 15_000).map(
        lambda n: ("text", '{"type":"headcount","count":' + "9" * n + "}")
    ),
    st.integers(4_000, 15_000).map(lambda n: ("text", "9" * n)),
    st.just(("text", '{"type":"question","text":"' + "\u1ea1" * 8000 + '"}')),
)
WS_ROLES = {
    "site": mint(Role.SITE, "c1", "S1"),
    "moderator": mint(Role.MODERATOR, "c1"),
    "lecturer": mint(Role.LECTURER, "c1"),
    "admin": mint(Role.ADMIN),
}
LEDGER_KINDS = {
    "headcount": EventKind.HEADCOUNT,
    "help": EventKind.HELP_REQUESTED,
    "question": EventKind.QUESTION,
    "checkin": EventKind.CHECKIN,
}


def expected_record(message: dict[str, Any], ack: dict[str, Any]) -> Acked | None:
    """The ledger record an ack of `message` promises (None: nothing to keep)."""
    kind = message.get("type")
    if kind == "headcount":
        return Acked(
            EventKind.HEADCOUNT, "S1", {"count": message["count"], "phase": message["phase"]}
        )
    if kind == "help":
        return Acked(EventKind.HELP_REQUESTED, "S1", {"help_id": ack["help_id"]})
    if kind == "question":
        return Acked(EventKind.QUESTION, "S1", {"question_id": ack["question_id"]})
    if kind == "checkin" and ack.get("duplicate") is False:
        fields = {key: message[key] for key in ("name", "ident") if key in message}
        return Acked(EventKind.CHECKIN, "S1", {"name": parse_checkin(fields, by="operator").name})
    return None


async def read_until_probe(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]] | int:
    """Every message up to the ack of the `probe` heartbeat, or the close code."""
    seen: list[dict[str, Any]] = []
    while True:
        msg = await ws.receive(timeout=CALL_S)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            return ws.close_code or 1006
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data.get("type") == "ack" and data.get("id") == "probe":
            return seen
        seen.append(data)


@FUZZ
@given(role=st.sampled_from(sorted(WS_ROLES)), frames=st.lists(FRAME, min_size=1, max_size=8))
async def test_websocket_frames(hall: Hall, role: str, frames: list[tuple[str, Any]]) -> None:
    ws = await call(hall.client.ws_connect("/ws/c1", params={"token": WS_ROLES[role]}))
    try:
        sent: dict[str, dict[str, Any]] = {}
        for how, payload in frames:
            if how == "bytes":
                await ws.send_bytes(payload)
                continue
            await ws.send_str(payload)
            message = _json_or_none(payload)
            ref = message.get("id") if isinstance(message, dict) else None
            if isinstance(ref, str) and ref not in hall.ids:  # a resend is stored once: skip
                sent[ref] = message
            if isinstance(ref, str):
                hall.ids.add(ref)
        await ws.send_str(json.dumps({"type": "heartbeat", "id": "probe"}))
        seen = await read_until_probe(ws)
        if isinstance(seen, int):  # closed: only for floods, garbage or oversize frames
            assert seen in (1008, 1009), seen
            return
        for reply in seen:
            assert reply.get("code") != "internal", reply
            if reply["type"] == "ack" and reply["id"] in sent:
                assert not bad_text_in(sent[reply["id"]]), (sent[reply["id"]], reply)
                record = expected_record(sent[reply["id"]], reply)
                if record is not None:
                    hall.acked.append(record)
                    assert await in_ledger(hall.state.store, record), record
    finally:
        await ws.close()


TEXT_FIELDS = {  # message type -> its text fields (multi-line or not)
    "question": {"text": True},
    "help": {"text": True},
    "message": {"text": True},
    "checkin": {"name": False, "ident": False},
    "resolve_help": {"help_id": False},
    "forward_question": {"question_id": False},
}


def bad_text_in(message: dict[str, Any]) -> bool:
    """Does a text field of `message` hold what no text field may (then it is refused)?"""
    fields = TEXT_FIELDS.get(message.get("type"), {})  # type: ignore[arg-type]
    for key, multiline in fields.items():
        value = message.get(key)
        if isinstance(value, str) and value.strip() and text_problem(value, multiline=multiline):
            return True
    to = message.get("to")
    if message.get("type") == "message" and isinstance(to, dict):
        commune = to.get("commune")
        return isinstance(commune, str) and text_problem(commune) is not None
    return False


def _json_or_none(payload: str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


async def in_ledger(store: Any, record: Acked) -> bool:
    events = await store.events("c1", kinds=(record.kind,), site_code=record.site)
    return any(
        all(event.data.get(key) == value for key, value in record.data.items()) for event in events
    )


# --- REST bodies ----------------------------------------------------------------------------
TIMES = st.one_of(
    JSON,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**64), 2**64),
    st.sampled_from(["2026-11-26T02:00:00Z", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00Z"]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
)
CLASS_BODY = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(JSON, st.from_regex(r"fz[a-z0-9_-]{1,20}", fullmatch=True)),
        "title": st.one_of(JSON, hostile_text(min_size=1, max_size=250)),
        "starts_at": TIMES,
        "ends_at": TIMES,
        "video_codec": st.one_of(JSON, st.sampled_from(["vp8", "H264", "AV1"])),
        "site_codes": st.one_of(
            JSON, st.lists(st.sampled_from(["S1", "S2", "S9", "a b"]), max_size=3)
        ),
    },
)
RAW_JSON = st.one_of(
    st.binary(max_size=500),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
    st.integers(4_400, 20_000).map(lambda n: b'{"title":"t","starts_at":' + b"1" * n + b"}"),
    st.just(b'{"title":"t","starts_at":NaN}'),
    st.just('{"title":"\ud800"}'.encode("utf-8", "surrogatepass")),
    st.just(b'{"title":"\\udc00","starts_at":1800000000}'),  # JSON's escape: a lone surrogate
)


@FUZZ
@given(body=CLASS_BODY)
async def test_class_bodies(hall: Hall, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    reply = await call(hall.client.post("/api/sessions", data=raw, headers=_json_headers()))
    if reply.status != 201:
        await assert_error(reply, 400)
        return
    assert not (isinstance(body.get("title"), str) and text_problem(body["title"])), body
    created = await reply.json()
    again = await call(hall.client.get(f"/api/sessions/{created['id']}", headers=ADMIN))
    assert again.status == 200, await again.text()
    assert (await again.json())["starts_at"] == created["starts_at"]


async def test_json_body_over_its_limit_is_413(hall: Hall) -> None:
    raw = b'{"name": "' + b"x" * (300 * 1024) + b'"}'
    path = "/api/sessions/c1/sites/S1/checkins"
    reply = await call(hall.client.post(path, data=raw, headers=_json_headers()))
    assert (await assert_error(reply, 413))["code"] == "body_too_large"


@FUZZ
@given(raw=RAW_JSON, path=st.sampled_from(["/api/sessions", "/api/sessions/c1/sites/S1/checkins"]))
async def test_raw_json_bodies(hall: Hall, raw: bytes, path: str) -> None:
    reply = await call(hall.client.post(path, data=raw, headers=_json_headers()))
    await assert_error(reply, 400, 413)


def _json_headers() -> dict[str, str]:
    return {**ADMIN, "Content-Type": "application/json"}


CHECKIN_BODY = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(
            JSON,
            hostile_text(max_size=120),
            st.just("Nguyễn Văn Ân"),
            st.from_regex(r"[A-Za-zÀ-ỹ][A-Za-zÀ-ỹ ]{1,30}", fullmatch=True),
        ),
        "ident": st.one_of(
            JSON, hostile_text(max_size=45), st.from_regex(r"\+?84[0-9 .-]{9,12}", fullmatch=True)
        ),
        "by": JSON,
    },
)
PARTICIPANT = mint(Role.PARTICIPANT, "c1", "S1")


@FUZZ
@given(body=CHECKIN_BODY)
async def test_checkin_bodies(hall: Hall, body: dict[str, Any]) -> None:
    headers = {**bearer(PARTICIPANT), "Content-Type": "application/json"}
    path = "/api/sessions/c1/sites/S1/checkins"
    reply = await call(hall.client.post(path, data=json.dumps(body), headers=headers))
    try:
        person = parse_checkin(body, by="qr")
    except CheckinError:
        await assert_error(reply, 400)
        return
    assert reply.status in (200, 201), await reply.text()
    if reply.status == 201:
        record = Acked(EventKind.CHECKIN, "S1", {"name": person.name})
        hall.acked.append(record)
        assert await in_ledger(hall.state.store, record), record


CELL = st.one_of(
    hostile_text(max_size=30),
    st.sampled_from(
        [
            '=HYPERLINK("http://x","y")',
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "=cmd|' /C calc'!A0",
            "\x00",
            "a\x00b",
            "\t=1",
            '"quoted, with comma"',
            "Nhà văn hóa thôn Đông",
        ]
    ),
)
HOSTILE_CSV = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.lists(CELL, min_size=1, max_size=7), max_size=6).map(
        lambda rows: "\n".join(",".join(row) for row in [["code", "name", "commune"], *rows])
    ),
    st.lists(
        st.tuples(st.from_regex(r"FZ[A-Za-z0-9_.-]{0,8}", fullmatch=True), CELL, CELL), max_size=5
    ).map(lambda rows: "code,name,commune\n" + "\n".join(",".join(r) for r in rows)),
    st.integers(100_000, 1_100_000).map(lambda n: "code,name\nFZLONG," + "x" * n + "\n"),
    st.integers(100_000, 1_100_000).map(lambda n: 'code,name\nFZQ,"' + "y" * n),
    st.just("code,name,join_key\nS1,stolen,attacker-key\n"),
)
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "cp1258", "latin-1")


@FUZZ
@given(csv_text=HOSTILE_CSV, encoding=st.sampled_from(ENCODINGS))
async def test_hostile_registry_csv(hall: Hall, csv_text: str | bytes, encoding: str) -> None:
    if isinstance(csv_text, str):
        if "S1,stolen" in csv_text:
            return  # an admin may set a key; this must not run against the shared class
        raw = codecs.encode(csv_text, encoding, "replace")
    else:
        raw = csv_text
    headers = {**ADMIN, "Content-Type": "text/csv"}
    reply = await call(hall.client.post("/api/sites/import", data=raw, headers=headers))
    if reply.status != 200:
        await assert_error(reply, 400, 413)
        return
    listed = await call(hall.client.get("/api/sites", headers=ADMIN))
    names = {site["code"]: site["name"] for site in (await listed.json())["sites"]}
    assert names["S1"] == "Nhà văn hóa thôn Đông"  # nothing outside the CSV changed
    for site in names.values():
        assert "\x00" not in site


async def test_formulas_imported_come_out_as_text(hall: Hall) -> None:
    """A registry row written to run in Excel is kept as data and exported as plain text."""
    import csv
    import io
    import zipfile

    hostile = '=HYPERLINK("http://evil.example","Bấm")'
    raw = f'code,name,commune\nFZX1,"{hostile.replace(chr(34), chr(34) * 2)}",@SUM(A1)\n'
    reply = await call(
        hall.client.post(
            "/api/sites/import", data=raw.encode(), headers={**ADMIN, "Content-Type": "text/csv"}
        )
    )
    assert reply.status == 200, await reply.text()
    body = {"id": "fzformula", "title": "=1+1", "starts_at": 1_800_000_000, "site_codes": ["FZX1"]}
    reply = await call(hall.client.post("/api/sessions", json=body, headers=ADMIN))
    assert reply.status == 201, await reply.text()
    export = await call(hall.client.get("/api/sessions/fzformula/attendance.csv", headers=ADMIN))
    rows = list(csv.reader(io.StringIO((await export.read()).decode("utf-8-sig"))))
    cells = [cell for row in rows for cell in row]
    assert "'" + hostile in cells and "'@SUM(A1)" in cells, rows
    assert not any(cell.startswith(("=", "@", "+")) for cell in cells), rows
    xlsx = await call(hall.client.get("/api/sessions/fzformula/attendance.xlsx", headers=ADMIN))
    with zipfile.ZipFile(io.BytesIO(await xlsx.read())) as book:
        sheets = [book.read(n).decode() for n in book.namelist() if n.startswith("xl/worksheets/")]
    assert sheets and not any("<f>" in sheet for sheet in sheets)  # no cell holds a formula


RAW_REQUEST = st.one_of(
    st.binary(max_size=2000),
    st.binary(max_size=200).map(lambda b: b"GET /healthz HTTP/1.1\r\n" + b + b"\r\n\r\n"),
    st.binary(max_size=200).map(
        lambda b: b"POST /whep/c1/S1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b
    ),
    st.integers(9_000, 70_000).map(lambda n: b"GET /" + b"a" * n + b" HTTP/1.1\r\n\r\n"),
    st.integers(9_000, 70_000).map(lambda n: b"GET / HTTP/1.1\r\nX: " + b"b" * n + b"\r\n\r\n"),
)


@FUZZ
@given(raw=RAW_REQUEST)
async def test_garbage_on_the_http_port(hall: Hall, raw: bytes) -> None:
    """Bytes that are not HTTP get a 4xx or a closed connection, within CALL_S."""
    server = hall.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(raw)
        await writer.drain()
        writer.write_eof()
        head = await asyncio.wait_for(reader.read(64), CALL_S)
    except ConnectionError:
        head = b""
    finally:
        writer.close()
    if head:
        status = int(head.split(b" ", 2)[1])
        assert status < 500, head
    assert (await call(hall.client.get("/healthz"))).status == 200


# --- paths and query strings ---------------------------------------------------------------
SEGMENT = st.one_of(
    st.sampled_from(["c1", "S1", "S2", "S9", "", ".", "..", "%00", "*"]),
    st.text(min_size=1, max_size=40),
    st.text(alphabet="abc", min_size=300, max_size=3000),
)
QUERY = st.dictionaries(
    st.sampled_from(["lang", "level", "commune", "limit", "site", "token", "format", "x"]),
    st.one_of(hostile_text(max_size=30), st.integers(-(2**70), 2**70).map(str), st.just("")),
    max_size=4,
)
GETS = (
    "/api/sessions/{sid}",
    "/api/sessions/{sid}/links",
    "/api/sessions/{sid}/attendance",
    "/api/sessions/{sid}/attendance.csv",
    "/api/sessions/{sid}/attendance.xlsx",
    "/api/sessions/{sid}/sites/{site}",
    "/api/sessions/{sid}/incidents",
    "/studio/{sid}",
    "/site/{sid}/{site}",
    "/moderator/{sid}",
    "/checkin/{sid}/{site}",
    "/classes/{sid}/cards",
    "/api/classes/{sid}/hall-links",
    "/j/{site}",
)


@FUZZ
@example(path="/api/sessions/{sid}/incidents", sid="c1", site="S1", query={"limit": "²"})
@example(path="/api/sessions/{sid}/attendance.csv", sid="c1", site="S1", query={"level": "x"})
@given(
    path=st.sampled_from(GETS),
    sid=st.one_of(st.just("c1"), SEGMENT),
    site=st.one_of(st.just("S1"), SEGMENT),
    query=QUERY,
)
async def test_paths_and_query_strings(
    hall: Hall, path: str, sid: str, site: str, query: dict[str, str]
) -> None:
    from urllib.parse import quote

    url = path.replace("{sid}", quote(sid, safe="")).replace("{site}", quote(site, safe=""))
    if "token" not in query:
        query = {**query, "token": mint(Role.ADMIN)}
    reply = await call(hall.client.get(url, params=query))
    if reply.status < 400:
        assert reply.status == 200, await reply.text()
        return
    if reply.content_type == "application/json" or path.startswith("/api/"):
        await assert_error(reply)  # an API route, or a path no route matches
    else:  # a page: an error page in the person's language
        assert 400 <= reply.status < 500 and reply.content_type == "text/html", reply.status


# --- tokens ---------------------------------------------------------------------------------
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def mutate_token(token: str, data: st.DataObject) -> str:
    op = data.draw(st.sampled_from(["flip", "cut", "insert", "swap", "dots", "case"]), label="op")
    at = data.draw(st.integers(0, len(token) - 1), label="at")
    if op == "flip":
        other = data.draw(st.sampled_from(B64 + "=+/.~ é"), label="char")
        return token[:at] + other + token[at + 1 :]
    if op == "cut":
        return token[:at]
    if op == "insert":
        return token[:at] + data.draw(st.text(min_size=1, max_size=3), label="text") + token[at:]
    if op == "swap":
        body, _, sig = token.partition(".")
        return f"{sig}.{body}"
    if op == "dots":
        return token.replace(".", data.draw(st.sampled_from(["..", "", ". ", ".="]), label="dot"))
    return token.swapcase()


BASE_TOKENS = {
    "site": mint(Role.SITE, "c1", "S1"),
    "participant": mint(Role.PARTICIPANT, "c1", "S1"),
    "moderator": mint(Role.MODERATOR, "c1"),
    "admin": mint(Role.ADMIN),
}


@FUZZ
@given(base=st.sampled_from(sorted(BASE_TOKENS)), data=st.data())
async def test_mutated_tokens(hall: Hall, base: str, data: st.DataObject) -> None:
    token = mutate_token(BASE_TOKENS[base], data)
    path = "/api/sessions/c1/sites/S1/checkins"
    body = json.dumps({"name": f"Người {uuid.uuid4().hex[:6]}"})
    headers = {"Content-Type": "application/json"}
    reply = await call(hall.client.post(path, params={"token": token}, data=body, headers=headers))
    if token == BASE_TOKENS[base] and base != "moderator":
        assert reply.status == 201, await reply.text()
        return
    error = await assert_error(reply)
    assert reply.status == (403 if token == BASE_TOKENS[base] else 401), error


def forge(secret: bytes, claims: dict[str, Any]) -> str:
    try:
        payload = json.dumps(claims, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: it travels as JSON's \u escape
        payload = json.dumps(claims).encode()
    sig = auth._sign(secret, payload)
    encode = base64.urlsafe_b64encode
    return f"{encode(payload).rstrip(b'=').decode()}.{encode(sig).rstrip(b'=').decode()}"


CLAIMS = st.fixed_dictionaries(
    {
        "sid": st.one_of(st.sampled_from(["c1", "*", "c2", ""]), JSON),
        "role": st.one_of(st.sampled_from([r.value for r in Role]), JSON),
        "exp": st.one_of(st.just(int(time.time()) + 3600), st.integers(-(2**40), 2**40), JSON),
    },
    optional={
        "site": st.one_of(
            st.sampled_from(["S1", "S2", "S3", "S9", None]), JSON, st.text(max_size=2000)
        ),
        "k": st.one_of(st.sampled_from(["right", "wrong"]), JSON),
    },
)


def forged_status(claims: dict[str, Any], token: str, key_ids: dict[str, str]) -> int:
    """What the check-in route must answer to a correctly signed token with these claims: an
    independent model of auth.verify + check_key + authorize for (CHECKIN, c1, S1)."""
    sid, role, exp = claims["sid"], claims["role"], claims["exp"]
    site, k = claims.get("site"), claims.get("k")
    roles = {r.value for r in Role}
    if len(token) > auth.MAX_TOKEN_CHARS or not isinstance(role, str) or role not in roles:
        return 401
    if not isinstance(sid, str) or type(exp) is not int or exp <= time.time() + 5:
        return 401
    if not (site is None or isinstance(site, str)) or not (k is None or isinstance(k, str)):
        return 401
    if any(isinstance(v, str) and text_problem(v) for v in (sid, site, k)):
        return 401
    if sid == "*" and role != "admin":  # only an admin token may be for every class
        return 401
    if role in ("site", "participant") and site in key_ids and k != key_ids[site]:
        return 401
    if sid not in ("c1", "*") or role not in ("admin", "site", "participant"):
        return 403
    if role != "admin" and site != "S1":
        return 403
    return 201


@FUZZ
@given(claims=CLAIMS, right_secret=st.booleans())
async def test_forged_claims(hall: Hall, claims: dict[str, Any], right_secret: bool) -> None:
    sites = {s.code: s for s in await hall.state.store.get_sites(["S1", "S2", "S3"])}
    key_ids = {code: auth.key_id(SECRET.encode(), s.join_key) for code, s in sites.items()}
    if claims.get("k") == "right":
        site = claims.get("site")
        claims = {**claims, "k": key_ids.get(site, "none") if isinstance(site, str) else "none"}
    secret = SECRET.encode() if right_secret else b"not-the-secret-0123456789"
    token = forge(secret, claims)
    path = "/api/sessions/c1/sites/S1/checkins"
    body = json.dumps({"name": f"Người {uuid.uuid4().hex[:6]}"})
    headers = {**bearer(token), "Content-Type": "application/json"}
    reply = await call(hall.client.post(path, data=body, headers=headers))
    expected = forged_status(claims, token, key_ids) if right_secret else 401
    if expected == 201:
        assert reply.status == 201, await reply.text()
    else:
        await assert_error(reply, expected)


# --- afterwards -----------------------------------------------------------------------------
async def test_after_the_barrage_clients_work_and_nothing_acked_is_lost(hall: Hall) -> None:
    client = hall.client
    assert (await call(client.get("/healthz"))).status == 200
    reply = await call(
        client.post(
            "/whep/c1/S1",
            data=hall.offers["aiortc_viewer"],
            headers={**bearer(S1), "Content-Type": SDP},
        )
    )
    assert reply.status == 201, await reply.text()
    await call(client.delete(reply.headers["Location"], headers=bearer(S1)))
    ws = await call(client.ws_connect("/ws/c1", params={"token": S1}))
    await ws.send_str(json.dumps({"type": "headcount", "count": 77, "phase": "end", "id": "last"}))
    await ws.send_str(json.dumps({"type": "heartbeat", "id": "probe"}))
    seen = await read_until_probe(ws)
    assert isinstance(seen, list) and any(m.get("id") == "last" for m in seen), seen
    await ws.close()
    hall.acked.append(Acked(EventKind.HEADCOUNT, "S1", {"count": 77, "phase": "end"}))
    path = "/api/sessions/c1/sites/S1/checkins"
    headers = {**bearer(PARTICIPANT), "Content-Type": "application/json"}
    reply = await call(client.post(path, json={"name": "Trần Thị Bình"}, headers=headers))
    assert reply.status in (200, 201), await reply.text()
    hall.acked.append(Acked(EventKind.CHECKIN, "S1", {"name": "Trần Thị Bình"}))
    export = await call(client.get("/api/sessions/c1/attendance", headers=ADMIN))
    assert export.status == 200, await export.text()
    reader = await open_store(None, hall.data_dir, "reader")  # what is on disk, not in memory
    try:
        missing = [record for record in hall.acked if not await in_ledger(reader, record)]
    finally:
        await reader.close()
    assert not missing, missing
