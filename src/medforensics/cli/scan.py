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
    max_frames: int = typer.Option(16, help="Frames/slices scored per multi-frame file or volume."),
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
    store_phi: bool = typer.Option(False, "--store-phi", help="Store patient ID/name in the store in clear "
                                   "(default: patient ID hashed, name dropped)."),
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
    missing = [p for p in paths if not p.exists()]
    if missing:
        console.print(f"[red]error:[/] {missing[0]}: file not found")
        raise typer.Exit(2)
    detector = open_model(model)
    tau = resolve_threshold(detector, threshold, fpr)
    store = open_store(db, store_phi) if db else None
    if engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            console.print("[red]error:[/] --engine ray needs Ray (pip install 'medforensics[ray]')")
            raise typer.Exit(2)
        from ..distributed.ray_scan import RayScan

        if report is not None:
            console.print("note: with --engine ray the report has no thumbnails or heat-maps")

        batch = RayScan(paths, model, detector=detector, store=store, threshold=tau, max_frames=max_frames,
                        force=force, resume=resume, address=address, num_gpus=num_gpus, workers=workers)
    else:
        from ..batch import BatchScan

        batch = BatchScan(paths, detector, store=store, threshold=tau, max_frames=max_frames,
                          with_maps=report is not None, force=force, resume=resume)
    info = {"model": model, "detector": detector.name, "threshold": tau,
            "calibration": {k: v for k, v in detector.calibration.items() if k != "real_val_scores"}}
    kept: list[ScanResult] = []  # for the HTML report only (small thumbnails)
    table_rows: list[ScanResult] = []
    n_files = n_err = n_fake = 0
    with StreamWriters(json_out, csv_out, info) as writers, Progress(
        TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("scan", total=None, rate="")
        for res in batch:
            writers.write(res)
            n_files += 1
            n_err += not res.ok
            n_fake += res.verdict == "fake"
            if report is not None:
                kept.append(res)
            if len(table_rows) < TABLE_ROWS:
                table_rows.append(res)
            bar.update(task, advance=1, rate=f"{n_files / max(bar.tasks[0].elapsed or 1e-9, 1e-9):.1f} files/s")
    console.print(result_table(table_rows))
    if n_files > len(table_rows):
        console.print(f"… {n_files - len(table_rows)} more rows (see --json / --csv / the store)")
    console.print(f"{n_files} files: {n_fake} flagged fake, {n_files - n_fake - n_err} real, {n_err} errors "
                  f"(model {model}, threshold {tau:.4f})")
    s = batch.summary
    console.print(f"{s.n_scored} images scored in {s.seconds:.1f} s: {s.images_per_s:.2f} images/s"
                  + (f"; {s.n_cached} answered from the store" if store is not None else "")
                  + (f" (run {s.run_id})" if s.run_id else ""))
    if json_out:
        console.print(f"JSON: {json_out}")
    if csv_out:
        console.print(f"CSV: {csv_out}")
    if report:
        write_scan_report(kept, report, title="medforensics scan", model_info=info, threshold=tau)
        console.print(f"report: {report}")
    if store is not None:
        console.print(f"store: {redact_url(store.url)}")
        store.close()
    raise typer.Exit(1 if n_err else 0)


TABLE_ROWS = 500


def open_store(db: str, store_phi: bool):
    """Open the results store (schema upgraded) or exit with a clear message."""
    try:
        from ..store import ResultStore
    except ModuleNotFoundError as err:
        console.print(f"[red]error:[/] the results store needs sqlalchemy and alembic (pip install "
                      f"'medforensics[store]'): {err}")
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


class StreamWriters:
    """JSON and CSV written result by result (constant memory); files appear under their names only when
    the scan completes (written to ``<name>.partial`` meanwhile, so a killed run leaves no truncated output)."""

    def __init__(self, json_out: Path | None, csv_out: Path | None, info: dict):
        self.targets = [p for p in (json_out, csv_out) if p is not None]
        self.json_out, self.csv_out, self.info = json_out, csv_out, info
        self._json = self._csv = None
        self._first = True

    def __enter__(self) -> StreamWriters:
        if self.json_out:
            self.json_out.parent.mkdir(parents=True, exist_ok=True)
            self._json = _partial(self.json_out).open("w")
            head = {k: self.info[k] for k in ("model", "detector", "threshold")}
            self._json.write(json.dumps(head, indent=2)[:-2] + ',\n  "results": [')
        if self.csv_out:
            self.csv_out.parent.mkdir(parents=True, exist_ok=True)
            self._csv_fh = _partial(self.csv_out).open("w", newline="")
            self._csv = csv.writer(self._csv_fh)
            self._csv.writerow(FIELDS)
        return self

    def write(self, r: ScanResult) -> None:
        if self._json is not None:
            item = {**{k: getattr(r, k) for k in FIELDS}, "frames": r.frames, "meta": r.meta}
            self._json.write(("\n    " if self._first else ",\n    ") + json.dumps(item, default=str))
            self._first = False
        if self._csv is not None:
            self._csv.writerow(["" if getattr(r, k) is None else getattr(r, k) for k in FIELDS])

    def __exit__(self, exc_type, *_exc: object) -> None:
        if self._json is not None:
            self._json.write("\n  ]\n}\n")
            self._json.close()
        if self._csv is not None:
            self._csv_fh.close()
        for target in self.targets:
            if exc_type is None:
                _partial(target).replace(target)
            else:
                _partial(target).unlink(missing_ok=True)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


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
