"""Run configs, resumable runs, the model cache, failures, and the build stage with the real factory."""

from __future__ import annotations

import json

import pytest
from bench_toy_data import RealOnlyDetector, bank_detector_registered

from medforensics.benchmark.config import ConfigError, RunConfig, scaled
from medforensics.benchmark.runner import BenchmarkRunner

LOG = lambda msg: None  # noqa: E731


def _cfg(bench: str, bank: str, **extra) -> RunConfig:
    data = {"name": "toy", "benchmark": bench, "n_boot": 5,
            "detectors": [{"detector": bank, "label": "bank", "config": {"preprocessing": {"size": 32}}}],
            "protocols": {"logo": False, "lofo": False, "published": False, "few_shot": False,
                          "perturbations": ["jpeg50"]}}
    data.update(extra)
    return RunConfig.from_dict(data)


def test_config_from_yaml_and_json(tmp_path):
    yaml_text = """
name: dev
build:
  real: shared
  per_class: 100
  generators:
    - {family: diffusion, steps: 1000, config: {base_width: 32}}
    - {family: gan, steps: 500, n_samples: 60}
detectors: [registered, {detector: forensic_cnn, config: {epochs: 10}}]
protocols: {few_shot_ks: [0, 5], perturbations: [jpeg50, j2k20]}
"""
    (tmp_path / "c.yaml").write_text(yaml_text)
    cfg = RunConfig.load(tmp_path / "c.yaml")
    assert cfg.build.generators[0].name == "ddpm-{modality}" and cfg.build.generators[1].steps == 500
    insts = cfg.build.generators[0].expand(["ct", "endoscopy"])
    assert [i.name for i in insts] == ["ddpm-ct", "ddpm-endoscopy"] and [i.channels for i in insts] == [1, 3]
    specs = cfg.resolved_detectors(["forensic_cnn", "npr"])
    assert [s.label for s in specs] == ["forensic_cnn", "npr"] and specs[0].config == {"epochs": 10}
    q = scaled(cfg, 0.1)
    assert (q.build.per_class, q.build.generators[0].steps, q.build.generators[1].n_samples) == (10, 100, 8)
    assert q.detectors[1].config["epochs"] == 1 and q.n_boot == 20 and q.quick == 0.1
    assert cfg.build.per_class == 100  # the original is untouched
    (tmp_path / "c.json").write_text(json.dumps({"benchmark": "x.csv", "protocols": {"lgo": True}}))
    with pytest.raises(ConfigError, match="unknown key.*lgo"):
        RunConfig.load(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="needs either"):
        RunConfig.from_dict({"name": "nothing"})


def test_resume_skips_finished_units_and_continues_a_killed_run(toy_benchmark, tmp_path):
    out = tmp_path / "run"
    with bank_detector_registered() as bank:
        cfg = _cfg(str(toy_benchmark.manifest_path), bank)
        first = BenchmarkRunner(cfg, out, show_progress=False, log=LOG).run()
        assert first["units_run"] == 2 and first["models_trained"] == 1 and first["units_failed"] == []
        before = (out / "units/in_distribution/bank.json").read_text()

        again = BenchmarkRunner(cfg, out, resume=True, show_progress=False, log=LOG).run()
        assert again["units_run"] == 0 and again["units_skipped"] == 2 and again["models_trained"] == 0
        assert (out / "units/in_distribution/bank.json").read_text() == before

        (out / "units/robustness/bank/jpeg50.json").unlink()  # as if killed before this unit finished
        resumed = BenchmarkRunner(cfg, out, resume=True, show_progress=False, log=LOG).run()
        assert resumed["units_run"] == 1 and resumed["units_skipped"] == 1
        assert resumed["models_trained"] == 0 and resumed["models_cached"] == 1  # trained model reused from disk
        assert (out / "units/robustness/bank/jpeg50.json").is_file()

        with pytest.raises(FileExistsError, match="--resume"):
            BenchmarkRunner(cfg, out, resume=False, show_progress=False, log=LOG)
        forced = BenchmarkRunner(cfg, out, resume=False, force=True, show_progress=False, log=LOG).run()
        assert forced["units_run"] == 2 and forced["models_trained"] == 0  # recomputed, model still cached


def test_model_cache_by_config_hash(toy_benchmark, tmp_path):
    with bank_detector_registered() as bank:
        same = {"preprocessing": {"size": 32}}
        cfg = _cfg(str(toy_benchmark.manifest_path), bank, cache_dir=str(tmp_path / "cache"),
                   detectors=[{"detector": bank, "label": "a", "config": same},
                              {"detector": bank, "label": "b", "config": same},
                              {"detector": bank, "label": "c", "config": {**same, "steps": 7}}],
                   protocols={"logo": False, "lofo": False, "published": False, "few_shot": False,
                              "robustness": False})
        s = BenchmarkRunner(cfg, tmp_path / "r1", show_progress=False, log=LOG).run()
        assert s["models_trained"] == 2 and s["models_cached"] == 1  # a and b share one model, c differs
        a = json.loads((tmp_path / "r1/units/in_distribution/a.json").read_text())
        b = json.loads((tmp_path / "r1/units/in_distribution/b.json").read_text())
        c = json.loads((tmp_path / "r1/units/in_distribution/c.json").read_text())
        assert a["model"] == b["model"] != c["model"]
        assert (tmp_path / "cache" / a["model"] / "bench_model.json").is_file()
        s2 = BenchmarkRunner(cfg, tmp_path / "r2", show_progress=False, log=LOG).run()  # new run, same cache
        assert s2["models_trained"] == 0 and s2["models_cached"] == 3


def test_a_failing_unit_is_recorded_and_does_not_stop_the_run(toy_benchmark, tmp_path):
    with bank_detector_registered() as bank:
        cfg = _cfg(str(toy_benchmark.manifest_path), bank,
                   detectors=[{"detector": "no-such-detector"},
                              {"detector": bank, "label": "bank", "config": {"preprocessing": {"size": 32}}}],
                   protocols={"logo": False, "lofo": False, "published": False, "few_shot": False,
                              "robustness": False})
        s = BenchmarkRunner(cfg, tmp_path / "r", show_progress=False, log=LOG).run()
    assert [f["unit"] for f in s["units_failed"]] == ["in_distribution/no-such-detector"]
    assert "unknown detector" in s["units_failed"][0]["error"]
    assert json.loads((tmp_path / "r/units/in_distribution/bank.json").read_text())["status"] == "ok"
    assert "Failed units" in (tmp_path / "r/results/tables.md").read_text()


def test_build_stage_trains_factory_generators(toy_inputs, tmp_path):
    from medforensics.synth.generators import TINY_CONFIGS

    gens = [{"family": f, "modalities": ["xray"], "resolution": 16, "steps": 2, "batch_size": 4,
             "config": TINY_CONFIGS[f]} for f in ("diffusion", "gan", "vae")]
    with bank_detector_registered() as bank:
        cfg = RunConfig.from_dict({
            "name": "toy-build", "n_boot": 5,
            "build": {"real": str(toy_inputs["real"]), "modalities": ["xray"], "size": 32, "generators": gens,
                      "imported_fakes": str(toy_inputs["published"])},
            "detectors": [{"detector": bank, "label": "bank", "config": {"preprocessing": {"size": 32}}}],
            "protocols": {"logo": False, "lofo": True, "published": True, "few_shot": False, "robustness": False},
        })
        s = BenchmarkRunner(cfg, tmp_path / "run", show_progress=False, log=LOG).run()
        assert s["generators_trained"] == 3 and s["units_failed"] == []
        info = json.loads((tmp_path / "run/generators/ddpm-xray/bench_generator.json").read_text())
        assert info["train_seconds"] >= 0 and info["n_samples"] >= 4 and info["key"]["family"] == "diffusion"
        sources = json.loads((tmp_path / "run/generators/ddpm-xray/bench_sources.json").read_text())["sources"]
        build = json.loads((tmp_path / "run/benchmark/build.json").read_text())
        assert build["format_check"]["passed"] and build["generator_sources_in_test"] == {
            "ddpm-xray": 0, "dcgan-xray": 0, "vae-xray": 0}
        assert sources and set(build["generators"]) == {"ddpm-xray", "dcgan-xray", "vae-xray", "PubGAN_CXR"}
        md = (tmp_path / "run/results/tables.md").read_text()
        assert "Generators: training and sampling time" in md and "Leave-one-family-out" in md
        again = BenchmarkRunner(cfg, tmp_path / "run", resume=True, show_progress=False, log=LOG).run()
        assert again["generators_cached"] == 3 and again["generators_trained"] == 0 and again["units_run"] == 0


def test_generators_only_trains_a_modality_subset_that_a_full_run_reuses(toy_inputs, tmp_path):
    from medforensics.synth.generators import TINY_CONFIGS

    gens = [{"family": f, "resolution": 16, "steps": 2, "batch_size": 4, "config": TINY_CONFIGS[f]}
            for f in ("vae", "gan")]
    with bank_detector_registered() as bank:
        cfg = RunConfig.from_dict({
            "name": "toy-shards", "n_boot": 5,
            "build": {"real": str(toy_inputs["real"]), "modalities": ["xray"], "size": 32, "generators": gens},
            "detectors": [{"detector": bank, "label": "bank", "config": {"preprocessing": {"size": 32}}}],
            "protocols": {"logo": False, "lofo": False, "published": False, "few_shot": False, "robustness": False},
        })
        runner = BenchmarkRunner(cfg, tmp_path / "run", show_progress=False, log=LOG)
        assert runner.train_generators(modalities={"ct"}) == []  # no generator of that modality
        assert runner.train_generators(modalities={"xray"}) == ["vae-xray", "dcgan-xray"]
        assert not (tmp_path / "run/benchmark").exists() and not (tmp_path / "run/units").exists()
        s = BenchmarkRunner(cfg, tmp_path / "run", resume=True, show_progress=False, log=LOG).run()
        assert s["generators_cached"] == 2 and s["generators_trained"] == 0 and s["units_failed"] == []


def test_detector_shards_share_a_run_folder_and_a_last_run_only_reports(toy_benchmark, tmp_path):
    out = tmp_path / "run"
    with bank_detector_registered() as bank:
        dets = [{"detector": bank, "label": lab, "config": {"preprocessing": {"size": 32}, "steps": i + 1}}
                for i, lab in enumerate(("a", "b"))]
        cfg = _cfg(str(toy_benchmark.manifest_path), bank, detectors=dets,
                   protocols={"logo": False, "lofo": False, "published": False, "few_shot": False,
                              "robustness": False, "ablations": [{**dets[0], "label": "a-ablated"}]})
        first = BenchmarkRunner(cfg, out, show_progress=False, log=LOG, only={"a"}).run()
        assert first["units_run"] == 1 and (out / "units/in_distribution/a.json").is_file()
        assert not (out / "units/ablations").exists()  # the ablation label is not in this shard
        second = BenchmarkRunner(cfg, out, resume=True, show_progress=False, log=LOG, only={"b", "a-ablated"}).run()
        assert second["units_run"] == 2 and second["units_skipped"] == 0
        final = BenchmarkRunner(cfg, out, resume=True, show_progress=False, log=LOG).run()
        assert final["units_run"] == 0 and final["units_skipped"] == 3
        md = (out / "results/tables.md").read_text()
        assert "a-ablated" in md and "| b" in md


def test_unsupervised_detector_shares_one_model_across_held_out_generators(toy_benchmark, tmp_path):
    """Leaving fakes out changes nothing an unsupervised detector learns from: LOGO/LOFO reuse its model."""
    protocols = {"logo_holdouts": ["ddpm-xray"], "published": False, "few_shot": False, "robustness": False}
    with bank_detector_registered(RealOnlyDetector) as real_only, bank_detector_registered() as bank:
        dets = [{"detector": real_only, "label": "ro", "config": {"preprocessing": {"size": 32}}},
                {"detector": bank, "label": "sup", "config": {"preprocessing": {"size": 32}}}]
        cfg = _cfg(str(toy_benchmark.manifest_path), bank, detectors=dets, protocols=protocols)
        s = BenchmarkRunner(cfg, tmp_path / "r", show_progress=False, log=LOG).run()
    assert s["units_failed"] == []
    ids = ["in_distribution/{}", "logo/{}/ddpm-xray", "lofo/{}/diffusion", "lofo/{}/gan", "lofo/{}/vae"]
    units = lambda label: [json.loads((tmp_path / "r/units" / f"{u.format(label)}.json").read_text()) for u in ids]
    ro, sup = units("ro"), units("sup")
    assert len(ro) == len(sup) == 5  # in-distribution, one LOGO hold-out, three LOFO families
    assert len({u["model"] for u in ro}) == 1  # one model for every real-only unit
    assert len({u["model"] for u in sup}) == 5  # the supervised detector is retrained per hold-out
    assert s["models_trained"] == 1 + 5


def test_a_run_can_ask_for_the_laundered_view(toy_benchmark, tmp_path):
    with bank_detector_registered() as bank:
        cfg = _cfg(str(toy_benchmark.manifest_path), bank, views=["plain", "laundered"],
                   protocols={"logo": False, "lofo": False, "published": False, "few_shot": False,
                              "robustness": False})
        assert cfg.views == ["plain", "laundered"]
        s = BenchmarkRunner(cfg, tmp_path / "run", show_progress=False, log=LOG).run()
        assert s["units_failed"] == []
        unit = json.loads((tmp_path / "run/units/in_distribution/bank.json").read_text())
        assert set(unit["views"]) == {"plain", "laundered"}
        plain = [r[2] for r in unit["views"]["plain"]["scores"]]
        laundered = [r[2] for r in unit["views"]["laundered"]["scores"]]
        assert len(plain) == len(laundered) and plain != laundered  # the chain really ran
        assert "laundered" in (tmp_path / "run/results/tables.md").read_text()
    assert _cfg("x.csv", "bank").views == ["plain", "matched"]  # the default is unchanged
    for bad, why in ((["plain", "washed"], "unknown"), ([], "empty"), (["plain", "plain"], "twice")):
        with pytest.raises(ConfigError, match=why):
            _cfg("x.csv", "bank", views=bad)
