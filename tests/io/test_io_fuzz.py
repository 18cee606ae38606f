"""Seeded mutation fuzzing: every reader gives frames or an UnreadableImageError, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from medforensics.io.mutation import OPERATIONS, check_files, mutate, seed_files, write_mutations


def test_mutations_are_deterministic_per_seed(tmp_path: Path):
    a = write_mutations(tmp_path / "a", 30, seed=3)
    b = write_mutations(tmp_path / "b", 30, seed=3)
    c = write_mutations(tmp_path / "c", 30, seed=4)
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert any(x.read_bytes() != z.read_bytes() for x, z in zip(a, c))
    seeds = {p.name: p.read_bytes() for p in (tmp_path / "a" / "seeds").iterdir()}
    assert all(p.read_bytes() not in seeds.values() for p in a)  # every file is really mutated
    ops = {json.loads(line)["operation"] for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()}
    assert ops <= set(OPERATIONS) and len(ops) >= 4


def test_header_edits_change_the_header(tmp_path: Path):
    import numpy as np

    seeds = seed_files(tmp_path / "seeds")
    for name in ("png_rgb", "jpeg", "nifti", "rle", "deflate"):
        data = seeds[name].read_bytes()
        out, op, detail = mutate(data, {"png_rgb": "png", "jpeg": "jpeg", "nifti": "nifti"}.get(name, "dicom"),
                                 np.random.default_rng(1), operation="header_edit")
        assert op == "header_edit" and out != data, (name, detail)


def test_readers_survive_200_mutated_files(tmp_path: Path):
    """Each file is loaded in a child process: a segfault fails this test naming the file."""
    paths = write_mutations(tmp_path, 200, seed=0)
    kinds = {p.suffix for p in paths}
    assert kinds == {".dcm", ".png", ".jpg", ".nii"}
    report = check_files(paths, timeout_s=60)
    assert report.clean, json.dumps(report.problems, indent=1)
    assert report.outcomes["ok"] + report.outcomes["unreadable"] == 200
    assert report.outcomes["ok"] > 0 and report.outcomes["unreadable"] > 0


def test_check_files_names_a_file_that_kills_the_process(tmp_path: Path):
    import os

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "import medforensics.io as mio\n"
        "_load = mio.load_frames\n"
        "def load_frames(path, **kw):\n"
        "    if str(path).endswith('die.png'):\n"
        "        os.abort()  # what a segfaulting native decoder looks like from outside\n"
        "    return _load(path, **kw)\n"
        "mio.load_frames = load_frames\n"
    )
    good = write_mutations(tmp_path / "m", 4, seed=0)
    die = tmp_path / "die.png"
    die.write_bytes(good[0].read_bytes())
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    report = check_files([good[0], die, good[1], good[2]], timeout_s=60, env=env)
    assert report.outcomes["crash"] == 1
    assert report.problems == [{"file": str(die), "outcome": "crash", "detail": report.problems[0]["detail"]}]
    assert report.outcomes["ok"] + report.outcomes["unreadable"] == 3  # the rest ran in a new child
