"""Speed of the ``apem`` haze method against the dark channel prior (``dcp``), measured in one run, and what running
f_t at a reduced resolution (``ft_scale``) costs weights trained at full resolution.

APEM (the atmospheric prior estimation of ASPDiff, Zhang et al., IEEE TGRS 2022) starts from the dark channel prior's
transmission and atmospheric light and corrects them with two light networks. With ``ft_scale`` s > 1 (the method's
default is 2) the networks run on s x s block means and ``dcp``'s own guided filter brings the corrected transmission
back to full resolution, so apem's cost is ``dcp``'s plus a network on 1/s^2 of the pixels. Measured on hazy square
images (the package's Landsat-7 sample, mirrored up, with synthetic moderate haze) of each ``--sizes``:

- ``whole_<size>``: one forward pass over the whole image in memory (batch 1, channels_last, inference mode), for
  ``apem`` at its default ``ft_scale``, at the other scales of ``--scales`` (``apem_ft_scale_1`` is the architecture
  before the option) and ``dcp``; untrained with the model section of ``configs/apem_haze_cpu.yaml`` (a trained
  model runs the same operations);
- ``tiled_<size>`` (sizes above one tile only): the same image through the streaming tiling engine
  (``restore_array``, 512 tiles, overlap 32), which reads each tile with the method's halo and computes the scene
  statistics once.

Methods take turns within each repeat, so a change in the machine's load falls on all of them alike. Both the wall
time and the process CPU time (steadier on a shared machine) are recorded with the load average; MPix/s and the
apem / dcp time ratios (the goal: <= 1.3) come from the medians of each. Run it under ``nice`` and compare ratios
within one run.

``--heldout N``: the full-resolution weights of ``runs/apem_haze_cpu`` (``final`` and ``scored``) run at every scale
of ``--scales`` without retraining, PSNR (RGB, data range 1) on the first N crops of each held-out source in
``runs/apem_haze_cpu/heldout`` (Planet, Landsat-8), next to dcp's; ``max_abs_change_at_ft_scale_1`` is 0 when those
weights at ``ft_scale: 1`` restore exactly what they did before the option (``--reference``: outputs saved then).

Usage: nice -n 10 python benchmarks/bench_apem.py [--threads 2] [--repeats 5] [--sizes 512 1024] [--scales 2 1 4]
       [--heldout 30] [--out benchmarks/results/apem.json]
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
from rsrestore.metrics.full_reference import psnr
from rsrestore.models.aspdiff.apem_dehazer import DEFAULT_FT_SCALE
from rsrestore.models.registry import load_model
from rsrestore.raster import read_raster
from rsrestore.tiling import ONE_TILE_SLACK, restore_array

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "apem_haze_cpu.yaml"
TILE, OVERLAP = 512, 32
RUN = ROOT / "runs" / "apem_haze_cpu"
OLD_WEIGHTS = [RUN / "train" / "final.safetensors", RUN / "scored.safetensors"]  # trained with f_t at full resolution
HELDOUT = ["planet", "landsat8"]


def build_methods(scales: list[int]) -> dict[str, torch.nn.Module]:
    config = yaml.safe_load(CONFIG.read_text())["model"]["config"]
    methods = {}
    for s in scales:
        name = "apem" if s == DEFAULT_FT_SCALE else f"apem_ft_scale_{s}"
        methods[name] = load_model("apem", weights=None, config=dict(config, ft_scale=s)).eval()
    methods["dcp"] = load_model("dcp")
    return methods


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(methods: dict, sizes: list[int], warmup: int, repeats: int) -> dict:
    """{mode: {method: timings}} for whole / tiled at each size, methods interleaved within each repeat."""
    runs = {}
    for size in sizes:
        x = hazy_scene(size).contiguous(memory_format=torch.channels_last)
        runs[f"whole_{size}"] = (x, lambda m, x=x: m(x))
        if size > TILE * ONE_TILE_SLACK:  # smaller scenes are one tile: the same as whole
            image = x[0].numpy()
            runs[f"tiled_{size}"] = (x, lambda m, image=image: restore_array(m, image, tile=TILE, overlap=OVERLAP,
                                                                             batch_size=1, progress=False))
    times = {mode: {name: {"wall": [], "cpu": []} for name in methods} for mode in runs}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for mode, (_, run) in runs.items():
                for name, model in methods.items():
                    wall, cpu = timed(lambda: run(model))
                    if i >= warmup:
                        times[mode][name]["wall"].append(wall)
                        times[mode][name]["cpu"].append(cpu)
    out: dict = {}
    for mode, row in times.items():
        x = runs[mode][0]
        mpix = x.shape[-1] * x.shape[-2] / 1e6
        out[mode] = {}
        for name, t in row.items():
            wall, cpu = statistics.median(t["wall"]), statistics.median(t["cpu"])
            out[mode][name] = {"median_wall_s": wall, "median_cpu_s": cpu, "wall_times_s": t["wall"],
                               "cpu_times_s": t["cpu"], "mpix_per_s_wall": mpix / wall, "mpix_per_cpu_s": mpix / cpu}
        dcp = out[mode]["dcp"]
        for name in row:
            if name != "dcp":
                out[mode][f"{name}_over_dcp_time"] = {
                    "wall": out[mode][name]["median_wall_s"] / dcp["median_wall_s"],
                    "cpu": out[mode][name]["median_cpu_s"] / dcp["median_cpu_s"]}
    return out


def heldout_quality(scales: list[int], n: int, reference: Path | None) -> dict:
    """PSNR of the full-resolution weights at each ft_scale (no retraining) and of dcp on held-out crops."""
    crops = []
    for source in HELDOUT:
        for f in sorted((RUN / "heldout" / source / "input").glob("*.png"))[:n]:
            hazy = torch.from_numpy(read_raster(f)[0])[None]
            clean = torch.from_numpy(read_raster(f.parent.parent / "target" / f.name)[0])[None]
            crops.append((source, f.name, hazy, clean))
    ref = torch.load(reference) if reference else None
    torch.set_num_threads(1)  # as the reference outputs were made: a convolution's sums depend on the thread count
    scores: dict = {"crops_per_source": n, "psnr_db": {}}
    runs = [("dcp", None, load_model("dcp"))]
    for weights in OLD_WEIGHTS:
        config = json.loads(weights.with_suffix(".json").read_text())["config"]
        for s in scales:
            model = load_model("apem", weights=str(weights), config=dict(config, ft_scale=s)).eval()
            runs.append((f"{weights.stem}_ft_scale_{s}", weights if s == 1 else None, model))
    change = 0.0
    with torch.inference_mode():
        for name, full_resolution, model in runs:
            per_source = {source: [] for source in HELDOUT}
            for source, fname, hazy, clean in crops:
                restored = model(hazy).clamp(0, 1)
                per_source[source].append(float(psnr(restored, clean)))
                key = f"{full_resolution.relative_to(ROOT)}:{source}/{fname}" if full_resolution else None
                if ref is not None and key in ref:
                    change = max(change, float((restored - ref[key]).abs().max()))
            scores["psnr_db"][name] = {s: statistics.mean(v) for s, v in per_source.items()}
    if ref is not None:
        scores["max_abs_change_at_ft_scale_1"] = change
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--scales", type=int, nargs="+", default=[DEFAULT_FT_SCALE, 1, 4])
    ap.add_argument("--heldout", type=int, default=0, help="crops per held-out source for the quality check (0: none)")
    ap.add_argument("--reference", type=Path, help="outputs of the full-resolution weights saved before ft_scale")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "apem.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()
    methods = build_methods(args.scales)
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(), "nice": os.nice(0),
                    "load_average_at_start": load_at_start},
        "input": "square RGB crops of the Landsat-7 sample with moderate synthetic haze",
        "apem_model": f"untrained, model section of {CONFIG.name} at each ft_scale (default {DEFAULT_FT_SCALE})",
        "apem_parameters": sum(p.numel() for p in methods["apem"].parameters()),
        "halo": {name: int(getattr(m, "halo", 0)) for name, m in methods.items()},
        "tiling": {"tile": TILE, "overlap": OVERLAP, "batch_size": 1},
        "repeats": args.repeats,
        "results": bench(methods, args.sizes, args.warmup, args.repeats),
    }
    result["machine"]["load_average_after_speed"] = os.getloadavg()
    if args.heldout:
        result["full_resolution_weights_without_retraining"] = heldout_quality(args.scales, args.heldout,
                                                                               args.reference)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {mode: {k: v for k, v in row.items() if k.endswith("_time")} for mode, row in result["results"].items()}
    print(json.dumps(summary, indent=2))
    if args.heldout:
        print(json.dumps(result["full_resolution_weights_without_retraining"], indent=2))


if __name__ == "__main__":
    main()
