"""Seeded mutation fuzzing of every reader: malformed files must give frames or an UnreadableImageError.

:func:`seed_files` writes the seeds — pydicom's own test files in each transfer syntax
(uncompressed, RLE, JPEG baseline / extended / lossless, JPEG 2000, JPEG-LS, deflate), plus a
PNG, a JPEG and a NIfTI generated from the seed. :func:`write_mutations` writes ``n`` mutated
copies: byte flips, bit flips, truncations, inserted and deleted runs, and header-field edits
(DICOM pixel-module tags rewritten through pydicom — so deflated files are edited too —, PNG
IHDR fields with a valid CRC, JPEG SOF dimensions, NIfTI dim/datatype fields). Everything is
drawn from ``numpy.random.default_rng([seed, i])``: the same seed gives the same files.

:func:`check_files` loads each file with :func:`medforensics.io.load_frames` in a child
process (restarted after a crash, killed after a time-out) and classifies the outcome: ``ok``,
``UnreadableImageError`` (with the reason's first words), ``escaped:<type>`` (any other
exception reaching the caller — a bug), ``crash`` (the process died, e.g. a segfault in a
native decoder) or ``hang``.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Seed files from pydicom's test files, by the transfer syntax they exercise.
DICOM_SEEDS = {
    "uncompressed_ct": "CT_small.dcm",
    "uncompressed_mr": "MR_small.dcm",
    "uncompressed_rgb": "SC_rgb_small_odd.dcm",
    "rle": "MR_small_RLE.dcm",
    "rle_rgb_2frame": "SC_rgb_rle_2frame.dcm",
    "jpeg_baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg_extended": "JPGExtended.dcm",
    "jpeg_lossless": "SC_rgb_jpeg_gdcm.dcm",
    "jpeg2000": "MR_small_jp2klossless.dcm",
    "jpeg2000_lossy": "JPEG2000.dcm",
    "jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",
    "deflate": "image_dfl.dcm",
}
OPERATIONS = ("byte_flip", "bit_flip", "truncate", "insert_run", "delete_run", "header_edit")
_INTERESTING = (0, 1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 32767, 32768, 65535)


def seed_files(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the seed files into ``folder``; return ``{name: path}`` (deterministic per seed)."""
    from PIL import Image

    from .samples import pydicom_test_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    src = pydicom_test_files()
    if src is None:
        raise FileNotFoundError("pydicom's test files are not installed")
    for name, file in DICOM_SEEDS.items():
        out[name] = Path(shutil.copyfile(src / file, folder / f"{name}.dcm"))
    rng = np.random.default_rng([seed, 0xF022])
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (24, 20), dtype=np.uint16)
    Image.fromarray(rgb).save(folder / "png_rgb.png")
    Image.fromarray(grey16).save(folder / "png_grey16.png")
    Image.fromarray(rgb).save(folder / "jpeg.jpg", quality=90)
    out["png_rgb"], out["png_grey16"], out["jpeg"] = folder / "png_rgb.png", folder / "png_grey16.png", folder / "jpeg.jpg"
    import nibabel as nib

    vol = rng.integers(-1000, 2000, (16, 12, 4), dtype=np.int16)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), folder / "nifti.nii")
    out["nifti"] = folder / "nifti.nii"
    return out


# --------------------------------------------------------------------------- mutations
def _byte_flip(data: bytearray, rng: np.random.Generator) -> str:
    k = int(rng.integers(1, 9))
    for _ in range(k):
        i = int(rng.integers(len(data)))
        data[i] = int(rng.integers(256))
    return f"{k} bytes"


def _bit_flip(data: bytearray, rng: np.random.Generator) -> str:
    k = int(rng.integers(1, 17))
    for _ in range(k):
        i = int(rng.integers(len(data)))
        data[i] ^= 1 << int(rng.integers(8))
    return f"{k} bits"


def _truncate(data: bytearray, rng: np.random.Generator) -> str:
    cut = int(rng.integers(1, len(data)))
    del data[cut:]
    return f"at {cut}"


def _insert_run(data: bytearray, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(data) + 1))
    n = int(rng.integers(1, 257))
    run = bytes([int(rng.integers(256))]) * n if rng.random() < 0.5 else rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    data[i:i] = run
    return f"{n} at {i}"


def _delete_run(data: bytearray, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(data)))
    n = int(rng.integers(1, 257))
    del data[i : i + n]
    return f"{n} at {i}"


def _value(rng: np.random.Generator, current: int) -> int:
    choice = rng.random()
    if choice < 0.6:
        return int(rng.choice(_INTERESTING))
    if choice < 0.8:
        return max(0, current + int(rng.integers(-2, 3)))
    return int(rng.integers(0, 65536))


def _dicom_header_edit(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    import pydicom
    from pydicom.filebase import DicomBytesIO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        keyword = str(rng.choice(["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
                                  "NumberOfFrames", "PixelRepresentation", "PhotometricInterpretation",
                                  "PlanarConfiguration", "RescaleSlope", "WindowWidth"]))
        if keyword == "PhotometricInterpretation":
            ds.PhotometricInterpretation = str(rng.choice(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                                                            "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "CMYK", "XYZ"]))
        elif keyword in ("NumberOfFrames", "RescaleSlope", "WindowWidth"):
            setattr(ds, keyword, str(rng.choice(["0", "-1", "2", "1000000", "1e308", "nan", "3"])))
        else:
            current = int(getattr(ds, keyword, 0) or 0)
            setattr(ds, keyword, _value(rng, current))
        buf = DicomBytesIO()
        ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue(), f"{keyword}={getattr(ds, keyword)}"


def _png_header_edit(data: bytearray, rng: np.random.Generator) -> str:
    # IHDR: width(4) height(4) depth colour compression filter interlace, at offset 16
    field_at = {"width": (16, ">I"), "height": (20, ">I"), "depth": (24, "B"), "colour": (25, "B"), "interlace": (28, "B")}
    name = str(rng.choice(list(field_at)))
    off, fmt = field_at[name]
    size = struct.calcsize(fmt)
    current = struct.unpack_from(fmt, data, off)[0]
    value = _value(rng, current)
    if name in ("width", "height") and rng.random() < 0.3:
        value = int(rng.choice([0, 1 << 16, 1 << 20, (1 << 31) - 1]))
    struct.pack_into(fmt, data, off, value & ((1 << (8 * size)) - 1))
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    struct.pack_into(">I", data, 29, crc)
    return f"IHDR {name}={value & ((1 << (8 * size)) - 1)}"


def _jpeg_header_edit(data: bytearray, rng: np.random.Generator) -> str:
    m = re.search(rb"\xff[\xc0-\xc3]", bytes(data))
    if m is None:
        return _byte_flip(data, rng)
    off = m.start() + 5  # marker(2) length(2) precision(1) → height(2) width(2) components(1)
    name = str(rng.choice(["height", "width", "components", "precision"]))
    where = {"precision": (off - 1, ">B"), "height": (off, ">H"), "width": (off + 2, ">H"), "components": (off + 4, ">B")}
    at, fmt = where[name]
    value = _value(rng, struct.unpack_from(fmt, data, at)[0]) & (0xFF if fmt == ">B" else 0xFFFF)
    struct.pack_into(fmt, data, at, value)
    return f"SOF {name}={value}"


def _nifti_header_edit(data: bytearray, rng: np.random.Generator) -> str:
    # NIfTI-1: dim[8] int16 at 40, datatype int16 at 70, bitpix int16 at 72, vox_offset float32 at 108
    name = str(rng.choice(["dim0", "dim1", "dim2", "dim3", "datatype", "bitpix", "vox_offset", "scl_slope"]))
    if name.startswith("dim"):
        at = 40 + 2 * int(name[3])
        struct.pack_into("<h", data, at, int(rng.choice([-1, 0, 1, 2, 7, 8, 4096, 32767])))
    elif name in ("datatype", "bitpix"):
        at = 70 if name == "datatype" else 72
        struct.pack_into("<h", data, at, int(rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 511, 1536, 2304])))
    else:
        at = 108 if name == "vox_offset" else 112
        struct.pack_into("<f", data, at, float(rng.choice([0.0, -1.0, 1e30, float("nan"), 352.0, 1e9])))
    return f"{name} edited"


def mutate(data: bytes, kind: str, rng: np.random.Generator, operation: str | None = None) -> tuple[bytes, str, str]:
    """One mutation of ``data`` (a file of format ``kind``: dicom/png/jpeg/nifti) → (bytes, op, detail)."""
    op = operation or str(rng.choice(OPERATIONS))
    buf = bytearray(data)
    if op == "header_edit":
        try:
            if kind == "dicom":
                out, detail = _dicom_header_edit(data, rng)
                return out, op, detail
            detail = {"png": _png_header_edit, "jpeg": _jpeg_header_edit, "nifti": _nifti_header_edit}[kind](buf, rng)
            return bytes(buf), op, detail
        except Exception as exc:  # the seed itself could not be edited that way: fall back to a byte flip
            detail = f"header edit failed ({type(exc).__name__}); " + _byte_flip(buf, rng)
            return bytes(buf), "byte_flip", detail
    fn = {"byte_flip": _byte_flip, "bit_flip": _bit_flip, "truncate": _truncate,
          "insert_run": _insert_run, "delete_run": _delete_run}[op]
    detail = fn(buf, rng)
    return bytes(buf), op, detail


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".dcm": "dicom", ".png": "png", ".jpg": "jpeg", ".nii": "nifti"}[suffix]


def write_mutations(out_dir: str | Path, n: int, seed: int = 0, seeds: dict[str, Path] | None = None) -> list[Path]:
    """Write ``n`` mutated files into ``out_dir`` (seeds written to ``out_dir/seeds`` if not given).

    File ``i`` mutates seed ``i % len(seeds)`` with ``default_rng([seed, i])``; its name records
    the seed, the operation and the index, and ``manifest.jsonl`` records the detail.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = seeds if seeds is not None else seed_files(out / "seeds", seed)
    names = sorted(seeds)
    originals = {name: seeds[name].read_bytes() for name in names}
    paths: list[Path] = []
    with open(out / "manifest.jsonl", "w") as manifest:
        for i in range(n):
            name = names[i % len(names)]
            rng = np.random.default_rng([seed, i])
            data, op, detail = mutate(originals[name], _kind(seeds[name]), rng)
            path = out / f"{i:05d}_{name}_{op}{seeds[name].suffix}"
            path.write_bytes(data)
            paths.append(path)
            manifest.write(json.dumps({"file": path.name, "seed_file": name, "operation": op, "detail": detail}) + "\n")
    return paths


# --------------------------------------------------------------------------- checking
def _classify_reason(reason: str) -> str:
    """First words of an UnreadableImageError reason, without numbers or paths (an error kind)."""
    head = reason.split(":")[0]
    while re.search(r"\([^()]*\)", head):
        head = re.sub(r"\([^()]*\)", "", head)
    head = re.sub(r"[0-9]+", "#", head)
    return " ".join(head.split()[:6]) or "?"


def _child() -> None:  # pragma: no cover - runs in the child process
    """Read paths from stdin; for each, print ``start`` then the outcome, as JSON lines."""
    warnings.simplefilter("ignore")
    os.environ.setdefault("RUST_BACKTRACE", "0")
    from medforensics.io import UnreadableImageError, load_frames

    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            continue
        print(json.dumps({"start": path}), flush=True)
        try:
            frames = load_frames(path, max_frames=8)
            ok = all(np.isfinite(f.pixels).all() and f.pixels.min() >= 0 and f.pixels.max() <= 1 for f in frames)
            outcome = "ok" if ok else "escaped:pixels outside [0, 1]"
            reason = ""
        except UnreadableImageError as err:
            outcome, reason = "unreadable", err.reason
        except Exception as exc:  # a bug: the reader let another type escape
            outcome, reason = f"escaped:{type(exc).__name__}", str(exc)[:200]
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            outcome, reason = f"escaped:{type(exc).__name__}", str(exc)[:200]
        print(json.dumps({"path": path, "outcome": outcome, "reason": reason}), flush=True)


@dataclass
class FuzzReport:
    """Counts of :func:`check_files`; ``problems`` lists every file that was not ok/unreadable."""

    n_files: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # ok / unreadable / escaped:… / crash / hang
    error_kinds: Counter = field(default_factory=Counter)  # unreadable reasons, grouped
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_files": self.n_files,
            "seconds": round(self.seconds, 2),
            "files_per_s": round(self.n_files / self.seconds, 1) if self.seconds else None,
            "outcomes": dict(sorted(self.outcomes.items())),
            "error_kinds": dict(self.error_kinds.most_common()),
            "problems": self.problems,
        }


def _pump(stream: Any, lines: "queue.Queue[str | None]") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def check_files(paths: list[Path] | list[str], timeout_s: float = 30.0, env: dict[str, str] | None = None) -> FuzzReport:
    """Load each file in a child process (restarted after a crash or a time-out); classify every outcome.

    ``timeout_s`` bounds one file's load (the child's start-up is not counted).
    """
    report = FuzzReport(n_files=len(paths))
    t0 = time.perf_counter()
    todo = [str(p) for p in paths]
    child_env = {**os.environ, "RUST_BACKTRACE": "0", **(env or {})}
    code = "from medforensics.io.mutation import _child; _child()"
    while todo:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=child_env)
        assert proc.stdin is not None and proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        done = 0
        try:
            for path in todo:
                proc.stdin.write(path + "\n")
                proc.stdin.flush()
                started = False
                result = None
                while result is None:
                    try:  # the first file also waits for the child's imports
                        line = lines.get(timeout=timeout_s if started else timeout_s + 120)
                    except queue.Empty:
                        raise TimeoutError from None
                    if line is None:
                        raise ChildProcessError
                    msg = json.loads(line)
                    if "start" in msg:
                        started = True
                    else:
                        result = msg
                done += 1
                outcome = result["outcome"]
                report.outcomes[outcome] += 1
                if outcome == "unreadable":
                    report.error_kinds[_classify_reason(result["reason"])] += 1
                elif outcome != "ok":
                    report.problems.append({"file": path, "outcome": outcome, "detail": result["reason"]})
            todo = []
        except (TimeoutError, ChildProcessError, BrokenPipeError) as exc:
            kind = "hang" if isinstance(exc, TimeoutError) else "crash"
            proc.kill()
            proc.wait()
            detail = f"no answer in {timeout_s:g} s" if kind == "hang" else f"exit code {proc.returncode}"
            report.outcomes[kind] += 1
            report.problems.append({"file": todo[done], "outcome": kind, "detail": detail})
            todo = todo[done + 1 :]
        finally:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=60)
    report.seconds = time.perf_counter() - t0
    return report
