"""``medforensics evaluate MANIFEST --model …``: the protocol tables, plain and processing-matched."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..benchmark import evaluate_detector
from ..data import Manifest, patient_split
from .common import console, open_model, refuse_overwrite


def evaluate(
    manifest: Path = typer.Argument(..., help="Manifest CSV/Parquet."),
    model: str = typer.Option("default", "--model", "-m", help="Shipped model name or model directory."),
    split: str = typer.Option("test", help="Split to evaluate ('all' for every row). Empty splits are "
                              "assigned by the deterministic patient-level split first."),
    seed: int = typer.Option(0, help="Split and bootstrap seed (the default model was trained with 0)."),
    n_boot: int = typer.Option(100, help="Bootstrap iterations."),
    tamper_fraction: float = typer.Option(0.0, help="Also evaluate tampered copies of this fraction of the reals."),
    workdir: Path = typer.Option(Path("runs/work"), help="Where tampered copies are written."),
    threshold: float | None = typer.Option(None, help="Threshold for Acc (default: the model's calibrated τ)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write every number as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write the tables as Markdown."),
    report: Path | None = typer.Option(None, "--report", help="Write an HTML report with tables and ROC/PR plots."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Per-modality Acc/AP/AUC/EER with bootstrap intervals, plain and matched, and per generator."""
    for out in (json_out, markdown_out, report):
        refuse_overwrite(out, force)
    detector = open_model(model)
    m = Manifest.read(manifest)
    if any(not r.split for r in m):
        m = patient_split(m, seed=seed)
    test = m if split == "all" else m.subset(split)
    if len(test) == 0:
        console.print(f"[red]error:[/] no rows in split {split!r}")
        raise typer.Exit(2)
    if tamper_fraction > 0:
        from ..synth.tamper_set import make_tampered_set

        test = Manifest.concat([test, make_tampered_set(test, workdir / "tampered" / split, fraction=tamper_fraction,
                                                        seed=seed)])
    result = evaluate_detector(detector, test, reference=m, threshold=threshold, n_boot=n_boot, seed=seed)
    for title, text in result.markdown.items():
        console.print(f"\n[bold]{title}[/]\n{text}")
    if result.n_errors:
        console.print(f"[yellow]{result.n_errors} unreadable rows were skipped (listed in the JSON)[/]")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2, default=float))
        console.print(f"JSON: {json_out}")
    if markdown_out:
        markdown_out.write_text("\n\n".join(f"## {k}\n\n{v}" for k, v in result.markdown.items()))
        console.print(f"Markdown: {markdown_out}")
    if report:
        write_report(result, report)
        console.print(f"report: {report}")


def write_report(result, path: Path) -> Path:
    """HTML page with the tables and ROC / PR curves of each view (plots written beside it)."""
    from ..eval.plots import plot_pr, plot_roc
    from ..eval.report import write_eval_report

    curves = {}
    for view, data in result.views.items():
        labels = [int(s["label"] == "fake") for s in data["scores"]]
        curves[view] = (labels, [s["score"] for s in data["scores"]])
    stem = path.with_suffix("")
    plots = {
        "ROC, plain vs processing-matched": plot_roc(curves, f"{stem}_roc.png", title="ROC"),
        "Precision-recall": plot_pr(curves, f"{stem}_pr.png", title="Precision-recall"),
    }
    return write_eval_report(result.markdown, plots, path, title=f"medforensics evaluation — {result.detector}",
                             info={"detector": result.detector, "threshold": result.threshold})
