"""The ``medforensics`` command line (typer): one module per command group, no logic beyond arguments."""

from __future__ import annotations

from importlib import import_module

import typer

from . import data as data_cmd
from . import demo as demo_cmd
from . import evaluate as evaluate_cmd
from . import models as models_cmd
from . import scan as scan_cmd
from . import train as train_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Detect AI-generated and tampered medical images.")
app.command("scan")(scan_cmd.scan)
app.command("train")(train_cmd.train)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("demo")(demo_cmd.demo)
app.add_typer(models_cmd.app, name="models")
app.add_typer(data_cmd.app, name="data")

#: Optional command modules: each defines ``register(app)`` and imports heavy dependencies lazily,
#: inside its commands, so ``medforensics --help`` stays fast and works without optional extras.
PLUGINS = ("bank", "synth", "bench", "serve", "dicom", "reader_study")
for _name in PLUGINS:
    try:
        _module = import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__package__}.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()
