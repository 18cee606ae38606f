"""Memory budget per decode, in bytes, checked from the header BEFORE any pixel is allocated.

Every reader estimates what one decode holds at its peak — the encoded data kept in memory,
the decoded array (frames × rows × columns × samples × the decoder's dtype), the float
working copies of :mod:`.intensity` and the float32 frames returned — and calls
:func:`check_budget` before decoding. A file over the budget is an
:class:`UnreadableImageError` naming the file, its dimensions, the bytes needed and the
budget. Only frames that are really decoded count (``max_frames`` subsets count less).

The budget is :data:`DECODE_BUDGET_BYTES` (default 1 GiB: a 2-core / 24 GB machine can run a
few decodes at once), set from the environment variable ``MEDFORENSICS_DECODE_BUDGET``
(bytes, or with a unit: ``512M``, ``2G``, ``1.5GiB``) when the module is imported, and
overridable per call (``load(..., decode_budget=...)``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .types import UnreadableImageError

ENV_VAR = "MEDFORENSICS_DECODE_BUDGET"
DEFAULT_DECODE_BUDGET_BYTES = 1 << 30

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """``"1073741824"``, ``"512M"``, ``"2G"``, ``"1.5GiB"`` → bytes (binary units). Raises ValueError."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a byte size: {text!r} (expected e.g. 1073741824, 512M, 2G)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"a decode budget must be positive, got {text!r}")
    return value


def _from_env() -> int:
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_DECODE_BUDGET_BYTES
    try:
        return parse_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_VAR}: {exc}") from None


#: Bytes one decode may hold at its peak (see the module docstring).
DECODE_BUDGET_BYTES: int = _from_env()


def current_budget(override: int | str | None = None) -> int:
    """The per-call ``override`` when given, else :data:`DECODE_BUDGET_BYTES`."""
    return parse_bytes(override) if override is not None else DECODE_BUDGET_BYTES


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class DecodeBudgetError(UnreadableImageError):
    """A decode that would need more memory than the budget (subclass of the one reader error)."""

    def __init__(self, path: str | Path, what: str, needed: int, budget: int):
        self.needed = int(needed)
        self.budget = int(budget)
        super().__init__(
            path,
            f"too large to decode: {what} needs about {human_bytes(needed)} ({needed:,} bytes), "
            f"over the decode budget of {human_bytes(budget)} ({budget:,} bytes; {ENV_VAR})",
        )


@dataclass
class DecodeCost:
    """An itemised estimate of one decode's peak memory."""

    what: str  # e.g. "3 frames of 7000×7000×3 uint8"
    parts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, nbytes: int | float) -> "DecodeCost":
        self.parts[name] = self.parts.get(name, 0) + int(nbytes)
        return self

    @property
    def total(self) -> int:
        return sum(self.parts.values()) + OVERHEAD_BYTES

    def check(self, path: str | Path, budget: int) -> None:
        """Raise :class:`DecodeBudgetError` when :attr:`total` exceeds ``budget``."""
        if self.total > budget:
            raise DecodeBudgetError(path, self.what, self.total, budget)


def shape_text(n_frames: int, rows: int, cols: int, samples: int = 1, dtype: str = "") -> str:
    per = f"{cols}×{rows}" + (f"×{samples}" if samples > 1 else "")
    frames = f"{n_frames} frame{'s' if n_frames != 1 else ''} of " if n_frames != 1 else ""
    return f"{frames}{per}" + (f" {dtype}" if dtype else "")


#: Added to every estimate: decoder buffers, pydicom/Pillow/nibabel objects, small temporaries.
OVERHEAD_BYTES = 16 << 20

# Bytes per value of the float working copies in .intensity: the float64 copy _scale makes,
# and the float32 frame it returns.
FLOAT64 = 8
FLOAT32 = 4
