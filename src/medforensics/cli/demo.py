"""``medforensics demo``: the main job on sample data shipped by pip packages.

Takes the real DICOMs of ``pydicom`` / ``pydicom-data`` (CT, MR, X-ray, ultrasound, …), makes
tampered copies of them with the tampering tool (lesion injection and removal, saved as 16-bit
PNG so no precision is lost), adds one deliberately truncated file to show error handling, scans
everything with the default model and writes a table, JSON and an HTML report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from ..eval.report import write_scan_report
from ..io import UnreadableImageError, load, sample_dicoms
from ..engine import ScanEngine
from ..outputs import result_table, write_csv, write_json
from ..synth.tamper import tamper
from .common import console, open_model


def _save_png(pixels: np.ndarray, path: Path) -> None:
    if pixels.ndim == 2:
        Image.fromarray(np.clip(np.rint(pixels * 65535), 0, 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)).save(path)


def prepare_inputs(out: Path, seed: int = 0, max_samples: int | None = None) -> Path:
    """Copy sample DICOMs into ``out/inputs/real`` and write tampered copies to ``out/inputs/tampered``."""
    real_dir, fake_dir = out / "inputs" / "real", out / "inputs" / "tampered"
    real_dir.mkdir(parents=True, exist_ok=True)
    fake_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = sorted(sample_dicoms().items())
    if max_samples is not None:  # evenly spread over the (modality-ordered) list
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_samples).round().astype(int)]
    for name, src in samples:
        name = name.removesuffix(".dcm").replace("/", "_")
        dst = real_dir / f"{name}.dcm"
        shutil.copyfile(src, dst)
        try:
            image = load(src)
        except UnreadableImageError as err:
            console.print(f"  skipped {name}: {err.reason}")
            continue
        if min(image.pixels.shape[:2]) < 64:
            continue
        for kind in ("inject", "remove"):
            tampered, _ = tamper(image, kind, rng)
            _save_png(tampered.pixels, fake_dir / f"{name}.{kind}.png")
    broken = real_dir / "truncated.dcm"
    data = (real_dir / sorted(p.name for p in real_dir.glob("*.dcm"))[0]).read_bytes()
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
    console.print(f"[bold]1/3[/] preparing sample DICOMs and tampered copies in {out / 'inputs'}")
    inputs = prepare_inputs(out, seed, max_samples)
    detector = open_model(model)
    console.print(f"[bold]2/3[/] scanning with model {model!r} ({detector.name}, τ = {detector.threshold:.4f})")
    with ScanEngine(detector, with_maps=True) as engine:
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
