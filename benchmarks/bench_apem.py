"""Speed of the ``apem`` haze method against the dark channel prior (``dcp``), measured in one run.

APEM (the atmospheric prior estimation of ASPDiff, Zhang et al., IEEE TGRS 2022) starts from the dark channel prior's
transmission and atmospheric light and corrects them with two light networks, so its cost is ``dcp``'s plus a small
convolutional network at full resolution. Measured on the same hazy 1024 x 1024 image (the package's Landsat-7
sample, mirrored up, with synthetic moderate haze):

- ``whole``: one forward pass over the whole image in memory (batch 1, channels_last, inference mode), for ``apem``
  (the weights as shipped, or untrained with the config of ``configs/apem_haze_cpu.yaml``: the speed is the same),
  ``apem`` with both refinements switched off (its dark-channel priors alone) and ``dcp``;
- ``tiled``: the same image through the streaming tiling engine (``restore_array``, 512 tiles, overlap 32), which
  reads each tile with the method's halo (apem: ``halo`` pixels, dcp: 127) and computes the scene statistics once.

Methods take turns within each repeat, so a change in the machine's load falls on all of them alike. Both the wall
time and the process CPU time (steadier on a shared machine) are recorded; MPix/s and the apem / dcp speed ratios
come from the medians of each. Run it under ``nice`` on a quiet machine and compare ratios within one run.

Usage: nice -n 10 python benchmarks/bench_apem.py [--threads 2] [--repeats 3] [--size 1024]
       [--out benchmarks/results/apem.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from bench_models import cpu_name  # benchmarks/ is on sys.path when a benchmark runs as a script
from bench_rsdehamba import hazy_scene
from rsrestore.models.registry import MODELS, load_model
from rsrestore.tiling import restore_array

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "apem_haze_cpu.yaml"
TILE, OVERLAP = 512, 32


def build_methods() -> tuple[dict[str, torch.nn.Module], str]:
    if MODELS["apem"].weights_path is not None:
        apem, origin = load_model("apem"), f"bundled {MODELS['apem'].weights}"
        config = None
    else:
        config = yaml.safe_load(CONFIG.read_text())["model"]["config"]
        torch.manual_seed(0)
        apem, origin = load_model("apem", weights=None, config=config), f"untrained, config of {CONFIG.name}"
    plain = load_model("apem", weights=None, config=dict(apem.cfg.__dict__, refine_transmission=False,
                                                         refine_airlight=False, dilations=list(apem.cfg.dilations)))
    return {"apem": apem, "apem_priors_only": plain, "dcp": load_model("dcp")}, origin


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(methods: dict, x: torch.Tensor, warmup: int, repeats: int) -> dict:
    """{mode: {method: timings}} for mode in whole / tiled, methods interleaved within each repeat."""
    image = x[0].numpy()
    runs = {
        "whole": lambda m: m(x),
        "tiled": lambda m: restore_array(m, image, tile=TILE, overlap=OVERLAP, batch_size=1),
    }
    times = {mode: {name: {"wall": [], "cpu": []} for name in methods} for mode in runs}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for mode, run in runs.items():
                for name, model in methods.items():
                    wall, cpu = timed(lambda: run(model))
                    if i >= warmup:
                        times[mode][name]["wall"].append(wall)
                        times[mode][name]["cpu"].append(cpu)
    mpix = x.shape[-1] * x.shape[-2] / 1e6
    out: dict = {}
    for mode, row in times.items():
        out[mode] = {}
        for name, t in row.items():
            wall, cpu = statistics.median(t["wall"]), statistics.median(t["cpu"])
            out[mode][name] = {"median_wall_s": wall, "median_cpu_s": cpu, "wall_times_s": t["wall"],
                               "cpu_times_s": t["cpu"], "mpix_per_s_wall": mpix / wall, "mpix_per_cpu_s": mpix / cpu}
        dcp = out[mode]["dcp"]
        for name in row:
            if name != "dcp":
                out[mode][f"{name}_over_dcp_speed"] = {
                    "wall": dcp["median_wall_s"] / out[mode][name]["median_wall_s"],
                    "cpu": dcp["median_cpu_s"] / out[mode][name]["median_cpu_s"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "apem.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()
    methods, origin = build_methods()
    x = hazy_scene(args.size).contiguous(memory_format=torch.channels_last)
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(), "nice": os.nice(0),
                    "load_average_at_start": load_at_start},
        "input": f"{args.size}x{args.size} RGB, Landsat-7 sample with moderate synthetic haze",
        "apem_model": origin,
        "apem_parameters": sum(p.numel() for p in methods["apem"].parameters()),
        "halo": {name: int(getattr(m, "halo", 0)) for name, m in methods.items()},
        "tiling": {"tile": TILE, "overlap": OVERLAP, "batch_size": 1},
        "repeats": args.repeats,
        "results": bench(methods, x, args.warmup, args.repeats),
    }
    result["machine"]["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {mode: {k: v for k, v in row.items() if k.endswith("_speed")} for mode, row in result["results"].items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
