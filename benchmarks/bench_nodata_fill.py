"""The frame a learned model draws along the valid-data boundary, with invalid pixels filled by the scene's mean colour
(the former fill) and by the nearest valid pixel (`rsrestore.tiling.fill_invalid`), on the real Landsat-7 scene with
its nodata collar (writes benchmarks/results/nodata_fill.json and a crop nodata_fill.png).

Frame: how much more a model changes the brightness of the valid pixels within k px of the boundary (k = 5 and 20) than
of those 21-40 px in (output minus input, grey = mean of the bands): 0 when it treats the boundary band like the scene
behind it. The JSON also holds the change by distance (1-40 px), the frame's profile. A dust method restores the
scene under a uniform yellow dust veil (the AOSR-Net scattering model, `dust_forward`), a haze method the scene as it is
(thin cloud and haze over sea and islands).

Usage: python benchmarks/bench_nodata_fill.py [--methods aosrnet rsdehamba] [--out benchmarks/results/nodata_fill.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from rsrestore import tiling
from rsrestore.models.registry import get_spec, load_model
from rsrestore.physics.sanddust import dust_forward
from rsrestore.raster import read_raster

SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "landsat7" / "RGB.byte.tif"
BAND = 20  # px: the frame's width is 15-20 px
DUST_AIRLIGHT, DUST_TRANSMISSION = (0.85, 0.65, 0.4), 0.6
CROP = (slice(340, 468), slice(20, 148))  # rows, columns of the picture: the collar's left edge over the sea


def mean_fill(image: np.ndarray, mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The former fill: every invalid pixel holds the scene's mean valid colour."""
    return np.where(mask[None], image, fallback.astype(np.float32)[:, None, None])


def change(out: np.ndarray, image: np.ndarray, depth: np.ndarray, near: float, far: float) -> float:
    """Mean grey-level change (output minus input) of the valid pixels `near` < depth <= `far` px from the boundary."""
    band = (depth > near) & (depth <= far)
    return float((out.mean(axis=0)[band] - image.mean(axis=0)[band]).mean())


def frame(out: np.ndarray, image: np.ndarray, depth: np.ndarray) -> dict:
    inner = change(out, image, depth, BAND, 2 * BAND)
    return {f"frame_1_{k}px": round(change(out, image, depth, 0, k) - inner, 4) for k in (5, BAND)} | {
        "change_by_distance": [round(change(out, image, depth, d - 0.5, d + 0.5), 4) for d in range(1, 2 * BAND + 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["aosrnet", "rsdehamba"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "nodata_fill.json")
    args = parser.parse_args()
    if not SCENE.exists():
        raise SystemExit(f"{SCENE} is absent (the shared data folder)")
    clean, mask, _ = read_raster(SCENE)
    depth = ndimage.distance_transform_edt(mask)  # distance of each valid pixel to the nearest invalid one
    result = {"scene": "landsat7/RGB.byte.tif", "size": list(clean.shape[1:]),
              "invalid_share": round(float(1 - mask.mean()), 3), "band_px": BAND,
              "methods": {}}
    dusty = dust_forward(torch.from_numpy(clean)[None], torch.tensor(DUST_TRANSMISSION),
                         torch.tensor([DUST_AIRLIGHT]))[0].clamp(0, 1).numpy()
    dusty = np.where(mask[None], dusty, 0).astype(np.float32)
    picture_rows = []
    for name in args.methods:
        model = load_model(name)
        image = dusty if get_spec(name).task == "dust" else clean
        crops = [image[:, CROP[0], CROP[1]]]
        rows, outputs = {"input": "under a dust veil" if image is dusty else "as it is"}, {}
        for fill, fn in (("mean", mean_fill), ("nearest", tiling.fill_invalid)):
            t0 = time.perf_counter()
            with mock.patch.object(tiling, "fill_invalid", fn):
                out = tiling.restore_array(model, image, mask=mask)
            rows[fill] = frame(out, image, depth) | {"seconds": round(time.perf_counter() - t0, 1)}
            crops.append(np.where(mask[None], out, 0)[:, CROP[0], CROP[1]])
            outputs[fill] = out
            print(name, fill, rows[fill]["frame_1_5px"], rows[fill]["frame_1_20px"], flush=True)
        # How much the fill moves the output, by distance: what the former fill did to the boundary band.
        moved = np.abs(outputs["mean"] - outputs["nearest"]).mean(axis=0)
        rows["fills_differ_by_distance"] = [round(float(moved[np.round(depth) == d].mean()), 4)
                                            for d in range(1, 2 * BAND + 1)]
        result["methods"][name] = rows
        picture_rows.append(np.concatenate([np.pad(c, ((0, 0), (0, 4), (0, 4)), constant_values=1) for c in crops],
                                           axis=2))
    # The picture: a row per method (input, mean fill, nearest-valid fill), 2x enlarged.
    strip = np.concatenate(picture_rows, axis=1)
    picture = Image.fromarray((np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
    picture = picture.resize((picture.width * 2, picture.height * 2), Image.NEAREST)
    picture.save(args.out.with_suffix(".png"), optimize=True)
    result["picture"] = {"file": args.out.with_suffix(".png").name, "rows": [CROP[0].start, CROP[0].stop],
                         "columns": [CROP[1].start, CROP[1].stop],
                         "panels": [p for m in args.methods for p in (f"{m} input", f"{m} mean fill",
                                                                       f"{m} nearest fill")]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
