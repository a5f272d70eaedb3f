"""DS-RDMPD speed on the CPU, and against the authors' implementation side by side, measured in one run.

DS-RDMPD (Zhou et al., IEEE TGRS 2025) restores an image with a stage-1 U-Net and then S = 5 residual-diffusion
steps of a two-decoder U-Net. At the paper's configuration (stage 1 dim 64, stage 2 dim 64 with levels 1-2-4-8,
random weights: the speed does not depend on their values) and one 256 x 256 RGB image this measures:

- stage 1: ours in float32 (contiguous), float32 channels_last, bfloat16 autocast (channels_last), and the authors'
  ``U_Net``;
- one stage-2 step: ours as the restorer runs it (the condition's share of the first convolution computed once per
  image, only the residual decoder evaluated, since ``pred_res`` uses nothing else) in the three precisions; ours
  with both decoders (what the authors' network evaluates); and the authors' ``UnetRes`` on the 9-channel input;
- the full restore (stage 1 + 5 steps, as ``DSRDMPD.forward`` runs it): ours in float32; under bfloat16 autocast
  (``--amp``: stage 1 in bfloat16, the denoiser kept in float32); with ``stage2_amp`` (everything in bfloat16); and
  the authors' pipeline as their test script runs it (``U_Net`` then ``ResidualDiffusion.sample``). All use the same
  weights (the authors' initialisation, converted by :func:`rsrestore.models.dsrdmpd.official.convert_official`)
  and the same starting noise, so the outputs are compared too: max abs difference to ours in float32, in 1/255.

Each timing is the median of ``--repeats`` after one warm-up; within a repeat the variants take turns, so a change in
the machine's load falls on all of them alike. Wall seconds and process CPU seconds are both recorded: on a loaded
machine (the load average is recorded) CPU seconds are the steadier of the two. Compare ratios within one run.

The authors' code is not part of this project: fetch ``Aaronwangz/DS-RDMPD`` elsewhere and pass its ``DS-RDMPD/RDMPD``
folder with ``--official``. Their module imports training-only packages (torchvision, opencv, Augmentor,
accelerate, ema_pytorch, their dataset module); those that are not installed are replaced by empty placeholder
modules, which the network and sampler classes never use.

Usage: python benchmarks/bench_dsrdmpd.py [--official DIR] [--threads N] [--repeats 2] [--size 256]
       [--out benchmarks/results/dsrdmpd.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch

from bench_models import cpu_name  # benchmarks/ is on sys.path when a benchmark runs as a script
from rsrestore.diffusion import to_signed
from rsrestore.models.blocks import count_parameters
from rsrestore.models.dsrdmpd import DSRDMPD, DSRDMPDConfig
from rsrestore.models.dsrdmpd.official import convert_official

TRAINING_ONLY = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.utils",
                 "cv2", "Augmentor", "accelerate", "ema_pytorch", "dataset")


def import_official(folder: Path):
    """The authors' U_Net and (UnetRes, ResidualDiffusion), imported from their files by path."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # their sampler wraps its loop in tqdm
    stubbed: set[str] = set()
    for name in TRAINING_ONLY:
        top = name.split(".")[0]
        if top in stubbed or name == "dataset" or importlib.util.find_spec(top) is None:
            stubbed.add(top)
            stub = sys.modules.setdefault(name, types.ModuleType(name))
            for attr in ("Accelerator", "EMA", "myImageFlodertrain", "myImageFlodertest", "myImageFloderval"):
                setattr(stub, attr, object)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, stub)

    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    stage1 = load("official_mcess_unet", folder / "MCESS_UNet.py")
    rddm = load("official_rddm", folder / "src" / "residual_denoising_diffusion_pytorch.py")
    return stage1.U_Net, rddm.UnetRes, rddm.ResidualDiffusion


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_interleaved(cases: dict, warmup: int, repeats: int) -> dict:
    """{name: {"wall_s": median, "cpu_s": median, "wall_times_s": [...]}} with the cases taking turns."""
    times = {name: [] for name in cases}
    for i in range(warmup + repeats):
        for name, fn in cases.items():
            t = timed(fn)
            if i >= warmup:
                times[name].append(t)
    return {name: {"wall_s": statistics.median(w for w, _ in ts), "cpu_s": statistics.median(c for _, c in ts),
                   "wall_times_s": [round(w, 3) for w, _ in ts]} for name, ts in times.items()}


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, default=None, help="the authors' DS-RDMPD/RDMPD folder")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dsrdmpd.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, steps = args.size, 5

    ours = DSRDMPD(DSRDMPDConfig(steps=steps)).eval()
    official = None
    if args.official is not None:
        u_net, unet_res, residual_diffusion = import_official(args.official)
        off_stage1 = u_net(dim=64).eval()
        off_stage2 = unet_res(dim=64, dim_mults=(1, 2, 4, 8), condition=True, input_condition=True)
        off_diffusion = residual_diffusion(off_stage2, image_size=size, timesteps=1000, sampling_timesteps=steps,
                                           objective="pred_res", loss_type="l1", condition=True, sum_scale=1,
                                           input_condition=True, input_condition_mask=False).eval()
        # BatchNorm statistics away from (0, 1), so the comparison exercises them too
        for m in off_stage1.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.05, 0.05)
                m.running_var.uniform_(0.8, 1.2)
        ours.load_state_dict(convert_official(off_stage1.state_dict(), off_diffusion.state_dict()), strict=True)
        official = (off_stage1, off_stage2, off_diffusion)
    ours_cl = DSRDMPD(ours.cfg).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl = ours_cl.to(memory_format=torch.channels_last)
    ours_all_bf16 = DSRDMPD(dataclasses.replace(ours.cfg, stage2_amp=True)).eval()
    ours_all_bf16.load_state_dict(ours.state_dict())

    g = torch.Generator().manual_seed(1)
    hazy = torch.rand(1, 3, size, size, generator=g) * 0.5 + 0.3
    hazy_cl = hazy.contiguous(memory_format=torch.channels_last)
    start_noise = torch.randn(1, 3, size, size, generator=g)
    x_t = to_signed(hazy) + start_noise  # a state at t = T - 1
    t = torch.tensor([999])

    result: dict = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "setup": {"image": f"1 x 3 x {size} x {size}, random", "weights": "random (the authors' init, converted)"
                  if official else "random", "steps": steps, "timesteps": 1000, "warmup": args.warmup,
                  "repeats": args.repeats, "statistic": "median; variants interleaved within each repeat"},
        "parameters": {"ours": {"stage1": count_parameters(ours.stage1), "stage2": count_parameters(ours.stage2)}},
    }
    if official:
        result["parameters"]["official"] = {"stage1": count_parameters(official[0]),
                                            "stage2": count_parameters(official[1])}

    with torch.inference_mode():
        # ---- stage 1
        cases = {
            "ours_fp32": lambda: ours.stage1(hazy),
            "ours_fp32_channels_last": lambda: ours_cl.stage1(hazy_cl),
            "ours_bf16_channels_last": lambda: _bf16(ours_cl.stage1, hazy_cl),
        }
        if official:
            cases["official_fp32"] = lambda: official[0](hazy)
        result["stage1"] = run_interleaved(cases, args.warmup, args.repeats)

        # ---- one stage-2 step
        coarse = to_signed(ours.stage1(hazy))
        cond = torch.cat([coarse, to_signed(hazy)], dim=1)
        feats = ours.stage2.encode_condition(cond)
        cond_cl, x_t_cl = cond.contiguous(memory_format=torch.channels_last), x_t.contiguous(
            memory_format=torch.channels_last)
        feats_cl = ours_cl.stage2.encode_condition(cond_cl)
        with autocast(True):
            feats_bf16 = ours_cl.stage2.encode_condition(cond_cl)
        cases = {
            "ours_fp32": lambda: ours.stage2(x_t, t, cond_features=feats),
            "ours_fp32_channels_last": lambda: ours_cl.stage2(x_t_cl, t, cond_features=feats_cl),
            "ours_bf16_channels_last": lambda: _bf16(lambda x: ours_cl.stage2(x, t, cond_features=feats_bf16), x_t_cl),
            "ours_fp32_both_decoders": lambda: ours.stage2(x_t, t, cond, both=True),
        }
        if official:
            full_input = torch.cat([x_t, cond], dim=1)
            cases["official_fp32"] = lambda: official[1](full_input, t)
        result["stage2_step"] = run_interleaved(cases, args.warmup, args.repeats)

        # ---- full restore, same weights and starting noise
        def noise_fn(shape, step):
            assert step == 0, "eta = 0: only the starting noise is drawn"
            return start_noise

        outputs = {}

        def restore_ours(name, model, amp):
            def run():
                with autocast(amp):
                    outputs[name] = model(hazy, noise_fn=noise_fn)
            return run

        cases = {"ours_fp32": restore_ours("ours_fp32", ours, False),
                 "ours_amp_stage1_bf16": restore_ours("ours_amp_stage1_bf16", ours, True),
                 "ours_amp_all_bf16": restore_ours("ours_amp_all_bf16", ours_all_bf16, True)}
        if official:
            off_stage1, _, off_diffusion = official

            def restore_official():
                coarse_off = off_stage1(hazy)
                torch.manual_seed(123)  # their sampler draws the starting noise from the global generator
                outputs["official_fp32"] = off_diffusion.sample([coarse_off, hazy], batch_size=1, last=True)[-1]

            cases["official_fp32"] = restore_official
            torch.manual_seed(123)
            start_noise.copy_(torch.randn(1, 3, size, size))  # the same starting noise for ours
        result["restore"] = run_interleaved(cases, 0, args.repeats)

    fp32 = outputs["ours_fp32"]
    result["max_abs_error_vs_ours_fp32_255"] = {
        name: float((out - fp32).abs().max()) * 255 for name, out in outputs.items() if name != "ours_fp32"}
    with torch.inference_mode():
        s1_fp32 = ours.stage1(hazy)
        s1_bf16 = _bf16(ours.stage1, hazy).float()
    result["max_abs_error_vs_ours_fp32_255"]["stage1_bf16"] = float((s1_bf16 - s1_fp32).abs().max()) * 255
    if official:
        for clock in ("wall_s", "cpu_s"):
            result[f"speedup_vs_official_{clock[:-2]}"] = {
                f"{part}_{case}": result[part]["official_fp32"][clock] / result[part][case][clock]
                for part in ("stage1", "stage2_step", "restore") for case in result[part]
                if case.startswith("ours")}
    result["mpix_per_s_wall"] = {case: size * size / 1e6 / v["wall_s"] for case, v in result["restore"].items()}
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


def _bf16(fn, x):
    with autocast(True):
        return fn(x)


if __name__ == "__main__":
    main()
