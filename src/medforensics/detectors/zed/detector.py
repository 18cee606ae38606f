"""``zed``: a real-only second opinion from a lossless coder's surprise (after ZED, Cozzolino et al., ECCV 2024).

A small multi-resolution lossless coder of 8-bit grey images (:mod:`.model`) is trained on real
images only. For an image it predicts, at each coded level s of a 2× pyramid, a distribution over
the 256 grey levels of every pixel from the coarser level and the causal neighbourhood. Two costs
per level follow: the *actual* coding cost NLL_s = mean −log₂ P(x) and the *expected* cost
H_s = mean entropy of the predicted distributions (bits/pixel). For images like the training reals
the two agree on average; images from another process are either "too predictable" (NLL < H,
smooth generator output, up-sampling) or surprising (NLL > H). The per-level gap
Δ_s = NLL_s − H_s is the evidence.

Score (deterministic): z_s = (Δ_s − m_s) / σ_s with m, σ the mean and standard deviation of Δ_s on
*real validation* images — of the image's modality when it is known (:meth:`ZedDetector.score_modality`,
modalities with at least ``min_modality_reals`` validation reals), otherwise pooled over all of them
(what :meth:`score` / ``scan`` use, since the detector interface carries no modality). The raw score
is ``max_s |z_s|`` (``combine="max_abs"``, two-sided as ZED's |NLL − H|) or ``mean_s z_s²``
(``"sum_sq"``). Raw → probability: p = σ((log raw − c) / d), c the median and d the robust spread of
the log raw scores of the real validation images (monotone: ranking unchanged); τ at ``target_fpr``
on those same real validation scores.

Map: per level the per-pixel gap (−log₂ P(x) − H), Gaussian-smoothed, absolute value, brought to
full resolution and averaged over levels; divided by the ``map_percentile`` percentile of the same
maps on real validation images and clipped to [0, 1].

Preprocessing: 256 px centre crop, single channel (colour → luma; a 3-channel batch is converted
the same way, so the detector can sit beside RGB detectors in a ``fusion``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from ...io.preprocess import Preprocessing
from ...io.types import UnreadableImageError
from ..base import Detector
from ..components.device import resolve_device
from ..components.fit import fit_steps, optimiser_step, time_aware_cosine
from ..components.loaders import dataset_labels
from ..components.progress import progress
from ..components.seeding import seed_everything
from ..registry import register_detector
from .model import ZedNet, coding_cost, crop_to_multiple, level_log_prob, pyramid, to_levels

_EPS = 1e-9
MIN_LOG_SCALE = 0.05
POOLED = "pooled"
COMBINES = ("max_abs", "sum_sq")

DEFAULTS: dict[str, Any] = {
    # coder
    "width": 24,
    "layers": 3,
    "scales": 3,  # coded levels (the pyramid has one more, uncoded)
    # training (real images only)
    "steps": 3000,
    "batch_size": 16,
    "crop": 64,  # training crop side at every level (clipped to the level's size)
    "lr": 2e-3,
    "weight_decay": 0.0,
    "warmup_steps": 50,
    "grad_clip": 1.0,
    "flip": True,
    "max_seconds": None,  # stop after this wall time (the LR schedule then follows time)
    "log_every": 50,
    # score / calibration
    "combine": "max_abs",  # "max_abs" | "sum_sq"
    "min_modality_reals": 5,  # per-modality statistics need at least this many real validation images
    "target_fpr": 0.05,
    "map_sigma": 4.0,  # Gaussian smoothing of the per-pixel gap, in full-resolution pixels
    "map_percentile": 99.0,
    "score_batch": 2,
    "device": "cpu",
    "progress": True,
}


def _to_grey(batch: torch.Tensor) -> torch.Tensor:
    """N×C×H×W (C = 1 or 3) → N×1×H×W: colour → luma (the weights of ``io.preprocess.to_channels``)."""
    if batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4:
        raise ValueError(f"expected an N×C×H×W batch, got shape {tuple(batch.shape)}")
    if batch.shape[1] == 1:
        return batch.float()
    if batch.shape[1] == 3:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
        return (batch.float() * luma).sum(1, keepdim=True)
    raise ValueError(f"batch has {batch.shape[1]} channels; zed takes 1 (grey) or 3 (RGB → luma)")


@register_detector
class ZedDetector(Detector):
    """Lossless-coding surprise of a real-only multi-resolution coder (see the module docstring)."""

    name = "zed"
    version = "1"
    supervised = False
    DEFAULTS: ClassVar[dict[str, Any]] = DEFAULTS
    DEFAULT_PREPROCESSING: ClassVar[Preprocessing] = Preprocessing(size=256, fit="center_crop", channels=1)

    def __init__(self, **config: Any):
        super().__init__(**config)
        c = self.config
        if c["combine"] not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {c['combine']!r}")
        if int(c["scales"]) < 1:
            raise ValueError(f"scales must be >= 1, got {c['scales']}")
        if int(c["crop"]) < 4 or int(c["crop"]) % 2:
            raise ValueError(f"crop must be an even number >= 4, got {c['crop']}")
        if not 0 < float(c["target_fpr"]) < 1:
            raise ValueError(f"target_fpr must be in (0, 1), got {c['target_fpr']}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = ZedNet(int(c["width"]), int(c["layers"]), int(c["scales"]))
        self.device = resolve_device(c["device"])
        self.net.to(self.device).eval()
        #: statistics of the gaps Δ_s on real validation images: name ("pooled" or a modality) → (mean, std), each (S,)
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # raw → probability maps (pooled statistics; per-modality statistics) and the heat-map scale
        self.center, self.scale = 0.0, 1.0
        self.center_mod, self.scale_mod = 0.0, 1.0
        self.map_scale = 0.0

    @property
    def scales(self) -> int:
        return int(self.config["scales"])

    # ------------------------------------------------------------------ coding costs
    @torch.no_grad()
    def _costs(self, batch: torch.Tensor, want_maps: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per-level mean actual and expected cost (N×S each, bits/pixel) and raw gap maps N×H×W (bits)."""
        grey = _to_grey(batch)
        n, _, h, w = grey.shape
        S = self.scales
        levels = crop_to_multiple(to_levels(grey), 2**S)
        nll, ent = np.zeros((n, S)), np.zeros((n, S))
        maps = np.zeros((n, h, w), np.float32) if want_maps else None
        self.net.eval()
        step = max(1, int(self.config["score_batch"]))
        for a in range(0, n, step):
            pyr = pyramid(levels[a : a + step].to(self.device), S + 1)
            for s in range(S):
                params = self.net(pyr[s], pyr[s + 1], s)
                px_nll, px_ent = coding_cost(pyr[s], params)
                nll[a : a + step, s] = px_nll.mean((1, 2)).numpy()
                ent[a : a + step, s] = px_ent.mean((1, 2)).numpy()
                if maps is not None:
                    sigma = max(1.0, float(self.config["map_sigma"]) / 2**s)
                    for j, g in enumerate((px_nll - px_ent).numpy()):
                        sm = np.abs(gaussian_filter(g, sigma, mode="reflect")).astype(np.float32)
                        up = np.kron(sm, np.ones((2**s, 2**s), np.float32))
                        hh, ww = min(h, up.shape[0]), min(w, up.shape[1])
                        maps[a + j, :hh, :ww] += up[:hh, :ww] / S
        return nll, ent, maps

    def coding_costs(self, images: Any) -> dict[str, np.ndarray]:
        """``nll`` (actual) and ``entropy`` (expected) coding cost per image and level (N×S, bits/pixel,
        level 0 = full resolution) and their difference ``gap``."""
        nll, ent, _ = self._costs(self.prepare(images), want_maps=False)
        return {"nll": nll, "entropy": ent, "gap": nll - ent}

    # ------------------------------------------------------------------ score
    def _stats_for(self, modality: str | None) -> tuple[np.ndarray, np.ndarray]:
        if not self.stats:
            return np.zeros(self.scales), np.ones(self.scales)
        if modality and modality in self.stats:
            return self.stats[modality]
        return self.stats[POOLED]

    def _raw(self, gaps: np.ndarray, modalities: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores (N,) and whether per-modality statistics were used (N,)."""
        gaps = np.atleast_2d(np.asarray(gaps, dtype=np.float64))
        mods = list(modalities) if modalities is not None else [None] * len(gaps)
        if len(mods) != len(gaps):
            raise ValueError(f"got {len(mods)} modalities for {len(gaps)} images")
        raw, own = np.zeros(len(gaps)), np.zeros(len(gaps), bool)
        for i, (g, m) in enumerate(zip(gaps, mods)):
            mean, std = self._stats_for(m)
            z = (g - mean) / std
            raw[i] = np.max(np.abs(z)) if self.config["combine"] == "max_abs" else np.mean(z**2)
            own[i] = bool(m) and m in self.stats
        return raw, own

    def probability_from_gaps(self, gaps: np.ndarray, modalities: Sequence[str | None] | None = None) -> np.ndarray:
        """Probabilities (N,) from gaps Δ (N×S, e.g. from :meth:`coding_costs`); a known modality with
        validation statistics is normalised by them, anything else by the pooled statistics."""
        raw, own = self._raw(gaps, modalities)
        logs = np.log(raw + _EPS)
        center = np.where(own, self.center_mod, self.center)
        scale = np.where(own, self.scale_mod, self.scale)
        return expit((logs - center) / scale)

    def score_modality(self, images: Any, modalities: Sequence[str | None]) -> np.ndarray:
        """:meth:`score` with the modality of each image known (per-modality real statistics)."""
        batch = self.prepare(images)
        if len(batch) == 0:
            return np.zeros(0)
        nll, ent, _ = self._costs(batch, want_maps=False)
        return self.probability_from_gaps(nll - ent, modalities)

    def _normalise_maps(self, maps: np.ndarray) -> np.ndarray:
        if self.map_scale > 0:
            return np.clip(maps / self.map_scale, 0.0, 1.0).astype(np.float32)
        top = np.percentile(maps.reshape(len(maps), -1), float(self.config["map_percentile"]), axis=1)
        return np.clip(maps / np.maximum(top, 1e-6).reshape(-1, 1, 1), 0.0, 1.0).astype(np.float32)

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        nll, ent, _ = self._costs(batch, want_maps=False)
        return self.probability_from_gaps(nll - ent)

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        return self._normalise_maps(self._costs(batch)[2])

    def _score_and_map_arrays(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        nll, ent, maps = self._costs(batch)
        return self.probability_from_gaps(nll - ent), self._normalise_maps(maps)

    # ------------------------------------------------------------------ training
    def _load_reals(self, dataset: Sequence[dict] | None, what: str) -> tuple[list[torch.Tensor], list[str], dict]:
        """Real items (label 0) as 1×H×W grey tensors with their modality; fakes and unreadable files skipped."""
        if dataset is None or len(dataset) == 0:
            return [], [], {"real": 0, "fake_skipped": 0, "unreadable": [], "modalities": {}}
        labels = dataset_labels(dataset)
        images, mods, unreadable = [], [], []
        for i in progress(np.flatnonzero(labels == 0), f"loading {what} reals", enabled=self.config["progress"]):
            try:
                item = dataset[int(i)]
            except UnreadableImageError as err:
                unreadable.append(str(err))
                continue
            images.append(_to_grey(torch.as_tensor(item["image"])[None])[0])
            mods.append(str(item.get("modality") or ""))
        info = {"real": len(images), "fake_skipped": int((labels == 1).sum()), "unreadable": unreadable,
                "modalities": dict(Counter(m for m in mods if m))}
        return images, mods, info

    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train the coder on real training images (fakes skipped) by maximum likelihood on random crops of
        every pyramid level; then fit the gap statistics and τ on the real validation images."""
        c = self.config
        gen = seed_everything(self.seed)
        pool, _, info = self._load_reals(train, "train")
        if not pool:
            raise ValueError("zed trains on real images only, and the training set holds no readable real image")
        S = self.scales
        pyrs = []
        for img in pool:
            lev = crop_to_multiple(to_levels(img[None]), 2**S)
            pyrs.append([p[0].to(torch.uint8) for p in pyramid(lev, S + 1)])
        steps, bs = int(c["steps"]), int(c["batch_size"])
        opt = torch.optim.Adam(self.net.parameters(), lr=float(c["lr"]), weight_decay=float(c["weight_decay"]))
        t0 = time.time()
        budget = float(c["max_seconds"]) if c["max_seconds"] else None
        warm = max(1, min(int(c["warmup_steps"]), steps // 10 or 1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, time_aware_cosine(steps, warmup=warm, max_seconds=budget,
                                                                         start=t0))
        self.net.train()

        def sample(level: int) -> tuple[torch.Tensor, torch.Tensor]:
            xs, lows = [], []
            for j in torch.randint(len(pyrs), (bs,), generator=gen).tolist():
                x, low = pyrs[j][level], pyrs[j][level + 1]
                h, w = x.shape[-2:]
                p = min(int(c["crop"]), h, w) // 2 * 2
                y0 = 2 * int(torch.randint((h - p) // 2 + 1, (1,), generator=gen))
                x0 = 2 * int(torch.randint((w - p) // 2 + 1, (1,), generator=gen))
                cx, cl = x[:, y0 : y0 + p, x0 : x0 + p], low[:, y0 // 2 : (y0 + p) // 2, x0 // 2 : (x0 + p) // 2]
                if c["flip"] and bool(torch.rand(1, generator=gen) < 0.5):
                    cx, cl = cx.flip(-1), cl.flip(-1)
                xs.append(cx.float())
                lows.append(cl.float())
            return torch.stack(xs).to(self.device), torch.stack(lows).to(self.device)

        def step(i: int) -> float:
            level = i % S
            x, low = sample(level)
            bits = -level_log_prob(x, self.net(x, low, level)).mean() / np.log(2.0)
            return optimiser_step(bits, opt, sched, clip=c["grad_clip"], params=self.net.parameters())

        run = fit_steps(step, steps, max_seconds=budget, start=t0, show_progress=bool(c["progress"]),
                        desc="zed training" + (f" (time budget {budget:.0f} s)" if budget else ""))
        self.net.eval()
        done, every = run.steps, int(c["log_every"])
        ends = list(range(every, done + 1, every)) + ([done] if done % every else [])
        history = [{"step": e, "bits_per_pixel": float(np.mean(run.losses[e - (e % every or every) : e]))}
                   for e in ends]
        seconds = time.time() - t0
        summary: dict[str, Any] = {
            "n_train": info["real"], "train_fakes_skipped": info["fake_skipped"],
            "train_unreadable": info["unreadable"], "train_modalities": info["modalities"],
            "steps": done, "batch_size": bs, "crop": int(c["crop"]), "seconds": round(seconds, 1),
            "best_epoch": "final (step-based training)", "history": history,
        }
        val_pool, val_mods, val_info = self._load_reals(val, "val")
        summary.update(n_val=val_info["real"], val_unreadable=val_info["unreadable"],
                       val_modalities=val_info["modalities"])
        if val_pool:
            summary.update(self.calibrate(val_pool, val_mods, source="real_val"))
        else:
            _, train_mods, _ = self._load_reals(train, "train (calibration)")
            summary.update(self.calibrate(pool, train_mods, source="real_train"))
        self.training_summary = summary
        return summary

    # ------------------------------------------------------------------ calibration
    def calibrate(self, reals: Sequence[torch.Tensor] | torch.Tensor, modalities: Sequence[str | None] | None = None,
                  source: str = "real_val") -> dict[str, Any]:
        """Fit the gap statistics (pooled and per modality), the raw → probability maps and the heat-map
        scale on real images (C×H×W tensors, the detector's preprocessing), then τ at ``target_fpr``."""
        from ...eval.calibration import calibrate

        c = self.config
        n = len(reals)
        if n == 0:
            raise ValueError("zed calibration needs at least one real image")
        mods = [m or "" for m in (modalities if modalities is not None else [""] * n)]
        if len(mods) != n:
            raise ValueError(f"got {len(mods)} modalities for {n} images")
        rng = np.random.default_rng(self.seed)
        gaps, pixels, t0 = [], [], time.time()
        step = max(1, int(c["score_batch"]))
        for a in progress(range(0, n, step), "zed calibration", enabled=c["progress"]):
            batch = torch.stack([torch.as_tensor(r) for r in reals[a : a + step]])
            nll, ent, maps = self._costs(batch)
            gaps.append(nll - ent)
            for m in maps:
                flat = m.ravel()
                pixels.append(flat[rng.choice(flat.size, min(flat.size, 4096), replace=False)])
        seconds = time.time() - t0
        g = np.concatenate(gaps)

        def stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return rows.mean(0), np.maximum(rows.std(0, ddof=1) if len(rows) > 1 else np.ones(g.shape[1]), 1e-4)

        self.stats = {POOLED: stats(g)}
        for m, count in sorted(Counter(mods).items()):
            if m and count >= int(c["min_modality_reals"]):
                self.stats[m] = stats(g[np.array([x == m for x in mods])])

        def robust(raw: np.ndarray) -> tuple[float, float]:
            logs = np.log(raw + _EPS)
            q25, q50, q75 = np.percentile(logs, [25, 50, 75])
            spread = (q75 - q25) / 1.349 if len(logs) >= 4 else float(np.std(logs))
            return float(q50), float(max(spread, MIN_LOG_SCALE))

        self.center, self.scale = robust(self._raw(g, None)[0])
        raw_mod, own = self._raw(g, mods)
        self.center_mod, self.scale_mod = robust(raw_mod[own]) if own.any() else (self.center, self.scale)
        self.map_scale = float(max(np.percentile(np.concatenate(pixels), float(c["map_percentile"])), 1e-6))
        probs = self.probability_from_gaps(g)
        cal = calibrate(probs, float(c["target_fpr"]))
        extra: dict[str, Any] = {}
        if source != "real_val":
            extra["warning"] = "no real validation images: calibrated on the training reals (FPR optimistic)"
        probs_mod = self.probability_from_gaps(g, mods)
        cal_mod = calibrate(probs_mod, float(c["target_fpr"]))
        self.set_threshold(cal.pop("threshold"), **{**cal, "method": f"fpr_on_{source}", **extra},
                           score_map="sigmoid((log raw - center) / scale), raw = "
                                     + ("max_s |z_s|" if c["combine"] == "max_abs" else "mean_s z_s^2"),
                           modality_threshold=cal_mod["threshold"], modality_achieved_fpr=cal_mod["achieved_fpr"],
                           modalities=sorted(k for k in self.stats if k != POOLED),
                           real_val_scores=[round(float(v), 8) for v in np.sort(probs)])
        return {"calibration_images": int(n), "score_images_per_s": round(n / max(seconds, 1e-9), 2),
                "real_gap_mean_bits": [round(float(v), 5) for v in self.stats[POOLED][0]],
                "real_gap_std_bits": [round(float(v), 5) for v in self.stats[POOLED][1]],
                "real_nll_minus_entropy_by_modality": {k: [round(float(v), 5) for v in s[0]]
                                                       for k, s in self.stats.items() if k != POOLED},
                "achieved_fpr": self.calibration["achieved_fpr"]}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for name, (mean, std) in self.stats.items():
            tensors[f"stats.{name}"] = torch.tensor(np.stack([mean, std]), dtype=torch.float64)
        tensors["zed.calibration"] = torch.tensor([self.center, self.scale, self.center_mod, self.scale_mod,
                                                   self.map_scale], dtype=torch.float64)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        net = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        if not net:
            raise ValueError("weights hold no 'net.*' tensors: not a zed model")
        self.net.load_state_dict(net)
        self.net.to(self.device).eval()
        self.stats = {k[6:]: (v[0].double().numpy().copy(), v[1].double().numpy().copy())
                      for k, v in tensors.items() if k.startswith("stats.")}
        cal = tensors.get("zed.calibration")
        if cal is not None:
            self.center, self.scale, self.center_mod, self.scale_mod, self.map_scale = (float(v) for v in cal.tolist())
