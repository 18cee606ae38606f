"""Blinded reader study: humans vs a detector on the same modality-matched real/fake images.

``ReaderStudy.prepare(manifest, detector, store=…, n=50)`` draws and scores the images;
``create_reader_app(study)`` serves the blinded page; answers and summaries go to the results store.
Run it with ``medforensics reader-study --manifest … --n 50``.
"""

from .study import READER_SCORE_RULE, ReaderStudy, StudyImage, reader_score, select_split, summarise

__all__ = ["READER_SCORE_RULE", "ReaderStudy", "StudyImage", "create_reader_app", "reader_score", "select_split",
           "summarise"]


def __getattr__(name: str):
    if name == "create_reader_app":  # FastAPI imported lazily
        from .app import create_reader_app

        return create_reader_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
