"""Shared helpers of the timing scripts: the library's peak RSS and JSON output."""

from medforensics.benchmark.records import emit, peak_rss_mib

__all__ = ["emit", "peak_rss_mib"]
