"""``medforensics demo``: the main job on sample data shipped by pip packages.

Takes the real DICOMs of ``pydicom`` / ``pydicom-data`` (CT, MR, X-ray, ultrasound, …), makes
tampered copies of them with the tampering tool (lesion injection and removal) and writes them back
into DICOM as an attacker would (:func:`medforensics.io.dicom_write.write_back_pixels`: a copy of the
original data set, the tampered pixels in its stored representation, every other header kept), so
that originals and copies go through the same reader. Adds one deliberately truncated file to show
error handling, scans everything with the default model and writes a table, JSON and an HTML report.
``inputs/tampered/ground_truth.json`` records each copy (source, attack, frame, transfer syntax, header
elements that changed, pixels written) and ``masks/<copy>.mask.png`` the pixels written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from ..eval.report import write_scan_report
from ..io import IntensityConfig, UnreadableImageError, load, sample_dicoms
from ..io.dicom_write import WriteBackError, write_back_pixels
from ..io.walk import frame_indices
from ..engine import ScanEngine
from ..outputs import result_table, write_csv, write_json
from ..synth.tamper import tamper
from .common import console, open_model


MIN_SIDE = 64  # the tampering tool's lesions need room
SCAN_MAX_FRAMES = 16  # frames the demo's scan reads per multi-frame file (the engine's default)


def prepare_inputs(
    out: Path, seed: int = 0, max_samples: int | None = None, intensity: IntensityConfig | None = None,
    max_frames: int | None = SCAN_MAX_FRAMES,
) -> Path:
    """Copy sample DICOMs into ``out/inputs/real`` and write tampered DICOM copies to ``out/inputs/tampered``.

    The tampering runs on one frame, read with ``intensity`` (the scanning model's reader settings):
    of a multi-frame file, the frame nearest the middle among the ``max_frames`` the scan reads
    (:func:`medforensics.io.walk.frame_indices`), so that the scan sees the tampered frame; the result is
    written back into a copy of the original file. Samples whose pixels cannot be written back (or
    read, or are too small) are skipped; each reason is printed once with the samples it covers.
    """
    real_dir, fake_dir = out / "inputs" / "real", out / "inputs" / "tampered"
    mask_dir = out / "masks"  # outside inputs/: not scanned
    for folder in (real_dir, fake_dir, mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for old in [*fake_dir.glob("*"), *mask_dir.glob("*")]:  # a re-run replaces the copies (and older PNG ones)
        if old.is_file():
            old.unlink()
    config = intensity or IntensityConfig()
    rng = np.random.default_rng(seed)
    samples = sorted(sample_dicoms().items())
    if max_samples is not None:  # evenly spread over the (modality-ordered) list
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_samples).round().astype(int)]
    skipped: dict[str, list[str]] = {}
    truth: list[dict] = []
    for name, src in samples:
        name = name.removesuffix(".dcm").replace("/", "_")
        dst = real_dir / f"{name}.dcm"
        shutil.copyfile(src, dst)
        try:
            image = load(src, intensity=config)
        except UnreadableImageError as err:
            skipped.setdefault(f"unreadable: {err.reason}", []).append(name)
            continue
        n = image.meta.n_frames
        if n > 1:
            k = min(frame_indices(n, max_frames), key=lambda i: (abs(i - n // 2), i))
            if k != image.meta.frame_index:
                image = load(src, frame=k, intensity=config)
        if min(image.pixels.shape[:2]) < MIN_SIDE:
            skipped.setdefault(f"smaller than {MIN_SIDE} pixels, too small to tamper", []).append(name)
            continue
        for kind in ("inject", "remove"):
            tampered, mask = tamper(image, kind, rng)
            copy = fake_dir / f"{name}.{kind}.dcm"
            try:
                info = write_back_pixels(src, tampered.pixels, mask, copy, frame=image.meta.frame_index,
                                         config=config)
            except WriteBackError as err:
                skipped.setdefault(f"pixels cannot be written back: {err}", []).append(f"{name} ({kind})")
                continue
            written = info.pop("mask")
            mask_file = mask_dir / f"{copy.name}.mask.png"
            Image.fromarray(written.astype(np.uint8) * 255).save(mask_file)
            ys, xs = np.nonzero(written)
            truth.append({"file": copy.name, "source": str(src), "attack": kind,
                          **tampered.meta.extra["tamper"], **info, "mask": str(mask_file.relative_to(out)),
                          "bbox_yx": [int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())]})
    for reason, names in skipped.items():  # each reason once; a sample skipped for both attacks named once
        both = [n for n in names if n.endswith(" (inject)") and n.replace("(inject)", "(remove)") in names]
        names = [n.removesuffix(" (inject)") if n in both else n for n in names
                 if n.replace("(remove)", "(inject)") not in both]
        console.print(f"  skipped {', '.join(names)}: {reason}")
    (fake_dir / "ground_truth.json").write_text(json.dumps({"seed": seed, "copies": truth}, indent=1))
    broken = real_dir / "truncated.dcm"
    data = (real_dir / sorted(p.name for p in real_dir.glob("*.dcm") if p != broken)[0]).read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    return out / "inputs"


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder for inputs, JSON, CSV and report."),
    model: str = typer.Option("default", "--model", "-m", help="Model to scan with."),
    seed: int = typer.Option(0, help="Tampering seed."),
    max_samples: int | None = typer.Option(None, help="Use at most this many sample DICOMs (default: all)."),
) -> None:
    """Tamper real sample DICOMs, scan originals and copies, write report.html."""
    if out.exists() and any(out.iterdir()) and not (out / ".medforensics-demo").exists():
        console.print(f"[red]error:[/] {out} exists and is not a demo folder; choose another --out")
        raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".medforensics-demo").touch()
    detector = open_model(model)
    preprocessing = getattr(detector, "preprocessing", None)
    console.print(f"[bold]1/3[/] preparing sample DICOMs and tampered DICOM copies in {out / 'inputs'}")
    inputs = prepare_inputs(out, seed, max_samples, getattr(preprocessing, "intensity", None))
    console.print(f"[bold]2/3[/] scanning with model {model!r} ({detector.name}, τ = {detector.threshold:.4f})")
    with ScanEngine(detector, with_maps=True, max_frames=SCAN_MAX_FRAMES) as engine:
        results = list(engine.scan([inputs]))
    console.print(result_table(results))
    console.print("[bold]3/3[/] writing outputs")
    info = {"model": model, "detector": detector.name, "threshold": detector.threshold,
            "calibration": {k: v for k, v in detector.calibration.items() if k != "real_val_scores"}}
    write_json(results, out / "results.json", info)
    write_csv(results, out / "results.csv")
    report = write_scan_report(results, out / "report.html", title="medforensics demo", model_info=info,
                               threshold=detector.threshold)
    flagged = {"real": 0, "tampered": 0}
    totals = {"real": 0, "tampered": 0}
    for r in results:
        if r.ok:
            group = "tampered" if "/tampered/" in r.path.replace("\\", "/") else "real"
            totals[group] += 1
            flagged[group] += r.verdict == "fake"
    console.print(
        f"flagged {flagged['tampered']}/{totals['tampered']} tampered copies and {flagged['real']}/{totals['real']} "
        f"real DICOMs; {sum(not r.ok for r in results)} unreadable file(s) reported"
    )
    console.print(f"report: {report}\nJSON: {out / 'results.json'}\nCSV: {out / 'results.csv'}")
