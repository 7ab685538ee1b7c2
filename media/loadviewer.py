"""A cheap, non-decoding WebRTC viewer for load tests (benchmarks, scripts/loadgen.py).

It speaks just enough WebRTC to be served like a browser: a recvonly SDP offer, full ICE as the
controlling agent (a check with USE-CANDIDATE, consent refreshes every 5 s), DTLS (client for an
answer with setup:passive, server for setup:active) and SRTP. It counts RTP packets and losses
per SSRC and sends receiver reports (with LSR/DLSR, so the server can measure RTT) every second.
Costs tens of microseconds per packet in Python, far below an aiortc peer, and decodes nothing.

    viewer = LoadViewer()
    await viewer.start()
    await viewer.whep(session, "https://host/whep/c1/site7", token)   # or, in-process:
    # answer, _ = await lecture.subscribe(viewer.offer()); await viewer.connect(answer)
    ... viewer.stats() ...
    await viewer.close()
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc.sdp import SessionDescription
from yarl import URL

from media import ice
from media.dtls import DtlsError, DtlsIdentity, DtlsSession
from media.errors import MediaError, SdpError
from media.srtp import SrtpContext, SrtpError
from media.tcp import TcpClient
from media.udp import UdpSocket

logger = logging.getLogger(__name__)

CONSENT_INTERVAL = 5.0
REPORT_INTERVAL = 1.0
CHECK_INTERVAL = 0.05


@dataclass
class RemoteParams:
    """What a viewer needs from the server's answer to connect."""

    ufrag: str
    pwd: str
    fingerprint: tuple[str, str]
    setup: str
    address: tuple[str, int]


@dataclass
class StreamCounter:
    """Receive statistics for one SSRC (RFC 3550 appendix A.3 style)."""

    base_seq: int
    max_seq: int
    cycles: int = 0
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0

    def update(self, seq: int) -> None:
        self.received += 1
        delta = (seq - self.max_seq) & 0xFFFF
        if 0 < delta < 0x8000:
            if seq < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def lost(self) -> int:
        return max(0, self.extended_max - self.base_seq + 1 - self.received)


@dataclass
class ViewerCounters:
    packets: int = 0
    bytes: int = 0
    rtcp_received: int = 0
    srtp_errors: int = 0
    streams: dict[int, StreamCounter] = field(default_factory=dict)


def parse_answer(sdp: str, prefer_host: str = "127.0.0.1", protocol: str = "udp") -> RemoteParams:
    """ICE credentials, fingerprint, setup and a `protocol` ("udp", or "tcp" for a passive
    ICE-TCP candidate) candidate of an answer (`prefer_host`'s if it has one, else the first)."""
    try:
        description = SessionDescription.parse(sdp)
        media = description.media[0]
        udp = [
            c
            for m in description.media
            for c in m.ice_candidates
            if c.protocol.lower() == protocol and ":" not in c.ip
        ]
        candidate = next((c for c in udp if c.ip == prefer_host), None) or udp[0]
        dtls, ice_params = media.dtls, media.ice
        if dtls is None or ice_params is None:
            raise ValueError("no DTLS fingerprint or ICE credentials")
        if not ice_params.usernameFragment or not ice_params.password:
            raise ValueError("empty ICE credentials")
        fp = dtls.fingerprints[0]
        setup = {"client": "active", "server": "passive", "auto": "actpass"}[dtls.role]
        return RemoteParams(
            ice_params.usernameFragment,
            ice_params.password,
            (fp.algorithm, fp.value),
            setup,
            (candidate.ip, candidate.port),
        )
    except (ValueError, IndexError, StopIteration, AttributeError, KeyError, TypeError) as exc:
        raise SdpError(f"cannot use the answer: {exc}") from exc


class LoadViewer:
    """One simulated viewer with its own UDP socket, or (`transport="tcp"`) its own ICE-TCP
    connection to the server's passive candidate, as a hall whose firewall drops UDP."""

    def __init__(
        self,
        identity: DtlsIdentity | None = None,
        host: str = "127.0.0.1",
        decrypt: bool = True,
        transport: str = "udp",
    ) -> None:
        self.identity = identity or DtlsIdentity()
        self.decrypt = decrypt
        self.ufrag, self.pwd = ice.random_credentials()
        self.ssrc = secrets.randbits(32)
        self.counters = ViewerCounters()
        self.on_rtp: Callable[[bytes], None] | None = None
        self.state = "new"
        self._udp = UdpSocket(self._on_datagram, host)
        self.transport = transport
        self._tcp: TcpClient | None = None
        self._remote: RemoteParams | None = None
        self._dtls: DtlsSession | None = None
        self._srtp: SrtpContext | None = None
        self._check_txid = b""
        self._checked = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._dtls_timer: asyncio.TimerHandle | None = None
        self._last_sr: dict[int, tuple[int, float]] = {}
        self._tie_breaker = secrets.randbits(64)

    async def start(self) -> None:
        """Open the viewer's socket."""
        self._udp.open()

    def offer(self, video_codec: str = "VP8") -> str:
        """A browser-like recvonly offer: audio (Opus) + video (VP8 or H264), BUNDLE, rtcp-mux."""
        host, port = self._udp.address
        fp = " ".join(self.identity.fingerprint)
        video = {
            "VP8": ["a=rtpmap:96 VP8/90000"],
            "H264": [
                "a=rtpmap:96 H264/90000",
                "a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            ],
        }[video_codec.upper()]
        common = [
            f"a=ice-ufrag:{self.ufrag}",
            f"a=ice-pwd:{self.pwd}",
            f"a=fingerprint:{fp}",
            "a=setup:actpass",
            "a=rtcp-mux",
            "a=recvonly",
            f"a=candidate:1 1 udp 2130706431 {host} {port} typ host",
        ]
        lines = [
            "v=0",
            f"o=- {self.ssrc} 1 IN IP4 {host}",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "a=msid-semantic:WMS",
            f"m=audio {port} UDP/TLS/RTP/SAVPF 111",
            f"c=IN IP4 {host}",
            "a=mid:0",
            *common,
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            f"m=video {port} UDP/TLS/RTP/SAVPF 96 97",
            f"c=IN IP4 {host}",
            "a=mid:1",
            *common,
            *video,
            "a=rtcp-fb:96 nack",
            "a=rtcp-fb:96 nack pli",
            "a=rtcp-fb:96 ccm fir",
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
        ]
        return "\r\n".join(lines) + "\r\n"

    async def connect(self, answer: str | RemoteParams, timeout: float = 10.0) -> None:
        """ICE check + DTLS + SRTP against the server's answer; raises MediaError on timeout."""
        if isinstance(answer, RemoteParams):
            remote = answer
        else:
            remote = parse_answer(answer, protocol=self.transport)
        if self.transport == "tcp":
            self._tcp = TcpClient(self._on_datagram)
            try:
                await self._tcp.connect(remote.address)
            except OSError as exc:
                raise MediaError(f"cannot connect to ICE-TCP {remote.address}: {exc}") from exc
        self._remote = remote
        role = "server" if remote.setup == "active" else "client"
        self._dtls = DtlsSession(self.identity, role, remote.fingerprint)
        self.state = "checking"
        self._tasks.append(asyncio.ensure_future(self._run_checks()))
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            self.state = "failed"
            raise MediaError(f"load viewer did not connect within {timeout} s") from None
        self._tasks.append(asyncio.ensure_future(self._run_reports()))

    async def whep(self, session: Any, url: str, token: str, timeout: float = 10.0) -> str:
        """POST our offer to a WHEP endpoint (aiohttp `session`), connect with its answer, and
        return the resource URL (the `Location`) to DELETE when done."""
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
        async with session.post(url, data=self.offer(), headers=headers) as response:
            body = await response.text()
            if response.status != 201:
                raise MediaError(f"WHEP {url} answered {response.status}: {body[:200]}")
            location = str(response.url.join(URL(response.headers.get("Location", ""))))
        await self.connect(body, timeout=timeout)
        return location

    def request_keyframe(self, media_ssrc: int) -> None:
        """Send a PLI for `media_ssrc`."""
        self._send_rtcp(struct.pack("!BBHII", 0x81, 206, 2, self.ssrc, media_ssrc))

    def stats(self) -> dict[str, Any]:
        """Packets, bytes, losses and SRTP errors so far."""
        c = self.counters
        return {
            "state": self.state,
            "packets": c.packets,
            "bytes": c.bytes,
            "lost": sum(s.lost for s in c.streams.values()),
            "rtcp_received": c.rtcp_received,
            "srtp_errors": c.srtp_errors,
        }

    async def vanish(self) -> None:
        """Go silent without a word, as a hall whose link dropped: no more checks or reports,
        no DTLS close_notify, no DELETE; the socket is closed."""
        await self._stop_tasks()
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        self._close_link()
        self.state = "closed"

    def _send(self, data: bytes) -> None:
        assert self._remote is not None
        if self._tcp is not None:
            self._tcp.sendto(data, self._remote.address)
        else:
            self._udp.sendto(data, self._remote.address)

    def _close_link(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        self._udp.close()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()

    async def close(self) -> None:
        """Stop timers, send a DTLS close_notify, close the socket."""
        await self._stop_tasks()
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        if self._dtls is not None and self._dtls.done and self._remote is not None:
            for datagram in self._dtls.shutdown():
                self._send(datagram)
        self._close_link()
        self.state = "closed"

    # -- ICE ----------------------------------------------------------------------------------

    def _send_check(self) -> None:
        assert self._remote is not None
        self._check_txid, datagram = ice.binding_request(
            self.ufrag, self._remote.ufrag, self._remote.pwd, self._tie_breaker
        )
        self._send(datagram)

    async def _run_checks(self) -> None:
        while not self._checked.is_set():
            self._send_check()
            try:
                await asyncio.wait_for(self._checked.wait(), CHECK_INTERVAL)
            except TimeoutError:
                continue
        while True:  # consent freshness (RFC 7675)
            await asyncio.sleep(CONSENT_INTERVAL)
            self._send_check()

    def _on_stun(self, data: bytes) -> None:
        assert self._remote is not None
        try:
            request = ice.parse_binding_request(data)
            message = ice.parse(data) if request is None else None
        except ice.StunError:
            return
        if request is not None:  # a full-ICE server (aiortc) checks us too
            if request.local_ufrag == self.ufrag and ice.verify(request, self.pwd):
                self._send(ice.binding_success(request, self._remote.address, self.pwd))
            return
        assert message is not None
        if not ice.is_binding_success(message, self._check_txid, self._remote.pwd):
            return
        if not self._checked.is_set():
            self._checked.set()
            self._dtls_send(self._dtls_call(self._dtls.start))  # type: ignore[union-attr]

    # -- DTLS ---------------------------------------------------------------------------------

    def _dtls_call(self, step: Callable[..., list[bytes]], *args: bytes) -> list[bytes]:
        try:
            out = step(*args)
        except DtlsError as exc:
            logger.info("load viewer DTLS failed", extra={"error": str(exc)})
            self.state = "failed"
            return []
        dtls = self._dtls
        assert dtls is not None
        if dtls.done and self._srtp is None:
            self._srtp = SrtpContext(dtls.srtp_keys())
            self.state = "connected"
            self._connected.set()
        return out

    def _dtls_send(self, datagrams: list[bytes]) -> None:
        assert self._remote is not None and self._dtls is not None
        for datagram in datagrams:
            self._send(datagram)
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        delay = self._dtls.timeout()
        if delay is not None and self.state != "failed":
            self._dtls_timer = asyncio.get_running_loop().call_later(delay, self._on_dtls_timer)

    def _on_dtls_timer(self) -> None:
        self._dtls_timer = None
        if self._dtls is not None:
            self._dtls_send(self._dtls_call(self._dtls.on_timeout))

    # -- media --------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int], local: str | None = None) -> None:
        if self._remote is None or addr != self._remote.address:
            return
        first = data[0]
        if first < 4:
            self._on_stun(data)
        elif 20 <= first <= 63 and self._dtls is not None:
            self._dtls_send(self._dtls_call(self._dtls.feed, data))
        elif 128 <= first <= 191 and self._srtp is not None:
            if 192 <= data[1] <= 223:
                self._on_rtcp(data)
            else:
                self._on_rtp(data)

    def _on_rtp(self, data: bytes) -> None:
        if self.decrypt:
            try:
                data = self._srtp.unprotect(data)  # type: ignore[union-attr]
            except SrtpError:
                self.counters.srtp_errors += 1
                return
        counters = self.counters
        counters.packets += 1
        counters.bytes += len(data)
        seq, ssrc = struct.unpack_from("!H", data, 2)[0], struct.unpack_from("!I", data, 8)[0]
        stream = counters.streams.get(ssrc)
        if stream is None:
            counters.streams[ssrc] = StreamCounter(base_seq=seq, max_seq=seq, received=1)
        else:
            stream.update(seq)
        if self.on_rtp is not None:
            self.on_rtp(data)

    def _on_rtcp(self, data: bytes) -> None:
        try:
            plain = self._srtp.unprotect_rtcp(data)  # type: ignore[union-attr]
        except SrtpError:
            self.counters.srtp_errors += 1
            return
        self.counters.rtcp_received += 1
        pos = 0
        while pos + 8 <= len(plain):  # remember sender reports for LSR/DLSR
            length = (struct.unpack_from("!H", plain, pos + 2)[0] + 1) * 4
            if plain[pos + 1] == 200 and pos + 20 <= len(plain):
                ssrc, ntp_hi, ntp_lo = struct.unpack_from("!III", plain, pos + 4)
                self._last_sr[ssrc] = (((ntp_hi & 0xFFFF) << 16) | (ntp_lo >> 16), time.monotonic())
            pos += length

    def _send_rtcp(self, packet: bytes) -> None:
        if self._srtp is None or self._remote is None:
            return
        self._send(self._srtp.protect_rtcp(packet))

    def receiver_report(self) -> bytes:
        """An RTCP RR with one report block per received SSRC (at most 31)."""
        blocks = b""
        streams = list(self.counters.streams.items())[:31]
        for ssrc, s in streams:
            expected = s.extended_max - s.base_seq + 1
            expected_interval = expected - s.expected_prior
            lost_interval = expected_interval - (s.received - s.received_prior)
            s.expected_prior, s.received_prior = expected, s.received
            fraction = (
                (lost_interval << 8) // expected_interval
                if expected_interval > 0 and lost_interval > 0
                else 0
            )
            lsr, at = self._last_sr.get(ssrc, (0, 0.0))
            dlsr = int((time.monotonic() - at) * 65536) if lsr else 0
            blocks += struct.pack(
                "!IB3sIIII",
                ssrc,
                min(fraction, 255),
                min(s.lost, 0x7FFFFF).to_bytes(3, "big"),
                s.extended_max & 0xFFFFFFFF,
                0,
                lsr,
                dlsr,
            )
        header = struct.pack("!BBHI", 0x80 | len(streams), 201, 1 + 6 * len(streams), self.ssrc)
        return header + blocks

    async def _run_reports(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self._send_rtcp(self.receiver_report())
