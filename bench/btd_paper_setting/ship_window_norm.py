"""Copy fitted search-mode statistics (``window_norm`` and both calibrations) into a shipped BTD model dir.

``window_normalisation.py`` writes models with statistics to ``runs/btd_window_norm/btd_<modality>``; this
checks that their weights are the shipped model's, byte for byte, and writes the shipped model's
``config.json`` with the statistics and the chosen default window score (``residual`` keeps the shipped
scores unchanged; ``z`` makes search mode the default, with its calibrated τ). The model card is not touched.

    .venv/bin/python bench/btd_paper_setting/ship_window_norm.py runs/btd_window_norm/btd_mri \\
        src/medforensics/detectors/weights/btd_mri --window-score z
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medforensics.detectors import load_detector
from medforensics.detectors.base import CONFIG_FILE, WEIGHTS_FILE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="model dir with fitted statistics (window_normalisation.py)")
    ap.add_argument("target", type=Path, help="shipped model dir to update")
    ap.add_argument("--window-score", choices=("residual", "z"), required=True)
    a = ap.parse_args()
    if (a.source / WEIGHTS_FILE).read_bytes() != (a.target / WEIGHTS_FILE).read_bytes():
        raise SystemExit(f"error: {a.source} and {a.target} hold different weights; the statistics belong to the former")
    det = load_detector(a.source)
    if not det.config.get("window_norm"):
        raise SystemExit(f"error: {a.source} has no window statistics")
    det.set_window_score(a.window_score)
    cfg = det.get_config()
    old = json.loads((a.target / CONFIG_FILE).read_text())
    cfg["training"] = old.get("training", cfg.get("training"))
    if "runtime" in old:
        cfg["runtime"] = old["runtime"]
    from medforensics.io.preprocess import Preprocessing

    if Preprocessing.from_dict(old["preprocessing"]) == Preprocessing.from_dict(cfg["preprocessing"]):
        cfg["preprocessing"] = old["preprocessing"]  # same preprocessing: keep the file's spelling of it
    (a.target / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    print(f"{a.target}: window statistics written, window_score={a.window_score}, τ={det.threshold:.4f}")


if __name__ == "__main__":
    main()
