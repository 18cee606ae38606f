"""Should the shipped default model be retrained with the development benchmark's factory fakes?

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/default_model_with_factory_fakes/factory_fakes_check.py \
        --benchmark runs/bench/dev-medium/benchmark --json bench/results/default_model_with_factory_fakes/equal_budget.json

The shipped ``default`` model is ``medforensics train forensic_cnn`` on the shared data (reals,
published-generator fakes and tampered copies; patient-level split, seed 0). Two models are
trained here at one equal, reduced budget on that same split:

* ``recipe``: the shipped recipe as it is;
* ``recipe+factory``: the same, plus the benchmark's *train* rows — factory fakes (our DDPM / DCGAN /
  VAE) and, as many, the benchmark's reals with the factory's 64 px → 256 history (only reals
  whose original is in the shared train split, so nothing of the test split leaks in).

Both, and the shipped model, are scored on the shared test split (reals, published-generator
fakes, tampered copies) in the processing-matched view. The question is answered by
the published generators' per-generator AUC: does adding the factory fakes help on generators
the factory does not contain? The paired difference has a bootstrap interval.

After a full-budget retrain (the shipped command of ``bench/train_default.sh`` with ``--out`` elsewhere
and ``--extra-train <benchmark>/manifest.csv``; not the script itself, which overwrites the shipped
model), ``--candidate DIR`` scores it
and the previous model (``--baseline DIR``, default the shipped one) on the same test split; the rule
``KEEP_RULE`` decides which one ships. ``--from-json CHECK --retrain-json RETRAIN --model-card CARD``
writes both results into the model card.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from medforensics.benchmark.records import emit, peak_rss_mib
from medforensics.eval.bootstrap import paired_auc_bootstrap


def _paired_draw_delta(real: np.ndarray, fake: np.ndarray, new: np.ndarray, old: np.ndarray,
                       rng: np.random.Generator) -> float:
    """One paired bootstrap draw (:func:`~medforensics.eval.bootstrap.paired_auc_bootstrap`) of
    AUC(new) − AUC(old) on the reals ``real`` vs the fakes ``fake`` (index arrays), from ``rng``."""
    idx = np.r_[real, fake]
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    return float(paired_auc_bootstrap(y, new[idx], old[idx], n_iter=1, rng=rng).draws[0])


def _published_auc(labels: np.ndarray, scores: dict[str, np.ndarray], gens: list[str], mods: list[str],
                   matched: set[str], n_boot: int, seed: int, pair: tuple[str, str] = ("recipe+factory", "recipe"),
                   delta_key: str = "delta_factory_minus_recipe") -> dict:
    """Per published generator AUC (its fakes vs the test reals of its modality) for each model, and
    the paired bootstrap of the mean over generators of (``pair[0]`` − ``pair[1]``) — over all published
    generators and over the anatomy-matched ones (``matched``)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    names = sorted({g for g, lab in zip(gens, labels) if lab == 1 and not g.startswith("tamper")})
    gens_a, mods_a = np.array(gens), np.array(mods)
    per_gen: dict[str, dict] = {}
    index = {}
    for g in names:
        fake = np.flatnonzero(gens_a == g)
        mod = mods_a[fake[0]]
        real = np.flatnonzero((labels == 0) & (mods_a == mod))
        index[g] = (real, fake)
        per_gen[g] = {"modality": str(mod), "n_fake": int(len(fake)), "n_real": int(len(real)),
                      "anatomy_matched": g in matched}
        for model, sc in scores.items():
            per_gen[g][model] = float(roc_auc_score(np.r_[np.zeros(len(real)), np.ones(len(fake))],
                                                    np.r_[sc[real], sc[fake]]))
    new, old = pair
    diffs = np.empty((n_boot, len(names)))  # per draw and generator: AUC(new) − AUC(old)
    for i in range(n_boot):
        for j, g in enumerate(names):
            diffs[i, j] = _paired_draw_delta(*index[g], scores[new], scores[old], rng)

    def summary(cols: list[int]) -> dict:
        sel = [names[j] for j in cols]
        d = diffs[:, cols].mean(axis=1)
        lo, hi = np.percentile(d, [2.5, 97.5])
        return {"generators": len(sel), "mean_auc": {m: float(np.mean([per_gen[g][m] for g in sel])) for m in scores},
                delta_key: {"mean": float(d.mean()), "ci95": [float(lo), float(hi)]}}

    overall = summary(list(range(len(names))))
    return {"per_generator": per_gen, **overall,
            "anatomy_matched": summary([j for j, g in enumerate(names) if g in matched])}


def _paired_test_auc(labels: np.ndarray, new: np.ndarray, old: np.ndarray, fakes: np.ndarray, n_boot: int,
                     seed: int) -> dict:
    """AUC of both models on the test reals vs the ``fakes`` (a boolean mask), and the paired bootstrap of
    AUC(new) − AUC(old): reals and those fakes resampled separately, the same draw for both models."""
    from sklearn.metrics import roc_auc_score

    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(fakes & (labels == 1))
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    idx = np.r_[real, fake]
    d = paired_auc_bootstrap(y, new[idx], old[idx], n_iter=n_boot, seed=seed).draws
    lo, hi = np.percentile(d, [2.5, 97.5])
    return {"n_fake": int(len(fake)), "n_real": int(len(real)),
            "auc": {"retrained": float(roc_auc_score(y, np.r_[new[real], new[fake]])),
                    "previous": float(roc_auc_score(y, np.r_[old[real], old[fake]]))},
            "delta_retrained_minus_previous": {"mean": float(d.mean()), "ci95": [float(lo), float(hi)]}}


# Decided before the retrained model was scored: keep it only if it is better on the published generators
# (higher mean AUC over all of them and over the anatomy-matched ones) and not worse on the test split as
# a whole (AUC over all test fakes, published + tampered, at most 0.01 lower).
KEEP_RULE = ("keep the retrained model only if its mean AUC over the published generators is higher than the "
             "previous model's, both over all of them and over the anatomy-matched ones, and its AUC over all "
             "test fakes (published + tampered) is at most 0.01 lower")


def _failed_criteria(result: dict) -> list[str]:
    """The parts of ``KEEP_RULE`` a ``--candidate`` result does not meet, in words."""
    key = "delta_retrained_minus_previous"
    failed = []
    if result[key]["mean"] <= 0:
        failed.append("it is not better over all published generators")
    if result["anatomy_matched"][key]["mean"] <= 0:
        failed.append("it is worse on the anatomy-matched published generators")
    if result["all_test_fakes"][key]["mean"] < -0.01:
        failed.append("it is worse on the test split as a whole")
    return failed


def keep_retrained(result: dict) -> bool:
    """The decision rule ``KEEP_RULE`` applied to a ``--candidate`` result."""
    return not _failed_criteria(result)


CARD_SECTION = "## Retraining on the development benchmark"


def _ci(block: dict) -> str:
    lo, hi = block["ci95"]
    return f"{block['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _retrain_lines(result: dict) -> str:
    """The card's text on the full-budget retrain (a ``--candidate`` result)."""
    key = "delta_retrained_minus_previous"
    lines = ["### Full-budget retrain with the factory rows", "",
             "The shipped training command (`bench/train_default.sh`) with another `--out` and `--extra-train` "
             "the medium benchmark's manifest (`runs/bench/dev-medium/benchmark/manifest.csv`; the exact command "
             "is in the retrained model's own card): "
             + "; ".join(f"{e['fake']} factory fakes and {e['real']} reals added, {e['dropped_derived_from_val_test']} "
                         "rows derived from validation/test images dropped" for e in result["extra"])
             + f"; {result['train_seconds']} s of training on 2 CPU cores. Both models scored on the same test split "
             f"({result['test_rows']} images, matched view; the retrained model's own card, with its per-modality "
             "metrics, is kept as `bench/results/default_model_with_factory_fakes/full_budget_retrain_MODEL_CARD.md`). AUC per published generator:",
             "",
             "| generator | fakes | previous | retrained |", "|---|---:|---:|---:|"]
    for g, r in result["per_generator"].items():
        lines.append(f"| {g}{'' if r['anatomy_matched'] else ' †'} | {r['n_fake']} | {r['previous']:.2f} | "
                     f"{r['retrained']:.2f} |")
    for label, block in (("mean", result), ("mean, anatomy-matched", result["anatomy_matched"])):
        m = block["mean_auc"]
        lines.append(f"| **{label}** | | **{m['previous']:.2f}** | **{m['retrained']:.2f}** |")
    for label, block in (("all test fakes (published + tampered)", result["all_test_fakes"]),
                         ("tampered copies", result["tampered"])):
        m = block["auc"]
        lines.append(f"| {label} | {block['n_fake']} | {m['previous']:.2f} | {m['retrained']:.2f} |")
    kept = keep_retrained(result)
    mismatched = [r for r in result["per_generator"].values() if not r["anatomy_matched"]]
    if mismatched:
        lines += ["", f"Over the {len(mismatched)} anatomy-mismatched generators † alone the mean is "
                  f"{np.mean([r['previous'] for r in mismatched]):.2f} (previous) and "
                  f"{np.mean([r['retrained'] for r in mismatched]):.2f} (retrained): a gain there can come "
                  "from anatomy (e.g. mammograms against chest radiographs) rather than from generation traces."]
    lines += ["", "Retrained − previous, 95% paired bootstrap interval: published generators "
              f"{_ci(result[key])}; anatomy-matched {_ci(result['anatomy_matched'][key])}; all test fakes "
              f"{_ci(result['all_test_fakes'][key])}; tampered {_ci(result['tampered'][key])}.", "",
              f"Rule, fixed before scoring: {KEEP_RULE}. "
              + ("**Decision: the retrained model is shipped** (this card's training and test sections describe it)."
                 if kept else "**Decision: not shipped** — the previous model (this card's) stays: "
                 + "; ".join(_failed_criteria(result)) + ".")]
    return "\n".join(lines)


def card_section(result: dict, retrain: dict | None = None) -> str:
    """The model card's section on the factory-fakes question, written from this script's results (the check,
    and the full-budget retrain when there is one)."""
    per_gen, mean = result["per_generator"], result["mean_auc"]
    delta = result["delta_factory_minus_recipe"]
    lo, hi = delta["ci95"]
    b = result["budget"]
    lines = [
        CARD_SECTION,
        "",
        "Would adding the development benchmark's factory fakes (our DDPM, DCGAN and VAE, one of each per "
        "modality, `bench/development_benchmark/medium.yaml`) to this model's training data improve it on the "
        "published generators, which the factory does not contain?",
        "",
        f"`bench/default_model_with_factory_fakes/factory_fakes_check.py` trains this recipe twice at one equal, reduced budget (width "
        f"{b['width']}, {b['epochs']} epochs, {b['patches_per_image']} patches per image): *recipe* as shipped "
        f"({result['train_rows']['recipe']} training rows), and *recipe+factory* with "
        f"{result['extra']['factory_fakes']} factory fakes and {result['extra']['reals_64px_history']} reals "
        "given the factory's 64 px → 256 history (only reals whose original is in this model's training split). "
        f"Both, and the shipped model, are scored on the test split above ({result['test_rows']} images, "
        "matched view). AUC per published generator (its fakes vs the test reals of its modality):",
        "",
        "| generator | modality | fakes | recipe | recipe+factory | shipped |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for g, r in per_gen.items():
        lines.append(f"| {g}{'' if r['anatomy_matched'] else ' †'} | {r['modality']} | {r['n_fake']} | {r['recipe']:.2f} | {r['recipe+factory']:.2f} | "
                     f"{r['shipped']:.2f} |")
    am = result["anatomy_matched"]
    for label, block in (("mean", result), ("mean, anatomy-matched", am)):
        m = block["mean_auc"]
        lines.append(f"| **{label}** | | | **{m['recipe']:.2f}** | **{m['recipe+factory']:.2f}** | "
                     f"**{m['shipped']:.2f}** |")
    alo, ahi = am["delta_factory_minus_recipe"]["ci95"]
    lines += ["", "† anatomy-mismatched: no real image of the same anatomy in its modality.", "",
              f"Mean over generators of (recipe+factory − recipe): {delta['mean']:+.3f}, 95% paired bootstrap "
              f"interval [{lo:+.3f}, {hi:+.3f}]; over the {am['generators']} anatomy-matched generators "
              f"{am['delta_factory_minus_recipe']['mean']:+.3f} [{alo:+.3f}, {ahi:+.3f}]."]
    if retrain is not None:
        lines += ["", "Because of the anatomy-matched gain at this reduced budget, the shipped recipe was retrained "
                  "at full budget with the factory rows added and compared with this card's model.", "",
                  _retrain_lines(retrain)]
    elif alo > 0 and lo <= 0:
        lines.append("**Decision: not retrained yet.** On the anatomy-matched generators the factory fakes help "
                     "significantly, but over all published generators the interval includes zero, and the "
                     "anatomy-matched generators have few test fakes here. Retraining the shipped model "
                     "at full budget with the factory rows is the recommended next step (about 45 min CPU).")
    elif lo > 0 and alo > 0:
        lines.append("**Decision: the factory fakes help; the shipped model is to be retrained with them.**")
    else:
        lines.append("**Decision: not retrained.** Adding the factory fakes does not clearly improve the results on "
                     "the published generators" + (" (an interval includes zero)." if max(hi, ahi) > 0 else
                                                   " (it makes them worse)."))
    return "\n".join(lines) + "\n"


def write_card_section(card: Path, section: str) -> None:
    """Put ``section`` into the model card: replace an earlier one, else insert it before Limitations."""
    text = card.read_text()
    start = text.find(CARD_SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(CARD_SECTION))
        text = text[:start] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    else:
        at = text.find("## Limitations")
        text = text[:at] + section + "\n" + text[at:] if at >= 0 else text.rstrip("\n") + "\n\n" + section
    card.write_text(text)


def compare_retrained(candidate: Path, baseline: str | None, workdir: str, n_boot: int) -> dict:
    """Score a retrained model and the previous one on the shipped recipe's test split (matched view)."""
    from medforensics.benchmark.protocol import score_manifest
    from medforensics.data import shared_manifest
    from medforensics.data.shared import anatomy_matched
    from medforensics.detectors import load_detector, pretrained_dir
    from medforensics.train.recipes import prepare_supervised_data

    shared = shared_manifest()
    test = prepare_supervised_data(shared, workdir, seed=0, tamper_fraction=0.5).test  # the shipped recipe's
    det = load_detector(candidate)
    scores, scored = {}, None
    for name, model in (("retrained", det), ("previous", load_detector(Path(baseline) if baseline else
                                                                       pretrained_dir("default")))):
        scored = score_manifest(model, test, view="matched", show_progress=False)
        scores[name] = scored.scores
        print(f"[{name}] scored {len(scored.scores)} test images", flush=True)
    labels = np.asarray(scored.labels)
    gens = [r.generator if r.label == "fake" else "" for r in scored.rows]
    mods = [r.modality for r in scored.rows]
    matched = {r.generator for r in test if r.label == "fake" and anatomy_matched(r, shared)}
    tampered = np.array([r.family == "tamper" for r in scored.rows])
    extra = det.training_summary.get("data", {}).get("extra_train", [])
    return {
        "benchmark": "default_model_full_budget_retrain",
        "candidate": str(candidate), "baseline": str(baseline or "shipped default"),
        "extra": [{k: e[k] for k in ("real", "fake", "dropped_derived_from_val_test")} for e in extra],
        "train_seconds": det.training_summary.get("seconds"),
        "test_rows": len(test), "view": "matched",
        **_published_auc(labels, scores, gens, mods, matched, n_boot, seed=0, pair=("retrained", "previous"),
                         delta_key="delta_retrained_minus_previous"),
        "all_test_fakes": _paired_test_auc(labels, scores["retrained"], scores["previous"], labels == 1, n_boot, 0),
        "tampered": _paired_test_auc(labels, scores["retrained"], scores["previous"], tampered, n_boot, 0),
        "cpu": f"{os.cpu_count()} logical cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", help="benchmark folder written by `bench run` / `bench build`")
    ap.add_argument("--workdir", default="runs/work-default-model-check")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--patches", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--models-out", default="runs/default-model-check-models", help="where the two models are saved")
    ap.add_argument("--reuse", action="store_true", help="load the models of an earlier run from --models-out")
    ap.add_argument("--json", default=None)
    ap.add_argument("--model-card", default=None,
                    help="write the result as a section of this MODEL_CARD.md (the shipped model's card)")
    ap.add_argument("--from-json", default=None, help="only write --model-card from an earlier --json result")
    ap.add_argument("--candidate", default=None,
                    help="compare this retrained model directory with --baseline on the test split instead")
    ap.add_argument("--baseline", default=None, help="the previous model (default: the shipped one)")
    ap.add_argument("--retrain-json", default=None, help="with --from-json: a --candidate result to add to the card")
    args = ap.parse_args()
    if args.from_json:
        if not args.model_card:
            ap.error("--from-json needs --model-card")
        retrain = json.loads(Path(args.retrain_json).read_text()) if args.retrain_json else None
        write_card_section(Path(args.model_card), card_section(json.loads(Path(args.from_json).read_text()), retrain))
        return
    if args.candidate:
        emit(compare_retrained(Path(args.candidate), args.baseline, args.workdir, args.n_boot), args.json)
        return
    if not args.benchmark:
        ap.error("--benchmark is required")

    from medforensics.benchmark.protocol import score_manifest
    from medforensics.data import Manifest, shared_manifest
    from medforensics.data.shared import anatomy_matched
    from medforensics.detectors import create_detector, load_detector, pretrained_dir
    from medforensics.train.recipes import add_training_rows, prepare_supervised_data, training_datasets

    shared = shared_manifest()
    data = prepare_supervised_data(shared, args.workdir, seed=0, tamper_fraction=0.5)
    augmented = add_training_rows(data, Manifest.read(Path(args.benchmark) / "manifest.csv"), source=args.benchmark)
    added = augmented.summary["extra_train"][-1]

    cfg = {"width": args.width, "epochs": args.epochs, "patches_per_image": args.patches, "batch_size": 16,
           "progress": False}
    test = data.test
    scores: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}
    labels = gens = mods = None
    runs = {"recipe": data, "recipe+factory": augmented}
    for name, d in runs.items():
        model_dir = Path(args.models_out) / name.replace("+", "_")
        if args.reuse and (model_dir / "config.json").is_file():  # an earlier run of this script
            det = load_detector(model_dir)
            timing[name] = float(det.training_summary.get("seconds", 0.0))
        else:
            det = create_detector("forensic_cnn", seed=0, **cfg)
            train_set, val_set = training_datasets(d, det.preprocessing, seed=0)
            t0 = time.time()
            det.fit(train_set, val_set)
            timing[name] = round(time.time() - t0, 1)
            shutil.rmtree(model_dir, ignore_errors=True)  # only this script writes here
            det.save(model_dir)
        print(f"[{name}] trained in {timing[name]} s on {len(d.train)} rows", flush=True)
        scored = score_manifest(det, test, view="matched", show_progress=False)
        scores[name] = scored.scores
        labels, gens, mods = scored.labels, [r.generator if r.label == "fake" else "" for r in scored.rows], \
            [r.modality for r in scored.rows]
    matched = {r.generator for r in test if r.label == "fake" and anatomy_matched(r, shared)}
    shipped = load_detector(pretrained_dir("default"))
    scored = score_manifest(shipped, test, view="matched", show_progress=False)
    assert list(scored.labels) == list(labels), "test rows scored in a different order"
    scores["shipped"] = scored.scores

    result = {
        "benchmark": "default_model_with_factory_fakes",
        "budget": cfg,
        "train_rows": {"recipe": len(data.train), "recipe+factory": len(augmented.train)},
        "extra": {"factory_fakes": added["fake"], "reals_64px_history": added["real"]},
        "train_seconds": timing,
        "test_rows": len(test),
        "view": "matched",
        **_published_auc(np.asarray(labels), scores, gens, mods, matched, args.n_boot, seed=0),
        "cpu": f"{os.cpu_count()} logical cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "peak_rss_mib": peak_rss_mib(),
    }
    emit(result, args.json)
    if args.model_card:
        write_card_section(Path(args.model_card), card_section(result))


if __name__ == "__main__":
    main()
