"""Is a classical removal (in-paint + matched noise) visible as a local texture deficit inside the image?

For every image: the high-pass residual (x − G_σ=1 * x), its log standard deviation in 16×16 windows
(stride 8) over the foreground, standardised against the image's own windows of similar brightness (five
quantile bins, median and IQR/1.349); the image's score is the most negative z (deficit) or the largest z
(excess). AUC of tampered copies (the unseen-generator benchmark's test copies, `make_tampered_set` seed 0)
against every other test real. No training, nothing fitted across images.

    .venv/bin/python bench/tampered_copy_detection/texture_deficit_probe.py
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from medforensics.data import Manifest, patient_split, shared_manifest
from medforensics.io import load
from medforensics.synth.tamper_set import make_tampered_set


def window_z(x: np.ndarray, w: int = 16, s: int = 8, bins: int = 5) -> np.ndarray:
    r = x - ndimage.gaussian_filter(x, 1.0)
    feats = np.array([(x[y:y + w, c:c + w].mean(), np.log(r[y:y + w, c:c + w].std() + 1e-4))
                      for y in range(0, x.shape[0] - w + 1, s) for c in range(0, x.shape[1] - w + 1, s)])
    keep = feats[:, 0] > 0.05
    f = feats[keep] if keep.sum() >= 10 else feats
    b = np.clip(np.searchsorted(np.quantile(f[:, 0], np.linspace(0, 1, bins + 1)), f[:, 0]) - 1, 0, bins - 1)
    z = np.zeros(len(f))
    for k in range(bins):
        sel = b == k
        if sel.sum() >= 3:
            q75, q25 = np.percentile(f[sel, 1], [75, 25])
            z[sel] = (f[sel, 1] - np.median(f[sel, 1])) / ((q75 - q25) / 1.349 + 0.05)
    return z


def grey(path, modality: str) -> np.ndarray:
    px = load(path, modality=modality).pixels
    return px.mean(axis=2) if px.ndim == 3 else px


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/unseen_generator_detection/tampered/test")
    args = ap.parse_args()
    test = patient_split(shared_manifest(), test_fraction=0.2, seed=0)
    reals = Manifest.from_rows([r for r in test if r.split == "test" and r.label == "real"], root=test.root)
    copies = make_tampered_set(reals, args.work, fraction=0.5, seed=0, show_progress=False)
    tampered_src = {r.extra["original_path"] for r in copies}
    z_real = [window_z(grey(r.resolve(reals.root), r.modality)) for r in reals
              if str(r.resolve(reals.root)) not in tampered_src]
    for kind in ("inject", "remove"):
        z_fake = [window_z(grey(r.resolve(copies.root), r.modality)) for r in copies if r.generator == f"tamper-{kind}"]
        y = [0] * len(z_real) + [1] * len(z_fake)
        for name, fn in (("texture deficit (−min z)", lambda z: -z.min()), ("texture excess (max z)", np.max)):
            auc = roc_auc_score(y, [fn(z) for z in z_real + z_fake])
            print(f"{kind:6s} {name:26s} AUC {auc:.3f}  ({len(z_real)} reals, {len(z_fake)} copies)")


if __name__ == "__main__":
    main()
