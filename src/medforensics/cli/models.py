"""``medforensics models``: registered detectors and shipped models."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..detectors import list_detectors
from ..detectors.registry import PRETRAINED, pretrained_dir
from ..detectors.runtime import DEFAULT_CANDIDATES, RUNTIMES
from .common import console, open_model

app = typer.Typer(add_completion=False, help="Registered detectors and shipped models; `optimise` a model's runtime.")


@app.callback(invoke_without_command=True)
def _default(ctx: typer.Context) -> None:
    """Without a sub-command: list registered detectors and shipped models."""
    if ctx.invoked_subcommand is None:
        models()


def models() -> None:
    """List registered detectors and the models shipped with the package."""
    table = Table(title="detectors")
    table.add_column("registered detector")
    for name in list_detectors():
        table.add_row(name)
    console.print(table)
    shipped = Table(title="shipped models")
    for col in ("name", "detector", "threshold", "folder"):
        shipped.add_column(col)
    for name in PRETRAINED:
        folder = pretrained_dir(name)
        cfg_path = folder / "config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            shipped.add_row(name, cfg["detector"], f"{cfg['threshold']:.4f}", str(folder))
        else:
            shipped.add_row(name, "(missing)", "", str(folder))
    console.print(shipped)


@app.command("optimise")
def optimise(
    model_dir: Path = typer.Argument(..., help="model directory (config.json + weights.safetensors) to optimise"),
    images: list[Path] = typer.Option(None, "--images", help="real validation images (files or folders); "
                                      "default: real images of the shared data's manifest"),
    n: int = typer.Option(48, "--n", min=1, help="at most this many real images (int8 calibration + parity)"),
    runtimes: str = typer.Option(",".join(DEFAULT_CANDIDATES), "--runtimes",
                                 help=f"comma-separated candidates among {', '.join(RUNTIMES)}"),
    seed: int = typer.Option(0, help="seed of the image sample"),
) -> None:
    """Measure the inference runtimes on this machine and record the fastest that keeps parity with
    eager PyTorch in MODEL_DIR (config.json `runtime`, + runtime.onnx); loading the model applies it."""
    import numpy as np
    import torch

    from ..detectors.runtime import optimise_model_dir

    if not (model_dir / "config.json").is_file():
        console.print(f"[red]error:[/] {model_dir} is not a model directory (no config.json)")
        raise typer.Exit(2)
    names = [r.strip() for r in runtimes.split(",") if r.strip()]
    unknown = sorted(set(names) - set(RUNTIMES))
    if unknown:
        console.print(f"[red]error:[/] unknown runtime(s) {', '.join(unknown)}; known: {', '.join(RUNTIMES)}")
        raise typer.Exit(2)
    det = open_model(str(model_dir))
    arrays = []
    for path, frames in _real_images(images, n, seed):
        if isinstance(frames, Exception):
            console.print(f"[yellow]skipped[/] {path}: {frames}")
            continue
        arrays.append(det.preprocessing(frames[0]))
        if len(arrays) >= n:
            break
    if not arrays:
        console.print("[red]error:[/] no readable real image to measure with (pass --images)")
        raise typer.Exit(2)
    try:
        record = optimise_model_dir(model_dir, torch.from_numpy(np.stack(arrays)), candidates=names)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    table = Table(title=f"runtimes measured on {len(arrays)} real images ({record['threads']} threads)")
    for col in ("runtime", "images/s", "max |Δlogit|", "max |Δprob|", "used?"):
        table.add_column(col)
    for row in record["measured"]:
        table.add_row(row["runtime"], str(row.get("images_per_s", "")),
                      f"{row['max_abs_logit']:.2e}" if "max_abs_logit" in row else "",
                      f"{row['max_abs_prob']:.2e}" if "max_abs_prob" in row else "",
                      "chosen" if row["runtime"] == record["name"] else ("ok" if row.get("ok") else row.get("reason", "")))
    console.print(table)
    console.print(f"recorded runtime [bold]{record['name']}[/] in {model_dir / 'config.json'}")


def _real_images(images: list[Path] | None, n: int, seed: int):
    """(path, frames | error) for the given files/folders, or a seeded sample of the shared manifest's reals."""
    from ..io import load
    from ..io.walk import iter_images

    if images:
        yield from iter_images(images, max_frames=1)
        return
    from ..data import shared_manifest

    try:
        shared = shared_manifest()
    except (FileNotFoundError, OSError) as err:
        console.print(f"[red]error:[/] no --images given and the shared data is not available ({err})")
        raise typer.Exit(2) from None
    import numpy as np

    rows = [r for r in shared if r.label == "real"]
    rng = np.random.default_rng(seed)
    for i in rng.permutation(len(rows))[: 2 * n]:
        path = rows[int(i)].resolve(shared.root)
        try:
            yield path, [load(path)]
        except Exception as err:  # noqa: BLE001 - one bad file never stops the command
            yield path, err


@app.command("fuse")
def fuse(
    members: list[str] = typer.Argument(..., help="two or more member model directories or shipped names "
                                        "(e.g. `default runs/zed`)"),
    out: Path = typer.Option(..., "--out", help="model directory to write (members are stored inside it)"),
    manifest: Path | None = typer.Option(None, "--manifest", help="manifest whose real validation split calibrates "
                                         "the fusion (default: the shared data's)"),
    combine: str = typer.Option("fisher", "--combine", help="fisher | min_p"),
    target_fpr: float = typer.Option(0.05, "--target-fpr", help="FPR of the threshold on the real validation images"),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="patient split: held-out test fraction"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="validation fraction of the training part"),
    seed: int = typer.Option(0, help="seed of the patient split"),
    force: bool = typer.Option(False, "--force", help="overwrite --out"),
) -> None:
    """Fuse trained detectors into one `fusion` model: each member's score becomes a p-value against its
    scores on the manifest's real validation images (patient split as `train`), the p-values are
    combined (Fisher or Bonferroni min-p) and τ is set at --target-fpr on those same reals."""
    from ..data import ImageDataset, Manifest, patient_split, shared_manifest, train_val_split
    from ..detectors.fusion import FusionDetector
    from .common import refuse_overwrite

    if len(members) < 2:
        console.print("[red]error:[/] fuse needs at least two member models")
        raise typer.Exit(2)
    refuse_overwrite(out, force)
    dets = [open_model(m) for m in members]
    try:
        fused = FusionDetector.from_members(dets, combine=combine, target_fpr=target_fpr)
        m = Manifest.read(manifest) if manifest is not None else shared_manifest()
    except (ValueError, FileNotFoundError, OSError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    split = patient_split(m, test_fraction=test_fraction, seed=seed)
    val = train_val_split(split.subset("train"), val_fraction=val_fraction, seed=seed).subset("val").filter(label="real")
    if not len(val):
        console.print("[red]error:[/] the manifest's validation split holds no real image to calibrate on")
        raise typer.Exit(2)
    summary = fused.calibrate(ImageDataset(val, fused.preprocessing, seed=seed))
    fused.training_summary = {**summary, "calibration_manifest": str(manifest or "shared"),
                              "split": {"test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed},
                              "member_sources": list(members)}
    fused.save(out)
    console.print(f"fused {', '.join(d.name for d in dets)} ({combine}) on {summary['calibration_images']} real "
                  f"validation images: τ = {fused.threshold:.4f} (FPR {fused.calibration['achieved_fpr']:.3f}) → {out}")
