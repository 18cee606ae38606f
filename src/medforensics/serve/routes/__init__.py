"""The service's routers: the page and API docs, health, models, scanning, stored results, series verdicts."""

from . import health, models, pages, results, scans, series

__all__ = ["health", "models", "pages", "results", "scans", "series"]
