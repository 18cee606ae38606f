"""Inputs of the benchmark builder: real images, generator folders and their training sources."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...data import Manifest, ManifestRow, index_folder, infer_family
from .options import MANIFEST_FILE, SOURCES_FILE


def load_real_manifest(source: str | Path, modality: str | None = None) -> Manifest:
    """Real images from ``"shared"``, a manifest file, a folder with ``manifest.csv``, a
    ``real/<modality>/<source>/`` folder, or a flat folder of images of one ``modality``."""
    from ...data import shared_manifest

    if str(source) == "shared":
        man = shared_manifest()
    else:
        path = Path(source).expanduser()
        if path.is_file():
            man = Manifest.read(path)
        elif (path / MANIFEST_FILE).is_file():
            man = Manifest.read(path / MANIFEST_FILE)
        elif path.is_dir() and ((path / "real").is_dir() or (path / "fake").is_dir()):
            man = index_folder(path)
        elif path.is_dir():
            if not modality:
                raise ValueError(f"{path}: a flat folder of images needs a modality (--modality)")
            man = _flat_folder(path, "real", modality, path.name, "")
        else:
            raise FileNotFoundError(f"real images not found: {path}")
    reals = man.filter(label="real")
    if modality:
        reals = reals.filter(modality=modality)
    if not len(reals):
        raise ValueError(f"{source}: no real images{' of modality ' + modality if modality else ''}")
    return reals


def _flat_folder(folder: Path, label: str, modality: str, source: str, family: str) -> Manifest:
    from ...data.manifest import is_image_file

    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    rows = [ManifestRow(path=os.path.relpath(p, folder), label=label, modality=modality, source=source,
                        generator=source if label == "fake" else "", family=family) for p in files]
    return Manifest(rows, folder)


def load_fake_source(
    path: str | Path,
    *,
    modality: str | None = None,
    n_samples: int | None = None,
    sample_dir: str | Path | None = None,
    seed: int = 0,
) -> Manifest:
    """Fake rows from a generator folder: a manifest file, a folder with ``manifest.csv`` (e.g.
    written by ``sample_to_folder``), a ``fake/<modality>/<generator>/`` tree, a saved generator
    model directory (``n_samples`` are then drawn into ``sample_dir``), or a flat folder of images
    (needs ``modality``; the folder name is the generator)."""
    path = Path(path).expanduser()
    if path.is_file():
        man = Manifest.read(path)
    elif (path / MANIFEST_FILE).is_file():
        man = Manifest.read(path / MANIFEST_FILE)
    elif path.is_dir() and (path / "fake").is_dir():
        man = index_folder(path)
    elif path.is_dir() and _is_generator_dir(path):
        man = sample_generator_dir(path, n_samples=n_samples, out_dir=sample_dir, modality=modality, seed=seed)
        modality = None  # already the generator's
    elif path.is_dir():
        if not modality:
            raise ValueError(f"{path}: a flat folder of fakes needs a modality")
        man = _flat_folder(path, "fake", modality, path.name, _generator_family(path, path.name))
    else:
        raise FileNotFoundError(f"generator folder not found: {path}")
    fakes = man.filter(label="fake")
    if modality:
        fakes = fakes.filter(modality=modality)
    if not len(fakes):
        raise ValueError(f"{path}: no fake images")
    rows = []
    for r in fakes:
        gen = r.generator or r.source or path.name
        rows.append(r.copy(generator=gen, source=r.source or gen, family=r.family or infer_family(gen), patient_id=""))
    return fakes.with_rows(rows)


def _generator_family(folder: Path, name: str) -> str:
    info = folder / "GENERATOR.json"
    if info.is_file():
        try:
            fam = json.loads(info.read_text()).get("family", "")
            if fam:
                return str(fam)
        except (json.JSONDecodeError, AttributeError):
            pass
    return infer_family(name)


def _is_generator_dir(path: Path) -> bool:
    """A model directory written by ``synth.generators.Generator.save``."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == "medforensics-generator"
    except (json.JSONDecodeError, AttributeError):
        return False


def sample_generator_dir(
    path: Path, *, n_samples: int | None, out_dir: str | Path | None, modality: str | None = None, seed: int = 0,
    name: str | None = None,
) -> Manifest:
    """Draw ``n_samples`` from a saved generator (``synth.generators.load_generator``) into
    ``out_dir`` at the generator's native resolution (the builder upsamples them like the reals);
    an existing ``out_dir/manifest.csv`` is reused."""
    if out_dir is None:
        raise ValueError(f"{path}: sampling a generator needs a folder to write the samples to")
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_FILE).is_file():
        return Manifest.read(out_dir / MANIFEST_FILE)
    if not n_samples:
        raise ValueError(f"{path} is a generator model directory: say how many samples to draw (--samples N)")
    if not modality:
        raise ValueError(f"{path}: a generator model directory does not record its modality; pass --modality")
    from ...synth.generators import load_generator, sample_to_folder

    gen = load_generator(path)
    return sample_to_folder(gen, int(n_samples), out_dir, modality=modality, generator_name=name or path.name,
                            seed=seed, size=gen.resolution, manifest_path=out_dir / MANIFEST_FILE, progress=False)


def generator_sources(folder: str | Path, name: str | None = None) -> dict[str, set[str]]:
    """Generator name → absolute paths of the real images it was trained on, from ``bench_sources.json``.

    The file is looked up in ``folder`` (the parent of a manifest file), or above a ``samples/``
    folder (the layout ``bench run`` writes: ``generators/<name>/samples`` next to the file). A
    generator folder's file lists one generator's sources (``{"sources": [paths]}``, keyed by
    ``name`` or the folder's name); a built benchmark's file maps each generator to its sources
    (``{"sources": {generator: [paths]}}``), so a benchmark rebuilt from it keeps the same pins.
    ``{}`` when no file is found.
    """
    folder = Path(folder).expanduser()
    if folder.is_file():
        folder = folder.parent
    candidates = [folder / SOURCES_FILE]
    if folder.name == "samples":
        candidates.append(folder.parent / SOURCES_FILE)
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        return {}
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: invalid JSON ({exc})") from exc
    listed = data.get("sources") if isinstance(data, dict) else None
    if isinstance(listed, list) and all(isinstance(p, str) for p in listed):
        key = name or (file.parent.name if folder.name == "samples" else folder.name)
        return {key: {os.path.normpath(p) for p in listed}}
    if isinstance(listed, dict) and all(isinstance(v, list) and all(isinstance(p, str) for p in v)
                                        for v in listed.values()):
        return {str(k): {os.path.normpath(p) for p in v} for k, v in listed.items()}
    raise ValueError(f'{file}: "sources" must be a list of paths or a mapping of generator to a list of paths')


def write_sources(out: Path, sources: dict[str, set[str]]) -> Path:
    """Write the pins of a build (generator → training images) as ``out/bench_sources.json``."""
    path = Path(out) / SOURCES_FILE
    path.write_text(json.dumps({"sources": {g: sorted(p) for g, p in sorted(sources.items())}}, indent=2) + "\n")
    return path
