"""How often do the header forensics rules flag genuine, untouched DICOM files?

Groups, reported separately:
  real-series   every instance of the real DICOM series / multi-frame files in the shared data
                (``<shared>/volumes``, series scored with the series rules),
  pydicom-data  every readable instance shipped by the ``pydicom-data`` package (vendor / NEMA
                samples, plus a few synthetic LUT and colour test objects),
  pydicom-test  every readable instance in pydicom's own ``test_files`` (many deliberately odd).
For each group: files, readable, flagged at the default operating point, which rules fire on how
many instances, score quantiles and the time per instance. Also the series verdicts.

    .venv/bin/python bench/header_forensics_false_positives/run.py [--out results.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
import warnings
from pathlib import Path

import numpy as np

from medforensics.data.shared import shared_data_dir
from medforensics.headers import DEFAULT_THRESHOLD, SeriesReport, inspect_paths
from medforensics.io.samples import pydicom_data_folder, pydicom_test_files


def _group(name: str, series: list[SeriesReport], seconds: float, n_files: int) -> dict:
    instances = [r for s in series for r in s.instances]
    readable = [r for r in instances if r.error is None]
    scores = np.array([r.score for r in readable]) if readable else np.zeros(0)
    fires: collections.Counter[str] = collections.Counter()
    for r in readable:
        for code, sev in sorted({(f.code, f.severity) for f in r.all_findings}):
            fires[f"{code} ({sev})"] += 1
    flagged = [r for r in readable if r.score >= DEFAULT_THRESHOLD]
    multi = [s for s in series if len(s.instances) > 1]
    return {
        "group": name,
        "files": n_files,
        "readable": len(readable),
        "unreadable": len(instances) - len(readable),
        "flagged": len(flagged),
        "flagged_fraction": len(flagged) / len(readable) if readable else None,
        "flagged_files": {Path(r.path).name: sorted({f.code for f in r.all_findings}) for r in flagged},
        "instances_without_findings": sum(not r.all_findings for r in readable),
        "rule_fires_on_instances": dict(fires.most_common()),
        "score_quantiles": {q: float(np.quantile(scores, q / 100)) for q in (50, 90, 99, 100)} if scores.size else {},
        "series_with_2plus_instances": len(multi),
        "series_flagged": [s.series_instance_uid or Path(s.instances[0].path).parent.name for s in multi if s.flagged()],
        "seconds_per_instance": seconds / max(1, len(instances)),
    }


def _run(name: str, paths: list[Path], n_files: int, *, pixels: bool = True) -> dict:
    t = time.perf_counter()
    series = inspect_paths(paths, pixels=pixels)
    return _group(name, series, time.perf_counter() - t, n_files)


def _files(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    results = []
    volumes = shared_data_dir() / "volumes"
    series_paths = sorted(p for p in volumes.glob("*/*") if p.is_dir() or p.suffix == ".dcm")
    n_real = sum(len(_files(p)) if p.is_dir() else 1 for p in series_paths)
    results.append(_run("real-series", series_paths, n_real))
    results.append(_run("real-series (header only)", series_paths, n_real, pixels=False))
    # each sample file alone: they are unrelated objects, several share a SeriesInstanceUID
    for name, folder in (("pydicom-data", pydicom_data_folder()), ("pydicom-test", pydicom_test_files())):
        files = _files(folder)
        t = time.perf_counter()
        series = [s for p in files for s in inspect_paths([p])]
        results.append(_group(name, series, time.perf_counter() - t, len(files)))
    for g in results:
        frac = g["flagged_fraction"]
        print(f"\n== {g['group']}: {g['readable']} readable of {g['files']} files, flagged {g['flagged']} "
              f"({100 * frac:.2f}%)" if frac is not None else f"\n== {g['group']}: nothing readable")
        print(f"   no finding at all: {g['instances_without_findings']}; score quantiles {g['score_quantiles']}; "
              f"{1000 * g['seconds_per_instance']:.1f} ms/instance")
        for code, n in g["rule_fires_on_instances"].items():
            print(f"   {n:4d}  {code}")
        if g["flagged_files"]:
            print("   flagged:", json.dumps(g["flagged_files"])[:2000])
        if g["series_flagged"]:
            print("   series flagged:", g["series_flagged"])
    args.out.write_text(json.dumps({"threshold": DEFAULT_THRESHOLD, "groups": results}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
