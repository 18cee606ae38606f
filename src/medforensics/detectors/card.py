"""Model cards: what a model was trained on, how, under which licences, and how well it does."""

from __future__ import annotations

import json
from typing import Any

from .base import Detector

LICENCE_NOTE = (
    "The weights were trained on images whose licences include research-only / non-commercial terms "
    "(TCGA via TCIA and Kaggle mirrors, IQ-OTH/NCCD, BUSI, CVC-ClinicDB, Kvasir-SEG, MoNuSeg, LC25000, "
    "MHH/Actualmed/Figure1 COVID CXR, medigan and published-generator samples; see the shared data's "
    "manifest `license` column). Use them for research and non-commercial purposes only. They are not a "
    "medical device."
)


def render_model_card(detector: Detector, *, command: str, evaluation: Any | None = None) -> str:
    """Markdown model card for ``detector`` (call after fit; ``evaluation`` from benchmark.evaluate_detector)."""
    train = detector.training_summary
    lines = [
        f"# Model card — `{detector.name}` v{detector.version}",
        "",
        "## Intended use",
        "Flag medical images that are likely AI-generated or locally tampered (lesion injection/removal), "
        "as a triage aid for security review. A high score is evidence, not proof.",
        "",
        "## Training",
        f"- Command: `{command}`",
        f"- Detector config: `{json.dumps(detector.config, sort_keys=True)}`",
        f"- Preprocessing: `{json.dumps(detector.preprocessing.to_dict())}`",
        f"- Data (images per split): `{json.dumps(train.get('data', {}))}`",
        f"- Best epoch: {train.get('best_epoch')} of {len(train.get('history', []))}; wall time {train.get('seconds')} s (CPU)",
        "- Shortcut control: patient-level split (figure crops grouped by original figure); anatomy-mismatched "
        "fakes (echo vs breast ultrasound, mammography vs chest X-ray, breast/cardiac vs brain MRI) excluded from "
        "training; real and tampered images given the published fakes' processing history (downscale to the "
        "fake's size, JPEG when the fake was JPEG-compressed, upscale); identical random post-processing for "
        "both classes.",
        "",
        "## Operating point",
        f"- Threshold τ = {detector.threshold:.4f} ({detector.calibration.get('method', 'default')}, "
        f"target FPR {detector.calibration.get('target_fpr', 'n/a')}, achieved on validation reals "
        f"{detector.calibration.get('achieved_fpr', 'n/a')}).",
        "",
        "## Licences",
        LICENCE_NOTE,
        "",
    ]
    if evaluation is not None:
        lines += [
            "## Test metrics (patient-level test split; bootstrap mean, 100 class-balanced iterations)",
            "",
            "Views: *plain* = native files; *matched* = every image put through one identical processing chain "
            "(0.5× resize round trip + JPEG 85). *anatomy-matched* rows drop fakes with no real counterpart of "
            "the same anatomy. Cells: Acc/AP in % at τ.",
            "",
            evaluation.markdown["per_modality"],
            "",
            "AUC with 95% interval:",
            "",
            evaluation.markdown["per_modality_auc"],
            "",
            "Per generator (fakes of one generator vs. the reals of its modality):",
            "",
            evaluation.markdown["per_generator"],
            "",
        ]
    lines += [
        "## Limitations",
        "- Trained on few published fakes (most are crops of paper figures); generalisation to unseen generators "
        "is limited — read the *matched* and *anatomy-matched* rows, not the plain ones.",
        "- Tampering in training is classical (Poisson copy-move, inpainting); diffusion-based inpainting is not covered.",
        "- DICOM CT is windowed to −700…2000 HU at scan time, while the shared CT PNGs were exported with a lung "
        "window: intensities of scanned DICOM CT differ from the training distribution.",
    ]
    return "\n".join(lines) + "\n"
