"""What running the network near the kept pixels only saves a model that starts from a classical prior.

A model with ``prior`` (see :mod:`rsrestore.models.prior`) needs the prior's wide halo around each tile (``rop``: 50
px, ``dcp``: 127 px) on top of the network's 16 px. The tiled engine passes each tile's kept pixels (``cores``) and the
model runs its network on them and its own halo only; the prior alone sees the whole read box. This restores one
scene both ways, in the same run: as the engine does, and through a wrapper whose ``forward`` does not take
``cores`` (so the network sees the whole read box, as before). Reported: seconds for each, their ratio, and how far
the two outputs lie apart (the network's context beyond its own halo; the engine's usual tolerance).

The scene: the shipped Landsat-7 sample (791 x 718, with its black collar) under synthetic dust (or haze with
``--task haze``), tiled at 512 px as the CLI does: four tiles.
``--method``/``--weights`` pick the model (default: the bundled ``aosrnet``, which corrects ``rop``).

Usage: python benchmarks/bench_prior_window.py [--threads 2] -> benchmarks/results/prior_window.json
       python benchmarks/bench_prior_window.py --method rsdehamba --weights W.safetensors --task haze --out F.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import rsrestore
from rsrestore.models.registry import load_model
from rsrestore.physics.haze import synthesize_haze
from rsrestore.physics.sanddust import synthesize_dust
from rsrestore.raster import read_raster
from rsrestore.tiling import restore_array

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(rsrestore.__file__).parent / "sample_data" / "landsat7_rgb.tif"


class WholeReadBox(nn.Module):
    """The model as it was before ``cores``: its forward takes no ``cores``, so the network sees the whole read box."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.halo, self.min_size = model.halo, model.min_size
        self.needs_scene_statistics = model.needs_scene_statistics
        self.scene_statistics = model.scene_statistics

    def forward(self, x, sar=None, stats=None):
        return self.model(x, stats=stats)


def timed_restore(model: nn.Module, image: np.ndarray, valid: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = restore_array(model, image, mask=valid, tile=512, overlap=32, progress=False)
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="aosrnet")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--task", choices=("dust", "haze"), default="dust")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="restores per way; the fastest counts")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prior_window.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.method, weights=args.weights)
    if getattr(model, "prior", None) is None:
        raise SystemExit(f"{args.method} with these weights has no prior: nothing to compare")
    image, valid, _ = read_raster(SAMPLE)
    clean = torch.from_numpy(image[:3])[None]
    make = synthesize_dust if args.task == "dust" else synthesize_haze
    degraded = make(clean, torch.Generator().manual_seed(0), preset="moderate")["input"][0].numpy()
    window_s, window = timed_restore(model, degraded, valid, args.repeats)
    whole_s, whole = timed_restore(WholeReadBox(model), degraded, valid, args.repeats)
    diff = np.abs(window - whole)[:, valid]
    result = {
        "what": __doc__.split("\n\n")[0],
        "method": args.method, "weights": args.weights, "prior": type(model.prior).__name__,
        "halo": model.halo, "scene": f"{SAMPLE.name} {degraded.shape[2]}x{degraded.shape[1]}, {args.task} (moderate)",
        "tile": 512, "threads": args.threads, "load_average": list(os.getloadavg()),
        "seconds_network_near_kept_pixels": round(window_s, 2), "seconds_network_on_whole_read_box": round(whole_s, 2),
        "speedup": round(whole_s / window_s, 2),
        "output_difference": {"mean": float(diff.mean()), "p99_9": float(np.percentile(diff, 99.9)),
                              "max": float(diff.max())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
