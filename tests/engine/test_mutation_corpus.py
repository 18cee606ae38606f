"""A seeded mutation corpus through the scan path: every file a score or a named error, no crash, no hang."""

from __future__ import annotations

import pytest

from medforensics.engine import ScanEngine, ScanInput
from medforensics.io.mutation import write_mutations

N_FILES = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_mutations(tmp_path_factory.mktemp("mutations"), N_FILES, seed=11)


def _check(results, corpus):
    assert len(results) == len(corpus)
    for res in results:
        if res.ok:
            assert 0.0 <= res.score <= 1.0, res.path
        else:
            assert res.score is None
            assert isinstance(res.error, str)
            assert res.error.strip(), res.path


def test_scan_gives_one_result_per_mutated_file_in_order(det, corpus):
    with ScanEngine(det, workers=1, decode_timeout=20, headers=True, series=True) as engine:
        results = list(engine.scan(corpus))
    assert [r.path for r in results] == [str(p) for p in corpus]
    _check(results, corpus)
    assert any(r.ok for r in results)
    assert any(not r.ok for r in results)


def test_concurrent_submissions_of_the_corpus_all_come_back(det, corpus):
    """The service and the receiver submit through this path."""
    with ScanEngine(det, workers=1, decode_timeout=20, headers=True) as engine:
        futures = [engine.submit(ScanInput(p, name=p.name)) for p in corpus]
        results = [f.result(timeout=300) for f in futures]
    _check(results, corpus)
    assert [r.path for r in results] == [p.name for p in corpus]
