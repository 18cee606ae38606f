"""Helpers shared by CLI commands: console, model loading with friendly errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

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


def missing_modules(*modules: str) -> list[str]:
    """The importable names among ``modules`` that are not installed (found without importing them)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extra(extra: str, *modules: str, what: str) -> None:
    """Exit 2 with the ``pip install`` line when an optional dependency of ``what`` is not installed."""
    missing = missing_modules(*modules)
    if missing:
        console.print(f"[red]error:[/] {what} needs {', '.join(missing)}, not installed: "
                      + escape(f"pip install 'medforensics[{extra}]'"))
        raise typer.Exit(2)
