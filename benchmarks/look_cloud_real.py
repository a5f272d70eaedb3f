"""The cloud models on the real cloudy SEN12MS-CR patches, for looking at: writes
``benchmarks/results/cloud_real_patches.png`` and ``cloud_real_patches.json``.

Rows: the summer patch ROIs1868 19_p30 (no cloud-free reference ships with it) and the fall patch ROIs1970 139_p839
(with its cloud-free reference, another date). Columns: the cloudy input, the reference, then each model (bundled
weights, or others given as ``NAME=METHOD:PATH``), as R, G, B = B4, B3, B2 with one fixed stretch (reflectance 0-0.3),
so colours compare across columns. The JSON gives per patch and model the PSNR / SSIM / CIEDE2000 / SAM against the
reference where there is one, the mean absolute change from the input, the share of pixels left bit for bit, and
the gradient energy of the output over the input's (``rsrestore.metrics.detail``), and whether the blocks of the
patch's 60 m bands show in the output's R, G, B where it changed the input (``block_edge_contrast`` on the 6-pixel
grid that B1 is held in: about 1 when they do not; the input's over all its pixels).

    python benchmarks/look_cloud_real.py [--models sarcr dsen2cr] [--weights NAME=METHOD:PATH ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image, ImageDraw

from rsrestore.metrics.detail import block_edge_contrast, gradient_energy_ratio
from rsrestore.metrics.full_reference import compute_metrics
from rsrestore.models.registry import load_model
from rsrestore.raster import read_raster, sar_to_unit
from rsrestore.tiling import restore_array
from rsrestore.train.cloud_scenes import block_phase

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sen12mscr"
PATCHES = {
    "19_p30": ("ROIs1868_summer_s2_cloudy/s2_cloudy_19/ROIs1868_summer_s2_cloudy_19_p30.tif",
               "ROIs1868_summer_s1/s1_19/ROIs1868_summer_s1_19_p30.tif", None),
    "139_p839": ("ROIs1970_fall_s2_cloudy/s2_cloudy_139/ROIs1970_fall_s2_cloudy_139_p839.tif",
                 "ROIs1970_fall_s1/s1_139/ROIs1970_fall_s1_139_p839.tif",
                 "ROIs1970_fall_s2/s2_139/ROIs1970_fall_s2_139_p839.tif"),
}
STRETCH = 0.3  # reflectance shown as white


def read_s2(path: Path) -> np.ndarray:
    """Reflectance in [0, 1] as `rsrestore restore` reads a 13-band SEN12MS-CR GeoTIFF (DN / 10000)."""
    return read_raster(path, scale=10000.0)[0]


def to_rgb(a: np.ndarray) -> np.ndarray:
    rgb = np.clip(a[[3, 2, 1]].transpose(1, 2, 0) / STRETCH, 0.0, 1.0) ** (1 / 1.2)
    return (rgb * 255).astype(np.uint8)


def scores(out: np.ndarray, cloudy: np.ndarray, ref: np.ndarray | None) -> dict:
    o, c = torch.from_numpy(out)[None], torch.from_numpy(cloudy)[None]
    changed = (out != cloudy).any(0)
    if not changed.any():  # the input itself: its contrast over all its pixels
        changed[:] = True
    row = {"mean_abs_change": float(np.abs(out - cloudy).mean()),
           "unchanged_share": float((out == cloudy).all(0).mean()),
           "gradient_ratio_input": float(gradient_energy_ratio(o, c)[0]),
           "block_edge_contrast_60m": float(block_edge_contrast(o[:, [3, 2, 1]], 6, block_phase(cloudy[0]),
                                                                torch.from_numpy(changed)[None, None])[0])}
    if ref is not None:
        m = compute_metrics(o, torch.from_numpy(ref)[None], names=("psnr", "ssim", "ciede2000", "sam"),
                            rgb_bands=(3, 2, 1))
        row.update({k: float(v[0]) for k, v in m.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["sarcr", "dsen2cr"], help="bundled weights of these methods")
    parser.add_argument("--weights", nargs="*", default=[], help="NAME=METHOD:PATH, more columns")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cloud_real_patches")
    args = parser.parse_args()
    models = {name: load_model(name) for name in args.models}
    for item in args.weights:
        name, spec = item.split("=", 1)
        method, path = spec.split(":", 1)
        models[name] = load_model(method, weights=path)
    report, rows = {}, []
    for patch, (s2, s1, clean) in PATCHES.items():
        cloudy = read_s2(DATA / s2)
        with rasterio.open(DATA / s1) as ds:
            sar = sar_to_unit(ds.read())
        ref = read_s2(DATA / clean) if clean else None
        report[patch] = {"input": scores(cloudy, cloudy, ref)}
        tiles = [("cloudy input", cloudy), ("reference" if ref is not None else "(no reference)", ref)]
        for name, model in models.items():
            with torch.inference_mode():
                out = np.clip(restore_array(model, cloudy, sar=sar, tile=512, overlap=32), 0.0, 1.0)
            report[patch][name] = scores(out, cloudy, ref)
            tiles.append((name, out))
        row = []
        for label, a in tiles:
            img = Image.fromarray(to_rgb(a) if a is not None else np.zeros((*cloudy.shape[1:], 3), np.uint8))
            ImageDraw.Draw(img).text((4, 2), f"{patch}: {label}", fill=(255, 255, 0))
            row.append(np.asarray(img))
        rows.append(np.concatenate(row, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the sheet small enough for the repository (the other look_* sheets do the same).
    sheet = Image.fromarray(np.concatenate(rows, 0)).quantize(256, method=Image.Quantize.MEDIANCUT)
    sheet.save(args.out.with_suffix(".png"), optimize=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"stretch": f"R, G, B = B4, B3, B2, reflectance 0-{STRETCH} shown as 0-255", "patches": report}, indent=2))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
