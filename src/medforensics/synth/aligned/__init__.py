"""Aligned fakes: fakes made FROM the reals, so both classes share content, size and processing.

A real image goes through a generator's last stage — an autoencoder round trip (a family of small
decoders with four upsampling kinds, strides 4 and 8, KL and vector-quantised bottlenecks) or a
short diffusion round trip (noise to a small t, denoise in one step or a few DDIM steps) — in
8-px-aligned tiles, at its own size and bit depth, saved losslessly; its sharpness (or radial
spectrum) is then matched to the real's so that lost or restored detail cannot predict the label.
See ``bench/aligned_fakes/README.md`` for the measured PSNR and sharpness statistics.

```python
transforms = build_transforms(["ae:ae-pixelshuffle-s4-kl-w32", "ddpm-1step"], "models/", load_train_reals)
fakes, errors, counts = make_aligned_set(real_manifest, "out/", transforms, per_real=1)
```
"""

from .folder import ALIGNED_COLUMNS, MANIFEST_NAME, fake_relpath, load_pairs, make_aligned_set
from .models import (
    AE_REGISTRY,
    BOTTLENECKS,
    STRIDES,
    UPSAMPLERS,
    AlignedAE,
    AlignedAEGenerator,
    config_name,
    create_ae,
    load_ae,
    random_crops,
)
from .pipeline import build_transforms, load_real_images, train_ae, train_ddpm
from .transforms import (
    GRID,
    AlignError,
    Transform,
    ae_transform,
    align,
    ddpm_transform,
    match_sharpness,
    match_spectrum,
    parse_transform,
    psnr,
    radial_spectrum,
    read_real,
    sharpness,
    tiled,
)
from ...io.png import write_png

__all__ = [
    "AE_REGISTRY", "ALIGNED_COLUMNS", "BOTTLENECKS", "GRID", "MANIFEST_NAME", "STRIDES", "UPSAMPLERS",
    "AlignError", "AlignedAE", "AlignedAEGenerator", "Transform", "ae_transform", "align", "build_transforms",
    "config_name", "create_ae", "ddpm_transform", "fake_relpath", "load_ae", "load_pairs", "load_real_images",
    "make_aligned_set", "match_sharpness", "match_spectrum", "parse_transform", "psnr", "radial_spectrum",
    "random_crops", "read_real", "sharpness", "tiled", "train_ae", "train_ddpm", "write_png",
]
