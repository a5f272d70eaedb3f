"""Peak memory of `rsrestore restore` for every learned method with bundled weights, with tile batches sized by the
memory budget (the default --max-memory) and with the former fixed four tiles per batch (--max-memory 0); writes
benchmarks/results/memory.json after every run, so an interrupted benchmark keeps what it measured. Runs already in
that file for other (method, mode, size) are kept, so a subset can be measured again on its own.

Each restore is its own process, measured from outside: peak resident memory from wait4's rusage (ru_maxrss, which
counts that child alone -- but also the address space it was started from, up to its exec, so this process keeps no
large arrays: the scenes are generated in a process of their own), CPU time in user and kernel mode, minor page
faults (memory the process touched afresh: allocation churn) and wall time. The scenes are generated GeoTIFFs with
smooth random texture on a UTM grid: RGB uint8 for aosrnet and rsdehamba, 13-band uint16 Sentinel-2-like reflectance
with a co-registered 2-band Sentinel-1 SAR scene (VV, VH in dB) for sarcr and dsen2cr. rsdehamba, whose activations
are by far the largest, is also restored at a second size (--other-size) to show that the peak does not follow the
scene size.

Usage: nice -n 10 python benchmarks/bench_memory.py [--size 2000] [--other-size 1000] [--methods ...]
       [--modes budget fixed]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage

from rsrestore.memory import DEFAULT_MAX_MEMORY_MB

METHODS = {"aosrnet": "rgb", "rsdehamba": "rgb", "sarcr": "s2", "dsen2cr": "s2"}
MODES = {"budget": [], "fixed": ["--max-memory", "0"]}  # fixed: the former four tiles per batch, no bound


def texture(rng: np.random.Generator, bands: int, size: int, low: float, high: float) -> np.ndarray:
    """Smooth random texture in [low, high]: blurred noise, so that the scene is not white noise."""
    noise = rng.random((bands, size, size), dtype=np.float32)
    smooth = ndimage.uniform_filter(noise, size=(1, 9, 9))
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-6)
    return low + (high - low) * (0.7 * smooth + 0.3 * noise)


def write(path: Path, data: np.ndarray) -> Path:
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", dtype=str(data.dtype), count=c, height=h, width=w, tiled=True,
                       crs="EPSG:32633", transform=from_origin(500000.0, 4600000.0, 10.0, 10.0)) as ds:
        ds.write(data)
    return path


def make_scenes(folder: Path, size: int) -> dict[str, list[str]]:
    """The restore arguments of each kind of scene at `size` x `size` pixels."""
    rng = np.random.default_rng(size)
    rgb = write(folder / f"rgb_{size}.tif", texture(rng, 3, size, 40, 220).astype(np.uint8))
    s2 = write(folder / f"s2_{size}.tif", texture(rng, 13, size, 300, 4000).astype(np.uint16))
    s1 = write(folder / f"s1_{size}.tif", texture(rng, 2, size, -25, -2).astype(np.float32))
    return {"rgb": [str(rgb)], "s2": [str(s2), "--sar", str(s1)]}


def make_scenes_apart(folder: Path, size: int) -> dict[str, list[str]]:
    """`make_scenes` in a process of its own. The restore runs are started from this one, and a child's ru_maxrss
    counts the memory of the process that started it (its address space until exec), so the scenes' texture arrays
    (hundreds of MB at 2800^2) must never be held here."""
    subprocess.run([sys.executable, __file__, "--make-scenes", str(folder), str(size)], check=True)
    return json.loads((folder / f"scenes_{size}.json").read_text())


def measure(args: list[str]) -> dict:
    """Run `rsrestore restore ARGS` in its own process; its peak resident memory, CPU and wall time."""
    command = [sys.executable, "-m", "rsrestore.cli", "restore", *args, "-q", "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {stderr.strip()}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "user_s": round(usage.ru_utime, 1),
            "system_s": round(usage.ru_stime, 1), "wall_s": round(wall, 1), "page_faults": usage.ru_minflt,
            "warnings": [line for line in stderr.splitlines() if line.startswith("warning:")]}


def main() -> None:
    if sys.argv[1:2] == ["--make-scenes"]:  # the child of make_scenes_apart
        folder, size = Path(sys.argv[2]), int(sys.argv[3])
        (folder / f"scenes_{size}.json").write_text(json.dumps(make_scenes(folder, size)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--other-size", type=int, default=1000, help="rsdehamba is also restored at this size")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--modes", nargs="+", default=["budget", "fixed"], choices=list(MODES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.json")
    args = parser.parse_args()
    result = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "setup": {"default_max_memory_mb": DEFAULT_MAX_MEMORY_MB, "tile": 512, "overlap": 32, "batch_size": 4,
                  "modes": {"budget": "default --max-memory: tiles per batch (and tile side) from a memory probe",
                            "fixed": "--max-memory 0: four tiles per batch, as before"},
                  "peak": "ru_maxrss of the restore process (wait4), MB = 2**20 bytes"},
        "runs": [],
    }
    runs = [(m, mode, args.size) for mode in args.modes for m in args.methods]
    if "rsdehamba" in args.methods and args.other_size:
        runs += [("rsdehamba", mode, args.other_size) for mode in args.modes]
    if args.out.exists():  # keep what an earlier run measured that this one does not measure again
        earlier = json.loads(args.out.read_text())["runs"]
        result["runs"] = [r for r in earlier if (r["method"], r["mode"], r["size"]) not in runs]
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        folder = Path(tmp)
        scenes: dict[int, dict] = {}
        for method, mode, size in runs:
            if size not in scenes:
                scenes[size] = make_scenes_apart(folder, size)
            out = folder / f"{method}_{mode}_{size}.tif"
            row = {"method": method, "mode": mode, "size": size} | measure(
                [*scenes[size][METHODS[method]], "-o", str(out), "--method", method, *MODES[mode]])
            out.unlink()
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
