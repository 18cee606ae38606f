"""Writing measured results: JSON with numpy values, rounded floats, peak memory.

Used by the benchmark builder and runner and by the scripts under ``bench/`` (which print their
result and write it with :func:`emit`).
"""

from __future__ import annotations

import json
import math
import os
import resource
from pathlib import Path
from typing import Any

import numpy as np


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays, sets, tuples and paths."""
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def rounded(obj: Any, digits: int = 4) -> Any:
    """``obj`` with every float rounded to ``digits`` (NaN and ±inf become ``None``), for compact JSON."""
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return round(v, digits) if math.isfinite(v) else None
    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def write_json(data: Any, path: str | Path, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (numpy-aware) atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=json_default) + "\n")
    os.replace(tmp, path)
    return path


def emit(result: dict[str, Any], json_path: str | Path | None) -> None:
    """Print ``result`` as JSON and write it to ``json_path`` when given."""
    print(json.dumps(result, indent=2, default=json_default))
    if json_path:
        write_json(result, json_path)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux ``ru_maxrss`` is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
