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
) -> None:
    """Split by patient, train with processing matched between classes, calibrate τ, save, evaluate."""
    refuse_overwrite(out / "config.json", force)
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
    config = _parse_options(options)
    if backbone is not None:
        config["backbone"] = backbone
    try:
        det = create_detector(name, seed=seed, **config)
    except (FileNotFoundError, KeyError, ValueError) as exc:  # e.g. backbone weights absent, bad option
        console.print(f"[red]error:[/red] cannot create detector {name!r}: {exc}")
        raise typer.Exit(2) from None
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
