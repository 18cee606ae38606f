"""The core install (``pip install medforensics``, no extras) runs ``scan``, ``train`` and ``evaluate``.

Each command runs in a fresh interpreter whose import system refuses every module that only the
optional extras bring in, as if it were not installed: a finder at the front of ``sys.meta_path``
raises ``ModuleNotFoundError`` for those top-level names (and ``importlib.util.find_spec`` answers
``None``, as it does for a missing module). The blocked names are derived from the installed
package metadata: every distribution in the dependency closure of ``medforensics[<every extra>]``
that is not in the closure of plain ``medforensics``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

#: the extras' heavy dependencies named by the design (an installed one must never be core)
EXTRA_ONLY = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "pynetdicom", "ray", "transformers", "diffusers",
              "efficientnet_lite_pytorch")

RUNNER = r'''
import importlib.abc, importlib.util, json, sys

BLOCKED = frozenset(json.loads(sys.argv[1]))
early = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
if early:
    sys.exit(f"imported before the blocker was installed: {early}")


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the core install)", name=name)
        return None


_find_spec = importlib.util.find_spec


def find_spec(name, package=None):
    if not name.startswith(".") and name.partition(".")[0] in BLOCKED:
        return None
    return _find_spec(name, package)


importlib.util.find_spec = find_spec
sys.meta_path.insert(0, NotInstalled())
if sys.argv[2] == "--each":  # several command lines in this one interpreter: [[exit code, output], ...]
    from typer.testing import CliRunner

    from medforensics.cli import app

    runs = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[3])]
    print(json.dumps([[r.exit_code, r.output + (repr(r.exception) if r.exit_code not in (0, 1, 2) else "")]
                      for r in runs]))
else:
    sys.argv = ["medforensics", *sys.argv[2:]]
    from medforensics.cli import main

    main()
'''


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Canonical names of the installed distributions ``name[extras]`` needs, itself included."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, dist_extras = todo.pop()
        key = (_canon(dist_name), dist_extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        envs = [{"extra": e} for e in dist_extras] or [{"extra": ""}]
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(sorted(req.extras))))
    return {dist_name for dist_name, _ in seen}


@cache
def extras_only_modules() -> frozenset[str]:
    """Top-level module names provided only by distributions that some extra, and not the core, needs."""
    extras = tuple(sorted(metadata.distribution("medforensics").metadata.get_all("Provides-Extra") or []))
    only = _closure("medforensics", extras) - _closure("medforensics")
    return frozenset(module for module, dists in metadata.packages_distributions().items()
                     if dists and all(_canon(d) in only for d in dists))


def core_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``medforensics <args>`` in a fresh interpreter that cannot import the extras."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    blocked = json.dumps(sorted(extras_only_modules()))
    return subprocess.run([sys.executable, "-c", RUNNER, blocked, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _explain(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"


def test_the_extras_heavy_dependencies_are_blocked_and_the_cli_starts(tmp_path):
    blocked = extras_only_modules()
    installed = {name for name in EXTRA_ONLY if importlib.util.find_spec(name) is not None}
    assert installed <= blocked, f"core dependencies pull in {sorted(installed - blocked)}"
    assert not {"torch", "numpy", "pydicom", "typer"} & blocked

    res = core_cli("--help", cwd=tmp_path)
    assert res.returncode == 0, _explain(res)
    assert all(cmd in res.stdout for cmd in ("scan", "train", "evaluate"))


def test_scan_png_and_dicom_to_json(tmp_path):
    from pydicom.data import get_testdata_file

    png = tmp_path / "xray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 80), dtype=np.uint8)).save(png)
    dcm = Path(get_testdata_file("CT_small.dcm"))
    out = tmp_path / "results.json"

    res = core_cli("scan", str(png), str(dcm), "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, _explain(res)
    data = json.loads(out.read_text())
    by_name = {Path(r["path"]).name: r for r in data["results"]}
    assert set(by_name) == {"xray.png", "CT_small.dcm"}
    assert all(r["error"] is None and 0.0 <= r["score"] <= 1.0 and r["verdict"] in ("real", "fake")
               for r in by_name.values())
    assert by_name["CT_small.dcm"]["modality"] == "ct"
    assert data["detector"] == "forensic_cnn"


def test_train_then_evaluate(tiny_manifest, tmp_path):
    model = tmp_path / "model"
    res = core_cli("train", "forensic_cnn", "--manifest", str(tiny_manifest.path), "--out", str(model),
                   "--workdir", str(tmp_path / "work"), "--tamper-fraction", "0", "--n-boot", "5",
                   "--set", "epochs=1", "--set", "width=8", "--set", "patch_size=64", "--set", "patch_stride=64",
                   "--set", "progress=false", cwd=tmp_path)
    assert res.returncode == 0, _explain(res)
    assert {"config.json", "weights.safetensors", "MODEL_CARD.md"} <= {p.name for p in model.iterdir()}
    config = json.loads((model / "config.json").read_text())
    assert config["detector"] == "forensic_cnn" and config["config"]["width"] == 8

    out = tmp_path / "eval.json"
    res = core_cli("evaluate", str(tiny_manifest.path), "--model", str(model), "--split", "all", "--n-boot", "5",
                   "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, _explain(res)
    plain = json.loads(out.read_text())["views"]["plain"]
    assert plain["n"] == len(tiny_manifest)
    assert 0.0 <= plain["all fakes"]["per_modality"]["all"]["auc"]["mean"] <= 1.0


def test_an_optional_part_says_which_extra_it_needs(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    cases = [  # command line, what its message must name
        (["serve", "--no-auth", "--port", "0"], "medforensics[serve]"),
        (["reader-study", "--manifest", str(tmp_path / "m.csv")], "medforensics[serve]"),
        (["dicom-listen", "--port", "0"], "pynetdicom"),
        (["scan", str(png), "--db", f"sqlite:///{tmp_path / 'results.db'}"], "sqlalchemy"),
        (["scan", str(png), "--engine", "ray"], "ray"),
    ]
    res = core_cli("--each", json.dumps([args for args, _ in cases]), cwd=tmp_path)
    assert res.returncode == 0, _explain(res)
    for (args, needs), (code, output) in zip(cases, json.loads(res.stdout.splitlines()[-1]), strict=True):
        assert code == 2 and needs.lower() in output.lower() and "Traceback" not in output, (args, code, output)
