"""Do no harm for the cloud removers: what `sarcr` and `dsen2cr` do to cloud-free Sentinel-2 scenes, and how their
clear-pixel detector (`rsrestore.models.clear_pixels.cloud_mask`) trades clear pixels kept against cloud missed.

Clean scenes, 13 bands, each with a SAR scene:
- the cloud-free SEN12MS-CR patch ROIs1970_fall 139_p839 (256 x 256) with its real Sentinel-1 scene; never trained on;
- ``--crops`` 128 x 128 crops (default 4) of the held-out columns (450-599) of each of the two Sentinel-2 scenes of
  ``sentinel2/`` (the bundled weights trained on their other columns), with the SAR stand-in the training used, their
  20 m and 60 m bands in blocks as SEN12MS-CR holds them (as the training pairs are).

Reported per scene: the share of pixels the detector sends to the network, and the PSNR (13 bands and R, G, B) of
each bundled model's output against its own clean input (infinite when the output is the input; counted as
``CAP_DB`` in the means).

Detector: synthetic thin and thick clouds with shadows (``rsrestore.physics.clouds.synthesize_clouds``, two draws of
each per clean scene, their change in the coarse bands held in the scene's blocks) give a known cloud/shadow mask;
reported are the share of visibly changed pixels (more than 0.02 in some band) the detector misses, and of all the
pixels the clouds changed; the share of the pixels the clouds left untouched that it flags (the clear ground of a
cloudy scene, which the network would then rewrite); and on the two real cloudy SEN12MS-CR patches, the share it
flags. ``--legacy`` also scores the detector with the shadow test's levels measured on the whole image (clouds
included), and as it was before the hysteresis and the shadow gate (cloud score >= 0.1 alone, shadow test on every
scene), and the models restoring with the latter, for comparison.

Usage: python benchmarks/bench_cloud_clean_scenes.py [--crops 4] [--legacy]
       -> benchmarks/results/cloud_clean_scenes.json (--out to write elsewhere)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from rsrestore.losses.carl import cloud_shadow_mask, pixel_cloud_score, shadow_thresholds
from rsrestore.metrics.full_reference import psnr
from rsrestore.models import clear_pixels
from rsrestore.models.clear_pixels import SOFTEN_PX, clear_statistics, cloud_mask
from rsrestore.models.registry import load_model
from rsrestore.physics.clouds import synthesize_clouds
from rsrestore.physics.sar_standin import sar_standin
from rsrestore.raster import sar_to_unit
from rsrestore.tiling import restore_array
from rsrestore.train.cloud_scenes import (
    SCENES,
    TEST_COLS,
    as_sen12mscr_blocks,
    block_phase,
    load_scene_13,
    pair_in_blocks,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SEN12 = DATA / "sen12mscr"
CLEAN_PATCH = SEN12 / "ROIs1970_fall_s2" / "s2_139" / "ROIs1970_fall_s2_139_p839.tif"
CLEAN_SAR = SEN12 / "ROIs1970_fall_s1" / "s1_139" / "ROIs1970_fall_s1_139_p839.tif"
CROP = 128
CAP_DB = 60.0
RGB = [3, 2, 1]


def _read_s2(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return np.clip(ds.read().astype(np.float32) / 10000.0, 0.0, 1.0)


def clean_scenes(crops: int) -> list[dict]:
    """The clean 13-band scenes with their SAR in [0, 1] (see the module docstring)."""
    with rasterio.open(CLEAN_SAR) as ds:
        sar = sar_to_unit(ds.read())
    patch = _read_s2(CLEAN_PATCH)
    out = [{"name": "sen12mscr_139_p839 (real S1)", "image": patch, "sar": sar, "phase": block_phase(patch[0])}]
    rng = np.random.default_rng(0)
    for scene, stem in SCENES.items():
        full = load_scene_13(stem, DATA / "sentinel2")
        held = full[:, :, TEST_COLS[0]:TEST_COLS[1]]
        for i in range(crops):
            y = int(rng.integers(0, held.shape[1] - CROP + 1))
            x = int(rng.integers(0, held.shape[2] - CROP + 1))
            img = np.ascontiguousarray(held[:, y:y + CROP, x:x + CROP])
            sar = sar_to_unit(sar_standin(img, np.random.default_rng(100 * scene + i)))
            out.append({"name": f"{stem} held-out crop {i} (stand-in SAR)", "image": as_sen12mscr_blocks(img, (0, 0)),
                        "sar": sar, "phase": (0, 0)})
    return out


def legacy_mask(x: torch.Tensor) -> torch.Tensor:
    """The detector before the hysteresis and the shadow gate: cloud score >= 0.1 (smoothed or per pixel) or the
    shadow test, on every scene."""
    return torch.maximum(cloud_shadow_mask(x, 0.1), (pixel_cloud_score(x) >= 0.1).float())


def whole_image_shadow_levels(x: torch.Tensor) -> torch.Tensor:
    """The detector with the shadow test's levels measured on the whole image, clouds included (before they were
    measured on the clear ground alone)."""
    stats = clear_statistics(x)
    return cloud_mask(x, stats={**stats, "shadow_levels": shadow_thresholds(x.float())})


def widened(mask: torch.Tensor) -> torch.Tensor:
    """Every pixel the weight of `cloud_weight` touches: the mask widened by twice SOFTEN_PX."""
    return F.max_pool2d(mask, 4 * SOFTEN_PX + 1, stride=1, padding=2 * SOFTEN_PX)


def score(out: np.ndarray, ref: np.ndarray, bands: list[int] | None = None) -> float:
    o, r = torch.from_numpy(out), torch.from_numpy(ref)
    if bands is not None:
        o, r = o[bands], r[bands]
    return min(float(psnr(o[None].clamp(0, 1), r[None].clamp(0, 1))), CAP_DB) if not torch.equal(o, r) else CAP_DB


def detector_rows(scenes: list[dict], detectors: dict) -> dict:
    rows = {}
    real = [_read_s2(p) for p in sorted(SEN12.glob("*_s2_cloudy/*/*.tif"))]
    for name, detect in detectors.items():
        clean_flag = [float(widened(detect(torch.from_numpy(s["image"])[None])).mean()) for s in scenes]
        miss_visible, miss_all, clear_flag = [], [], []
        for i, s in enumerate(scenes):
            clean = torch.from_numpy(s["image"])[None]
            for kind in ("thin", "thick"):
                for draw in range(2):
                    syn = synthesize_clouds(clean, torch.Generator().manual_seed(1000 * i + 10 * draw + len(kind)),
                                            kind=kind, shadow=True)
                    cloudy, _, truth = pair_in_blocks(syn["input"][0].numpy(), s["image"],
                                                      torch.maximum(syn["mask"], syn["shadow"])[0].numpy(),
                                                      s["phase"], clear_in_blocks=True)
                    cloudy, truth = torch.from_numpy(cloudy)[None], torch.from_numpy(truth)[None]
                    visible = ((cloudy - clean).abs().amax(1, keepdim=True) > 0.02).float()
                    kept = 1.0 - widened(detect(cloudy))
                    miss_visible.append(float((kept * visible).sum() / visible.sum().clamp(min=1)))
                    miss_all.append(float((kept * truth).sum() / truth.sum().clamp(min=1)))
                    untouched = (1.0 - truth) * (1.0 - visible)
                    clear_flag.append(float(((1.0 - kept) * untouched).sum() / untouched.sum().clamp(min=1)))
        rows[name] = {
            "clean_flagged_share": {s["name"]: round(v, 4) for s, v in zip(scenes, clean_flag)},
            "synthetic_visible_cloud_missed": {"mean": round(float(np.mean(miss_visible)), 4),
                                               "max": round(float(np.max(miss_visible)), 4)},
            "synthetic_cloud_and_shadow_missed": {"mean": round(float(np.mean(miss_all)), 4),
                                                  "max": round(float(np.max(miss_all)), 4)},
            "synthetic_clear_pixels_flagged": {"mean": round(float(np.mean(clear_flag)), 4),
                                               "max": round(float(np.max(clear_flag)), 4)},
            "real_cloudy_flagged_share": [round(float(widened(detect(torch.from_numpy(r)[None])).mean()), 4)
                                          for r in real],
        }
        print(name, json.dumps(rows[name]), flush=True)
    return rows


def model_rows(scenes: list[dict]) -> dict:
    rows = {}
    for method in ("sarcr", "dsen2cr"):
        model = load_model(method).eval()
        per = {}
        for s in scenes:
            out = restore_array(model, s["image"], sar=s["sar"], tile=512, overlap=32)
            per[s["name"]] = {"psnr_13": round(score(out, s["image"]), 2),
                              "psnr_rgb": round(score(out, s["image"], RGB), 2),
                              "unchanged": bool(np.array_equal(out, s["image"]))}
        rows[method] = {"per_scene": per,
                        "mean_psnr_13": round(float(np.mean([v["psnr_13"] for v in per.values()])), 2),
                        "mean_psnr_rgb": round(float(np.mean([v["psnr_rgb"] for v in per.values()])), 2)}
        print(method, json.dumps(rows[method]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=4, help="held-out crops per Sentinel-2 scene")
    ap.add_argument("--legacy", action="store_true", help="also score the detector before the hysteresis")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cloud_clean_scenes.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    scenes = clean_scenes(args.crops)
    detectors = {"detector": lambda x: cloud_mask(x)}
    if args.legacy:
        detectors["shadow levels from the whole image"] = whole_image_shadow_levels
        detectors["legacy (0.1 alone, shadows everywhere)"] = legacy_mask
    result = {
        "what": __doc__.split("\n\n")[0],
        "cap_db": CAP_DB,
        "detector": detector_rows(scenes, detectors),
        "models": model_rows(scenes),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.legacy:
        # The models restore through clear_pixels.cloud_weight, which looks cloud_mask up in its module.
        clear_pixels.cloud_mask = lambda x, threshold=0.1, stats=None: legacy_mask(x.float())
        result["models_with_legacy_detector"] = model_rows(scenes)
        clear_pixels.cloud_mask = cloud_mask
        result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
