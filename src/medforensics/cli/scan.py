"""``medforensics scan``: score files and folders, print a table, write JSON/CSV/HTML."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..eval.calibration import threshold_at_fpr
from ..eval.report import write_scan_report
from ..io import iter_files
from ..io.types import UnreadableImageError
from ..results import ScanResult
from ..scan import scan_paths
from .common import console, open_model, refuse_overwrite


def scan(
    paths: list[Path] = typer.Argument(..., help="Files or folders (walked recursively)."),
    model: str = typer.Option("default", "--model", "-m", help="Shipped model name or model directory."),
    threshold: float | None = typer.Option(None, help="Decision threshold on the fake probability."),
    fpr: float | None = typer.Option(
        None, help="Operating point as a false-positive rate on the model's stored real validation scores."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write results as CSV."),
    report: Path | None = typer.Option(None, "--report", help="Write an HTML report with thumbnails and heat-maps."),
    max_frames: int = typer.Option(16, help="Frames/slices scored per multi-frame file or volume."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
) -> None:
    """Scan images; exit status 1 when any file failed, 0 otherwise."""
    for out in (json_out, csv_out, report):
        refuse_overwrite(out, force)
    if threshold is not None and fpr is not None:
        console.print("[red]error:[/] give --threshold or --fpr, not both")
        raise typer.Exit(2)
    detector = open_model(model)
    tau = resolve_threshold(detector, threshold, fpr)
    try:
        files = list(iter_files(paths))
    except UnreadableImageError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    results: list[ScanResult] = []
    with Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("scan", total=len(files))
        for res in scan_paths(files, detector, threshold=tau, max_frames=max_frames, with_maps=report is not None):
            results.append(res)
            bar.advance(task)
    console.print(result_table(results))
    n_err = sum(not r.ok for r in results)
    n_fake = sum(r.verdict == "fake" for r in results)
    console.print(f"{len(results)} files: {n_fake} flagged fake, {len(results) - n_fake - n_err} real, {n_err} errors "
                  f"(model {model}, threshold {tau:.4f})")
    info = {"model": model, "detector": detector.name, "threshold": tau,
            "calibration": {k: v for k, v in detector.calibration.items() if k != "real_val_scores"}}
    if json_out:
        write_json(results, json_out, info)
        console.print(f"JSON: {json_out}")
    if csv_out:
        write_csv(results, csv_out)
        console.print(f"CSV: {csv_out}")
    if report:
        write_scan_report(results, report, title="medforensics scan", model_info=info, threshold=tau)
        console.print(f"report: {report}")
    raise typer.Exit(1 if n_err else 0)


def resolve_threshold(detector, threshold: float | None, fpr: float | None) -> float:
    """--threshold, else --fpr against the model's stored real validation scores, else the calibrated τ."""
    if threshold is not None:
        return float(threshold)
    if fpr is not None:
        real_scores = detector.calibration.get("real_val_scores")
        if not real_scores:
            console.print("[red]error:[/] this model stores no real validation scores; use --threshold")
            raise typer.Exit(2)
        return float(threshold_at_fpr(real_scores, fpr))
    return float(detector.threshold)


def result_table(results: list[ScanResult]) -> Table:
    table = Table(show_lines=False)
    for col in ("file", "modality", "score", "verdict", "error"):
        table.add_column(col, overflow="fold")
    for r in results:
        verdict = {"fake": "[bold red]fake[/]", "real": "[green]real[/]"}.get(r.verdict or "", "")
        table.add_row(r.path, r.modality or "", "" if r.score is None else f"{r.score:.4f}", verdict, r.error or "")
    return table


FIELDS = ("path", "modality", "score", "verdict", "error")


def write_json(results: list[ScanResult], path: Path, info: dict) -> None:
    payload = {
        "model": info["model"], "detector": info["detector"], "threshold": info["threshold"],
        "results": [{**{k: getattr(r, k) for k in FIELDS}, "frames": r.frames, "meta": r.meta} for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def write_csv(results: list[ScanResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        for r in results:
            writer.writerow(["" if getattr(r, k) is None else getattr(r, k) for k in FIELDS])
