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

from .budget import FLOAT32, FLOAT64, DecodeCost, current_budget, shape_text
from .intensity import IntensityConfig, normalise_intensity
from .files import open_regular
from .types import ImageMeta, MedImage, UnreadableImageError, reraise_fatal

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
        with open_regular(path) as fh:
            head = fh.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return f"image too large: {w}×{h} pixels exceeds the limit of {MAX_PIXELS:,} pixels"
    except OSError:
        pass
    m = re.search(r"\((\d+) pixels\)", str(exc))
    n = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    return f"image too large: {n} exceeds the limit of {MAX_PIXELS:,} pixels (decompression bomb guard)"


_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def raster_cost(mode: str, width: int, height: int, n_selected: int, *, has_transparency: bool = False) -> DecodeCost:
    """Peak bytes of decoding ``n_selected`` frames of a Pillow image (see :mod:`.budget`).

    Per frame, one at a time: Pillow's image (1 byte per pixel for 1/L/P, 2 for I;16, 4 for
    I/F and for every multi-band mode, which Pillow stores 4 bytes per pixel), a converted
    copy for palette/CMYK/…, the NumPy copy, the float32 RGBA + alpha arrays of alpha
    compositing or (later, so the larger of the two) the float64 working copy of
    :mod:`.intensity`; plus the float32 frames returned for every selected frame.
    """
    pixels = width * height
    multi = mode not in ("1", "L", "P", "I", "F") and not mode.startswith("I;16")
    pil = 4 if multi or mode in ("I", "F") else 2 if mode.startswith("I;16") else 1
    out_mode = mode
    converted = 0
    if mode == "P":
        out_mode = "RGBA" if has_transparency else "RGB"
        converted = 4
    elif mode not in ("1", "L", "I", "F", "RGB") + _ALPHA_MODES and not mode.startswith("I;16"):
        out_mode, converted = "RGB", 4
    channels = 1 if out_mode in ("1", "L", "I", "F", "LA", "La") or out_mode.startswith("I;16") else 3
    array_item = {"I": 8, "F": 4}.get(out_mode, 2 if out_mode.startswith("I;16") else 1)
    cost = DecodeCost(shape_text(n_selected, height, width, Image.getmodebands(mode), mode))
    cost.add("Pillow image", pixels * pil)
    if converted:
        cost.add("Pillow conversion", pixels * converted)
    cost.add("array copy", pixels * channels * array_item)
    # alpha compositing (float32 RGBA + alpha) is over before the float64 working copy is made
    alpha = pixels * (channels + 2) * FLOAT32 if out_mode in _ALPHA_MODES else 0
    cost.add("float working copies of one frame", max(alpha, pixels * channels * FLOAT64))
    cost.add("float32 frames", n_selected * pixels * channels * FLOAT32)
    return cost


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
    if mode in _ALPHA_MODES:
        rgba = np.asarray(frame.convert("LA" if mode in ("LA", "La") else "RGBA"), dtype=np.float32)
        alpha = rgba[..., -1:] / 255.0
        colour = rgba[..., :-1]  # composited in place: round(colour × alpha), clipped
        np.multiply(colour, alpha, out=colour)
        np.round(colour, out=colour)
        np.clip(colour, 0, 255, out=colour)
        out = colour.astype(np.uint8)
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
    *,
    budget: int | None = None,
) -> list[MedImage]:
    """Decode the selected frames of a raster file; ``sniffed`` names the magic-number format.

    The decode is checked against the byte ``budget`` from Pillow's header before any pixel
    is decoded (:func:`raster_cost`).
    """
    fmt = sniffed or "image"
    budget = current_budget(budget)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_regular(path) as fh, Image.open(fh) as im:
                fmt = _FORMATS.get(str(im.format), str(im.format).lower())
                n = int(getattr(im, "n_frames", 1) or 1)
                indices = select(n)
                check_frame_size(path, im.size[1], im.size[0])
                check_total_size(path, len(indices), im.size[1], im.size[0], len(im.getbands()))
                raster_cost(im.mode, im.size[0], im.size[1], len(indices),
                            has_transparency="transparency" in im.info).check(path, budget)
                images = []
                for i in indices:
                    if n > 1:
                        im.seek(i)
                    w, h = im.size
                    check_frame_size(path, h, w)
                    if n > 1:  # frames may differ in size or mode (animated GIF, multi-page TIFF)
                        raster_cost(im.mode, w, h, len(indices),
                                    has_transparency="transparency" in im.info).check(path, budget)
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
    except MemoryError as exc:
        raise UnreadableImageError(path, f"out of memory decoding {fmt.upper()} data") from exc
    except Exception as exc:  # any other decoder error is still this file's problem
        raise UnreadableImageError(path, f"cannot decode {fmt.upper()} data: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:  # native plugin panics are not Exceptions
        reraise_fatal(exc)
        raise UnreadableImageError(path, f"pixel decoder crashed ({fmt.upper()}): {type(exc).__name__}: {exc}") from exc
