"""Which texture-deficit statistic for two-sided search mode? Step 1: cache the shipped btd-ct's residual maps.

Residual maps (one back-in-time pass, sliding windows as the detector) of the window-statistics reals
(window_normalisation.py's fit set), of a stable subset of real slices of ``--split`` (val: the selection
set; test: the measurement set) and their tampered copies (make_tampered_set seed 0), and the ROI patches
centred on each tamper (paired with the untouched source). ``variants.py`` then scores statistics on them.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/btd_paper_setting/two_sided_selection/cache_maps.py --split val
"""
import argparse
import sys, time
from pathlib import Path

import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import window_normalisation as wn
from medforensics.detectors import load_detector
from medforensics.data import shared_manifest
from medforensics.synth.attacks import btd_real_split
from medforensics.synth.tamper_set import make_tampered_set
from medforensics.io import standardise as std_img
ap = argparse.ArgumentParser(); ap.add_argument("--split", choices=("val", "test"), default="val")
ap.add_argument("--out", type=Path, default=Path("runs/btd_long_explore")); a = ap.parse_args()
torch.set_num_threads(1)
t0 = time.time()
mod = "ct"
det = load_detector("btd-ct"); det.config["progress"] = False
det.set_window_score("residual") if det.config["window_score"] != "residual" else None
split = btd_real_split(shared_manifest(), modalities=(mod,), seed=0)
train, val, test = (split.subset(s) for s in ("train", "val", "test"))
fit_imgs, _, _ = wn.images_of(train.with_rows(wn.stable_subset(list(train), 48)), det.preprocessing)
val_imgs, _, _ = wn.images_of(val.with_rows(wn.stable_subset(list(val), 40)), det.preprocessing)
vf, vv = [], []
for rel in wn.HELD_OUT[mod]:
    sl = wn.volume_slices(rel, det, 24); vf += sl[0::2]; vv += sl[1::2]
fit_imgs += vf; val_imgs += vv
test_reals = (val if a.split == "val" else test).with_rows(wn.stable_subset(list(val if a.split == "val" else test), 48))
tampered = make_tampered_set(test_reals, a.out / "tampered" / f"ct_{a.split}", fraction=1.0, seed=0, show_progress=False)
r_imgs, r_rows, _ = wn.images_of(test_reals, det.preprocessing)
t_imgs, t_rows, t_masks = wn.images_of(tampered, det.preprocessing, masks=True)
def maps(imgs):
    out = []
    for s in range(0, len(imgs), 4):
        b = det._batch(torch.stack(imgs[s:s+4])); det._force_residual = True
        out.append(det._sliding(b)[0].numpy()); det._force_residual = False
    return np.concatenate(out)
print("loaded", time.time()-t0, flush=True)
F = maps(fit_imgs); print("fit", time.time()-t0, flush=True)
V = maps(val_imgs); R = maps(r_imgs); T = maps(t_imgs); print("maps", time.time()-t0, flush=True)
kinds = np.array([r.generator for r in t_rows])
centres, masks = [], []
for m in t_masks:
    mask = m.numpy(); 
    if mask.shape != T.shape[1:]: mask = std_img(mask, T.shape[-1], fit=det.preprocessing.fit)
    mask = mask > 0.5; ys, xs = np.nonzero(mask); masks.append(mask)
    centres.append((float(ys.mean()), float(xs.mean())) if len(ys) else None)
src_index = {str(r.resolve(test_reals.root)): i for i, r in enumerate(r_rows)}
pairs = [(src_index.get(t.extra.get("original_path")), j, c) for j, (t, c) in enumerate(zip(t_rows, centres))]
pairs = [(i, j, c) for i, j, c in pairs if i is not None and c is not None]
b_src = det._batch(torch.stack([r_imgs[i] for i, _, _ in pairs])); b_cop = det._batch(torch.stack([t_imgs[j] for _, j, _ in pairs]))
cs = [c for _, _, c in pairs]
RS = det._centred(b_src, cs)[0].numpy(); RC = det._centred(b_cop, cs)[0].numpy()
print("roi", time.time()-t0, flush=True)
st = lambda L: torch.stack(L).mean(1).numpy()
np.savez_compressed(a.out / f"ct_shipped_{a.split}.npz", F=F, V=V, R=R, T=T, Fi=st(fit_imgs), Vi=st(val_imgs), Ri=st(r_imgs), Ti=st(t_imgs),
    kinds=kinds, masks=np.stack(masks), pairs=np.array([(i, j) for i, j, _ in pairs]), cs=np.array(cs), RS=RS, RC=RC,
    Si=b_src.mean(1).numpy(), Ci=b_cop.mean(1).numpy())
print("done", time.time()-t0)
