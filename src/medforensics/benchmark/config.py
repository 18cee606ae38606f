"""Benchmark run configuration: dataclasses loaded from YAML or JSON, validated, scalable for quick runs.

A run config says how to obtain the benchmark (``build``: train generators, sample, assemble;
or ``benchmark``: an existing benchmark manifest), which detectors to compare, and which
protocols to run. Every section is optional except a source of data. Unknown keys are errors
(a misspelt option silently ignored would change what a run measures).

``--quick F`` (``RunConfig.load(path, quick=F)``) first merges the file's ``quick_overrides``
mapping into it (smaller networks, fewer hold-outs…), then ``scaled(config, F)`` multiplies every
size-like number (generator steps, samples, images per class, detector epochs, bootstrap
iterations) by ``F`` with sensible floors.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODALITIES = ("ct", "mri", "xray", "ultrasound", "endoscopy", "histopathology")
FAMILIES = ("diffusion", "gan", "vae")
PROTOCOLS = ("in_distribution", "logo", "lofo", "published", "few_shot", "robustness", "ablations")
#: every view a run can ask for (:mod:`medforensics.benchmark.protocol`): the detector's own
#: preprocessing; every image through one resize round trip + JPEG (0.5×, q85); the laundered chain
#: (0.875×, q80) that re-saving leaves. A config's ``views`` defaults to :data:`DEFAULT_VIEWS`.
VIEWS = ("plain", "matched", "laundered")
DEFAULT_VIEWS = ("plain", "matched")

#: perturbations of the robustness protocol by default (see :mod:`medforensics.benchmark.protocols`)
DEFAULT_PERTURBATIONS = (
    "jpeg95", "jpeg75", "jpeg50", "jpeg30",
    "blur0.5", "blur1", "blur2",
    "resize0.75", "resize0.5",
    "noise0.01", "noise0.03",
    "quant8", "quant6",
    "j2k20", "j2k50",
)  # fmt: skip


class ConfigError(ValueError):
    """A run configuration is malformed (unknown key, wrong type, missing data source...)."""


def _take(cls: type, data: Any, where: str) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from mapping ``data``; unknown keys are an error."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return dict(data)


@dataclass
class GeneratorSpec:
    """One generator family trained per modality: ``name`` may contain ``{modality}``."""

    family: str
    name: str = ""
    modalities: list[str] | str = "all"
    resolution: int = 64
    channels: int | str = "auto"  # "auto": 3 for colour modalities (endoscopy, histopathology), else 1
    steps: int = 1000
    batch_size: int = 16
    n_samples: int | str = "auto"  # "auto": as many as the modality's reals in the benchmark (≤ per_class)
    max_train_images: int | None = None
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"generator family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if not self.name:
            self.name = {"diffusion": "ddpm", "gan": "dcgan", "vae": "vae"}[self.family] + "-{modality}"
        if isinstance(self.modalities, str) and self.modalities != "all":
            self.modalities = [self.modalities]
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ConfigError(f"generator resolution must be a power of two ≥ 8 (64, 128, 256…), got {self.resolution}")

    def expand(self, available: list[str]) -> list["GeneratorInstance"]:
        mods = available if self.modalities == "all" else [m for m in self.modalities if m in available]
        return [GeneratorInstance(self, m) for m in mods]


@dataclass
class GeneratorInstance:
    """A :class:`GeneratorSpec` bound to one modality."""

    spec: GeneratorSpec
    modality: str

    @property
    def name(self) -> str:
        return self.spec.name.format(modality=self.modality, family=self.spec.family)

    @property
    def channels(self) -> int:
        if self.spec.channels == "auto":
            return 3 if self.modality in ("endoscopy", "histopathology") else 1
        return int(self.spec.channels)


@dataclass
class BuildSpec:
    """How to assemble the benchmark (see :func:`medforensics.benchmark.build.build_benchmark`)."""

    real: str = "shared"  # "shared" (the shared data's reals), a manifest file or a folder
    modalities: list[str] | str = "all"
    generators: list[GeneratorSpec] = field(default_factory=list)
    generator_dirs: list[str] = field(default_factory=list)  # made elsewhere: sample folders or model dirs
    imported_fakes: str | None = None  # "shared" (the shared data's published fakes) or a manifest
    matched_real: bool = True
    max_imported_per_generator: int | None = None
    per_class: int | None = None
    size: int = 256
    fit: str = "center_crop"
    jpeg_quality: int | None = None
    resize: float | None = None
    match_resolution: bool = True
    test_fraction: float = 0.2
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Any, where: str = "build") -> "BuildSpec":
        kw = _take(cls, data, where)
        gens = kw.pop("generators", []) or []
        if not isinstance(gens, list):
            raise ConfigError(f"{where}.generators: expected a list")
        kw["generators"] = [GeneratorSpec(**_take(GeneratorSpec, g, f"{where}.generators[{i}]")) for i, g in enumerate(gens)]
        spec = cls(**kw)
        if isinstance(spec.modalities, str) and spec.modalities != "all":
            spec.modalities = [spec.modalities]
        return spec


@dataclass
class DetectorSpec:
    """A detector to compare: registry name, constructor config, a display label."""

    detector: str
    label: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    protocols: list[str] | None = None  # run only these protocols for this detector (None: every enabled one)

    def __post_init__(self) -> None:
        self.label = self.label or self.detector
        bad = [p for p in self.protocols or [] if p not in PROTOCOLS]
        if bad:
            raise ConfigError(f"detector {self.label}: unknown protocol(s) {bad}; known: {', '.join(PROTOCOLS)}")

    def key(self) -> dict[str, Any]:
        """What determines a trained model (the label and protocol list do not)."""
        return {"detector": self.detector, "config": self.config, "seed": self.seed}


@dataclass
class TrainingSpec:
    """How detectors are trained on a benchmark's train split."""

    val_fraction: float = 0.1
    augment: bool = True  # label-agnostic RandomPostProcess on every training image
    max_train: int | None = None  # cap on training images (deterministic subsample), None = all


@dataclass
class ProtocolSpec:
    """Which protocols run, and their parameters."""

    in_distribution: bool = True
    logo: bool = True
    logo_holdouts: list[str] | None = None  # generator names; None = every factory generator
    lofo: bool = True
    published: bool = True
    few_shot: bool = True
    few_shot_ks: list[int] = field(default_factory=lambda: [0, 1, 5, 10, 20])
    few_shot_holdouts: list[str] | None = None  # None = the LOGO hold-outs
    robustness: bool = True
    perturbations: list[str] = field(default_factory=lambda: list(DEFAULT_PERTURBATIONS))
    ablations: list[DetectorSpec] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any, where: str = "protocols") -> "ProtocolSpec":
        kw = _take(cls, data, where)
        abl = kw.pop("ablations", []) or []
        kw["ablations"] = [_detector(a, f"{where}.ablations[{i}]") for i, a in enumerate(abl)]
        return cls(**kw)


def _detector(data: Any, where: str) -> DetectorSpec:
    if isinstance(data, str):
        return DetectorSpec(detector=data)
    return DetectorSpec(**_take(DetectorSpec, data, where))


@dataclass
class RunConfig:
    """A whole benchmark run."""

    name: str = "benchmark"
    out: str = ""
    seed: int = 0
    benchmark: str | None = None  # an existing benchmark manifest (skips ``build``)
    build: BuildSpec | None = None
    detectors: list[DetectorSpec | str] = field(default_factory=lambda: [DetectorSpec("forensic_cnn")])
    detector_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # config per registry name for "registered"
    registered_protocols: list[str] | None = None  # protocols of the "registered" detectors (None: all enabled)
    quick_overrides: dict[str, Any] = field(default_factory=dict)  # merged into the config by --quick, before scaling
    training: TrainingSpec = field(default_factory=TrainingSpec)
    protocols: ProtocolSpec = field(default_factory=ProtocolSpec)
    views: list[str] = field(default_factory=lambda: list(DEFAULT_VIEWS))
    n_boot: int = 200
    batch_size: int = 16
    cache_dir: str | None = None  # trained-model cache (default <out>/models)
    quick: float | None = None  # set by scaled(): the factor this config was scaled by
    source: str | None = None  # file the config was read from

    def __post_init__(self) -> None:
        bad = [v for v in self.views if v not in VIEWS]
        if not self.views:
            raise ConfigError(f"views: empty; choose from {', '.join(VIEWS)}")
        if len(set(self.views)) != len(self.views):
            raise ConfigError(f"views: {self.views} names a view twice")
        if bad:
            raise ConfigError(f"views: unknown {bad}; allowed: {', '.join(VIEWS)}")
        if self.benchmark is None and self.build is None:
            raise ConfigError("a run needs either 'benchmark' (an existing benchmark manifest) or a 'build' section")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> "RunConfig":
        kw = _take(cls, data, "config")
        if "build" in kw and kw["build"] is not None:
            kw["build"] = BuildSpec.from_dict(kw["build"])
        kw["detectors"] = [
            d if d == "registered" else _detector(d, f"detectors[{i}]") for i, d in enumerate(kw.get("detectors") or [])
        ] or [DetectorSpec("forensic_cnn")]
        kw["training"] = TrainingSpec(**_take(TrainingSpec, kw.get("training"), "training"))
        kw["protocols"] = ProtocolSpec.from_dict(kw.get("protocols"))
        if source is not None:
            kw["source"] = source
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path, quick: float | None = None) -> "RunConfig":
        """Read a ``.yaml``/``.yml`` (needs PyYAML) or ``.json`` run config.

        With ``quick`` the file's ``quick_overrides`` mapping is merged in (nested mappings merged,
        other values replaced) and the result is :func:`scaled` by ``quick``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"run config not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:  # pragma: no cover - depends on environment
                raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml), or use a .json config") from exc
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: invalid JSON ({exc})") from exc
        if quick is not None and isinstance(data, dict):
            data = deep_merge(data, data.get("quick_overrides") or {})
        try:
            cfg = cls.from_dict(data, source=str(path))
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return scaled(cfg, quick) if quick is not None else cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ detectors
    def resolved_detectors(self, registered: list[str]) -> list[DetectorSpec]:
        """Explicit detectors, with ``"registered"`` expanded to every registered detector not listed."""
        explicit = [d for d in self.detectors if isinstance(d, DetectorSpec)]
        out = list(explicit)
        if "registered" in self.detectors:
            listed = {d.detector for d in explicit}
            out += [DetectorSpec(name, config=copy.deepcopy(self.detector_defaults.get(name, {})), seed=self.seed,
                                 protocols=copy.copy(self.registered_protocols))
                    for name in registered if name not in listed]
        labels = [d.label for d in out]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"detector labels must be unique; repeated: {', '.join(dup)}")
        return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: nested mappings merged key by key, other values replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def spec_hash(obj: Any, n: int = 16) -> str:
    """Stable short hash of a JSON-able object (dataclasses allowed)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _scale_int(value: int | None, factor: float, floor: int) -> int | None:
    if value is None:
        return None
    return max(floor, int(math.ceil(value * factor)))


def scaled(config: RunConfig, factor: float) -> RunConfig:
    """A copy with generator steps/samples, images per class, detector epochs and bootstrap
    iterations multiplied by ``factor`` (floors: 20 steps, 8 images, 1 epoch, 20 bootstrap draws)."""
    if not 0 < factor <= 1:
        raise ConfigError(f"quick factor must be in (0, 1], got {factor}")
    cfg = copy.deepcopy(config)
    cfg.quick = factor
    if cfg.build is not None:
        cfg.build.per_class = _scale_int(cfg.build.per_class, factor, 8)
        for g in cfg.build.generators:
            g.steps = _scale_int(g.steps, factor, 20)  # type: ignore[assignment]
            if isinstance(g.n_samples, int):
                g.n_samples = _scale_int(g.n_samples, factor, 8)  # type: ignore[assignment]
            g.max_train_images = _scale_int(g.max_train_images, factor, 16)
    specs = [d for d in cfg.detectors if isinstance(d, DetectorSpec)] + list(cfg.protocols.ablations)
    for d in specs:
        if "epochs" in d.config:
            d.config["epochs"] = _scale_int(int(d.config["epochs"]), factor, 1)
    for conf in cfg.detector_defaults.values():
        if "epochs" in conf:
            conf["epochs"] = _scale_int(int(conf["epochs"]), factor, 1)
    cfg.training.max_train = _scale_int(cfg.training.max_train, factor, 16)
    cfg.n_boot = _scale_int(cfg.n_boot, factor, 20)  # type: ignore[assignment]
    return cfg
