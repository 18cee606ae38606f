"""Helpers shared by CLI commands: console, model loading with friendly errors."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..detectors import Detector, load_detector

console = Console(stderr=True)


def open_model(model: str) -> Detector:
    """Load a model directory or shipped model name; exit with a clear message when it fails."""
    try:
        return load_detector(model)
    except (FileNotFoundError, KeyError, ValueError) as err:
        console.print(f"[red]error:[/] cannot load model {model!r}: {err}")
        raise typer.Exit(2) from None


def refuse_overwrite(path: Path | None, force: bool) -> None:
    """Nothing a user gave is overwritten silently."""
    if path is not None and path.exists() and not force:
        console.print(f"[red]error:[/] {path} exists; pass --force to overwrite it")
        raise typer.Exit(2)
