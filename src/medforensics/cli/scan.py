"""``medforensics scan``: score files and folders, print a table, write JSON/CSV/HTML."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..engine.series import DEFAULT_MAX_SLICES
from ..eval.calibration import threshold_at_fpr
from ..eval.report import write_scan_report
from ..outputs import StreamWriters, result_table, series_table
from ..results import ScanResult
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
    report: Path | None = typer.Option(None, "--report", help="Write an HTML report with thumbnails and heat-maps "
                                       "(keeps a small thumbnail per file in memory: leave out for huge runs)."),
    max_frames: int | None = typer.Option(None, help="Frames scored per multi-frame file or volume, evenly spaced "
                                          "(default: --max-slices)."),
    max_slices: int = typer.Option(DEFAULT_MAX_SLICES, "--max-slices", min=2, help="Guard: slices scored per volume / multi-frame "
                                   "file and analysed per series."),
    series: bool = typer.Option(True, "--series/--no-series", help="Group DICOM instances by series (NIfTI volumes "
                                "by file): a verdict and the suspicious 3-D regions per series."),
    headers: bool = typer.Option(True, "--headers/--no-headers", help="DICOM header forensics: named findings per "
                                 "file and series, fused with the pixel score (score = fused; pixel_score and "
                                 "header_score beside it)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files, and re-scan files the "
                               "results store already holds."),
    db: str | None = typer.Option(None, "--db", envvar="MEDFORENSICS_DB", show_envvar=True,
                                  help="Results store URL (sqlite:///file.db, postgresql://…, a file path, or "
                                  "'default' = ~/.medforensics/results.db). Results are committed as they come, "
                                  "files already stored are answered from the store, a killed run resumes."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="With --db: continue the unfinished run with "
                                "the same arguments (--no-resume opens a new run; stored files are still skipped "
                                "unless --force)."),
    engine: str = typer.Option("local", "--engine", help="local | ray (distribute over a Ray cluster)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start local Ray)."),
    num_gpus: float = typer.Option(0.0, "--num-gpus", help="GPUs per Ray worker (0 = CPU workers)."),
    workers: int = typer.Option(1, "--workers", help="Ray workers (model replicas)."),
    decode_workers: int | None = typer.Option(None, "--decode-workers", min=0, help="Processes decoding files "
                                              "(default: one per core beyond the model's, 1-4; 0 = decode in the "
                                              "main process, without crash isolation)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Frames per model batch (across files)."),
    decode_timeout: float = typer.Option(60.0, "--decode-timeout", min=0.1, help="Seconds one file may take to "
                                         "decode before it is reported as an error."),
    store_phi: bool = typer.Option(False, "--store-phi", help="Store patient ID/name in the store in clear "
                                   "(default: patient ID hashed, name dropped)."),
    roi: str | None = typer.Option(None, "--roi", help="Score only the region of interest (the BTD paper's setting): "
                                   "'y,x[,slice]' in pixels of the source slice (slice: 0-based index in position "
                                   "order within each series, or the frame of a multi-frame file / volume; with a "
                                   "slice only that slice is scanned), or with --roi-space patient 'x,y,z' in mm "
                                   "(DICOM patient coordinates; the slice is the nearest along the normal)."),
    roi_space: str = typer.Option("pixel", "--roi-space", help="Coordinates of --roi: pixel | patient."),
) -> None:
    """Scan images; exit status 1 when any file failed, 0 otherwise."""
    for out in (json_out, csv_out, report):
        refuse_overwrite(out, force)
    if threshold is not None and fpr is not None:
        console.print("[red]error:[/] give --threshold or --fpr, not both")
        raise typer.Exit(2)
    if engine not in ("local", "ray"):
        console.print(f"[red]error:[/] --engine must be 'local' or 'ray', got {engine!r}")
        raise typer.Exit(2)
    if store_phi and not db:
        console.print("[red]error:[/] --store-phi needs a results store (--db)")
        raise typer.Exit(2)
    missing = [p for p in paths if not p.exists()]  # a dangling link among others is reported as an error row
    if len(missing) == len(paths):
        console.print(f"[red]error:[/] {missing[0]}: file not found")
        raise typer.Exit(2)
    roi_plan = resolve_roi(roi, roi_space, paths, db, engine) if roi is not None else None
    if roi_plan is not None and roi_plan.inputs is not None:
        paths = list(roi_plan.inputs)
    detector = open_model(model)
    tau = resolve_threshold(detector, threshold, fpr)
    max_frames = max_slices if max_frames is None else max_frames
    store = open_store(db, store_phi) if db else None
    cleanup = contextlib.ExitStack()
    if engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            console.print("[red]error:[/] --engine ray needs Ray (pip install 'medforensics\\[ray]')")
            raise typer.Exit(2)
        from ..distributed.ray_scan import RayScan

        if report is not None:
            console.print("note: with --engine ray the report has no thumbnails or heat-maps")
        scanner = RayScan(paths, model, detector=detector, store=store, threshold=tau, max_frames=max_frames,
                          force=force, resume=resume, address=address, num_gpus=num_gpus, workers=workers)
        results, summary = iter(scanner), lambda: scanner.summary
    else:
        from ..engine import ScanEngine, run_args

        scan_engine = ScanEngine(detector, threshold=tau, with_maps=report is not None, max_frames=max_frames,
                                 batch_size=batch_size, workers=decode_workers, store=store, force=force,
                                 source="cli", decode_timeout=decode_timeout, series=series, headers=headers,
                                 roi=roi_plan)
        args = run_args(paths, scan_engine.model_id, threshold=tau, max_frames=max_frames)
        results = scan_engine.scan(paths, run_args=args if store is not None else None, resume=resume)
        summary = lambda: scan_engine.summary  # noqa: E731
        cleanup.callback(scan_engine.close)
    info = {"model": model, "detector": detector.name, "threshold": tau,
            "calibration": {k: v for k, v in detector.calibration.items() if k != "real_val_scores"}}
    if roi_plan is not None:
        info["roi"] = roi_plan.spec.to_dict()
        console.print(f"ROI {roi_plan.spec.to_dict()}: {len(paths)} input(s); each result's meta.roi records "
                      "where it was scored")
    kept: list[ScanResult] = []  # for the HTML report only (small thumbnails)
    from ..engine.series import SeriesAggregator

    from ..headers import DEFAULT_THRESHOLD as HEADER_THRESHOLD

    aggregator = SeriesAggregator(tau, fit=detector.preprocessing.fit, max_slices=max_slices,
                                  header_threshold=HEADER_THRESHOLD) if series else None
    table_rows: list[ScanResult] = []
    n_files = n_err = n_fake = 0
    with cleanup, StreamWriters(json_out, csv_out, info) as writers, Progress(
        TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("scan", total=None, rate="")
        for res in results:
            writers.write(res)
            if aggregator is not None:
                aggregator.add(res)
            res.frame_maps = res.header_report = None  # kept by the aggregator where needed
            n_files += 1
            n_err += not res.ok
            n_fake += res.verdict == "fake"
            if report is not None:
                kept.append(res)
            if len(table_rows) < TABLE_ROWS:
                table_rows.append(res)
            bar.update(task, advance=1, rate=f"{n_files / max(bar.tasks[0].elapsed or 1e-9, 1e-9):.1f} files/s")
        series_records = aggregator.records() if aggregator is not None else []
        writers.write_series(series_records)
        if store is not None and engine != "ray":
            for record in series_records:
                if record.get("series_uid"):  # NIfTI volumes (no UID) stay in the JSON/report only
                    store.upsert_series(record, model_id=scan_engine.model_id, source="cli", threshold=tau)
    console.print(result_table(table_rows))
    if n_files > len(table_rows):
        console.print(f"… {n_files - len(table_rows)} more rows (see --json / --csv / the store)")
    if series_records:
        console.print(series_table(series_records))
        n_sf = sum(r["verdict"] == "fake" for r in series_records)
        console.print(f"{len(series_records)} series/volumes: {n_sf} flagged fake")
    console.print(f"{n_files} files: {n_fake} flagged fake, {n_files - n_fake - n_err} real, {n_err} errors "
                  f"(model {model}, threshold {tau:.4f})")
    s = summary()
    console.print(f"{s.n_scored} images scored in {s.seconds:.1f} s: {s.images_per_s:.2f} images/s"
                  + (f"; {s.n_cached} answered from the store" if store is not None else "")
                  + (f" (run {s.run_id})" if s.run_id else ""))
    if json_out:
        console.print(f"JSON: {json_out}")
    if csv_out:
        console.print(f"CSV: {csv_out}")
    if report:
        write_scan_report(kept, report, title="medforensics scan", model_info=info, threshold=tau,
                          series=series_records)
        console.print(f"report: {report}")
    if store is not None:
        console.print(f"store: {redact_url(store.url)}")
        store.close()
    raise typer.Exit(1 if n_err else 0)


TABLE_ROWS = 500


def resolve_roi(text: str, space: str, paths: list[Path], db: str | None, engine: str):
    """--roi / --roi-space → an engine RoiPlan, or exit 2 with the reason."""
    from ..engine.roi import RoiError, parse_roi, plan_roi

    if db:
        console.print("[red]error:[/] --roi scores a region, not the image: it cannot be combined with a results "
                      "store (--db), whose answers are whole-image scores")
        raise typer.Exit(2)
    if engine != "local":
        console.print("[red]error:[/] --roi needs the local engine")
        raise typer.Exit(2)
    try:
        plan = plan_roi(paths, parse_roi(text, space))
    except RoiError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    for note in plan.notes:
        console.print(f"note: {note}")
    return plan


def open_store(db: str, store_phi: bool):
    """Open the results store (schema upgraded) or exit with a clear message."""
    try:
        from ..store import ResultStore
    except ModuleNotFoundError as err:
        console.print(f"[red]error:[/] the results store needs sqlalchemy and alembic (pip install "
                      f"'medforensics\\[store]'): {err}")
        raise typer.Exit(2) from None
    try:
        return ResultStore(db, store_phi=store_phi)
    except Exception as err:
        from ..store import normalise_url, redact_url as _redact

        console.print(f"[red]error:[/] cannot open results store {_redact(normalise_url(db))}: "
                      f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise typer.Exit(2) from None


def redact_url(url: str) -> str:
    from ..store import redact_url as _redact

    return _redact(url)


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
