"""Scenes per minute of `rsrestore batch` with 1 and 2 local worker processes, and each worker's peak memory
(writes benchmarks/results/batch.json).

The scenes are generated hazy 1000 x 1000 RGB uint8 GeoTIFFs (bench_restore's `make_scene`), restored with `dcp` and
the default 512 tiles. For each worker count a fresh `local_cluster` starts (its start-up time is reported apart), every
worker builds the model once before the clock starts (imports and model building are a per-worker cost, not a
per-scene one), then `run_batch` restores all scenes. Each worker process runs one scene at a time with one torch
thread, so on a machine with at least 2 free cores the 2-worker rate should approach twice the 1-worker rate.

Peak memory is each worker process's own high-water mark (VmHWM in /proc/self/status), read after its warm-up and
again after the run: the difference is what restoring scenes added on top of the imported libraries and the model.

Usage: python benchmarks/bench_batch.py [--scenes 8] [--size 1000] [--workers 1 2] [--out benchmarks/results/batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench_models import cpu_name  # benchmarks/ is on sys.path when a benchmark runs as a script
from bench_restore import make_scene

from rsrestore.batch import RestoreOptions, local_cluster, run_batch, scene_model


def peak_rss_mb() -> float:
    """This process's own peak RSS (getrusage's ru_maxrss would carry over the parent's across fork + exec)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def warm_up(method: str) -> float:
    """Build the model in this worker process (cached for its scenes); returns the peak RSS so far."""
    scene_model(RestoreOptions(method=method))
    return peak_rss_mb()


def run(scenes_dir: Path, out_dir: Path, n_workers: int, method: str, n_scenes: int) -> dict:
    from distributed import Client

    t0 = time.perf_counter()
    cluster = local_cluster(workers=n_workers)
    start = time.perf_counter() - t0
    try:
        with Client(cluster) as client:
            warm = client.run(warm_up, method)
            t0 = time.perf_counter()
            report = run_batch([scenes_dir], out_dir, method=method, scheduler=cluster.scheduler_address,
                               progress=False, overwrite=True)
            seconds = time.perf_counter() - t0
            peaks = client.run(peak_rss_mb)
    finally:
        cluster.close()
    if report.count("done") != n_scenes:
        raise SystemExit(f"{n_workers} worker(s): only {report.count('done')} of {n_scenes} scenes done: "
                         f"{[s.reason for s in report.failed]}")
    per_worker = [{"peak_rss_mb_after_warm_up": round(warm[w], 1), "peak_rss_mb": round(peaks[w], 1),
                   "added_by_scenes_mb": round(peaks[w] - warm[w], 1),
                   "scenes": sum(s.worker == w for s in report.scenes)} for w in sorted(peaks)]
    return {
        "workers": n_workers,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # other jobs on the machine slow every figure
        "cluster_start_seconds": round(start, 2),
        "seconds": round(seconds, 2),
        "scenes_per_minute": round(60 * n_scenes / seconds, 2),
        "mean_seconds_per_scene_in_a_worker": round(sum(s.seconds for s in report.scenes) / n_scenes, 3),
        "per_worker": per_worker,
        "peak_rss_mb_max": max(w["peak_rss_mb"] for w in per_worker),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--method", default="dcp")
    ap.add_argument("--note", default="one run; the load averages recorded say how quiet the machine was")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batch.json")
    args = ap.parse_args()
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "note": args.note,
        "scenes": f"{args.scenes} x {args.size}x{args.size}x3 uint8 GeoTIFF (deflate, 512 blocks)",
        "method": args.method,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "scenes").mkdir()
        for i in range(args.scenes):
            make_scene(tmp / "scenes" / f"scene{i:02d}.tif", args.size, seed=i)
        for n in args.workers:
            row = run(tmp / "scenes", tmp / f"out{n}", n, args.method, args.scenes)
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    rates = {r["workers"]: r["scenes_per_minute"] for r in result["runs"]}
    if 1 in rates and 2 in rates:
        result["ratio_2_workers_over_1"] = round(rates[2] / rates[1], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
