"""Fixtures of the benchmark tests: a toy built benchmark (session-scoped, built once)."""

from __future__ import annotations

import pytest
from bench_toy_data import write_generator_folders, write_published, write_reals


@pytest.fixture(scope="session")
def toy_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_inputs")
    return {
        "real": write_reals(root / "reals"),
        "generators": write_generator_folders(root / "gens"),
        "published": write_published(root / "published"),
    }


@pytest.fixture(scope="session")
def toy_benchmark(toy_inputs, tmp_path_factory):
    """A benchmark at 32 px built from the toy inputs (with published fakes and matched reals)."""
    from medforensics.benchmark.build import BuildOptions, build_benchmark, load_fake_source, load_real_manifest
    from medforensics.data import Manifest

    out = tmp_path_factory.mktemp("bench") / "toy"
    result = build_benchmark(
        load_real_manifest(toy_inputs["real"]),
        [load_fake_source(g) for g in toy_inputs["generators"]],
        out,
        imported=Manifest.read(toy_inputs["published"]),
        options=BuildOptions(size=32, matched_real=True),
        show_progress=False,
    )
    return result
