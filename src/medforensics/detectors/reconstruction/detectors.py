"""Unsupervised reconstruction baselines of the Back-in-Time Diffusion paper (Table 1).

Every detector here is trained on **real images only** and scores an image by how badly it
reconstructs it:

* ``ae`` — convolutional autoencoder;
* ``unet_ae`` — U-Net autoencoder, skips only at the deep levels and dropped out while training
  (plain skips turn a U-Net autoencoder into an identity, see :mod:`.models`);
* ``inpaint_ae`` — in-painting autoencoder: a square is masked out and reconstructed from its
  surroundings; the error is measured inside the mask only;
* ``oc_vae`` — one-class VAE; score = reconstruction error from the posterior mean (+ optional KL);
* ``ddpm_ood`` — DDPM out-of-distribution reconstruction (Graham et al., *Denoising diffusion
  models for out-of-distribution detection*, CVPR-W 2023): forward-noise the image to a mid step t
  (default 250 of 1000), denoise it back to t = 0 with deterministic DDIM steps, compare.

Shared machinery (one copy, in :class:`ReconstructionDetector`):

* one training loop (:func:`train_reconstruction`, on the shared step loop of
  :mod:`..components.fit`): AdamW + cosine schedule over ``steps`` random mini-batches of real
  images, seeded;
* the per-pixel error map e(x) ≥ 0 of each method; **raw score** = mean of e over the score region
  (``score_region="image"`` or ``"center"``, a ``center_patch``-sided centre square);
* **probability** = :class:`EmpiricalCDF` of the raw score among the real validation images
  (monotone, so rankings and AUC are those of the raw score); **threshold** τ on the validation
  reals at ``target_fpr``;
* **map** = 1 − exp(−e / s), s = 99th percentile of e over validation reals (strictly monotone in e).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...io.preprocess import Preprocessing
from ..base import Detector
from ..components.fit import fit_steps, optimiser_step, time_aware_cosine
from ..components.loaders import dataset_labels
from ..components.seeding import seed_everything
from ..registry import register_detector
from .models import VAE, ConvAE, UNetAE, kl_divergence, make_unet2d

_LUMA = torch.tensor([0.299, 0.587, 0.114])

COMMON_DEFAULTS: dict[str, Any] = {
    "steps": 300,  # optimisation steps (mini-batches); "epochs" is accepted as an alias: steps = epochs·⌈N/batch⌉
    "epochs": None,
    "batch_size": 16,
    "lr": 2e-3,
    "weight_decay": 1e-5,
    "max_seconds": None,  # stop training after this wall time (the LR schedule then follows time: machine-dependent)
    "target_fpr": 0.05,
    "score_region": "image",  # "image" | "center"
    "center_patch": 32,
    "score_batch": 16,
    "progress": True,
}


# --------------------------------------------------------------------------- calibration
class EmpiricalCDF:
    """Monotone map of raw anomaly scores to [0, 1]: the empirical CDF among real validation scores.

    Inside the range of the n reference scores the CDF is linearly interpolated between
    (k + 1)/(n + 1) plateaus; outside it approaches 0 or 1 with a heavy (1/(1 + distance/spread))
    tail, distance measured on a log scale for non-negative scores, so the map is strictly
    increasing everywhere and two fakes far beyond every real keep their order (no ties at 1).
    """

    def __init__(self, reference: np.ndarray | Sequence[float] = (), log: bool = True):
        self.log = log
        self.reference = np.sort(np.asarray(reference, dtype=np.float64).ravel())

    def _z(self, raw: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(raw, 1e-12)) if self.log else raw

    def __call__(self, raw: np.ndarray | Sequence[float]) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        n = self.reference.size
        if n == 0:  # not calibrated yet: a fixed monotone squashing
            return 1.0 / (1.0 + np.exp(-np.clip(self._z(raw), -50, 50)))
        ref, z = self._z(self.reference), self._z(raw)
        q = np.percentile(ref, [25, 75]) if n > 1 else np.array([0.0, 0.0])
        scale = max(float(q[1] - q[0]) / 1.349, float(ref.std()), 1e-3)
        lo, hi = 1.0 / (n + 1), n / (n + 1.0)
        inside = np.interp(z, ref, np.linspace(lo, hi, n)) if n > 1 else np.full_like(z, 0.5)
        below = lo / (1.0 + np.clip((ref[0] - z) / scale, 0, None))
        above = 1.0 - (1.0 - hi) / (1.0 + np.clip((z - ref[-1]) / scale, 0, None))
        return np.clip(np.where(z < ref[0], below, np.where(z > ref[-1], above, inside)), 0.0, 1.0)


# --------------------------------------------------------------------------- shared training loop
def real_indices(dataset: Sequence) -> np.ndarray:
    """Indices of the real (label 0) items of a dataset; every item when labels are absent."""
    try:
        labels = dataset_labels(dataset)
    except (KeyError, TypeError):
        return np.arange(len(dataset))
    return np.flatnonzero(labels == 0)


def stack_images(dataset: Sequence, indices: Sequence[int]) -> torch.Tensor:
    """N×C×H×W float tensor of ``dataset[i]["image"]`` for ``i`` in ``indices``."""
    return torch.stack([torch.as_tensor(dataset[int(i)]["image"], dtype=torch.float32) for i in indices])


def train_reconstruction(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    images: Callable[[np.ndarray], torch.Tensor],
    n_items: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    max_seconds: float | None = None,
    desc: str = "training",
    show_progress: bool = True,
) -> dict[str, Any]:
    """The one training loop of the reconstruction baselines.

    ``images(idx)`` returns the mini-batch of items ``idx`` (indices into ``range(n_items)``);
    ``loss_fn(batch, generator)`` returns the scalar loss, drawing any randomness (masks, noise,
    timesteps) from ``generator``. AdamW with a cosine-annealed learning rate (to 5%) over
    ``steps``; with ``max_seconds`` training stops when that wall time is spent and the schedule
    follows whichever of steps and time is further along. Returns a summary with the loss curve
    (mean loss over each tenth of training).
    """
    if n_items == 0:
        raise ValueError("no real images to train on (unsupervised detectors train on label-0 items only)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gen = seed_everything(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    t0 = time.time()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, time_aware_cosine(steps, floor=0.05, max_seconds=max_seconds,
                                                                     start=t0))
    model.train()

    def step(_: int) -> float:
        idx = rng.choice(n_items, size=min(batch_size, n_items), replace=n_items < batch_size)
        return float(optimiser_step(loss_fn(images(idx), gen), opt, sched))

    run = fit_steps(step, steps, max_seconds=max_seconds, start=t0, desc=desc, show_progress=show_progress)
    model.eval()
    losses = run.losses
    chunks = np.array_split(np.asarray(losses), min(10, len(losses)))
    return {
        "steps": len(losses),
        "steps_planned": steps,
        "batch_size": batch_size,
        "final_loss": float(np.mean(losses[-max(1, steps // 10):])),
        "loss_curve": [round(float(c.mean()), 6) for c in chunks],
        "seconds": round(run.seconds, 2),
    }


def region_mean(maps: torch.Tensor, region: str, center_patch: int) -> torch.Tensor:
    """Mean of N×H×W maps over the whole image or over the centred ``center_patch`` square."""
    if region == "image":
        return maps.mean(dim=(1, 2))
    if region == "center":
        h, w = maps.shape[-2:]
        ph, pw = min(center_patch, h), min(center_patch, w)
        y0, x0 = (h - ph) // 2, (w - pw) // 2
        return maps[:, y0 : y0 + ph, x0 : x0 + pw].mean(dim=(1, 2))
    raise ValueError(f"score_region must be 'image' or 'center', got {region!r}")


# --------------------------------------------------------------------------- base detector
class ReconstructionDetector(Detector):
    """Base of the reconstruction baselines: subclasses define the model, the loss and e(x)."""

    supervised = False
    version = "1"
    #: every option: COMMON_DEFAULTS plus the method's own (subclasses extend their parent's table)
    DEFAULTS: ClassVar[dict[str, Any]] = COMMON_DEFAULTS
    DEFAULT_PREPROCESSING: ClassVar[Preprocessing] = Preprocessing(channels=1)
    #: spatial side the model input must be a multiple of (inputs are reflect-padded)
    multiple: int = 1

    def __init__(self, **config: Any):
        super().__init__(**config)
        if self.config["score_region"] not in ("image", "center"):
            raise ValueError(f"score_region must be 'image' or 'center', got {self.config['score_region']!r}")
        self.channels = self.preprocessing.channels
        torch.manual_seed(self.seed)
        self.model = self.build_model()
        self.model.eval()
        self.calibrator = EmpiricalCDF(log=self.log_scores)
        self.map_scale = 1.0

    log_scores: ClassVar[bool] = True

    # ----------------------------------------------------------- method hooks
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def train_loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training loss of a real mini-batch (N×C×H×W in [0, 1], size already fitted)."""
        raise NotImplementedError

    def error_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel reconstruction error e(x) ≥ 0, N×H×W, for a fitted-size batch."""
        raise NotImplementedError

    def reconstruct_fitted(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of a fitted-size batch (N×C×H×W in [0, 1])."""
        raise NotImplementedError

    def raw_from_fitted(self, x: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
        """Raw scores (N,) of a fitted-size batch whose original content is the top-left ``valid``."""
        return region_mean(self.error_maps(x)[:, : valid[0], : valid[1]], self.config["score_region"], self.config["center_patch"])

    # ----------------------------------------------------------- input handling
    def _adapt(self, batch: torch.Tensor) -> torch.Tensor:
        """N×C×H×W float in [0, 1] with this model's channel count (grey ↔ RGB converted)."""
        x = batch.float()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"expected an N×C×H×W batch, got shape {tuple(batch.shape)}")
        if x.shape[1] == self.channels:
            return x
        if self.channels == 1 and x.shape[1] == 3:
            return torch.einsum("c,nchw->nhw", _LUMA.to(x), x)[:, None]
        if self.channels == 3 and x.shape[1] == 1:
            return x.repeat(1, 3, 1, 1)
        raise ValueError(f"{self.name} expects {self.channels}-channel images, got {x.shape[1]} channels")

    def _fit_size(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Reflect-pad H and W up to a multiple of :attr:`multiple`; return the padded batch and (H, W)."""
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, (h, w)

    def _batches(self, images: Any):
        x = self._adapt(self.prepare(images))
        for chunk in x.split(max(1, int(self.config["score_batch"]))):
            yield self._fit_size(chunk)

    # ----------------------------------------------------------- public scoring
    @torch.no_grad()
    def raw_scores(self, images: Any) -> np.ndarray:
        """Uncalibrated anomaly scores (N,): higher = more anomalous (mean error over the score region)."""
        self.model.eval()
        out = [self.raw_from_fitted(x, hw).double().numpy() for x, hw in self._batches(images)]
        return np.concatenate(out) if out else np.zeros(0)

    @torch.no_grad()
    def error_map(self, images: Any) -> np.ndarray:
        """Raw per-pixel error maps e(x), N×H×W (not squashed to [0, 1])."""
        self.model.eval()
        out = [self.error_maps(x)[:, : hw[0], : hw[1]].numpy() for x, hw in self._batches(images)]
        return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)

    @torch.no_grad()
    def reconstruct(self, images: Any) -> np.ndarray:
        """Reconstructions N×C×H×W in [0, 1] (for inspection and figures)."""
        self.model.eval()
        out = [self.reconstruct_fitted(x)[..., : hw[0], : hw[1]].numpy() for x, hw in self._batches(images)]
        return np.concatenate(out)

    def probability(self, raw: np.ndarray | Sequence[float]) -> np.ndarray:
        """Monotone map raw score → probability of fake (the empirical CDF among real validation scores)."""
        return self.calibrator(raw)

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        return self.probability(self.raw_scores(batch))

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        e = self.error_map(batch).astype(np.float64)
        return (1.0 - np.exp(-e / max(self.map_scale, 1e-12))).astype(np.float32)  # strictly monotone in e

    # ----------------------------------------------------------- training
    def _train_steps(self, n_items: int) -> int:
        c = self.config
        if c["epochs"] is not None:
            return max(1, int(c["epochs"]) * math.ceil(n_items / c["batch_size"]))
        return int(c["steps"])

    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train on the real items of ``train``; calibrate probability and τ on the real items of ``val``."""
        c = self.config
        idx = real_indices(train)

        def batch(sel: np.ndarray) -> torch.Tensor:
            return self._fit_size(self._adapt(stack_images(train, idx[sel])))[0]

        summary = train_reconstruction(
            self.model, self.train_loss, batch, len(idx), steps=self._train_steps(len(idx)),
            batch_size=c["batch_size"], lr=c["lr"], weight_decay=c["weight_decay"], seed=self.seed,
            max_seconds=c["max_seconds"], desc=f"{self.name} training", show_progress=bool(c["progress"]),
        )
        summary.update(n_train_real=int(len(idx)), n_train=len(train))
        val_idx = real_indices(val) if val is not None and len(val) else np.zeros(0, dtype=np.int64)
        if len(val_idx):
            cal_images, source = stack_images(val, val_idx), "fpr_on_real_val"
        else:  # no validation reals: calibrate on the training reals (optimistic; recorded as such)
            cal_images, source = stack_images(train, idx), "fpr_on_real_train"
        self.calibrate(cal_images, method=source)
        summary["n_calibration_real"] = int(len(cal_images))
        self.training_summary = summary
        return summary

    def prepare_calibration(self, images: torch.Tensor) -> None:
        """Hook run before calibration scores are computed (e.g. per-t normalisers)."""

    def calibrate(self, real_images: torch.Tensor, method: str = "fpr_on_real_val") -> None:
        """Fit the empirical-CDF calibrator, the map scale and τ on real images."""
        from ...eval.calibration import calibrate

        self.prepare_calibration(real_images)
        raw = self.raw_scores(real_images)
        self.calibrator = EmpiricalCDF(raw, log=self.log_scores)
        e = self.error_map(real_images)
        self.map_scale = float(np.percentile(e, 99)) if e.size else 1.0
        probs = self.calibrator(raw)
        cal = calibrate(probs, self.config["target_fpr"])
        self.set_threshold(cal.pop("threshold"), **{**cal, "method": method, "probability": "empirical_cdf_of_real_raw_scores"})

    # ----------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out["calibration.reference"] = torch.as_tensor(self.calibrator.reference, dtype=torch.float64)
        out["calibration.map_scale"] = torch.tensor([self.map_scale], dtype=torch.float64)
        out.update(self.extra_state())
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.model.eval()
        self.calibrator = EmpiricalCDF(tensors["calibration.reference"].numpy(), log=self.log_scores)
        self.map_scale = float(tensors["calibration.map_scale"][0])
        self.load_extra_state(tensors)


def _sq_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Channel-averaged squared error, N×H×W."""
    return (a - b).pow(2).mean(dim=1)


# --------------------------------------------------------------------------- AE / U-Net AE
@register_detector
class AEDetector(ReconstructionDetector):
    """``ae``: convolutional autoencoder, e(x) = (x − D(E(x)))² per pixel."""

    name = "ae"
    DEFAULTS = {**ReconstructionDetector.DEFAULTS, "width": 16, "depth": 4, "latent_channels": 16}

    @property
    def multiple(self) -> int:  # type: ignore[override]
        return 2 ** self.config["depth"]

    def build_model(self) -> nn.Module:
        c = self.config
        return ConvAE(self.channels, c["width"], c["depth"], c["latent_channels"])

    def train_loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return F.mse_loss(self.model(x), x)

    def reconstruct_fitted(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def error_maps(self, x: torch.Tensor) -> torch.Tensor:
        return _sq_error(self.model(x), x)


@register_detector
class UNetAEDetector(AEDetector):
    """``unet_ae``: U-Net autoencoder; skips only at the ``skip_levels`` deepest levels, with channel
    dropout ``skip_dropout`` on them while training (so the network is not an identity)."""

    name = "unet_ae"
    DEFAULTS = {**AEDetector.DEFAULTS, "skip_levels": 2, "skip_dropout": 0.5}

    def build_model(self) -> nn.Module:
        c = self.config
        skips = min(int(c["skip_levels"]), c["depth"] - 1)
        return UNetAE(self.channels, self.channels, c["width"], c["depth"], c["latent_channels"], skips, c["skip_dropout"])


# --------------------------------------------------------------------------- in-painting AE
@register_detector
class InpaintAEDetector(AEDetector):
    """``inpaint_ae``: reconstruct a masked-out square from its surroundings (context encoder).

    Input = image with the square set to 0, plus the mask as an extra channel. Trained on squares
    of side ``mask_fraction``·min(H, W), half of them near the centre (±``mask_jitter``·side),
    half anywhere. Score: with ``score_region="center"`` the centre ``center_patch`` square is
    masked and e is averaged inside it ("mask the centre, reconstruct it"); with ``"image"`` the
    mean of the tile map. Map: squares tiled over the image with stride side/2 (the centre square
    always among them), each pixel's error averaged over the tiles that masked it.
    """

    name = "inpaint_ae"
    DEFAULTS = {**AEDetector.DEFAULTS, "skip_levels": 2, "mask_fraction": 0.5, "mask_jitter": 0.25}

    def build_model(self) -> nn.Module:
        c = self.config
        skips = min(int(c["skip_levels"]), c["depth"] - 1)
        return UNetAE(self.channels + 1, self.channels, c["width"], c["depth"], c["latent_channels"], skips, 0.0)

    def _side(self, h: int, w: int) -> int:
        return max(2, int(round(self.config["mask_fraction"] * min(h, w))))

    def _inpaint(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` from its unmasked part; ``mask`` N×1×H×W, 1 = hidden."""
        return self.model(torch.cat([x * (1 - mask), mask], dim=1))

    def train_loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        side = self._side(h, w)
        jit = int(self.config["mask_jitter"] * side)
        mask = torch.zeros(n, 1, h, w)
        for i in range(n):
            if torch.rand((), generator=gen) < 0.5:
                dy, dx = (torch.randint(-jit, jit + 1, (2,), generator=gen) if jit else torch.zeros(2, dtype=torch.long)).tolist()
                y0 = int(np.clip((h - side) // 2 + dy, 0, h - side))
                x0 = int(np.clip((w - side) // 2 + dx, 0, w - side))
            else:
                y0 = int(torch.randint(0, h - side + 1, (), generator=gen))
                x0 = int(torch.randint(0, w - side + 1, (), generator=gen))
            mask[i, :, y0 : y0 + side, x0 : x0 + side] = 1
        err = (self._inpaint(x, mask) - x).pow(2) * mask
        return err.sum() / (mask.sum() * x.shape[1])

    def _tiles(self, h: int, w: int) -> list[tuple[int, int, int]]:
        side = self._side(h, w)
        stride = max(1, side // 2)

        def starts(n: int) -> list[int]:
            s = list(range(0, n - side + 1, stride))
            if s[-1] != n - side:
                s.append(n - side)
            return s

        tiles = {(y, x) for y in starts(h) for x in starts(w)}
        tiles.add(((h - side) // 2, (w - side) // 2))
        return [(y, x, side) for y, x in sorted(tiles)]

    def error_maps(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        total, cover = torch.zeros(n, h, w), torch.zeros(h, w)
        for y0, x0, side in self._tiles(h, w):
            mask = torch.zeros(1, 1, h, w)
            mask[..., y0 : y0 + side, x0 : x0 + side] = 1
            err = _sq_error(self._inpaint(x, mask.expand(n, -1, -1, -1)), x)
            total[:, y0 : y0 + side, x0 : x0 + side] += err[:, y0 : y0 + side, x0 : x0 + side]
            cover[y0 : y0 + side, x0 : x0 + side] += 1
        return total / cover.clamp_min(1)

    def reconstruct_fitted(self, x: torch.Tensor) -> torch.Tensor:
        """Centre square in-painted, rest of the image as given."""
        n, _, h, w = x.shape
        side = self._side(h, w)
        mask = torch.zeros(n, 1, h, w)
        mask[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side] = 1
        return x * (1 - mask) + self._inpaint(x, mask) * mask

    def raw_from_fitted(self, x: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
        if self.config["score_region"] == "image":
            return super().raw_from_fitted(x, valid)
        h, w = valid
        side = min(int(self.config["center_patch"]), h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        mask = torch.zeros(x.shape[0], 1, *x.shape[-2:])
        mask[..., y0 : y0 + side, x0 : x0 + side] = 1
        err = _sq_error(self._inpaint(x, mask), x)
        return err[:, y0 : y0 + side, x0 : x0 + side].mean(dim=(1, 2))


# --------------------------------------------------------------------------- one-class VAE
@register_detector
class OCVAEDetector(ReconstructionDetector):
    """``oc_vae``: one-class VAE trained with ELBO = Σ(x − x̂)² + β·KL; scored deterministically
    from the posterior mean μ: e(x) = (x − D(μ(x)))², raw = region mean of e + ``score_kl``·KL/(H·W).

    The dense latent fixes the input side to ``preprocessing.size``; other sizes are resized
    (bilinear) in and the maps resized back.
    """

    name = "oc_vae"
    DEFAULTS = {**ReconstructionDetector.DEFAULTS, "width": 16, "depth": 4, "latent_dim": 64, "beta": 1.0,
                "score_kl": 0.0}

    def build_model(self) -> nn.Module:
        c = self.config
        return VAE(self.channels, self.preprocessing.size, c["width"], c["depth"], c["latent_dim"])

    def _fit_size(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        s = self.preprocessing.size
        if tuple(x.shape[-2:]) == (s, s):
            return x, (s, s)
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True), (s, s)

    def train_loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        recon, mu, logvar = self.model(x, sample=True, generator=gen)
        sse = (recon - x).pow(2).sum(dim=(1, 2, 3))
        return (sse + self.config["beta"] * kl_divergence(mu, logvar)).mean() / x[0].numel()

    def reconstruct_fitted(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, sample=False)[0]

    def error_maps(self, x: torch.Tensor) -> torch.Tensor:
        return _sq_error(self.reconstruct_fitted(x), x)

    def raw_from_fitted(self, x: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
        recon, mu, logvar = self.model(x, sample=False)
        raw = region_mean(_sq_error(recon, x), self.config["score_region"], self.config["center_patch"])
        if self.config["score_kl"]:
            raw = raw + self.config["score_kl"] * kl_divergence(mu, logvar) / x[0, 0].numel()
        return raw

    @torch.no_grad()
    def error_map(self, images: Any) -> np.ndarray:
        x = self._adapt(self.prepare(images))
        maps = super().error_map(x)
        if tuple(maps.shape[-2:]) != tuple(x.shape[-2:]):
            maps = F.interpolate(torch.from_numpy(maps)[:, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                 align_corners=False)[:, 0].clamp_min(0).numpy()
        return maps

    @torch.no_grad()
    def reconstruct(self, images: Any) -> np.ndarray:
        x = self._adapt(self.prepare(images))
        rec = torch.from_numpy(super().reconstruct(x))
        if tuple(rec.shape[-2:]) != tuple(x.shape[-2:]):
            rec = F.interpolate(rec, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False).clamp(0, 1)
        return rec.numpy()


# --------------------------------------------------------------------------- DDPM OOD
@register_detector
class DDPMOODDetector(ReconstructionDetector):
    """``ddpm_ood``: DDPM out-of-distribution reconstruction (Graham et al. 2023).

    ε_θ is a ``diffusers.UNet2DModel`` trained with ‖ε − ε_θ(x_t, t)‖², t uniform over all
    ``num_train_timesteps`` (``DDPMScheduler``). Scoring, for each t in ``t_values``: x_t =
    √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε with one fixed seeded ε (identical for every image, so scores do not
    depend on batching and repeat exactly), then ``ddim_steps`` deterministic DDIM steps (η = 0)
    back to x̂₀; e_t = ((x₀ − x̂₀)/2)² per pixel (the /2 maps the model's [−1, 1] range to [0, 1]).
    Several t are combined as the mean of e_t / m_t, m_t = mean e_t over the calibration reals.
    """

    name = "ddpm_ood"
    DEFAULTS = {
        **ReconstructionDetector.DEFAULTS,
        "base_width": 16,
        "levels": 3,
        "layers_per_block": 1,
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "t_values": [250],
        "ddim_steps": 10,
        "lr": 1e-3,
    }

    def __init__(self, **config: Any):
        super().__init__(**config)
        from diffusers import DDIMScheduler, DDPMScheduler

        c = self.config
        c["t_values"] = [int(t) for t in c["t_values"]]
        if not c["t_values"] or not all(0 < t < c["num_train_timesteps"] for t in c["t_values"]):
            raise ValueError(f"t_values must lie in (0, {c['num_train_timesteps']}), got {c['t_values']}")
        self.scheduler = DDPMScheduler(num_train_timesteps=c["num_train_timesteps"], beta_schedule=c["beta_schedule"])
        self.ddim = DDIMScheduler.from_config(self.scheduler.config)
        self.t_norm = torch.ones(len(c["t_values"]), dtype=torch.float64)

    @property
    def multiple(self) -> int:  # type: ignore[override]
        return 2 ** (self.config["levels"] - 1)

    @property
    def unet(self) -> nn.Module:
        """The noise predictor ε_θ (a ``diffusers.UNet2DModel``)."""
        return self.model

    @staticmethod
    def to_model_range(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] → [−1, 1]."""
        return x * 2.0 - 1.0

    @staticmethod
    def from_model_range(x: torch.Tensor) -> torch.Tensor:
        """[−1, 1] → [0, 1]."""
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def build_model(self) -> nn.Module:
        c = self.config
        return make_unet2d(self.channels, self.preprocessing.size, c["base_width"], c["levels"], c["layers_per_block"])

    def train_loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x0 = self.to_model_range(x)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, self.config["num_train_timesteps"], (x0.shape[0],), generator=gen)
        return F.mse_loss(self.model(self.scheduler.add_noise(x0, noise, t), t).sample, noise)

    def _noise(self, shape: tuple[int, ...], t: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1000003 + t)
        return torch.randn((1, *shape[1:]), generator=g).expand(shape[0], -1, -1, -1)

    def _ddim_timesteps(self, t: int) -> list[int]:
        """DDIM timesteps t_eff > … > 0 with stride ≈ t / ddim_steps (t_eff the largest one ≤ t)."""
        stride = max(1, t // max(1, int(self.config["ddim_steps"])))
        self.ddim.set_timesteps(max(1, self.config["num_train_timesteps"] // stride))
        return [int(s) for s in self.ddim.timesteps if s <= t]

    def denoise_from(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x̂₀ in [0, 1]: noise x (in [0, 1]) to step t with the fixed ε, then DDIM (η = 0) back to 0."""
        x0 = self.to_model_range(x)
        steps = self._ddim_timesteps(t)
        xt = self.scheduler.add_noise(x0, self._noise(tuple(x0.shape), t), torch.tensor([steps[0]]))
        for s in steps:
            eps = self.model(xt, s).sample
            xt = self.ddim.step(eps, s, xt, eta=0.0).prev_sample
        return self.from_model_range(xt)

    def _per_t_errors(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_sq_error(self.denoise_from(x, t), x) for t in self.config["t_values"]]

    def error_maps(self, x: torch.Tensor) -> torch.Tensor:
        errs = self._per_t_errors(x)
        return torch.stack([e / float(m) for e, m in zip(errs, self.t_norm)]).mean(dim=0)

    def reconstruct_fitted(self, x: torch.Tensor) -> torch.Tensor:
        return self.denoise_from(x, self.config["t_values"][0])

    def prepare_calibration(self, images: torch.Tensor) -> None:
        if len(self.config["t_values"]) == 1:
            self.t_norm = torch.ones(1, dtype=torch.float64)
            return
        sums = torch.zeros(len(self.config["t_values"]), dtype=torch.float64)
        with torch.no_grad():
            for x, hw in self._batches(images):
                for i, e in enumerate(self._per_t_errors(x)):
                    sums[i] += e[:, : hw[0], : hw[1]].mean(dim=(1, 2)).double().sum()
        self.t_norm = (sums / max(1, len(images))).clamp_min(1e-12)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"calibration.t_norm": self.t_norm.clone()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t_norm = tensors["calibration.t_norm"].double()
