"""Viewer transports on one UDP socket: ICE-lite + DTLS-SRTP endpoints (fan-out: media.fanout).

    sock = MediaSocket(host="0.0.0.0", port=8189, announce=["192.0.2.10"])
    await sock.start()
    ep = sock.endpoint(offer_ufrag, offer_pwd, ("sha-256", "AB:..."), offer_setup)
    # answer SDP: a=ice-lite, ep.local_ufrag/local_pwd, sock.fingerprint, ep.setup,
    #             one a=candidate line per sock.candidates()
    await ep.connected()
    video = sock.fanout(); video.add(ep, payload_type=96)
    video.send(rtp_packet)          # one sendmmsg per 64 viewers, SRTP per viewer
    await sock.close()

Datagrams are demultiplexed per RFC 7983: STUN goes to the endpoint named by the USERNAME
(after MESSAGE-INTEGRITY verifies), everything else to the endpoint owning the source address.
Every reply leaves from the local address the peer's datagrams reached (media.udp).
The same port number also listens on TCP (ICE-TCP, media.tcp): its frames go through the same
demultiplexer, so an endpoint may be reached over UDP, TCP or a TURN relay (`Endpoint.path`).

Consent before redirecting (RFC 7675's intent): a peer's first verified check gives its
address; media moves to another address only once that address has shown consent: it answered
our own binding request (sent with the peer's ICE password, which only the peer can answer),
or it sent SRTCP that authenticates with the session's keys. A replayed or spoofed check from
a third address gets its STUN answer and one probe, never the media.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from media import ice
from media.dtls import DtlsError, DtlsIdentity, DtlsSession
from media.errors import MediaError, SdpError
from media.fanout import BATCH, MAX_RTP, Fanout
from media.srtp import FastProtector, SrtpContext, SrtpError
from media.tcp import TcpListener, is_tcp
from media.udp import WILDCARDS, Libc, UdpError, UdpSocket, local_addresses

__all__ = ["BATCH", "MAX_RTP", "Endpoint", "Fanout", "MediaSocket"]

logger = logging.getLogger(__name__)

LIVENESS_PERIOD = 1.0
PORT_TRIES = 8
"""Ephemeral UDP ports tried until the same TCP port number is free too."""
TCP_PRIORITY = (126 << 24) + ((4 << 13) + 8191 << 8) + 255
"""RFC 6544 host candidate, `tcptype passive` (direction preference 4): below every UDP one."""
PROBES_PER_ENDPOINT = 8
"""Addresses awaiting consent kept per endpoint (the oldest is forgotten past this)."""
COUNTERS = (
    "packets_sent",
    "bytes_sent",
    "rtcp_sent",
    "packets_received",
    "rtcp_received",
    "srtp_errors",
    "send_errors",
)
"""Per-endpoint statistics (fan-out traffic is added by Fanout.settle)."""


class MediaSocket:
    """One UDP socket per process; every viewer endpoint lives on it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        announce: Sequence[str] = (),
        *,
        consent_timeout: float = 30.0,
        fast_srtp: bool = True,
        tcp: bool = True,
        udp_candidates: bool = True,
        relay_hosts: Sequence[str] = (),
    ) -> None:
        self._host = host
        self._requested_port = port
        self._announce = list(announce)
        self.consent_timeout = consent_timeout
        self.identity = DtlsIdentity()
        self.libc = Libc()
        self.protector = FastProtector()
        self.protector.available = self.protector.available and fast_srtp
        self.udp = UdpSocket(self._on_datagram, host, port)
        self.tcp = TcpListener(self._on_datagram, self._on_tcp_lost) if tcp else None
        self.udp_candidates = udp_candidates
        """False only in tests that stand for a hall whose firewall drops UDP."""
        self.relay_hosts = frozenset(relay_hosts)
        """Addresses TURN servers relay from: a peer seen there reached us through TURN."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._by_ufrag: dict[str, Endpoint] = {}
        self._by_addr: dict[tuple[str, int], Endpoint] = {}
        self._probes: dict[bytes, tuple[Endpoint, tuple[str, int]]] = {}
        """Our consent probes in flight: transaction id -> (endpoint, address probed)."""
        self._pending: dict[tuple[str, int], Endpoint] = {}
        """Addresses awaiting consent -> the endpoint whose checks they sent (SRTCP proves)."""
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        """Datagrams dropped: garbage, unknown source, failed STUN authentication."""

    async def start(self) -> None:
        """Bind the UDP socket (port 0 = ephemeral) and the TCP listener on the same address
        and port number, and start the liveness timer."""
        self.loop = asyncio.get_running_loop()
        for attempt in range(PORT_TRIES):
            self.udp.open()
            if self.tcp is None:
                break
            host, port = self.udp.address
            try:
                await self.tcp.open(host, port)
                break
            except OSError as exc:
                self.udp.close()
                if self._requested_port or attempt == PORT_TRIES - 1:
                    raise UdpError(
                        f"cannot listen on TCP {host}:{port} for ICE-TCP: {exc.strerror or exc}"
                    ) from exc
        self.udp.warn_if_buffer_capped()
        self._timer = self.loop.call_later(LIVENESS_PERIOD, self._check_liveness)

    async def close(self) -> None:
        """Close every endpoint, then the socket."""
        for endpoint in list(self._by_ufrag.values()):
            endpoint.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.tcp is not None:
            await self.tcp.close()
        self.udp.close()

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return self.udp.address[1]

    def candidates(self) -> list[str]:
        """Values for "a=candidate:" lines: per announced address (bound to a wildcard and
        announcing nothing: every local address, loopback last) a UDP host candidate and, with
        ICE-TCP, a passive TCP one (RFC 6544: the port listened on; browsers connect to it)."""
        hosts = self._announce or [self._host]
        if not self._announce and self._host in WILDCARDS:
            ipv6 = self.udp.family == socket.AF_INET6
            hosts = [*local_addresses(ipv6), "127.0.0.1", *(["::1"] if ipv6 else [])]
        port = self.port
        lines = []
        if self.udp_candidates:
            lines += [
                f"{i + 1} 1 udp {2130706431 - i} {host} {port} typ host"
                for i, host in enumerate(hosts)
            ]
        if self.tcp is not None:
            lines += [
                f"{i + 101} 1 tcp {TCP_PRIORITY - (i << 8)} {host} {port} typ host tcptype passive"
                for i, host in enumerate(hosts)
            ]
        return lines

    @property
    def fingerprint(self) -> tuple[str, str]:
        """("sha-256", "AB:CD:...") of the process's shared DTLS certificate."""
        return self.identity.fingerprint

    def endpoint(
        self,
        remote_ufrag: str,
        remote_pwd: str,
        remote_fingerprint: tuple[str, str],
        remote_setup: str,
    ) -> Endpoint:
        """A new endpoint for one peer; `remote_setup` is the offer's a=setup value."""
        if self.loop is None:
            raise MediaError("MediaSocket.start() must be awaited before creating endpoints")
        endpoint = Endpoint(self, remote_ufrag, remote_pwd, remote_fingerprint, remote_setup)
        self._by_ufrag[endpoint.local_ufrag] = endpoint
        return endpoint

    def fanout(self) -> Fanout:
        """A new, empty fan-out group on this socket."""
        return Fanout(self)

    def send(self, data: bytes, addr: tuple[str, int], local: str | None = None) -> bool:
        """Send one datagram from the shared socket (from local address `local` if given), or
        one frame to a TCP peer."""
        if addr[0][0] == "t" and self.tcp is not None:  # "tcp:...": no IP address starts so
            return self.tcp.send(data, addr)
        return self.udp.sendto(data, addr, local)

    def path_of(self, addr: tuple[str, int] | None) -> str | None:
        """How a peer at `addr` reaches us: "udp", "tcp" (ICE-TCP) or "turn" (a relay)."""
        if addr is None:
            return None
        if is_tcp(addr):
            return "tcp"
        return "turn" if addr[0] in self.relay_hosts else "udp"

    def claim(self, endpoint: Endpoint, addr: tuple[str, int]) -> None:
        """Route datagrams from `addr` to `endpoint` (its first check, or consent given)."""
        previous = self._by_addr.get(addr)
        if previous is not None and previous is not endpoint:
            previous.addresses.discard(addr)
        self._by_addr[addr] = endpoint
        endpoint.addresses.add(addr)
        if self._pending.get(addr) is endpoint:
            del self._pending[addr]

    def probe(self, endpoint: Endpoint, addr: tuple[str, int], local: str | None) -> None:
        """Ask `addr` for consent: a binding request only the endpoint's peer can answer."""
        stale = [t for t, (e, a) in self._probes.items() if e is endpoint and a == addr]
        mine = [t for t, (e, _) in self._probes.items() if e is endpoint]
        for txid in stale or mine[: max(0, len(mine) - PROBES_PER_ENDPOINT + 1)]:
            del self._probes[txid]
        txid, request = ice.consent_request(
            endpoint.local_ufrag, endpoint.remote_ufrag, endpoint.remote_pwd
        )
        self._probes[txid] = (endpoint, addr)
        if self._by_addr.get(addr) is None:
            self._pending[addr] = endpoint
        self.send(request, addr, local)

    def forget(self, endpoint: Endpoint) -> None:
        """Drop every route to `endpoint`."""
        if self._by_ufrag.get(endpoint.local_ufrag) is endpoint:
            del self._by_ufrag[endpoint.local_ufrag]
        for addr in endpoint.addresses:
            if self._by_addr.get(addr) is endpoint:
                del self._by_addr[addr]
                if self.tcp is not None and is_tcp(addr):
                    self.tcp.drop(addr)
        endpoint.addresses.clear()
        for txid in [t for t, (e, _) in self._probes.items() if e is endpoint]:
            del self._probes[txid]
        for addr in [a for a, e in self._pending.items() if e is endpoint]:
            del self._pending[addr]

    def _on_tcp_lost(self, addr: tuple[str, int]) -> None:
        endpoint = self._by_addr.pop(addr, None)
        if endpoint is not None:
            endpoint.addresses.discard(addr)
        self._pending.pop(addr, None)

    def _on_datagram(self, data: bytes, addr: tuple[str, int], local: str | None = None) -> None:
        if data[0] < 4:
            self._on_stun(data, addr, local)
            return
        endpoint = self._by_addr.get(addr)
        if endpoint is None:
            pending = self._pending.get(addr)
            if pending is not None:  # only SRTCP that authenticates gives consent
                pending.on_unproven(data, addr, local)
                return
            self.dropped += 1
            return
        endpoint.on_datagram(data, addr)

    def _on_stun(self, data: bytes, addr: tuple[str, int], local: str | None) -> None:
        if data[:2] == b"\x01\x01":  # a binding success: the answer to a consent probe
            self._on_probe_answer(data, addr, local)
            return
        try:
            request = ice.parse_binding_request(data)
        except ice.StunError:
            request = None
        endpoint = self._by_ufrag.get(request.local_ufrag) if request else None
        if (
            request is None
            or endpoint is None
            or request.remote_ufrag != endpoint.remote_ufrag
            or not ice.verify(request, endpoint.local_pwd)
        ):
            self.dropped += 1
            return
        mapped = (addr[0][4:], addr[1]) if is_tcp(addr) else addr  # the peer's real address
        self.send(ice.binding_success(request, mapped, endpoint.local_pwd), addr, local)
        endpoint.on_binding(addr, request.use_candidate, local)

    def _on_probe_answer(self, data: bytes, addr: tuple[str, int], local: str | None) -> None:
        probe = self._probes.get(data[8:20])
        if probe is None or probe[1] != addr:  # an answer must come from where we asked
            self.dropped += 1
            return
        endpoint = probe[0]
        try:
            message = ice.parse(data)
        except ice.StunError:
            message = None
        if message is None or not ice.is_binding_success(
            message, message.transaction_id, endpoint.remote_pwd
        ):
            self.dropped += 1
            return
        del self._probes[message.transaction_id]
        endpoint.on_consent(addr, local)

    def _check_liveness(self) -> None:
        now = time.monotonic()
        for endpoint in list(self._by_ufrag.values()):
            if now - endpoint.last_seen > self.consent_timeout:
                endpoint.fail("no consent check or RTCP")
            elif endpoint.state != "connected" and now - endpoint.created > self.consent_timeout:
                endpoint.fail("ICE or DTLS did not complete")  # checks alone keep last_seen fresh
        if self.tcp is not None:
            self.tcp.sweep(lambda a: a in self._by_addr or a in self._pending)
        assert self.loop is not None
        self._timer = self.loop.call_later(LIVENESS_PERIOD, self._check_liveness)


class Endpoint:
    """One peer's ICE-lite + DTLS-SRTP transport on the shared MediaSocket."""

    def __init__(
        self,
        sock: MediaSocket,
        remote_ufrag: str,
        remote_pwd: str,
        remote_fingerprint: tuple[str, str],
        remote_setup: str,
    ) -> None:
        if remote_setup not in ("actpass", "active", "passive"):
            raise SdpError(f"unsupported a=setup value {remote_setup!r}")  # the offer's fault
        self._sock = sock
        self.remote_ufrag = remote_ufrag
        self.remote_pwd = remote_pwd
        self.local_ufrag, self.local_pwd = ice.random_credentials()
        self.setup = "active" if remote_setup == "passive" else "passive"
        role = "client" if self.setup == "active" else "server"
        try:
            self._dtls = DtlsSession(sock.identity, role, remote_fingerprint)
        except DtlsError as exc:  # e.g. an a=fingerprint algorithm we do not know: the offer's
            raise SdpError(str(exc)) from exc
        self.state = "new"
        self.remote_address: tuple[str, int] | None = None
        self.local_address: str | None = None
        """The local address `remote_address`'s datagrams reach: replies leave from it."""
        self.addresses: set[tuple[str, int]] = set()
        """Every source address that has consented to this endpoint's traffic."""
        self.nominated: set[tuple[str, int]] = set()
        """Addresses the peer nominated (USE-CANDIDATE) that still await consent."""
        self.sockaddr: tuple[Any, int, Any, int] | None = None
        self.srtp: SrtpContext | None = None
        self.on_rtcp: Callable[[bytes], None] | None = None
        self.on_rtp: Callable[[bytes], None] | None = None
        self.on_state_change: Callable[[str], None] | None = None
        self.created = self.last_seen = time.monotonic()
        self.fanouts: set[Fanout] = set()
        self._ready: asyncio.Future[None] = sock.loop.create_future()  # type: ignore[union-attr]
        self._dtls_timer: asyncio.TimerHandle | None = None
        self._counters = dict.fromkeys(COUNTERS, 0)

    # -- public API -------------------------------------------------------------------------

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait for ICE + DTLS; raises MediaError on failure, close or timeout."""
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            raise MediaError(f"endpoint did not connect within {timeout} s") from None

    def send_rtp(self, packet: bytes | bytearray) -> None:
        """SRTP-protect and send one RTP packet (retransmissions, single sends)."""
        if self.state != "connected" or self.srtp is None or self.remote_address is None:
            return
        try:
            data = self.srtp.protect(bytes(packet))
        except SrtpError:
            self._counters["srtp_errors"] += 1
            return
        self._transmit(data, "packets_sent")

    def send_rtcp(self, packet: bytes) -> None:
        """SRTCP-protect and send one compound RTCP packet."""
        if self.state != "connected" or self.srtp is None or self.remote_address is None:
            return
        try:
            data = self.srtp.protect_rtcp(bytes(packet))
        except SrtpError:
            self._counters["srtp_errors"] += 1
            return
        self._transmit(data, "rtcp_sent")

    def stats(self) -> dict[str, Any]:
        """Counters and state: packets/bytes sent (fan-out included), errors, address."""
        for fanout in self.fanouts:
            fanout.settle(self)
        return {
            **self._counters,
            "state": self.state,
            "remote_address": self.remote_address,
            "path": self.path,
            "dtls_role": self._dtls.role,
            "srtp_profile": self.srtp.profile_name.decode() if self.srtp else None,
        }

    @property
    def path(self) -> str | None:
        """How the peer reaches us now: "udp", "tcp" or "turn" (None before its first check)."""
        return self._sock.path_of(self.remote_address)

    def close(self) -> None:
        """Close the transport (sends a DTLS close_notify); idempotent."""
        if self.state in ("closed", "failed"):
            self._set_state("closed")
            return
        if self.remote_address is not None and self._dtls.done:
            for datagram in self._dtls.shutdown():
                self._sock.send(datagram, self.remote_address, self.local_address)
        self._teardown()
        self._set_state("closed")

    # -- driven by MediaSocket --------------------------------------------------------------

    def count_rtcp(self) -> None:
        """One RTCP packet went out through a Fanout."""
        self._counters["rtcp_sent"] += 1

    def count(self, packets: int, octets: int) -> None:
        """Add fan-out traffic to the counters (called by Fanout.settle)."""
        self._counters["packets_sent"] += packets
        self._counters["bytes_sent"] += octets

    def on_binding(
        self, addr: tuple[str, int], use_candidate: bool, local: str | None = None
    ) -> None:
        """A verified binding request (a check or a consent refresh) came from `addr`, reaching
        local address `local`. A new address gets media only after consent (`on_consent`)."""
        if self.state in ("closed", "failed"):
            return
        if self.remote_address is None:  # the first check: DTLS proves this peer next
            self._sock.claim(self, addr)
            self._move(addr, local)
        elif addr == self.remote_address:
            self.last_seen = time.monotonic()  # consent freshness is the media path's
            if local is not None and local != self.local_address:
                self._move(addr, local)
        elif addr in self.addresses:
            if use_candidate:
                self._move(addr, local)
        else:
            if use_candidate:
                self.nominated.add(addr)
            self._sock.probe(self, addr, local)
        if self.state == "new":
            self._set_state("checking")
            if self._dtls.role == "client":
                self._dtls_flush(self._dtls_step(self._dtls.start))

    def on_consent(self, addr: tuple[str, int], local: str | None) -> None:
        """`addr` proved it is this peer (answered our probe, or sent valid SRTCP)."""
        if self.state in ("closed", "failed"):
            return
        self._sock.claim(self, addr)
        self.last_seen = time.monotonic()
        if addr in self.nominated:
            self.nominated.discard(addr)
            self._move(addr, local)

    def on_unproven(self, data: bytes, addr: tuple[str, int], local: str | None) -> None:
        """A non-STUN datagram from an address awaiting consent: SRTCP that authenticates
        counts as consent; anything else is dropped."""
        srtp = self.srtp
        if srtp is None or len(data) < 2 or not 192 <= data[1] <= 223 or not 128 <= data[0] <= 191:
            return
        try:
            plain = srtp.unprotect_rtcp(data)
        except SrtpError:
            self._counters["srtp_errors"] += 1
            return
        self.nominated.add(addr)  # the peer sends from here: it has moved (NAT rebinding)
        self.on_consent(addr, local)
        self._counters["rtcp_received"] += 1
        self._callback(self.on_rtcp, plain)

    def _move(self, addr: tuple[str, int], local: str | None) -> None:
        self.remote_address = addr
        self.local_address = local
        self.sockaddr = None
        self.last_seen = time.monotonic()
        self._notify_fanouts()

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """A non-STUN datagram from one of this endpoint's verified addresses."""
        first = data[0]
        if 20 <= first <= 63:
            self._on_dtls(data)
        elif 128 <= first <= 191 and self.srtp is not None:
            self._on_srtp(data)

    def fail(self, reason: str) -> None:
        """Give up on this endpoint: state "failed" and every route dropped."""
        if self.state in ("closed", "failed"):
            return
        logger.info("endpoint failed", extra={"ufrag": self.local_ufrag, "reason": reason})
        self._teardown()
        self._set_state("failed")

    # -- internals --------------------------------------------------------------------------

    def _on_dtls(self, data: bytes) -> None:
        self._dtls_flush(self._dtls_step(self._dtls.feed, data))
        if self._dtls.closed and self.state == "connected":
            self.fail("DTLS closed by peer")
        elif self._dtls.done and self.state == "checking":
            self._on_handshake_done()

    def _dtls_step(self, step: Callable[..., list[bytes]], *args: bytes) -> list[bytes]:
        try:
            return step(*args)
        except DtlsError as exc:
            self.fail(str(exc))
            return []

    def _dtls_flush(self, datagrams: list[bytes]) -> None:
        if self.remote_address is not None:
            for datagram in datagrams:
                self._sock.send(datagram, self.remote_address, self.local_address)
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        if self.state not in ("closed", "failed"):
            delay = self._dtls.timeout()
            if delay is not None:
                loop = self._sock.loop
                self._dtls_timer = loop.call_later(delay, self._on_dtls_timer)  # type: ignore

    def _on_dtls_timer(self) -> None:
        self._dtls_timer = None
        if self.state in ("new", "checking", "connected"):
            self._dtls_flush(self._dtls_step(self._dtls.on_timeout))

    def _on_handshake_done(self) -> None:
        try:
            self.srtp = SrtpContext(self._dtls.srtp_keys())
        except (DtlsError, SrtpError, KeyError) as exc:
            self.fail(f"SRTP setup failed: {exc}")
            return
        self._set_state("connected")

    def _on_srtp(self, data: bytes) -> None:
        srtp = self.srtp
        assert srtp is not None
        is_rtcp = len(data) > 1 and 192 <= data[1] <= 223
        try:
            plain = srtp.unprotect_rtcp(data) if is_rtcp else srtp.unprotect(data)
        except SrtpError:
            self._counters["srtp_errors"] += 1
            return
        if is_rtcp:
            self.last_seen = time.monotonic()
            self._counters["rtcp_received"] += 1
            self._callback(self.on_rtcp, plain)
        else:
            self._counters["packets_received"] += 1
            self._callback(self.on_rtp, plain)

    def _callback(self, callback: Callable[[Any], None] | None, arg: Any) -> None:
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            logger.exception("endpoint callback failed", extra={"ufrag": self.local_ufrag})

    def _transmit(self, data: bytes, counter: str) -> None:
        assert self.remote_address is not None
        if self._sock.send(data, self.remote_address, self.local_address):
            self._counters[counter] += 1
            self._counters["bytes_sent"] += len(data)
        else:
            self._counters["send_errors"] += 1

    def _teardown(self) -> None:
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        self._sock.forget(self)

    def _notify_fanouts(self) -> None:
        for fanout in list(self.fanouts):
            fanout.refresh(self)

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        self._notify_fanouts()
        if not self._ready.done():
            if state == "connected":
                self._ready.set_result(None)
            elif state in ("closed", "failed"):
                self._ready.set_exception(MediaError(f"endpoint {state} before connecting"))
                self._ready.exception()  # mark retrieved: nobody may be waiting
        self._callback(self.on_state_change, state)
