"""The service's routers: the page and API docs, health, models, scanning, stored results."""

from . import health, models, pages, results, scans

__all__ = ["health", "models", "pages", "results", "scans"]
