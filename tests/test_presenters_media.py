"""Several presenters, one lecture: real aiortc presenters and halls over loopback.

Each presenter sends its own numbered clip (tests/mediaclip.py): A's frames are numbered
from 0, B's from 20,000, so a hall's decoded numbers say whose picture it shows, and whether
a frame came out corrupt (an unreadable number). A cut must reach every hall within 1 s.
"""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import pytest

from media.errors import PresenterOfflineError, PublisherBusyError
from tests.test_lecture import PublisherPeer, ViewerPeer, wait_for

A, B = 0, 20000
CUT_BOUND_S = 3.0
"""The issue's target is a cut on air (the new presenter's keyframe forwarded) within 1 s of
the cue: measured 0.03-0.16 s, and halls decoding it 0.08-0.1 s after the cue on an idle
machine. The bound is 3 s because these tests also run beside a soak test that loads the two
cores 20-50 times over (seen there: 0.03-0.5 s, once 7 s); without the cut's keyframe request
the wait is for aiortc's next periodic keyframe, minutes away, so the bound still bites."""
HALL_BOUND_S = 4.0
"""Halls decoding the cut: aiortc's decoders in this one process add their part (1-2 s when
the machine is overloaded)."""
SLOW = 40.0  # seconds to wait for frames to add up (a few frames a second on a loaded machine)
"""Halls decoding the cut: aiortc's decoders in this one process add their part, which grows to
1-2 s when the machine is loaded many times over (a soak test beside it); without the cut's
keyframe request the halls would wait for the next periodic keyframe (minutes with aiortc)."""


def whose(number: int) -> str:
    return "A" if number < B else "B"


def runs(viewer: ViewerPeer) -> list[str]:
    """The presenters a hall showed, in order (A, B, A for a cut and a cut back)."""
    shown: list[str] = []
    for number in viewer.numbers():
        if number is not None and (not shown or shown[-1] != whose(number)):
            shown.append(whose(number))
    return shown


def assert_clean_cuts(viewer: ViewerPeer) -> None:
    """No corrupt frame; within each presenter's run the numbers only go up."""
    numbers = viewer.numbers()
    assert numbers and None not in numbers, f"corrupt frames: {numbers.count(None)}"
    for a, b in pairwise(numbers):
        assert a is not None and b is not None
        assert whose(a) != whose(b) or b > a, (a, b)


def first_frame_after(viewer: ViewerPeer, since: float, who: str) -> float | None:
    return next(
        (t for t, n in viewer.frames if t >= since and n is not None and whose(n) == who), None
    )


async def cut(lecture, presenter: str, halls: list[ViewerPeer], who: str) -> list[float]:
    """Cut to `presenter`; the seconds until each hall decoded its first frame of theirs."""
    since = time.monotonic()
    await lecture.cue(presenter)
    await wait_for(lambda: all(first_frame_after(h, since, who) for h in halls), timeout=10)
    return [(first_frame_after(h, since, who) or 0.0) - since for h in halls]


@pytest.fixture
async def studio(engine):
    """A lecture with presenters A (p1, on air) and B (p2, standby) and three halls."""
    lecture = engine.lecture("two", video_codec="VP8")
    halls = [ViewerPeer() for _ in range(3)]
    a, b = PublisherPeer(A), PublisherPeer(B)
    aired: list[str | None] = []
    lecture.on_air_change = aired.append
    for hall in halls:
        await hall.subscribe(lecture)
    await a.publish(lecture)
    answer, _ = await lecture.publish(await offer_of(b), presenter="p2")
    await b.connect(answer)
    await wait_for(lambda: all(len(h.frames) >= 15 for h in halls), SLOW)
    await wait_for(lambda: lecture.presenter_states() == {"p1": "on_air", "p2": "standby"}, SLOW)
    try:
        yield lecture, halls, a, b, aired
    finally:
        for peer in (*halls, a, b):
            await peer.close()


async def offer_of(peer: PublisherPeer) -> str:
    await peer.pc.setLocalDescription(await peer.pc.createOffer())
    return str(peer.pc.localDescription.sdp)


async def test_a_cut_reaches_every_hall_within_a_second_and_back(studio) -> None:
    lecture, halls, _, _, aired = studio
    assert all(runs(h) == ["A"] for h in halls)  # B's standby media went nowhere
    audio_before = [h.audio_frames for h in halls]
    to_b = await cut(lecture, "p2", halls, "B")
    await wait_for(
        lambda: all(sum(whose(n) == "B" for n in h.numbers() if n) >= 15 for h in halls), SLOW
    )
    assert lecture.presenter_states() == {"p1": "standby", "p2": "on_air"}
    to_a = await cut(lecture, "p1", halls, "A")
    await wait_for(lambda: all(runs(h) == ["A", "B", "A"] for h in halls), SLOW)
    await wait_for(lambda: all(len(h.frames) >= 3 * 15 for h in halls), SLOW)
    print(
        f"on air after the cue: {[round(s, 3) for s in lecture.cut_waits]} s; "
        f"cut to B at the halls: {[round(s, 3) for s in to_b]} s; "
        f"back to A: {[round(s, 3) for s in to_a]} s"
    )
    assert max(lecture.cut_waits) < CUT_BOUND_S, lecture.cut_waits
    assert max(to_b + to_a) < HALL_BOUND_S, (to_b, to_a)
    for hall, before in zip(halls, audio_before, strict=True):
        assert_clean_cuts(hall)
        assert hall.audio_frames > before + 20  # audio went on through both cuts
        assert len(hall.pc.getReceivers()) == 2  # the same two tracks: nothing renegotiated
    assert aired == ["p1", "p2", "p1"] and lecture.cuts == 2


async def test_a_cut_while_a_hall_joins(studio) -> None:
    lecture, halls, _, _, _ = studio
    late = ViewerPeer()
    try:
        joining = asyncio.ensure_future(late.subscribe(lecture))
        await lecture.cue("p2")
        await joining
        await wait_for(lambda: sum(1 for n in late.numbers() if n and n >= B) >= 15, SLOW)
        await wait_for(lambda: all(runs(h) == ["A", "B"] for h in halls), SLOW)
        for hall in (*halls, late):
            assert_clean_cuts(hall)
        assert runs(late) in (["A", "B"], ["B"])
    finally:
        await late.close()


async def test_the_on_air_presenter_dropping_leaves_the_last_frame(studio) -> None:
    lecture, halls, a, _, aired = studio
    await a.close()  # A's connection drops
    await wait_for(lambda: aired[-1] is None, timeout=6)  # the director is told
    assert lecture.presenter_states() == {"p2": "standby"} and not lecture.live
    await asyncio.sleep(0.5)
    frames, audio = [len(h.frames) for h in halls], [h.audio_frames for h in halls]
    await asyncio.sleep(1.0)
    assert [len(h.frames) for h in halls] == frames  # the last frame stays, nothing corrupt
    assert [h.audio_frames for h in halls] == audio  # audio stops
    with pytest.raises(PresenterOfflineError):
        await lecture.cue("p1")
    to_b = await cut(lecture, "p2", halls, "B")  # the director cuts to B
    assert max(to_b) < HALL_BOUND_S, to_b  # nothing on air: B goes on at its first keyframe
    for hall in halls:
        assert_clean_cuts(hall)


async def test_a_second_device_of_one_presenter_is_busy_not_a_cut(studio) -> None:
    lecture, halls, _, _, _ = studio
    intruder = PublisherPeer(40000)
    try:
        with pytest.raises(PublisherBusyError, match="p2"):
            await lecture.publish(await offer_of(intruder), presenter="p2")
    finally:
        await intruder.close()
    assert lecture.presenter_states() == {"p1": "on_air", "p2": "standby"}


async def test_return_feed_mutes_its_own_presenter_while_on_air(studio) -> None:
    lecture, halls, _, _, _ = studio
    back = ViewerPeer()
    try:
        await back.pc.setLocalDescription(await back.pc.createOffer())
        from aiortc import RTCSessionDescription

        answer, _ = await lecture.subscribe(back.pc.localDescription.sdp, presenter="p2")
        await back.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_for(lambda: len(back.frames) >= 15 and back.audio_frames >= 25, SLOW)
        await cut(lecture, "p2", [back, *halls], "B")  # B on air: B's return feed is silent
        await asyncio.sleep(0.5)
        heard = back.audio_frames
        await asyncio.sleep(1.0)
        assert back.audio_frames == heard, "B hears itself"
        assert all(h.audio_frames > 0 for h in halls)
        seen = len(back.frames)
        await wait_for(lambda: len(back.frames) >= seen + 15, SLOW)  # but still sees the programme
        await cut(lecture, "p1", [back], "A")
        await wait_for(lambda: back.audio_frames >= heard + 25, SLOW)  # A's voice again
        assert_clean_cuts(back)
    finally:
        await back.close()


async def test_ffmpeg_whip_is_the_second_presenter_of_an_h264_class(engine, tmp_path) -> None:
    """FFmpeg's WHIP muxer (a file, a keyframe every second, no answer to a PLI) as presenter
    B of an H264 class, an aiortc studio as A: halls cut to B at its next keyframe and back."""
    from tests.mediaclip import write_h264_clip
    from tests.serverproc import whip_route
    from tests.test_ffmpeg_whip import run_ffmpeg

    lecture = engine.lecture("h264-duo", video_codec="H264")
    studio = PublisherPeer(B, codec="H264")  # A's numbers from 20,000 here; FFmpeg's from 0
    halls = [ViewerPeer(codec="H264") for _ in range(3)]
    clip = write_h264_clip(tmp_path, seconds=10.0)
    runner, url = await whip_route(lecture, token="tok", presenter="ffmpeg")
    ffmpeg = None
    try:
        for hall in halls:
            await hall.subscribe(lecture)
        answer, _ = await lecture.publish(await offer_of(studio), presenter="p1")
        await studio.connect(answer)
        await wait_for(lambda: all(len(h.frames) >= 10 for h in halls), timeout=SLOW)
        ffmpeg = asyncio.ensure_future(run_ffmpeg(url, str(clip), "tok", timeout=60))
        await wait_for(lambda: lecture.presenter_states().get("ffmpeg") == "standby", timeout=SLOW)
        await asyncio.sleep(1.0)
        assert all(all(n is None or n >= B for n in h.numbers()) for h in halls)  # standby
        source = lecture.sources["ffmpeg"]
        await wait_for(lambda: time.monotonic() - source.heard_at < 0.5, SLOW)  # a starved child
        since = time.monotonic()
        await lecture.cue("ffmpeg")
        await wait_for(
            lambda: all(any(n is not None and n < B for _, n in h.frames) for h in halls), SLOW
        )
        to_ffmpeg = [
            next(t for t, n in h.frames if t >= since and n is not None and n < B) - since
            for h in halls
        ]
        await wait_for(
            lambda: all(sum(1 for n in h.numbers() if n and n < B) >= 15 for h in halls), SLOW
        )
        since = time.monotonic()
        await lecture.cue("p1")
        to_studio = [await first_after(h, since, lambda n: n >= B) for h in halls]
        print(
            f"FFmpeg on air {lecture.cut_waits[-2]:.3f} s after the cue; "
            f"cut to FFmpeg at the halls: {[round(s, 3) for s in to_ffmpeg]} s; "
            f"back to aiortc: {[round(s, 3) for s in to_studio]} s"
        )
        # FFmpeg sends a file: its next keyframe is up to a second (its GOP) away, whatever
        # the PLI; on air then at once. The halls' decoders add their part on a loaded box.
        to_air = lecture.cut_waits[-2]
        assert to_air < 1.0 + 0.3, lecture.cut_waits
        assert max(to_ffmpeg) < 1.0 + HALL_BOUND_S, to_ffmpeg
        assert lecture.cut_waits[-1] < CUT_BOUND_S  # aiortc answers the cut's PLI
        assert max(to_studio) < HALL_BOUND_S
        for hall in halls:
            numbers = hall.numbers()
            assert numbers and None not in numbers, "corrupt frame"
            for a, b in pairwise(numbers):
                assert (a >= B) != (b >= B) or b > a, (a, b)  # type: ignore[operator]
        code, output = await ffmpeg  # the clip plays to its end, FFmpeg exits cleanly
        assert code == 0, output[-2000:]
    finally:
        if ffmpeg is not None and not ffmpeg.done():
            await asyncio.wait([ffmpeg], timeout=60)  # run_ffmpeg kills it at its timeout
        await runner.cleanup()
        for peer in (*halls, studio):
            await peer.close()


async def first_after(viewer: ViewerPeer, since: float, match) -> float:
    await wait_for(
        lambda: any(t >= since and n is not None and match(n) for t, n in viewer.frames), SLOW
    )
    return next(t for t, n in viewer.frames if t >= since and n is not None and match(n)) - since


async def test_the_director_previews_each_presenter_whoever_is_on_air(studio) -> None:
    from aiortc import RTCSessionDescription

    lecture, halls, _, _, _ = studio
    monitors = {"p1": ViewerPeer(), "p2": ViewerPeer()}
    try:
        for presenter, monitor in monitors.items():
            await monitor.pc.setLocalDescription(await monitor.pc.createOffer())
            answer, _ = await lecture.preview(monitor.pc.localDescription.sdp, presenter)
            await monitor.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_for(lambda: all(len(m.frames) >= 15 for m in monitors.values()), SLOW)
        assert {whose(n) for n in monitors["p1"].numbers() if n is not None} == {"A"}
        assert {whose(n) for n in monitors["p2"].numbers() if n is not None} == {"B"}
        assert all(runs(h) == ["A"] for h in halls)  # B's preview is not the programme
        for monitor in monitors.values():
            assert_clean_cuts(monitor)
    finally:
        for monitor in monitors.values():
            await monitor.close()
