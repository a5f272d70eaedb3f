"""Sentinel-2 13-band cloud-removal pairs with a SAR stand-in, in the SEN12MS-CR folder layout.

The two cloud-free Sentinel-2 L1C scenes of ``sentinel2/`` in the data root (T33UUB, Europe; T49JGM, Australia) come
as three files per scene: the 10 m bands B2, B3, B4, B8 (600 x 600), the 20 m bands B5, B6, B7, B8A, B11, B12 (300 x
300) and the 60 m bands B1, B9 (100 x 100), uint16 reflectance x 10000. They are stacked into the 13-band SEN12MS-CR
order B1..B12 at 10 m, the coarser bands upsampled bilinearly; every pair is then written with its 20 m and 60 m
bands as blocks of their native pixels, as SEN12MS-CR holds them (`as_sen12mscr_blocks`). B10 (1375 nm cirrus) is
not in the files; over clear land it is nearly dark and tracks the water-vapour band B9, so it is filled as
``B10_FROM_B9 * B9``, the ratio of the median B10 to the median B9 in the cloud-free SEN12MS-CR patch ROIs1970_fall
139_p839 (31 / 1106).

SAR. There is no Sentinel-1 acquisition co-registered with these scenes. The SAR-guided networks need one, so a
stand-in is derived from the clean scene (:func:`rsrestore.physics.sar_standin.sar_standin`). It carries the scene's
structure under the clouds as real SAR does, but it is computed from the optical bands: scores on the held-out set
overstate what weights do with real Sentinel-1. (The bundled cloud weights were trained on an earlier stand-in that
read the optical bands more directly; the pipeline now builds its triplets with the library's.)

Split. Columns 0-433 of each scene are for training, columns 450-599 are held out (a 16-pixel gap, so upsampled
60 m pixels are never shared). Training stores 128 x 128 windows at random places, each under its own cloud
realisation (thin and thick alternating; thick clouds cast shadows), from which the loader takes random 64 x 64 crops
with flips. The held-out set is 5 windows per scene under one thin and one thick realisation each (20 images).
The folders use the official SEN12MS-CR layout, so the ``sen12mscr`` loader, trainer and evaluator read them as they
read the real dataset; beside them, ``{ROI}_mask`` holds each pair's known cloud/shadow mask, which the loader passes
on as ``"mask"`` (training then keeps the clear pixels as they are, as restoring does, and the loss sees only what
the network changed). :func:`build_cloud_triplets` writes them; the training pipeline calls it as the ``prepare``
stage of ``configs/{sarcr,dsen2cr}_synthetic_clouds_cpu.yaml``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from ..physics.clouds import SENTINEL2_GSD_M
from ..physics.haze import SENTINEL2_BANDS
from ..physics.sar_standin import sar_standin

SCENES = {1: "S2A_MSIL1C_20170527_T33UUB", 2: "S2B_MSIL1C_20171022_T49JGM"}
ROI = "ROIs9001_synthetic"

B10_FROM_B9 = 31.0 / 1106.0
TRAIN_COLS = (0, 434)
TEST_COLS = (450, 600)
PATCH = 128
TEST_ROWS = (0, 118, 236, 354, 472)
# What the manifest records of the SAR; a build made with another stand-in is rebuilt by the pipeline.
SAR_RECORD = ("stand-in from the clean scene's land cover (rsrestore.physics.sar_standin, its defaults); "
              "not real Sentinel-1")


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


def load_scene_13(stem: str, folder: Path) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------------------------
# The coarse bands as SEN12MS-CR's files hold them

# SEN12MS-CR's files hold each 20 m and 60 m band at 10 m as its native pixels repeated over 2 x 2 and 6 x 6 blocks
# (Earth Engine's default nearest-neighbour resampling; measured on ROIs1970_fall 139_p839 and ROIs1868_summer 19_p30:
# B1, B9 and B10 change value only across every sixth column and row, the 20 m bands across every second, and the two
# grids are nested). Clouds over these blocks have block edges in those bands. Networks that had only seen smooth
# (bilinear) coarse bands painted those 6-pixel blocks and a 2-pixel hatching over real clouds; the builders below
# write both images of every pair in this form.
BLOCK_FACTORS: dict[int, int] = {i: round(SENTINEL2_GSD_M[b] / 10) for i, b in enumerate(SENTINEL2_BANDS)
                                 if SENTINEL2_GSD_M[b] > 10}
COARSE_BANDS_RECORD = "20 m and 60 m bands as 2x2 and 6x6 blocks of their native pixels, as SEN12MS-CR holds them"


def _block_means(band: np.ndarray, factor: int, phase: tuple[int, int]) -> np.ndarray:
    """``band`` (H, W) averaged over ``factor``-pixel blocks whose edges lie at rows ``phase[0] + k * factor`` and
    columns ``phase[1] + k * factor``, each block's mean repeated over it (blocks cut by the border average the
    pixels inside)."""
    h, w = band.shape
    top, left = phase[0] % factor, phase[1] % factor
    before = ((factor - top) % factor, (factor - left) % factor)
    rows = -(-(h + before[0]) // factor) * factor
    cols = -(-(w + before[1]) // factor) * factor
    pad = ((before[0], rows - h - before[0]), (before[1], cols - w - before[1]))
    shape = (rows // factor, factor, cols // factor, factor)
    total = np.pad(band.astype(np.float64), pad).reshape(shape).sum((1, 3))
    count = np.pad(np.ones_like(band, np.float64), pad).reshape(shape).sum((1, 3))
    means = np.repeat(np.repeat(total / count, factor, 0), factor, 1)
    return means[before[0] : before[0] + h, before[1] : before[1] + w].astype(band.dtype)


def as_sen12mscr_blocks(image: np.ndarray, phase: tuple[int, int]) -> np.ndarray:
    """The 13-band ``image`` (13, H, W) with its 20 m and 60 m bands as blocks of their native pixels
    (`BLOCK_FACTORS`), the 6-pixel grid's edges at rows ``phase[0] + 6k`` and columns ``phase[1] + 6k`` and the
    2-pixel grid nested in it; the 10 m bands as they are."""
    if image.shape[0] != len(SENTINEL2_BANDS):
        raise ValueError(f"need the {len(SENTINEL2_BANDS)} Sentinel-2 bands, got {image.shape[0]}")
    out = image.copy()
    for i, factor in BLOCK_FACTORS.items():
        out[i] = _block_means(image[i], factor, phase)
    return out


def block_phase(band: np.ndarray, factor: int = 6) -> tuple[int, int]:
    """The (row, column) phase of the ``factor``-pixel blocks a band is held in: the one its block means change
    least."""
    phases = [(py, px) for py in range(factor) for px in range(factor)]
    change = [float(np.abs(_block_means(band, factor, p) - band).sum()) for p in phases]
    return phases[int(np.argmin(change))]


def pair_in_blocks(cloudy: np.ndarray, clear: np.ndarray, mask: np.ndarray, phase: tuple[int, int],
                   clear_in_blocks: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pair in SEN12MS-CR's block form: the clear image put in blocks (kept as it is when ``clear_in_blocks``: a
    SEN12MS-CR patch already is), the clouds' change to it averaged over the same blocks, and the mask grown to
    every pixel the two images now differ at (a cloud over part of a block changes all of it in that band)."""
    ground = clear if clear_in_blocks else as_sen12mscr_blocks(clear, phase)
    out = cloudy.copy()  # the 10 m bands as drawn
    for i, factor in BLOCK_FACTORS.items():
        out[i] = np.clip(ground[i] + _block_means(cloudy[i] - clear[i], factor, phase), 0.0, 1.0)
    changed = (out != ground).any(axis=0, keepdims=True)
    return out, ground, np.maximum(mask, changed.astype(mask.dtype))


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
    root: Path, scene: int, patch: int, cloudy: np.ndarray, clear: np.ndarray, sar_db: np.ndarray,
    mask: np.ndarray | None = None, roi: str = ROI,
) -> None:
    """One SEN12MS-CR triplet, and with ``mask`` ((1, H, W), 1 = cloud or shadow) the known cloud/shadow mask in
    ``{ROI}_mask/mask_{scene}/`` (uint8 0/1), which the ``sen12mscr`` loader reads where it exists."""

    def dn(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * 10000.0), 0, 65535).astype(np.uint16)

    _write_tif(root / f"{roi}_s2_cloudy" / f"s2_cloudy_{scene}" / f"{roi}_s2_cloudy_{scene}_p{patch}.tif", dn(cloudy))
    _write_tif(root / f"{roi}_s2" / f"s2_{scene}" / f"{roi}_s2_{scene}_p{patch}.tif", dn(clear))
    _write_tif(root / f"{roi}_s1" / f"s1_{scene}" / f"{roi}_s1_{scene}_p{patch}.tif", sar_db.astype(np.float32))
    if mask is not None:
        _write_tif(root / f"{roi}_mask" / f"mask_{scene}" / f"{roi}_mask_{scene}_p{patch}.tif",
                   (mask > 0).astype(np.uint8))


def _clouds(clear: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The cloudy version of ``clear``, its cloud/shadow mask (1, H, W) (every pixel the clouds changed) and the
    draw's parameters."""
    from rsrestore.physics.clouds import synthesize_clouds

    g = torch.Generator().manual_seed(seed)
    out = synthesize_clouds(torch.from_numpy(clear)[None], g, kind=kind, shadow=True)
    p = out["params"]
    info = {"kind": kind, "seed": seed, "cloud_fraction": p["cloud_fraction"][0],
            "shadow_fraction": p["shadow_fraction"][0], "coverage": p["coverage"][0], "opacity": p["opacity"][0]}
    mask = torch.maximum(out["mask"][0], out["shadow"][0]).numpy()
    return out["input"][0].numpy(), mask, info


def build_cloud_triplets(folder: Path, data: Path, per_scene: int = 160, seed: int = 0, progress: bool = False) -> dict:
    """Write the training and held-out sets of the scenes in ``folder`` under ``data/train`` and ``data/test`` and
    their ``data/manifest.json``; returns the manifest."""
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(SCENES) * (per_scene + 2 * len(TEST_ROWS)), desc="cloud triplets", unit="pair")
    manifest: dict = {
        "format": "SEN12MS-CR layout (ROI, s1 / s2 / s2_cloudy folders)", "roi": ROI, "seed": seed,
        "scenes": {str(k): v for k, v in SCENES.items()}, "source": str(folder.name), "per_scene": per_scene,
        "bands": "B1,B2,B3,B4,B5,B6,B7,B8,B8A,B9,B10,B11,B12 at 10 m",
        "coarse_bands": COARSE_BANDS_RECORD,
        "b10": f"not in the source files; filled as {B10_FROM_B9:.5f} * B9",
        "sar": SAR_RECORD,
        "train_columns": list(TRAIN_COLS), "test_columns": list(TEST_COLS), "patch": PATCH,
        "clouds": "rsrestore.physics.clouds.synthesize_clouds, thin and thick alternating, shadows on",
        "masks": f"{ROI}_mask/mask_<scene>/: uint8, 1 = cloud or cloud shadow (every pixel the clouds changed)",
        "train": [], "test": [],
    }
    rng = np.random.default_rng(seed)
    # The block grid's phase, drawn per pair from its own generator so that the windows and clouds stay as drawn.
    phases = np.random.default_rng([seed, 6])
    for scene, stem in SCENES.items():
        clean = load_scene_13(stem, folder)
        sar = sar_standin(clean, np.random.default_rng(seed * 1000 + scene))
        h = clean.shape[1]
        for k in range(per_scene):
            y = int(rng.integers(0, h - PATCH + 1))
            x = int(rng.integers(TRAIN_COLS[0], TRAIN_COLS[1] - PATCH + 1))
            clear = clean[:, y : y + PATCH, x : x + PATCH]
            kind = ("thin", "thick")[k % 2]
            cloudy, mask, info = _clouds(clear, kind, seed=10_000 * scene + k)
            cloudy, clear, mask = pair_in_blocks(cloudy, clear, mask, tuple(int(v) for v in phases.integers(0, 6, 2)))
            write_triplet(data / "train", scene, k, cloudy, clear, sar[:, y : y + PATCH, x : x + PATCH], mask)
            manifest["train"].append({"scene": scene, "patch": k, "row": y, "col": x, **info})
            if bar is not None:
                bar.update()
        x = TEST_COLS[0] + (TEST_COLS[1] - TEST_COLS[0] - PATCH) // 2
        k = 0
        for y in TEST_ROWS:
            raw = clean[:, y : y + PATCH, x : x + PATCH]
            for kind in ("thin", "thick"):
                cloudy, mask, info = _clouds(raw, kind, seed=900_000 + 1000 * scene + k)
                cloudy, clear, mask = pair_in_blocks(cloudy, raw, mask, tuple(int(v) for v in phases.integers(0, 6, 2)))
                write_triplet(data / "test", scene, k, cloudy, clear, sar[:, y : y + PATCH, x : x + PATCH], mask)
                manifest["test"].append({"scene": scene, "patch": k, "row": y, "col": x, **info})
                k += 1
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    data.mkdir(parents=True, exist_ok=True)
    (data / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------------------------------------------------
# A held-out set with real Sentinel-1


REAL_SAR_ROI = "ROIs9002_realsar"
REAL_SAR_WINDOW = 128
REAL_SAR_DRAWS = 2  # cloud draws of each kind per window


def real_sar_pairs(sen12mscr: Path) -> list[tuple[Path, Path]]:
    """(cloud-free optical, Sentinel-1) files of every SEN12MS-CR patch under ``sen12mscr`` that has both."""
    out = []
    for s2 in sorted(sen12mscr.glob("*_s2/s2_*/*_s2_*.tif")):
        season = s2.parent.parent.name[: -len("_s2")]
        scene = s2.parent.name[len("s2_"):]
        s1 = sen12mscr / f"{season}_s1" / f"s1_{scene}" / s2.name.replace("_s2_", "_s1_")
        if s1.is_file():
            out.append((s2, s1))
    return out


def real_sar_record(sen12mscr: Path, seed: int) -> dict:
    """What a real-SAR set is made from and how: a set whose manifest records the same is current."""
    return {"seed": seed, "roi": REAL_SAR_ROI, "window": REAL_SAR_WINDOW, "draws": REAL_SAR_DRAWS,
            "patches": [s2.name for s2, _ in real_sar_pairs(sen12mscr)], "coarse_bands": COARSE_BANDS_RECORD}


def build_real_sar_set(sen12mscr: Path, out: Path, seed: int = 0) -> dict:
    """Synthetic thin and thick clouds (with shadows) over the cloud-free SEN12MS-CR patches, each with its real
    Sentinel-1 scene, written as SEN12MS-CR triplets (and their cloud/shadow masks) under ``out``: every
    ``REAL_SAR_WINDOW``-pixel window of each patch under ``REAL_SAR_DRAWS`` thin and as many thick cloud draws. The
    cloud models train on the two Sentinel-2 scenes with a SAR stand-in; this set is another place, another season
    and real backscatter.
    Returns the manifest (also written to ``out/manifest.json``)."""
    t0 = time.perf_counter()
    pairs = real_sar_pairs(sen12mscr)
    if not pairs:
        raise FileNotFoundError(f"no cloud-free SEN12MS-CR patch with its Sentinel-1 scene under {sen12mscr}")
    manifest: dict = {
        "format": "SEN12MS-CR layout (ROI, s1 / s2 / s2_cloudy / mask folders)", "roi": REAL_SAR_ROI, "seed": seed,
        "window": REAL_SAR_WINDOW, "sar": "real Sentinel-1 (the patch's own, dB as stored)",
        "clouds": f"rsrestore.physics.clouds.synthesize_clouds, {REAL_SAR_DRAWS} thin and {REAL_SAR_DRAWS} thick draws "
                  "per window, shadows on",
        "record": real_sar_record(sen12mscr, seed), "patches": [], "test": [],
    }
    k = 0
    for scene, (s2, s1) in enumerate(pairs, start=1):
        clean = np.clip(_read(s2), 0.0, 1.0)
        with rasterio.open(s1) as ds:
            sar_db = ds.read().astype(np.float32)
        # the patch's own block grid (its 60 m bands'), so the clear pixels stay as the file has them
        py, px = block_phase(clean[0])
        manifest["patches"].append({"scene": scene, "s2": s2.name, "s1": s1.name, "block_phase": [py, px]})
        w = REAL_SAR_WINDOW
        for y in range(0, clean.shape[1] - w + 1, w):
            for x in range(0, clean.shape[2] - w + 1, w):
                clear = clean[:, y : y + w, x : x + w]
                for kind in ("thin", "thick") * REAL_SAR_DRAWS:
                    cloudy, mask, info = _clouds(clear, kind, seed=700_000 + 1000 * seed + k)
                    cloudy, _, mask = pair_in_blocks(cloudy, clear, mask, ((py - y) % 6, (px - x) % 6),
                                                     clear_in_blocks=True)
                    write_triplet(out, scene, k, cloudy, clear, sar_db[:, y : y + w, x : x + w], mask, REAL_SAR_ROI)
                    manifest["test"].append({"scene": scene, "patch": k, "row": y, "col": x, **info})
                    k += 1
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
