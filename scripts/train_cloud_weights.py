"""Smoke-train the SAR-guided cloud removers (sarcr, dsen2cr) on synthetic clouds over real Sentinel-2 scenes.

What it does, step by step (``all`` runs them in order)::

    python scripts/train_cloud_weights.py prepare     # 13-band scenes, SAR stand-in, clouds -> SEN12MS-CR layout
    python scripts/train_cloud_weights.py train       # configs/{sarcr,dsen2cr}_synthetic_clouds_cpu.yaml
    python scripts/train_cloud_weights.py evaluate    # held-out scores vs the cloudy input; exports winners

Data. The two cloud-free Sentinel-2 L1C scenes in ``../shared/data/sentinel2`` (T33UUB, Europe; T49JGM, Australia)
come as three files per scene: the 10 m bands B2, B3, B4, B8 (600 x 600), the 20 m bands B5, B6, B7, B8A, B11, B12
(300 x 300) and the 60 m bands B1, B9 (100 x 100), uint16 reflectance x 10000. They are stacked into the 13-band
SEN12MS-CR order B1..B12 at 10 m, the coarser bands upsampled bilinearly. B10 (1375 nm cirrus) is not in the files;
over clear land it is nearly dark and tracks the water-vapour band B9, so it is filled as ``B10_FROM_B9 * B9``, the
ratio of the median B10 to the median B9 in the cloud-free SEN12MS-CR patch ROIs1970_fall 139_p839 (31 / 1106).

SAR. There is no Sentinel-1 acquisition co-registered with these scenes. The SAR-guided networks need one, so a
stand-in is derived from the clean scene: VV/VH backscatter in dB from land cover (brighter and more depolarised over
vegetation, dark and specular over water, bright at strong edges as built-up areas are), blurred to S1 GRD's ~20 m
resolution and multiplied by gamma-distributed speckle of 4.4 looks. It carries the scene's structure under the clouds
as real SAR does, but it is computed from the optical bands, so it tells a network more about the optical values than
real backscatter would: scores on this held-out set overstate what the weights do with real Sentinel-1.

Split. Columns 0-433 of each scene are for training, columns 450-599 are held out (a 16-pixel gap, so upsampled
60 m pixels are never shared). Training stores 128 x 128 windows at random places, each under its own cloud
realisation (thin and thick alternating; thick clouds cast shadows), from which the loader takes random 64 x 64 crops
with flips. The held-out set is 5 windows per scene under one thin and one thick realisation each (20 images); the
trainer validates on it for monitoring only, and the final weights (not the best-scoring ones) are exported.

The output folders use the official SEN12MS-CR layout, so the project's ``sen12mscr`` loader, trainer and evaluator
read them as they read the real dataset. Weights are exported to ``src/rsrestore/weights`` only when their mean PSNR,
SSIM, MAE and SAM on the held-out set (all 13 bands) all beat the cloudy input's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
SENTINEL2 = ROOT.parent / "shared" / "data" / "sentinel2"
REAL_SEN12MSCR = ROOT.parent / "shared" / "data" / "sen12mscr"
SCENES = {1: "S2A_MSIL1C_20170527_T33UUB", 2: "S2B_MSIL1C_20171022_T49JGM"}
ROI = "ROIs9001_synthetic"
DEFAULT_DATA = ROOT / "runs" / "cloud_synth"
WEIGHTS_DIR = ROOT / "src" / "rsrestore" / "weights"
MODELS = ("sarcr", "dsen2cr")

B10_FROM_B9 = 31.0 / 1106.0
TRAIN_COLS = (0, 434)
TEST_COLS = (450, 600)
PATCH = 128
TEST_ROWS = (0, 118, 236, 354, 472)
# Sentinel-1 GRD IW: ~20 m resolution on 10 m pixels, equivalent number of looks ~4.4 (ESA product specification).
SAR_BLUR_SIGMA_PX = 1.0
SAR_LOOKS = 4.4


# --------------------------------------------------------------------------------------------------------------------
# Scenes


def _read(path: Path) -> np.ndarray:
    from rsrestore.raster import read_raster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the scenes are known to carry no georeferencing
        # reflectance x 10000, read as restore reads a uint16 GeoTIFF (the scale stated, not left to the default)
        return read_raster(path, scale=10000.0)[0]


def _upsample(bands: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(bands)[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


def load_scene_13(stem: str, folder: Path = SENTINEL2) -> np.ndarray:
    """The 13 Sentinel-2 bands B1..B12 (SEN12MS-CR order) at 10 m, reflectance in [0, 1], shape (13, 600, 600)."""
    b10 = _read(folder / f"{stem}_im10.tif")  # B2 B3 B4 B8
    b20 = _read(folder / f"{stem}_im20.tif")  # B5 B6 B7 B8A B11 B12
    b60 = _read(folder / f"{stem}_im60.tif")  # B1 B9
    size = b10.shape[1:]
    b20 = _upsample(b20, size)
    b60 = _upsample(b60, size)
    out = np.stack([
        b60[0], b10[0], b10[1], b10[2], b20[0], b20[1], b20[2], b10[3], b20[3], b60[1],
        B10_FROM_B9 * b60[1], b20[4], b20[5],
    ])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma, mode="reflect")


def sar_standin(clean13: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Sentinel-1-like (VV, VH) backscatter stand-in in dB, (2, H, W) float32, derived from a clean 13-band scene.

    Mean backscatter follows typical C-band values per land cover (Ulaby & Long, Microwave Radar and Radiometric
    Remote Sensing, 2014, ch. 11-13): bare soil around -14 dB VV, vegetation up to ~-9 dB VV with VH about 6 dB
    below VV (volume scattering depolarises), open water near -22 dB VV / -29 dB VH (specular reflection away from
    the sensor), and strong edges up to ~6 dB brighter (double bounce on built structures). Speckle is fully
    developed: intensity times Gamma(L, 1/L).
    """
    green, red, nir, swir = clean13[2], clean13[3], clean13[7], clean13[11]
    ndvi = np.clip((nir - red) / (nir + red + 1e-6), 0.0, 1.0)
    mndwi = (green - swir) / (green + swir + 1e-6)
    water = np.clip((mndwi - 0.1) / 0.2, 0.0, 1.0)
    smooth = _gaussian(nir, 1.0)
    gy, gx = np.gradient(smooth)
    edge = np.hypot(gx, gy)
    edge = np.clip(edge / (np.percentile(edge, 99) + 1e-6), 0.0, 1.0)
    vv = -14.0 + 5.0 * ndvi + 6.0 * edge
    vh = vv - 8.0 + 2.0 * ndvi
    vv = (1 - water) * vv + water * -22.0
    vh = (1 - water) * vh + water * -29.0
    out = []
    for db in (vv, vh):
        power = _gaussian(10.0 ** (db / 10.0), SAR_BLUR_SIGMA_PX)
        speckle = rng.gamma(SAR_LOOKS, 1.0 / SAR_LOOKS, size=power.shape)
        out.append(10.0 * np.log10(np.maximum(power * speckle, 1e-6)))
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Writing SEN12MS-CR-style triplets


def _write_tif(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = data.shape
    # 10 m pixels on an arbitrary local origin and no CRS: the source scenes carry no georeferencing.
    profile = dict(driver="GTiff", dtype=str(data.dtype), count=c, height=h, width=w, compress="deflate",
                   transform=from_origin(0.0, 0.0, 10.0, 10.0))
    if data.dtype == np.float32:
        profile["predictor"] = 3
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


def write_triplet(
    root: Path, scene: int, patch: int, cloudy: np.ndarray, clear: np.ndarray, sar_db: np.ndarray
) -> None:
    def dn(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * 10000.0), 0, 65535).astype(np.uint16)

    _write_tif(root / f"{ROI}_s2_cloudy" / f"s2_cloudy_{scene}" / f"{ROI}_s2_cloudy_{scene}_p{patch}.tif", dn(cloudy))
    _write_tif(root / f"{ROI}_s2" / f"s2_{scene}" / f"{ROI}_s2_{scene}_p{patch}.tif", dn(clear))
    _write_tif(root / f"{ROI}_s1" / f"s1_{scene}" / f"{ROI}_s1_{scene}_p{patch}.tif", sar_db.astype(np.float32))


def _clouds(clear: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, dict]:
    from rsrestore.physics.clouds import synthesize_clouds

    g = torch.Generator().manual_seed(seed)
    out = synthesize_clouds(torch.from_numpy(clear)[None], g, kind=kind, shadow=True)
    p = out["params"]
    info = {"kind": kind, "seed": seed, "cloud_fraction": p["cloud_fraction"][0],
            "shadow_fraction": p["shadow_fraction"][0], "coverage": p["coverage"][0], "opacity": p["opacity"][0]}
    return out["input"][0].numpy(), info


def prepare(data: Path, per_scene: int = 160, seed: int = 0, folder: Path = SENTINEL2) -> dict:
    """Write the training and held-out sets under ``data/train`` and ``data/test``; returns the manifest."""
    t0 = time.perf_counter()
    manifest: dict = {
        "format": "SEN12MS-CR layout (ROI, s1 / s2 / s2_cloudy folders)", "roi": ROI, "seed": seed,
        "scenes": {str(k): v for k, v in SCENES.items()}, "source": str(folder.name),
        "bands": "B1,B2,B3,B4,B5,B6,B7,B8,B8A,B9,B10,B11,B12 at 10 m; 20 m and 60 m bands upsampled bilinearly",
        "b10": f"not in the source files; filled as {B10_FROM_B9:.5f} * B9",
        "sar": "stand-in derived from the clean scene (land-cover backscatter, 20 m blur, gamma speckle of "
               f"{SAR_LOOKS} looks); not real Sentinel-1",
        "train_columns": list(TRAIN_COLS), "test_columns": list(TEST_COLS), "patch": PATCH,
        "clouds": "rsrestore.physics.clouds.synthesize_clouds, thin and thick alternating, shadows on",
        "train": [], "test": [],
    }
    rng = np.random.default_rng(seed)
    for scene, stem in SCENES.items():
        clean = load_scene_13(stem, folder)
        sar = sar_standin(clean, np.random.default_rng(seed * 1000 + scene))
        h = clean.shape[1]
        for k in range(per_scene):
            y = int(rng.integers(0, h - PATCH + 1))
            x = int(rng.integers(TRAIN_COLS[0], TRAIN_COLS[1] - PATCH + 1))
            clear = clean[:, y : y + PATCH, x : x + PATCH]
            kind = ("thin", "thick")[k % 2]
            cloudy, info = _clouds(clear, kind, seed=10_000 * scene + k)
            write_triplet(data / "train", scene, k, cloudy, clear, sar[:, y : y + PATCH, x : x + PATCH])
            manifest["train"].append({"scene": scene, "patch": k, "row": y, "col": x, **info})
        x = TEST_COLS[0] + (TEST_COLS[1] - TEST_COLS[0] - PATCH) // 2
        k = 0
        for y in TEST_ROWS:
            clear = clean[:, y : y + PATCH, x : x + PATCH]
            for kind in ("thin", "thick"):
                cloudy, info = _clouds(clear, kind, seed=900_000 + 1000 * scene + k)
                write_triplet(data / "test", scene, k, cloudy, clear, sar[:, y : y + PATCH, x : x + PATCH])
                manifest["test"].append({"scene": scene, "patch": k, "row": y, "col": x, **info})
                k += 1
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    data.mkdir(parents=True, exist_ok=True)
    (data / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------------------------------------------------
# Training, evaluation, export


def config_path(model: str) -> Path:
    return ROOT / "configs" / f"{model}_synthetic_clouds_cpu.yaml"


def train_model(model: str, overrides: list[str], threads: int) -> dict:
    from rsrestore.train import train_from_config

    torch.set_num_threads(threads)
    result = train_from_config(config_path(model), overrides)
    return {"model": model, "steps": result.step, "finished": result.finished, "wall_time_s": result.wall_time_s,
            "out_dir": str(result.out_dir), "val": result.val_scores}


def run_dir(model: str, overrides: list[str]) -> Path:
    from rsrestore.train import load_config

    return Path(load_config(config_path(model), overrides).run.out_dir)


METRICS = ("psnr", "ssim", "mae", "sam")


def better_sign(metric: str) -> float:
    """+1 where higher is better (psnr, ssim and their _rgb), -1 where lower is (mae, sam, ciede2000, ...)."""
    from rsrestore.evaluate import HIGHER_IS_BETTER

    return 1.0 if HIGHER_IS_BETTER.get(metric.removesuffix("_rgb"), False) else -1.0


def beats_input(method_mean: dict, input_mean: dict) -> bool:
    """True when every metric in METRICS (over all bands) is strictly better than the cloudy input's."""
    return all(better_sign(m) * (method_mean[m] - input_mean[m]) > 0 for m in METRICS)


def sar_ablation(model_name: str, weights: str, test_root: Path) -> dict:
    """Held-out scores when every image gets the SAR of another place (image i + n/2): how much the network leans on
    the SAR stand-in rather than on the visible optical pixels."""
    from rsrestore.data import build_dataset
    from rsrestore.metrics.full_reference import compute_metrics, mean_metrics
    from rsrestore.models.registry import load_model

    model = load_model(model_name, weights=weights)
    ds = build_dataset("sen12mscr", test_root)
    n = len(ds)
    scores = []
    with torch.inference_mode():
        for i in range(n):
            item, other = ds[i], ds[(i + n // 2) % n]
            pred = model(item["input"][None], sar=other["sar"][None]).clamp(0.0, 1.0)
            scores.append(compute_metrics(pred.float(), item["target"][None], names=METRICS))
    return mean_metrics(scores)


def evaluate_and_export(data: Path, overrides: dict[str, list[str]], out: Path, export: bool) -> dict:
    from rsrestore.evaluate import evaluate, format_table
    from rsrestore.train import export_weights

    runs = {m: run_dir(m, overrides.get(m, [])) for m in MODELS}
    ready = [m for m in MODELS if (runs[m] / "final.safetensors").exists()]
    weights = {m: str(runs[m] / "final.safetensors") for m in ready}
    results = evaluate(["input", *ready], "sen12mscr", data / "test", out, weights=weights, device="cpu",
                       tile=512, overlap=32, pictures=4, progress=False)
    table = format_table(results)
    means = {m: r.mean for m, r in results.items()}
    summary = {"table": table, "means": means, "exported": []}
    real = None
    if REAL_SEN12MSCR.is_dir():
        # The one real SEN12MS-CR triplet at hand (a test-split scene): real clouds, real Sentinel-1.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its second patch has no target and is skipped
            real_results = evaluate(["input", *ready], "sen12mscr", REAL_SEN12MSCR, out / "real_sen12mscr",
                                    weights=weights, device="cpu", pictures=1, progress=False)
        real = {m: r.mean for m, r in real_results.items()}
        summary["real_sen12mscr"] = {"table": format_table(real_results), "means": real}
    for m in ready:
        win = beats_input(means[m], means["input"])
        summary[m] = {"beats_input": win, "sar_of_another_place": sar_ablation(m, weights[m], data / "test")}
        if not (win and export):
            continue
        name = f"{m}_cloud_s2"
        dst = export_weights(runs[m], WEIGHTS_DIR, name)
        meta_path = dst.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        manifest = json.loads((data / "manifest.json").read_text())
        meta["held_out"] = {
            "data": "synthetic clouds over held-out columns 450-599 of both Sentinel-2 scenes, 20 images of 128x128",
            "n": len(results[m].per_image),
            "scores": means[m],
            "cloudy_input_scores": means["input"],
            "scores_with_sar_of_another_place": summary[m]["sar_of_another_place"],
            "not_better_than_input": [k for k, v in means[m].items()
                                      if (v - means["input"][k]) * better_sign(k) <= 0],
            "conventions": "PSNR dB on reflectance/10000 in [0,1] (data range 1); SSIM Gaussian window 11 sigma 1.5; "
            "MAE on [0,1]; SAM degrees; all 13 bands, and *_rgb over B4,B3,B2",
        }
        meta["trained_on"] = {
            "dataset": meta.get("trained_on"),
            "scenes": manifest["scenes"], "bands": manifest["bands"], "b10": manifest["b10"], "sar": manifest["sar"],
            "clouds": manifest["clouds"], "train_columns": manifest["train_columns"], "samples": len(manifest["train"]),
        }
        if real is not None:
            meta["real_sen12mscr_check"] = {
                "data": "SEN12MS-CR ROIs1970_fall 139_p839 (test split), real clouds and real Sentinel-1, 1 image",
                "scores": real[m],
                "cloudy_input_scores": real["input"],
            }
        meta["limits"] = (
            "CPU smoke training on synthetic clouds over two Sentinel-2 scenes with a SAR stand-in derived from the "
            "optical scene. They remove synthetic thin and thick clouds on held-out parts of those scenes; they were "
            "never shown real clouds or real Sentinel-1, do not remove real thick clouds (see real_sen12mscr_check) "
            "and will not match the papers on SEN12MS-CR. They are a working example of the pipeline and a starting "
            "point for fine-tuning; real training needs the full SEN12MS-CR dataset and a GPU "
            "(configs/" + m + "_sen12mscr.yaml)."
        )
        meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        summary["exported"].append(str(dst))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "train", "evaluate", "all"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder for the generated sets")
    parser.add_argument("--per-scene", type=int, default=160, help="training windows per scene")
    parser.add_argument("--models", default=",".join(MODELS), help="models to train (comma-separated)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="trainer override for one model, e.g. sarcr:run.steps=100 (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training")
    parser.add_argument("--report", type=Path, default=ROOT / "runs" / "cloud_synth_report")
    parser.add_argument("--no-export", action="store_true", help="evaluate only; never write weights")
    args = parser.parse_args(argv)

    overrides: dict[str, list[str]] = {}
    for item in args.overrides:
        model, sep, rest = item.partition(":")
        if not sep or model not in MODELS:
            parser.error(f"--set needs MODEL:KEY=VALUE with MODEL in {MODELS}, got {item!r}")
        overrides.setdefault(model, []).append(rest)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    if args.step in ("prepare", "all"):
        if not SENTINEL2.is_dir():
            print(f"error: the Sentinel-2 scenes are not at {SENTINEL2}", file=sys.stderr)
            return 2
        m = prepare(args.data, per_scene=args.per_scene)
        print(f"wrote {len(m['train'])} training and {len(m['test'])} held-out triplets to {args.data} "
              f"in {m['seconds']} s")
    if args.step in ("train", "all"):
        for model in models:
            r = train_model(model, overrides.get(model, []), args.threads)
            print(json.dumps(r, default=str))
    if args.step in ("evaluate", "all"):
        s = evaluate_and_export(args.data, overrides, args.report, export=not args.no_export)
        print(s["table"])
        if "real_sen12mscr" in s:
            print("real SEN12MS-CR patch 139_p839 (real clouds, real Sentinel-1):")
            print(s["real_sen12mscr"]["table"])
        for m in MODELS:
            if m in s:
                print(f"{m}: {'beats' if s[m]['beats_input'] else 'does NOT beat'} the cloudy input; with the SAR "
                      f"of another place: {json.dumps(s[m]['sar_of_another_place'])}")
        print("exported:", ", ".join(s["exported"]) or "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
