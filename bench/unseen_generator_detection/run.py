"""Which detector finds fakes of published generators it never saw — better than the current default,
and better than processing cues alone? Decides which candidate, if any, ships as the new default.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/unseen_generator_detection/run.py

Data: the shared manifest's patient-level test split (``patient_split(shared_manifest(), test_fraction=0.2,
seed=0)``, as ``train/recipes.py`` splits it) and tampered copies of its reals
(``synth.tamper_set.make_tampered_set``, fraction 0.5, seed 0 — the recipe's test copies). Published fakes
are scored per generator against the test reals of their modality; generators whose anatomy has no real
counterpart in the modality (``medforensics.data.anatomy_matched``) are reported apart and never decide
anything. Tampered copies (inject, remove) are scored against all test reals.

Views (``medforensics.benchmark.protocol``): *plain* (the detector's own preprocessing), *matched* (every
image of both classes through a 0.5× resize round trip + JPEG 85) and *laundered* (0.875× resize round trip
+ JPEG 80, both classes).

Rows: the current default, every model directory under ``runs/aligned/candidates/`` (``shuffled*``: the
label-permuted control; ``lofo-<family>``: leave-one-transform-family-out models), ``runs/zed/`` and
``runs/fusion/`` (a model directory or folders of them), ``--model NAME=DIR``, and two processing controls
from ``medforensics.eval.controls``: sharpness-only (mean |Laplacian|) and file-history-only (JPEG grid +
resampling periodicity). A control has no direction of its own: its sign is fitted per view on a seeded
sample of the *train* split (per modality for published fakes, per tamper kind for tampered copies) and
applied unchanged to the test split.

AUCs carry class-balanced bootstrap intervals (``eval.bootstrap.bootstrap_metrics``); candidate − default
differences a paired bootstrap (``eval.bootstrap.paired_auc_bootstrap``; the anatomy-matched mean is the
mean of the per-generator paired draws). The ship rule below was committed before any candidate was scored.

Scores are cached per model and view under ``--work`` (keyed by the model's files), so a rerun with new
candidates only scores those. Outputs (``--out``): ``results.json``, ``results.md``, ``auc_per_generator.png``,
``report.html``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# ==================================================================================== the ship rule
# Written and committed before any candidate was scored (git log of this file shows it); not changed after.

SHIP_VIEWS = ("matched", "laundered")  # the views in which real and fake share their processing
TAMPER_KINDS = ("inject", "remove")
TAMPER_VIEW = "plain"  # tampered copies share their source's file history already
TAMPER_TOLERANCE = 0.01
PROCESSING_CONTROLS = ("sharpness-only", "file-history-only")

SHIP_RULE = (
    "A candidate ships as the new default only if (1) its mean AUC over the anatomy-matched published "
    "generators is higher than the current default's in the matched view and in the laundered view; "
    "(2) on tampered copies its AUC is at most 0.01 below the current default's, for injection and for "
    "removal separately (plain view); (3) in the matched and laundered views its anatomy-matched mean "
    "AUC is higher than that of each control: sharpness-only, file-history-only and the shuffled-label "
    "run. Controls and leave-one-family-out models never ship. If several candidates pass, the one with "
    "the highest anatomy-matched mean AUC in the laundered view ships; if none passes, the current "
    "default stays."
)


def ship_failures(candidate: dict, default: dict, controls: dict[str, dict]) -> list[str]:
    """The parts of :data:`SHIP_RULE` a candidate fails, in words (empty: it passes).

    Each argument is a detector summary: ``{"published_matched_mean": {view: AUC},
    "tampered_auc": {kind: {view: AUC}}}``; ``controls`` maps a control's name to its summary.
    A missing number counts as a failure.
    """
    failed = []

    def num(d: dict, *keys: str) -> float:
        for k in keys:
            d = d.get(k, {}) if isinstance(d, dict) else {}
        return float(d) if isinstance(d, (int, float)) and np.isfinite(d) else float("nan")

    for view in SHIP_VIEWS:
        c, d = num(candidate, "published_matched_mean", view), num(default, "published_matched_mean", view)
        if not c > d:
            failed.append(f"anatomy-matched mean AUC not above the current default's in the {view} view "
                          f"({c:.3f} vs {d:.3f})")
    for kind in TAMPER_KINDS:
        c, d = num(candidate, "tampered_auc", kind, TAMPER_VIEW), num(default, "tampered_auc", kind, TAMPER_VIEW)
        if not c >= d - TAMPER_TOLERANCE:
            failed.append(f"tampered ({kind}) AUC more than {TAMPER_TOLERANCE} below the current default's "
                          f"({c:.3f} vs {d:.3f})")
    for name, ctrl in sorted(controls.items()):
        for view in SHIP_VIEWS:
            c, k = num(candidate, "published_matched_mean", view), num(ctrl, "published_matched_mean", view)
            if not c > k:
                failed.append(f"does not beat the {name} control in the {view} view ({c:.3f} vs {k:.3f})")
    return failed


def ship_decision(candidate: dict, default: dict, controls: dict[str, dict]) -> bool:
    """:data:`SHIP_RULE` for one candidate: True when it passes every part."""
    return not ship_failures(candidate, default, controls)


def choose_default(summaries: dict[str, dict], kinds: dict[str, str], default: str = "default") -> str:
    """The model that ships under :data:`SHIP_RULE`: the passing ``candidate`` (by ``kinds``) with the highest
    laundered anatomy-matched mean, else ``default``. Controls are the rows of kind ``control``/``shuffled``."""
    controls = {n: s for n, s in summaries.items() if kinds.get(n) in ("control", "shuffled")}
    passing = [n for n, s in summaries.items() if kinds.get(n) == "candidate"
               and ship_decision(s, summaries[default], controls)]
    if not passing:
        return default
    return max(sorted(passing), key=lambda n: summaries[n]["published_matched_mean"]["laundered"])


# ==================================================================================== targets (the issue's)

TARGETS = {
    "published_matched_mean": 0.90,  # mean AUC over the anatomy-matched generators (none in training)
    "per_modality_min": 0.80,  # every modality
    "laundered_gap": 0.05,  # |laundered − plain| of the anatomy-matched mean
    "tampered": 0.90,  # inject and remove, each
}

VIEWS = ("plain", "matched", "laundered")
ROOT = Path(__file__).resolve().parents[2]


# ==================================================================================== models


def _model_dirs(folder: Path) -> list[Path]:
    if (folder / "config.json").is_file():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file())


def discover_models(runs: Path, extra: list[str]) -> list[dict[str, Any]]:
    """The rows to score: name, directory and kind (current / candidate / shuffled / lofo)."""
    from medforensics.detectors import pretrained_dir

    out = [{"name": "default", "dir": str(pretrained_dir("default")), "kind": "current"}]
    for p in _model_dirs(runs / "aligned" / "candidates"):
        kind = "shuffled" if "shuffled" in p.name.lower() else "lofo" if p.name.lower().startswith("lofo") else "candidate"
        out.append({"name": f"aligned/{p.name}", "dir": str(p), "kind": kind})
    for group in ("zed", "fusion"):
        for p in _model_dirs(runs / group):
            name = group if p == runs / group else f"{group}/{p.name}"
            out.append({"name": name, "dir": str(p), "kind": "candidate"})
    for spec in extra:
        name, _, d = spec.partition("=")
        if not d:
            raise SystemExit(f"--model takes NAME=DIR, got {spec!r}")
        out.append({"name": name, "dir": d, "kind": "candidate"})
    return out


def _files_key(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".onnx", ".npz", ".npy"):
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


class ControlScorer:
    """A processing control dressed as a detector for the one scoring loop (``score_manifest``):
    preprocessing to 256² luma (centre crop, as the default model), then ``fn`` per image."""

    threshold = None

    def __init__(self, name: str, fn):
        from medforensics.io.preprocess import Preprocessing

        self.name, self.fn = name, fn
        self.preprocessing = Preprocessing(size=256, fit="center_crop", channels=1)

    def score(self, batch) -> np.ndarray:
        arr = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        return np.array([self.fn(a[0]) for a in arr], dtype=np.float64)


def controls() -> dict[str, ControlScorer]:
    from medforensics.eval.controls import file_history_score, sharpness_score

    return {"sharpness-only": ControlScorer("sharpness-only", sharpness_score),
            "file-history-only": ControlScorer("file-history-only", file_history_score)}


def score_cached(det, manifest, view: str, cache: Path, key: str, tag: str = "") -> dict[str, float]:
    """path → score of ``manifest`` under ``view``, from ``cache/<key>/<view><tag>.json`` when present."""
    from medforensics.benchmark.protocol import score_manifest

    file = cache / key / f"{view}{tag}.json"
    rows_key = hashlib.sha256("\n".join(sorted(r.path for r in manifest)).encode()).hexdigest()[:16]
    if file.is_file():
        data = json.loads(file.read_text())
        if data.get("rows_key") == rows_key:
            return data["scores"]
    t0 = time.time()
    scored = score_manifest(det, manifest, view=view, show_progress=False)
    scores = {r.path: float(s) for r, s in zip(scored.rows, scored.scores)}
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"rows_key": rows_key, "seconds": round(time.time() - t0, 1),
                                "errors": [list(e) for e in scored.errors], "scores": scores}))
    print(f"    {view}: {len(scores)} images in {time.time() - t0:.0f} s ({len(scored.errors)} unreadable)", flush=True)
    return scores


# ==================================================================================== data


def test_data(work: Path) -> dict[str, Any]:
    from medforensics.data import Manifest, anatomy_matched, patient_split, shared_manifest
    from medforensics.synth.tamper_set import make_tampered_set

    shared = shared_manifest()
    split = patient_split(shared, test_fraction=0.2, seed=0)
    test = split.subset("test")
    tampered = make_tampered_set(test, work / "tampered" / "test", fraction=0.5, seed=0, show_progress=False)
    full = Manifest.concat([test, tampered])
    matched = sorted({r.generator for r in test if r.label == "fake" and anatomy_matched(r, shared)})
    published = sorted({r.generator for r in test if r.label == "fake"})
    # the supplement: anatomy-matched published fakes of the other splits (honest only for models that never
    # trained on published fakes)
    other = split.filter(lambda r: r.split != "test" and r.label == "fake" and anatomy_matched(r, shared))
    return {"shared": shared, "split": split, "manifest": full, "matched_generators": matched,
            "published_generators": published, "other_split_fakes": other}


def aligned_test_fakes(runs: Path, test_reals: dict[str, str]):
    """The aligned set's test fakes (``runs/aligned/set/manifest.csv``, split ``test``) whose real is in this
    benchmark's test split, with each fake's transform family; None when there is no aligned set."""
    from medforensics.data import Manifest

    path = runs / "aligned" / "set" / "manifest.csv"
    if not path.is_file():
        return None
    from medforensics.train.aligned import transform_family

    m = Manifest.read(path)
    rows = []
    for r in m:
        real = os.path.realpath(r.extra.get("aligned_to", ""))
        if r.label == "fake" and r.split == "test" and real in test_reals:
            new = r.copy()
            new.extra["transform_family"] = transform_family(r)
            new.extra["real_key"] = test_reals[real]
            rows.append(new)
    return m.with_rows(rows) if rows else None


def _holdout_family(model_dir: str, name: str) -> str | None:
    """The transform family a model was trained without: ``lofo-<family>`` in its name, else its recorded
    ``holdout_family`` (the aligned recipe validates on one held-out family)."""
    base = Path(name).name.lower()
    if base.startswith("lofo-"):
        return base[len("lofo-"):]
    try:
        training = json.loads((Path(model_dir) / "config.json").read_text()).get("training") or {}
    except (OSError, ValueError):
        return None
    data = training.get("data") if isinstance(training.get("data"), dict) else {}
    return training.get("holdout_family") or data.get("holdout_family")


def aligned_metrics(scores: dict[str, float], fake_scores: dict[str, float], aligned, n_boot: int,
                    two_sided: bool) -> dict[str, Any]:
    """AUC per transform family: that family's aligned test fakes against the test reals they were made from
    (plain view). ``two_sided`` (controls): the better direction, their best case."""
    out = {}
    for fam in sorted({r.extra["transform_family"] for r in aligned}):
        fakes = [r for r in aligned if r.extra["transform_family"] == fam and r.path in fake_scores]
        reals = sorted({r.extra["real_key"] for r in fakes if r.extra["real_key"] in scores})
        y = np.r_[np.zeros(len(reals), int), np.ones(len(fakes), int)]
        sc = np.r_[[scores[k] for k in reals], [fake_scores[r.path] for r in fakes]]
        if two_sided and _auc(y, sc) < 0.5:
            sc = -sc
        out[fam] = _boot_auc(y, sc, n_boot, 0)
    return out


def orientation_data(split, shared, work: Path, n_real: int = 400, seed: int = 0):
    """A seeded sample of the train split (reals, their tampered copies, anatomy-matched published fakes) on
    which each control's sign is fitted."""
    from medforensics.data import Manifest, anatomy_matched
    from medforensics.synth.tamper_set import make_tampered_set

    train = split.subset("train")
    reals = [r for r in train if r.label == "real"]
    rng = np.random.default_rng(seed)
    reals = [reals[i] for i in sorted(rng.choice(len(reals), min(n_real, len(reals)), replace=False))]
    fakes = [r for r in train if r.label == "fake" and anatomy_matched(r, shared)]
    base = Manifest.from_rows(reals + fakes, root=train.root)
    tampered = make_tampered_set(Manifest.from_rows(reals, root=train.root), work / "tampered" / "orientation",
                                 fraction=0.5, seed=seed, show_progress=False)
    return Manifest.concat([base, tampered])


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def fit_signs(manifest, scores: dict[str, float]) -> dict[str, int]:
    """Sign per fake group (``published:<modality>``, ``published:*`` pooled, ``tamper-<kind>``) that makes
    higher = fake on the orientation sample."""
    rows = [r for r in manifest if r.path in scores]
    s = np.array([scores[r.path] for r in rows])
    real = np.array([r.label == "real" for r in rows])
    signs = {}
    groups: dict[str, np.ndarray] = {}
    pub = np.array([r.label == "fake" and r.family != "tamper" for r in rows])
    groups["published:*"] = (real, pub)
    for mod in sorted({r.modality for r in rows}):
        m = np.array([r.modality == mod for r in rows])
        groups[f"published:{mod}"] = (real & m, pub & m)
    for kind in TAMPER_KINDS:
        groups[f"tamper-{kind}"] = (real, np.array([r.generator == f"tamper-{kind}" for r in rows]))
    for name, (r_mask, f_mask) in groups.items():
        if r_mask.any() and f_mask.any():
            idx = r_mask | f_mask
            signs[name] = 1 if _auc(f_mask[idx].astype(int), s[idx]) >= 0.5 else -1
    return signs


# ==================================================================================== metrics


def _boot_auc(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    from medforensics.eval.bootstrap import bootstrap_metrics

    if not 0 < y.sum() < len(y):
        return {"auc": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_real": int((y == 0).sum()),
                "n_fake": int(y.sum())}
    b = bootstrap_metrics(y, s, n_iter=n_boot, seed=seed, metrics=("auc",))["auc"]
    return {"auc": _auc(y, s), "lo": b["lo"], "hi": b["hi"], "n_real": int((y == 0).sum()), "n_fake": int(y.sum())}


def comparisons(rows, matched_gens: list[str]) -> dict[str, dict[str, Any]]:
    """Every real-vs-fake comparison of the benchmark: name → {real, fake index arrays, sign group, kind}."""
    gen = np.array([r.generator if r.label == "fake" else "" for r in rows])
    mod = np.array([r.modality for r in rows])
    real = np.array([r.label == "real" for r in rows])
    tamper = np.array([r.family == "tamper" for r in rows])
    pub = ~real & ~tamper
    out: dict[str, dict[str, Any]] = {}
    for g in sorted(set(gen[pub])):
        f = np.flatnonzero(gen == g)
        m = mod[f[0]]
        out[f"gen:{g}"] = {"real": np.flatnonzero(real & (mod == m)), "fake": f, "sign": f"published:{m}",
                           "kind": "generator", "generator": g, "modality": str(m), "anatomy_matched": g in matched_gens}
    am = pub & np.isin(gen, matched_gens)
    for m in sorted(set(mod[pub])):
        for label, mask in (("anatomy-matched", am), ("all", pub)):
            f = np.flatnonzero(mask & (mod == m))
            if f.size:
                out[f"mod:{m}:{label}"] = {"real": np.flatnonzero(real & (mod == m)), "fake": f,
                                           "sign": f"published:{m}", "kind": "modality", "modality": str(m),
                                           "subset": label}
    out["pooled:anatomy-matched"] = {"real": np.flatnonzero(real), "fake": np.flatnonzero(am), "sign": "published:*",
                                     "kind": "pooled"}
    for kind in TAMPER_KINDS:
        out[f"tamper:{kind}"] = {"real": np.flatnonzero(real), "fake": np.flatnonzero(gen == f"tamper-{kind}"),
                                 "sign": f"tamper-{kind}", "kind": "tamper"}
    return out


def _sign(comp: dict, signs: dict[str, int] | None) -> int | None:
    """The control's fitted sign for a comparison; None when the train split had no fakes of its group (the
    direction is then taken from the test comparison itself: the control's best case)."""
    if signs is None:
        return 1
    return signs.get(comp["sign"])


def metrics(s: np.ndarray, comps: dict, signs: dict[str, int] | None, n_boot: int, seed: int) -> dict[str, Any]:
    """AUC with bootstrap interval for every comparison, plus the summary numbers the rule and targets use."""
    res: dict[str, Any] = {}
    for name, c in comps.items():
        idx = np.r_[c["real"], c["fake"]]
        y = np.r_[np.zeros(c["real"].size, int), np.ones(c["fake"].size, int)]
        sign = _sign(c, signs)
        if sign is None:
            sign = 1 if _auc(y, s[idx]) >= 0.5 else -1
            res[name] = {**_boot_auc(y, sign * s[idx], n_boot, seed), "sign": "chosen on test (no train fakes)"}
        else:
            res[name] = _boot_auc(y, sign * s[idx], n_boot, seed)
    gens_m = [n for n, c in comps.items() if c["kind"] == "generator" and c["anatomy_matched"]]
    gens_x = [n for n, c in comps.items() if c["kind"] == "generator" and not c["anatomy_matched"]]
    mods = [n for n, c in comps.items() if c["kind"] == "modality" and c["subset"] == "anatomy-matched"]
    summary = {
        "published_matched_mean": float(np.mean([res[n]["auc"] for n in gens_m])) if gens_m else float("nan"),
        "published_mismatched_mean": float(np.mean([res[n]["auc"] for n in gens_x])) if gens_x else float("nan"),
        "per_modality_min": float(np.min([res[n]["auc"] for n in mods])) if mods else float("nan"),
        "pooled_matched": res["pooled:anatomy-matched"]["auc"],
        **{f"tampered_{k}": res[f"tamper:{k}"]["auc"] for k in TAMPER_KINDS if f"tamper:{k}" in res},
    }
    return {"comparisons": res, "summary": summary}


def paired_deltas(new: np.ndarray, old: np.ndarray, comps: dict, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired bootstrap of AUC(new) − AUC(old): the anatomy-matched mean over generators (per-generator paired
    draws, averaged draw by draw) and each tamper kind."""
    from medforensics.eval.bootstrap import paired_auc_bootstrap, summarize

    def one(c: dict, k: int) -> tuple[float, np.ndarray]:
        idx = np.r_[c["real"], c["fake"]]
        y = np.r_[np.zeros(c["real"].size), np.ones(c["fake"].size)]
        diff = paired_auc_bootstrap(y, new[idx], old[idx], n_iter=n_boot, seed=seed + k)
        return diff.point, diff.draws

    gens = [c for c in comps.values() if c["kind"] == "generator" and c["anatomy_matched"]]
    out = {}
    if gens:
        diffs = [one(c, k) for k, c in enumerate(gens)]
        out["published_matched_mean"] = summarize(np.mean([d for _, d in diffs], axis=0),
                                                  float(np.mean([p for p, _ in diffs])))
    for j, kind in enumerate(TAMPER_KINDS):
        point, draws = one(comps[f"tamper:{kind}"], 100 + j)
        out[f"tampered_{kind}"] = summarize(draws, point)
    return out


# ==================================================================================== demo DICOM set


def demo_set(models: list[dict], work: Path) -> dict[str, Any]:
    """``medforensics demo``'s inputs (sample DICOMs and their tampered copies), scanned by each model: the
    fraction flagged at the model's own threshold."""
    from medforensics.cli.demo import prepare_inputs
    from medforensics.detectors import load_detector
    from medforensics.engine import ScanEngine

    out_dir = work / "demo"
    shutil.rmtree(out_dir / "inputs", ignore_errors=True)  # this script's own folder: no stale copies
    try:
        inputs = prepare_inputs(out_dir, seed=0)
    except Exception as err:  # another change to the demo must not sink the benchmark
        return {"error": f"{type(err).__name__}: {err}"}
    files = {g: sorted(p for p in (inputs / g).iterdir() if p.is_file() and p.suffix.lower() != ".json")
             for g in ("real", "tampered")}
    res: dict[str, Any] = {"files": {g: len(v) for g, v in files.items()},
                           "formats": {g: sorted({p.suffix for p in v}) for g, v in files.items()}, "models": {}}
    set_key = hashlib.sha256("\n".join(f"{p.parent.name}/{p.name}:{p.stat().st_size}" for v in files.values()
                                       for p in v).encode()).hexdigest()[:16]
    for m in models:
        cache = work / "demo_scores" / f"{m['key']}-{set_key}.json"
        if cache.is_file():
            res["models"][m["name"]] = json.loads(cache.read_text())
            continue
        try:
            det = load_detector(m["dir"])
            row: dict[str, Any] = {}
            with ScanEngine(det) as engine:
                results = list(engine.scan([inputs]))
            for g in ("real", "tampered"):
                ok = [r for r in results if r.ok and f"/{g}/" in r.path.replace("\\", "/")]
                row[g] = {"scanned": len(ok), "flagged": int(sum(r.verdict == "fake" for r in ok)),
                          "fraction": (sum(r.verdict == "fake" for r in ok) / len(ok)) if ok else float("nan")}
            row["errors"] = sum(not r.ok for r in results)
            row["threshold"] = det.threshold
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(row))
            res["models"][m["name"]] = row
        except Exception as err:
            res["models"][m["name"]] = {"error": f"{type(err).__name__}: {err}"}
    return res


# ==================================================================================== outputs


def _f(x: Any, d: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _ci(c: dict) -> str:
    mark = " ‡" if "sign" in c else ""
    return f"{_f(c['auc'], 2)} [{_f(c['lo'], 2)}, {_f(c['hi'], 2)}]{mark}"


def targets_met(summary: dict[str, dict]) -> dict[str, bool]:
    s = summary
    gap = abs(s["laundered"]["published_matched_mean"] - s["plain"]["published_matched_mean"])
    return {
        "published_matched_mean ≥ 0.90 (matched view)": s["matched"]["published_matched_mean"] >= TARGETS["published_matched_mean"],
        "every modality ≥ 0.80 (matched view)": s["matched"]["per_modality_min"] >= TARGETS["per_modality_min"],
        "laundered within 0.05 of plain": gap <= TARGETS["laundered_gap"],
        "tampered inject ≥ 0.90 (plain)": s["plain"]["tampered_inject"] >= TARGETS["tampered"],
        "tampered remove ≥ 0.90 (plain)": s["plain"]["tampered_remove"] >= TARGETS["tampered"],
    }


def rule_summary(per_view: dict[str, dict]) -> dict[str, Any]:
    """The detector summary :func:`ship_failures` reads."""
    return {"published_matched_mean": {v: per_view[v]["summary"]["published_matched_mean"] for v in per_view},
            "tampered_auc": {k: {v: per_view[v]["summary"][f"tampered_{k}"] for v in per_view} for k in TAMPER_KINDS}}


def write_markdown(result: dict, path: Path) -> str:
    rows = result["rows"]
    names = list(rows)
    L = [f"# Unseen published generators: results ({result['finished']})", "",
         f"Test split: {result['data']['n_real']} reals, {result['data']['n_published']} published fakes "
         f"({len(result['data']['anatomy_matched_generators'])} anatomy-matched generators), "
         f"{result['data']['n_tampered']} tampered copies. Bootstrap: {result['n_boot']} iterations. "
         "Controls (sharpness-only, file-history-only) are oriented on the train split. "
         "`seen` = the model's training data recorded published-generator fakes (its published-generator "
         "numbers are then not 'unseen').", "",
         "## Summary (anatomy-matched published generators: mean AUC over generators)", "",
         "| detector | kind | seen | plain | matched | laundered | laundered − plain | min modality (matched) | "
         "tamper inject (plain) | tamper remove (plain) | mismatched † (matched) |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        r = rows[n]
        s = {v: r["views"][v]["summary"] for v in VIEWS}
        L.append(f"| {n} | {r['kind']} | {r.get('seen_published', '?')} | {_f(s['plain']['published_matched_mean'])} | "
                 f"{_f(s['matched']['published_matched_mean'])} | {_f(s['laundered']['published_matched_mean'])} | "
                 f"{s['laundered']['published_matched_mean'] - s['plain']['published_matched_mean']:+.3f} | "
                 f"{_f(s['matched']['per_modality_min'])} | {_f(s['plain']['tampered_inject'])} | "
                 f"{_f(s['plain']['tampered_remove'])} | {_f(s['matched']['published_mismatched_mean'])} |")
    L += ["", "Targets: anatomy-matched mean ≥ 0.90, every modality ≥ 0.80, laundered within 0.05 of plain, "
          "tampered inject and remove ≥ 0.90 each.", "",
          "| detector | " + " | ".join(next(iter(rows.values()))["targets"]) + " |",
          "|---|" + "---|" * len(next(iter(rows.values()))["targets"])]
    for n in names:
        L.append(f"| {n} | " + " | ".join("yes" if ok else "no" for ok in rows[n]["targets"].values()) + " |")
    if result.get("not_scored"):
        L += ["", "Not scored (could not be loaded or scored): " + "; ".join(
            f"{n} ({e})" for n, e in result["not_scored"].items())]
    L += ["", "## Ship decision", "", f"Rule (fixed before scoring): {SHIP_RULE}", ""]
    dec = result["decision"]
    for n, d in dec["candidates"].items():
        L.append(f"- **{n}**: " + ("passes" if d["ship"] else "fails — " + "; ".join(d["failed"])))
    if not dec["candidates"]:
        L.append("- no candidate was found to score.")
    L += ["", f"**Ships: {dec['ships']}**" + (" (the current default stays)" if dec["ships"] == "default" else ""), ""]
    if result.get("paired"):
        L += ["## Candidate − current default (paired bootstrap, 95% interval)", "",
              "| detector | view | anatomy-matched mean Δ | tamper inject Δ | tamper remove Δ |", "|---|---|---:|---:|---:|"]
        for n, per_view in result["paired"].items():
            for v, p in per_view.items():
                cells = []
                for k in ("published_matched_mean", "tampered_inject", "tampered_remove"):
                    q = p.get(k)
                    cells.append("–" if not q else f"{q['point']:+.3f} [{q['lo']:+.3f}, {q['hi']:+.3f}]")
                L.append(f"| {n} | {v} | " + " | ".join(cells) + " |")
        L.append("")
    for v in VIEWS:
        comps = next(iter(rows.values()))["views"][v]["comparisons"]
        L += [f"## AUC per generator — {v} view", "", "| generator | modality | fakes | reals | " +
              " | ".join(names) + " |", "|---|---|---:|---:|" + "---:|" * len(names)]
        meta = result["comparisons"]
        for key in comps:
            c = meta[key]
            if c["kind"] not in ("generator", "tamper"):
                continue
            label = c.get("generator", key) + ("" if c.get("anatomy_matched", True) else " †")
            first = comps[key]
            L.append(f"| {label} | {c.get('modality', 'all')} | {first['n_fake']} | {first['n_real']} | " +
                     " | ".join(_ci(rows[n]["views"][v]["comparisons"][key]) for n in names) + " |")
        L += ["", f"Per modality ({v} view; anatomy-matched fakes vs the modality's reals):", "",
              "| modality | fakes | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for key, c in meta.items():
            if c["kind"] == "modality" and c["subset"] == "anatomy-matched":
                L.append(f"| {c['modality']} | {comps[key]['n_fake']} | " +
                         " | ".join(_ci(rows[n]["views"][v]["comparisons"][key]) for n in names) + " |")
        key = "pooled:anatomy-matched"
        L.append(f"| pooled | {comps[key]['n_fake']} | " +
                 " | ".join(_ci(rows[n]["views"][v]["comparisons"][key]) for n in names) + " |")
        L.append("")
    L += ["† anatomy-mismatched (no real image of that anatomy in the modality): reported, never decisive. "
          "‡ a control whose direction could not be fitted on the train split (no train fakes of that modality): "
          "its direction was chosen on this comparison itself, its best case.", ""]
    sup = result.get("supplement_every_split")
    if sup and sup["rows"]:
        L += ["## Supplement: every split's anatomy-matched published fakes vs the test reals", "",
              f"{sup['n_fake']} anatomy-matched published fakes of all splits ({sum(1 for c in sup['comparisons'].values() if c['kind'] == 'generator')} "
              f"generators) against the {sup['n_real']} test reals. Honest only for models whose training held no "
              "published fakes (`seen` = no); for the others (`seen` = yes, e.g. the current default) the train-split "
              "fakes were training data, so their numbers here are leaky. Not part of the ship rule.", "",
              "| detector | seen | plain | matched | laundered | min modality (matched) | pooled (matched) |",
              "|---|---|---:|---:|---:|---:|---:|"]
        for n, r in sup["rows"].items():
            s = {v: r["views"][v]["summary"] for v in VIEWS}
            L.append(f"| {n} | {r['seen_published']} | {_f(s['plain']['published_matched_mean'])} | "
                     f"{_f(s['matched']['published_matched_mean'])} | {_f(s['laundered']['published_matched_mean'])} | "
                     f"{_f(s['matched']['per_modality_min'])} | {_f(s['matched']['pooled_matched'])} |")
        snames = list(sup["rows"])
        L += ["", "Per generator, laundered view:", "",
              "| generator | modality | fakes | " + " | ".join(snames) + " |", "|---|---|---:|" + "---:|" * len(snames)]
        for key, c in sup["comparisons"].items():
            if c["kind"] == "generator":
                first = sup["rows"][snames[0]]["views"]["laundered"]["comparisons"][key]
                L.append(f"| {c['generator']} | {c['modality']} | {first['n_fake']} | " + " | ".join(
                    _ci(sup["rows"][n]["views"]["laundered"]["comparisons"][key]) for n in snames) + " |")
        L.append("")
    lofo = [n for n in names if rows[n]["kind"] == "lofo"]
    L += ["## Leave-one-transform-family-out", ""]
    L.append("Models trained without one transform family: " + (", ".join(lofo) if lofo else
             "none named `runs/aligned/candidates/lofo-*` were found when this ran.") + "")
    al = result.get("aligned_test_pairs") or {}
    if al.get("available") and al["rows"]:
        fams = list(al["families"])
        L += ["", "AUC of each transform family's aligned test fakes (`runs/aligned/set`, made from this benchmark's "
              "test reals) against the reals they were made from, plain view. **Bold** = the family the model was "
              "trained without (its `lofo-<family>` name or recorded `holdout_family`): an unseen transform. "
              "Controls: ‡ their better direction.", "",
              "| detector | held out | " + " | ".join(f"{f} ({al['families'][f]})" for f in fams) + " |",
              "|---|---|" + "---:|" * len(fams)]
        for n, r in al["rows"].items():
            cells = []
            for f in fams:
                c = r["auc"].get(f)
                cell = "–" if c is None else _ci(c) + (" ‡" if r["kind"] == "control" else "")
                cells.append(f"**{cell}**" if f == r["held_out_family"] else cell)
            L.append(f"| {n} | {r['held_out_family'] or '–'} | " + " | ".join(cells) + " |")
    elif not al.get("available"):
        L.append("No aligned set (`runs/aligned/set/manifest.csv`) was found: no per-family numbers.")
    demo = result.get("demo")
    if demo:
        L += ["", "## The demo's DICOM set (`medforensics demo` inputs), flagged at each model's own threshold", ""]
        if "error" in demo:
            L.append(f"Not scored: {demo['error']}")
        else:
            L.append(f"Files: {demo['files']} (formats {demo['formats']}).")
            L += ["", "| model | τ | reals flagged | tampered flagged | unreadable |", "|---|---:|---:|---:|---:|"]
            for n, d in demo["models"].items():
                if "error" in d:
                    L.append(f"| {n} | error: {d['error']} | | | |")
                else:
                    L.append(f"| {n} | {_f(d['threshold'], 4)} | {d['real']['flagged']}/{d['real']['scanned']} | "
                             f"{d['tampered']['flagged']}/{d['tampered']['scanned']} | {d['errors']} |")
    text = "\n".join(L) + "\n"
    path.write_text(text)
    return text


def plot_auc(result: dict, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    meta = result["comparisons"]
    keys = [k for k, c in meta.items() if c["kind"] == "generator" and c["anatomy_matched"]] + \
        [f"tamper:{k}" for k in TAMPER_KINDS] + \
        [k for k, c in meta.items() if c["kind"] == "generator" and not c["anatomy_matched"]]
    labels = [(meta[k].get("generator") or k)[:28] + ("" if meta[k].get("anatomy_matched", True) else " †") for k in keys]
    fig = Figure(figsize=(max(8.0, 0.45 * len(keys) + 3), 9.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIEWS), 1, sharex=True)
    x = np.arange(len(keys))
    n = len(rows)
    for ax, v in zip(axes, VIEWS):
        for j, (name, r) in enumerate(rows.items()):
            y = [r["views"][v]["comparisons"][k]["auc"] for k in keys]
            style = dict(marker="o", linestyle="none", markersize=5)
            if r["kind"] in ("control", "shuffled"):
                style.update(marker="x")
            ax.plot(x + (j - (n - 1) / 2) * 0.6 / max(n, 1), y, label=name, **style)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"AUC ({v})")
        ax.axvline(sum(1 for k in keys if meta[k].get("anatomy_matched") and meta[k]["kind"] == "generator") - 0.5,
                   color="k", lw=0.5)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    axes[0].legend(fontsize=7, ncol=min(4, n), loc="lower left")
    axes[0].set_title("AUC per published generator (anatomy-matched | tampered | mismatched †) per view")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


# ==================================================================================== main


def _without_counts(result: dict) -> dict:
    """A copy for results.json without the per-row class counts (they are in ``comparisons``)."""
    def strip(rows: dict) -> dict:
        return {n: {**r, "views": {v: {**pv, "comparisons": {k: {kk: vv for kk, vv in c.items()
                                                                 if kk not in ("n_real", "n_fake")}
                                                             for k, c in pv["comparisons"].items()}}
                                   for v, pv in r["views"].items()}} for n, r in rows.items()}
    out = {**result, "rows": strip(result["rows"])}
    if result.get("supplement_every_split"):
        out["supplement_every_split"] = {**result["supplement_every_split"],
                                         "rows": strip(result["supplement_every_split"]["rows"])}
    return out


def _rounded(x: Any, digits: int = 4) -> Any:
    """``x`` with every float rounded (NaN → None), for a compact results.json."""
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v, digits) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), digits) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _seen_published(model_dir: str) -> str:
    """'yes'/'no'/'?' — did the model's recorded training data include published-generator fakes?"""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "?"
    if cfg.get("supervised") is False:
        return "no"  # trained on reals only
    training = cfg.get("training") or {}
    data = training.get("data") or {}
    train = data.get("train") if isinstance(data, dict) else None
    if isinstance(train, dict) and "fake_published" in train:
        return "yes" if train["fake_published"] else "no"
    if "aligned" in (training.get("recipe"), data.get("recipe") if isinstance(data, dict) else None):
        return "no"  # aligned pairs: fakes made from train-split reals by our own transforms
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="where candidates are found (aligned/candidates, zed, fusion)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "unseen_generator_detection"), help="tampered copies, score cache")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="results folder")
    ap.add_argument("--model", action="append", default=[], help="extra candidate NAME=DIR (repeatable)")
    ap.add_argument("--baseline-only", action="store_true", help="score only the current default and the controls")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--no-demo", action="store_true", help="skip the demo's DICOM set")
    ap.add_argument("--limit", type=int, default=None, help="smoke test: a seeded subsample of this many test rows")
    ap.add_argument("--orientation-reals", type=int, default=400, help="train reals in the controls' orientation sample")
    args = ap.parse_args()
    work, out, runs = Path(args.work), Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    from medforensics.detectors import load_detector

    data = test_data(work)
    manifest = data["manifest"]
    if args.limit:
        pick = np.random.default_rng(0).choice(len(manifest), min(args.limit, len(manifest)), replace=False)
        manifest = manifest.with_rows([manifest[int(i)] for i in sorted(pick)])
    models = discover_models(runs, args.model)
    test_real_keys = {os.path.realpath(str(r.resolve(manifest.root))): r.path for r in manifest if r.label == "real"}
    aligned = aligned_test_fakes(runs, test_real_keys)
    aligned_scores: dict[str, dict[str, float]] = {}
    if args.baseline_only:
        models = models[:1]
    done = runs / "aligned" / "candidates" / "DONE"
    print(f"models: {[m['name'] for m in models]}; candidates DONE file: {done.is_file()}", flush=True)

    scores: dict[str, dict[str, dict[str, float]]] = {}
    extra_scores: dict[str, dict[str, dict[str, float]]] = {}
    extra = data["other_split_fakes"]
    if args.limit:
        extra = extra.with_rows(list(extra)[: max(1, args.limit // 8)])
    kinds: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for m in models:
        print(f"[{m['name']}] {m['dir']}", flush=True)
        try:
            det = load_detector(m["dir"])
        except Exception as err:  # a half-written candidate must not sink the benchmark
            print(f"    skipped: {type(err).__name__}: {err}", flush=True)
            info[m["name"]] = {"dir": m["dir"], "kind": m["kind"], "error": f"{type(err).__name__}: {err}"}
            continue
        key = m["key"] = f"{m['name'].replace('/', '__')}-{_files_key(Path(m['dir']))}"
        try:
            scores[m["name"]] = {v: score_cached(det, manifest, v, work / "scores", key) for v in VIEWS}
            extra_scores[m["name"]] = {v: score_cached(det, extra, v, work / "scores", key, "-other-splits")
                                       for v in VIEWS}
            if aligned is not None:
                aligned_scores[m["name"]] = score_cached(det, aligned, "plain", work / "scores", key, "-aligned-test")
        except Exception as err:  # one broken candidate is reported, the others still scored
            if m["kind"] == "current":
                raise
            print(f"    failed: {type(err).__name__}: {err}", flush=True)
            scores.pop(m["name"], None)
            info[m["name"]] = {"dir": m["dir"], "kind": m["kind"], "error": f"{type(err).__name__}: {err}"}
            continue
        kinds[m["name"]] = m["kind"]
        info[m["name"]] = {"dir": os.path.relpath(m["dir"], ROOT), "kind": m["kind"], "detector": det.name,
                           "threshold": det.threshold, "seen_published": _seen_published(m["dir"])}
    # the processing controls, on the test split and on the train-split orientation sample
    orient = orientation_data(data["split"], data["shared"], work, n_real=args.orientation_reals)
    signs: dict[str, dict[str, dict[str, int]]] = {}
    for name, ctl in controls().items():
        print(f"[{name}]", flush=True)
        key = f"control-{name}-v1"
        scores[name] = {v: score_cached(ctl, manifest, v, work / "scores", key) for v in VIEWS}
        extra_scores[name] = {v: score_cached(ctl, extra, v, work / "scores", key, "-other-splits") for v in VIEWS}
        if aligned is not None:
            aligned_scores[name] = score_cached(ctl, aligned, "plain", work / "scores", key, "-aligned-test")
        signs[name] = {v: fit_signs(orient, score_cached(ctl, orient, v, work / "scores", key + "-orientation"))
                       for v in VIEWS}
        kinds[name] = "control"
        info[name] = {"kind": "control", "detector": name, "threshold": None, "seen_published": "no",
                      "signs_fitted_on_train": signs[name]}

    # one row set for all: the test rows every detector scored
    common = set.intersection(*(set(s[v]) for s in scores.values() for v in VIEWS))
    rows = [r for r in manifest if r.path in common]
    comps = comparisons(rows, data["matched_generators"])
    result_rows: dict[str, Any] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name in scores:
        arrays[name] = {v: np.array([scores[name][v][r.path] for r in rows]) for v in VIEWS}
        per_view = {v: metrics(arrays[name][v], comps, signs.get(name, {}).get(v), args.n_boot, 0) for v in VIEWS}
        kind = "shuffled" if kinds[name] == "shuffled" else kinds[name]
        result_rows[name] = {**info[name], "kind": kind, "views": per_view,
                             "rule_summary": rule_summary(per_view),
                             "targets": targets_met({v: per_view[v]["summary"] for v in VIEWS})}
    # supplement: every split's anatomy-matched published fakes against the test reals
    common_x = set.intersection(*(set(s[v]) for s in extra_scores.values() for v in VIEWS))
    test_reals = [r for r in rows if r.label == "real"]
    test_am = [r for r in rows if r.label == "fake" and r.family != "tamper" and r.generator in data["matched_generators"]]
    rows_x = test_reals + test_am + [r for r in extra if r.path in common_x]
    comps_x = {k: c for k, c in comparisons(rows_x, sorted({r.generator for r in rows_x if r.label == "fake"})).items()
               if c["kind"] in ("generator", "modality", "pooled") and c.get("subset", "anatomy-matched") == "anatomy-matched"}
    supplement: dict[str, Any] = {"n_fake": len(rows_x) - len(test_reals), "n_real": len(test_reals),
                                  "comparisons": {k: {**{kk: vv for kk, vv in c.items() if kk not in ("real", "fake")},
                                                      "n_real": int(c["real"].size), "n_fake": int(c["fake"].size)}
                                                  for k, c in comps_x.items()}, "rows": {}}
    for name in scores:
        merged = {v: {**scores[name][v], **extra_scores[name][v]} for v in VIEWS}
        per_view = {}
        for v in VIEWS:
            res = metrics(np.array([merged[v][r.path] for r in rows_x]), comps_x, signs.get(name, {}).get(v),
                          args.n_boot, 0)
            per_view[v] = {"comparisons": res["comparisons"],
                           "summary": {k: res["summary"][k] for k in ("published_matched_mean", "per_modality_min",
                                                                      "pooled_matched")}}
        supplement["rows"][name] = {"seen_published": info[name].get("seen_published", "?"), "views": per_view}
    lofo_block: dict[str, Any] = {"available": aligned is not None, "rows": {}}
    if aligned is not None:
        fams = sorted({r.extra["transform_family"] for r in aligned})
        lofo_block["families"] = {f: sum(r.extra["transform_family"] == f for r in aligned) for f in fams}
        for name in scores:
            if name not in aligned_scores:
                continue
            m_dir = info[name].get("dir")
            lofo_block["rows"][name] = {
                "kind": kinds[name],
                "held_out_family": _holdout_family(str(ROOT / m_dir), name) if m_dir else None,
                "auc": aligned_metrics(scores[name]["plain"], aligned_scores[name], aligned, args.n_boot,
                                       two_sided=kinds[name] == "control")}
    paired = {}
    for name in result_rows:
        if kinds[name] in ("candidate", "shuffled", "lofo"):
            paired[name] = {v: paired_deltas(arrays[name][v], arrays["default"][v], comps, args.n_boot, 0) for v in VIEWS}
    summaries = {n: r["rule_summary"] for n, r in result_rows.items()}
    ctrl = {n: s for n, s in summaries.items() if kinds[n] in ("control", "shuffled")}
    decision = {"rule": SHIP_RULE, "candidates": {}, "ships": choose_default(summaries, kinds)}
    for n in summaries:
        if kinds[n] == "candidate":
            failed = ship_failures(summaries[n], summaries["default"], ctrl)
            decision["candidates"][n] = {"ship": not failed, "failed": failed}
    demo = None if args.no_demo else demo_set([m for m in models if m["name"] in kinds], work)
    n_rows = {"n_real": sum(r.label == "real" for r in rows),
              "n_published": sum(r.label == "fake" and r.family != "tamper" for r in rows),
              "n_tampered": sum(r.family == "tamper" for r in rows),
              "anatomy_matched_generators": data["matched_generators"],
              "published_generators": data["published_generators"],
              "unscored_rows": len(manifest) - len(rows)}
    result = {
        "benchmark": "unseen_generator_detection",
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "candidates_done_file": done.is_file(),
        "data": n_rows, "n_boot": args.n_boot, "views": list(VIEWS), "targets": TARGETS,
        "comparisons": {k: {**{kk: vv for kk, vv in c.items() if kk not in ("real", "fake")},
                            "n_real": int(c["real"].size), "n_fake": int(c["fake"].size)} for k, c in comps.items()},
        "rows": result_rows, "paired": paired, "decision": decision, "demo": demo,
        "supplement_every_split": supplement,
        "aligned_test_pairs": lofo_block,
        "not_scored": {n: i["error"] for n, i in info.items() if "error" in i},
        "seconds": round(time.time() - t_start, 1),
        "cpu": f"{os.cpu_count()} logical cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
    }
    (out / "results.json").write_text(json.dumps(_rounded(_without_counts(result)), default=float) + "\n")
    md = write_markdown(result, out / "results.md")
    png = plot_auc(result, out / "auc_per_generator.png")
    from medforensics.eval.report import write_eval_report

    sections: dict[str, str] = {}  # one entry per paragraph or pipe table, titled by its section
    for block in md.split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        for k, part in enumerate(p for p in body.strip().split("\n\n") if p.strip()):
            sections[title.strip() if k == 0 else f"{title.strip()} ({k + 1})"] = part.strip()
    html = out / "report.html"
    for drop in ((), ("plain view", "matched view")):  # keep the page small: fewer tables if it gets big
        kept = {t: b for t, b in sections.items() if not any(d in t for d in drop)}
        write_eval_report(kept, {"AUC per generator, per detector, per view": png}, html,
                          title="Unseen published generators: detectors vs controls",
                          info={"ships": decision["ships"], "rule": SHIP_RULE, "finished": result["finished"],
                                "all tables": "results.md"})
        if html.stat().st_size < 190_000:
            break
    print(md)
    print(f"wrote {out / 'results.json'}, results.md, {png.name}, report.html in {result['seconds']} s")


if __name__ == "__main__":
    main()
