"""Speed and memory of streaming restoration (writes benchmarks/results/restore.json).

- Throughput: `dcp` on a 2048 x 2048 RGB scene, tiled through `restore_file` (512 tiles), against whole-image `dcp`
  in memory measured in the same run (the ratio shows what tiling costs: halo re-reads and blending).
- Memory: peak RSS of a fresh process restoring generated 1000^2, 4000^2 and 10000^2 3-band uint8 GeoTIFFs with 512
  tiles, against the peak RSS of a process that only imports the package (the reference). Time per megapixel should
  stay flat (linear time), and the RSS too (memory set by the tile size).

Usage: python benchmarks/bench_restore.py [--sizes 1000 4000 10000] [--out benchmarks/results/restore.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

# Peak RSS is read from /proc/self/status (VmHWM: this process's own high-water mark). getrusage's ru_maxrss is not
# used: Linux carries the parent's high-water mark across fork + exec into it.
RUNNER = r"""
import sys, time, json
import torch
torch.set_num_threads({threads})
from rsrestore.classical.dcp import DarkChannelPrior
from rsrestore.tiling import restore_file
t0 = time.perf_counter()
if {restore}:
    restore_file(DarkChannelPrior(), sys.argv[1], sys.argv[2], tile={tile}, overlap=32, progress=False, overwrite=True)
t = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": t, "peak_rss_mb": hwm / 1024}}))
"""


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A hazy-looking uint8 RGB GeoTIFF written block by block (the generator itself stays in bounded memory)."""
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", dtype="uint8", count=3, width=size, height=size, crs="EPSG:32633",
                   transform=from_origin(500000, 4600000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", nodata=0)
    with rasterio.open(path, "w", **profile) as ds:
        for y in range(0, size, 512):
            for x in range(0, size, 512):
                h, w = min(512, size - y), min(512, size - x)
                yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32)
                base = 0.3 + 0.2 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
                scene = np.stack([base * 0.8, base, base * 0.6]) + rng.normal(0, 0.05, (3, h, w))
                hazy = np.clip(scene * 0.6 + 0.35, 0.004, 1) * 255
                ds.write(hazy.astype(np.uint8), window=Window(x, y, w, h))
    return path


def run_child(src: Path | None, dst: Path | None, tile: int, threads: int) -> dict:
    code = RUNNER.format(restore=src is not None, tile=tile, threads=threads)
    args = [sys.executable, "-c", code] + ([str(src), str(dst)] if src else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(tmp: Path, threads: int) -> dict:
    from rsrestore.classical.dcp import DarkChannelPrior

    torch.set_num_threads(threads)
    src = make_scene(tmp / "s2048.tif", 2048)
    model = DarkChannelPrior()
    from rsrestore.raster import read_raster
    from rsrestore.tiling import restore_file

    t0 = time.perf_counter()
    restore_file(model, src, tmp / "o2048.tif", tile=512, overlap=32, progress=False, overwrite=True)
    tiled = time.perf_counter() - t0
    x, _, _ = read_raster(src)
    xt = torch.from_numpy(x)[None]
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(xt, stats=model.scene_statistics(xt))
    whole = time.perf_counter() - t0
    mpix = 2048 * 2048 / 1e6
    return {"scene": "2048x2048x3 uint8", "tiled_seconds": tiled, "tiled_mpix_per_s": mpix / tiled,
            "whole_image_seconds": whole, "whole_image_mpix_per_s": mpix / whole,
            "tiled_over_whole_time_ratio": tiled / whole}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 10000])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "restore.json")
    args = ap.parse_args()
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu_threads": args.threads, "platform": platform.platform()}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result["throughput_dcp"] = throughput(tmp, args.threads)
        print(json.dumps(result["throughput_dcp"], indent=2), flush=True)
        ref = run_child(None, None, args.tile, args.threads)
        result["reference_import_only"] = ref
        rows = []
        for size in args.sizes:
            src = make_scene(tmp / f"s{size}.tif", size)
            r = run_child(src, tmp / f"o{size}.tif", args.tile, args.threads)
            r.update(size=size, megapixels=size * size / 1e6, seconds_per_mpix=r["seconds"] / (size * size / 1e6),
                     rss_over_reference=r["peak_rss_mb"] / ref["peak_rss_mb"],
                     rss_above_reference_mb=r["peak_rss_mb"] - ref["peak_rss_mb"])
            rows.append(r)
            print(json.dumps(r), flush=True)
            src.unlink()
            (tmp / f"o{size}.tif").unlink()
        result["memory_dcp_tile%d" % args.tile] = rows
        first, last = rows[0], rows[-1]
        result["summary"] = {
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows),
            "rss_growth_smallest_to_largest": last["peak_rss_mb"] / first["peak_rss_mb"],
            "time_per_mpix_ratio_largest_over_smallest": last["seconds_per_mpix"] / first["seconds_per_mpix"],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
