"""``medforensics synth train|sample``: train a generator on real images of one modality, sample fakes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from .common import console, refuse_overwrite

COLOUR_MODALITIES = ("endoscopy", "histopathology")


def train(
    family: str = typer.Option(..., "--family", "-f", help="Generator family: diffusion, gan, vae, latent_diffusion."),
    modality: str = typer.Option(..., "--modality", "-m", help="Train on the real images of this modality."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (checkpoints go to OUT/checkpoints)."),
    manifest: Path | None = typer.Option(None, help="Manifest CSV/Parquet (default: the shared data's)."),
    resolution: int = typer.Option(64, help="Training resolution (power of two: 64, 128, 256; 16/32 for toys)."),
    channels: int | None = typer.Option(None, help="1 (grey) or 3 (RGB); default 3 for endoscopy/histopathology, else 1."),
    steps: int = typer.Option(2000, help="Total optimisation steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per step."),
    preset: str | None = typer.Option(None, help="Start from a named configuration: 'cpu' (small, CPU-friendly at "
                                      "64 px) or 'tiny' (toy tests); --set options override it."),
    options: list[str] = typer.Option([], "--set", help="Family option key=value (JSON values), repeatable."),
    seed: int = typer.Option(0, help="Seed of weights and training."),
    split: str = typer.Option("train", help="Split of the real images to train on."),
    split_seed: int = typer.Option(0, help="Seed of the patient-level split when the manifest has none."),
    test_fraction: float = typer.Option(0.2, help="Held-out fraction of the patient-level split when the manifest has none."),
    checkpoint_every: int | None = typer.Option(None, help="Checkpoint interval in steps (default steps/10)."),
    resume: bool = typer.Option(True, help="Continue from the newest checkpoint in OUT/checkpoints "
                                "(--force --no-resume deletes them and starts over)."),
    grid: int = typer.Option(16, help="Samples in the grid OUT/samples.png written after training (0: none)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing model directory."),
) -> None:
    """Train a generator on the real images of one modality (train split only), save it with a sample grid."""
    from ..data import Manifest, patient_split, shared_manifest
    from ..synth.generators import PRESETS, create_generator, list_generator_families, load_training_images
    from .train import _parse_options

    refuse_overwrite(out / "config.json", force)
    modality = modality.strip().lower()
    if channels is None:
        channels = 3 if modality in COLOUR_MODALITIES else 1
    try:
        m = Manifest.read(manifest) if manifest else shared_manifest()
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    real = m.filter(label="real", modality=modality)
    if not len(real):
        console.print(f"[red]error:[/] no real images of modality {modality!r} in the manifest")
        raise typer.Exit(2)
    if any(not r.split for r in real):
        m = patient_split(m, test_fraction=test_fraction, seed=split_seed)
        split_rule = f"patient_split(test_fraction={test_fraction}, seed={split_seed}) over the whole manifest"
    else:
        split_rule = "the manifest's split column"
    rows = m.filter(label="real", modality=modality, split=split)
    if not len(rows):
        console.print(f"[red]error:[/] no real {modality} images in split {split!r}")
        raise typer.Exit(2)
    if preset is not None and preset not in PRESETS:
        console.print(f"[red]error:[/] unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        raise typer.Exit(2)
    config = dict(PRESETS[preset].get(family.strip().lower().replace("-", "_"), {})) if preset else {}
    config.update(_parse_options(options))
    try:
        gen = create_generator(family, resolution=resolution, channels=channels, seed=seed, **config)
    except (KeyError, ValueError, ImportError) as err:
        console.print(f"[red]error:[/] {err.args[0] if err.args else err}  (families: {', '.join(list_generator_families())})")
        raise typer.Exit(2) from None
    if force and not resume and (out / "checkpoints").is_dir():
        import shutil

        shutil.rmtree(out / "checkpoints")  # --force --no-resume: start over
    images = load_training_images(rows, resolution, channels, progress=progress)
    console.print(f"training {gen.family} ({sum(gen.n_parameters().values()):,} parameters) on {len(images)} real "
                  f"{modality} images ({split} split) at {resolution}×{resolution}, {steps} steps × {batch_size}")
    try:
        summary = gen.fit(images, steps=steps, batch_size=batch_size, checkpoint_dir=out / "checkpoints", resume=resume,
                          progress=progress, checkpoint_every=checkpoint_every, grid=0)
    except (ValueError, FileExistsError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    args = ["synth", "train", "--family", family, "--modality", modality, "--out", str(out), "--resolution",
            str(resolution), "--channels", str(channels), "--steps", str(steps), "--batch-size", str(batch_size),
            "--seed", str(seed), "--split", split]
    args += (["--manifest", str(manifest)] if manifest else []) + (["--preset", preset] if preset else [])
    args += [a for o in options for a in ("--set", o)]
    patients = {r.patient_id or r.path for r in rows}
    gen.training_summary["data"] = {
        "manifest": str(manifest) if manifest else "shared data manifest",
        "modality": modality,
        "label": "real",
        "split": split,
        "split_rule": split_rule,
        "n_images": len(images),
        "n_groups": len(patients),
        "sources": dict(sorted({s: sum(r.source == s for r in rows) for s in {r.source for r in rows}}.items())),
        "resize": f"medforensics.io.standardise(size={resolution}, fit='center_crop')",
    }
    gen.training_summary["command"] = "medforensics " + " ".join(shlex.quote(a) for a in args)
    gen.save(out, overwrite=force, grid=grid)
    final = ", ".join(f"{k} {v:.4g}" for k, v in summary["final_losses"].items())
    console.print(f"trained {summary['steps']} steps in {summary['seconds']} s ({final}); model → {out}"
                  + (f"; sample grid → {out / 'samples.png'}" if grid else ""))


def sample(
    model: Path = typer.Option(..., "--model", help="Generator directory written by `synth train`."),
    n: int = typer.Option(1000, "-n", "--n", help="Number of images."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs and manifest.csv."),
    size: int = typer.Option(256, help="Output size; upsampled with medforensics.io.standardise (bicubic)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per sampling batch."),
    generator_name: str | None = typer.Option(None, "--generator-name", help="Generator name in the manifest "
                                              "(default: the model folder's name)."),
    modality: str | None = typer.Option(None, help="Modality in the manifest (default: the one it was trained on)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Sample N fakes as 8-bit PNGs + manifest.csv (never overwrites existing files)."""
    from ..synth.generators import load_generator, sample_to_folder

    try:
        gen = load_generator(model)
    except (FileNotFoundError, ValueError, KeyError) as err:
        console.print(f"[red]error:[/] cannot load generator {model}: {err}")
        raise typer.Exit(2) from None
    modality = modality or gen.training_summary.get("data", {}).get("modality")
    if not modality:
        console.print("[red]error:[/] the model does not record its modality; pass --modality")
        raise typer.Exit(2)
    name = generator_name or model.resolve().name
    manifest_path = out / "manifest.csv"
    refuse_overwrite(manifest_path, False)
    try:
        man = sample_to_folder(gen, n, out, modality=modality, generator_name=name, seed=seed, size=size,
                               batch_size=batch_size, manifest_path=manifest_path, progress=progress)
    except (FileExistsError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(json.dumps({"generator": name, "family": gen.family, "images": len(man), "size": size,
                              "resolution": gen.resolution, "sampler": gen.describe_sampler()}))
    console.print(f"{len(man)} images → {out}; manifest → {manifest_path}")


def align(
    real_manifest: Path = typer.Argument(..., help="Manifest CSV/Parquet whose real rows are aligned."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the fakes and manifest.csv (a run there resumes)."),
    transforms: str = typer.Option(..., "--transforms", "-t", help="Comma-separated: ae:<registry name>, "
                                   "ddpm-1step, ddpm-ddim<k> (e.g. ae:ae-pixelshuffle-s4-kl-z16-w32,ddpm-1step)."),
    per_real: int = typer.Option(1, "--per-real", help="Fakes per real and transform (variant k shifts the tile "
                                 "grid by 8k px and reseeds)."),
    transforms_per_real: int | None = typer.Option(None, "--transforms-per-real", help="Send each real through "
                                                   "only this many of the transforms, drawn per real from --seed "
                                                   "(default: all)."),
    train_steps: int = typer.Option(1000, "--train-steps", help="Training steps of each model that is not in --models."),
    models: Path | None = typer.Option(None, "--models", help="Model folder: <name>/ and ddpm/ found there are "
                                       "loaded, missing ones are trained and saved there (default OUT/models)."),
    match: str = typer.Option("sharpness", help="Match each fake to its real: sharpness (mean |Laplacian|), "
                              "spectrum (radial power spectrum) or none."),
    split: str | None = typer.Option(None, help="Only align reals of this split (default: all; models always "
                                     "train on the train split)."),
    modality: str | None = typer.Option(None, help="Only align reals of this modality."),
    limit: int | None = typer.Option(None, help="Align at most this many reals (the first ones)."),
    ddpm_t: int = typer.Option(10, "--ddpm-t", help="Timestep the diffusion round trips noise to."),
    crop: int = typer.Option(64, help="Side of the random training crops (a power of two; offsets multiple of 8)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Training batch size."),
    seed: int = typer.Option(0, help="Seed of training crops and of the stochastic round trips."),
    split_seed: int = typer.Option(0, help="Seed of the patient-level split when the manifest has none."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Test share of that split (as `train`)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Validation share of its train part (as "
                                       "`train`; 0: no val split). Models train on the train split only."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Make aligned fakes FROM real images: same content, size, bit depth; only a decoder's trace differs.

    Each fake's row keeps its real's split. A manifest without splits is split like `medforensics
    train` does by default: patient_split(test_fraction, split_seed), then train_val_split(val_fraction,
    split_seed) of its train part, so fakes of val/test reals stay out of training.
    """
    from ..data import Manifest, patient_split, train_val_split
    from ..synth.aligned import build_transforms, load_real_images, make_aligned_set

    try:
        m = Manifest.read(real_manifest)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if any(not r.split for r in m.filter(label="real")):
        m = patient_split(m, test_fraction=test_fraction, seed=split_seed)
        if val_fraction > 0:
            tv = train_val_split(m.subset("train"), val_fraction=val_fraction, seed=split_seed)
            val = {r.path for r in tv.subset("val")}
            m = m.with_rows([r.copy(split="val") if r.path in val else r for r in m])
    crit = {"label": "real", **({"modality": modality.strip().lower()} if modality else {})}
    reals = m.filter(**crit)
    if split:
        reals = reals.filter(split=split)
    if limit is not None:
        reals = reals[: max(0, limit)]
    if not len(reals):
        console.print(f"[red]error:[/] no real rows in {real_manifest} match {crit}" + (f", split {split!r}" if split else ""))
        raise typer.Exit(2)
    specs = [s.strip() for s in transforms.split(",") if s.strip()]

    def train_images():
        rows = m.filter(label="real", split="train", **({"modality": crit["modality"]} if modality else {}))
        images, errors = load_real_images(rows)
        if errors:
            console.print(f"[yellow]warning:[/] {len(errors)} training real(s) unreadable, e.g. {errors[0]}")
        return images

    try:
        built = build_transforms(specs, models or out / "models", train_images, train_steps=train_steps,
                                 batch_size=batch_size, crop=crop, ddpm_t=ddpm_t, seed=seed, progress=progress,
                                 log=console.print)
        fakes, errors, counts = make_aligned_set(reals, out, built, per_real=per_real, match=match, seed=seed,
                                                 progress=progress, transforms_per_real=transforms_per_real)
    except (ValueError, KeyError, FileExistsError, ImportError) as err:
        console.print(f"[red]error:[/] {err.args[0] if err.args else err}")
        raise typer.Exit(2) from None
    for e in errors[:10]:
        console.print(f"[yellow]skipped:[/] {e}")
    if len(errors) > 10:
        console.print(f"[yellow]… and {len(errors) - 10} more skipped[/]")
    by_split = {s: sum(r.split == s for r in fakes) for s in sorted({r.split for r in fakes})}
    console.print(json.dumps({"reals": len(reals), "transforms": specs, "written": counts["written"],
                              "skipped_done": counts["skipped"], "errors": len(errors), "fakes": len(fakes),
                              "fakes_by_split": by_split}))
    console.print(f"{len(fakes)} aligned fakes → {out}; manifest → {out / 'manifest.csv'}")


def tamper_series(
    source: Path = typer.Argument(..., help="A DICOM series folder or a .nii / .nii.gz volume."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the tampered copy and ground_truth.json (must not exist or be empty)."),
    attack: str = typer.Option(..., "--attack", "-a", help="inject | remove | inpaint (diffusion, btd-ct / btd-mri U-Net)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same tampered copy."),
    radius_mm: float | None = typer.Option(None, "--radius-mm", help="Lesion radius in mm (default: random 4–15 mm)."),
    center: str | None = typer.Option(None, "--center", help="Centre as z,y,x voxel indices (z: 0-based in position order)."),
    series_uid: str | None = typer.Option(None, "--series-uid", help="The series to attack when the folder holds several."),
    modality: str | None = typer.Option(None, help="ct or mri (default: from the header / intensities)."),
    model: str | None = typer.Option(None, help="Diffusion model for --attack inpaint (default btd-ct / btd-mri)."),
) -> None:
    """Inject / remove / re-draw a 3-D lesion in a CT/MR series and write it back with the original headers."""
    from ..synth.tamper3d import ATTACKS, SeriesError
    from ..synth.tamper3d import tamper_series as run

    if attack not in ATTACKS:
        console.print(f"[red]error:[/] unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
        raise typer.Exit(2)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        console.print(f"[red]error:[/] {out} exists and is not an empty folder; refusing to overwrite")
        raise typer.Exit(2)
    zyx = None
    if center is not None:
        try:
            zyx = tuple(int(v) for v in center.split(","))
            if len(zyx) != 3:
                raise ValueError
        except ValueError:
            console.print(f"[red]error:[/] --center must be three integers z,y,x, got {center!r}")
            raise typer.Exit(2) from None
    det = None
    if attack == "inpaint" and model:
        from ..detectors import load_detector

        det = load_detector(model)
    console.print(f"reading {source} …")
    try:
        with console.status(f"{attack} attack on {source.name} …"):
            gt = run(source, out, attack, seed=seed, radius_mm=radius_mm, center=zyx, model=det,
                     series_uid=series_uid, modality=modality)
    except (SeriesError, ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    files = gt["written"]["files"]
    n_mod = sum(1 for f in files if f.get("modified"))
    console.print(f"{attack}: slices {gt['record'][0]}–{gt['record'][1]}, centre y={gt['record'][2]} x={gt['record'][3]}, "
                  f"radius {gt['record'][4]} px; {n_mod} of {len(files)} file(s) modified → {out} "
                  f"(ground truth: {out / 'ground_truth.json'})")


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command group to the main app."""
    synth_app = typer.Typer(no_args_is_help=True, help="Train generative models on real images and sample fakes.")
    synth_app.command("train")(train)
    synth_app.command("sample")(sample)
    synth_app.command("tamper-series")(tamper_series)
    synth_app.command("align")(align)
    app.add_typer(synth_app, name="synth")
