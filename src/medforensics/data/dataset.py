"""A torch ``Dataset`` over a :class:`Manifest`: load → (transform) → preprocess.

Every item goes through the same path whatever its label, and it is the detector's saved chain:
the image is read at native resolution with :meth:`Preprocessing.read` (so with the model's
stored :class:`~medforensics.io.IntensityConfig`, exactly as a scan reads it), an optional
``transform`` (e.g. randomised post-processing shared by reals and fakes) is applied at native
resolution, then :class:`Preprocessing` standardises it (``Preprocessing.__call__``). Randomness is drawn from ``np.random.default_rng([seed, epoch, index])``,
so an item is identical whenever it is read in the same epoch, in any worker.
"""

from __future__ import annotations

import inspect
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..io.intensity import IntensityConfig
from ..io.preprocess import Preprocessing
from ..io.types import MedImage, UnreadableImageError
from .manifest import Manifest, ManifestRow, resolve_path

Transform = Callable[[np.ndarray, np.random.Generator, ManifestRow], np.ndarray]
Loader = Callable[..., MedImage]


def transform_arity(fn: Callable[..., Any]) -> int:
    """How many of ``(pixels, rng, row)`` a transform takes: 3, 2 (``fn(pixels, rng)``, e.g.
    ``RandomPostProcess``) or 1 (``fn(pixels)``, e.g. ``MatchedProcessing``, ``History``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return 3
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return max(1, min(3, len(positional)))


class ImageDataset(Dataset):
    """Items are dicts: ``image`` (float32 C×H×W), ``label`` (float32 scalar, 1 = fake),
    ``mask`` (float32 H×W, 1 = manipulated), ``index``, ``modality``, ``generator``.

    ``mask_column`` names an extra column holding a mask image path (relative to the manifest
    folder); rows without one get an all-zeros mask if real, all-ones (whole image) if fake.
    ``transform(pixels, rng, row)`` runs at native resolution before preprocessing; callables
    taking only ``(pixels, rng)`` or ``(pixels)`` are accepted too (see :func:`transform_arity`).
    An optional ``frame`` column selects a frame/slice of multi-frame files. ``cache`` keeps
    that many decoded images (``True`` = 256) in an LRU cache; off by default. A file that
    cannot be read raises :class:`UnreadableImageError`; use :meth:`check` and
    :meth:`drop_unreadable` to find and exclude such files up front.
    """

    def __init__(
        self,
        manifest: Manifest | Sequence[ManifestRow],
        preprocessing: Preprocessing | None = None,
        *,
        root: str | Path | None = None,
        transform: Transform | None = None,
        mask_column: str | None = None,
        seed: int = 0,
        cache: int | bool = False,
        intensity: IntensityConfig | None = None,
        loader: Loader | None = None,
    ):
        if isinstance(manifest, Manifest):
            self.rows: list[ManifestRow] = list(manifest.rows)
            self.root = Path(root).resolve() if root is not None else manifest.root
        else:
            self.rows = list(manifest)
            self.root = Path(root if root is not None else ".").resolve()
        if intensity is not None:  # kept for callers; the config belongs to the model's Preprocessing
            if preprocessing is None:
                preprocessing = Preprocessing(intensity=intensity)
            elif preprocessing.intensity != intensity:
                raise ValueError(
                    "ImageDataset(intensity=...) differs from preprocessing.intensity; set the intensity "
                    "config on the detector's Preprocessing so that it is saved with the model"
                )
        self.preprocessing = preprocessing or Preprocessing()
        self.transform = transform
        self._transform_arity = transform_arity(transform) if transform is not None else 0
        self.mask_column = mask_column
        self.seed = int(seed)
        self.epoch = 0
        self.loader = loader
        self.cache_size = 256 if cache is True else int(cache or 0)
        self._cache: OrderedDict[int, MedImage] = OrderedDict()

    # ----------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch component of every item's random generator."""
        self.epoch = int(epoch)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.y for r in self.rows], dtype=np.int64)

    def path(self, index: int) -> Path:
        return self.rows[index].resolve(self.root)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    @property
    def intensity(self) -> IntensityConfig:
        """The intensity config images are read with (the preprocessing's)."""
        return self.preprocessing.intensity

    # ----------------------------------------------------------------- loading
    def _read(self, path: Path, *, modality: str | None = None, frame: int | None = None) -> MedImage:
        """The preprocessing chain's read step; no frame → the middle one (as ``io.load``)."""
        return self.preprocessing.read(path, frame=frame, max_frames=1 if frame is None else None, modality=modality)[0]

    def _load_fn(self) -> Loader:
        return self.loader if self.loader is not None else self._read

    def load_image(self, index: int) -> MedImage:
        """Decoded image of row ``index`` at native resolution (cached if enabled)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        row, path = self.rows[index], self.path(index)
        kwargs: dict[str, Any] = {"modality": row.modality}
        frame = row.extra.get("frame", "").strip()
        if frame:
            kwargs["frame"] = int(frame)
        if self.loader is not None:  # a custom loader gets the config it must honour
            kwargs["intensity"] = self.preprocessing.intensity
        try:
            image = self._load_fn()(path, **kwargs)
        except UnreadableImageError:
            raise
        except Exception as exc:  # any decoder failure is reported as the one error type
            raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from exc
        if self.cache_size:
            self._cache[index] = image
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return image

    def _mask_native(self, index: int, shape: tuple[int, int]) -> np.ndarray | None:
        """The row's mask at ``shape`` (nearest), or None when it has none."""
        if not self.mask_column:
            return None
        value = self.rows[index].extra.get(self.mask_column, "").strip()
        if not value:
            return None
        path = resolve_path(value, self.root)
        try:
            with Image.open(path) as im:
                im = im.convert("L")
                if im.size != (shape[1], shape[0]):
                    im = im.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
                return np.asarray(im) > 0
        except Exception as exc:
            raise UnreadableImageError(path, f"mask of {self.path(index)}: {type(exc).__name__}: {exc}") from exc

    def _mask(self, index: int, native_shape: tuple[int, int]) -> np.ndarray:
        size = self.preprocessing.size
        native = self._mask_native(index, native_shape)
        if native is None:
            fill = float(self.rows[index].y)
            return np.full((size, size), fill, dtype=np.float32)
        from ..io.resize import standardise  # same geometry (crop/pad/resize) as the image

        out = standardise(native.astype(np.float32), size, fit=self.preprocessing.fit)
        return (np.asarray(out) >= 0.5).astype(np.float32)

    # ----------------------------------------------------------------- items
    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        row = self.rows[index]
        image = self.load_image(index)
        pixels = image.pixels
        if self.transform is not None:
            args = (np.array(pixels, dtype=np.float32, copy=True), self.rng(index), row)
            pixels = self.transform(*args[: self._transform_arity])
            pixels = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
            image = MedImage(pixels, image.meta)
        chw = self.preprocessing(image)
        mask = self._mask(index, pixels.shape[:2])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32)),
            "label": torch.tensor(float(row.y), dtype=torch.float32),
            "mask": torch.from_numpy(mask),
            "index": index,
            "modality": row.modality,
            "generator": row.generator,
        }

    # ----------------------------------------------------------------- checks
    def check(self, progress: bool = True) -> list[tuple[str, str]]:
        """Try to load every row (and its mask) once; return ``(path, error)`` for each failure."""
        failures: list[tuple[str, str]] = []
        indices: Any = range(len(self))
        if progress:
            try:
                from tqdm import tqdm

                indices = tqdm(indices, desc="checking images", unit="img", file=sys.stderr)
            except ImportError:  # pragma: no cover
                pass
        for i in indices:
            try:
                img = self.load_image(i)
                self._mask_native(i, img.pixels.shape[:2])
            except UnreadableImageError as exc:
                failures.append((str(self.path(i)), str(exc)))
        return failures

    def drop_unreadable(self, failures: list[tuple[str, str]] | None = None) -> "ImageDataset":
        """A new dataset without the rows :meth:`check` reports (pass its result to skip re-checking)."""
        failures = self.check(progress=False) if failures is None else failures
        bad = {p for p, _ in failures}
        keep = [r for i, r in enumerate(self.rows) if str(self.path(i)) not in bad]
        return self.with_rows(keep)

    def with_rows(self, rows: Sequence[ManifestRow]) -> "ImageDataset":
        """Same settings, other rows."""
        new = ImageDataset(
            list(rows),
            self.preprocessing,
            root=self.root,
            transform=self.transform,
            mask_column=self.mask_column,
            seed=self.seed,
            cache=self.cache_size,
            loader=self.loader,
        )
        new.epoch = self.epoch
        return new


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (and numbers) of a list of items; strings and other values become lists."""
    if not batch:
        return {}
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, np.ndarray):
            out[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, (bool, int, float)) and not isinstance(first, str):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
