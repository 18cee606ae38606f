"""``fusion``: several member detectors combined through p-values calibrated on real validation images.

Each member's score s is turned into an upper-tail p-value against that member's scores on *real
validation* images (the null): with the n real scores on the logit scale r₁ ≤ … ≤ rₙ,
p(s) = (1 + #{rᵢ ≥ t}) / (n + 1) for t = logit(s) up to the m-th largest real score u
(m = ⌈``tail_fraction``·n⌉, at least 2), and beyond it an exponential tail fitted to the m largest
reals (peaks over threshold, GPD with shape 0: p = m/(n+1) · exp(−(t − u)/β), β their mean excess
over u), so that scores above every real keep their order instead of all tying at 1/(n+1).

Combination (``combine``):

* ``"fisher"`` (default): X = −2 Σ log pᵢ, fused p = χ²₂ₖ survival of X. Fisher's method sums the
  evidence of all members, so a fake that is moderately unusual for both a supervised detector
  and a real-only model is flagged — the situation of an unseen generator, where the supervised
  member is weak but rarely silent. Members are not independent (both see the same image), so
  the χ² p-value is not exact; it is only used as a ranking, and τ is set empirically.
* ``"min_p"``: Bonferroni min-p, fused p = min(1, k · minᵢ pᵢ): valid under any dependence and
  best when only one member carries the signal; it ignores agreement between members.

Score = 1 − fused p. τ is then chosen at ``target_fpr`` on the fused scores of the same real
validation images (:func:`medforensics.eval.calibration.calibrate`); the members' own thresholds
are not used. The map is the mean of the members' maps (members without maps are skipped).

Members live inside the model directory: their full saved configs in ``config.json``
(``config.members``) and their tensors in the one ``weights.safetensors`` under ``member<i>.``
(a member's recorded inference runtime file, e.g. the shipped default's ONNX graph, is copied
beside them as ``member<i>_<file>``); the real-validation logits of each member are ``fusion.real<i>``.
Preprocessing: the members must agree on size, fit and intensity; the fused model reads
``max(channels)`` channels and hands a 1-channel member the luma of an RGB batch.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import logit
from scipy.stats import chi2

from ...io.preprocess import Preprocessing
from ...io.types import UnreadableImageError
from ..base import Detector
from ..components.loaders import dataset_labels
from ..components.progress import progress
from ..registry import get_detector_class, register_detector

COMBINES = ("fisher", "min_p")
_CLIP = 1e-15

DEFAULTS: dict[str, Any] = {
    # member specs: {"detector": name, "config": {...}, "preprocessing": {...}} for a new (untrained) member,
    # or a saved member config (what get_config writes; then its tensors come from the weights)
    "members": [],
    "combine": "fisher",  # "fisher" | "min_p"
    "tail_fraction": 0.1,
    "target_fpr": 0.05,
    "fit_members": True,  # fit() trains the members before calibrating; False: calibrate only
    "score_batch": 16,
    "progress": True,
}


def _member_from_spec(spec: dict[str, Any], seed: int) -> Detector:
    if not isinstance(spec, dict) or "detector" not in spec:
        raise ValueError(f"a fusion member must be a dict with a 'detector' name, got {spec!r}")
    cls = get_detector_class(str(spec["detector"]))
    if "format_version" in spec:  # a saved member config
        return cls.from_config(spec)
    return cls(preprocessing=spec.get("preprocessing"), seed=int(spec.get("seed", seed)), **spec.get("config", {}))


def _to_channels(batch: torch.Tensor, channels: int) -> torch.Tensor:
    have = batch.shape[1]
    if have == channels:
        return batch
    if have == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=batch.dtype).view(1, 3, 1, 1)
        return (batch * luma).sum(1, keepdim=True)
    if have == 1 and channels == 3:
        return batch.repeat(1, 3, 1, 1)
    raise ValueError(f"batch has {have} channels; a member takes {channels}")


def shared_preprocessing(members: Sequence[Detector]) -> Preprocessing:
    """The one preprocessing that feeds every member (same size/fit/intensity; the most channels)."""
    first = members[0].preprocessing
    for m in members[1:]:
        p = m.preprocessing
        if (p.size, p.fit, p.intensity) != (first.size, first.fit, first.intensity):
            raise ValueError(f"fusion members need the same preprocessing size, fit and intensity: "
                             f"{members[0].name} has {first.to_dict()}, {m.name} has {p.to_dict()}")
    return Preprocessing(size=first.size, fit=first.fit, channels=max(m.preprocessing.channels for m in members),
                         intensity=first.intensity)


class TailPValue:
    """Upper-tail p-value of a score against real scores (ECDF body, exponential tail); see the module docstring."""

    def __init__(self, real_logits: np.ndarray, tail_fraction: float = 0.1):
        r = np.sort(np.asarray(real_logits, dtype=np.float64))
        if r.size == 0 or not np.isfinite(r).all():
            raise ValueError("a p-value calibration needs finite real scores")
        self.real, n = r, r.size
        self.m = int(min(n, max(2, math.ceil(tail_fraction * n))))
        self.u = float(r[n - self.m])
        excess = r[n - self.m :] - self.u
        self.beta = float(excess.mean()) if excess.mean() > 0 else max(float(np.std(r)), 1e-3)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        t = logit(np.clip(np.asarray(scores, dtype=np.float64), _CLIP, 1 - _CLIP))
        n = self.real.size
        ge = n - np.searchsorted(self.real, t, side="left")  # #{r >= t}
        p = (1.0 + ge) / (n + 1.0)
        tail = t > self.u
        p[tail] = self.m / (n + 1.0) * np.exp(-(t[tail] - self.u) / self.beta)
        return p


def combine_p(pvalues: np.ndarray, method: str) -> np.ndarray:
    """Fused p-values (N,) from an N×K array of member p-values (``"fisher"`` or ``"min_p"``)."""
    p = np.clip(np.asarray(pvalues, dtype=np.float64), 1e-300, 1.0)
    k = p.shape[1]
    if method == "fisher":
        return chi2.sf(-2.0 * np.log(p).sum(1), 2 * k)
    if method == "min_p":
        return np.minimum(1.0, k * p.min(1))
    raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {method!r}")


@register_detector
class FusionDetector(Detector):
    """Member detectors fused through real-calibrated p-values (see the module docstring)."""

    name = "fusion"
    version = "1"
    supervised = False  # needs no fake of its own; a supervised member brings its own training
    DEFAULTS: ClassVar[dict[str, Any]] = DEFAULTS

    def __init__(self, preprocessing: Preprocessing | dict | None = None, seed: int = 0, **config: Any):
        super().__init__(preprocessing=preprocessing, seed=seed, **config)
        c = self.config
        if c["combine"] not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {c['combine']!r}")
        if not 0 < float(c["tail_fraction"]) <= 1:
            raise ValueError(f"tail_fraction must be in (0, 1], got {c['tail_fraction']}")
        specs = list(c["members"])
        if len(specs) < 2:
            raise ValueError(f"fusion needs at least two members, got {len(specs)}")
        self.members: list[Detector] = [_member_from_spec(s, seed + i) for i, s in enumerate(specs)]
        if preprocessing is None:
            self.preprocessing = shared_preprocessing(self.members)
        self.pvalues: list[TailPValue] | None = None

    @classmethod
    def from_members(cls, members: Sequence[Detector], **config: Any) -> "FusionDetector":
        """A fusion of already trained detectors (kept as they are; call :meth:`calibrate` next)."""
        if len(members) < 2:
            raise ValueError(f"fusion needs at least two members, got {len(members)}")
        det = cls(members=[m.get_config() for m in members], fit_members=False, **config)
        det.members = list(members)
        det.preprocessing = shared_preprocessing(det.members)
        return det

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def member_scores(self, batch: torch.Tensor, maps: bool = False) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Each member's probability (N×K) on a prepared batch (and, with ``maps``, each member's maps)."""
        batch = batch.float()
        if batch.ndim == 3:
            batch = batch[:, None]
        scores, out_maps = [], []
        for m in self.members:
            x = _to_channels(batch, m.preprocessing.channels)
            if maps:
                s, mp = m._score_and_map_arrays(x)
                out_maps.append(None if mp is None else np.asarray(mp, dtype=np.float32))
            else:
                s = m._score_arrays(x)
            scores.append(np.asarray(s, dtype=np.float64).reshape(-1))
        return np.stack(scores, 1), out_maps

    def member_pvalues(self, member_scores: np.ndarray) -> np.ndarray:
        """Calibrated upper-tail p-values (N×K) of member scores (N×K)."""
        if self.pvalues is None:
            raise RuntimeError("the fusion is not calibrated: call fit() or calibrate() on real validation images")
        s = np.atleast_2d(np.asarray(member_scores, dtype=np.float64))
        return np.stack([pv(s[:, i]) for i, pv in enumerate(self.pvalues)], 1)

    def fuse(self, member_scores: np.ndarray) -> np.ndarray:
        """Fused probabilities (N,) = 1 − combined p-value, from member scores (N×K)."""
        return 1.0 - combine_p(self.member_pvalues(member_scores), self.config["combine"])

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        return self.fuse(self.member_scores(batch)[0])

    def _score_and_map_arrays(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        scores, maps = self.member_scores(batch, maps=True)
        have = [m for m in maps if m is not None]
        return self.fuse(scores), (np.clip(np.mean(have, axis=0), 0.0, 1.0).astype(np.float32) if have else None)

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray | None:
        return self._score_and_map_arrays(batch)[1]

    # ------------------------------------------------------------------ fit / calibration
    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train every member (unless ``fit_members`` is False), then calibrate on the real items of ``val``
        (of ``train`` when there is no ``val``, with a warning in the calibration record)."""
        summary: dict[str, Any] = {}
        if self.config["fit_members"]:
            summary["members"] = []
            for m in self.members:
                ch = m.preprocessing.channels
                same = ch == self.preprocessing.channels
                s = m.fit(train if same else _ChannelView(train, ch),
                          val if same or val is None else _ChannelView(val, ch))
                summary["members"].append({"detector": m.name, **{k: v for k, v in s.items() if k != "history"}})
        source = "real_val" if val is not None and len(val) else "real_train"
        summary.update(self.calibrate(val if source == "real_val" else train, source=source))
        self.training_summary = summary
        return summary

    def calibrate(self, dataset: Sequence[dict], source: str = "real_val") -> dict[str, Any]:
        """Fit each member's p-value calibration and the fused τ on the real items of ``dataset``
        (items with ``image`` C×H×W in this model's preprocessing and ``label``; fakes are skipped)."""
        labels = dataset_labels(dataset) if len(dataset) else np.zeros(0, np.int64)
        images, unreadable = [], []
        for i in np.flatnonzero(labels == 0):
            try:
                images.append(torch.as_tensor(dataset[int(i)]["image"]).float())
            except UnreadableImageError as err:
                unreadable.append(str(err))
        if not images:
            raise ValueError("fusion calibration needs real images, and the dataset holds no readable real image")
        step = max(1, int(self.config["score_batch"]))
        rows = [self.member_scores(torch.stack(images[a : a + step]))[0]
                for a in progress(range(0, len(images), step), "fusion calibration", enabled=self.config["progress"])]
        real = np.concatenate(rows)
        tail = float(self.config["tail_fraction"])
        self.pvalues = [TailPValue(logit(np.clip(real[:, i], _CLIP, 1 - _CLIP)), tail) for i in range(real.shape[1])]
        fused = self.fuse(real)
        self.calibrate_on_real_val(np.zeros(len(fused), np.int64), fused, float(self.config["target_fpr"]))
        self.calibration["method"] = f"fpr_on_{source}"
        self.calibration["combine"] = self.config["combine"]
        if source != "real_val":
            self.calibration["warning"] = "no real validation images: calibrated on the training reals (FPR optimistic)"
        return {"calibration_images": len(images), "calibration_unreadable": unreadable,
                "achieved_fpr": self.calibration["achieved_fpr"],
                "members": [m.name for m in self.members]}

    # ------------------------------------------------------------------ persistence
    def _member_configs(self) -> list[tuple[dict[str, Any], Path | None]]:
        """Each member's saved config and the file of its recorded inference runtime (copied into the
        fused model directory as ``member<i>_<file>``; a runtime whose file is missing is dropped)."""
        out = []
        for i, m in enumerate(self.members):
            cfg, src = m.get_config(), None
            rt = cfg.get("runtime")
            if rt and rt.get("file"):
                src = Path(m.model_dir) / rt["file"] if m.model_dir is not None else None
                if src is None or not src.is_file():
                    cfg.pop("runtime")
                    src = None
                else:
                    cfg["runtime"] = {**rt, "file": f"member{i}_{Path(rt['file']).name}"}
            out.append((cfg, src))
        return out

    def get_config(self) -> dict[str, Any]:
        self.config["members"] = [cfg for cfg, _ in self._member_configs()]
        return super().get_config()

    def save(self, directory: str | Path, model_card: str | None = None) -> Path:
        """One model directory: config (members' configs inside), one safetensors file, and the members'
        inference-runtime files if they recorded one."""
        path = super().save(directory, model_card)
        for cfg, src in self._member_configs():
            if src is not None:
                shutil.copyfile(src, path / cfg["runtime"]["file"])
        return path

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.members):
            tensors.update({f"member{i}.{k}": v for k, v in m.state_dict().items()})
        for i, pv in enumerate(self.pvalues or []):
            tensors[f"fusion.real{i}"] = torch.tensor(pv.real, dtype=torch.float64)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, m in enumerate(self.members):
            prefix = f"member{i}."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not own:
                raise ValueError(f"weights hold no '{prefix}*' tensors: not a fusion of {len(self.members)} members")
            m.model_dir = self.model_dir  # where a member's runtime file was copied (see save)
            m.load_state_dict(own)
        reals = [tensors.get(f"fusion.real{i}") for i in range(len(self.members))]
        tail = float(self.config["tail_fraction"])
        self.pvalues = None if any(r is None for r in reals) else [TailPValue(r.numpy(), tail) for r in reals]


class _ChannelView:
    """A dataset view whose items' images are converted to a member's channel count."""

    def __init__(self, dataset: Sequence[dict], channels: int):
        self.dataset, self.channels = dataset, channels
        labels = getattr(dataset, "labels", None)
        if labels is not None:
            self.labels = labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        img = torch.as_tensor(item["image"]).float()
        item["image"] = _to_channels(img[None], self.channels)[0]
        return item
