"""ASPDiff speed on the CPU against DS-RDMPD, per sampling step, measured in one run.

A sampling step of ASPDiff is one call of DAPE's noise predictor (with its haze injection, the condition's share of
the first convolution computed once per image); a step of DS-RDMPD is one call of its stage-2 residual denoiser as its
restorer runs it. Both at the paper-sized configurations (ASPDiff: the ``ASPDiffConfig`` defaults; DS-RDMPD: its
paper's) and at the CPU-sized ones (``cpu_small()`` of each), on one 3 x ``--size`` x ``--size`` image with random
weights (the speed does not depend on their values), float32. Also the once-per-image work of each (ASPDiff: APEM
and HARM; DS-RDMPD: stage 1), and with ``--restores`` a whole restore at each method's default step count (slow at
the paper's size on a shared CPU).

Each timing is the median of ``--repeats`` after one warm-up, the variants taking turns within a repeat so that a
change in the machine's load falls on all alike (see bench_dsrdmpd.py). The quality-versus-steps curve of the
CPU-trained weights (``benchmarks/results/aspdiff_steps.json``, measured with an earlier training script) is copied
in when it exists.

Usage: nice -n 10 python benchmarks/bench_aspdiff.py [--threads 2] [--repeats 3] [--size 256] [--restores]
       [--out benchmarks/results/aspdiff.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from bench_dsrdmpd import run_interleaved  # benchmarks/ is on sys.path when a benchmark runs as a script
from bench_models import cpu_name
from rsrestore.diffusion import to_signed
from rsrestore.models.aspdiff import ASPDiff, ASPDiffConfig
from rsrestore.models.blocks import count_parameters
from rsrestore.models.dsrdmpd import DSRDMPD, DSRDMPDConfig

RESULTS = Path(__file__).resolve().parent / "results"


def step_cases(label: str, aspdiff: ASPDiff, dsrdmpd: DSRDMPD, hazy: torch.Tensor) -> dict:
    """One sampling step of each, with everything that is computed once per image done beforehand."""
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(hazy.shape, generator=g)
    t = torch.full((1,), 500, dtype=torch.long)
    denoise, _ = aspdiff.dape.denoiser(hazy, aspdiff.priors(hazy))
    coarse = to_signed(dsrdmpd.stage1(hazy))
    feats = dsrdmpd.stage2.encode_condition(torch.cat([coarse, to_signed(hazy)], dim=1))
    return {f"aspdiff_{label}": lambda: denoise(x_t, t), f"dsrdmpd_{label}": lambda: dsrdmpd.stage2(x_t, t, cond_features=feats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--restores", action="store_true", help="also time whole restores")
    parser.add_argument("--out", type=Path, default=RESULTS / "aspdiff.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hazy = torch.rand(1, 3, args.size, args.size)
    models = {
        "paper": (ASPDiff(ASPDiffConfig()).eval(), DSRDMPD(DSRDMPDConfig()).eval()),
        "cpu_small": (ASPDiff(ASPDiffConfig.cpu_small()).eval(), DSRDMPD(DSRDMPDConfig.cpu_small()).eval()),
    }
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "setup": {"image": f"1 x 3 x {args.size} x {args.size}, random", "weights": "random", "precision": "float32",
                  "warmup": args.warmup, "repeats": args.repeats,
                  "statistic": "median; variants interleaved within each repeat"},
        "parameters": {label: {"aspdiff": count_parameters(a), "aspdiff_denoiser": count_parameters(a.dape),
                               "dsrdmpd_stage2": count_parameters(d.stage2)} for label, (a, d) in models.items()},
    }
    with torch.inference_mode():
        cases = {}
        for label, (a, d) in models.items():
            cases |= step_cases(label, a, d, hazy)
        result["sampling_step"] = run_interleaved(cases, args.warmup, args.repeats)
        for label in models:
            s = result["sampling_step"]
            result.setdefault("step_ratio_aspdiff_over_dsrdmpd", {})[label] = {
                k: round(s[f"aspdiff_{label}"][k] / s[f"dsrdmpd_{label}"][k], 3) for k in ("wall_s", "cpu_s")}
        cases = {}
        for label, (a, d) in models.items():
            cases[f"aspdiff_once_per_image_{label}"] = lambda a=a: a.refine(hazy, hazy, a.priors(hazy))
            cases[f"dsrdmpd_once_per_image_{label}"] = lambda d=d: d.stage1(hazy)
            if args.restores:
                cases[f"aspdiff_restore_{label}_{a.cfg.steps}_steps"] = lambda a=a: a(hazy)
                cases[f"dsrdmpd_restore_{label}_{d.cfg.steps}_steps"] = lambda d=d: d(hazy)
        result["per_image"] = run_interleaved(cases, args.warmup, args.repeats)
    curve = RESULTS / "aspdiff_steps.json"
    if curve.exists():
        result["quality_vs_steps"] = json.loads(curve.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("sampling_step", "step_ratio_aspdiff_over_dsrdmpd")}, indent=2))


if __name__ == "__main__":
    main()
