"""Selective scan speed: forward+backward time of each implementation, and ratios measured in the same run.

Setting of the RSDehamba issue: batch 1, four scan directions x 48 channels (D = 192), d_state 16, sequence lengths
64^2 and 128^2, delta_bias with softplus, D skip, no gate. Compared:

* ``numba``   -- :func:`rsrestore.models.scan.selective_scan_numba`, the fused kernels (the CPU default when numba
  is installed; parallel over batch x direction x channel block on the row's thread count),
* ``chunked`` -- :func:`rsrestore.models.scan.selective_scan_chunked` (pure PyTorch; the default before, and the
  fallback without numba; it runs on one thread whatever the setting, see ``scan.MAX_THREADS``),
* with ``--impls``, also ``loop`` (:func:`~rsrestore.models.scan.selective_scan_loop`, autograd over unbind slices),
  ``ref`` (:func:`~rsrestore.models.scan.selective_scan_ref`, the step-by-step reference) and ``mambapy``
  (mambapy's parallel scan ``mambapy.pscan.pscan`` with the discretisation of its ``MambaBlock.selective_scan``, when
  mambapy is installed; it is not a dependency).

Each figure is the best of ``--repeats`` runs at each thread count of ``--threads``; implementations are interleaved
so that load from other processes affects them alike, and ``speedup_over_chunked`` compares them within one run.
Both wall-clock and process CPU time are recorded; on a shared machine (the load average is recorded before and
after) CPU time is the steadier. Memory: bytes autograd saves for the backward pass, and peak resident memory of a
fresh process running one forward+backward (``--memory``). With ``--model-sizes``, the forward time of the RSDehamba
model (paper configuration, batch 1, RGB) too.

    python benchmarks/bench_scan.py [--lengths 4096 16384] [--threads 1 2] [--out benchmarks/results/scan.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rsrestore.models import scan  # noqa: E402


def make_inputs(length: int, directions: int, channels: int, d_state: int, batch: int, seed: int = 0,
                time_major: bool = True):
    """Scan inputs; with ``time_major`` (the default) u, delta are (batch, D, L) views of (batch, L, D) tensors and
    B, C (batch, G, N, L) views of (batch, L, G, N) ones, which is what RSDehamba passes (its sequences are built
    time-major); otherwise all are contiguous in their own shapes."""
    g = torch.Generator().manual_seed(seed)
    dim = directions * channels

    def seq(*shape):  # (batch, X..., L), time-major in memory when asked
        x = torch.randn(shape[0], shape[-1], *shape[1:-1], generator=g)
        x = x.movedim(1, -1)
        return x if time_major else x.contiguous()

    u = seq(batch, dim, length)
    delta = seq(batch, dim, length) * 0.5 - 2.0
    # S4D-real initialisation, as in Mamba: A[:, n] = -(n + 1)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1)
    B = seq(batch, directions, d_state, length)
    C = seq(batch, directions, d_state, length)
    D = torch.ones(dim)
    bias = torch.rand(dim, generator=g) * 0.1
    return [u, delta, A, B, C, D, bias]


def mambapy_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """mambapy's selective_scan (parallel scan path) on grouped B, C: same maths as the others."""
    from mambapy.pscan import pscan

    bsz, dim, length = u.shape
    g, n = B.shape[1], A.shape[1]
    dt = delta + delta_bias[:, None]
    dt = torch.nn.functional.softplus(dt) if delta_softplus else dt
    dt = dt.transpose(1, 2)  # (batch, L, D)
    x = u.transpose(1, 2)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)  # (batch, L, D, N)
    Bx = B.permute(0, 3, 1, 2).unsqueeze(3).expand(bsz, length, g, dim // g, n).reshape(bsz, length, dim, n)
    BX = (dt * x).unsqueeze(-1) * Bx
    hs = pscan(deltaA, BX)  # (batch, L, D, N)
    Cx = C.permute(0, 3, 1, 2).unsqueeze(-1)  # (batch, L, G, N, 1)
    y = (hs.view(bsz, length, g, dim // g, n) @ Cx).reshape(bsz, length, dim)
    y = y + D * x
    return y.transpose(1, 2)


def implementations(names: list[str], include_ref: bool = True):
    """Callables (u, delta, A, B, C, D, delta_bias) -> y for the named implementations that are available."""
    impls = {}
    for name in names:
        if name == "mambapy":
            try:
                import mambapy.pscan  # noqa: F401
            except ImportError:
                continue
            impls[name] = mambapy_scan
        elif name == "numba" and not scan.numba_kernel_available():
            continue
        elif name != "ref" or include_ref:
            fn = scan.IMPLEMENTATIONS[name]
            impls[name] = lambda *a, fn=fn: fn(*a[:6], delta_bias=a[6], delta_softplus=True)
    return impls


def saved_bytes(fn, inputs) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (inputs excluded)."""
    seen: dict[int, int] = {}  # storage address -> bytes: views of one storage count once
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in input_ptrs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(*inputs)
    del y
    return sum(seen.values())


def time_once(fn, inputs) -> tuple[float, float, float]:
    for t in inputs:
        t.grad = None
    w0, c0 = time.perf_counter(), time.process_time()
    y = fn(*inputs)
    w1 = time.perf_counter()
    y.backward(torch.ones_like(y))
    w2, c2 = time.perf_counter(), time.process_time()
    return w2 - w0, c2 - c0, w1 - w0


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _child_peak(name: str, length: int, threads: int, k: int, c: int, n: int, bs: int) -> float:
    """Run in a fresh process: peak resident MiB above the resident size just before forward+backward."""
    torch.set_num_threads(threads)
    x = make_inputs(length, k, c, n, bs)
    for t in x:
        t.requires_grad_()
    fn = implementations([name])[name]
    fn(*x)  # compiles (or loads) the numba kernels before the measurement
    # a forked child inherits its parent's high-water mark, so reset it (Linux clear_refs) and use VmHWM
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kb("VmRSS")
    y = fn(*x)
    y.backward(torch.ones_like(y))
    return (_status_kb("VmHWM") - base) / 1024


def peak_rss_mb(name: str, length: int, threads: int, args) -> float:
    """Peak resident memory (MiB) of one forward+backward of `name` in a fresh process, above its baseline."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_scan as b;"
        f"print(b._child_peak({name!r}, {length}, {threads}, {args.directions}, {args.channels}, "
        f"{args.d_state}, {args.batch}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def time_model(sizes: list[int], repeats: int) -> dict:
    """Forward time (no grad, batch 1, 3 bands) of RSDehamba with the paper's configuration."""
    from rsrestore.models.rsdehamba import RSDehamba

    torch.manual_seed(0)
    model = RSDehamba().eval()
    out = {"parameters": model.num_parameters(), "widths": list(model.cfg.widths), "seconds": {}}
    for size in sizes:
        x = torch.rand(1, 3, size, size)
        best_w, best_c = float("inf"), float("inf")
        with torch.no_grad():
            for _ in range(max(1, repeats - 1) if size <= 256 else 1):
                w0, c0 = time.perf_counter(), time.process_time()
                model(x)
                best_w = min(best_w, time.perf_counter() - w0)
                best_c = min(best_c, time.process_time() - c0)
        out["seconds"][f"{size}x{size}"] = {"wall": round(best_w, 3), "cpu": round(best_c, 3)}
        print(json.dumps({"rsdehamba_forward": size, "wall_s": best_w, "cpu_s": best_c}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[64 * 64, 128 * 128])
    p.add_argument("--directions", type=int, default=4)
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--impls", nargs="+", default=["chunked", "numba"],
                   help="from chunked, numba, loop, ref, mambapy")
    p.add_argument("--ref-max-length", type=int, default=4096, help="skip the slow reference above this length")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS in fresh processes (slower)")
    p.add_argument("--model-sizes", type=int, nargs="*", default=[],
                   help="also time an RSDehamba (paper config) forward pass at these square sizes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scan.json")
    args = p.parse_args()
    load_before = os.getloadavg()

    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for length in args.lengths:
            impls = implementations(args.impls, length <= args.ref_max_length)
            inputs = make_inputs(length, args.directions, args.channels, args.d_state, args.batch)
            for t in inputs:
                t.requires_grad_()
            row = {"threads": threads, "length": length, "load_average_1min": round(os.getloadavg()[0], 2),
                   "wall_s": {}, "cpu_s": {}, "forward_wall_s": {}, "saved_for_backward_mb": {}}
            for name, fn in impls.items():  # warm-up (and numba's compilation), and the saved-tensor count
                row["saved_for_backward_mb"][name] = round(saved_bytes(fn, inputs) / 2**20, 2)
                time_once(fn, inputs)
            best = {name: (float("inf"), float("inf"), float("inf")) for name in impls}
            for _ in range(args.repeats):
                for name, fn in impls.items():
                    w, c, f = time_once(fn, inputs)
                    b = best[name]
                    best[name] = (min(b[0], w), min(b[1], c), min(b[2], f))
            for name, (w, c, f) in best.items():
                row["wall_s"][name] = round(w, 4)
                row["cpu_s"][name] = round(c, 4)
                row["forward_wall_s"][name] = round(f, 4)
            if "chunked" in best:
                ours = best["chunked"]
                row["speedup_over_chunked_wall"] = {k: round(ours[0] / v[0], 2) for k, v in best.items()
                                                    if k != "chunked"}
                row["speedup_over_chunked_cpu"] = {k: round(ours[1] / v[1], 2) for k, v in best.items()
                                                   if k != "chunked"}
            if args.memory:
                row["peak_rss_mb"] = {name: round(peak_rss_mb(name, length, threads, args), 1) for name in impls}
            results.append(row)
            print(json.dumps(row), flush=True)

    model = time_model(args.model_sizes, args.repeats) if args.model_sizes else None

    report = {
        "benchmark": "selective scan forward+backward",
        "setting": {
            "batch": args.batch, "directions": args.directions, "channels_per_direction": args.channels,
            "d_state": args.d_state, "dtype": "float32", "threads": args.threads, "repeats": args.repeats,
            "statistic": "best of the repeats", "delta_softplus": True, "chunk": scan.DEFAULT_CHUNK,
            "group_elements": scan.GROUP_ELEMENTS,
            "layout": "u, delta, B, C time-major in memory, as RSDehamba passes them (make_inputs)",
            "chunked_threads": "always 1 (scan.MAX_THREADS); numba uses the thread count of the row",
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine: the load average is that of all its users; compare ratios within this run",
            "torch": torch.__version__,
        },
        "results": results,
    }
    if model is not None:
        report["rsdehamba_forward"] = model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
