"""``medforensics bank``: add / show / remove labelled samples in a DSKI model's retrieval bank.

Adding samples of a new generator changes DSKI's scores without retraining (the MFRM few-shot
stage). Only the bank inside the model directory is rewritten (weights to a temporary file, then
renamed); the adapters, the threshold and the model card are left as they were.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Few-shot retrieval bank of a DSKI model (add samples of new generators).")


def _open_dski(model: Path):
    from ..detectors.dski import DSKIDetector
    from .common import console, open_model

    if not (model / "config.json").is_file():
        console.print(f"[red]error:[/] {model} is not a model directory (no config.json); the bank of a shipped "
                      "model cannot be changed in place — copy it first")
        raise typer.Exit(2)
    det = open_model(str(model))
    if not isinstance(det, DSKIDetector):
        console.print(f"[red]error:[/] {model} holds a {det.name!r} model; only dski models have a retrieval bank")
        raise typer.Exit(2)
    return det


def _save(det, model: Path) -> None:
    from .common import console

    try:
        det.save_bank(model)
    except (ValueError, FileNotFoundError, OSError) as err:
        console.print(f"[red]error:[/] bank not saved: {err}")
        raise typer.Exit(2) from None


@app.command("add")
def add(
    images: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
    model: Path = typer.Option(..., "--model", "-m", help="DSKI model directory (its bank is updated in place)."),
    label: str = typer.Option(..., "--label", help="Label of these samples: real or fake."),
    generator: str | None = typer.Option(None, "--generator", help="Name stored with the entries (e.g. the generator)."),
    max_frames: int = typer.Option(1, help="Frames/slices taken per multi-frame file or volume."),
) -> None:
    """Add labelled samples to the bank; prints the new bank size. Exit 1 if some files failed."""
    import numpy as np

    from ..io import iter_images
    from .common import console

    if label.strip().lower() not in ("real", "fake"):
        raise typer.BadParameter(f"--label must be 'real' or 'fake', got {label!r}")
    det = _open_dski(model)
    arrays, failed = [], 0
    for path, result in iter_images(images, max_frames=max_frames):
        if isinstance(result, Exception):
            failed += 1
            console.print(f"[yellow]skipped[/] {path}: {getattr(result, 'reason', result)}")
            continue
        for frame in result:
            try:
                arrays.append(det.preprocessing(frame))
            except ValueError as err:
                failed += 1
                console.print(f"[yellow]skipped[/] {path}: {err}")
    if not arrays:
        console.print("[red]error:[/] no readable images; the bank is unchanged")
        raise typer.Exit(2)
    before = det.bank_size
    size = det.add_to_bank(np.stack(arrays), label.strip().lower(), generator=generator)
    _save(det, model)
    console.print(f"added {size - before} {label} sample(s)"
                  f"{f' of {generator}' if generator else ''}; note: the threshold was calibrated before this change")
    typer.echo(f"bank size: {size}")
    raise typer.Exit(1 if failed else 0)


@app.command("remove")
def remove(
    model: Path = typer.Option(..., "--model", "-m", help="DSKI model directory."),
    generator: str = typer.Option(..., "--generator", help="Remove every entry stored under this name."),
) -> None:
    """Remove a generator's entries from the bank; prints the new bank size."""
    from .common import console

    det = _open_dski(model)
    try:
        size = det.remove_from_bank(generator)
    except KeyError as err:
        console.print(f"[red]error:[/] {err.args[0]}")
        raise typer.Exit(2) from None
    _save(det, model)
    typer.echo(f"bank size: {size}")


@app.command("show")
def show(model: Path = typer.Option(..., "--model", "-m", help="DSKI model directory.")) -> None:
    """Bank entries per generator and label."""
    from rich.table import Table

    from .common import console

    det = _open_dski(model)
    table = Table(title=f"retrieval bank of {model} ({det.bank_size} entries)")
    for col in ("generator", "real", "fake"):
        table.add_column(col)
    for gen, counts in sorted(det.bank.summary().items()):
        table.add_row(gen, str(counts.get("real", 0)), str(counts.get("fake", 0)))
    console.print(table)
    typer.echo(f"bank size: {det.bank_size}")


def register(root: typer.Typer) -> None:
    """Add the ``bank`` command group to the main app."""
    root.add_typer(app, name="bank")
