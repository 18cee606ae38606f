"""The one check every caller makes before it opens (or hashes) an input file.

Opening a FIFO blocks until a writer appears and reading ``/dev/zero`` never ends, so nothing
may open a path before :func:`check_regular_file` has said it is a regular file.
:func:`open_regular` opens without blocking and checks the opened descriptor itself, so a path
swapped for a FIFO after the check still cannot hang a reader.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .types import UnreadableImageError


def file_kind(mode: int) -> str:
    """Human name of a non-regular file type (``st_mode``)."""
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _stat_error(path: Path, exc: OSError) -> UnreadableImageError:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return UnreadableImageError(path, f"dangling symbolic link (its target {target} does not exist)")
        return UnreadableImageError(path, "file not found")
    if exc.errno == errno.ELOOP:
        return UnreadableImageError(path, "symbolic link loop (the link resolves to itself)")
    return UnreadableImageError(path, f"cannot access file: {exc.strerror or exc}")


def check_regular_file(path: str | Path) -> int:
    """Raise :class:`UnreadableImageError` unless ``path`` is a non-empty regular file; return its size.

    Symbolic links are followed. Named errors: file not found, dangling symbolic link, symbolic
    link loop, permission denied, directory, FIFO, character/block device, socket, empty file.
    Every caller — readers, the walk, hashing — calls this before opening a path.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise _stat_error(p, exc) from exc
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableImageError(p, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImageError(p, f"not a regular file: {file_kind(st.st_mode)}")
    if st.st_size == 0:
        raise UnreadableImageError(p, "empty file (0 bytes)")
    return st.st_size


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary reading only if it is a regular file (never blocks on a FIFO)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        named = isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP
        err = _stat_error(p, exc) if named else UnreadableImageError(p, f"cannot open file: {exc.strerror or exc}")
        raise err from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableImageError(p, f"not a regular file: {file_kind(mode)}")
        fh = os.fdopen(fd, "rb")
        fh.raw.name = str(p)  # type: ignore[attr-defined]  # readers quote the path, not the descriptor
        return fh
    except BaseException:
        os.close(fd)
        raise
