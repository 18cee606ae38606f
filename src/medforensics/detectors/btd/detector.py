"""``btd``: Back-in-Time Diffusion, unsupervised detection and localisation of tampered scans.

A DDPM noise predictor ε_θ(x_t, t) (``diffusers`` ``UNet2DModel`` + ``DDPMScheduler``) is trained
on real images only. A suspect image x₀ is treated as if it were x_d and taken d reverse steps
back (posterior means, so deterministic; ``stochastic=True`` samples) to x′; the anomaly score
is the mean squared residual (x₀ − x′)² and the residual map is the heat-map. Real images are
close to the model's fixed points; injected or removed structure is not.

Regions of interest (paper: CT 96×96, MRI 128×128 patches): :meth:`BTDDetector.score_patch`
scores the patch around a given centre; without a centre (:meth:`score`, the interface used by
``scan``/``evaluate``) the image is cut into sliding windows of that size, each window is scored,
window scores are aggregated (``max`` or ``mean``) and window residuals are overlap-averaged
into one map. ``score_region="center"`` scores only the central ``center_patch`` square of a
patch/window (the paper's injection setting).

Raw score → probability: p = σ((log s − m) / c), with m the median and c the robust spread
(IQR / 1.349) of log raw scores of *real validation* images — monotone, so the ranking (AUC) is
the raw score's; p = 0.5 is a typical real image. τ is then chosen on those same real
validation scores at ``target_fpr``. Maps are divided by the ``map_percentile`` percentile of
real validation residuals and clipped to [0, 1].

Preprocessing (see ``docs/btd.md``): single channel; CT DICOM/NIfTI are clipped to −700…2000 HU
and scaled to [0, 1] at load time (the foundation's IntensityConfig); MRI DICOM/NIfTI are
scaled per volume (file) at load time; 8-bit PNG slices are taken as exported (/255).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import expit, logit

from ...io.types import UnreadableImageError
from ...io.preprocess import Preprocessing
from ..base import Detector, ImageBatch
from ..components.device import resolve_device
from ..components.fit import fit_steps, optimiser_step, time_aware_cosine
from ..components.loaders import dataset_labels
from ..components.progress import progress
from ..components.seeding import seed_everything
from ..registry import register_detector
from .model import (
    FixedStepNoise,
    back_in_time,
    back_in_time_steps,
    build_scheduler,
    build_unet,
    from_model_range,
    noise_loss,
    predict_noise,
    reverse_steps,
    to_model_range,
)
from .search import (
    DEFICIT_DEFAULTS,
    MIN_Z_SCALE,
    check_window_norm,
    deficit_features,
    fit_deficit,
    fit_norm,
    max_map,
    standardise,
    standardise_deficit,
    window_features,
    window_z,
)
from .patches import (
    extract_windows,
    merge_windows,
    pad_to_min,
    patch_origin,
    region_box,
    robust_scale,
)

#: paper's patch sizes per modality (used when ``patch_size`` is None: chosen at fit time)
PATCH_BY_MODALITY = {"ct": 96, "mri": 128}
DEFAULT_PATCH = 96
_EPS = 1e-12
#: floor of the log-score spread of the probability map, so p saturates at 1.0 (float64) only for raw
#: scores ≳ e^(37·0.1) ≈ 40× the median real score (ties there would blur AUC)
MIN_LOG_SCALE = 0.1
#: max |Δε| an inference runtime may add to ε_θ (the residual moves by √β_t·|Δε| ≈ 0.01·|Δε| at t = 1).
#: Measured for btd-ct: ONNX Runtime fp32 max |Δε| 5.7e-4 moved scores by ≤ 5.7e-6 (raw scores by 1e-5
#: relative, maps by ≤ 5e-4) on 6 real CT slices; 1e-3 keeps scores within ~1e-5.
RUNTIME_TOLERANCE_EPS = 1e-3

DEFAULTS: dict[str, Any] = {
    # noise predictor ε_θ (base_width = the paper's init_features)
    "base_width": 16,
    "channel_mult": [1, 2, 2],
    "layers_per_block": 1,
    "attention": False,
    "norm_num_groups": 8,
    # DDPM schedule
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",  # "linear" | "cosine"
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "t_range": None,  # None: t ~ U{1..T}; int t_max: t ~ U{1..t_max} (BTD only queries small t)
    # detection
    "d": 1,  # back-in-time steps
    "stochastic": False,  # sample x_{t-1} ~ N(μ̃, β̃) instead of taking the posterior mean
    "patch_size": None,  # None: CT 96 / MRI 128 / otherwise 96, chosen from the training data
    "train_patch": None,  # training crop size (default: patch_size; the U-Net is fully convolutional)
    "window": None,  # sliding window (default: patch_size)
    "stride": None,  # default: window // 2
    "aggregate": "max",  # window scores → image score: "max" | "mean"
    "score_region": "full",  # "full" patch/window | "center" square of center_patch px
    "center_patch": 32,
    # search mode (module docstring): "residual" = the paper's window score (mean (x₀ − x′)², unchanged);
    # "z" = each search_window × search_window window's log residual energy standardised by real residual
    # statistics at the same input intensity / texture (``window_norm``, fitted by fit_window_norm);
    # "z2" = two-sided search mode: per window max(z, texture-deficit z) (search module docstring; needs
    # window_norm["deficit"], fitted by fit_window_norm since it exists)
    "window_score": "residual",
    "search_window": 32,
    "search_stride": 16,
    "window_norm": None,
    "z_reference": "none",  # "median": subtract the median window z of the image (ROI: of the patch) — per-image level
    # training
    "steps": 2000,
    "batch_size": 16,
    "lr": 5e-4,
    "weight_decay": 1e-4,
    "warmup_steps": 100,
    "grad_clip": 1.0,
    "ema_decay": 0.999,  # 0 = no EMA
    "flip": True,  # random horizontal flips of training patches
    "max_seconds": None,  # stop after this wall time; the LR schedule then follows time (machine-dependent)
    "log_every": 50,
    # calibration / output
    "target_fpr": 0.05,
    "map_percentile": 99.9,
    "window_batch": 32,
    "device": "cpu",  # "cpu" | "cuda" | "auto"
    "progress": True,
}


#: window scores: the paper's residual, search mode z, two-sided search mode z2 (module :mod:`.search`)
WINDOW_SCORES = ("residual", "z", "z2")
#: keys of the probability map's centre / scale in ``window_norm`` per search-mode score
_Z_KEYS = {"z": ("z_center", "z_scale"), "z2": ("z2_center", "z2_scale")}


@register_detector
class BTDDetector(Detector):
    """Back-in-Time Diffusion (unsupervised; trained on real images only). See the module docstring."""

    name = "btd"
    version = "1"
    supervised = False
    DEFAULTS: ClassVar[dict[str, Any]] = DEFAULTS
    DEFAULT_PREPROCESSING: ClassVar[Preprocessing] = Preprocessing(channels=1)

    def __init__(self, **config: Any):
        super().__init__(**config)
        c = self.config
        c["channel_mult"] = [int(m) for m in c["channel_mult"]]
        self._validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            #: ε_θ(x_t, t), a diffusers UNet2DModel (public: used by the RePaint attack)
            self.unet = build_unet(self.preprocessing.channels, c["base_width"], c["channel_mult"],
                                   c["layers_per_block"], c["attention"], c["norm_num_groups"],
                                   sample_size=self.patch_size)
        #: the DDPM noise schedule, a diffusers DDPMScheduler (public: used by the RePaint attack)
        self.scheduler = build_scheduler(c["num_train_timesteps"], c["beta_schedule"], c["beta_start"], c["beta_end"])
        self.device = resolve_device(c["device"])
        self.unet.to(self.device).eval()
        # score calibration: p = σ((log s − score_center) / score_scale); maps / map_scale (0 = per image)
        self.score_center, self.score_scale, self.map_scale = 0.0, 1.0, 0.0

    def _validate(self) -> None:
        c = self.config
        T = int(c["num_train_timesteps"])
        if not 1 <= int(c["d"]) <= T:
            raise ValueError(f"d must be in [1, {T}], got {c['d']}")
        if c["t_range"] is not None and not 1 <= int(c["t_range"]) <= T:
            raise ValueError(f"t_range must be None or an int in [1, {T}], got {c['t_range']}")
        if c["aggregate"] not in ("max", "mean"):
            raise ValueError(f"aggregate must be 'max' or 'mean', got {c['aggregate']!r}")
        if c["score_region"] not in ("full", "center"):
            raise ValueError(f"score_region must be 'full' or 'center', got {c['score_region']!r}")
        if c["window_score"] not in WINDOW_SCORES:
            raise ValueError(f"window_score must be one of {', '.join(map(repr, WINDOW_SCORES))}, "
                             f"got {c['window_score']!r}")
        for key in ("search_window", "search_stride"):
            if int(c[key]) <= 0:
                raise ValueError(f"{key} must be positive, got {c[key]}")
        if c["window_norm"] is not None:
            check_window_norm(c["window_norm"])
        if c["z_reference"] not in ("none", "median"):
            raise ValueError(f"z_reference must be 'none' or 'median', got {c['z_reference']!r}")
        factor = 2 ** (len(c["channel_mult"]) - 1)
        for key in ("patch_size", "window", "train_patch"):
            v = c[key]
            if v is not None and (int(v) <= 0 or int(v) % factor):
                raise ValueError(f"{key}={v} must be a positive multiple of {factor} (2^(levels−1) for "
                                 f"{len(c['channel_mult'])} U-Net levels)")
        if c["stride"] is not None and int(c["stride"]) <= 0:
            raise ValueError(f"stride must be positive, got {c['stride']}")
        if not 0 < float(c["target_fpr"]) < 1:
            raise ValueError(f"target_fpr must be in (0, 1), got {c['target_fpr']}")

    # ------------------------------------------------------------------ geometry
    @property
    def patch_size(self) -> int:
        """Training patch / region-of-interest size in preprocessed pixels."""
        return int(self.config["patch_size"] or DEFAULT_PATCH)

    @property
    def train_patch(self) -> int:
        """Size of the random training crops."""
        return int(self.config["train_patch"] or self.patch_size)

    @property
    def window(self) -> int:
        return int(self.config["window"] or self.patch_size)

    @property
    def stride(self) -> int:
        return int(self.config["stride"] or max(1, self.window // 2))

    # ------------------------------------------------------------------ ranges / channels
    @staticmethod
    def to_model_range(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels → the DDPM's [−1, 1]."""
        return to_model_range(x)

    @staticmethod
    def from_model_range(x: torch.Tensor) -> torch.Tensor:
        """The DDPM's [−1, 1] → [0, 1] pixels (not clipped)."""
        return from_model_range(x)

    def _to_model_channels(self, batch: torch.Tensor) -> torch.Tensor:
        """N×C×H×W with C converted to the model's channels (RGB → luma, grey → replicated)."""
        if batch.ndim == 3:
            batch = batch[:, None]
        if batch.ndim != 4:
            raise ValueError(f"expected an N×C×H×W batch, got shape {tuple(batch.shape)}")
        want, have = self.preprocessing.channels, batch.shape[1]
        if have == want:
            return batch.float()
        if have == 3 and want == 1:
            luma = torch.tensor([0.299, 0.587, 0.114], dtype=batch.dtype).view(1, 3, 1, 1)
            return (batch * luma).sum(1, keepdim=True).float()
        if have == 1 and want == 3:
            return batch.repeat(1, 3, 1, 1).float()
        raise ValueError(f"batch has {have} channels; this BTD model takes {want}")

    def _batch(self, images: ImageBatch) -> torch.Tensor:
        return self._to_model_channels(self.prepare(images))

    # ------------------------------------------------------------------ back in time
    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g

    @torch.no_grad()
    def reconstruct(self, images: ImageBatch, d: int | None = None, *, stochastic: bool | None = None) -> torch.Tensor:
        """x′: the images (as [0, 1] pixels) taken d steps back in time, whole image at once
        (padded to a multiple of the U-Net's down-sampling factor), returned in [0, 1] units (not clipped)."""
        batch = self._batch(images)
        h, w = batch.shape[-2:]
        f = 2 ** (len(self.config["channel_mult"]) - 1)
        ph, pw = (-h) % f, (-w) % f
        padded = torch.nn.functional.pad(batch, (0, pw, 0, ph), mode="replicate") if ph or pw else batch
        x = to_model_range(padded).to(self.device)
        out = back_in_time(self.unet, self.scheduler, x, int(d or self.config["d"]),
                           stochastic=self.config["stochastic"] if stochastic is None else stochastic,
                           generator=self._generator())
        return from_model_range(out.cpu())[:, :, :h, :w]

    @torch.no_grad()
    def _residuals(self, crops: torch.Tensor, d: int | None = None) -> torch.Tensor:
        """Squared residual (x₀ − x′)² in [0, 1] pixel units, channel-averaged: K×h×w for K crops.

        The crops of every image of a batch go through ε_θ together (``window_batch`` at a time); the
        noise-free terms of the reverse steps are computed once per d (:func:`reverse_steps`); a
        recorded inference runtime (:mod:`medforensics.detectors.runtime`) replaces the eager U-Net at
        the step it was chosen for. Same result as :func:`back_in_time` with the eager U-Net."""
        d = int(d or self.config["d"])
        gen = self._generator()
        self.unet.eval()
        steps = self._reverse_steps(d)
        noise = self._noise_fn()
        out = []
        for chunk in crops.split(max(1, int(self.config["window_batch"]))):
            x0 = to_model_range(chunk).to(self.device)
            x_prime = back_in_time_steps(noise, steps, x0, stochastic=self.config["stochastic"], generator=gen)
            out.append((((x0 - x_prime) * 0.5) ** 2).mean(1).cpu())  # (x₀ − x′)² in [0, 1] units
        return torch.cat(out) if out else torch.zeros((0, *crops.shape[-2:]))

    def _reverse_steps(self, d: int) -> tuple:
        cache = self.__dict__.setdefault("_steps_cache", {})
        if d not in cache:
            cache[d] = reverse_steps(self.scheduler, d)
        return cache[d]

    def noise_module(self, t: int = 1) -> FixedStepNoise:
        """ε_θ(·, t) as a tensor → tensor module (model-range windows in, predicted noise out): what an
        inference runtime runs."""
        self.unet.eval()
        return FixedStepNoise(self.unet, t).eval()

    def runtime_spec(self, images: torch.Tensor) -> dict[str, Any]:
        """What :func:`~medforensics.detectors.runtime.optimise_model_dir` measures: ε_θ at the first
        reverse step (t = d) on the sliding windows of ``images`` (preprocessed reals), in model range."""
        from ..runtime import Tolerance

        batch = self._to_model_channels(images.float())
        wins, positions = extract_windows(pad_to_min(batch, self.window), self.window, self.stride)
        x = to_model_range(wins)
        per_image = len(positions)
        step = int(self.config["d"])
        chunks = [x[i : i + per_image] for i in range(0, len(x), per_image)]
        return {"module": self.noise_module(step), "example": x[: per_image * min(4, len(chunks))],
                "calibration": chunks, "parity": chunks, "leaf_modules": (),
                "digest": self._runtime_digest(step), "extra": {"step": step},
                "tolerance": Tolerance(logit=RUNTIME_TOLERANCE_EPS, prob=float("inf"))}

    def _runtime_digest(self, step: int) -> str:
        from ..runtime import weights_digest

        return weights_digest({**{k: v for k, v in self.state_dict().items() if k.startswith("unet.")},
                               "step": torch.tensor([int(step)])})

    def _noise_fn(self) -> Any:
        """ε_θ(x, t): the recorded runtime at its step (CPU only), else the eager U-Net."""
        runner, step = None, None
        if self.runtime and self.runtime.get("name", "eager") != "eager" and self.device.type == "cpu":
            if self.__dict__.get("_runtime_runner", False) is False:
                from ..runtime import load_runner

                step = int(self.runtime.get("step", 1))
                self._runtime_runner = load_runner(self.runtime, self.noise_module(step), self.model_dir,
                                                   self._runtime_digest(step))
            runner, step = self._runtime_runner, int(self.runtime.get("step", 1))

        def noise(x: torch.Tensor, t: int) -> torch.Tensor:
            if runner is not None and t == step:
                return runner(x)
            return predict_noise(self.unet, x, t)

        return noise

    def _region_mean(self, res: torch.Tensor, centers_in_patch: Sequence[tuple[float, float]]) -> torch.Tensor:
        """Mean residual of each K×h×w patch over the whole patch or its ``center_patch`` square."""
        if self.config["score_region"] == "full":
            return res.mean(dim=(-2, -1))
        size = int(self.config["center_patch"])
        vals = []
        for r, cp in zip(res, centers_in_patch):
            y0, y1, x0, x1 = region_box(cp, size, r.shape[-1])
            vals.append(r[y0:y1, x0:x1].mean())
        return torch.stack(vals) if vals else torch.zeros(0)

    def _sliding(self, batch: torch.Tensor, d: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Raw residual maps N×H×W, window scores N×K and the K window positions (y, x)."""
        n, _, h, w = batch.shape
        win = self.window
        padded = pad_to_min(batch, win)
        crops, positions = extract_windows(padded, win, self.stride)
        res = self._residuals(crops, d)
        k = len(positions)
        scores = self._region_mean(res, [(win / 2, win / 2)] * len(res)).view(n, k)
        maps = merge_windows(res.view(n, k, win, win), positions, tuple(padded.shape[-2:]))[:, :h, :w]
        return maps, scores, positions

    def _centred(self, batch: torch.Tensor, centers: Sequence[tuple[float, float] | None], d: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps N×H×W and raw scores N: the patch around each centre (sliding window where None)."""
        n, _, h, w = batch.shape
        if len(centers) != n:
            raise ValueError(f"got {len(centers)} centres for {n} images")
        p = self.patch_size
        padded = pad_to_min(batch, p)
        ph, pw = padded.shape[-2:]
        maps, scores = torch.zeros((n, h, w)), torch.zeros(n)
        idx = [i for i, c in enumerate(centers) if c is not None]
        if idx:
            origins = [patch_origin(centers[i], p, (ph, pw)) for i in idx]
            crops = torch.stack([padded[i, :, y : y + p, x : x + p] for i, (y, x) in zip(idx, origins)])
            res = self._residuals(crops, d)
            inside = [(float(centers[i][0]) - y, float(centers[i][1]) - x) for i, (y, x) in zip(idx, origins)]
            scores[idx] = self._region_mean(res, inside)
            for j, (i, (y, x)) in enumerate(zip(idx, origins)):
                full = torch.zeros((ph, pw))
                full[y : y + p, x : x + p] = res[j]
                maps[i] = full[:h, :w]
        rest = [i for i, c in enumerate(centers) if c is None]
        if rest:
            m, s, _ = self._sliding(batch[rest], d)
            maps[rest], scores[rest] = m, self._aggregate(s)
        return maps, scores

    def _aggregate(self, window_scores: torch.Tensor) -> torch.Tensor:
        return window_scores.amax(1) if self.config["aggregate"] == "max" else window_scores.mean(1)

    def _analyse(self, batch: torch.Tensor, centers: Sequence[tuple[float, float] | None] | None = None,
                 d: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw maps N×H×W, raw scores N) for a model-channel batch; in search mode (``window_score="z"``)
        the maps and scores are window z-scores (:mod:`.search`)."""
        if self._z_mode():
            return self._search(batch, centers, d)
        if centers is None:
            maps, win_scores, _ = self._sliding(batch, d)
            return maps, self._aggregate(win_scores)
        return self._centred(batch, centers, d)

    # ------------------------------------------------------------------ search mode (window z-scores)
    def _z_mode(self) -> bool:
        mode = self.config["window_score"]
        if mode not in _Z_KEYS or self.__dict__.get("_force_residual"):
            return False
        if not self.config["window_norm"]:
            raise ValueError(f"window_score={mode!r} needs real residual statistics (window_norm): fit them with "
                             "BTDDetector.fit_window_norm (bench/btd_paper_setting/window_normalisation.py)")
        if mode == "z2" and not self.config["window_norm"].get("deficit"):
            raise ValueError("window_score='z2' needs texture-deficit statistics (window_norm['deficit']), which "
                             "this model's window_norm predates: refit them with BTDDetector.fit_window_norm")
        return True

    def _two_sided(self) -> bool:
        return self.config["window_score"] == "z2"

    def _search(self, batch: torch.Tensor, centers: Sequence[tuple[float, float] | None] | None = None,
                d: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Window z maps N×H×W (per pixel the max z of the windows covering it) and scores N (max z); with
        ``centers``, the z of the ``search_window`` square centred on each centre (its residual from the
        ``patch_size`` patch around the centre, as in :meth:`_centred`)."""
        norm = self.config["window_norm"]
        n, _, h, w = batch.shape
        median = self.config["z_reference"] == "median"
        two = self._two_sided()
        if centers is None or all(c is None for c in centers):
            maps, _, _ = self._sliding(batch, d)
            z, positions, win = window_z(norm, batch.mean(1), maps, two_sided=two)
            if median:
                z = z - np.median(z, axis=1, keepdims=True)
            z = torch.from_numpy(z)
            return max_map(z, positions, win, (h, w)), z.amax(1).float()
        if len(centers) != n:
            raise ValueError(f"got {len(centers)} centres for {n} images")
        out_maps, scores = torch.full((n, h, w), -1e6), torch.zeros(n)
        rest = [i for i, c in enumerate(centers) if c is None]
        if rest:
            out_maps[rest], scores[rest] = self._search(batch[rest], None, d)
        idx = [i for i, c in enumerate(centers) if c is not None]
        res_maps = torch.zeros((n, h, w))
        res_maps[idx] = self._centred(batch[idx], [centers[i] for i in idx], d)[0]
        win = int(min(norm["window"], h, w))
        for i in idx:
            c = centers[i]
            y0 = min(max(0, int(round(float(c[0]) - win / 2))), h - win)
            x0 = min(max(0, int(round(float(c[1]) - win / 2))), w - win)
            img = batch[i].mean(0)[y0 : y0 + win, x0 : x0 + win][None]
            z = float(window_z(norm, img, res_maps[i, y0 : y0 + win, x0 : x0 + win][None], two_sided=two,
                               window=win, stride=win)[0][0, 0])
            if median:  # the reference: the median window z of the patch that went back in time
                p = min(self.patch_size, h, w)
                py = min(max(0, int(round(float(c[0]) - p / 2))), h - p)
                px = min(max(0, int(round(float(c[1]) - p / 2))), w - p)
                pz = window_z(norm, batch[i].mean(0)[None, py : py + p, px : px + p],
                              res_maps[i, py : py + p, px : px + p][None], two_sided=two, window=win,
                              stride=norm["stride"])[0]
                z -= float(np.median(pz))
            scores[i] = z
            out_maps[i, y0 : y0 + win, x0 : x0 + win] = z
        return out_maps, scores

    @torch.no_grad()
    def fit_window_norm(self, reals: Sequence[torch.Tensor] | torch.Tensor, val: Sequence[torch.Tensor] | torch.Tensor,
                        *, bins: int = 8, min_count: int = 30, window: int | None = None, stride: int | None = None,
                        source: str = "", deficit: dict[str, Any] | None = None) -> dict[str, Any]:
        """Search mode: fit the real window-residual statistics on ``reals`` (preprocessed real slices, C×H×W
        each) and, in the same pass, the texture-deficit statistics of two-sided search mode (``deficit``:
        overrides of :data:`~.search.DEFICIT_DEFAULTS`); then calibrate the ``z2`` and ``z`` scores on ``val``
        reals (τ at ``target_fpr``, each) and switch this detector to ``window_score="z"``. The residual-score
        calibration is kept beside them (:meth:`set_window_score` switches). Returns a summary."""
        c = self.config
        window, stride = int(window or c["search_window"]), int(stride or c["search_stride"])
        dcfg = {**DEFICIT_DEFAULTS, **(deficit or {})}
        t0 = time.time()
        old = c["window_norm"] or {}
        residual_cal = (old["calibration"]["residual"] if c["window_score"] in _Z_KEYS and "calibration" in old
                        else self._calibration_record("residual"))
        feats: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        step = max(1, int(c["window_batch"]) // 4)
        self._force_residual = True
        try:
            for start in progress(range(0, len(reals), step), "btd window statistics", enabled=c["progress"]):
                batch = self._to_model_channels(torch.stack([torch.as_tensor(x) for x in reals[start : start + step]]))
                maps, _, _ = self._sliding(batch)
                r, m, s, _, _ = window_features(batch.mean(1), maps, window, stride)
                q = deficit_features(batch.mean(1), maps, window, stride, feature=dcfg["feature"],
                                     sub_window=dcfg["sub_window"], sub_stride=dcfg["sub_stride"])
                feats.append((r.ravel(), m.ravel(), s.ravel(), q.ravel()))
        finally:
            self._force_residual = False
        r, m, s, q = (np.concatenate([f[k] for f in feats]) for k in range(4))
        norm = fit_norm(r, m, s, bins=bins, min_count=min_count, window=window, stride=stride)
        norm["deficit"] = fit_deficit(norm, q, m, s, min_count=min_count, **dcfg)
        norm.update(n_images=len(reals), source=source)
        c["window_norm"] = norm
        records = {"residual": residual_cal}
        for mode in ("z2", "z"):  # z last: the detector ends in search mode z, as before z2 existed
            c["window_score"] = mode
            records[mode] = self._calibrate_search(val, step)
        norm["calibration"] = records
        return {"window_norm_images": len(reals), "window_norm_windows": int(r.size), "val_images": len(val),
                "val_max_z_median": norm["z_center"], "val_max_z2_median": norm["z2_center"],
                "threshold": self.threshold, "threshold_z2": records["z2"]["threshold"],
                "achieved_fpr": self.calibration.get("achieved_fpr"),
                "achieved_fpr_z2": records["z2"]["calibration"].get("achieved_fpr"), "seconds": round(time.time() - t0, 1)}

    def _calibrate_search(self, val: Sequence[torch.Tensor] | torch.Tensor, step: int) -> dict[str, Any]:
        """Probability map (centre / scale of the real val max window scores) and τ of the current search mode."""
        from ...eval.calibration import calibrate

        mode = self.config["window_score"]
        norm = self.config["window_norm"]
        k_center, k_scale = _Z_KEYS[mode]
        zmax = []
        for start in range(0, len(val), step):
            batch = self._to_model_channels(torch.stack([torch.as_tensor(x) for x in val[start : start + step]]))
            zmax.append(self._search(batch)[1].double().numpy())
        z = np.concatenate(zmax)
        q25, q50, q75 = np.percentile(z, [25, 50, 75])
        norm[k_center] = float(q50)
        norm[k_scale] = float(max((q75 - q25) / 1.349 if len(z) >= 4 else np.std(z), MIN_Z_SCALE))
        probs = self.probability(z)
        cal = calibrate(probs, float(self.config["target_fpr"]))
        self.set_threshold(cal.pop("threshold"), **{**cal, "method": "fpr_on_real_val"},
                           score_map=f"sigmoid((max window {mode} - {k_center}) / {k_scale})", window_score=mode,
                           real_val_scores=[round(float(v), 8) for v in np.sort(probs)])
        return self._calibration_record(mode)

    @torch.no_grad()
    def window_analysis(self, images: ImageBatch, d: int | None = None) -> dict[str, np.ndarray]:
        """All window scores from one back-in-time pass (for comparisons): ``residual`` scores (N, raw, as
        ``window_score="residual"``) and residual maps (N×H×W); with fitted statistics also ``z`` scores (N,
        max window z) and z maps (N×H×W, per pixel the max z of the windows covering it), and with
        texture-deficit statistics the same for ``z2`` (``z2``, ``z2_map``, ``z2_windows[_plain]``) and the
        deficit alone (``zq_windows_plain``)."""
        batch = self._batch(images)
        self._force_residual = True
        try:
            maps, win_scores, _ = self._sliding(batch, d)
        finally:
            self._force_residual = False
        out = {"residual": self._aggregate(win_scores).double().numpy(), "residual_map": maps.numpy()}
        norm = self.config["window_norm"]
        if norm:
            r, m, s, positions, win = window_features(batch.mean(1), maps, norm["window"], norm["stride"])
            shape = tuple(batch.shape[-2:])

            def window_score(name: str, z: np.ndarray) -> None:
                """``name`` (slice score: max window), ``name_map`` and the windows before/after the reference."""
                out[f"{name}_windows_plain"] = z
                if self.config["z_reference"] == "median":
                    z = z - np.median(z, axis=1, keepdims=True)
                out[f"{name}_windows"] = z
                zt = torch.from_numpy(z)
                out[name] = zt.amax(1).numpy()
                out[f"{name}_map"] = max_map(zt, positions, win, shape).numpy()

            window_score("z", standardise(norm, r, m, s))
            if norm.get("deficit"):
                dn = norm["deficit"]
                q = deficit_features(batch.mean(1), maps, norm["window"], norm["stride"], feature=dn["feature"],
                                     sub_window=dn["sub_window"], sub_stride=dn["sub_stride"])
                out["zq_windows_plain"] = zq = standardise_deficit(norm, q, m, s)
                window_score("z2", np.maximum(out["z_windows_plain"], zq))
        return out

    def _calibration_record(self, mode: str) -> dict[str, Any]:
        return {"threshold": self.threshold, "calibration": dict(self.calibration), "window_score": mode}

    def set_window_score(self, mode: str) -> None:
        """Switch between the paper's window score (``"residual"``), search mode (``"z"``) and two-sided
        search mode (``"z2"``), with each one's stored calibration (τ, real validation scores); "z" needs
        fitted statistics, "z2" also their texture-deficit part."""
        if mode not in WINDOW_SCORES:
            raise ValueError(f"window_score must be one of {', '.join(map(repr, WINDOW_SCORES))}, got {mode!r}")
        norm = self.config["window_norm"]
        if mode in _Z_KEYS and not norm:
            raise ValueError("no window statistics: fit them first (fit_window_norm)")
        if mode == "z2" and not norm.get("deficit"):
            raise ValueError("no texture-deficit statistics (window_norm['deficit']): refit them (fit_window_norm)")
        if mode == self.config["window_score"]:
            return
        if norm and "calibration" in norm:
            norm["calibration"][self.config["window_score"]] = self._calibration_record(self.config["window_score"])
            rec = norm["calibration"].get(mode)
            if rec:
                self.threshold, self.calibration = float(rec["threshold"]), dict(rec["calibration"])
        self.config["window_score"] = mode

    # ------------------------------------------------------------------ public scoring API
    def raw_scores(self, images: ImageBatch, centers: Sequence[tuple[float, float] | None] | None = None,
                   d: int | None = None) -> np.ndarray:
        """BTD's raw anomaly score per image: mean (x₀ − x′)² in [0, 1] pixel units (N,), float64.

        ``centers`` (one (y, x) per image in preprocessed pixels, or None for sliding windows) selects the
        patch around each centre; ``d`` overrides the configured number of back-in-time steps.
        """
        batch = self._batch(images)
        if len(batch) == 0:
            return np.zeros(0)
        return self._analyse(batch, centers, d)[1].double().numpy()

    def analyse(self, images: ImageBatch, centers: Sequence[tuple[float, float] | None] | None = None,
                d: int | None = None) -> dict[str, np.ndarray]:
        """Everything from one back-in-time pass: ``raw`` scores (N,), ``score`` probabilities (N,) and
        normalised heat-maps ``map`` (N×H×W in [0, 1]); ``centers`` and ``d`` as in :meth:`raw_scores`."""
        batch = self._batch(images)
        if len(batch) == 0:
            h, w = batch.shape[-2:]
            return {"raw": np.zeros(0), "score": np.zeros(0), "map": np.zeros((0, h, w), np.float32)}
        maps, raw = self._analyse(batch, centers, d)
        raw_np = raw.double().numpy()
        return {"raw": raw_np, "score": self.probability(raw_np), "map": self._normalise_maps(maps.numpy())}

    def probability(self, raw: np.ndarray | Sequence[float]) -> np.ndarray:
        """Monotone map raw score → [0, 1]: σ((log s − m) / c) with m, c from real validation scores; in
        search mode σ((z − m) / c) with m, c from the real validation max window z."""
        if self._z_mode() and _Z_KEYS[self.config["window_score"]][0] in self.config["window_norm"]:
            norm = self.config["window_norm"]
            kc, ks = _Z_KEYS[self.config["window_score"]]
            return expit((np.asarray(raw, dtype=np.float64) - norm[kc]) / norm[ks])
        logs = np.log(np.asarray(raw, dtype=np.float64) + _EPS)
        return expit((logs - self.score_center) / self.score_scale)

    def raw_threshold(self) -> float:
        """τ expressed as a raw score (inverse of :meth:`probability`)."""
        tau = min(max(self.threshold, 1e-12), 1 - 1e-12)
        if self._z_mode() and _Z_KEYS[self.config["window_score"]][0] in self.config["window_norm"]:
            norm = self.config["window_norm"]
            kc, ks = _Z_KEYS[self.config["window_score"]]
            return float(norm[kc] + norm[ks] * float(logit(tau)))
        return float(math.exp(self.score_center + self.score_scale * float(logit(tau))) - _EPS)

    def score_patch(self, images: ImageBatch, centers: Sequence[tuple[float, float] | None] | tuple[float, float],
                    d: int | None = None) -> np.ndarray:
        """Probability of tampering of the ``patch_size`` patch around each centre (y, x), in preprocessed
        pixels (see :func:`~medforensics.detectors.btd.patches.prepared_center`). One centre for all images
        may be given as a single (y, x)."""
        batch = self._batch(images)
        if len(centers) == 2 and all(isinstance(v, (int, float, np.integer, np.floating)) for v in centers):
            centers = [tuple(centers)] * len(batch)  # type: ignore[list-item]
        return self.probability(self._analyse(batch, list(centers), d)[1].double().numpy())

    def residual_maps(self, images: ImageBatch, centers: Sequence[tuple[float, float] | None] | None = None,
                      d: int | None = None, normalise: bool = True) -> np.ndarray:
        """Residual heat-maps N×H×W: raw (x₀ − x′)², or (``normalise``) scaled to [0, 1] by the calibrated
        high percentile of real validation residuals (per image when not calibrated)."""
        batch = self._batch(images)
        maps = self._analyse(batch, centers, d)[0].numpy()
        return self._normalise_maps(maps) if normalise else maps

    def window_scores(self, images: ImageBatch, d: int | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Raw score of every sliding window (N×K) and the windows' top-left corners (y, x)."""
        _, scores, positions = self._sliding(self._batch(images), d)
        return scores.double().numpy(), positions

    def _normalise_maps(self, maps: np.ndarray) -> np.ndarray:
        maps = np.asarray(maps, dtype=np.float32)
        if self._z_mode():  # z maps on the score's probability scale: the map's maximum is the score
            return self.probability(maps).astype(np.float32)
        if self.map_scale > 0:
            return np.clip(maps / self.map_scale, 0.0, 1.0)
        scale = np.array([robust_scale(m, float(self.config["map_percentile"])) for m in maps], dtype=np.float32)
        return np.clip(maps / scale.reshape(-1, 1, 1), 0.0, 1.0)

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        return self.probability(self._analyse(self._to_model_channels(batch))[1].double().numpy())

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        return self._normalise_maps(self._analyse(self._to_model_channels(batch))[0].numpy())

    def _score_and_map_arrays(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Score and heat-map from one back-in-time pass."""
        maps, raw = self._analyse(self._to_model_channels(batch))
        return self.probability(raw.double().numpy()), self._normalise_maps(maps.numpy())

    def _roi_arrays(self, batch: torch.Tensor, centres: list[tuple[float, float] | None], maps: bool = True
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The paper's setting: only the ``patch_size`` patch centred on each ROI centre goes back in time
        (scored over the whole patch or its ``center_patch`` square, ``score_region``); in search mode the
        z of the ``search_window`` square centred on it. None = the whole image."""
        out_maps, raw = self._analyse(self._to_model_channels(batch), centres)
        return self.probability(raw.double().numpy()), self._normalise_maps(out_maps.numpy()) if maps else None

    # ------------------------------------------------------------------ training
    def _load_reals(self, dataset: Sequence[dict], what: str) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Real items (label 0) as model-channel C×H×W tensors; fakes and unreadable files are skipped."""
        labels = dataset_labels(dataset) if len(dataset) else np.zeros(0, np.int64)
        images, modalities, unreadable = [], Counter(), []
        for i in progress(np.flatnonzero(labels == 0), f"loading {what} reals", enabled=self.config["progress"]):
            try:
                item = dataset[int(i)]
            except UnreadableImageError as err:
                unreadable.append(str(err))
                continue
            images.append(self._to_model_channels(torch.as_tensor(item["image"])[None])[0])
            if item.get("modality"):
                modalities[str(item["modality"])] += 1
        info = {"real": len(images), "fake_skipped": int((labels == 1).sum()), "unreadable": unreadable,
                "modalities": dict(modalities)}
        return images, info

    def _sample_crops(self, pool: list[torch.Tensor], n: int, gen: torch.Generator) -> torch.Tensor:
        """n random train_patch crops (random image, position and — if ``flip`` — horizontal flip)."""
        p = self.train_patch
        out = []
        for j in torch.randint(len(pool), (n,), generator=gen).tolist():
            img = pool[j]
            h, w = img.shape[-2:]
            y = int(torch.randint(h - p + 1, (1,), generator=gen))
            x = int(torch.randint(w - p + 1, (1,), generator=gen))
            crop = img[:, y : y + p, x : x + p]
            if self.config["flip"] and bool(torch.rand(1, generator=gen) < 0.5):
                crop = crop.flip(-1)
            out.append(crop)
        return torch.stack(out)

    def _t_max(self) -> int:
        return int(self.config["t_range"] or self.config["num_train_timesteps"])

    @torch.no_grad()
    def _denoising_loss(self, pool: list[torch.Tensor], n: int = 64) -> float:
        """Held-out ‖ε − ε_θ(x_t, t)‖² on n seeded crops, t ~ U{1..t_max} (same range as training)."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        self.unet.eval()
        losses = []
        for start in range(0, n, int(self.config["batch_size"])):
            b = min(int(self.config["batch_size"]), n - start)
            x0 = to_model_range(self._sample_crops(pool, b, gen)).to(self.device)
            t = torch.randint(1, self._t_max() + 1, (b,), generator=gen).to(self.device)
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            losses.append(noise_loss(self.unet, self.scheduler, x0, t, noise).item() * b)
        return float(np.sum(losses) / n)

    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train ε_θ on real training images (fakes skipped) with ‖ε − ε_θ(x_t, t)‖²; calibrate on real val images."""
        c = self.config
        gen = seed_everything(self.seed)
        pool, train_info = self._load_reals(train, "train")
        if not pool:
            raise ValueError("BTD trains on real images only, and the training set holds no readable real image")
        if c["patch_size"] is None:  # the paper's patch size for the training modality
            modality = Counter(train_info["modalities"]).most_common(1)
            c["patch_size"] = PATCH_BY_MODALITY.get(modality[0][0] if modality else "", DEFAULT_PATCH)
            self._validate()
        pool = [pad_to_min(img[None], self.train_patch)[0] for img in pool]
        steps, bs, t_max = int(c["steps"]), int(c["batch_size"]), self._t_max()
        opt = torch.optim.AdamW(self.unet.parameters(), lr=float(c["lr"]), weight_decay=float(c["weight_decay"]))
        warm = max(1, min(int(c["warmup_steps"]), steps // 10 or 1))
        t0 = time.time()
        budget = float(c["max_seconds"]) if c["max_seconds"] else None
        # linear warm-up, then cosine decay over the steps (or over the time budget, if that ends first)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, time_aware_cosine(steps, warmup=warm, max_seconds=budget,
                                                                         start=t0))
        ema = _ema(self.unet, float(c["ema_decay"])) if c["ema_decay"] else None
        lrs: list[float] = []
        self.unet.train()

        def step(_: int) -> float:
            x0 = to_model_range(self._sample_crops(pool, bs, gen)).to(self.device)
            t = torch.randint(1, t_max + 1, (bs,), generator=gen).to(self.device)  # paper steps
            noise = torch.randn(x0.shape, generator=gen).to(self.device)  # ε
            loss = noise_loss(self.unet, self.scheduler, x0, t, noise)  # ‖ε − ε_θ(x_t, t)‖²
            value = optimiser_step(loss, opt, sched, clip=c["grad_clip"], params=self.unet.parameters())
            if ema is not None:
                ema.step(self.unet.parameters())
            lrs.append(sched.get_last_lr()[0])
            return value

        run = fit_steps(step, steps, max_seconds=budget, start=t0, show_progress=bool(c["progress"]),
                        desc="btd training" + (f" (time budget {budget:.0f} s)" if budget else ""))
        done, every = run.steps, int(c["log_every"])
        # one record per log_every steps, and one for the steps after the last full block
        ends = list(range(every, done + 1, every)) + ([done] if done % every else [])
        history = [{"step": end, "loss": float(np.mean(run.losses[end - (end % every or every) : end])),
                    "lr": lrs[end - 1]} for end in ends]
        if ema is not None:
            ema.copy_to(self.unet.parameters())
        self.unet.eval()
        seconds = time.time() - t0
        summary: dict[str, Any] = {
            "n_train": train_info["real"], "train_fakes_skipped": train_info["fake_skipped"],
            "train_unreadable": train_info["unreadable"], "train_modalities": train_info["modalities"],
            "steps": done, "batch_size": bs, "patch_size": self.patch_size, "train_patch": self.train_patch,
            "t_range": [1, t_max],
            "seconds": round(seconds, 1), "train_patches_per_s": round(done * bs / max(seconds, 1e-9), 2),
            "best_epoch": "final (step-based training)", "history": history,
        }
        val_pool, val_info = self._load_reals(val, "val") if val is not None else ([], {"real": 0, "unreadable": []})
        summary.update(n_val=val_info["real"], val_unreadable=val_info["unreadable"])
        if val_pool:
            summary["val_denoising_loss"] = self._denoising_loss([pad_to_min(v[None], self.train_patch)[0]
                                                                   for v in val_pool])
        summary.update(self.calibrate(val_pool or pool, source="real_val" if val_pool else "real_train"))
        if c["window_score"] in _Z_KEYS:  # search mode: window statistics on the training reals, τ on val reals
            mode = c["window_score"]
            summary["window_norm"] = self.fit_window_norm(pool, val_pool or pool, source="train reals")
            self.set_window_score(mode)
        self.training_summary = summary
        return summary

    def calibrate(self, reals: Sequence[torch.Tensor] | torch.Tensor, source: str = "real_val") -> dict[str, Any]:
        """Fit the score → probability map and the heat-map scale on real images, then τ at ``target_fpr``."""
        from ...eval.calibration import calibrate

        c = self.config
        if c["window_score"] in _Z_KEYS and not self.__dict__.get("_force_residual"):
            # the residual score's calibration here; search mode's is fit_window_norm's
            self._force_residual = True
            try:
                return self.calibrate(reals, source)
            finally:
                self._force_residual = False
        rng = np.random.default_rng(self.seed)
        raw, pixels, t0 = [], [], time.time()
        n = len(reals)
        step = max(1, int(c["window_batch"]) // 4)
        for start in progress(range(0, n, step), "btd calibration", enabled=c["progress"]):
            batch = torch.stack([torch.as_tensor(r) for r in reals[start : start + step]])
            maps, scores = self._analyse(self._to_model_channels(batch))
            raw.append(scores.double().numpy())
            for m in maps.numpy():
                flat = m.ravel()
                pixels.append(flat[rng.choice(flat.size, min(flat.size, 20000), replace=False)])
        seconds = time.time() - t0
        raw_arr = np.concatenate(raw)
        logs = np.log(raw_arr + _EPS)
        q25, q50, q75 = np.percentile(logs, [25, 50, 75])
        spread = (q75 - q25) / 1.349 if len(logs) >= 4 else float(np.std(logs))
        self.score_center = float(q50)
        self.score_scale = float(max(spread, MIN_LOG_SCALE))
        self.map_scale = robust_scale(np.concatenate(pixels), float(c["map_percentile"]))
        probs = self.probability(raw_arr)
        cal = calibrate(probs, float(c["target_fpr"]))
        method = f"fpr_on_{source}"
        extra: dict[str, Any] = {}
        if source != "real_val":
            extra["warning"] = "no real validation images: calibrated on the training reals (FPR optimistic)"
        self.set_threshold(cal.pop("threshold"), **{**cal, "method": method, **extra},
                           score_map="sigmoid((log raw - center) / scale)",
                           score_center=self.score_center, score_scale=self.score_scale,
                           map_scale=self.map_scale, map_percentile=float(c["map_percentile"]),
                           real_val_scores=[round(float(v), 8) for v in np.sort(probs)])
        self.calibration["raw_threshold"] = self.raw_threshold()
        return {"calibration_images": int(n), "score_images_per_s": round(n / max(seconds, 1e-9), 2),
                "real_raw_score_median": float(np.median(raw_arr)),
                "achieved_fpr": self.calibration["achieved_fpr"]}

    # ------------------------------------------------------------------ persistence
    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg["unet_config"] = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        cfg["scheduler_config"] = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        return cfg

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        tensors["btd.calibration"] = torch.tensor([self.score_center, self.score_scale, self.map_scale],
                                                  dtype=torch.float64)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        unet = {k[5:]: v for k, v in tensors.items() if k.startswith("unet.")}
        if not unet:
            raise ValueError("weights hold no 'unet.*' tensors: not a BTD model")
        self.unet.load_state_dict(unet)
        self.unet.to(self.device).eval()
        self._runtime_runner = False  # rebuilt (or refused: other weights) at the next scoring call
        cal = tensors.get("btd.calibration")
        if cal is not None:
            self.score_center, self.score_scale, self.map_scale = (float(v) for v in cal.tolist())


def _ema(module: torch.nn.Module, decay: float) -> Any:
    """diffusers' EMAModel (decay warm-up min(decay, (1+n)/(10+n)), so short runs are not frozen)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
        from diffusers.training_utils import EMAModel
    return EMAModel(module.parameters(), decay=decay)
