"""Raster reader (PNG, JPEG, TIFF, BMP, and whatever else Pillow decodes) plus size limits.

Modes are mapped as follows: ``1``/``L``/``I;16*`` are grey; ``RGB`` stays RGB; ``RGBA``,
``LA``, ``PA`` are composited on black (colour × alpha); ``P`` (palette) and ``CMYK``/
``YCbCr``/… are converted to RGB; ``I`` (32-bit int) is treated as 16-bit when its values fit,
else min–max; ``F`` (float) is clipped/min–max (see :mod:`.intensity`). Multi-page TIFFs
(and animated images) are frames. Pixels keep their stored orientation (EXIF orientation
is not applied). The source format comes from the decoder, not the file extension.

The pixel-count limits shared by every reader live here: :data:`MAX_PIXELS` per frame and
:data:`MAX_TOTAL_PIXELS` per decode. Pillow's decompression-bomb guard is converted into
:class:`UnreadableImageError` and our own limit is checked from the header before any
pixel is decoded. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set: truncated data fails.
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .intensity import IntensityConfig, normalise_intensity
from .types import ImageMeta, MedImage, UnreadableImageError

MAX_PIXELS = 100_000_000  # per frame (10k × 10k); larger headers are rejected before decoding
MAX_TOTAL_PIXELS = 2**29  # per decode: frames × rows × columns × samples held at once

Select = Callable[[int], list[int]]

_FORMATS = {"MPO": "jpeg", "JPEG": "jpeg", "PNG": "png", "TIFF": "tiff", "BMP": "bmp", "DIB": "bmp"}


def check_frame_size(path: str | Path, height: int, width: int) -> None:
    """Raise ``UnreadableImageError`` when one frame exceeds :data:`MAX_PIXELS`."""
    if height <= 0 or width <= 0:
        raise UnreadableImageError(path, f"invalid image size {height}×{width}")
    if height * width > MAX_PIXELS:
        raise UnreadableImageError(
            path, f"image too large: {width}×{height} pixels exceeds the limit of {MAX_PIXELS:,} pixels"
        )


def check_total_size(path: str | Path, n_frames: int, height: int, width: int, samples: int = 1) -> None:
    """Raise when ``n_frames`` frames (× samples per pixel) exceed :data:`MAX_TOTAL_PIXELS` values."""
    total = n_frames * height * width * samples
    if total > MAX_TOTAL_PIXELS:
        per = f"{width}×{height}" + (f"×{samples}" if samples > 1 else "")
        raise UnreadableImageError(
            path,
            f"image too large: {n_frames} frames of {per} = {total:,} values "
            f"exceeds the limit of {MAX_TOTAL_PIXELS:,} per file",
        )


def _bomb_reason(path: Path, exc: Exception) -> str:
    """Message for Pillow's decompression-bomb error, with the PNG size when readable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return f"image too large: {w}×{h} pixels exceeds the limit of {MAX_PIXELS:,} pixels"
    except OSError:
        pass
    m = re.search(r"\((\d+) pixels\)", str(exc))
    n = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    return f"image too large: {n} exceeds the limit of {MAX_PIXELS:,} pixels (decompression bomb guard)"


def _to_array(frame: Image.Image) -> tuple[np.ndarray, int | None, str]:
    """Pillow frame → (array H×W or H×W×3, bit depth for intensity, photometric)."""
    mode = frame.mode
    if mode == "1":
        return np.asarray(frame, dtype=np.uint8), 1, "MONOCHROME2"
    if mode == "L":
        return np.asarray(frame), 8, "MONOCHROME2"
    if mode.startswith("I;16"):
        return np.asarray(frame).astype(np.uint16), 16, "MONOCHROME2"
    if mode == "I":
        arr = np.asarray(frame)
        fits16 = arr.size == 0 or (arr.min() >= 0 and arr.max() <= 65535)
        return (arr.astype(np.uint16), 16, "MONOCHROME2") if fits16 else (arr.astype(np.float64), None, "MONOCHROME2")
    if mode == "F":
        return np.asarray(frame, dtype=np.float32), 32, "MONOCHROME2"
    if mode == "P":
        has_alpha = "transparency" in frame.info
        frame = frame.convert("RGBA" if has_alpha else "RGB")
        mode = frame.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = np.asarray(frame.convert("LA" if mode in ("LA", "La") else "RGBA"), dtype=np.float32)
        alpha = rgba[..., -1:] / 255.0
        out = np.clip(np.round(rgba[..., :-1] * alpha), 0, 255).astype(np.uint8)
        if out.shape[-1] == 1:
            return out[..., 0], 8, "MONOCHROME2"
        return out, 8, "RGB"
    if mode != "RGB":
        frame = frame.convert("RGB")
    return np.asarray(frame), 8, "RGB"


def read_raster(
    path: Path,
    select: Select,
    modality: str | None,
    config: IntensityConfig,
    sniffed: str | None = None,
) -> list[MedImage]:
    """Decode the selected frames of a raster file; ``sniffed`` names the magic-number format."""
    fmt = sniffed or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = _FORMATS.get(str(im.format), str(im.format).lower())
                n = int(getattr(im, "n_frames", 1) or 1)
                indices = select(n)
                check_total_size(path, len(indices), im.size[1], im.size[0], len(im.getbands()))
                images = []
                for i in indices:
                    if n > 1:
                        im.seek(i)
                    w, h = im.size
                    check_frame_size(path, h, w)
                    im.load()
                    raw, bits, photometric = _to_array(im)
                    pixels, desc = normalise_intensity(raw, modality, kind="raster", bit_depth=bits, config=config)
                    bands = len(im.getbands())
                    shape = (h, w) + ((bands,) if bands > 1 else ())
                    meta = ImageMeta(
                        path=str(path),
                        source_format=fmt,
                        modality=modality,
                        bit_depth=bits,
                        photometric=photometric,
                        frame_index=i if n > 1 else None,
                        n_frames=n,
                        original_shape=((n,) if n > 1 else ()) + tuple(int(s) for s in shape),
                        intensity=desc,
                        extra={"pil_mode": im.mode},
                    )
                    images.append(MedImage(np.ascontiguousarray(pixels, dtype=np.float32), meta))
                return images
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise UnreadableImageError(path, _bomb_reason(path, exc)) from exc
    except Image.UnidentifiedImageError as exc:
        if sniffed:
            raise UnreadableImageError(path, f"corrupt {sniffed.upper()} data: Pillow cannot decode the header") from exc
        raise UnreadableImageError(path, "not a recognised image format (Pillow cannot identify it)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        text = str(exc) or type(exc).__name__
        kind = "truncated" if "truncat" in text.lower() else "corrupt"
        raise UnreadableImageError(path, f"{kind} {fmt.upper()} data: {text}") from exc
