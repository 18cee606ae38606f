"""Options, result and file names of the benchmark builder, and its seeded ranking."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...data import Manifest
from ...data.processing import MatchedProcessing

BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.csv"
#: training images of a generator (``{"sources": [paths]}`` in a generator folder) or, in a built
#: benchmark, the pins it was built with (``{"sources": {generator: [paths]}}``)
SOURCES_FILE = "bench_sources.json"
ROLES = ("real", "factory", "published", "matched_real")


@dataclass
class BuildOptions:
    """Options of :func:`~medforensics.benchmark.build.build_benchmark` (see the package docstring)."""

    size: int = 256
    fit: str = "center_crop"
    per_class: int | None = None  # images per class per modality (train + test); None = all that balance
    jpeg_quality: int | None = None  # matched post-processing, both classes
    resize: float | None = None  # matched resize round trip (scale), both classes
    match_resolution: bool = True
    matched_real: bool = True
    max_imported_per_generator: int | None = None  # cap on imported fakes per generator (seeded draw)
    assumed_jpeg_quality: int = 85
    test_fraction: float = 0.2
    seed: int = 0
    modalities: tuple[str, ...] | None = None
    compress_level: int = 6
    format_tolerance: float = 0.6
    grid: bool = True

    def post(self) -> MatchedProcessing | None:
        if self.jpeg_quality is None and self.resize in (None, 1.0):
            return None
        return MatchedProcessing(scale=self.resize, jpeg_quality=self.jpeg_quality)


@dataclass
class BuildResult:
    manifest: Manifest
    manifest_path: Path
    report: dict[str, Any]


def rank(seed: int, key: str) -> int:
    """A seeded, order-free rank of ``key`` (sha256): the builder's every "random" choice."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
