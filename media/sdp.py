"""Viewer (WHEP) offers in, ICE-lite answers out.

The viewer's offer is parsed with aiortc.sdp; the answer is written here: a=ice-lite, the
process socket's candidates, our DTLS fingerprint/setup, and per audio/video m-line exactly
the lecture's codec under the payload type *the viewer offered* for it (plus its RTX PT), our
stable SSRCs and feedback (nack, nack pli, ccm fir). No header extensions are negotiated: the
forwarder strips them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiortc import sdp as aiosdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .errors import CodecMismatchError, SdpError

CONSTRAINED_BASELINE_FAMILY = {"42e0", "4200", "42c0", "4240", "42a0", "42f0"}


@dataclass(frozen=True)
class CodecSpec:
    """The codec a lecture track is fixed to."""

    name: str  # "VP8", "H264", "opus"
    clock_rate: int
    channels: int | None = None
    fmtp: str = ""

    @property
    def kind(self) -> str:
        """'audio' or 'video'."""
        return "audio" if self.name.lower() in ("opus", "pcmu", "pcma") else "video"

    def describe(self) -> str:
        """Human form for error messages, e.g. 'H264 (profile-level-id=42e01f...)'."""
        return f"{self.name} ({self.fmtp})" if self.fmtp else self.name


OPUS = CodecSpec("opus", 48000, 2, "minptime=10;useinbandfec=1")
VP8 = CodecSpec("VP8", 90000)
H264 = CodecSpec(
    "H264", 90000, None, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
)


def video_codec(name: str) -> CodecSpec:
    """The CodecSpec for a lecture's `video_codec` setting ("VP8" or "H264")."""
    specs = {"VP8": VP8, "H264": H264}
    try:
        return specs[name.upper()]
    except KeyError:
        raise CodecMismatchError(f"video codec {name!r} is not supported (VP8 or H264)") from None


@dataclass(frozen=True)
class LocalTransport:
    """Our side of the single ICE-lite/DTLS transport, for the answer."""

    ufrag: str
    pwd: str
    fingerprint: tuple[str, str]
    setup: str
    candidates: list[str]


@dataclass(frozen=True)
class RemoteTransport:
    """The viewer's ICE credentials and DTLS fingerprint/setup from its offer."""

    ufrag: str
    pwd: str
    fingerprint: tuple[str, str]
    setup: str


@dataclass
class MediaLine:
    """One negotiated m-line of a viewer: which track, the viewer's PTs."""

    kind: str
    mid: str
    payload_type: int
    rtx_payload_type: int | None = None


@dataclass
class ViewerOffer:
    """A parsed, validated viewer offer."""

    description: aiosdp.SessionDescription
    remote: RemoteTransport
    lines: list[MediaLine | None] = field(default_factory=list)  # None: m-line rejected


def _codec_matches(spec: CodecSpec, codec: RTCRtpCodecParameters) -> bool:
    if codec.mimeType.split("/")[-1].lower() != spec.name.lower():
        return False
    if codec.clockRate != spec.clock_rate:
        return False
    if spec.name.upper() != "H264":
        return True
    params = codec.parameters
    if str(params.get("packetization-mode", "0")) != "1":
        return False
    profile = str(params.get("profile-level-id", "42e01f")).lower()
    return profile[:4] in CONSTRAINED_BASELINE_FAMILY


def _pick_codec(
    spec: CodecSpec, codecs: list[RTCRtpCodecParameters]
) -> RTCRtpCodecParameters | None:
    matches = [c for c in codecs if _codec_matches(spec, c)]
    if spec.name.upper() == "H264":
        wanted = spec.fmtp.split("profile-level-id=")[-1][:4]
        matches.sort(
            key=lambda c: str(c.parameters.get("profile-level-id", "")).lower()[:4] != wanted
        )
    return matches[0] if matches else None


def _rtx_for(codec: RTCRtpCodecParameters, codecs: list[RTCRtpCodecParameters]) -> int | None:
    for c in codecs:
        if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == codec.payloadType:
            return c.payloadType
    return None


def _offered(codecs: list[RTCRtpCodecParameters]) -> str:
    names = []
    for c in codecs:
        name = c.mimeType.split("/")[-1]
        if name.lower() in ("rtx", "red", "ulpfec", "flexfec-03"):
            continue
        profile = c.parameters.get("profile-level-id")
        label = f"{name}/{profile}" if profile else name
        if label not in names:
            names.append(label)
    return ", ".join(names) or "nothing"


_IGNORED = frozenset(("a=cand", "a=extm", "a=ssrc"))


class _Section:
    """One m-section being pruned: its lines, and its codec lines by payload type."""

    def __init__(self, first: str, spec: CodecSpec | None) -> None:
        self.lines = [first]
        self.wanted = spec.name.lower() if spec is not None else None
        self.codec_lines: list[tuple[str, str]] = []
        self.names: dict[str, str] = {}
        self.fmtp: dict[str, dict[str, str]] = {}

    def add(self, line: str) -> None:
        head = line[:6]
        if head in _IGNORED or line.startswith(("a=msid:", "a=rtcp-fb:")):
            return  # (the answer's feedback is fixed: nack, nack pli, ccm fir)
        if self.wanted is None or head not in ("a=rtpm", "a=fmtp"):
            self.lines.append(line)
            return
        pt, _, rest = line.partition(":")[2].partition(" ")
        self.codec_lines.append((pt, line))
        if head == "a=rtpm":
            self.names[pt] = rest.split("/", 1)[0].strip().lower()
        else:
            params = (p.strip().partition("=") for p in rest.split(";"))
            self.fmtp[pt] = {key: value.strip() for key, _, value in params}

    def _usable(self, pt: str) -> bool:
        if self.wanted != "h264":
            return True
        params = self.fmtp.get(pt, {})  # the rules of _codec_matches, on the raw text
        profile = params.get("profile-level-id", "42e01f").lower()
        return (
            params.get("packetization-mode") == "1" and profile[:4] in CONSTRAINED_BASELINE_FAMILY
        )

    def done(self) -> list[str]:
        """Its lines with only the wanted codec's and its RTX's codec lines (in order)."""
        if self.wanted is None:
            return self.lines
        names = self.names
        main = {pt for pt, name in names.items() if name == self.wanted and self._usable(pt)}
        rtx = {
            pt
            for pt, name in names.items()
            if name == "rtx" and self.fmtp.get(pt, {}).get("apt") in main
        }
        keep = main | rtx
        return self.lines + [line for pt, line in self.codec_lines if pt in keep]


def _prune(text: str, tracks: dict[str, CodecSpec]) -> str:
    """The offer without what the answer never depends on, for a cheaper parse.

    Dropped from m-sections: candidates (ICE-lite learns addresses from the checks), header
    extensions (the forwarder strips them), SSRC/msid lines, RTCP feedback lines (the answer's
    are fixed), and every codec but the lecture's usable ones (with their RTX). aiortc's parser is quadratic in codec lines: a Chrome offer (160 lines,
    35 payload types) took ~520 us to parse whole, more than the server's side of a DTLS
    handshake (~360 us); pruned, ~170 us (tests/chromeoffer.py, scripts/bench_join.py).
    """
    lines = text.splitlines()
    out: list[str] = []
    section: _Section | None = None
    for line in lines:
        if line.startswith("m="):
            if section is not None:
                out += section.done()
            section = _Section(line, tracks.get(line[2:].split(" ", 1)[0]))
        elif section is None:
            out.append(line)
        else:
            section.add(line)
    if section is not None:
        out += section.done()
    return "\r\n".join(out) + "\r\n"


def parse_sdp(text: str) -> aiosdp.SessionDescription:
    """Parse an offer with aiortc.sdp; a failure names the first line it cannot read.

    aiortc's parser raises whatever its code trips on (KeyError, ValueError, even an
    AssertionError); none of that text reaches a client, only the offending line."""
    try:
        return aiosdp.SessionDescription.parse(text)
    except Exception as exc:
        shown = _printable(_first_bad_line(text))
        raise SdpError(f'offer SDP cannot be parsed: line "{shown}" is malformed') from exc


def _first_bad_line(text: str) -> str:
    # Every prefix of a readable offer is readable, so bisect for the shortest unreadable
    # prefix: about 12 parses for the largest offer the edge accepts (64 KiB).
    lines = text.splitlines()
    good, bad = 0, len(lines)
    while bad - good > 1:
        middle = (good + bad) // 2
        try:
            aiosdp.SessionDescription.parse("\r\n".join(lines[:middle]))
            good = middle
        except Exception:
            bad = middle
    return lines[bad - 1] if lines else ""


def _printable(line: str, limit: int = 60) -> str:
    shown = "".join(c if " " <= c <= "~" and c != '"' else "?" for c in line[:limit])
    return shown + ("..." if len(line) > limit else "")


def _remote_transport(media: list[aiosdp.MediaDescription]) -> RemoteTransport:
    first = media[0]
    if first.ice is None or not first.ice.usernameFragment or not first.ice.password:
        raise SdpError("offer has no a=ice-ufrag / a=ice-pwd")
    if first.dtls is None or not first.dtls.fingerprints:
        raise SdpError("offer has no a=fingerprint (DTLS-SRTP is required)")
    fp = first.dtls.fingerprints[0]
    role = first.dtls.role
    setup = {"auto": "actpass", "client": "active", "server": "passive"}.get(role, "actpass")
    return RemoteTransport(
        first.ice.usernameFragment, first.ice.password, (fp.algorithm, fp.value), setup
    )


def parse_viewer_offer(text: str, tracks: dict[str, CodecSpec]) -> ViewerOffer:
    """Validate a viewer's offer and pick, per m-line, the lecture's codec and the viewer's PTs.

    Raises SdpError for malformed or non-WebRTC offers and CodecMismatchError when a wanted
    track's m-line does not offer the lecture's codec.
    """
    if not isinstance(text, str) or not text.lstrip().startswith("v=0"):
        raise SdpError("offer is not SDP (it must start with v=0)")
    try:
        return _negotiate(parse_sdp(_prune(text, tracks)), tracks)
    except CodecMismatchError:
        return _negotiate(parse_sdp(text), tracks)  # the same error, naming every codec offered


def _negotiate(description: aiosdp.SessionDescription, tracks: dict[str, CodecSpec]) -> ViewerOffer:
    if not description.media:
        raise SdpError("offer has no media line")
    offer = ViewerOffer(description, _remote_transport(description.media))
    taken: set[str] = set()
    for media in description.media:
        offer.lines.append(_negotiate_line(media, tracks, taken))
    if not any(offer.lines):
        raise SdpError("offer has no audio or video m-line this lecture can send")
    _check_bundle(description, offer)
    return offer


def _negotiate_line(
    media: aiosdp.MediaDescription, tracks: dict[str, CodecSpec], taken: set[str]
) -> MediaLine | None:
    spec = tracks.get(media.kind)
    if spec is None or media.kind in taken or media.port == 0:
        return None
    if media.direction not in (None, "recvonly", "sendrecv"):
        return None
    if not media.rtcp_mux:
        raise SdpError(f"{media.kind} m-line lacks a=rtcp-mux (required)")
    codec = _pick_codec(spec, media.rtp.codecs)
    if codec is None:
        raise CodecMismatchError(
            f"this class sends {media.kind} as {spec.describe()}, "
            f"but the viewer offered only {_offered(media.rtp.codecs)}"
        )
    taken.add(media.kind)
    mid = media.rtp.muxId or str(len(taken) - 1)
    pt = codec.payloadType
    if pt is None:
        raise SdpError(f"{media.kind} codec {codec.mimeType} has no payload type")
    return MediaLine(media.kind, mid, pt, _rtx_for(codec, media.rtp.codecs))


def _check_bundle(description: aiosdp.SessionDescription, offer: ViewerOffer) -> None:
    mids = [line.mid for line in offer.lines if line is not None]
    if len(mids) < 2:
        return
    bundled = {str(m) for g in description.group if g.semantic == "BUNDLE" for m in g.items}
    if not set(mids) <= bundled:
        raise SdpError("offer must BUNDLE its audio and video m-lines (a=group:BUNDLE)")


def _codec_lines(spec: CodecSpec, line: MediaLine) -> list[str]:
    pt = line.payload_type
    rtpmap = f"{spec.name}/{spec.clock_rate}" + (f"/{spec.channels}" if spec.channels else "")
    out = [f"a=rtpmap:{pt} {rtpmap}"]
    if spec.kind == "video":
        out += [f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli", f"a=rtcp-fb:{pt} ccm fir"]
    if spec.fmtp:
        out.append(f"a=fmtp:{pt} {spec.fmtp}")
    if line.rtx_payload_type is not None:
        out += [
            f"a=rtpmap:{line.rtx_payload_type} rtx/{spec.clock_rate}",
            f"a=fmtp:{line.rtx_payload_type} apt={pt}",
        ]
    return out


def _ssrc_lines(kind: str, ssrc: int, rtx_ssrc: int | None, cname: str) -> list[str]:
    out = []
    if rtx_ssrc is not None:
        out.append(f"a=ssrc-group:FID {ssrc} {rtx_ssrc}")
    for s in (ssrc, rtx_ssrc):
        if s is not None:
            out += [f"a=ssrc:{s} cname:{cname}", f"a=ssrc:{s} msid:lopso lopso-{kind}"]
    return out


def _media_section(
    media: aiosdp.MediaDescription,
    line: MediaLine | None,
    spec: CodecSpec | None,
    local: LocalTransport,
    ssrcs: Mapping[str, tuple[int, int | None]],
) -> list[str]:
    if line is None or spec is None:
        mid = media.rtp.muxId
        out = [
            f"m={media.kind} 0 {media.profile} {' '.join(map(str, media.fmt))}",
            "c=IN IP4 0.0.0.0",
        ]
        return out + ([f"a=mid:{mid}"] if mid else []) + ["a=inactive"]
    fmts = [line.payload_type] + (
        [line.rtx_payload_type] if line.rtx_payload_type is not None else []
    )
    ssrc, rtx_ssrc = ssrcs[line.kind]
    if line.rtx_payload_type is None:
        rtx_ssrc = None
    out = [
        f"m={line.kind} 9 UDP/TLS/RTP/SAVPF {' '.join(map(str, fmts))}",
        "c=IN IP4 0.0.0.0",
        f"a=mid:{line.mid}",
        f"a=ice-ufrag:{local.ufrag}",
        f"a=ice-pwd:{local.pwd}",
        f"a=fingerprint:{local.fingerprint[0]} {local.fingerprint[1]}",
        f"a=setup:{local.setup}",
    ]
    out += [f"a=candidate:{c}" for c in local.candidates] + ["a=end-of-candidates"]
    out += ["a=rtcp-mux", "a=sendonly", f"a=msid:lopso lopso-{line.kind}"]
    return out + _codec_lines(spec, line) + _ssrc_lines(line.kind, ssrc, rtx_ssrc, "lopso")


def build_answer(
    offer: ViewerOffer,
    tracks: dict[str, CodecSpec],
    local: LocalTransport,
    ssrcs: Mapping[str, tuple[int, int | None]],
) -> str:
    """The SDP answer for a parsed viewer offer (m-lines in the offer's order)."""
    mids = [line.mid for line in offer.lines if line is not None]
    lines = [
        "v=0",
        f"o=- {secrets.randbelow(1 << 62)} 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=ice-lite",
        "a=msid-semantic:WMS lopso",
    ]
    for media, line in zip(offer.description.media, offer.lines):
        lines += _media_section(media, line, tracks.get(media.kind), local, ssrcs)
    return "\r\n".join(lines) + "\r\n"
