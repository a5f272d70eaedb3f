"""How seamless is DS-RDMPD over a whole scene? A 1024 x 1024 hazy scene restored through the tiling engine against
whole-image sampling of the same scene, same seed.

The tiling engine passes each tile's scene origin to the model, which draws its sampling noise by scene position
(:func:`rsrestore.diffusion.position_noise_fn`), so overlapping tiles see the same noise. What can still differ is what
the network computes over a whole tile rather than the whole scene: stage 1's global-average-pooling channel attention
and stage 2's GroupNorm statistics and attention. Reported, in 8-bit levels (x 255):

* ``max_abs_diff``: the largest |tiled - whole| over the scene;
* ``max_abs_diff_at_borders``: the same within the overlap bands, where neighbouring tiles are blended;
* ``max_seam_step``: the largest change, across a line where tiles meet, of the step between the two pixels on either
  side (tiled step minus whole-image step): what a visible seam would be.

Scene: a 1024 x 1024 crop of ``more_clean/spacenet_samples/AOI_2_Vegas_img0_RGB_crop.tif`` (CC BY-SA 4.0, SpaceNet)
with moderate synthetic haze. Model: the CPU-sized configuration, untrained unless ``--weights`` names a file (a
checkpoint's ``model.safetensors`` is read with the CPU-sized configuration).

    python benchmarks/bench_dsrdmpd_seams.py [--weights runs/dsrdmpd_haze_cpu/stage2/final.safetensors] [--without-origins]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "more_clean" / "spacenet_samples" / "AOI_2_Vegas_img0_RGB_crop.tif"
OUT = ROOT / "benchmarks" / "results" / "dsrdmpd_seams.json"


class _WithoutOrigins(nn.Module):
    """The restorer behind a forward without ``origins``: every tile draws the seed's noise from its own corner."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def hazy_scene(size: int) -> np.ndarray:
    from rsrestore.synthesize import read_crop, synthesize

    clear, _ = read_crop(SCENE, (0, 0, size, size))
    out = synthesize(torch.from_numpy(clear)[None], "haze", torch.Generator().manual_seed(0), preset="moderate")
    return out["input"][0].clamp(0, 1).numpy()


def borders(length: int, tile: int, overlap: int) -> tuple[np.ndarray, list[int]]:
    """A mask of the overlap bands along one axis, and the lines where tiles meet (the middle of each band)."""
    from rsrestore.tiling import tile_starts

    starts = tile_starts(length, tile, overlap)
    band = np.zeros(length, bool)
    lines = []
    for a, b in zip(starts[:-1], starts[1:]):
        end = a + tile
        band[b:end] = True
        lines.append((b + end) // 2)
    return band, lines


def seam_scores(tiled: np.ndarray, whole: np.ndarray, tile: int, overlap: int) -> dict:
    diff = np.abs(tiled - whole)
    band_y, lines_y = borders(whole.shape[1], tile, overlap)
    band_x, lines_x = borders(whole.shape[2], tile, overlap)
    at_borders = max(float(diff[:, band_y].max()) if band_y.any() else 0.0,
                     float(diff[:, :, band_x].max()) if band_x.any() else 0.0)
    steps = [0.0]
    for y in lines_y:
        steps.append(float(np.abs((tiled[:, y] - tiled[:, y - 1]) - (whole[:, y] - whole[:, y - 1])).max()))
    for x in lines_x:
        steps.append(float(np.abs((tiled[:, :, x] - tiled[:, :, x - 1]) - (whole[:, :, x] - whole[:, :, x - 1])).max()))
    return {"max_abs_diff": round(float(diff.max()) * 255, 3),
            "mean_abs_diff": round(float(diff.mean()) * 255, 4),
            "max_abs_diff_at_borders": round(at_borders * 255, 3),
            "max_seam_step": round(max(steps) * 255, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--weights", default=None, help="DS-RDMPD weights (default: the untrained CPU-sized model)")
    parser.add_argument("--without-origins", action="store_true",
                        help="also restore with tiles that do not know their scene position, for comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from dataclasses import asdict

    from rsrestore.models.dsrdmpd import DSRDMPDConfig
    from rsrestore.models.registry import load_model
    from rsrestore.tiling import restore_array

    if not SCENE.is_file():
        print(f"{SCENE} not found: the scene lives in ../shared/data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # weights with a metadata file beside them carry their config; otherwise the CPU-sized one
    has_sidecar = args.weights is not None and Path(args.weights).with_suffix(".json").is_file()
    config = None if has_sidecar else asdict(DSRDMPDConfig.cpu_small())
    model = load_model("dsrdmpd", weights=args.weights, config=config)
    image = hazy_scene(args.size)
    t = time.perf_counter()
    whole = model(torch.from_numpy(image)[None], origins=[(0, 0)])[0].numpy()
    t_whole = time.perf_counter() - t
    t = time.perf_counter()
    tiled = restore_array(model, image, tile=args.tile, overlap=args.overlap, batch_size=1)
    t_tiled = time.perf_counter() - t
    result = {
        "scene": f"{SCENE.relative_to(ROOT.parent)} [0:{args.size}, 0:{args.size}], moderate synthetic haze (seed 0)",
        "model": args.weights or "untrained DSRDMPDConfig.cpu_small() (torch.manual_seed(0))",
        "steps": model.cfg.steps, "seed": model.cfg.seed,
        "tile": args.tile, "overlap": args.overlap, "halo": int(getattr(model, "halo", 16)),
        "units": "8-bit levels (x 255)",
        "with_origins": seam_scores(tiled, whole, args.tile, args.overlap),
        "wall_s": {"whole": round(t_whole, 1), "tiled": round(t_tiled, 1)},
        "load_average": os.getloadavg(),
    }
    if args.without_origins:
        other = restore_array(_WithoutOrigins(model), image, tile=args.tile, overlap=args.overlap, batch_size=1)
        result["without_origins"] = seam_scores(other, whole, args.tile, args.overlap)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
