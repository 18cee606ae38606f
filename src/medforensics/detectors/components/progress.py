"""Progress bars and epoch records, both silenced by ``progress=False``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True) -> Any:
    """A tqdm progress bar (hidden when ``enabled`` is False)."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True)


def format_record(record: dict[str, Any]) -> str:
    """``"epoch=1, train_loss=0.6931, …"``: floats with 4 decimals, everything else as is."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
