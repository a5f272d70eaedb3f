"""Parameter counts and CPU forward speed of every learned model in the MODELS table.

Writes benchmarks/results/models.json.

For each trainable method (aosrnet, rsdehamba, sarcr, dsen2cr, ...) at its default (paper) config, and again at the
config of its bundled weights when it ships some (that is what `rsrestore restore --method NAME` runs):

- parameters: trainable parameter count;
- forward speed on one 256 x 256 image (batch 1, channels_last, inference mode), in fp32 and under bf16 autocast,
  as megapixels per second (output pixels / median seconds over the repeats, after warm-up runs), and the bf16 / fp32
  speed ratio measured in the same run;
- SAR-guided models get a random SAR tensor of their `sar_bands` as well.

A model whose module is missing or fails to build is recorded with its error instead of stopping the run. Numbers
depend on the CPU, its load (recorded) and the thread count: compare ratios within one run.

Usage: python benchmarks/bench_models.py [--size 256] [--repeats 5] [--threads N] [--models sarcr,dsen2cr]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from rsrestore.models.registry import MODELS, build_config, get_spec


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_forward(model, x, sar, bf16: bool, warmup: int, repeats: int) -> list[float]:
    kwargs = {"sar": sar} if sar is not None else {}
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x, **kwargs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def bench_config(name: str, config: dict | None, size: int, warmup: int, repeats: int) -> dict:
    spec = get_spec(name)
    model_cls, _ = spec.classes()
    cfg = build_config(spec, config)
    torch.manual_seed(0)
    model = model_cls(cfg).eval().to(memory_format=torch.channels_last)
    bands = int(getattr(cfg, spec.band_field)) if spec.band_field else 3
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, bands, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    sar = None
    if spec.needs_sar:
        sar = torch.rand(1, int(cfg.sar_bands), size, size, generator=g).contiguous(memory_format=torch.channels_last)
    row: dict = {"config": _plain(dataclasses.asdict(cfg)), "parameters": count_parameters(model), "bands": bands,
                 "sar_bands": int(cfg.sar_bands) if spec.needs_sar else 0}
    mpix = size * size / 1e6
    for label, bf16 in (("fp32", False), ("bf16", True)):
        try:
            times = time_forward(model, x, sar, bf16, warmup, repeats)
        except Exception as e:  # an op without a bf16 CPU kernel, say: record it and go on
            row[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        med = statistics.median(times)
        row[label] = {"median_s": med, "min_s": min(times), "mpix_per_s": mpix / med, "repeats": len(times)}
    if "mpix_per_s" in row["fp32"] and "mpix_per_s" in row.get("bf16", {}):
        row["bf16_over_fp32_speed"] = row["bf16"]["mpix_per_s"] / row["fp32"]["mpix_per_s"]
    return row


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def bench_model(name: str, size: int, warmup: int, repeats: int) -> dict:
    spec = MODELS[name]
    entry: dict = {"task": spec.task, "needs_sar": spec.needs_sar, "paper": spec.paper}
    try:
        spec.classes()
    except ImportError as e:
        entry["status"] = "missing"
        entry["error"] = f"{type(e).__name__}: {e}"
        return entry
    try:
        entry["default_config"] = bench_config(name, None, size, warmup, repeats)
        meta = spec.weights_metadata() if spec.weights_path is not None else None
        if meta and meta.get("config"):
            entry["bundled_weights"] = {"file": spec.weights, **bench_config(name, meta["config"], size, warmup,
                                                                                repeats)}
        entry["status"] = "ok"
    except Exception as e:  # a model that fails to build or run is reported, not fatal
        entry["status"] = "failed"
        entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--models", default=None, help="comma-separated subset (default: every learned model)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "models.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        names = [n for n, s in MODELS.items() if s.trainable]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform()},
        "setup": {"size": [args.size, args.size], "batch": 1, "memory_format": "channels_last",
                  "modes": {"fp32": "float32", "bf16": "torch.autocast('cpu', dtype=torch.bfloat16)"},
                  "warmup": args.warmup, "repeats": args.repeats, "statistic": "median seconds per forward",
                  "mpix_per_s": "output megapixels / median seconds"},
        "models": {},
    }
    for name in names:
        entry = bench_model(name, args.size, args.warmup, args.repeats)
        result["models"][name] = entry
        line = {"model": name, "status": entry["status"]}
        if entry["status"] == "ok":
            d = entry["default_config"]
            line.update(parameters=d["parameters"], fp32_mpix_s=d["fp32"].get("mpix_per_s"),
                        bf16_mpix_s=d["bf16"].get("mpix_per_s"))
        else:
            line["error"] = entry["error"]
        print(json.dumps(line), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
