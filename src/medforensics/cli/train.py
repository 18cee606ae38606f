"""``medforensics train NAME``: train a registered detector on a manifest and save a model directory."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from ..data import Manifest, shared_manifest
from ..detectors import create_detector, list_detectors
from ..detectors.card import render_model_card
from ..train.recipes import add_training_rows, prepare_supervised_data, training_datasets
from .common import console, refuse_overwrite


def _parse_options(options: list[str]) -> dict:
    out = {}
    for opt in options:
        if "=" not in opt:
            raise typer.BadParameter(f"--set expects key=value, got {opt!r}")
        key, value = opt.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _create(name: str, seed: int, options: list[str], backbone: str | None):
    """(the --set options as a dict, the detector built from them); exit 2 with the reason when it cannot be built."""
    config = _parse_options(options)
    if backbone is not None:
        config["backbone"] = backbone
    try:
        return config, create_detector(name, seed=seed, **config)
    except (FileNotFoundError, KeyError, ValueError) as exc:  # e.g. backbone weights absent, bad option
        console.print(f"[red]error:[/red] cannot create detector {name!r}: {exc}")
        raise typer.Exit(2) from None


def train(
    name: str = typer.Argument(..., help=f"Registered detector ({', '.join(list_detectors())})."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    manifest: Path | None = typer.Option(None, help="Manifest CSV/Parquet (default: the shared data's)."),
    workdir: Path = typer.Option(Path("runs/work"), help="Where tampered copies and caches go."),
    modality: list[str] = typer.Option([], "--modality", help="Train on these modalities only (repeatable)."),
    backbone: str | None = typer.Option(None, "--backbone", help="Pretrained backbone: a Hugging Face name or a "
                                         "local directory (detectors with a backbone option)."),
    options: list[str] = typer.Option([], "--set", help="Detector option key=value (JSON values), repeatable."),
    extra_train: list[Path] = typer.Option([], "--extra-train", help="Also train on this manifest's train-split rows "
                                           "(e.g. a benchmark's factory fakes; repeatable). Rows derived from a "
                                           "validation or test image are dropped."),
    seed: int = typer.Option(0, help="Seed for split, data and model."),
    tamper_fraction: float = typer.Option(0.5, help="Fraction of real images given a tampered copy."),
    evaluate: bool = typer.Option(True, help="Evaluate on the test split and put the numbers in the model card."),
    n_boot: int = typer.Option(100, help="Bootstrap iterations for the evaluation."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing model directory."),
    recipe: str = typer.Option("default", "--recipe", help="default: the shared manifest's reals and fakes, "
                               "processing matched between classes; aligned: real/aligned-fake pairs "
                               "(--aligned-manifest), see bench/aligned_training/README.md."),
    aligned_manifest: Path | None = typer.Option(None, "--aligned-manifest", help="aligned recipe: the manifest of "
                                                 "`medforensics synth align` (column aligned_to). --manifest then "
                                                 "names the reals' manifest (patient ids, splits)."),
    holdout_family: str | None = typer.Option(None, "--holdout-family", help="aligned recipe: transform family "
                                              "used only for validation (e.g. bilinear: every bilinear decoder)."),
    shuffle_labels: bool = typer.Option(False, "--shuffle-labels", help="aligned recipe: swap the labels of a "
                                        "seeded half of the pairs (the shuffled-label control)."),
    crops_per_pair: int = typer.Option(4, "--crops-per-pair", help="aligned recipe: crops of each pair per epoch."),
    max_val_pairs: int = typer.Option(200, "--max-val-pairs", help="aligned recipe: at most this many validation "
                                      "pairs (held-out family)."),
    max_test_pairs: int = typer.Option(300, "--max-test-pairs", help="aligned recipe: test-split pairs scored "
                                       "after training (0: none)."),
    reencode: bool = typer.Option(False, "--reencode", help="aligned recipe: write every training file through "
                                  "one lossless PNG encoder before the format leak check."),
    crop: int | None = typer.Option(None, "--crop", help="aligned recipe: crop side in px, a multiple of 8 "
                                    "(default: the detector's training crop, patch_size / train_crop)."),
    max_train_pairs: int | None = typer.Option(None, "--max-train-pairs", help="aligned recipe: train on a seeded "
                                               "subset of this many pairs."),
    history_p: float = typer.Option(0.0, "--history-p", help="aligned recipe: probability of the history round "
                                    "trip (down ×--history-scale and back up, then JPEG), the same for both "
                                    "members of a pair; 0 = off."),
    history_scale: str = typer.Option("0.4,0.95", "--history-scale", help="aligned recipe: LOW,HIGH range of the "
                                      "history round trip's down-scale factor."),
    history_jpeg_p: float = typer.Option(0.8, "--history-jpeg-p", help="aligned recipe: probability of the JPEG "
                                         "after a history round trip."),
    history_quality: str = typer.Option("65,95", "--history-quality", help="aligned recipe: LOW,HIGH JPEG quality "
                                        "range after a history round trip."),
    history_val: str = typer.Option("", "--history-val", help="aligned recipe: SCALE,QUALITY (e.g. 0.67,85): "
                                    "validation also scores a copy of every validation image through a bicubic "
                                    "SCALE× round trip + JPEG QUALITY, so the kept epoch and τ are chosen on "
                                    "plain and re-saved images together; empty = off."),
) -> None:
    """Split by patient, train with processing matched between classes, calibrate τ, save, evaluate."""
    refuse_overwrite(out / "config.json", force)
    if recipe not in ("default", "aligned"):
        raise typer.BadParameter(f"--recipe must be default or aligned, got {recipe!r}")
    if recipe == "aligned":
        return _train_aligned(
            name, out, manifest=manifest, workdir=workdir, backbone=backbone, options=options, seed=seed,
            tamper_fraction=tamper_fraction, evaluate=evaluate, aligned_manifest=aligned_manifest,
            holdout_family=holdout_family, shuffle_labels=shuffle_labels, crops_per_pair=crops_per_pair,
            max_val_pairs=max_val_pairs, max_test_pairs=max_test_pairs, reencode=reencode, modality=modality,
            extra_train=extra_train, crop=crop, max_train_pairs=max_train_pairs,
            history=_history_options(history_p, history_scale, history_jpeg_p, history_quality),
            history_val=history_val)
    if (aligned_manifest or holdout_family or shuffle_labels or reencode or crop or max_train_pairs or history_p
            or history_val):
        raise typer.BadParameter("--aligned-manifest, --holdout-family, --shuffle-labels, --reencode, --crop, "
                                 "--max-train-pairs, --history-p and --history-val belong to --recipe aligned")
    m = Manifest.read(manifest) if manifest else shared_manifest()
    if modality:
        m = m.filter(lambda r: r.modality in modality)
        if not len(m):
            raise typer.BadParameter(f"no rows of modality {', '.join(modality)} in the manifest")
    extras = {}
    for path in extra_train:  # read up front: a bad file fails before the split and the training
        try:
            extras[path] = Manifest.read(path)
        except (OSError, ValueError) as exc:
            console.print(f"[red]error:[/red] cannot read --extra-train manifest {path}: {exc}")
            raise typer.Exit(2) from None
    _, det = _create(name, seed, options, backbone)
    data = prepare_supervised_data(m, workdir, seed=seed, tamper_fraction=tamper_fraction if det.supervised else 0.0)
    for path, extra in extras.items():
        data = add_training_rows(data, extra, source=str(path))
    console.print(f"data: {json.dumps(data.summary)}")
    train_set, val_set = training_datasets(data, det.preprocessing, seed=seed, real_only=not det.supervised)
    summary = det.fit(train_set, val_set)
    det.training_summary["data"] = data.summary
    det.training_summary["manifest"] = str(manifest or "shared data manifest")
    console.print(f"trained in {summary.get('seconds')} s; best epoch {summary.get('best_epoch')}; "
                  f"threshold {det.threshold:.4f}")
    args = ["train", name, "--out", str(out), "--workdir", str(workdir), "--seed", str(seed),
            "--tamper-fraction", str(tamper_fraction), "--n-boot", str(n_boot)]
    args += (["--manifest", str(manifest)] if manifest else []) + [a for o in options for a in ("--set", o)]
    args += [a for p in extra_train for a in ("--extra-train", str(p))]
    args += [a for mod in modality for a in ("--modality", mod)] + (["--backbone", backbone] if backbone else [])
    command = "medforensics " + " ".join(shlex.quote(a) for a in args)
    det.save(out, model_card=render_model_card(det, command=command))  # saved before the (long) evaluation
    console.print(f"model → {out}")
    if evaluate:
        from ..benchmark import evaluate_detector

        evaluation = evaluate_detector(det, data.test, reference=m, n_boot=n_boot, seed=seed)
        numbers = {v: {k: r[k] for k in ("all fakes", "anatomy-matched", "per_generator")}
                   for v, r in evaluation.views.items()}
        (out / "test_metrics.json").write_text(json.dumps(numbers, indent=2, default=float))
        (out / "MODEL_CARD.md").write_text(render_model_card(det, command=command, evaluation=evaluation))
        console.print(evaluation.markdown["per_modality"])
        console.print(f"test metrics → {out / 'test_metrics.json'}; model card → {out / 'MODEL_CARD.md'}")


def _history_options(p: float, scale: str, jpeg_p: float, quality: str) -> dict:
    """The aligned recipe's history round-trip options as :class:`PairPostProcess` fields."""
    def pair(text: str, kind: type, flag: str) -> tuple:
        parts = [t.strip() for t in str(text).split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            return kind(parts[0]), kind(parts[1])
        except ValueError:
            raise typer.BadParameter(f"{flag} expects LOW,HIGH, got {text!r}") from None

    return {"p_roundtrip": float(p), "roundtrip_scale_range": pair(scale, float, "--history-scale"),
            "p_roundtrip_jpeg": float(jpeg_p), "roundtrip_quality_range": pair(quality, int, "--history-quality")}


def _train_aligned(name: str, out: Path, *, manifest: Path | None, workdir: Path, backbone: str | None,
                   options: list[str], seed: int, tamper_fraction: float, evaluate: bool,
                   aligned_manifest: Path | None, holdout_family: str | None, shuffle_labels: bool,
                   crops_per_pair: int, max_val_pairs: int, max_test_pairs: int, reencode: bool,
                   modality: list[str], extra_train: list[Path], crop: int | None = None,
                   max_train_pairs: int | None = None, history: dict | None = None,
                   history_val: str = "") -> None:
    """``--recipe aligned``: see :mod:`medforensics.train.aligned`."""
    import time

    import numpy as np

    from ..data.processing import MatchedProcessing
    from ..train.aligned import (AlignedRecipeError, LeakCheckError, PairPostProcess, aligned_training_datasets,
                                 leak_check, pair_scores, prepare_aligned_data, training_crop)

    try:
        post = PairPostProcess(**(history or {}))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    val_chain = None
    if history_val:
        parts = [t.strip() for t in history_val.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            val_scale, val_quality = float(parts[0]), int(parts[1])
            if not (0 < val_scale < 1 and 1 <= val_quality <= 100):
                raise ValueError
        except ValueError:
            raise typer.BadParameter(f"--history-val expects SCALE,QUALITY with 0 < SCALE < 1 and 1 <= QUALITY <= "
                                     f"100, got {history_val!r}") from None
        val_chain = MatchedProcessing(scale=val_scale, jpeg_quality=val_quality)

    if aligned_manifest is None or not holdout_family:
        raise typer.BadParameter("--recipe aligned needs --aligned-manifest and --holdout-family")
    if modality or extra_train:
        raise typer.BadParameter("--modality and --extra-train belong to the default recipe")
    if crops_per_pair < 1:
        raise typer.BadParameter(f"--crops-per-pair must be >= 1, got {crops_per_pair}")
    try:
        aligned = Manifest.read(aligned_manifest)
        reals = Manifest.read(manifest) if manifest else shared_manifest()
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] cannot read a manifest: {exc}")
        raise typer.Exit(2) from None
    config, det = _create(name, seed, options, backbone)
    if not det.supervised:
        console.print(f"[red]error:[/red] {name} is not supervised; the aligned recipe trains real-vs-fake detectors")
        raise typer.Exit(2)
    adapted = {}
    if "patches_per_image" in det.config and "patches_per_image" not in config:
        det.config["patches_per_image"] = adapted["patches_per_image"] = 1  # the pair crop IS the patch
    crop = training_crop(det.config, det.preprocessing) if crop is None else crop
    if crop < 8 or crop % 8:
        raise typer.BadParameter(f"--crop must be a positive multiple of 8, got {crop}")
    t0 = time.time()
    try:
        data = prepare_aligned_data(aligned, workdir, holdout_family=holdout_family, reals=reals, seed=seed,
                                    tamper_fraction=tamper_fraction, max_val_pairs=max_val_pairs,
                                    max_train_pairs=max_train_pairs, reencode=reencode)
        leak = leak_check(data)
    except AlignedRecipeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except LeakCheckError as exc:
        console.print(f"[red]format leak check failed:[/red] {exc}")
        raise typer.Exit(3) from None
    data.summary["leak_check"] = {k: leak[k] for k in ("passed", "n", "container_lr_auc", "size_lr_auc", "warnings")}
    data.summary.update(crop=crop, crops_per_pair=crops_per_pair, shuffle_labels=shuffle_labels,
                        config_adapted=adapted, prepare_seconds=round(time.time() - t0, 1),
                        post_process=post.to_dict(),
                        val_history=val_chain.describe() if val_chain is not None else None)
    console.print(f"data: {json.dumps(data.summary)}")
    train_set, val_set = aligned_training_datasets(data, det.preprocessing, crop, seed=seed, post=post,
                                                   val_history=val_chain,
                                                   crops_per_pair=crops_per_pair, shuffle_labels=shuffle_labels)
    summary = det.fit(train_set, val_set)
    det.training_summary["data"] = data.summary
    det.training_summary["manifest"] = str(aligned_manifest)
    console.print(f"trained in {summary.get('seconds')} s; best epoch {summary.get('best_epoch')}; "
                  f"threshold {det.threshold:.4f}")
    args = ["train", name, "--recipe", "aligned", "--aligned-manifest", str(aligned_manifest), "--holdout-family",
            holdout_family, "--out", str(out), "--workdir", str(workdir), "--seed", str(seed), "--tamper-fraction",
            str(tamper_fraction), "--crops-per-pair", str(crops_per_pair), "--max-val-pairs", str(max_val_pairs),
            "--crop", str(crop)]
    args += ["--max-train-pairs", str(max_train_pairs)] if max_train_pairs else []
    if post.p_roundtrip > 0:
        args += ["--history-p", f"{post.p_roundtrip:g}", "--history-scale", ",".join(
            f"{v:g}" for v in post.roundtrip_scale_range), "--history-jpeg-p", f"{post.p_roundtrip_jpeg:g}",
                 "--history-quality", ",".join(str(v) for v in post.roundtrip_quality_range)]
    args += ["--history-val", history_val] if history_val else []
    args += (["--manifest", str(manifest)] if manifest else []) + [a for o in options for a in ("--set", o)]
    args += (["--shuffle-labels"] if shuffle_labels else []) + (["--reencode"] if reencode else [])
    args += ["--backbone", backbone] if backbone else []
    command = "medforensics " + " ".join(shlex.quote(a) for a in args)
    det.save(out, model_card=render_model_card(det, command=command))
    console.print(f"model → {out}")
    if evaluate and max_test_pairs > 0 and data.test_pairs:
        pairs = data.test_pairs
        if len(pairs) > max_test_pairs:
            pick = np.random.default_rng([seed, 0x7E57]).choice(len(pairs), max_test_pairs, replace=False)
            pairs = [pairs[i] for i in sorted(pick)]
        result = pair_scores(det, pairs)
        (out / "test_metrics.json").write_text(json.dumps({"aligned_test_pairs": result}, indent=2, default=float))
        console.print(f"aligned test pairs (test-split reals, every family): AUC {result['auc']:.3f}; per family "
                      + ", ".join(f"{k} {v['auc']:.3f}" for k, v in result["per_family"].items()))
