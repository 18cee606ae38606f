"""``dski``: Dual-Stage Knowledge Infusing detector (CLIP + CDFA adapters + text adapter + MFRM).

Stage 1 (training): only the CDFA adapters and the text adapter (or linear head) train, with the
paper's recipe by default (SGD, momentum 0.9, weight decay 0.005, lr 1e-4, batch 32, 50 epochs);
loss = BCE on the fake-minus-real logit difference (equivalent to 2-way softmax cross-entropy);
the epoch with the best validation AUC is kept. On CUDA, mixed precision (fp16 autocast + grad
scaler) is on by default, and ``accumulate`` splits each batch into micro-batches.
Before training, μ (mean L2-normalised feature of training images) is fitted and every feature
becomes f′ = normalise(normalise(g) − μ) (``center_features``, default on — our departure from the
paper: pooled CNN/CLIP features share a large common component, cosine ≈ 1 between any two
images, which made the MFRM affinity constant; see docs/dski.md).
Stage 2 (retrieval): the MFRM bank is filled with ``bank_shots`` real + ``bank_shots`` fake
training images, and the threshold is calibrated at ``target_fpr`` on validation reals.
Score = softmax probability of "fake" of the final logits β·A·L + s·f′·W′ᵀ (see :mod:`.bank`).

Heat-map (``anomaly_map``): every patch token (CLIP: post-LN, projected; EfficientNet: every
location of the head feature map) is L2-normalised and put through the *same* classifier
W′ — probability of fake per patch, ``sigmoid(s·(cos(t, W′_fake) − cos(t, W′_real)))`` — then
upsampled bilinearly to the input size. It shows where the adapted local features look like the
"fake" class embedding; the bank is not used and no gradients are computed.

Ablations (paper Tables 4–5): ``use_cdfa`` (adapters on/off), ``use_mfrm`` (bank on/off),
``streams`` ("both" | "noise" | "spatial").
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from ..backbones import DEFAULT_CLIP, build_backbone, default_blocks, is_random, normalise_spec
from ..base import CONFIG_FILE, WEIGHTS_FILE, Detector, ImageBatch, _json_default, read_model_dir
from ..components.device import resolve_device
from ..components.fit import fit_epochs
from ..components.loaders import balanced_loader, dataset_labels
from ..components.seeding import seed_everything
from ..components.selection import validation_metrics
from ..registry import register_detector
from .bank import CLASSES, FeatureBank, mfrm_logits
from .model import STREAMS, DSKIModel


@register_detector
class DSKIDetector(Detector):
    name = "dski"
    version = "1"
    supervised = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "backbone": DEFAULT_CLIP,  # HF name / local dir / "tiny" / {"tiny": {...}} / "efficientnet-lite0" / ...
        "image_size": None,  # backbone input size (None: CLIP native, EfficientNet no resize)
        "normalisation": "lite",  # EfficientNet only: "lite" ((x−0.5)/0.5) or "imagenet"
        "blocks": None,  # adapter blocks (0-based); None: 7, 15, 23 of 24 scaled to the depth
        "use_cdfa": True,
        "use_mfrm": True,
        "streams": "both",  # "both" | "noise" | "spatial"
        "bottleneck": 64,  # adapter channel width
        "noise_kernel": 3,  # Bayar kernel on the token grid (3×3 neighbourhood of patches)
        "lambda_init": 1.0,  # λ initial value
        "adapter_init_std": 0.01,
        "prompts": ["A real medical image", "A fake medical image"],
        "text_hidden": None,  # text adapter hidden width (None: D/4)
        "logit_scale": None,  # None: CLIP's learnt scale; 30 for the EfficientNet cosine head
        "head_init": "prototypes",  # EfficientNet head: "prototypes" (class means of f′) | "random"
        "center_features": True,  # f′ = normalise(normalise(g) − μ), μ from training images (departure from the paper)
        "center_shots": 32,  # μ and the head prototypes from n real + n fake training images
        "bank_shots": 16,  # n real + n fake training images in the bank
        "alpha": 0.1,  # α: affinity sharpness (Tip-Adapter calls it β)
        "beta": 10.0,  # β: weight of the retrieval logits (Tip-Adapter calls it α)
        "bank_balance": True,  # each class of A·L = bank_shots × mean affinity (= the paper's sum for n + n entries)
        "epochs": 50,
        "batch_size": 32,
        "accumulate": 1,  # gradient accumulation steps (micro-batch = batch_size / accumulate)
        "lr": 1e-4,
        "momentum": 0.9,
        "weight_decay": 0.005,
        "lr_schedule": "constant",  # "constant" (paper) | "cosine"
        "amp": "auto",  # mixed precision: "auto" = on CUDA only
        "device": "auto",
        "num_workers": 0,
        "score_batch": 32,
        "target_fpr": 0.05,
        "progress": True,
    }
    #: informational keys written by the detector itself (accepted back when a model is loaded)
    DERIVED: ClassVar[tuple[str, ...]] = ("backbone_weights",)

    def __init__(self, **config: Any):
        super().__init__(**config)
        c = self.config
        c["backbone"] = normalise_spec(c["backbone"])
        if c["streams"] not in STREAMS:
            raise ValueError(f"streams must be one of {STREAMS}, got {c['streams']!r}")
        if c["head_init"] not in ("prototypes", "random"):
            raise ValueError(f"head_init must be 'prototypes' or 'random', got {c['head_init']!r}")
        if c["batch_size"] % c["accumulate"]:
            raise ValueError(f"batch_size {c['batch_size']} is not divisible by accumulate {c['accumulate']}")
        self.device = resolve_device(c["device"])
        backbone = build_backbone(c["backbone"], image_size=c["image_size"], normalisation=c["normalisation"])
        depth = len(backbone.hook_points())
        blocks = list(c["blocks"]) if c["blocks"] is not None else default_blocks(depth)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = DSKIModel(
                backbone, blocks=blocks, use_cdfa=c["use_cdfa"], bottleneck=c["bottleneck"], streams=c["streams"],
                noise_kernel=c["noise_kernel"], lambda_init=c["lambda_init"], init_std=c["adapter_init_std"],
                prompts=c["prompts"], text_hidden=c["text_hidden"], logit_scale=c["logit_scale"],
                center=c["center_features"],
            )
        self.model.to(self.device).eval()
        c["backbone_weights"] = backbone.description
        self.bank = FeatureBank(backbone.feature_dim)
        self.bank_history: list[dict[str, Any]] = []
        self._pending_bank: list[str] = []

    # ------------------------------------------------------------------ properties
    @property
    def bank_size(self) -> int:
        """Number of entries in the retrieval bank."""
        return len(self.bank)

    @property
    def bank_generators(self) -> list[str]:
        """Generator name of every bank entry, in bank order (``len == bank_size``)."""
        return list(self.bank.generators)

    @property
    def blocks(self) -> list[int]:
        return list(self.model.blocks)

    def _autocast(self):
        use = self.config["amp"] is True or (self.config["amp"] == "auto" and self.device.type == "cuda")
        if use and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ scoring
    def _logits(self, batch: torch.Tensor, use_bank: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final logits (N×2) and adapted features f′ (N×D) of a preprocessed batch."""
        c = self.config
        use_bank = c["use_mfrm"] if use_bank is None else use_bank
        with self._autocast():
            f, _ = self.model.features(batch.to(self.device))
        w = self.model.class_weights()
        keys = self.bank.keys.to(self.device) if use_bank and len(self.bank) else None
        values = self.bank.values.to(self.device) if keys is not None else None
        logits = mfrm_logits(f.float(), w.float(), keys, values, alpha=c["alpha"], beta=c["beta"],
                             logit_scale=self.model.logit_scale,
                             per_class=float(c["bank_shots"]) if c["bank_balance"] else None)
        return logits, f

    def _batches(self, batch: torch.Tensor):
        step = max(1, int(self.config["score_batch"]))
        for start in range(0, len(batch), step):
            yield batch[start : start + step]

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        self.model.eval()
        out = []
        with torch.no_grad():
            for part in self._batches(batch):
                logits, _ = self._logits(part)
                out.append(torch.softmax(logits, dim=1)[:, 1].cpu())
        return torch.cat(out).double().numpy()

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        self.model.eval()
        out = []
        with torch.no_grad():
            w = self.model.class_weights()
            for part in self._batches(batch):
                with self._autocast():
                    _, local = self.model.features(part.to(self.device))
                patch_logits = self.model.logit_scale * torch.einsum("ndhw,kd->nkhw", local.float(), w)
                prob = torch.sigmoid(patch_logits[:, 1] - patch_logits[:, 0])[:, None]
                up = F.interpolate(prob, size=tuple(part.shape[-2:]), mode="bilinear", align_corners=False)
                out.append(up[:, 0].clamp(0, 1).cpu())
        return torch.cat(out).numpy()

    # ------------------------------------------------------------------ the bank
    @torch.no_grad()
    def bank_features(self, images: ImageBatch, center: bool | None = None) -> torch.Tensor:
        """Adapted, (centred,) L2-normalised features f′ (N×D, CPU) — the bank's keys for these images."""
        batch = self.prepare(images)
        self.model.eval()
        feats = []
        for part in self._batches(batch):
            with self._autocast():
                f, _ = self.model.features(part.to(self.device), center=center)
            feats.append(f.float().cpu())
        return torch.cat(feats) if feats else torch.zeros(0, self.bank.dim)

    def add_to_bank(self, images: ImageBatch, labels: int | str | Sequence[int | str], generator: str | None = None) -> int:
        """Add labelled samples (no retraining); return the new bank size.

        ``images``: MedImages (preprocessed here) or an N×C×H×W preprocessed array/tensor;
        ``labels``: one label for all, or one per image (0/"real", 1/"fake"); ``generator``: the
        name stored with these entries (default ``"unnamed-<label>"``).
        """
        n = len(images)
        if n == 0:
            raise ValueError("add_to_bank: no images given")
        if isinstance(labels, (int, np.integer, str)):
            labels = [labels] * n
        labels = [_label(v) for v in labels]
        if len(labels) != n:
            raise ValueError(f"add_to_bank: {n} images but {len(labels)} labels")
        feats = self.bank_features(images)
        names = [generator or f"unnamed-{CLASSES[y]}" for y in labels]
        size = self.bank.add(feats, labels, names)
        self.bank_history.append({"action": "add", "generator": generator, "n": n,
                                  "labels": {CLASSES[k]: labels.count(k) for k in set(labels)},
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return size

    def remove_from_bank(self, generator: str) -> int:
        """Remove every entry of ``generator``; return the new bank size (KeyError if none)."""
        removed = self.bank.remove(generator)
        self.bank_history.append({"action": "remove", "generator": generator, "n": removed,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return len(self.bank)

    def _draw(self, dataset: Sequence[dict], shots: int,
              center: bool | None = None) -> tuple[list[dict], torch.Tensor, list[int]]:
        """``shots`` real + ``shots`` fake items (seeded draw), their features f′ and labels."""
        labels = dataset_labels(dataset)
        rng = np.random.default_rng(self.seed)
        chosen = []
        for cls in (0, 1):
            idx = np.flatnonzero(labels == cls)
            chosen += rng.choice(idx, size=min(shots, len(idx)), replace=False).tolist()
        items = [dataset[int(i)] for i in chosen]
        feats = self.bank_features(torch.stack([it["image"] for it in items]), center=center)
        return items, feats, [int(float(it["label"]) > 0.5) for it in items]

    def build_bank(self, dataset: Sequence[dict], shots: int | None = None) -> int:
        """Fill the bank with ``shots`` real + ``shots`` fake items of ``dataset`` (seeded draw)."""
        shots = int(self.config["bank_shots"] if shots is None else shots)
        self.bank.clear()
        if shots <= 0 or not len(dataset):
            return 0
        items, feats, ys = self._draw(dataset, shots)
        names = [f"train:{it.get('generator') or 'fake'}" if y else "train:real" for it, y in zip(items, ys)]
        return self.bank.add(feats, ys, names)

    @torch.no_grad()
    def fit_feature_mean(self, dataset: Sequence[dict], shots: int | None = None) -> torch.Tensor:
        """Set μ to the mean uncentred f′ of ``shots`` real + ``shots`` fake items (class-balanced); return μ.

        Called by :meth:`fit` before training (μ then stays fixed, so the classifier, the bank and
        the heat-map all see the same centred features).
        """
        shots = int(self.config["center_shots"] if shots is None else shots)
        _, feats, ys = self._draw(dataset, shots, center=False)
        if not len(feats):
            raise ValueError("fit_feature_mean: no training images")
        y = torch.tensor(ys)
        means = [feats[y == k].mean(0) for k in (0, 1) if (y == k).any()]
        mu = torch.stack(means).mean(0)
        self.model.set_feature_mean(mu)
        return mu

    @torch.no_grad()
    def init_head_from_prototypes(self, dataset: Sequence[dict], shots: int = 32) -> None:
        """Linear-head variant: start W′ at the class means of f′ (a nearest-prototype classifier).

        The text adapter starts from CLIP's prompt embeddings, which already lie in the image
        embedding cone; a random head does not (random rows give large, meaningless logits at
        the start). Prototypes of ``shots`` real + ``shots`` fake training images give the head
        an equivalent data-driven starting point.
        """
        _, feats, ys = self._draw(dataset, shots)  # centred with the current μ
        y = torch.tensor(ys)
        if not ((y == 0).any() and (y == 1).any()):
            return
        protos = torch.stack([F.normalize(feats[y == k].mean(0), dim=0) for k in (0, 1)])
        self.model.classifier.weight.copy_(protos.to(self.model.classifier.weight))

    # ------------------------------------------------------------------ training
    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Centre (μ), train the adapters (backbone frozen), keep the best-AUC epoch, build the bank, calibrate τ."""
        c = self.config
        t0 = time.time()
        gen = seed_everything(self.seed)
        mu0 = self.fit_feature_mean(train) if c["center_features"] else None
        if self.model.text_base is None and c["head_init"] == "prototypes":
            self.init_head_from_prototypes(train, shots=c["center_shots"])
        micro = c["batch_size"] // c["accumulate"]
        loader = balanced_loader(train, micro, gen, c["num_workers"])
        trainable = self.model.trainable()
        params = [p for p in trainable.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])
        steps = max(1, c["epochs"] * max(1, len(loader) // c["accumulate"]))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if c["lr_schedule"] == "cosine" else None
        use_amp = self.device.type == "cuda" and c["amp"] in ("auto", True)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        epoch_start = [time.time()]

        def batches(epoch: int) -> Any:
            if hasattr(train, "set_epoch"):
                train.set_epoch(epoch)
            epoch_start[0] = time.time()
            opt.zero_grad(set_to_none=True)
            return loader

        def step(i: int, batch: dict) -> float:
            x = batch["image"].to(self.device, non_blocking=True)
            y = batch["label"].float().to(self.device)
            with self._autocast():
                logits = self.model(x)
            # BCE on the fake-vs-real logit difference (= 2-way softmax cross-entropy)
            loss = F.binary_cross_entropy_with_logits((logits[:, 1] - logits[:, 0]).float(), y)
            scaler.scale(loss / c["accumulate"]).backward()
            if (i + 1) % c["accumulate"] == 0 or i + 1 == len(loader):
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                self.model.constrain_()  # Bayar–Stamm constraint re-imposed after every step
                if sched is not None:
                    sched.step()
            return loss.item()

        def extras() -> dict[str, Any]:
            out: dict[str, Any] = {"seconds": round(time.time() - epoch_start[0], 1)}
            if self.model.adapters and c["streams"] == "both":
                out["lambda"] = [round(a.lam.item(), 5) for a in self.model.adapters.values()]
            return out

        def validate() -> dict[str, Any]:
            return validation_metrics(*self._scores_of(val, use_bank=False))

        # model.train() keeps the backbone in eval mode (Backbone.train); only the trainable part is kept
        result = fit_epochs(self.model, c["epochs"], batches, step, extras=extras,
                            validate=validate if val is not None and len(val) else None, keep=trainable,
                            desc="dski epoch", show_progress=bool(c["progress"]))
        if c["center_features"]:  # μ of the kept weights, exact (the running mean tracked the last epoch)
            summary_mu_drift = float((self.fit_feature_mean(train) - mu0).norm())
        else:
            summary_mu_drift = None
        bank_n = self.build_bank(train) if c["use_mfrm"] else 0
        summary: dict[str, Any] = {
            "n_train": len(train), "n_val": len(val) if val is not None else 0, "best_epoch": result.best_epoch,
            "history": result.history, "seconds": round(time.time() - t0, 1), "bank_size": bank_n,
            "device": str(self.device), "amp": use_amp,
            "trainable_parameters": sum(p.numel() for p in params),
            "feature_mean_drift": summary_mu_drift,  # ‖μ_final − μ_initial‖ (centring)
        }
        if val is not None and len(val):
            y_val, s_val = self._scores_of(val)
            self.calibrate_on_real_val(y_val, s_val, c["target_fpr"])
        self.training_summary = summary
        return summary

    def _scores_of(self, dataset: Sequence[dict], use_bank: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        ys, ss = [], []
        step = self.config["score_batch"]
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(dataset), step):
                items = [dataset[i] for i in range(start, min(len(dataset), start + step))]
                ys += [int(float(it["label"]) > 0.5) for it in items]
                logits, _ = self._logits(torch.stack([it["image"] for it in items]), use_bank=use_bank)
                ss.append(torch.softmax(logits, 1)[:, 1].cpu().double().numpy())
        return np.asarray(ys), np.concatenate(ss) if ss else np.zeros(0)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters + classifier, the bank, and — for a random backbone only — its weights."""
        out = {k: v for k, v in self.model.trainable().state_dict().items()}
        if self.config["center_features"]:
            out["feature_mean"] = self.model.feature_mean
        if is_random(self.config["backbone"]):
            out.update({f"backbone.{k}": v for k, v in self.model.backbone.net_state().items()})
        out.update(self.bank.state_dict())
        return {k: v.detach().cpu() for k, v in out.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        mean = tensors.pop("feature_mean", None)
        if mean is not None and not self.config["center_features"]:
            raise ValueError("the weights hold a feature mean but the config has center_features=false")
        # a model saved before centring existed has no μ: zeros make centring the identity (its own features)
        self.model.set_feature_mean(torch.zeros_like(self.model.feature_mean) if mean is None else mean)
        bank = {k: tensors.pop(k) for k in list(tensors) if k.startswith("bank.")}
        net = {k[len("backbone."):]: tensors.pop(k) for k in list(tensors) if k.startswith("backbone.")}
        if is_random(self.config["backbone"]):
            if not net:
                raise ValueError("this model has a randomly initialised backbone but its weights are not in the file")
            self.model.backbone.load_net_state(net)
            self.model.refresh_text(self.config["prompts"])
        elif net:
            raise ValueError("the weights hold backbone tensors but the config names a pretrained backbone")
        result = self.model.trainable().load_state_dict(tensors, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"dski weights do not match the config: missing {result.missing_keys[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
        self.bank.load(bank, self._pending_bank)
        self._pending_bank = []
        self.model.to(self.device).eval()

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg["bank"] = {"size": len(self.bank), "generators": self.bank.generators, "summary": self.bank.summary(),
                       "history": self.bank_history}
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "DSKIDetector":
        det = super().from_config(cfg)
        bank = cfg.get("bank") or {}
        det._pending_bank = list(bank.get("generators", []))
        det.bank_history = list(bank.get("history", []))
        return det

    def save_bank(self, directory: str | Path) -> Path:
        """Rewrite only the bank of the model saved in ``directory`` (atomic: temp file + rename).

        Refuses when ``directory`` holds another model (a different detector, or trainable/backbone
        weights that differ from this detector's). Nothing but the bank tensors in
        ``weights.safetensors`` and the ``bank`` entry of ``config.json`` changes.
        """
        directory = Path(directory)
        cfg, tensors = read_model_dir(directory)
        if cfg.get("detector") != self.name:
            raise ValueError(f"{directory} holds a {cfg.get('detector')!r} model, not a dski model")
        mine = {k: v for k, v in self.state_dict().items() if not k.startswith("bank.")}
        theirs = {k: v for k, v in tensors.items() if not k.startswith("bank.")}
        if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
            raise ValueError(f"{directory} holds different model weights than the loaded model; refusing to write")
        new_tensors = {**theirs, **self.bank.state_dict()}
        cfg["bank"] = self.get_config()["bank"]
        w_tmp = _temp_path(directory, WEIGHTS_FILE)
        c_tmp = _temp_path(directory, CONFIG_FILE)
        try:
            save_file({k: v.contiguous() for k, v in new_tensors.items()}, str(w_tmp), metadata={"detector": self.name})
            c_tmp.write_text(json.dumps(cfg, indent=2, default=_json_default))
            os.replace(w_tmp, directory / WEIGHTS_FILE)
            os.replace(c_tmp, directory / CONFIG_FILE)
        finally:
            for tmp in (w_tmp, c_tmp):
                tmp.unlink(missing_ok=True)
        return directory


def _temp_path(directory: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(path)


def _label(value: int | str | float) -> int:
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in CLASSES:
            raise ValueError(f"label must be 'real' or 'fake' (or 0/1), got {value!r}")
        return CLASSES.index(key)
    v = int(value)
    if v not in (0, 1):
        raise ValueError(f"label must be 0 (real) or 1 (fake), got {value!r}")
    return v
