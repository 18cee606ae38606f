"""Evaluation protocols over manifests (in-distribution, processing-matched, per generator)."""

from .protocol import EvaluationResult, ScoredSet, evaluate_detector, score_manifest

__all__ = ["EvaluationResult", "ScoredSet", "evaluate_detector", "score_manifest"]
