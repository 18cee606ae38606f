"""``medforensics data …``: build and inspect manifests."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..data import Manifest, index_folder, patient_split
from .common import console, refuse_overwrite

app = typer.Typer(no_args_is_help=True, help="Build and inspect image manifests.")


@app.command("index")
def index(
    root: Path = typer.Argument(..., help="Folder laid out as real/<modality>/<source>/… and fake/<modality>/<generator>/…"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Manifest to write (default ROOT/manifest.csv)."),
    split: bool = typer.Option(True, help="Assign a deterministic patient-level 80/20 train/test split."),
    seed: int = typer.Option(0, help="Split seed."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing manifest."),
) -> None:
    """Index a folder of real and fake images into a manifest (CSV, or Parquet by extension)."""
    out = out or root / "manifest.csv"
    refuse_overwrite(out, force)
    try:
        manifest = index_folder(root)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if split:
        manifest = patient_split(manifest, seed=seed)
    manifest.write(out, overwrite=force)
    console.print(summary_table(manifest))
    console.print(f"{len(manifest)} rows → {out}")


@app.command("summary")
def summary(manifest: Path = typer.Argument(..., help="Manifest CSV/Parquet.")) -> None:
    """Counts per split, label and modality."""
    console.print(summary_table(Manifest.read(manifest)))


def summary_table(manifest: Manifest) -> Table:
    counts: dict[tuple[str, str, str], int] = {}
    for r in manifest:
        key = (r.split or "-", r.modality, r.label)
        counts[key] = counts.get(key, 0) + 1
    table = Table(title="manifest")
    for col in ("split", "modality", "label", "images"):
        table.add_column(col)
    for (split, modality, label), n in sorted(counts.items()):
        table.add_row(split, modality, label, str(n))
    return table


@app.command("add-fakes")
def add_fakes(
    folder: Path = typer.Argument(..., help="Folder of fakes made elsewhere (searched recursively)."),
    generator: str = typer.Option(..., "--generator", help="Generator name for these fakes."),
    modality: str = typer.Option(..., "--modality", help="Modality of these fakes."),
    family: str | None = typer.Option(None, "--family", help="Generator family (default: inferred from the name)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest to write (default FOLDER/manifest.csv)."),
) -> None:
    """Import fakes into manifest rows with their history (original size, format, JPEG quality); never overwrites."""
    from ..synth.generators import import_fakes

    out = manifest or folder / "manifest.csv"
    refuse_overwrite(out, False)
    try:
        rows, errors = import_fakes(folder, generator, modality, family=family, manifest_root=out.expanduser().resolve().parent)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    for err in errors:
        console.print(f"[yellow]skipped:[/] {err}")
    if not len(rows):
        console.print(f"[red]error:[/] no readable images under {folder}")
        raise typer.Exit(2)
    rows.write(out)
    console.print(f"{len(rows)} fakes ({len(errors)} unreadable skipped) → {out}")
