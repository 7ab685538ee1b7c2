"""Bad input never crashes: precise 4xx or a clean close, and everyone else keeps working."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpsender import RTCRtpSender
from serverproc import SECRET, mint, running_app
from test_api import ADMIN, seed

from server import auth
from server.models import Role


@pytest.fixture
async def app(tmp_path: Path):
    async with running_app(tmp_path, media=True, ws_idle_timeout_s=1.0) as (client, state):
        await seed(client)
        yield client, state


def sdp_headers(token: str, content_type: str = "application/sdp") -> dict[str, str]:
    if not token:
        return {"Content-Type": content_type}
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}


LECTURER = mint(Role.LECTURER, "c1")
S1 = mint(Role.SITE, "c1", "S1")


async def viewer_offer(codec: str | None = None) -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    video = pc.addTransceiver("video", direction="recvonly")
    if codec:
        caps = RTCRtpSender.getCapabilities("video").codecs
        video.setCodecPreferences([c for c in caps if c.mimeType == f"video/{codec}"])
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.mark.parametrize(
    ("path", "token", "body", "content_type", "status", "code"),
    [
        ("/whip/c1", LECTURER, b"hello", "application/sdp", 400, "sdp_invalid"),
        (
            "/whip/c1",
            LECTURER,
            b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n",
            "application/sdp",
            400,
            "sdp_invalid",
        ),
        ("/whip/c1", LECTURER, b"v=0\r\n\xff\xfe", "application/sdp", 400, "sdp_invalid"),
        (
            "/whep/c1/S1",
            S1,
            b"v=0\r\n" + b"a=x\r\n" * 20000,
            "application/sdp",
            413,
            "body_too_large",
        ),
        ("/whip/c1", LECTURER, b"v=0\r\n", "text/plain", 415, "content_type"),
        ("/whip/c1", "", b"v=0\r\n", "application/sdp", 401, "token_missing"),
        (
            "/whip/c1",
            LECTURER[:-3] + "AAA",
            b"v=0\r\n",
            "application/sdp",
            401,
            "token_bad_signature",
        ),
        (
            "/whip/c1",
            auth.mint(SECRET.encode(), "c1", Role.LECTURER, ttl_s=-1),
            b"v=0\r\n",
            "application/sdp",
            401,
            "token_expired",
        ),
        ("/whip/c1", mint(Role.LECTURER, "c2"), b"v=0\r\n", "application/sdp", 403, "wrong_class"),
        ("/whip/c1", S1, b"v=0\r\n", "application/sdp", 403, "wrong_role"),
        ("/whep/c1/S2", S1, b"v=0\r\n", "application/sdp", 403, "wrong_site"),
        (
            "/whip/zz",
            mint(Role.LECTURER, "zz"),
            b"v=0\r\n",
            "application/sdp",
            404,
            "unknown_class",
        ),
        (
            "/whep/c1/S3",
            mint(Role.SITE, "c1", "S3"),
            b"v=0\r\n",
            "application/sdp",
            404,
            "unknown_site",
        ),
    ],
)
async def test_signalling_errors(app, path, token, body, content_type, status, code) -> None:
    client, _ = app
    reply = await client.post(path, data=body, headers=sdp_headers(token, content_type))
    assert reply.status == status, await reply.text()
    assert (await reply.json())["error"]["code"] == code
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == "Bearer"


async def test_codec_mismatch_is_406(app) -> None:
    client, _ = app
    reply = await client.post(
        "/whep/c1/S1", data=await viewer_offer("H264"), headers=sdp_headers(S1)
    )
    assert reply.status == 406, await reply.text()
    assert (await reply.json())["error"]["code"] == "codec_mismatch"


async def publisher_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _insert(line: str):
    return lambda sdp: sdp.replace("a=ice-ufrag", f"{line}\r\na=ice-ufrag", 1)


def _without(prefix: str):
    return lambda sdp: "\r\n".join(x for x in sdp.split("\r\n") if not x.startswith(prefix))


# Offers aiortc's parser trips on with KeyError('bogus'), ValueError("invalid literal ...") or
# a bare AssertionError: the reply names the line, never the Python error.
# (A viewer's a=ssrc lines are dropped before parsing: that one is for WHIP only.)
MALFORMED_OFFERS = [
    ("setup", lambda sdp: sdp.replace("a=setup:actpass", "a=setup:bogus"), "a=setup:bogus"),
    ("rtpmap", lambda sdp: sdp.replace("a=rtpmap:", "a=rtpmap:bogus ", 1), "a=rtpmap:bogus"),
    ("rtcp", _insert("a=rtcp:bogus"), "a=rtcp:bogus"),
    ("fingerprint", lambda sdp: sdp.replace("sha-256 ", "x", 1), "a=fingerprint:x"),
    ("ssrc", _insert("a=ssrc:bogus cname:x"), "a=ssrc:bogus cname:x"),
]


def _assert_fixed(message: str) -> None:
    for python in ("Error(", "Error:", "invalid literal", "not enough values", "KeyError"):
        assert python not in message, message


@pytest.mark.parametrize(("name", "spoil", "line"), MALFORMED_OFFERS)
async def test_malformed_offers_get_a_fixed_message_naming_the_line(app, name, spoil, line) -> None:
    client, _ = app
    posts = [("/whip/c1", LECTURER, await publisher_offer())]
    if name != "ssrc":
        posts.append(("/whep/c1/S1", S1, await viewer_offer()))
    for path, token, offer in posts:
        reply = await client.post(path, data=spoil(offer), headers=sdp_headers(token))
        assert reply.status == 400, await reply.text()
        error = (await reply.json())["error"]
        assert error["code"] == "sdp_invalid"
        _assert_fixed(error["message"])
        assert error["message"].startswith("offer SDP cannot be parsed: line ")
        assert f'line "{line}' in error["message"]


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_without("a=mid:"), "publisher offer's audio m-line has no a=mid"),
        (
            lambda sdp: sdp.replace("a=sendonly", "a=bogus"),
            "publisher offer's audio m-line has no direction (a=sendonly or a=sendrecv)",
        ),
        (_without("a=rtcp-mux"), "publisher offer's audio m-line lacks a=rtcp-mux (required)"),
        (_without("a=ice-pwd"), "publisher offer's audio m-line has no a=ice-ufrag / a=ice-pwd"),
    ],
)
async def test_publisher_offers_aiortc_cannot_use_are_refused_precisely(
    app, spoil, message
) -> None:
    """Before: a missing a=mid was a 500, a missing direction 'None is not in list'."""
    client, _ = app
    offer = spoil(await publisher_offer())
    reply = await client.post("/whip/c1", data=offer, headers=sdp_headers(LECTURER))
    assert reply.status == 400, await reply.text()
    assert (await reply.json())["error"] == {"code": "sdp_invalid", "message": message}


async def test_unknown_resource_and_ended_class(app) -> None:
    client, _ = app
    reply = await client.delete("/whip/c1/nope", headers={"Authorization": f"Bearer {LECTURER}"})
    assert reply.status == 404 and (await reply.json())["error"]["code"] == "unknown_resource"
    await client.post("/api/sessions/c1/end", headers={"Authorization": f"Bearer {LECTURER}"})
    reply = await client.post("/whep/c1/S1", data=await viewer_offer(), headers=sdp_headers(S1))
    assert reply.status == 409 and (await reply.json())["error"]["code"] == "class_ended"


async def test_oversized_and_malformed_api_bodies(app) -> None:
    client, _ = app
    huge = b"code,name\n" + b"A1,x\n" * 1_000_000  # 5 MB > the 4 MiB limit
    reply = await client.post(
        "/api/sites/import", data=huge, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert reply.status == 413 and (await reply.json())["error"]["code"] == "body_too_large"
    reply = await client.post(
        "/api/sessions", data=b"{nope", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert reply.status == 400 and (await reply.json())["error"]["code"] == "bad_json"
    reply = await client.post(
        "/api/sessions", data=b"{}", headers={**ADMIN, "Content-Type": "text/plain"}
    )
    assert reply.status == 415
    reply = await client.post(
        "/api/sites/import",
        data=b"code,name\nbad code,x\n",
        headers={**ADMIN, "Content-Type": "text/csv"},
    )
    assert reply.status == 400 and "line 2" in (await reply.json())["error"]["message"]


async def test_websocket_refuses_bad_tokens_before_upgrade(app) -> None:
    client, _ = app
    for token, status in (
        ("", 401),
        ("x.y", 401),
        (mint(Role.SITE, "c1", "S3"), 404),
        (mint(Role.PARTICIPANT, "c1", "S1"), 403),
        (mint(Role.MODERATOR, "zz"), 403),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/ws/c1", params={"token": token})
        assert info.value.status == status


async def closed_with(ws) -> int:
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code


async def test_garbage_flood_idle_and_oversize_close_only_their_socket(app) -> None:
    client, _ = app
    bystander = await client.ws_connect("/ws/c1", params={"token": mint(Role.MODERATOR, "c1")})

    async def keep_alive() -> None:
        while True:
            await bystander.send_json({"type": "heartbeat"})
            await asyncio.sleep(0.3)

    beating = asyncio.ensure_future(keep_alive())

    garbage = await client.ws_connect("/ws/c1", params={"token": S1})
    for _ in range(25):
        await garbage.send_str("\x00not json")
    assert await closed_with(garbage) == 1008

    flood = await client.ws_connect("/ws/c1", params={"token": S1})
    for _ in range(60):
        await flood.send_json({"type": "heartbeat"})
    assert await closed_with(flood) == 1008

    big = await client.ws_connect("/ws/c1", params={"token": S1})
    await big.send_str(json.dumps({"type": "question", "text": "x" * 20000}))
    assert await closed_with(big) == 1009

    binary = await client.ws_connect("/ws/c1", params={"token": S1})
    await binary.send_bytes(b"\x01\x02")
    while True:
        msg = await binary.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg, binary.close_code)
        data = json.loads(msg.data)
        if data["type"] == "error":
            assert data["code"] == "bad_frame"
            break
    await binary.close()

    idle = await client.ws_connect("/ws/c1", params={"token": S1})
    assert await closed_with(idle) == 1001  # idle timeout is 1 s here

    # the bystander kept working all along (it heartbeats; it saw the site come and go)
    beating.cancel()
    await bystander.send_json({"type": "heartbeat", "id": "ok"})
    while True:
        msg = await bystander.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        if json.loads(msg.data)["type"] == "ack":
            break
    assert (await client.get("/healthz")).status == 200
    reply = await client.post("/whep/c1/S1", data=await viewer_offer(), headers=sdp_headers(S1))
    assert reply.status == 201
    await bystander.close()
    await asyncio.sleep(0)


# --- text fields: lone surrogates and control characters ------------------------------------
BAD_TEXT = {"surrogate": "\udc00", "control": "\x07"}


@pytest.fixture
async def signalling(tmp_path: Path):
    async with running_app(tmp_path, ws_idle_timeout_s=5.0) as (client, state):
        await seed(client)
        yield client, state


async def next_of(ws, kind: str, where=lambda m: True) -> dict:
    """The next message of `kind` that satisfies `where` (others skipped)."""
    while True:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
        data = json.loads(msg.data)
        if data["type"] == kind and where(data):
            return data


# (sender role, message with BAD in one text field, the field, the error code)
WS_TEXT_FIELDS = [
    ("site", {"type": "question", "text": "hỏi BAD"}, "text", "bad_text"),
    ("site", {"type": "help", "reason": "other", "text": "BAD"}, "text", "bad_text"),
    ("site", {"type": "checkin", "name": "Ân BAD"}, "name", "checkin_name"),
    ("site", {"type": "checkin", "name": "Ân", "ident": "09BAD"}, "ident", "checkin_ident"),
    ("moderator", {"type": "message", "text": "BAD", "to": {"all": True}}, "text", "bad_text"),
    (
        "moderator",
        {"type": "message", "text": "chào", "to": {"commune": "Xã BAD"}},
        "to.commune",
        "bad_text",
    ),
    ("moderator", {"type": "resolve_help", "site": "S1", "help_id": "BAD"}, "help_id", "bad_text"),
    ("moderator", {"type": "forward_question", "question_id": "BAD"}, "question_id", "bad_text"),
    ("site", {"type": "heartbeat", "id": "m-BAD"}, "id", "bad_text"),
]


def with_bad(value: object, bad: str) -> object:
    if isinstance(value, dict):
        return {k: with_bad(v, bad) for k, v in value.items()}
    return value.replace("BAD", bad) if isinstance(value, str) else value


@pytest.mark.parametrize("bad", sorted(BAD_TEXT))
@pytest.mark.parametrize(("role", "message", "field", "code"), WS_TEXT_FIELDS)
async def test_bad_text_in_a_message_is_a_precise_error_and_no_page_breaks(
    signalling, bad, role, message, field, code
) -> None:
    client, _ = signalling
    site = await client.ws_connect("/ws/c1", params={"token": S1})
    await next_of(site, "welcome")
    moderator = await client.ws_connect("/ws/c1", params={"token": mint(Role.MODERATOR, "c1")})
    sender = site if role == "site" else moderator
    frame = with_bad({"id": "m1", **message}, BAD_TEXT[bad])
    await sender.send_str(json.dumps(frame))  # "\udc00" travels as JSON's \u escape
    error = await next_of(sender, "error")
    assert error["code"] == code, error
    assert error["message"].startswith(field + " "), error
    assert ("surrogate" if bad == "surrogate" else "control character") in error["message"]
    assert error["id"] == (None if field == "id" else "m1")
    # both pages still work: the site hears the next message, the sender is answered
    await moderator.send_json({"type": "message", "text": "dòng 1\ndòng 2", "to": {"all": True}})
    heard = await next_of(site, "message")
    assert heard["text"] == "dòng 1\ndòng 2"
    await sender.send_json({"type": "heartbeat", "id": "after"})
    assert (await next_of(sender, "ack", lambda m: m["id"] == "after"))["id"] == "after"
    await site.close()
    await moderator.close()


@pytest.mark.parametrize("bad", sorted(BAD_TEXT))
async def test_bad_text_in_rest_bodies_and_queries_is_a_precise_400(signalling, bad) -> None:
    client, _ = signalling
    bad_char = BAD_TEXT[bad]
    kind = "surrogate" if bad == "surrogate" else "control character"
    body = {"id": "c9", "title": f"Lớp {bad_char}", "starts_at": "2026-11-26T02:00:00Z"}
    reply = await client.post(
        "/api/sessions",
        data=json.dumps(body),
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    error = (await reply.json())["error"]
    assert reply.status == 400 and error["code"] == "bad_text", error
    assert error["message"].startswith("title holds") and kind in error["message"]
    participant = {
        "Authorization": f"Bearer {mint(Role.PARTICIPANT, 'c1', 'S1')}",
        "Content-Type": "application/json",
    }
    path = "/api/sessions/c1/sites/S1/checkins"
    for person, field in (
        ({"name": f"Ân{bad_char}"}, "name"),
        ({"name": "Ân", "ident": f"09{bad_char}"}, "ident"),
    ):
        reply = await client.post(path, data=json.dumps(person), headers=participant)
        error = (await reply.json())["error"]
        assert reply.status == 400 and error["code"] == f"checkin_{field}", error
        assert error["message"].startswith(f"{field} holds") and kind in error["message"]
    moderator = {"Authorization": f"Bearer {mint(Role.MODERATOR, 'c1')}"}
    for query, field in (
        (f"/api/sessions/c1/attendance?commune=X{bad_char}", "commune"),
        (f"/api/sessions/c1/incidents?site=S{bad_char}", "site"),
    ):
        # a lone surrogate cannot travel in a URL (yarl makes it U+FFFD): percent-encode it
        reply = await client.get(query.replace("\udc00", "%ED%B0%80"), headers=moderator)
        if bad == "surrogate":
            assert reply.status in (400, 404) and reply.status != 500, await reply.text()
            continue
        error = (await reply.json())["error"]
        assert reply.status == 400 and error["code"] == "bad_text", error
        assert error["message"].startswith(f"{field} holds a control character")
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize(
    ("csv_bytes", "words"),
    [
        ("code,name\nA1,Nhà\x07văn\n".encode(), "line 2: name holds a control character U+0007"),
        (b"code,name\nA1,Nh\xed\xb0\x80\n", "line 2: not UTF-8 text"),  # an encoded surrogate
    ],
)
async def test_bad_text_in_a_registry_csv_names_line_and_field(
    signalling, csv_bytes, words
) -> None:
    client, _ = signalling
    reply = await client.post(
        "/api/sites/import", data=csv_bytes, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    error = (await reply.json())["error"]
    assert reply.status == 400 and error["code"] == "csv_invalid" and words in error["message"]
