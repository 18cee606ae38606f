"""``medforensics reader-study``: serve the blinded reader study (humans vs a detector, Table 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, open_model, require_extra


def reader_study(
    manifest: Path = typer.Option(..., "--manifest", help="Manifest CSV/Parquet of real and fake images."),
    n: int = typer.Option(50, "--n", help="Images per session (even: half real, half fake, matched by modality)."),
    detector: str = typer.Option("default", "--detector", "-m", help="Shipped model name or model directory."),
    seed: int = typer.Option(0, help="Seed of the image draw and of each session's order."),
    split: str = typer.Option("test", help="Manifest split to draw from ('all' for every row); an unsplit manifest "
                              "is split by patient like `medforensics train` does (test fraction 0.2, seed 0)."),
    modality: str | None = typer.Option(None, help="Only this modality (ct, mri, xray, ...)."),
    n_boot: int = typer.Option(1000, help="Bootstrap iterations of the 95% intervals."),
    db: str | None = typer.Option(None, "--db", help="Results store URL or SQLite file (default ~/.medforensics/results.db)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8001, help="TCP port."),
) -> None:
    """Serve a page that shows a blinded, randomised real/fake mix and compares the reader with a detector."""
    require_extra("serve", "fastapi", "uvicorn", "sqlalchemy", "alembic", what="medforensics reader-study")
    import uvicorn
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..data import Manifest, ManifestError
    from ..reader_study import ReaderStudy, select_split
    from ..reader_study.app import create_reader_app
    from ..store import ResultStore, redact_url

    try:
        man = select_split(Manifest.read(manifest), split)
    except (FileNotFoundError, ManifestError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    det = open_model(detector)
    store = ResultStore(url=db)
    try:
        with Progress(TextColumn("scoring study images"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
            task = bar.add_task("prepare", total=n)
            study = ReaderStudy.prepare(man, det, store=store, n=n, seed=seed, modality=modality, n_boot=n_boot,
                                        progress=lambda done, total: bar.update(task, completed=done))
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    mods = sorted({im.modality for im in study.images})
    console.print(f"{len(study.images)} images ({', '.join(mods)}), detector {study.detector_name}; "
                  f"answers go to {redact_url(store.url)}")
    console.print(f"open http://{host}:{port}/ to start reading")
    uvicorn.run(create_reader_app(study), host=host, port=port, log_level="warning", server_header=False)


def register(app: typer.Typer) -> None:
    app.command("reader-study")(reader_study)
