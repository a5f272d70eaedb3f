"""Real Sentinel-1 against the SAR stand-ins made from the clean optical scene, on the real SEN12MS-CR patches
(writes benchmarks/results/sar_standin.json and sar_standin.png).

Sources, per patch: ``real`` (the patch's Sentinel-1 file), ``old`` (the former stand-in, whose brightness followed
NDVI and NIR edges pixel by pixel; kept here as the reference it was) and ``new``
(:func:`rsrestore.physics.sar_standin.sar_standin`), both stand-ins from the same patch's cloud-free Sentinel-2 and
averaged over ``--seeds`` draws.

Statistics, in dB as stored (the loader's clip to [-25, 0] / [-32.5, 0] dB comes later):

- marginals of VV, VH and VV - VH: mean, std, percentiles, a 1-dB histogram, and the Wasserstein-1 distance (dB) of
  the stand-in's distribution to the real one;
- speckle: local coefficient of variation of intensity (7 x 7), the per-pixel ENL against a 9 x 9 local mean, and the
  lag-1 autocorrelation of that ratio;
- what the SAR hands a network about the optical target: the Pearson correlation of VV and VH (5 x 5 means, i.e. with
  speckle averaged down as a network does) with each of the 13 optical bands, the largest absolute one, and R^2 of
  the best linear prediction of each optical band from (VV, VH, VV - VH) with quadratic terms, and eta^2, the same
  from any function of (VV, VH) (the band's mean per 1-dB cell, fitted on even rows, scored on odd rows). A stand-in
  should not exceed real Sentinel-1 there; and the R^2 of a linear 7 x 7 filter of (VV, VH) per band (a one-layer
  linear CNN, cross-fitted), which sees edges too: the old stand-in's NIR edges show up there;
- class means: VV and VH over the land-cover classes of :func:`rsrestore.physics.sar_standin.land_cover` (> 0.5).

``ROIs1868_summer`` 19_p30 has no cloud-free Sentinel-2, so only its real statistics are reported (marginals, speckle,
and correlations on the pixels its cloudy optical shows clear, by DSen2-CR's rule-based cloud/shadow mask).

Usage: python benchmarks/bench_sar_standin.py [--seeds 3] [--out benchmarks/results/sar_standin.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.stats import wasserstein_distance

from rsrestore.losses.carl import cloud_shadow_mask
from rsrestore.physics.sar_standin import land_cover, sar_standin

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen12mscr"
TRIPLET = ("ROIs1970_fall", "139", "839")
SAR_ONLY = ("ROIs1868_summer", "19", "30")
BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
PCTS = (1, 5, 25, 50, 75, 95, 99)
HIST_EDGES = np.arange(-40.0, 11.0, 1.0)


def old_standin(clean13: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The former stand-in (until this benchmark's commit): VV = -14 + 5 NDVI + 6 NIR-edge, VH = VV - 8 + 2 NDVI,
    water (MNDWI) at -22 / -29 dB, 1-px blur, white Gamma speckle of 4.4 looks."""
    green, red, nir, swir = clean13[2], clean13[3], clean13[7], clean13[11]
    ndvi = np.clip((nir - red) / (nir + red + 1e-6), 0.0, 1.0)
    water = np.clip(((green - swir) / (green + swir + 1e-6) - 0.1) / 0.2, 0.0, 1.0)
    gy, gx = np.gradient(gaussian_filter(nir, 1.0))
    edge = np.hypot(gx, gy)
    edge = np.clip(edge / (np.percentile(edge, 99) + 1e-6), 0.0, 1.0)
    vv = -14.0 + 5.0 * ndvi + 6.0 * edge
    vh = vv - 8.0 + 2.0 * ndvi
    vv = (1 - water) * vv + water * -22.0
    vh = (1 - water) * vh + water * -29.0
    out = []
    for db in (vv, vh):
        power = gaussian_filter(10.0 ** (db / 10.0), 1.0) * rng.gamma(4.4, 1.0 / 4.4, size=db.shape)
        out.append(10.0 * np.log10(np.maximum(power, 1e-6)))
    return np.stack(out)


def read(kind: str, roi: str, scene: str, patch: str) -> np.ndarray:
    folder = {"s1": f"s1_{scene}", "s2": f"s2_{scene}", "s2_cloudy": f"s2_cloudy_{scene}"}[kind]
    path = DATA / f"{roi}_{kind}" / folder / f"{roi}_{kind}_{scene}_p{patch}.tif"
    with rasterio.open(path) as ds:
        a = ds.read().astype(np.float64)
    return a if kind == "s1" else np.clip(a / 10000.0, 0.0, 1.0)  # the sen12mscr loader's optical scaling


def marginals(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    hist, _ = np.histogram(np.clip(x, HIST_EDGES[0], HIST_EDGES[-1] - 1e-6), HIST_EDGES)
    return {"mean": float(x.mean()), "std": float(x.std()),
            "percentiles": dict(zip(map(str, PCTS), np.percentile(x, PCTS).round(2).tolist())),
            "hist": (hist / x.size).round(4).tolist()}


def speckle_stats(db: np.ndarray) -> dict:
    p = 10.0 ** (db / 10.0)
    m = uniform_filter(p, 7)
    cv = np.sqrt(np.maximum(uniform_filter(p * p, 7) - m * m, 0.0)) / m
    ratio = p / uniform_filter(p, 9)
    r = ratio - ratio.mean()
    lag1 = float(((r[:, 1:] * r[:, :-1]).mean() + (r[1:] * r[:-1]).mean()) / 2 / r.var())
    return {"cv_median": float(np.median(cv)), "cv_p10": float(np.percentile(cv, 10)),
            "cv_p90": float(np.percentile(cv, 90)), "enl_9x9": float(1.0 / ratio.var()), "lag1_autocorr": lag1}


def optical_link(sar: np.ndarray, opt: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Correlation of 5x5-mean VV, VH with each optical band, and R^2 of each band from quadratic (VV, VH, VV-VH)."""
    vv, vh = (uniform_filter(s, 5) for s in sar)
    o = np.stack([uniform_filter(b, 5) for b in opt])
    sel = np.ones(vv.shape, bool) if valid is None else valid
    vv, vh, o = vv[sel], vh[sel], o[:, sel]
    corr = {pol: [float(np.corrcoef(s, b)[0, 1]) for b in o] for pol, s in (("VV", vv), ("VH", vh))}
    d = vv - vh
    feats = np.stack([np.ones_like(vv), vv, vh, d, vv * vv, vh * vh, vv * vh], 1)
    r2 = []
    for b in o:
        coef, *_ = np.linalg.lstsq(feats, b, rcond=None)
        r2.append(float(1.0 - ((feats @ coef - b) ** 2).mean() / b.var()))
    # Non-parametric: the mean of each band per (VV, VH) cell of 1 dB, fitted on the even rows and scored on the odd
    # rows (a correlation ratio eta^2 that any function of the two polarisations could reach, cross-fitted).
    rows = np.nonzero(sel)[0]
    fit, test = rows % 2 == 0, rows % 2 == 1
    cell = (np.clip(vv + 40, 0, 49).astype(int) * 50 + np.clip(vh + 45, 0, 49).astype(int))
    eta2 = []
    for b in o:
        total = np.bincount(cell[fit], b[fit], minlength=2500)
        count = np.bincount(cell[fit], minlength=2500)
        pred = np.where(count > 0, total / np.maximum(count, 1), b[fit].mean())[cell[test]]
        eta2.append(float(1.0 - ((pred - b[test]) ** 2).mean() / b[test].var()))
    return {"corr": {k: [round(v, 3) for v in vals] for k, vals in corr.items()},
            "eta2_optical_from_sar": [round(v, 3) for v in eta2], "mean_eta2": round(float(np.mean(eta2)), 3),
            "max_abs_corr": round(max(abs(v) for vals in corr.values() for v in vals), 3),
            "mean_abs_corr": round(float(np.mean([abs(v) for vals in corr.values() for v in vals])), 3),
            "r2_optical_from_sar": [round(v, 3) for v in r2], "mean_r2": round(float(np.mean(r2)), 3)}


def window_probe(sar: np.ndarray, opt: np.ndarray, k: int = 7) -> list[float]:
    """R^2 per optical band of a linear filter on the k x k window of (VV, VH) in dB around each pixel (a one-layer
    linear CNN, ridge 1e-3), fitted on the even rows and scored on the odd rows: how much of the optical scene,
    edges included, a network could read from the SAR."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.clip(sar, -40.0, 10.0)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    pad = k // 2
    win = sliding_window_view(np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="reflect"), (k, k), axis=(1, 2))
    f = win.transpose(1, 2, 0, 3, 4).reshape(x.shape[1], x.shape[2], -1)
    f = np.concatenate([f, np.ones(f.shape[:2] + (1,))], -1)
    fit, test = f[0::2].reshape(-1, f.shape[-1]), f[1::2].reshape(-1, f.shape[-1])
    gram = fit.T @ fit + 1e-3 * np.eye(fit.shape[1])
    out = []
    for b in opt:
        coef = np.linalg.solve(gram, fit.T @ b[0::2].ravel())
        y = b[1::2].ravel()
        out.append(float(1.0 - ((test @ coef - y) ** 2).mean() / y.var()))
    return out


def class_means(sar: np.ndarray, cover: dict) -> dict:
    out = {}
    for name, m in cover.items():
        sel = m > 0.5
        if sel.sum() >= 50:
            out[name] = {"fraction": round(float(sel.mean()), 3), "VV": round(float(sar[0][sel].mean()), 2),
                         "VH": round(float(sar[1][sel].mean()), 2)}
    return out


def describe(sar: np.ndarray, opt: np.ndarray | None, valid=None, cover=None) -> dict:
    out = {pol: marginals(x) for pol, x in (("VV", sar[0]), ("VH", sar[1]), ("VV-VH", sar[0] - sar[1]))}
    out["speckle"] = {"VV": speckle_stats(sar[0]), "VH": speckle_stats(sar[1])}
    if opt is not None:
        out["optical"] = optical_link(sar, opt, valid)
        if valid is None:
            probe = window_probe(sar, opt)
            out["optical"]["probe_r2_7x7"] = [round(v, 3) for v in probe]
            out["optical"]["mean_probe_r2"] = round(float(np.mean(probe)), 3)
    if cover is not None:
        out["classes"] = class_means(sar, cover)
    return out


def mean_of(dicts: list) -> dict | float | list:
    """Element-wise mean of equally shaped nested dicts/lists of numbers (over seeds)."""
    first = dicts[0]
    if isinstance(first, dict):
        return {k: mean_of([d[k] for d in dicts]) for k in first if all(k in d for d in dicts)}
    if isinstance(first, list):
        return [mean_of([d[i] for d in dicts]) for i in range(len(first))]
    return round(float(np.mean(dicts)), 4)


def grey(db: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((db - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def rgb(opt: np.ndarray) -> np.ndarray:
    x = opt[[3, 2, 1]]
    lo, hi = np.percentile(x, 1), np.percentile(x, 99)
    return (np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def picture(rows: list, path: Path) -> None:
    """Rows of (label, optical RGB, {source: sar}) panels: RGB | VV real, old, new | VH real, old, new."""
    side, label_h = 256, 16
    cols = ["optical RGB", "VV real", "VV old", "VV new", "VH real", "VH old", "VH new"]
    canvas = Image.new("RGB", (side * len(cols), (side + label_h) * len(rows) + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, c in enumerate(cols):
        draw.text((j * side + 4, 2), c, fill="black")
    for i, (label, opt_rgb, sars) in enumerate(rows):
        y = label_h + i * (side + label_h)
        draw.text((4, y + 2), label, fill="black")
        tiles = [opt_rgb]
        for pol, (lo, hi) in ((0, (-25.0, 0.0)), (1, (-32.5, -5.0))):
            for src in ("real", "old", "new"):
                t = sars.get(src)
                tiles.append(None if t is None else np.repeat(grey(t[pol], lo, hi)[..., None], 3, -1))
        for j, t in enumerate(tiles):
            if t is None:
                continue
            im = Image.fromarray(t).resize((side, side), Image.NEAREST)
            canvas.paste(im, (j * side, y + label_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sar_standin.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"SEN12MS-CR patches not found at {DATA}")
    t0 = time.perf_counter()

    real = read("s1", *TRIPLET)
    clean = read("s2", *TRIPLET)
    cover = land_cover(clean)
    stand = {"old": [], "new": []}
    seconds = {"old": 0.0, "new": 0.0}
    for seed in range(args.seeds):
        for name, fn in (("old", old_standin), ("new", sar_standin)):
            t = time.perf_counter()
            stand[name].append(fn(clean, np.random.default_rng(seed)).astype(np.float64))
            seconds[name] += time.perf_counter() - t
    triplet = {"real": describe(real, clean, cover=cover)}
    for name, draws in stand.items():
        stats = [describe(s, clean, cover=cover) for s in draws]
        triplet[name] = mean_of(stats)
        triplet[name]["wasserstein_db_to_real"] = {
            pol: round(float(np.mean([wasserstein_distance(f(s).ravel(), f(real).ravel()) for s in draws])), 3)
            for pol, f in (("VV", lambda a: a[0]), ("VH", lambda a: a[1]), ("VV-VH", lambda a: a[0] - a[1]))}
        triplet[name]["seconds_per_patch"] = round(seconds[name] / args.seeds, 3)
    triplet["new_within_real_optical_link"] = bool(
        triplet["new"]["optical"]["max_abs_corr"] <= triplet["real"]["optical"]["max_abs_corr"]
        and triplet["new"]["optical"]["mean_r2"] <= triplet["real"]["optical"]["mean_r2"]
        and triplet["new"]["optical"]["mean_eta2"] <= triplet["real"]["optical"]["mean_eta2"]
        and triplet["new"]["optical"]["mean_probe_r2"] <= triplet["real"]["optical"]["mean_probe_r2"])

    sar_only = read("s1", *SAR_ONLY)
    cloudy = read("s2_cloudy", *SAR_ONLY)
    clear = cloud_shadow_mask(torch.from_numpy(cloudy[None]).float())[0, 0].numpy() == 0
    other = describe(sar_only, cloudy, valid=clear)
    other["optical"]["clear_fraction"] = round(float(clear.mean()), 3)

    summary = {
        "what": "real Sentinel-1 vs the old and new SAR stand-ins made from the same patch's cloud-free Sentinel-2 "
                "(stand-ins averaged over seeds); dB as stored",
        "seeds": args.seeds,
        "load_average": os.getloadavg(),
        "patches": {f"{TRIPLET[0]}_{TRIPLET[1]}_p{TRIPLET[2]}": triplet,
                    f"{SAR_ONLY[0]}_{SAR_ONLY[1]}_p{SAR_ONLY[2]} (real only, optical link on clear pixels)":
                        {"real": other}},
        "hist_edges_db": HIST_EDGES.tolist(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")

    first = {"real": real, "old": stand["old"][0], "new": stand["new"][0]}
    crops = [("139_p839", slice(None), slice(None)), ("139_p839 rows 0-95, cols 0-95 (x2.7)", slice(0, 96),
              slice(0, 96)), ("139_p839 rows 150-245, cols 120-215 (x2.7)", slice(150, 246), slice(120, 216))]
    rows = [(lab, rgb(clean[:, ys, xs]), {k: v[:, ys, xs] for k, v in first.items()}) for lab, ys, xs in crops]
    rows.append(("19_p30 (cloudy optical; no cloud-free target, so no stand-in)", rgb(cloudy), {"real": sar_only}))
    picture(rows, args.out.with_suffix(".png"))

    def line(name: str, d: dict) -> str:
        o = d["optical"]
        return (f"{name:5s} VV {d['VV']['mean']:6.2f}+-{d['VV']['std']:.2f}"
                f"  VH {d['VH']['mean']:6.2f}+-{d['VH']['std']:.2f}"
                f"  VV-VH {d['VV-VH']['mean']:5.2f}+-{d['VV-VH']['std']:.2f}  CV {d['speckle']['VV']['cv_median']:.3f}"
                f"  ENL {d['speckle']['VV']['enl_9x9']:.2f}  lag1 {d['speckle']['VV']['lag1_autocorr']:.2f}"
                f"  max|r| {o['max_abs_corr']:.2f}  mean|r| {o['mean_abs_corr']:.2f}  R2 {o['mean_r2']:.3f}"
                f"  eta2 {o['mean_eta2']:.3f}  probe {o.get('mean_probe_r2', float('nan')):.3f}")

    for name in ("real", "old", "new"):
        print(line(name, triplet[name]))
    print(line("19re", other))
    for name in ("old", "new"):
        print(name, "W1 to real", triplet[name]["wasserstein_db_to_real"], "classes", triplet[name]["classes"])
    print("real classes", triplet["real"]["classes"])
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {summary['seconds']} s")


if __name__ == "__main__":
    main()
