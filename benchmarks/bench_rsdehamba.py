"""RSDehamba speed on the CPU against the dark channel prior, measured in one run.

RSDehamba (Zhou et al., arXiv:2405.10030, 2024) replaces attention with a selective scan (Mamba, Gu & Dao 2023),
whose cost is linear in the number of pixels L = H * W. This benchmark checks that on the network as shipped:

- forward time at 256 x 256 and 512 x 512 (batch 1, channels_last, inference mode, median over repeats after a
  warm-up; the sizes take turns within each repeat), and ``time_ratio / pixel_ratio`` = (t_512 / t_256) / 4: 1 for linear cost, 4 for a quadratic one;
- inference throughput in MPix/s of RSDehamba and of ``dcp`` (dark channel prior with guided filter, He et al.,
  TPAMI 2011) on the same hazy image at both sizes, and their ratio;
- training throughput in MPix/s of RSDehamba (forward + L1 loss + backward + Adam step) at the training setting of the
  bundled weights (64 x 64 crops, batch 8), set beside ``dcp``'s inference throughput (``dcp`` needs no training);
- the selective scan implementations (``scan_impls``): the paper-size RSDehamba (1.79M parameters) forward at 256 x 256
  with the fused numba scan (the CPU default) and with the pure PyTorch chunked scan, against DehazeFormer-T's forward
  on the same input in the same run (``benchmarks/dehazeformer_t.py``, a reference written for this benchmark), the
  numba forward at 512 x 512 against 256 x 256 (linearity; DehazeFormer-T's own 512/256 ratio beside it, since
  activations that outgrow the caches slow any network down); and the training step above with each scan.

The model is the bundled ``rsdehamba_haze_rgb`` (its config from the weights' metadata); without bundled weights the
config of ``configs/rsdehamba_haze_cpu.yaml`` is built untrained (the speed is the same). The input is the
package's Landsat-7 sample scene with synthetic moderate haze. Numbers depend on the CPU, its load (recorded) and the
thread count: compare ratios within one run.

Usage: python benchmarks/bench_rsdehamba.py [--threads 1] [--repeats 3] [--out benchmarks/results/rsdehamba.json]
       [--scan-only]  (only the scan_impls section, written into the existing results file)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench_models import cpu_name  # benchmarks/ is on sys.path when a benchmark runs as a script
from rsrestore.models.registry import MODELS, load_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "rsdehamba_haze_cpu.yaml"
SIZES = (256, 512)
TRAIN_CROP, TRAIN_BATCH = 64, 8



def build_rsdehamba() -> tuple[torch.nn.Module, str]:
    if MODELS["rsdehamba"].weights_path is not None:
        return load_model("rsdehamba"), f"bundled {MODELS['rsdehamba'].weights}"
    cfg = yaml.safe_load(CONFIG.read_text())["model"]["config"]
    torch.manual_seed(0)
    return load_model("rsdehamba", weights=None, config=cfg), f"untrained, config of {CONFIG.name}"


def hazy_scene(size: int) -> torch.Tensor:
    """A (1, 3, size, size) crop of the packaged Landsat-7 RGB scene (mirrored up when smaller) with moderate haze."""
    import rasterio

    from rsrestore.physics.haze import synthesize_haze

    path = ROOT / "src" / "rsrestore" / "sample_data" / "landsat7_rgb.tif"
    with rasterio.open(path) as ds:
        a = ds.read().astype(np.float32) / 255.0
    x = torch.from_numpy(a)[None]
    if min(x.shape[-2:]) < size:
        x = torch.nn.functional.pad(x, (0, max(0, size - x.shape[-1]), 0, max(0, size - x.shape[-2])), mode="reflect")
    h, w = x.shape[-2:]
    x = x[..., (h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size].contiguous()
    return synthesize_haze(x, torch.Generator().manual_seed(0), preset="moderate")["input"]


def median_seconds(fn, warmup: int, repeats: int) -> tuple[float, list[float]]:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_inference(methods: dict, inputs: dict, warmup: int, repeats: int) -> dict:
    """{size: {method: timing}}. Sizes and methods take turns within each repeat, so a change in the machine's load
    during the run falls on all of them alike instead of on whichever ran last."""
    inputs = {s: x.contiguous(memory_format=torch.channels_last) for s, x in inputs.items()}
    times: dict = {s: {m: [] for m in methods} for s in inputs}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for s, x in inputs.items():
                for name, model in methods.items():
                    t0 = time.perf_counter()
                    model(x)
                    if i >= warmup:
                        times[s][name].append(time.perf_counter() - t0)
    out: dict = {}
    for s, row in times.items():
        out[s] = {}
        for name, ts in row.items():
            med = statistics.median(ts)
            out[s][name] = {"median_s": med, "times_s": ts, "mpix_per_s": s * s / 1e6 / med}
    return out


def bench_training(model: torch.nn.Module, warmup: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(TRAIN_BATCH, 3, TRAIN_CROP, TRAIN_CROP, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.rand(TRAIN_BATCH, 3, TRAIN_CROP, TRAIN_CROP, generator=g).contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step():
        loss = (model(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        med, times = median_seconds(step, warmup, repeats)
    finally:
        model.eval()
    pixels = TRAIN_BATCH * TRAIN_CROP * TRAIN_CROP
    return {"crop": TRAIN_CROP, "batch": TRAIN_BATCH, "median_s_per_step": med, "times_s": times,
            "mpix_per_s": pixels / 1e6 / med}


def set_scan_impl(model: torch.nn.Module, impl: str) -> None:
    for module in model.modules():
        if hasattr(module, "scan_impl"):
            module.scan_impl = impl


def bench_scan_impls(trained: torch.nn.Module, warmup: int, repeats: int) -> dict:
    """Paper-size forward with each scan and DehazeFormer-T's forward on the same input (interleaved within each
    repeat), the fused forward at 512^2 against 256^2 (linearity), also with the per-pixel layers over the whole map
    at once ("whole_map": ``rsdehamba.by_rows`` off, as before it existed), and the training step above with each
    scan."""
    from dehazeformer_t import DehazeFormerT, count_macs  # benchmarks/ is on sys.path when run as a script

    from rsrestore.models import rsdehamba, scan
    from rsrestore.models.rsdehamba import RSDehamba

    impls = ["chunked"] + (["numba"] if scan.numba_kernel_available() else [])
    fast = impls[-1]
    torch.manual_seed(0)
    paper = RSDehamba().to(memory_format=torch.channels_last).eval()
    dhf = DehazeFormerT().to(memory_format=torch.channels_last).eval()
    runs = [(impl, 256) for impl in impls] + [("dehazeformer_t", 256), (fast, 512), ("dehazeformer_t", 512),
                                              ("whole_map", 256), ("whole_map", 512)]
    banded = rsdehamba.ROW_CHUNK_PIXELS
    inputs = {size: hazy_scene(size).contiguous(memory_format=torch.channels_last) for size in {s for _, s in runs}}
    wall: dict = {run: [] for run in runs}
    cpu: dict = {run: [] for run in runs}  # process CPU time: steadier than wall time on a shared machine
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for impl, size in runs:
                model = dhf if impl == "dehazeformer_t" else paper
                if model is paper:
                    set_scan_impl(paper, fast if impl == "whole_map" else impl)
                    rsdehamba.ROW_CHUNK_PIXELS = 1 << 62 if impl == "whole_map" else banded
                w0, c0 = time.perf_counter(), time.process_time()
                model(inputs[size])
                if i >= warmup:
                    wall[(impl, size)].append(time.perf_counter() - w0)
                    cpu[(impl, size)].append(time.process_time() - c0)
    rsdehamba.ROW_CHUNK_PIXELS = banded
    out: dict = {
        "model": "RSDehamba() paper configuration", "parameters": sum(p.numel() for p in paper.parameters()),
        "reference": {"name": "DehazeFormer-T (benchmarks/dehazeformer_t.py, tiny configuration of Song et al. 2023)",
                      "parameters": sum(p.numel() for p in dhf.parameters()),
                      "gmac_256": count_macs(dhf, inputs[256]) / 1e9,
                      "paper": "0.686M parameters, 6.658 GMAC (13.3 GFLOP) at 256^2"},
        "forward_median_wall_s": {}, "forward_median_cpu_s": {}, "forward_times_wall_s": {},
    }
    for name, times in (("wall", wall), ("cpu", cpu)):
        med = {run: statistics.median(ts) for run, ts in times.items()}
        for (impl, size), m in med.items():
            out[f"forward_median_{name}_s"][f"{impl} {size}x{size}"] = m
            if name == "wall":
                out["forward_times_wall_s"][f"{impl} {size}x{size}"] = times[(impl, size)]
        out[f"rsdehamba_{fast}_over_dehazeformer_t_256_{name}"] = med[(fast, 256)] / med[("dehazeformer_t", 256)]
        out[f"rsdehamba_chunked_over_dehazeformer_t_256_{name}"] = med[("chunked", 256)] / med[("dehazeformer_t", 256)]
        if fast != "chunked":
            out[f"forward_speedup_{fast}_over_chunked_256_{name}"] = med[("chunked", 256)] / med[(fast, 256)]
        out[f"{fast}_{name}_time_ratio_512_over_256_per_pixel"] = med[(fast, 512)] / med[(fast, 256)] / 4
        out[f"{fast}_whole_map_{name}_time_ratio_512_over_256_per_pixel"] = (
            med[("whole_map", 512)] / med[("whole_map", 256)] / 4)
        # the same for a network without a scan: how much of the growth is the CPU's caches, not the scan
        out[f"dehazeformer_t_{name}_time_ratio_512_over_256_per_pixel"] = (
            med[("dehazeformer_t", 512)] / med[("dehazeformer_t", 256)] / 4)
    out["training_step"] = {}
    for impl in impls:
        set_scan_impl(trained, impl)
        c0 = time.process_time()
        out["training_step"][impl] = bench_training(trained, warmup, repeats)
        out["training_step"][impl]["cpu_s_total"] = time.process_time() - c0
    set_scan_impl(trained, "auto")
    if fast != "chunked":
        steps = out["training_step"]
        out[f"training_speedup_{fast}_over_chunked"] = (steps["chunked"]["median_s_per_step"]
                                                        / steps[fast]["median_s_per_step"])
        out[f"training_speedup_{fast}_over_chunked_cpu"] = (steps["chunked"]["cpu_s_total"]
                                                            / steps[fast]["cpu_s_total"])
    out["load_average_after"] = os.getloadavg()
    out["note"] = ("shared 2-core machine, other users' jobs running (see the load averages); the ratios compare "
                   "runs interleaved within one process, so they hold better than the absolute times")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rsdehamba.json")
    load_at_start = os.getloadavg()
    ap.add_argument("--scan-only", action="store_true",
                    help="measure only the scan implementations and update that section of --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, source = build_rsdehamba()
    model = model.to(memory_format=torch.channels_last).eval()
    if args.scan_only:
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        result["scan_impls"] = bench_scan_impls(model, args.warmup, args.repeats)
        result["scan_impls"].update(threads=torch.get_num_threads(), load_average_at_start=load_at_start, cpu=cpu_name())
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result["scan_impls"].items() if k != "training_step"}), flush=True)
        return
    dcp = load_model("dcp")
    result: dict = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "rsdehamba": {"weights": source, "config": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in vars(model.cfg).items()},
                      "parameters": sum(p.numel() for p in model.parameters())},
        "setup": {"input": "src/rsrestore/sample_data/landsat7_rgb.tif, centre crop, synthetic moderate haze",
                  "batch": 1, "memory_format": "channels_last", "dtype": "float32", "warmup": args.warmup,
                  "repeats": args.repeats, "statistic": "median seconds",
                  "order": "sizes and methods interleaved within each repeat"},
        "inference": {},
    }
    timed = bench_inference({"rsdehamba": model, "dcp": dcp}, {size: hazy_scene(size) for size in SIZES},
                            args.warmup, args.repeats)
    for size, row in timed.items():
        row["rsdehamba_over_dcp_speed"] = row["rsdehamba"]["mpix_per_s"] / row["dcp"]["mpix_per_s"]
        result["inference"][f"{size}x{size}"] = row
        print(json.dumps({"size": size, "rsdehamba_s": row["rsdehamba"]["median_s"],
                          "dcp_s": row["dcp"]["median_s"]}), flush=True)
    small, large = (result["inference"][f"{s}x{s}"] for s in SIZES)
    pixel_ratio = (SIZES[1] / SIZES[0]) ** 2
    result["scaling"] = {}
    for name in ("rsdehamba", "dcp"):
        time_ratio = large[name]["median_s"] / small[name]["median_s"]
        result["scaling"][name] = {"time_ratio": time_ratio, "pixel_ratio": pixel_ratio,
                                   "time_ratio_over_pixel_ratio": time_ratio / pixel_ratio}
    train = bench_training(model, args.warmup, args.repeats)
    dcp_mpix = large["dcp"]["mpix_per_s"]
    result["training"] = {"rsdehamba": train, "dcp_inference_mpix_per_s_512": dcp_mpix,
                          "rsdehamba_train_over_dcp_inference_speed": train["mpix_per_s"] / dcp_mpix,
                          "note": "dcp is training-free; its inference speed is the reference"}
    result["scan_impls"] = bench_scan_impls(model, args.warmup, args.repeats)
    print(json.dumps({k: v for k, v in result["scan_impls"].items() if k != "training_step"}), flush=True)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"scaling": result["scaling"], "train_mpix_s": train["mpix_per_s"]}), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
