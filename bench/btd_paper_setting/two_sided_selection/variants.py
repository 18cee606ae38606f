"""Which texture-deficit statistic for two-sided search mode? Step 2: score the variants on cached maps.

    .venv/bin/python bench/btd_paper_setting/two_sided_selection/variants.py runs/btd_long_explore/ct_shipped_val.npz
"""
import numpy as np, torch
from sklearn.metrics import roc_auc_score
from medforensics.detectors.btd.search import window_features, fit_norm, standardise, _box_means, search_positions
import sys
D = np.load(sys.argv[1])
W, S = 32, 16
def sub_min(v, win, stride, sub, sub_stride, log=True, std_of=None):
    """min over sub-blocks inside each window of the sub-block mean of v (or std of std_of)."""
    v = torch.from_numpy(v).double()
    n, h, w = v.shape
    win, ys, xs = search_positions(h, w, win, stride)
    out = None
    for oy in range(0, win - sub + 1, sub_stride):
        for ox in range(0, win - sub + 1, sub_stride):
            yy, xx = [y + oy for y in ys], [x + ox for x in xs]
            if std_of is None:
                val = _box_means(v, sub, yy, xx)
            else:
                mu = _box_means(v, sub, yy, xx); sq = _box_means(v * v, sub, yy, xx)
                val = (sq - mu * mu).clamp_min(0).sqrt()
            out = val if out is None else torch.minimum(out, val)
    out = out.numpy()
    return np.log(out + (1e-10 if std_of is None else 1e-4))
def feats(img, res, variant):
    r, m, s, pos, win = window_features(torch.from_numpy(img), torch.from_numpy(res), W, S)
    if variant == "z": return r, m, s
    kind, sub, st = variant
    if kind == "res": d = sub_min(res, W, S, sub, st)
    elif kind == "std": d = sub_min(img, W, S, sub, st, std_of=True)
    elif kind == "r_m": d = r
    elif kind == "std_m": d = sub_min(img, W, S, sub, st, std_of=True)
    return d, m, s
def auc(a, b): return roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
kinds = D["kinds"]; pairs = D["pairs"]; cs = D["cs"]
k_pair = kinds[pairs[:, 1]]
def roi_window(img, res, c):
    h, w = img.shape
    y0 = min(max(0, int(round(c[0] - W / 2))), h - W); x0 = min(max(0, int(round(c[1] - W / 2))), w - W)
    return img[y0:y0+W, x0:x0+W][None], res[y0:y0+W, x0:x0+W][None]
for variant in ["z", ("r_m", 0, 0), ("res", 8, 4), ("res", 8, 8), ("res", 16, 8), ("res", 4, 4), ("std", 8, 4), ("std", 16, 8), ("std", 4, 4), ("std_m", 16, 8), ("std_m", 8, 4)]:
    fr, fm, fs = feats(D["Fi"], D["F"], "z")
    fd, _, _ = feats(D["Fi"], D["F"], variant)
    if variant != "z" and variant[0] in ("r_m", "std_m"):
        norm = fit_norm(fd.ravel(), fm.ravel(), np.zeros(fm.size), window=W, stride=S)
        std = lambda d, m, s: standardise(norm, d, m, np.zeros_like(s))
    else:
        norm = fit_norm(fd.ravel(), fm.ravel(), fs.ravel(), window=W, stride=S)
        std = lambda d, m, s: standardise(norm, d, m, s)
    normz = fit_norm(fr.ravel(), fm.ravel(), fs.ravel(), window=W, stride=S)
    sign = 1 if variant == "z" else -1
    def score_windows(img, res):
        r, m, s = feats(img, res, "z"); d, _, _ = feats(img, res, variant)
        z = standardise(normz, r, m, s); zd = sign * std(d, m, s)
        return z, zd
    # ROI
    out = {}
    for name, I, Rm in (("src", D["Si"], D["RS"]), ("cop", D["Ci"], D["RC"])):
        zz, dd = [], []
        for i in range(len(I)):
            a, b = roi_window(I[i], Rm[i], cs[i])
            z, zd = score_windows(a, b); zz.append(z[0, 0]); dd.append(zd[0, 0])
        out[name] = (np.array(zz), np.array(dd))
    line = f"{str(variant):18s}"
    for kind in ("inject", "remove"):
        sel = k_pair == f"tamper-{kind}"
        zs, ds = out["src"]; zc, dc = out["cop"]
        line += f" | {kind}: z {auc(zs[sel], zc[sel]):.3f} def {auc(ds[sel], dc[sel]):.3f} max {auc(np.maximum(zs, ds)[sel], np.maximum(zc, dc)[sel]):.3f}"
    # whole slice (max over windows) and null on val: spread of max
    zR, dR = score_windows(D["Ri"], D["R"]); zT, dT = score_windows(D["Ti"], D["T"])
    for kind in ("inject", "remove"):
        sel = kinds == f"tamper-{kind}"
        line += f" | WS {kind[:3]} max {auc(np.maximum(zR, dR).max(1), np.maximum(zT, dT)[sel].max(1)):.3f}"
    # pixel-ish: fraction of tampered slices where max-deficit window covers mask
    print(line, flush=True)
