"""``medforensics bench build|run|check``: assemble a benchmark, run the protocols, check file formats."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import console


def build(
    real: str = typer.Option(..., "--real", help="Real images: a manifest, a folder (with manifest.csv, a "
                             "real/<modality>/<source>/ tree, or flat images with --modality) or 'shared'."),
    generators: list[Path] = typer.Option([], "--generators", "-g", help="Factory fakes (repeatable): a folder "
                                           "written by `synth sample` (PNGs + manifest.csv), a manifest, a "
                                           "fake/<modality>/<generator>/ tree or a generator model directory. A "
                                           "bench_sources.json there (or above a samples/ folder) pins the "
                                           "generator's training reals to train."),
    imported_fakes: str | None = typer.Option(None, "--imported-fakes", help="Fakes made elsewhere (a manifest, a "
                                              "folder, or 'shared' for the shared data's published fakes); all go "
                                              "to the test split."),
    out: Path = typer.Option(..., "--out", "-o", help="Benchmark folder to write."),
    per_class: int | None = typer.Option(None, "--per-class", help="Images per class per modality (train + test)."),
    jpeg_quality: int | None = typer.Option(None, "--jpeg", help="Matched post-processing: JPEG at this quality, "
                                            "both classes."),
    resize: float | None = typer.Option(None, "--resize", help="Matched post-processing: resize round trip by "
                                        "this scale (e.g. 0.5), both classes."),
    matched_real: bool = typer.Option(True, "--matched-real/--no-matched-real", help="Give imported fakes reals of "
                                      "the same modality and anatomy with their file history."),
    match_resolution: bool = typer.Option(True, "--match-resolution/--no-match-resolution", help="Give reals the "
                                          "native resolution of the fakes before the common resize."),
    max_imported: int | None = typer.Option(None, "--max-imported", help="At most this many imported fakes per "
                                            "generator (seeded draw)."),
    size: int = typer.Option(256, help="Side of every benchmark image."),
    modality: list[str] = typer.Option([], "--modality", "-m", help="Only these modalities (repeatable); also the "
                                       "modality of a flat folder or of a generator model directory."),
    samples: int | None = typer.Option(None, "--samples", help="Samples to draw from generator model directories."),
    test_fraction: float = typer.Option(0.2, help="Patient-level test fraction."),
    seed: int = typer.Option(0, help="Split and selection seed."),
    force: bool = typer.Option(False, "--force", help="Replace an existing benchmark in --out."),
) -> None:
    """Assemble a balanced, processing-matched real/fake benchmark with a patient-level split."""
    from ..benchmark.build import BuildOptions, build_benchmark, generator_sources, load_fake_source, load_real_manifest
    from ..data import Manifest, shared_manifest

    one_modality = modality[0] if len(modality) == 1 else None
    try:
        reals = load_real_manifest(real, one_modality)
        fakes, sources = [], {}
        for g in generators:
            man = load_fake_source(g, modality=one_modality, n_samples=samples,
                                   sample_dir=out.parent / f"{out.name}_samples" / g.name, seed=seed)
            fakes.append(man)
            names = {r.generator for r in man}
            for gen, paths in generator_sources(g, name=names.pop() if len(names) == 1 else None).items():
                sources[gen] = sources.get(gen, set()) | paths
        imported = None
        if imported_fakes:
            if imported_fakes == "shared":
                imported = shared_manifest().filter(lambda r: r.label == "fake" and r.family != "tamper")
            elif Path(imported_fakes).is_file():
                imported = Manifest.read(imported_fakes).filter(label="fake")
            else:
                imported = load_fake_source(imported_fakes, modality=one_modality)
        if not fakes and imported is None:
            raise ValueError("give factory fakes (--generators) and/or --imported-fakes")
        options = BuildOptions(size=size, per_class=per_class, jpeg_quality=jpeg_quality, resize=resize,
                               match_resolution=match_resolution, matched_real=matched_real,
                               max_imported_per_generator=max_imported,
                               test_fraction=test_fraction, seed=seed, modalities=tuple(modality) or None)
        result = build_benchmark(reals, fakes, out, imported=imported, options=options, sources=sources or None,
                                 overwrite=force)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    from .data import summary_table

    console.print(summary_table(result.manifest))
    rep = result.report
    for name, g in rep["generators"].items():
        console.print(f"  {name}: {g['family'] or '?'} {g['modality']} ({g['role']}) train {g['train']} test {g['test']}")
    for name, n_test in rep["generator_sources_in_test"].items():
        console.print(f"  {name}: {len(sources[name])} training source(s) pinned to train ({n_test} in test)")
    if rep["errors"]:
        console.print(f"[yellow]{len(rep['errors'])} unreadable input(s) skipped (listed in build.json)[/]")
    _print_format(rep["format_check"])
    console.print(f"{len(result.manifest)} images → {result.manifest_path}; report → {out / 'build.json'}")
    if not rep["format_check"]["passed"]:
        raise typer.Exit(1)


def check(
    manifest: Path = typer.Argument(..., help="Benchmark manifest."),
    tolerance: float = typer.Option(0.6, help="Largest AUC a format statistic may reach."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON."),
) -> None:
    """Do file-format statistics (size, bit depth, format, JPEG quality, PNG level…) predict the label?"""
    from ..benchmark.build import format_statistics_check
    from ..data import Manifest

    try:
        m = Manifest.read(manifest)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    rep = format_statistics_check(m, tolerance=tolerance).to_dict()
    _print_format(rep)
    if json_out:
        json_out.write_text(json.dumps(rep, indent=2))
    if not rep["passed"]:
        raise typer.Exit(1)


def _print_format(rep: dict) -> None:
    aucs = ", ".join(f"{k} {v:.2f}" for k, v in rep.get("feature_auc", {}).items())
    console.print(f"format check: {'[green]passed[/]' if rep['passed'] else '[red]FAILED[/]'} "
                  f"(max(AUC, 1−AUC) per feature: {aucs}; container LR AUC {rep.get('container_lr_auc', 0.5):.2f})")
    for f in rep.get("failures", []):
        console.print(f"  [red]✗[/] {f}")
    for w in rep.get("warnings", []):
        console.print(f"  [yellow]![/] {w}")


def run(
    config: Path = typer.Option(..., "--config", "-c", help="Run config (YAML or JSON)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: the config's 'out')."),
    resume: bool = typer.Option(False, "--resume", help="Continue an earlier run in --out: finished units are "
                                "skipped, cached models and generators reused."),
    force: bool = typer.Option(False, "--force", help="Recompute every unit of an earlier run (models stay cached)."),
    quick: float | None = typer.Option(None, "--quick", help="Scale factor in (0, 1] for generator steps, samples, "
                                       "images per class, epochs and bootstrap draws."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    only: list[str] = typer.Option([], "--only", help="Run only this detector or ablation label (repeatable): "
                                   "a shard of the run; shards may share --out, and a last --resume run without "
                                   "--only writes the complete report."),
    generators_only: bool = typer.Option(False, "--generators-only", help="Only train and sample the build's "
                                         "generators (no benchmark, no detectors)."),
    modality: list[str] = typer.Option([], "--modality", help="With --generators-only: only this modality's "
                                       "generators (repeatable), so several processes can share the work."),
) -> None:
    """Run every configured protocol for every configured detector; write tables, plots and report.html."""
    from ..benchmark.config import ConfigError, RunConfig
    from ..benchmark.runner import BenchmarkRunner, run_config

    log = lambda msg: console.print(msg, markup=False, highlight=False)  # noqa: E731
    try:
        if generators_only:
            cfg = RunConfig.load(config, quick=quick)
            runner = BenchmarkRunner(cfg, out, resume=True, show_progress=progress, log=log)
            done = runner.train_generators(modalities=set(modality) or None)
            console.print(f"generators ready in {runner.out / 'generators'}: {', '.join(done) or 'none matched'}")
            return
        summary = run_config(config, out, quick=quick, resume=resume, force=force, show_progress=progress,
                             log=log, only=set(only) or None)
    except (FileNotFoundError, FileExistsError, ConfigError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"units run {summary['units_run']}, skipped {summary['units_skipped']}, "
                  f"failed {len(summary['units_failed'])}; models trained {summary['models_trained']}, "
                  f"cached {summary['models_cached']}; {summary['seconds']} s")
    console.print(f"report → {summary['report']}")
    if summary["units_failed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command group to the main app."""
    bench = typer.Typer(no_args_is_help=True, help="Build benchmarks and run the evaluation protocols.")
    bench.command("build")(build)
    bench.command("run")(run)
    bench.command("check")(check)
    app.add_typer(bench, name="bench")
