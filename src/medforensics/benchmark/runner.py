"""Run a benchmark configuration end to end: build (train generators, sample, assemble), run every
protocol for every detector, write the report. Resumable, with a content-addressed model cache.

Layout of a run folder ``<out>/``::

    config.json                the (scaled) run configuration
    generators/<name>/         generator checkpoints, model, native-resolution samples, timing
    benchmark/                 the built benchmark (manifest.csv, build.json, images, grids)
    models/<hash>/             trained detectors, keyed by the hash of (detector config, training
                               recipe, content of the training rows) — same config → same folder
    units/<protocol>/<detector>/<part>.json
                               one finished unit each (metrics + scores); a unit whose key
                               (config, benchmark, views...) is unchanged is skipped on resume
    results/                   every number (CSV, JSON), Markdown tables, plots, report.html

A killed run continues where it stopped: generator training resumes from its checkpoints, finished
generators, models and units are reused. A unit that raised is recorded with its error and retried
on the next run; it never stops the other units.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset, Manifest, shared_manifest, train_val_split
from ..data.processing import RandomPostProcess
from ..detectors import Detector, create_detector, get_detector_class, list_detectors, load_detector
from .build import (
    BUILD_FILE,
    MANIFEST_FILE,
    BuildOptions,
    benchmark_split,
    build_benchmark,
    format_statistics_check,
    load_real_manifest,
)
from .config import DetectorSpec, GeneratorInstance, RunConfig, spec_hash
from .protocol import ScoredSet
from .protocols import PROTOCOL_FUNCTIONS, rank_key, run_ablations, score_rows

MODEL_INFO = "bench_model.json"
GENERATOR_INFO = "bench_generator.json"


def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_default))
    os.replace(tmp, path)


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# Bumped when the stored metrics change meaning, so finished units are recomputed on --resume
# (2: point estimates weighted as the class/group-balanced bootstrap draws).
METRICS_VERSION = 2


def _training_rows(spec: DetectorSpec, train: Manifest) -> Manifest:
    """The rows a detector actually learns from: all of them, or the reals for an unsupervised one."""
    return train if get_detector_class(spec.detector).supervised else train.filter(label="real")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class BenchmarkRunner:
    """Runs a :class:`RunConfig`; also the *context* the protocol functions work through."""

    def __init__(
        self,
        config: RunConfig,
        out: str | Path | None = None,
        *,
        resume: bool = True,
        force: bool = False,
        show_progress: bool = True,
        log: Callable[[str], None] | None = None,
        only: set[str] | None = None,
    ):
        self.config = config
        self.only = set(only) if only else None  # run only these detector / ablation labels (a shard of the run)
        self.out = Path(out or config.out or f"runs/bench/{config.name}").expanduser().resolve()
        self.units_dir = self.out / "units"
        self.cache_dir = Path(config.cache_dir).expanduser().resolve() if config.cache_dir else self.out / "models"
        self.show_progress = show_progress
        self.log = log or (lambda msg: print(msg, flush=True))
        self.stats: dict[str, Any] = {"units_run": 0, "units_skipped": 0, "units_failed": [], "models_trained": 0,
                                      "models_cached": 0, "generators_trained": 0, "generators_cached": 0}
        self._file_hashes: dict[str, str] = {}
        self._models: dict[str, Detector] = {}
        self.benchmark: Manifest = Manifest([])
        self.benchmark_fp = ""
        if self.units_dir.exists() and any(self.units_dir.rglob("*.json")) and not resume:
            if not force:
                raise FileExistsError(f"{self.out} holds results of an earlier run; pass resume (--resume) to continue "
                                      "it or force (--force) to recompute every unit")
            shutil.rmtree(self.units_dir)
            shutil.rmtree(self.out / "results", ignore_errors=True)

    # ================================================================== whole run
    def run(self) -> dict[str, Any]:
        """Build (or load) the benchmark, run all protocols for all detectors, write the report."""
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_json(self.out / "config.json", self.config.to_dict())
        self.benchmark = self.prepare_benchmark()
        self.benchmark_fp = self._benchmark_fingerprint()
        detectors = self.detectors()
        p = self.config.protocols
        enabled = [name for name in PROTOCOL_FUNCTIONS if getattr(p, name)]
        self.log(f"benchmark: {len(self.benchmark)} images; detectors: {', '.join(d.label for d in detectors)}; "
                 f"protocols: {', '.join(enabled + (['ablations'] if self.ablations() else []))}")
        for spec in detectors:
            for name in enabled:
                if spec.protocols is not None and name not in spec.protocols:
                    continue
                try:
                    PROTOCOL_FUNCTIONS[name](self, spec)
                except Exception as exc:  # a protocol that cannot even set up (e.g. bad hold-out) is recorded
                    self._record_failure(f"{name}/{spec.label}", exc)
        if self.ablations():
            run_ablations(self)
        from .report import write_report

        summary = {"seconds": round(time.time() - t0, 1), **self.stats}
        report = write_report(self.out, self.config, self.benchmark, stats=summary)
        summary["report"] = str(report)
        _atomic_json(self.out / "results" / "run_summary.json", summary)
        return summary

    def detectors(self) -> list[DetectorSpec]:
        specs = self.config.resolved_detectors(list_detectors())
        for s in specs:
            s.config = copy.deepcopy(s.config)
        return [s for s in specs if self.only is None or s.label in self.only]

    def ablations(self) -> list[DetectorSpec]:
        """The configured ablation variants (those in ``only`` when the run is a shard)."""
        return [s for s in self.config.protocols.ablations if self.only is None or s.label in self.only]

    def _record_failure(self, what: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.stats["units_failed"].append({"unit": what, "error": msg})
        self.log(f"[failed] {what}: {msg}")

    # ================================================================== context API
    def unit(self, unit_id: str, key: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn`` unless a finished unit with the same key exists; store its result atomically."""
        c = self.config
        full_key = {**key, "benchmark": self.benchmark_fp, "views": c.views, "n_boot": c.n_boot, "seed": c.seed,
                    "training": dataclasses.asdict(c.training), "metrics": METRICS_VERSION}
        h = spec_hash(full_key)
        path = self.units_dir / f"{unit_id}.json"
        old = _read_json(path) if path.exists() else None
        if old is not None and old.get("status") == "ok" and old.get("key_hash") == h:
            self.stats["units_skipped"] += 1
            return old
        self.log(f"[unit] {unit_id}")
        t0 = time.time()
        try:
            result = fn()
            status, error = "ok", None
        except Exception as exc:  # recorded; the run goes on
            result, status = {}, "failed"
            error = f"{type(exc).__name__}: {exc}"
            self.stats["units_failed"].append({"unit": unit_id, "error": error})
            self.log(f"[failed] {unit_id}: {error}\n{traceback.format_exc(limit=3)}")
        data = {"unit": unit_id, "status": status, "error": error, "key_hash": h, "key": full_key,
                "seconds": round(time.time() - t0, 2), **result}
        _atomic_json(path, data)
        self.stats["units_run"] += 1
        return data

    def score(self, det: Detector, manifest: Manifest, view: str, perturbation: str | None = None) -> ScoredSet:
        return score_rows(det, manifest, view=view, perturbation=perturbation, batch_size=self.config.batch_size,
                          show_progress=self.show_progress)

    def model_key(self, spec: DetectorSpec, train: Manifest) -> dict[str, Any]:
        """What determines a trained model. An unsupervised detector never sees the fakes, so only the
        real rows count: its leave-one-generator/family-out models are the in-distribution one."""
        return {"detector": spec.key(), "training": dataclasses.asdict(self.config.training),
                "data": self._rows_fingerprint(_training_rows(spec, train))}

    def trained(self, spec: DetectorSpec, train: Manifest) -> tuple[Detector, str]:
        """A detector trained on ``train`` — from the cache when the same config was trained before."""
        key = self.model_key(spec, train)
        mid = spec_hash(key)
        if mid in self._models:
            self.stats["models_cached"] += 1
            return self._models[mid], mid
        mdir = self.cache_dir / mid
        if (mdir / MODEL_INFO).is_file():
            det = load_detector(mdir)
            self.stats["models_cached"] += 1
            self.log(f"[model] {spec.label}: cache hit {mid}")
        else:
            det = create_detector(spec.detector, seed=spec.seed, **copy.deepcopy(spec.config))
            train_ds, val_ds, counts = self._datasets(det, train)
            self.log(f"[model] {spec.label}: training on {counts} → {mid}")
            t0 = time.time()
            summary = det.fit(train_ds, val_ds)
            seconds = round(time.time() - t0, 1)
            tmp = self.cache_dir / f".tmp-{mid}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            det.training_summary.setdefault("benchmark", {"counts": counts, "model_id": mid})
            det.save(tmp)
            _atomic_json(tmp / MODEL_INFO, {"model_id": mid, "key": key, "label": spec.label, "seconds": seconds,
                                            "counts": counts, "summary_keys": sorted(summary)})
            if mdir.exists():  # a concurrent writer finished first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, mdir)
            self.stats["models_trained"] += 1
        self._models[mid] = det
        return det, mid

    def load_model(self, model_id: str) -> Detector:
        """A fresh copy of a cached model (for protocols that modify it, e.g. few-shot banks)."""
        return load_detector(self.cache_dir / model_id)

    def _datasets(self, det: Detector, train: Manifest) -> tuple[ImageDataset, ImageDataset, dict[str, int]]:
        c = self.config.training
        rows = list(train if det.supervised else train.filter(label="real"))
        if c.max_train and len(rows) > c.max_train:
            rows = sorted(rows, key=lambda r: rank_key(self.config.seed, "train:" + r.path))[: c.max_train]
        split = train_val_split(train.with_rows([r.copy(split="") for r in rows]), val_fraction=c.val_fraction,
                                seed=self.config.seed)
        tr, va = split.subset("train"), split.subset("val")
        transform = RandomPostProcess() if c.augment else None
        counts = {"train_real": int((tr.labels == 0).sum()), "train_fake": int(tr.labels.sum()),
                  "val_real": int((va.labels == 0).sum()), "val_fake": int(va.labels.sum())}
        return (ImageDataset(tr, det.preprocessing, transform=transform, seed=self.config.seed),
                ImageDataset(va, det.preprocessing, seed=self.config.seed), counts)

    # ================================================================== fingerprints
    def _file_hash(self, path: Path) -> str:
        key = str(path)
        if key not in self._file_hashes:
            try:
                self._file_hashes[key] = hashlib.sha1(path.read_bytes()).hexdigest()
            except OSError:
                self._file_hashes[key] = "missing"
        return self._file_hashes[key]

    def _rows_fingerprint(self, manifest: Manifest) -> str:
        """Hash of the rows (label, modality, generator) and the content of their files."""
        h = hashlib.sha256()
        for r in sorted(manifest, key=lambda r: r.path):
            h.update(f"{r.label}|{r.modality}|{r.generator}|{self._file_hash(r.resolve(manifest.root))}\n".encode())
        return h.hexdigest()[:20]

    def _benchmark_fingerprint(self) -> str:
        return self._rows_fingerprint(self.benchmark) + ":" + spec_hash(
            [(r.path, r.split, r.extra.get("role", "")) for r in self.benchmark])

    # ================================================================== building
    def prepare_benchmark(self) -> Manifest:
        """The benchmark manifest: ``config.benchmark``, or built per ``config.build`` (cached)."""
        c = self.config
        if c.benchmark:
            return Manifest.read(c.benchmark)
        b = c.build
        assert b is not None
        reals, imported, mods, plan = self._generator_plan()
        options = BuildOptions(size=b.size, fit=b.fit, per_class=b.per_class, jpeg_quality=b.jpeg_quality,
                               resize=b.resize, match_resolution=b.match_resolution, matched_real=b.matched_real,
                               max_imported_per_generator=b.max_imported_per_generator,
                               test_fraction=b.test_fraction, seed=b.seed, modalities=tuple(mods))
        fakes, sources, gen_keys = [], {}, []
        for inst, train_rows, n_samples in plan:
            man, src, gkey = self.generator(inst, train_rows, n_samples)
            fakes.append(man)
            sources[inst.name] = src
            gen_keys.append(gkey)
        from .build import generator_sources, load_fake_source

        for d in b.generator_dirs:
            man = load_fake_source(d)
            fakes.append(man)
            names = {r.generator for r in man}
            for gen, paths in generator_sources(d, name=names.pop() if len(names) == 1 else None).items():
                sources[gen] = sources.get(gen, set()) | paths
        bench_dir = self.out / "benchmark"
        build_key = spec_hash({"options": dataclasses.asdict(options), "generators": gen_keys,
                               "generator_dirs": b.generator_dirs, "reals": self._rows_fingerprint(reals),
                               "imported": self._rows_fingerprint(imported) if imported is not None else None})
        info = _read_json(bench_dir / BUILD_FILE)
        if info is not None and info.get("build_key") == build_key and (bench_dir / MANIFEST_FILE).is_file():
            self.log(f"[build] benchmark up to date: {bench_dir}")
            manifest = Manifest.read(bench_dir / MANIFEST_FILE)
            fmt = format_statistics_check(manifest).to_dict()  # cheap; keeps the report's check current
            if fmt != info.get("format_check"):
                _atomic_json(bench_dir / BUILD_FILE, {**info, "format_check": fmt})
            return manifest
        self.log(f"[build] assembling the benchmark in {bench_dir}")
        result = build_benchmark(reals, fakes, bench_dir, imported=imported, options=options, sources=sources,
                                 overwrite=True, show_progress=self.show_progress)
        report = {**result.report, "build_key": build_key}
        _atomic_json(bench_dir / BUILD_FILE, report)
        fmt = result.report["format_check"]
        self.log(f"[build] {len(result.manifest)} images; format check {'passed' if fmt['passed'] else 'FAILED'}"
                 + ("" if fmt["passed"] else f": {fmt['failures']}"))
        return result.manifest

    def _generator_plan(self) -> tuple[Manifest, Manifest | None, list[str], list[tuple[GeneratorInstance, Manifest, int]]]:
        """The build's reals, imported fakes, modalities and (generator, train-split reals, n_samples) plan."""
        b = self.config.build
        assert b is not None
        reals = load_real_manifest(b.real)
        available = sorted({r.modality for r in reals})
        mods = available if b.modalities == "all" else [m for m in b.modalities if m in available]
        missing = [] if b.modalities == "all" else [m for m in b.modalities if m not in available]
        if missing:
            self.log(f"[build] no reals of modality {', '.join(missing)}: left out")
        reals = reals.filter(modality=set(mods))
        imported = self._imported(b.imported_fakes, set(mods))
        split_real, _ = benchmark_split(reals, imported, test_fraction=b.test_fraction, seed=b.seed)
        instances = [inst for g in b.generators for inst in g.expand(mods)]
        per_mod = {m: sum(1 for i in instances if i.modality == m) for m in mods}
        plan = []
        for inst in instances:
            train_rows = split_real.filter(modality=inst.modality, split="train")
            n_real = sum(1 for r in split_real if r.modality == inst.modality)
            plan.append((inst, train_rows, self._n_samples(inst, n_real, per_mod[inst.modality])))
        return reals, imported, mods, plan

    def train_generators(self, names: set[str] | None = None, modalities: set[str] | None = None) -> list[str]:
        """Train and sample the build's generators (only ``names`` / ``modalities`` when given) without
        building the benchmark or running detectors. Several processes may each train a disjoint
        subset into the same run folder; a later full run finds them in place (keyed by config hash)."""
        if self.config.build is None:
            raise ValueError("this config has no build section: there are no generators to train")
        self.out.mkdir(parents=True, exist_ok=True)
        done = []
        for inst, train_rows, n_samples in self._generator_plan()[3]:
            if (names and inst.name not in names) or (modalities and inst.modality not in modalities):
                continue
            self.generator(inst, train_rows, n_samples)
            done.append(inst.name)
        return done

    def _imported(self, source: str | None, mods: set[str]) -> Manifest | None:
        if not source:
            return None
        man = shared_manifest() if source == "shared" else Manifest.read(source)
        man = man.filter(lambda r: r.label == "fake" and r.modality in mods and r.family != "tamper")
        return man if len(man) else None

    def _n_samples(self, inst: GeneratorInstance, n_real: int, n_gens: int) -> int:
        if isinstance(inst.spec.n_samples, int):
            return inst.spec.n_samples
        need = n_real if self.config.build.per_class is None else min(n_real, self.config.build.per_class)
        return max(4, math.ceil(1.15 * need / max(1, n_gens)))

    def generator(self, inst: GeneratorInstance, train_rows: Manifest, n_samples: int) -> tuple[Manifest, set[str], str]:
        """Train (or resume, or reuse) one generator on ``train_rows`` and sample it at native resolution."""
        from ..synth.generators import create_generator, load_generator, load_training_images, sample_to_folder

        s = inst.spec
        rows = sorted(train_rows, key=lambda r: rank_key(s.seed, "gen:" + r.path))
        if s.max_train_images:
            rows = rows[: s.max_train_images]
        train_rows = train_rows.with_rows(rows)
        key = {"family": s.family, "modality": inst.modality, "resolution": s.resolution, "channels": inst.channels,
               "steps": s.steps, "batch_size": s.batch_size, "seed": s.seed, "config": s.config,
               "data": self._rows_fingerprint(train_rows), "n_samples": n_samples}
        gkey = spec_hash(key)
        gdir = self.out / "generators" / inst.name
        info = _read_json(gdir / GENERATOR_INFO)
        sample_dir = gdir / "samples"
        sources = {os.path.normpath(str(p)) for p in train_rows.paths()}
        if info is not None and info.get("key_hash") == gkey and (sample_dir / MANIFEST_FILE).is_file():
            self.stats["generators_cached"] += 1
            return Manifest.read(sample_dir / MANIFEST_FILE), sources, gkey
        if info is not None and info.get("key_hash") != gkey:  # config changed: start this generator afresh
            shutil.rmtree(gdir, ignore_errors=True)
        gdir.mkdir(parents=True, exist_ok=True)
        _atomic_json(gdir / "bench_sources.json", {"sources": sorted(sources)})
        self.log(f"[generator] {inst.name}: {s.family} {s.resolution}px on {len(train_rows)} train reals, "
                 f"{s.steps} steps")
        model_dir = gdir / "model"
        if (model_dir / "config.json").is_file() and (_read_json(model_dir / "config.json") or {}).get("step") == s.steps:
            gen = load_generator(model_dir)
            train_seconds = float(gen.training_summary.get("seconds", 0.0))
        else:
            images = load_training_images(train_rows, s.resolution, inst.channels, modality=inst.modality, label="real")
            gen = create_generator(s.family, resolution=s.resolution, channels=inst.channels, seed=s.seed, **s.config)
            summary = gen.fit(images, steps=s.steps, batch_size=s.batch_size, checkpoint_dir=gdir / "checkpoints",
                              resume=True, progress=self.show_progress)
            train_seconds = float(summary.get("seconds", 0.0))
            gen.save(model_dir, overwrite=True)
        shutil.rmtree(sample_dir, ignore_errors=True)
        t0 = time.time()
        man = sample_to_folder(gen, n_samples, sample_dir, modality=inst.modality, generator_name=inst.name,
                               seed=s.seed, size=gen.resolution, family=s.family,
                               manifest_path=sample_dir / MANIFEST_FILE, progress=self.show_progress)
        sample_seconds = round(time.time() - t0, 1)
        self.stats["generators_trained"] += 1
        _atomic_json(gdir / GENERATOR_INFO, {
            "name": inst.name, "key_hash": gkey, "key": key, "n_train_images": len(train_rows),
            "train_seconds": round(train_seconds, 1), "sample_seconds": sample_seconds, "n_samples": n_samples,
            "seconds_per_sample": round(sample_seconds / max(1, n_samples), 3), "sampler": gen.describe_sampler(),
            "parameters": gen.n_parameters(), "final_losses": gen.training_summary.get("final_losses", {}),
            "grid": str(model_dir / "samples.png"),
        })
        return man, sources, gkey


def run_config(
    config: RunConfig | str | Path,
    out: str | Path | None = None,
    *,
    quick: float | None = None,
    resume: bool = True,
    force: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Load (and optionally scale) a run config and run it; return the run summary. ``only``: run just
    these detector / ablation labels — several such shards can share one run folder, and a last run
    without ``only`` (``resume``) finds their units done and writes the complete report."""
    from .config import scaled

    if isinstance(config, RunConfig):
        cfg = scaled(config, quick) if quick is not None else config
    else:
        cfg = RunConfig.load(config, quick=quick)
    return BenchmarkRunner(cfg, out, resume=resume, force=force, show_progress=show_progress, log=log,
                           only=only).run()


__all__ = ["BenchmarkRunner", "run_config"]
