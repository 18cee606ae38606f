"""Writers of scan results, shared by ``medforensics scan``, the demo and the service.

- :class:`StreamWriters`: JSON and CSV written result by result (constant memory); the files appear
  under their names only when the scan completes (``<name>.partial`` meanwhile, so a killed run
  never leaves truncated output that looks complete).
- :func:`write_json` / :func:`write_csv`: the same formats for a list of results.
- :func:`csv_safe`: the one rule against spreadsheet formula injection, applied to every CSV cell
  this project writes.
- :func:`result_record`: the JSON form of one :class:`~medforensics.results.ScanResult`.
- :func:`result_table`: the terminal table.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from ..results import ScanResult

#: columns of the CSV output (and the core of each JSON result); ``score`` is the fused score where header
#: forensics ran (``pixel_score``/``header_score`` beside it), else the pixel score
FIELDS = ("path", "modality", "score", "verdict", "error", "pixel_score", "header_score")
#: header keys of the JSON output
HEADER_KEYS = ("model", "detector", "threshold")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP: prefix ``'``).

    Text starting with ``= + - @``, a tab or a carriage return gets a leading apostrophe; numbers
    (including negative ones) are left as they are.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    """Cells for :class:`csv.writer`: ``None`` → empty, text made formula-safe."""
    return [csv_safe("" if v is None else v) for v in values]


def result_record(r: ScanResult) -> dict[str, Any]:
    """The JSON form of one result: the CSV fields, per-frame scores and metadata (no pixels)."""
    return {**{k: getattr(r, k) for k in FIELDS}, "findings": r.findings, "frames": r.frames, "meta": r.meta}


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class StreamWriters:
    """JSON and/or CSV written result by result; see the module docstring. Use as a context manager."""

    def __init__(self, json_out: Path | None, csv_out: Path | None, info: dict[str, Any]):
        self.json_out, self.csv_out, self.info = json_out, csv_out, info
        self.targets = [p for p in (json_out, csv_out) if p is not None]
        self._json: TextIO | None = None
        self._csv_fh: TextIO | None = None
        self._csv: Any = None
        self._first = True
        self.series: list[dict[str, Any]] = []  # per-series records, written after the results

    def __enter__(self) -> StreamWriters:
        if self.json_out:
            self.json_out.parent.mkdir(parents=True, exist_ok=True)
            self._json = _partial(self.json_out).open("w")
            head = {k: self.info.get(k) for k in HEADER_KEYS}
            self._json.write(json.dumps(head, indent=2)[:-2] + ',\n  "results": [')
        if self.csv_out:
            self.csv_out.parent.mkdir(parents=True, exist_ok=True)
            self._csv_fh = _partial(self.csv_out).open("w", newline="")
            self._csv = csv.writer(self._csv_fh)
            self._csv.writerow((*FIELDS, "findings"))
        return self

    def write(self, r: ScanResult) -> None:
        if self._json is not None:
            self._json.write(("\n    " if self._first else ",\n    ") + json.dumps(result_record(r), default=str))
            self._first = False
        if self._csv is not None:
            self._csv.writerow(csv_row([*(getattr(r, k) for k in FIELDS), ";".join(f["code"] for f in r.findings)]))

    def write_series(self, records: Iterable[dict[str, Any]]) -> None:
        """Per-series records (JSON ``series`` list), written when the writers close."""
        self.series.extend(records)

    def __exit__(self, exc_type: Any, *_exc: object) -> None:
        if self._json is not None:
            self._json.write("\n  ]")
            if self.series:
                self._json.write(',\n  "series": ' + json.dumps(self.series, indent=2, default=str).replace("\n", "\n  "))
            self._json.write("\n}\n")
            self._json.close()
        if self._csv_fh is not None:
            self._csv_fh.close()
        for target in self.targets:
            if exc_type is None:
                _partial(target).replace(target)
            else:
                _partial(target).unlink(missing_ok=True)


def write_json(results: Iterable[ScanResult], path: Path, info: dict[str, Any],
               series: Iterable[dict[str, Any]] = ()) -> None:
    with StreamWriters(path, None, info) as w:
        for r in results:
            w.write(r)
        w.write_series(series)


def write_csv(results: Iterable[ScanResult], path: Path) -> None:
    with StreamWriters(None, path, {}) as w:
        for r in results:
            w.write(r)


def result_table(results: Iterable[ScanResult]):
    """A rich table of results (file, modality, score, verdict, error)."""
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("file", "modality", "score", "verdict", "error"):
        table.add_column(col, overflow="fold")
    for r in results:
        verdict = {"fake": "[bold red]fake[/]", "real": "[green]real[/]"}.get(r.verdict or "", "")
        table.add_row(r.path, r.modality or "", "" if r.score is None else f"{r.score:.4f}", verdict, r.error or "")
    return table


def series_table(records: Iterable[dict[str, Any]]):
    """A rich table of series verdicts and their top region."""
    from rich.table import Table

    table = Table(show_lines=False, title="series")
    for col in ("series", "modality", "slices", "score", "verdict", "top region (slices, y, x, radius)"):
        table.add_column(col, overflow="fold")
    for s in records:
        verdict = {"fake": "[bold red]fake[/]", "real": "[green]real[/]"}.get(s.get("verdict") or "", "")
        regions = s.get("regions") or []
        top = (f"{regions[0]['first_slice']}–{regions[0]['last_slice']}, {regions[0]['y']:.0f}, {regions[0]['x']:.0f}, "
               f"{regions[0]['radius']:.0f}" + (f" (+{len(regions) - 1})" if len(regions) > 1 else "")) if regions else ""
        table.add_row(str(s.get("series_uid") or s.get("key")), s.get("modality") or "", str(s.get("n_slices")),
                      f"{s['score']:.4f}", verdict, top)
    return table


__all__ = ["series_table", "FIELDS", "StreamWriters", "csv_row", "csv_safe", "result_record", "result_table", "write_csv", "write_json"]
