"""Private files and folders: results databases and preview images hold patient data, so they are created
readable by their owner only (files 0600, folders 0700), like the API token file.

Modes are given to ``os.open``/``os.mkdir`` at creation (no process-wide ``umask`` change, which would race
with other threads) and then set exactly with ``chmod``, so a permissive umask cannot widen them. Existing
files and folders are left as they are: an administrator may have chosen their permissions.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700; existing folders are not touched."""
    path = Path(path).expanduser()
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # created meanwhile by another thread or process
            continue
        os.chmod(d, DIR_MODE)
    return path


def create_private_file(path: str | Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (its folder with :func:`private_dir`)."""
    path = Path(path).expanduser()
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def open_private(path: str | Path, mode: str = "wb"):
    """Open ``path`` for writing (truncating), created with mode 0600 when new."""
    fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    return os.fdopen(fd, mode)
