"""How seamless is DS-RDMPD over a whole scene? A 1024 x 1024 hazy scene restored through the tiling engine against
whole-image sampling of the same scene, same seed.

The tiling engine passes each tile's scene origin to the model, which draws its sampling noise by scene position
(:func:`rsrestore.diffusion.position_noise_fn`), so overlapping tiles see the same noise, and the scene's statistics
(:meth:`DSRDMPD.scene_statistics`: what the channel attentions, GroupNorm and the attentions compute over their whole
input, recorded once on the scene downsampled to 512 x 512 and replayed on every tile), so tiles agree on those too.
Whole-image sampling of a scene larger than 512 uses the same downsampled statistics; what is left between the two
is what a tile's border cuts from the convolutions' view, which the halo (``--halo``) pays for. Reported, in 8-bit
levels (x 255):

* ``max_abs_diff``: the largest |tiled - whole| over the scene;
* ``max_abs_diff_at_borders``: the same within the overlap bands, where neighbouring tiles are blended;
* ``max_seam_step``: the largest change, across a line where tiles meet, of the step between the two pixels on either
  side (tiled step minus whole-image step): what a visible seam would be.

With ``--without-statistics`` the tiles also run on their own statistics (what the engine did before), and with
``--exact`` the whole-image result with downsampled statistics is compared with the one on the image's own, exact
statistics (what the downsampling costs, everywhere alike). ``dsrdmpd_seams_diff.png`` shows |tiled - whole| (the
largest band, x 16, white = 16 levels or more).

Scene: a 1024 x 1024 crop of ``more_clean/spacenet_samples/AOI_2_Vegas_img0_RGB_crop.tif`` (CC BY-SA 4.0, SpaceNet)
with moderate synthetic haze. Model: the CPU-sized configuration, untrained unless ``--weights`` names a file (a
checkpoint's ``model.safetensors`` is read with the CPU-sized configuration).

    python benchmarks/bench_dsrdmpd_seams.py [--weights runs/dsrdmpd_haze_cpu/stage2_600/final.safetensors]
        [--halo 16 --halo 32] [--exact] [--without-statistics] [--without-origins]
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
DIFF_PNG = OUT.with_name("dsrdmpd_seams_diff.png")
DIFF_GAIN = 16  # the difference picture shows levels x 16


class _WithoutOrigins(nn.Module):
    """The restorer behind a forward without ``origins``: every tile draws the seed's noise from its own corner."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.halo = model, model.halo

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _WithoutStatistics(nn.Module):
    """The restorer without ``scene_statistics``: every tile computes its layers' statistics over itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.halo = model, model.halo

    def forward(self, x: Tensor, origins=None) -> Tensor:
        return self.model(x, origins=origins)


def save_difference(tiled: np.ndarray, whole: np.ndarray, path: Path) -> None:
    from PIL import Image

    levels = np.abs(tiled - whole).max(axis=0) * 255
    Image.fromarray(np.clip(levels * DIFF_GAIN, 0, 255).astype(np.uint8)).save(path)


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
    parser.add_argument("--halo", type=int, action="append",
                        help="context each tile is read with (repeat to compare; default: the model's)")
    parser.add_argument("--exact", action="store_true",
                        help="also compare whole-image sampling with downsampled statistics against exact statistics")
    parser.add_argument("--without-statistics", action="store_true",
                        help="also restore with tiles that compute their own statistics, for comparison")
    parser.add_argument("--without-origins", action="store_true",
                        help="also restore with tiles that do not know their scene position, for comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from dataclasses import asdict

    from rsrestore.models.dsrdmpd import DSRDMPDConfig, shared_statistics
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

    def tiled_restore(net: nn.Module) -> np.ndarray:
        return restore_array(net, image, tile=args.tile, overlap=args.overlap, batch_size=1)

    t = time.perf_counter()
    whole = model(torch.from_numpy(image)[None], origins=[(0, 0)])[0].numpy()
    wall = {"whole": round(time.perf_counter() - t, 1)}
    result = {
        "scene": f"{SCENE.relative_to(ROOT.parent)} [0:{args.size}, 0:{args.size}], moderate synthetic haze (seed 0)",
        "model": args.weights or "untrained DSRDMPDConfig.cpu_small() (torch.manual_seed(0))",
        "steps": model.cfg.steps, "seed": model.cfg.seed,
        "tile": args.tile, "overlap": args.overlap, "statistics_side": shared_statistics.STATS_SIDE,
        "units": "8-bit levels (x 255)",
    }
    for halo in args.halo or [model.halo]:
        model.halo = halo
        t = time.perf_counter()
        tiled = tiled_restore(model)
        wall[f"tiled_halo_{halo}"] = round(time.perf_counter() - t, 1)
        result[f"halo_{halo}"] = seam_scores(tiled, whole, args.tile, args.overlap)
        save_difference(tiled, whole, DIFF_PNG)  # of the last halo
        print(json.dumps({f"halo_{halo}": result[f"halo_{halo}"]}), flush=True)
    if args.without_statistics:
        result["without_statistics"] = seam_scores(tiled_restore(_WithoutStatistics(model)), whole, args.tile,
                                                   args.overlap)
    if args.without_origins:
        result["without_origins"] = seam_scores(tiled_restore(_WithoutOrigins(model)), whole, args.tile, args.overlap)
    if args.exact:
        # the image is its own statistics' copy
        shared_statistics.STATS_SIDE = max(args.size, shared_statistics.STATS_SIDE)
        t = time.perf_counter()
        exact = model(torch.from_numpy(image)[None], origins=[(0, 0)])[0].numpy()
        wall["whole_exact_statistics"] = round(time.perf_counter() - t, 1)
        diff = np.abs(whole - exact) * 255
        result["downsampled_vs_exact_statistics"] = {"max_abs_diff": round(float(diff.max()), 3),
                                                     "mean_abs_diff": round(float(diff.mean()), 4),
                                                     "p99_abs_diff": round(float(np.percentile(diff, 99)), 3)}
    result["wall_s"] = wall
    result["load_average"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
