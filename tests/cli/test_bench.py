"""``medforensics bench build|check|run`` through the real CLI on a toy set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.data import Manifest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmark"))
from bench_toy_data import (  # noqa: E402
    bank_detector_registered,
    write_generator_folders,
    write_published,
    write_reals,
)

runner = CliRunner()


def test_bench_build_check_run(tmp_path):
    real = write_reals(tmp_path / "reals")
    gens = write_generator_folders(tmp_path / "gens", n=6)
    pub = write_published(tmp_path / "pub", n=2)
    out = tmp_path / "bench"
    args = ["bench", "build", "--real", str(real), "--imported-fakes", str(pub), "--out", str(out), "--size", "32"]
    for g in gens:
        args += ["--generators", str(g)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "format check: passed" in res.output
    m = Manifest.read(out / "manifest.csv")
    roles = {r.extra["role"] for r in m}
    assert roles == {"real", "factory", "published", "matched_real"}
    assert json.loads((out / "build.json").read_text())["format_check"]["passed"]

    res = runner.invoke(app, args)  # nothing is overwritten silently
    assert res.exit_code == 2 and "--force" in res.output

    res = runner.invoke(app, ["bench", "check", str(out / "manifest.csv"), "--json", str(tmp_path / "fmt.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "fmt.json").read_text())["passed"]

    with bank_detector_registered() as bank:
        cfg = {"name": "cli-toy", "benchmark": str(out / "manifest.csv"), "n_boot": 5,
               "detectors": [{"detector": bank, "label": "bank", "config": {"preprocessing": {"size": 32}}}],
               "protocols": {"logo": False, "lofo": False, "few_shot": False, "perturbations": ["blur1"]}}
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        run_args = ["bench", "run", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run"),
                    "--no-progress"]
        res = runner.invoke(app, run_args)
        assert res.exit_code == 0, res.output
        assert (tmp_path / "run/results/report.html").is_file()
        assert (tmp_path / "run/results/records.csv").is_file()
        res = runner.invoke(app, run_args)
        assert res.exit_code == 2 and "--resume" in res.output
        res = runner.invoke(app, [*run_args, "--resume", "--quick", "0.5"])
        assert res.exit_code == 0, res.output
        # --quick scales n_boot 5 → floor 20: the unit keys change, so every unit is recomputed
        assert json.loads((tmp_path / "run/config.json").read_text())["quick"] == 0.5
        res = runner.invoke(app, [*run_args, "--resume", "--quick", "0.5"])
        assert res.exit_code == 0 and "units run 0, skipped 3" in res.output, res.output


def test_bench_run_reports_a_bad_config(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x", "detectors": []}))
    res = runner.invoke(app, ["bench", "run", "--config", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "needs either" in res.output


def test_bench_run_generators_only_needs_a_build_section(tmp_path):
    with bank_detector_registered() as bank:
        cfg = {"name": "x", "benchmark": str(tmp_path / "m.csv"), "detectors": [{"detector": bank}]}
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        res = runner.invoke(app, ["bench", "run", "-c", str(tmp_path / "cfg.json"), "--generators-only",
                                  "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "no build section" in res.output, res.output


def test_bench_build_pins_generator_sources_and_keeps_them_on_rebuild(tmp_path):
    real = write_reals(tmp_path / "reals")
    gens = write_generator_folders(tmp_path / "gens", n=6)
    reals = Manifest.read(real)
    base = ["bench", "build", "--real", str(real), "--size", "32"] + [a for g in gens for a in ("--generators", str(g))]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    plain = Manifest.read(tmp_path / "plain/manifest.csv")
    assert not (tmp_path / "plain/bench_sources.json").exists()
    # declare every real of one xray test patient a training source of ddpm-xray (the folder's own file)
    test_patient = next(r.patient_id for r in plain if r.split == "test" and r.modality == "xray")
    paths = sorted(str(p) for r, p in zip(reals, reals.paths()) if r.patient_id == test_patient)
    ddpm_xray = next(g for g in gens if g.name == "ddpm-xray")
    (ddpm_xray / "bench_sources.json").write_text(json.dumps({"sources": paths}))

    res = runner.invoke(app, [*base, "--out", str(tmp_path / "pinned")])
    assert res.exit_code == 0, res.output
    assert "ddpm-xray: 3 training source(s) pinned to train (0 in test)" in res.output
    pinned = Manifest.read(tmp_path / "pinned/manifest.csv")
    assert {r.split for r in pinned if r.patient_id == test_patient} == {"train"}
    assert json.loads((tmp_path / "pinned/build.json").read_text())["generator_sources_in_test"] == {"ddpm-xray": 0}
    written = json.loads((tmp_path / "pinned/bench_sources.json").read_text())
    assert written == {"sources": {"ddpm-xray": paths}}

    # a rebuild from the built benchmark (e.g. with JPEG on both classes) keeps the pins: its reals
    # are new files, matched to the sources by their recorded input path
    res = runner.invoke(app, ["bench", "build", "--real", str(tmp_path / "pinned"), "--generators",
                              str(tmp_path / "pinned"), "--jpeg", "80", "--size", "32", "--out", str(tmp_path / "re")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "re/bench_sources.json").read_text()) == written
    assert json.loads((tmp_path / "re/build.json").read_text())["generator_sources_in_test"] == {"ddpm-xray": 0}
    re_rows = Manifest.read(tmp_path / "re/manifest.csv")
    assert {r.split for r in re_rows if r.patient_id == test_patient} == {"train"}


def test_bench_build_rejects_a_malformed_sources_file(tmp_path):
    real = write_reals(tmp_path / "reals")
    gen = write_generator_folders(tmp_path / "gens", n=6)[0]
    (gen / "bench_sources.json").write_text('{"sources": 3}')
    res = runner.invoke(app, ["bench", "build", "--real", str(real), "--generators", str(gen), "--size", "32",
                              "--out", str(tmp_path / "b")])
    flat = "".join(res.output.split())
    assert res.exit_code == 2 and 'bench_sources.json:"sources"mustbealistofpaths' in flat, res.output
