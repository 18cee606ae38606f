from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import create_detector, load_detector
from medforensics.engine import ScanEngine
from medforensics.store import ResultStore

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    det = create_detector("forensic_cnn", seed=0, width=8, patch_size=64, patch_stride=64, progress=False)
    det.set_threshold(0.5, method="test")
    return det.save(tmp_path_factory.mktemp("model") / "tiny")


def test_ray_scan_matches_plain_scan_and_writes_the_store(local_ray, model_dir, tmp_path):
    import pydicom
    from pathlib import Path

    rng = np.random.default_rng(3)
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(root / f"im{i}.png")
    (root / "ct.dcm").write_bytes((Path(pydicom.__file__).parent / "data/test_files/CT_small.dcm").read_bytes())
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with ScanEngine(load_detector(model_dir), workers=0) as engine:
        plain = {r.path: r for r in engine.scan([root])}

    url = f"sqlite:///{tmp_path / 'ray.db'}"
    out = tmp_path / "ray.json"
    res = CliRunner().invoke(app, ["scan", str(root), "--model", str(model_dir), "--engine", "ray", "--db", url,
                                   "--json", str(out)])
    assert res.exit_code == 1, res.output  # bad.png failed, the rest scored
    assert "images/s" in res.output
    got = {r["path"]: r for r in json.loads(out.read_text())["results"]}
    assert set(got) == set(plain)
    for path, r in plain.items():
        if r.ok:
            assert got[path]["score"] == pytest.approx(r.score, abs=1e-6) and got[path]["verdict"] == r.verdict
        else:
            assert got[path]["score"] is None and got[path]["error"]
    store = ResultStore(url)
    assert store.count(source="ray") == 7 and store.count(verdict="error") == 1
    (run,) = {rec.run_id for rec in store.query(limit=None)}
    assert store.run(run)["status"] == "finished" and store.run(run)["images_per_s"] > 0

    # a second run is answered from the store on the driver (no worker needed), with the same scores
    from medforensics.distributed import RayScan

    again = RayScan([root], str(model_dir), store=store)
    results = {r.path: r for r in again}
    assert again.summary.n_scored == 1 and again.summary.n_ok == 6 and store.count() == 7  # only bad.png retried
    assert all(results[p].score == got[p]["score"] for p in got)
    store.close()
