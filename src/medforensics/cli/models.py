"""``medforensics models``: registered detectors and shipped models."""

from __future__ import annotations

import json

from rich.table import Table

from ..detectors import list_detectors
from ..detectors.registry import PRETRAINED, pretrained_dir
from .common import console


def models() -> None:
    """List registered detectors and the models shipped with the package."""
    table = Table(title="detectors")
    table.add_column("registered detector")
    for name in list_detectors():
        table.add_row(name)
    console.print(table)
    shipped = Table(title="shipped models")
    for col in ("name", "detector", "threshold", "folder"):
        shipped.add_column(col)
    for name in PRETRAINED:
        folder = pretrained_dir(name)
        cfg_path = folder / "config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            shipped.add_row(name, cfg["detector"], f"{cfg['threshold']:.4f}", str(folder))
        else:
            shipped.add_row(name, "(missing)", "", str(folder))
    console.print(shipped)
