"""Assemble a balanced real/fake benchmark whose file history cannot separate the classes.

``build_benchmark(real, fakes, out)`` writes ``out/real/<modality>/<source>/*.png``,
``out/fake/<modality>/<generator>/*.png``, ``out/manifest.csv``, ``out/build.json`` and, when
generators' training sources are known, ``out/bench_sources.json``. The steps, one module each:

* :mod:`.inputs` — reals, generator folders (or model directories, sampled on demand) and the
  reals each generator was trained on (``bench_sources.json``, :func:`generator_sources`);
* :mod:`.split` — patient-level split of the reals (training sources pinned to train, imported
  fakes and their patient groups to test), per-sample split of generated fakes, and the balance
  per (modality, split);
* :mod:`.pipeline` — **one pipeline for both classes**: load (modality-aware, float32 in [0, 1]),
  optionally the stored state of a fake (**matched resolution**: a real is first standardised to
  the native side of a fake of its modality and quantised to 8 bits; a matched real of a published
  fake also gets that fake's JPEG history), standardise to ``size``, optional matched
  post-processing (resize round trip, JPEG), an 8-bit PNG in one colour mode per modality;
* :mod:`.assemble` — :func:`build_benchmark`: writes the images, the manifest (checked for
  leakage), the pins, thumbnail grids and the report; each imported (published) fake gets one
  test real of the same modality and a compatible anatomy with its file history (**matched reals**);
* :mod:`.format_check` — :func:`format_statistics_check`: do file-format statistics predict the
  label? A properly built benchmark passes it.
"""

from .assemble import build_benchmark, write_grids
from .format_check import (
    CONTAINER_FEATURES,
    SIZE_FEATURES,
    FormatReport,
    format_features,
    format_statistics_check,
)
from .inputs import generator_sources, load_fake_source, load_real_manifest, sample_generator_dir, write_sources
from .options import BUILD_FILE, MANIFEST_FILE, ROLES, SOURCES_FILE, BuildOptions, BuildResult
from .pipeline import pipeline, save_png
from .split import benchmark_split, split_reals

__all__ = [
    "BUILD_FILE", "CONTAINER_FEATURES", "MANIFEST_FILE", "ROLES", "SIZE_FEATURES", "SOURCES_FILE", "BuildOptions",
    "BuildResult", "FormatReport", "benchmark_split", "build_benchmark", "format_features", "format_statistics_check",
    "generator_sources", "load_fake_source", "load_real_manifest", "pipeline", "sample_generator_dir", "save_png",
    "split_reals", "write_grids", "write_sources",
]
