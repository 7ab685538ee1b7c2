"""VideoGate: a viewer's video pauses on sustained loss and is retried with backoff."""

from media.congestion import VideoGate


def test_three_bad_reports_in_a_row_pause_video():
    gate = VideoGate(loss=0.2, reports=3)
    gate.started(0.0)
    assert not gate.on_video_report(0.5, 3.0)
    assert not gate.on_video_report(0.5, 4.0)
    assert not gate.on_video_report(0.05, 5.0)  # a good report resets the count
    assert not gate.on_video_report(0.3, 6.0)
    assert not gate.on_video_report(0.3, 7.0)
    assert gate.on_video_report(0.3, 8.0)
    assert gate.paused and gate.pauses == 1
    assert not gate.on_video_report(0.9, 9.0)  # already paused


def test_reports_right_after_a_start_are_ignored():
    gate = VideoGate(grace=2.0, reports=1)
    gate.started(10.0)
    assert not gate.on_video_report(1.0, 11.0)  # covers the gap before the keyframe
    assert gate.on_video_report(1.0, 12.5)


def test_retry_backs_off_while_the_link_keeps_failing_and_resets_when_clean():
    gate = VideoGate(reports=1, retry=8.0, retry_max=20.0, grace=0.0, clean=2)
    now = 0.0
    waits = []
    for _ in range(4):
        assert gate.on_video_report(0.5, now)
        paused_at = now
        while not gate.should_resume(now):
            now += 1.0
        waits.append(now - paused_at)
    assert waits == [8.0, 16.0, 20.0, 20.0]
    gate.on_video_report(0.0, now)
    gate.on_video_report(0.0, now + 1)
    assert gate.resume_in == 8.0


def test_manual_audio_only_is_never_resumed_by_the_gate():
    gate = VideoGate(reports=1, grace=0.0)
    assert gate.on_video_report(0.9, 0.0)
    gate.manual = True
    assert not gate.should_resume(1000.0)
