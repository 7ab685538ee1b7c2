"""Test media made at test time: numbered video frames and tone audio, plus the reader.

A frame's number is written as 16 black/white blocks (a 4x4 grid, most significant bit first)
so a viewer can read back exactly which published frame it decoded, and tell a corrupt frame
(a block neither clearly black nor clearly white) from a clean one. No binary is committed:
clips for FFmpeg are generated into a temporary directory.
"""

from __future__ import annotations

import fractions
import math
import pathlib

import av
import numpy as np
from aiortc import AudioStreamTrack, VideoStreamTrack
from av import AudioFrame, VideoFrame

WIDTH, HEIGHT = 320, 240
GRID = 4
BITS = GRID * GRID
BLOCK_W, BLOCK_H = WIDTH // GRID, HEIGHT // GRID
MARGIN = 12  # pixels ignored at block edges, where codec ringing lives


def number_image(number: int, tint: int = 0) -> np.ndarray:
    """An RGB image encoding `number` (mod 2**16); `tint` colours the white blocks per source."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for bit in range(BITS):
        if (number >> (BITS - 1 - bit)) & 1:
            row, col = divmod(bit, GRID)
            y, x = row * BLOCK_H, col * BLOCK_W
            image[y : y + BLOCK_H, x : x + BLOCK_W] = (255, 255 - tint, 255)
    return image


def read_number(frame: VideoFrame, crop: bool = False) -> int | None:
    """The number a decoded frame shows, or None when any block is unreadable (corrupt).

    `crop`: the number sits in the frame's top-left WIDTHxHEIGHT (a larger, noisy clip)."""
    if crop:
        gray = frame.to_ndarray(format="gray")[:HEIGHT, :WIDTH]
    else:
        gray = frame.reformat(width=WIDTH, height=HEIGHT, format="gray").to_ndarray()
    number = 0
    for bit in range(BITS):
        row, col = divmod(bit, GRID)
        y, x = row * BLOCK_H, col * BLOCK_W
        mean = float(
            gray[y + MARGIN : y + BLOCK_H - MARGIN, x + MARGIN : x + BLOCK_W - MARGIN].mean()
        )
        if 60 < mean < 190:
            return None
        number = (number << 1) | (1 if mean >= 190 else 0)
    return number


class NumberedVideoTrack(VideoStreamTrack):
    """Video frames 0, 1, 2, ... each showing its number; `offset` distinguishes sources."""

    def __init__(self, offset: int = 0, tint: int = 0) -> None:
        super().__init__()
        self.offset = offset
        self.tint = tint
        self.count = 0

    async def recv(self) -> VideoFrame:
        """The next numbered frame at 30 fps."""
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(
            number_image(self.offset + self.count, self.tint), format="rgb24"
        )
        frame.pts = pts
        frame.time_base = time_base
        self.count += 1
        return frame


class ToneAudioTrack(AudioStreamTrack):
    """A 440 Hz tone (silence would let Opus send near-empty packets)."""

    def __init__(self) -> None:
        super().__init__()
        self.sample = 0

    async def recv(self) -> AudioFrame:
        """The next 20 ms of tone."""
        frame = await super().recv()
        samples = frame.samples
        t = (np.arange(samples) + self.sample) / frame.sample_rate
        tone = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)
        self.sample += samples
        data = np.repeat(tone[None, :], len(frame.layout.channels), axis=0).T.reshape(1, -1)
        out = AudioFrame.from_ndarray(data, format="s16", layout=frame.layout.name)
        out.sample_rate = frame.sample_rate
        out.pts = frame.pts
        out.time_base = fractions.Fraction(1, frame.sample_rate)
        return out


def write_h264_clip(directory: pathlib.Path, seconds: float = 4.0, fps: int = 30) -> pathlib.Path:
    """An MP4 of numbered frames (H264 constrained baseline, keyframe every second) + a tone."""
    path = directory / "numbered.mp4"
    if path.exists():
        return path
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"profile": "baseline", "g": str(fps), "bf": "0", "tune": "zerolatency"}
        for n in range(int(seconds * fps)):
            frame = VideoFrame.from_ndarray(number_image(n), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


def ecdsa_identity(
    directory: pathlib.Path, common_name: str = "lopso-test"
) -> tuple[pathlib.Path, pathlib.Path]:
    """A P-256 ECDSA key and self-signed certificate (PEM files): an FFmpeg publisher's DTLS
    identity, or a test HTTPS server's certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "whip.crt", directory / "whip.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def write_noisy_h264_clip(
    directory: pathlib.Path,
    kbps: int,
    seconds: float = 4.0,
    fps: int = 30,
    width: int = 640,
    height: int = 480,
) -> pathlib.Path:
    """An MP4 at about `kbps` (H264 constrained baseline, keyframe every second, no audio):
    numbered frames in the top-left WIDTHxHEIGHT (read back with `read_number(frame, crop=True)`)
    and random noise elsewhere, so the encoder spends the bitrate (a real packet rate)."""
    path = directory / f"noisy-{kbps}k-{width}x{height}-{seconds:g}s.mp4"
    if path.exists():
        return path
    rng = np.random.default_rng(7)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = kbps * 1000
        video.options = {
            "profile": "baseline",
            "g": str(fps),
            "bf": "0",
            "tune": "zerolatency",
            "preset": "ultrafast",
            "x264-params": f"nal-hrd=cbr:vbv-maxrate={kbps}:vbv-bufsize={kbps // 2}",
        }
        for n in range(int(seconds * fps)):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image[:HEIGHT, :WIDTH] = number_image(n)
            for packet in video.encode(VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def publish_whip(
    url: str,
    clip: str,
    token: str,
    cert: str | None = None,
    key: str | None = None,
    seconds: float = 0.0,
) -> int:
    """Stream a clip in real time through FFmpeg's WHIP muxer (PyAV); returns packets sent.

    With `seconds`, the clip is played over and over (timestamps running on) for that long:
    a long lecture from a short clip. Runs in its own process (see __main__): the muxer's HTTP
    and DTLS calls block inside FFmpeg, which would starve an event loop in the same process.
    """
    import time

    options = {"authorization": token}
    if cert and key:
        options.update(cert_file=cert, key_file=key)
    sent = 0
    with av.open(clip) as source, av.open(url, "w", format="whip", options=options) as out:
        template = source.streams.video[0]
        stream = out.add_stream_from_template(template)
        packets = [p for p in source.demux(template) if p.dts is not None]
        span = max(p.pts for p in packets) + (packets[1].pts - packets[0].pts)
        start = time.monotonic()
        loop = 0
        while True:
            for packet in packets:
                pts = packet.pts + loop * span
                at = float(pts * packet.time_base)
                if loop and at >= seconds:
                    return sent
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts = pts, packet.dts + loop * span
                copy.time_base, copy.is_keyframe = packet.time_base, packet.is_keyframe
                copy.stream = stream
                out.mux(copy)
                sent += 1
            loop += 1
            if float(loop * span * packets[0].time_base) >= seconds:
                return sent


def main(argv: list[str]) -> None:
    """python -m tests.mediaclip URL CLIP TOKEN [CERT KEY] [--seconds N]: publish, print count."""
    seconds = 0.0
    if "--seconds" in argv:
        at = argv.index("--seconds")
        seconds = float(argv[at + 1])
        argv = argv[:at] + argv[at + 2 :]
    print(publish_whip(*argv, seconds=seconds), flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
