"""Fixtures shared by the whole test suite.

- ``shared_data``: the project's shared data folder (``$MEDFORENSICS_SHARED_DATA`` or
  ``<repo>/../shared/data``); tests using it are skipped where it is absent, except in CI
  (``CI=true``), where its absence is a failure.
- ``require_tool`` (fixture) / ``@pytest.mark.requires_tool("chromium", package="chromium")``:
  the path of a system command the test drives; the test is skipped with the reason (shown by
  ``-ra``) where the command is not on ``PATH``, except in CI, where its absence is a failure.
  ``make test`` installs the packages when it may (``scripts/system-deps.sh``).
- ``tiny_manifest``: a handful of small PNGs (real/fake × xray/endoscopy, several patients)
  written to ``tmp_path`` with a ``manifest.csv``; returns the :class:`Manifest` (its ``.path``
  is the CSV file, ``.root`` the folder).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_COLUMNS = ["path", "label", "modality", "source", "generator", "family", "patient_id", "split", "original_path", "mask", "notes"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared data folder (holding ``manifest.csv``)."""
    from medforensics.data.shared import shared_data_dir

    try:
        return shared_data_dir()
    except FileNotFoundError as exc:
        if _in_ci():
            pytest.fail(f"shared data is required in CI: {exc}")
        pytest.skip(f"shared data not available: {exc}")


def find_tool(command: str, version_contains: str | None = None) -> str | None:
    """The first ``command`` on ``PATH`` (whose ``--version`` output contains ``version_contains``), or None."""
    for folder in os.get_exec_path():
        path = shutil.which(command, path=folder)
        if path is None:
            continue
        if version_contains is None:
            return path
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version_contains in done.stdout + done.stderr:
            return path
    return None


def require_tool(*commands: str, package: str, version_contains: str | None = None) -> list[str]:
    """Paths of ``commands`` on ``PATH``; skip (fail in CI) naming the Debian ``package`` when one is missing.

    ``version_contains`` tells the wanted program from a look-alike of the same name (pynetdicom puts
    Python ``storescu``/``echoscu`` scripts into the virtualenv; dcmtk's print ``$dcmtk:``).
    """
    found = {cmd: find_tool(cmd, version_contains) for cmd in commands}
    absent = [cmd for cmd, path in found.items() if path is None]
    if absent:
        which = f" (one whose --version says {version_contains!r})" if version_contains else ""
        reason = (f"{', '.join(absent)}{which} not found on PATH: install Debian package {package!r} "
                  f"(`make test` installs it when run as root or with passwordless sudo)")
        if _in_ci():
            pytest.fail(f"required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return [found[cmd] for cmd in commands]


@pytest.fixture(name="require_tool", scope="session")
def require_tool_fixture():
    """:func:`require_tool` for tests and fixtures: ``chromium, = require_tool("chromium", package="chromium")``."""
    return require_tool


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_tool(*commands, package): skip (fail in CI) when a system "
                                       "command is missing; see require_tool")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("requires_tool"):
        require_tool(*mark.args, **mark.kwargs)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_tiny_dataset(folder: Path, seed: int = 0) -> Path:
    """Write 16 small PNGs and ``manifest.csv`` into ``folder``; return the manifest path.

    real/xray/srcA: 3 patients × 2 grey 40×48 images; real/endoscopy/srcB: 2 patients × 2 RGB
    36×36 images; fake/xray/genX (diffusion): 4 grey 32×32 images, two of them crops of one
    figure; fake/endoscopy/genY (gan): 2 RGB 36×36 images, one tampered with a mask PNG.
    """
    rng = np.random.default_rng(seed)
    records: list[dict[str, str]] = []

    def add(rel: str, pixels: np.ndarray, label: str, modality: str, source: str, **kw: str) -> None:
        _save(folder / rel, pixels)
        gen = source if label == "fake" else ""
        records.append({"path": rel, "label": label, "modality": modality, "source": source, "generator": gen,
                        "family": kw.get("family", ""), "patient_id": kw.get("patient_id", "NA"), "split": "",
                        "original_path": kw.get("original_path", ""), "mask": kw.get("mask", ""),
                        "notes": kw.get("notes", "")})

    for p in range(3):
        for k in range(2):
            add(f"real/xray/srcA/p{p}_{k}.png", rng.integers(0, 256, (40, 48), dtype=np.uint8), "real", "xray", "srcA",
                patient_id=f"P{p}")
    for p in range(2):
        for k in range(2):
            add(f"real/endoscopy/srcB/s{p}_{k}.png", rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), "real",
                "endoscopy", "srcB", patient_id=f"S{p}", notes="colour, with a comma")
    for k in range(4):
        add(f"fake/xray/genX/x{k}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8), "fake", "xray", "genX",
            family="diffusion", original_path="fig1.png#crop(x=0)" if k < 2 else f"sample{k}.png")
    mask = np.zeros((36, 36), np.uint8)
    mask[8:20, 10:30] = 255
    _save(folder / "fake/endoscopy/genY/masks/y0.png", mask)
    add("fake/endoscopy/genY/y0.png", rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), "fake", "endoscopy", "genY",
        family="gan", mask="fake/endoscopy/genY/masks/y0.png")
    add("fake/endoscopy/genY/y1.png", rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), "fake", "endoscopy", "genY",
        family="gan")

    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TINY_COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    return manifest


@pytest.fixture
def tiny_manifest(tmp_path: Path):
    """A small real/fake, two-modality :class:`~medforensics.data.Manifest` on disk."""
    from medforensics.data import Manifest

    return Manifest.read(write_tiny_dataset(tmp_path / "tiny"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained but complete tiny forensic_cnn model directory, τ = 0.5 (fast to load and run)."""
    from medforensics.detectors import create_detector

    det = create_detector("forensic_cnn", seed=0, width=8, patch_size=64, patch_stride=64, progress=False)
    det.set_threshold(0.5, method="test")
    return det.save(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def tiny_detector(tiny_model_dir):
    """The detector of :func:`tiny_model_dir`, loaded once."""
    from medforensics.detectors import load_detector

    return load_detector(tiny_model_dir)


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
