"""media/__init__.py re-exports the public API, lazily (media.errors alone stays cheap)."""

import subprocess
import sys

import pytest

import media


def test_public_names_are_the_real_classes():
    from media.engine import MediaConfig, MediaEngine
    from media.ingest import Publisher
    from media.lecture import Lecture, LectureStats, Viewer, ViewerStats

    assert media.MediaEngine is MediaEngine and media.MediaConfig is MediaConfig
    assert media.Lecture is Lecture and media.Viewer is Viewer and media.Publisher is Publisher
    assert media.ViewerStats is ViewerStats and media.LectureStats is LectureStats
    assert issubclass(media.SdpError, media.MediaError)
    for name in media.__all__:
        assert getattr(media, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="Nope"):
        media.Nope  # noqa: B018


def test_importing_the_errors_does_not_load_aiortc():
    code = "import sys, media.errors; print('aiortc' in sys.modules)"
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr
