"""Shared helpers of the bench scripts: peak RSS and JSON output."""

from __future__ import annotations

import json
import resource


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(result: dict, json_path: str | None) -> None:
    """Print ``result`` as JSON and write it to ``json_path`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        with open(json_path, "w") as fh:
            fh.write(text + "\n")
