"""The receiver's spool: every acknowledged C-STORE instance is first a file here, until its result is stored.

A received instance is written as a DICOM file (File Meta + the data set exactly as received, in its
transfer syntax; the calling AE title in (0002,0016) Source Application Entity Title) to a hidden
``.part`` file, flushed with ``fsync``, then renamed atomically to ``<ns-timestamp>-<uuid>.dcm`` and
the folder entry synced. Only then does the receiver answer the sender. The spool folder is created
with mode 0700 and every file with mode 0600 (received images carry patient data).

A file leaves the spool once its result is recorded in the store. Files still there when the receiver
starts (it stopped or died before scoring them) are scored again on start, oldest first; ``.part``
files (never acknowledged: the sender saw no success and will re-send) are removed.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIR_MODE, FILE_MODE = 0o700, 0o600


@dataclass(frozen=True)
class SpooledInstance:
    """One spooled instance: its file and what the receiver needs to name it without parsing the data set."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str

    @property
    def source(self) -> str:
        """The stored ``path`` of the result: ``dicom://<calling AE>/<SOP Instance UID>``."""
        return f"dicom://{self.calling_ae or 'unknown'}/{self.sop_instance_uid}"


class Spool:
    """A folder of received, not yet recorded instances (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        mode = stat.S_IMODE(self.folder.stat().st_mode)
        if mode != DIR_MODE:
            os.chmod(self.folder, DIR_MODE)  # an existing folder is tightened, never loosened

    def write(self, file_meta: Any, dataset: bytes) -> Path:
        """Write one instance durably (fsync + atomic rename) and return its spool path.

        ``file_meta`` is a pydicom ``FileMetaDataset``; ``dataset`` the data set encoded as received.
        Raises ``OSError`` (disk full, permissions): the caller must then not acknowledge the instance.
        """
        from pydicom.filewriter import write_file_meta_info

        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
        part = self.folder / f".{name}.part"
        final = self.folder / f"{name}.dcm"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\x00" * 128 + b"DICM")
                write_file_meta_info(fh, file_meta, enforce_standard=True)
                fh.write(dataset)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(part, final)
        except BaseException:
            try:
                part.unlink()
            except OSError:
                pass
            raise
        self._sync_dir()
        return final

    def _sync_dir(self) -> None:
        try:
            fd = os.open(self.folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def pending(self) -> list[Path]:
        """Spooled instances, oldest first; removes ``.part`` leftovers of interrupted writes."""
        for part in self.folder.glob(".*.part"):
            log.warning("removing an unacknowledged partial spool file %s", part.name)
            try:
                part.unlink()
            except OSError:
                pass
        return sorted(self.folder.glob("*.dcm"))

    def describe(self, path: Path) -> SpooledInstance:
        """Read a spooled file's File Meta (never the data set). Raises on an unreadable file."""
        from pydicom.filereader import read_file_meta_info

        meta = read_file_meta_info(path)
        return SpooledInstance(path=Path(path), sop_instance_uid=str(meta.get("MediaStorageSOPInstanceUID", "")),
                               sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
                               transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
                               calling_ae=str(meta.get("SourceApplicationEntityTitle", "") or "").strip())

    def remove(self, path: Path, *, keep_in: Path | None = None) -> None:
        """Drop a recorded instance from the spool (or move it to ``keep_in``)."""
        try:
            if keep_in is not None:
                keep_in.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.replace(path, keep_in / path.name)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
        self._sync_dir()
