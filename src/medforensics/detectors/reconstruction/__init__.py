"""Unsupervised reconstruction baselines (BTD paper, Table 1): ``ae``, ``unet_ae``, ``inpaint_ae``,
``oc_vae`` and ``ddpm_ood`` — trained on real images only, scored by reconstruction error, each with a map."""

from .detectors import (
    AEDetector,
    DDPMOODDetector,
    EmpiricalCDF,
    InpaintAEDetector,
    OCVAEDetector,
    ReconstructionDetector,
    UNetAEDetector,
    region_mean,
    train_reconstruction,
)
from .models import VAE, ConvAE, UNetAE, kl_divergence, make_unet2d

__all__ = [
    "AEDetector",
    "ConvAE",
    "DDPMOODDetector",
    "EmpiricalCDF",
    "InpaintAEDetector",
    "OCVAEDetector",
    "ReconstructionDetector",
    "UNetAE",
    "UNetAEDetector",
    "VAE",
    "kl_divergence",
    "make_unet2d",
    "region_mean",
    "train_reconstruction",
]
