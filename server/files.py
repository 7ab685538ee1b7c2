"""The files of a LopSo data folder are private: folder 0700, files 0600, replaced atomically.

The data folder holds the signing secret (whoever reads it can mint any link), the SQLite
ledger (names of participants), webhook and demo files with tokens. Writes go to a temporary
file that is fsynced, renamed over the old one, and the folder fsynced: after a crash or a
power cut a reader finds the old content or the new, never an empty or half-written file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) with mode 0700; tighten it when this user owns it."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if missing (so that SQLite, which gives its -wal
    and -shm files the database's mode, never makes them readable); tighten it if present."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)


def tighten(path: Path) -> None:
    """Mode 0600 on a file that exists and that this user owns (files of older versions)."""
    with contextlib.suppress(FileNotFoundError):
        _tighten(path, FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a temp file left by a crash may have had other bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tighten(path: Path, mode: int) -> None:
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & ~mode and info.st_uid == os.geteuid():
        path.chmod(mode)


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "fsync_dir",
    "private_dir",
    "private_file",
    "tighten",
    "write_private",
]
