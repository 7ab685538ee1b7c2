"""The lint half of scripts/check holds for the packages: `ruff check` passes on media/ and server/."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ruff_check_passes_on_media_and_server():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "media", "server"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_test_modules_have_unique_names():
    """Test folders have no __init__.py: two modules of one name (tests/ and tests/e2e/) stop
    the whole suite at collection."""
    seen: dict[str, pathlib.Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "conftest.py":
            continue
        if path.name in seen:
            clashes.append((seen[path.name], path))
        seen.setdefault(path.name, path)
    assert not clashes, clashes
