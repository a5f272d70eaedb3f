"""Contact sheets of the synthetic degradations on real scenes, for looking at (not a pass/fail check).

For each kind (haze, dust, cloud) writes ``<out>/look_<kind>.png``: one row per scene (NEON airborne RGB, EuroSAT
Sentinel-2 RGB, NAIP R,G,B,NIR and Sentinel-2 B2,B3,B4,B8, the last two degraded on all their bands and shown as RGB),
columns ``clean | <each preset>`` (clouds: ``clean | thin | thick | thick mask``), plus ``<out>/look_nir.png`` with the
NIR band of the multispectral rows (haze and thin cloud should weigh less there), and ``<out>/look_synthesis.json``
with the drawn parameters and simple statistics.

    python benchmarks/look_synthesis.py [--data ../shared/data] [--out /tmp/look] [--seed 0] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from rsrestore.physics.haze import SENTINEL2_WAVELENGTHS_NM
from rsrestore.synthesize import KINDS, PRESETS, draw_window, image_shape, read_crop, sample_seed, synthesize

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# (label, relative path, 0-based bands, divisor, wavelengths, display gain; -1 = square-root stretch)
SCENES = [
    ("NEON HARV", "neon/HARV/HARV_001.png", None, None, None, 1.0),
    ("NEON SJER", "neon/SJER/SJER_003.png", None, None, None, 1.0),
    ("NEON TEAK", "neon/TEAK/TEAK_043.png", None, None, None, 1.0),
    ("EuroSAT Residential", "eurosat_rgb/Residential/Residential_1008.jpg", None, None, None, 1.0),
    ("EuroSAT River", "eurosat_rgb/River/River_1001.jpg", None, None, None, 1.0),
    ("NAIP RGBN", "naip/m_4709963_se_14_1_20180716.tif", None, None, None, 1.0),
    # im10 holds B2, B3, B4, B8 (blue first); reflectance x 10000 is dark, so it is shown with a square-root stretch.
    ("S2 B2,B3,B4,B8", "sentinel2/S2A_MSIL1C_20170527_T33UUB_im10.tif", None, 10000.0,
     (SENTINEL2_WAVELENGTHS_NM[1], SENTINEL2_WAVELENGTHS_NM[2], SENTINEL2_WAVELENGTHS_NM[3], SENTINEL2_WAVELENGTHS_NM[7]),
     -1.0),
]


def _display(x: np.ndarray, gain: float) -> np.ndarray:
    return np.sqrt(np.clip(x, 0, 1)) if gain < 0 else np.clip(x * gain, 0, 1)


def rgb_of(x: np.ndarray, label: str, gain: float) -> np.ndarray:
    if x.shape[0] == 1:
        img = np.repeat(x, 3, 0)
    elif label.startswith("S2"):
        img = x[[2, 1, 0]]
    else:
        img = x[:3]
    return (_display(img, gain) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def nir_of(x: np.ndarray, gain: float) -> np.ndarray:
    band = _display(x[3], gain)
    return (np.repeat(band[None], 3, 0) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def sheet(rows: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str], tile: int) -> Image.Image:
    pad, head, left = 4, 18, 130
    h = head + len(rows) * (tile + pad)
    w = left + len(col_labels) * (tile + pad)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, c in enumerate(col_labels):
        draw.text((left + j * (tile + pad) + 4, 3), c, fill=(0, 0, 0))
    for i, (row, lab) in enumerate(zip(rows, row_labels)):
        y = head + i * (tile + pad)
        draw.text((4, y + tile // 2 - 6), lab, fill=(0, 0, 0))
        for j, im in enumerate(row):
            canvas.paste(Image.fromarray(im).resize((tile, tile), Image.NEAREST), (left + j * (tile + pad), y))
    return canvas


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/look"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found; pass --data", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    scenes = []
    for s, (label, rel, bands, scale, wl, gain) in enumerate(SCENES):
        path = args.data / rel
        if not path.is_file():
            print(f"skipping {label}: {path} missing", file=sys.stderr)
            continue
        g = torch.Generator().manual_seed(sample_seed(args.seed, s))
        _, h, w = image_shape(path)
        # Small tiles (EuroSAT, 64 px) are used whole rather than mirror-padded, which would repeat them.
        size = min(args.size, h, w)
        clean, _ = read_crop(path, draw_window(g, h, w, size), size, scale, bands)
        scenes.append((label, clean, wl, gain))

    report: dict = {"seed": args.seed, "size": args.size, "kinds": {}}
    nir_rows: list[list[np.ndarray]] = []
    nir_labels: list[str] = []
    nir_cols = ["clean NIR"]
    for kind in KINDS:
        presets = list(PRESETS[kind])
        cols = ["clean"] + presets + (["thick mask"] if kind == "cloud" else [])
        rows, labels, stats = [], [], []
        for s, (label, clean, wl, gain) in enumerate(scenes):
            x = torch.from_numpy(clean)[None]
            row = [rgb_of(clean, label, gain)]
            nir_row = [nir_of(clean, gain)] if clean.shape[0] == 4 else None
            for p, preset in enumerate(presets):
                g = torch.Generator().manual_seed(sample_seed(args.seed, 100 + s, KINDS.index(kind), p))
                out = synthesize(x, kind, g, preset=preset, wavelengths_nm=wl)
                y = out["input"][0].numpy()
                row.append(rgb_of(y, label, gain))
                if nir_row is not None:
                    nir_row.append(nir_of(y, gain))
                entry = {"scene": label, "preset": preset, "params": out["params"],
                         "mean_abs_change": float(np.abs(y - clean).mean()),
                         "change_per_band": np.abs(y - clean).mean(axis=(1, 2)).round(4).tolist()}
                if kind == "dust":
                    entry["clipped_fraction"] = float(((y <= 0) | (y >= 1)).mean())
                stats.append(entry)
                if kind == "cloud" and preset == "thick":
                    m = out["mask"][0, 0].numpy()
                    sh = out["shadow"][0, 0].numpy()
                    vis = np.stack([m, np.maximum(m, 0.5 * sh), m + 0.0 * sh], 0)
                    mask_tile = (vis * 255).astype(np.uint8).transpose(1, 2, 0)
            if kind == "cloud":
                row.append(mask_tile)
            rows.append(row)
            labels.append(label)
            if nir_row is not None:
                nir_rows.append(nir_row)
                nir_labels.append(f"{label} {kind}")
        path = args.out / f"look_{kind}.png"
        sheet(rows, labels, cols, 200).save(path)
        report["kinds"][kind] = stats
        print(f"wrote {path}")
    if nir_rows:
        width = max(len(r) for r in nir_rows)
        nir_rows = [r + [np.full_like(r[0], 255)] * (width - len(r)) for r in nir_rows]
        sheet(nir_rows, nir_labels, nir_cols + ["preset 1", "preset 2", "preset 3"][: width - 1], 160).save(
            args.out / "look_nir.png")
        print(f"wrote {args.out / 'look_nir.png'}")
    (args.out / "look_synthesis.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
