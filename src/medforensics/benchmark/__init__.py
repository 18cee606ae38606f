"""Evaluation protocols over manifests (in-distribution, processing-matched, per generator)."""

from .build import BuildOptions, BuildResult, build_benchmark, format_statistics_check
from .config import RunConfig, scaled
from .protocol import EvaluationResult, ScoredSet, evaluate_detector, score_manifest
from .protocols import PERTURBATIONS
from .runner import BenchmarkRunner, run_config

__all__ = ["PERTURBATIONS", "BenchmarkRunner", "BuildOptions", "BuildResult", "EvaluationResult", "RunConfig",
           "ScoredSet", "build_benchmark", "evaluate_detector", "format_statistics_check", "run_config",
           "score_manifest", "scaled"]

from .btd_protocol import BTDProtocolResult, load_patches, run_btd_protocol, training_patches  # noqa: E402

__all__ += ["BTDProtocolResult", "load_patches", "run_btd_protocol", "training_patches"]
