"""Shared pytest configuration for LopSo's tests."""

import pathlib

import pytest

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def artifacts_dir() -> pathlib.Path:
    """Folder for screenshots and other files a test leaves for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def engine():
    """A started MediaEngine on an ephemeral loopback port, closed after the test."""
    from media.engine import MediaConfig, MediaEngine

    engine = MediaEngine(MediaConfig("127.0.0.1", 0))
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture
async def sock():
    """A started MediaSocket on an ephemeral loopback port, closed after the test."""
    from media.endpoint import MediaSocket

    s = MediaSocket()
    await s.start()
    yield s
    await s.close()


@pytest.fixture
async def viewers():
    """A factory of aiortc loopback viewers (tests/aiortcviewer.py), all closed afterwards."""
    from tests.aiortcviewer import Viewer

    made: list[Viewer] = []

    def make() -> Viewer:
        made.append(Viewer())
        return made[-1]

    yield make
    for v in made:
        await v.close()
