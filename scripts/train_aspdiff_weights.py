"""Train CPU-sized ASPDiff haze weights, score them on held-out scenes against the dark channel prior, measure the
quality-versus-steps curve, and export them into the package only if they beat the dark channel prior everywhere.

ASPDiff: Zhang et al., "Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image dehazing",
IEEE TGRS 2022. Baseline: ``dcp`` (He, Sun & Tang, TPAMI 2011).

Stages (each can be run alone; ``train`` resumes a stopped run)::

    python scripts/train_aspdiff_weights.py train      # configs/aspdiff_haze_cpu.yaml (after the APEM weights' run)
    python scripts/train_aspdiff_weights.py evaluate   # input / dcp / aspdiff on the held-out sets -> the table
    python scripts/train_aspdiff_weights.py curve      # PSNR, SSIM, CIEDE2000 against DDIM steps 1, 2, 5, 10, 20
    python scripts/train_aspdiff_weights.py export     # evaluate, then the weights into src/rsrestore/weights

Data: the scene split and held-out sets of ``scripts/train_rsdehamba_weights.py`` (its ``prepare`` stage writes them):
NEON TEAK + SJER_2017 (sites never trained on; 60 crops of 256 x 256) and EuroSAT positions 950-999 (100 tiles of
64 x 64), with fixed synthetic haze. Results go to ``benchmarks/results/aspdiff_haze_heldout.{md,json}`` and
``benchmarks/results/aspdiff_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import train_rsdehamba_weights as haze_split  # same folder: the split, the held-out sets and their descriptions

ROOT = haze_split.ROOT
CONFIG = ROOT / "configs" / "aspdiff_haze_cpu.yaml"
WORK = ROOT / "runs" / "aspdiff_haze_cpu"
RUN = WORK / "train"  # must match run.out_dir in CONFIG
EVAL = WORK / "eval"
WEIGHTS_NAME = "aspdiff_haze_rgb"
RESULTS = haze_split.RESULTS
TABLE_NAME = "aspdiff_haze_heldout"
CURVE = RESULTS / "aspdiff_steps.json"
METHODS = ("input", "dcp", "aspdiff")
CURVE_STEPS = (1, 2, 5, 10, 20)
LABELS = {"input": "hazy input", "dcp": "DCP (dark channel prior, classical)", "aspdiff": "ASPDiff (these weights)"}
LIMITS = ("Trained for minutes on a shared CPU (13 for the table), on synthetic haze only (an atmospheric scattering "
          "model), at 64x64, with a 0.5M-parameter model: it has not seen real haze, thin cloud or scenes larger than its "
          "crops. Each tile's GroupNorm, linear-attention and channel-attention statistics come from that tile, so a "
          "tiled restore of a large scene can differ from whole-image sampling where tiles meet.")


def _rel(p: Path) -> str:
    return haze_split._rel(p)


def train(threads: int) -> None:
    import torch

    from rsrestore.train import train_from_config

    torch.set_num_threads(threads)
    os.chdir(ROOT)  # the config's paths are relative to the project root
    result = train_from_config(CONFIG, resume=True)
    print(f"{CONFIG.name}: step {result.step}/{result.total_steps}, {result.wall_time_s:.0f} s, "
          f"val {result.val_scores}", file=sys.stderr)


def scored_weights(steps: int | None = None) -> Path:
    """The run's final weights, or its latest checkpoint's (copied beside a metadata file naming the config); with
    ``steps``, a copy whose metadata sets the DDIM steps restores take."""
    final = RUN / "final.safetensors"
    if final.exists() and steps is not None:
        copy = WORK / f"final_{steps}_steps.safetensors"
        copy.write_bytes(final.read_bytes())
        meta = json.loads((RUN / "final.json").read_text())
        copy.with_suffix(".json").write_text(json.dumps(meta | {"config": meta["config"] | {"steps": steps}}))
        return copy
    if final.exists():
        return final
    from rsrestore.train import load_config
    from rsrestore.train.checkpoint import resume_point

    ckpt, _ = resume_point(RUN / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{_rel(RUN)} has neither final weights nor a checkpoint: run the `train` stage first")
    copy = WORK / "scored.safetensors"
    copy.write_bytes((ckpt.path / "model.safetensors").read_bytes())
    config = load_config(CONFIG, check_model=False).model.config
    copy.with_suffix(".json").write_text(json.dumps({"method": "aspdiff", "config": config, "from": str(ckpt.path),
                                                     "steps": ckpt.state["step"]}))
    return copy


def evaluate(limit: int | None = None, steps: int | None = None) -> dict:
    """Score ``METHODS`` on each held-out set; {set: {method: mean scores and n}}."""
    from rsrestore.evaluate import evaluate as run_eval

    weights = scored_weights(steps)
    os.chdir(ROOT)
    scores: dict = {}
    for name in haze_split.TEST_SETS:
        root = haze_split.HELDOUT / name
        if not (root / "manifest.json").exists():
            raise SystemExit(f"{_rel(root)} not found: run `python scripts/train_rsdehamba_weights.py prepare` first")
        t = time.perf_counter()
        results = run_eval(list(METHODS), "paired", _rel(root), EVAL / name, weights={"aspdiff": str(weights)},
                           progress=False, pictures=6, limit=limit)
        scores[name] = {m: r.mean | {"n": len(r.per_image)} for m, r in results.items()}
        print(f"evaluate {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return scores


def verdict(scores: dict) -> dict:
    """Whether ASPDiff beats dcp (and the hazy input) on every deciding metric of every held-out set."""
    def against(other: str) -> dict:
        return {name: {k: (t["aspdiff"][k] > t[other][k]) == higher for k, higher in haze_split.DECIDING}
                for name, t in scores.items()}

    vs = {other: against(other) for other in ("dcp", "input")}
    return {f"beats_{other}_on_all": all(all(v.values()) for v in table.values()) for other, table in vs.items()} | {
        f"vs_{other}": table for other, table in vs.items()}


def _run_meta() -> dict:
    weights = scored_weights()
    meta_path = weights.parent / "final.json" if weights.name == "final.safetensors" else weights.with_suffix(".json")
    return json.loads(meta_path.read_text())


def write_table(scores: dict, decision: dict, steps: int) -> Path:
    from rsrestore.metrics.full_reference import CONVENTIONS

    RESULTS.mkdir(parents=True, exist_ok=True)
    tests = haze_split._test_description()
    meta = _run_meta()
    train_steps = meta.get("steps")
    minutes = f", {meta['wall_time_s'] / 60:.1f} min" if "wall_time_s" in meta else ""
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    lines = [
        "# ASPDiff on held-out synthetic haze scenes", "",
        f"CPU-sized ASPDiff (configs/aspdiff_haze_cpu.yaml: {train_steps} training steps of batch 8, 64x64 crops{minutes}; "
        f"APEM started from the APEM weights). Restores with {steps} DDIM steps, seed 0 (the number chosen on the "
        "validation crops, `aspdiff_steps.json`).",
        "Scores: RGB, data range 1, Gaussian SSIM (window 11, sigma 1.5), CIEDE2000 on sRGB->Lab, SAM in degrees, "
        "mean over images; outputs clamped to [0, 1]. Written by `scripts/train_aspdiff_weights.py`.", "",
        f"Beats DCP on PSNR, SSIM and CIEDE2000 on every set: **{yes(decision['beats_dcp_on_all'])}** (the condition "
        f"for shipping the weights); beats the hazy input on all three: **{yes(decision['beats_input_on_all'])}**.",
        "",
    ]
    for name, table in scores.items():
        t = tests[name]
        lines += [f"## {name}: {next(iter(table.values()))['n']} crops of {t['size']}x{t['size']} from {t['from']}", ""]
        lines += haze_split.score_table(table, decision["vs_dcp"][name], "ASPDiff", LABELS)
    lines += ["## What these weights cannot do", "", LIMITS, ""]
    md = RESULTS / f"{TABLE_NAME}.md"
    md.write_text("\n".join(lines))
    md.with_suffix(".json").write_text(json.dumps({
        "weights": f"{WEIGHTS_NAME}.safetensors", "config": meta.get("config"), "training_steps": train_steps,
        "sampling_steps": steps,
        "test_sets": tests, "scores": scores, "decision": decision, "conventions": CONVENTIONS, "limits": LIMITS,
    }, indent=2) + "\n")
    return md


def curve(limit_neon: int = 12) -> dict:
    """Mean PSNR, SSIM and CIEDE2000 of ASPDiff on the held-out sets for each number of DDIM steps, seed 0 (NEON
    limited to its first ``limit_neon`` crops to keep the run short); also seconds per image."""
    import torch

    from rsrestore.data import build_dataset
    from rsrestore.metrics.full_reference import ciede2000, psnr, ssim
    from rsrestore.models.registry import load_model

    model = load_model("aspdiff", weights=str(scored_weights()))
    out: dict = {"steps": list(CURVE_STEPS), "seed": 0, "sets": {}}
    for name in haze_split.TEST_SETS:
        ds = build_dataset("paired", haze_split.HELDOUT / name)
        n = len(ds) if name != "neon" else min(limit_neon, len(ds))
        rows = {}
        for steps in CURVE_STEPS:
            sums, t0 = {"psnr": 0.0, "ssim": 0.0, "ciede2000": 0.0}, time.perf_counter()
            for i in range(n):
                item = ds[i]
                x, y = item["input"][None], item["target"][None]
                with torch.inference_mode():
                    pred = model(x, steps=steps)
                for key, fn in (("psnr", psnr), ("ssim", ssim), ("ciede2000", ciede2000)):
                    sums[key] += float(fn(pred, y))
            rows[steps] = {k: v / n for k, v in sums.items()} | {"seconds_per_image": (time.perf_counter() - t0) / n}
            print(f"curve {name} {steps} steps: {rows[steps]}", file=sys.stderr)
        out["sets"][name] = {"n": n, "by_steps": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    CURVE.write_text(json.dumps(out, indent=2) + "\n")
    return out


def export(scores: dict, decision: dict, steps: int) -> Path:
    """Copy the run's final weights into the package with their metadata and held-out scores; restores with them
    take ``steps`` DDIM steps by default."""
    from rsrestore.models.registry import sha256_of
    from rsrestore.train import export_weights

    dst = export_weights(RUN, haze_split.WEIGHTS_DIR, WEIGHTS_NAME)
    meta_path = dst.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["val_scores"] = meta.pop("scores", None)
    meta["config"] = meta["config"] | {"steps": steps}
    meta.update({
        "method": "aspdiff", "task": "haze", "data": haze_split._data_description(),
        "scores": {name: table["aspdiff"] for name, table in scores.items()},
        "baseline_scores": {name: {m: row for m, row in table.items() if m != "aspdiff"}
                            for name, table in scores.items()},
        "heldout_decision": decision, "limits": LIMITS,
        "trained_with": "scripts/train_aspdiff_weights.py and configs/aspdiff_haze_cpu.yaml, CPU",
    })
    if meta["sha256"] != sha256_of(dst):
        raise RuntimeError("exported weights do not match their recorded sha256")
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("train", "evaluate", "curve", "export"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps of the scored restores (evaluate, export)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the first N images of each set (curve: of NEON; default 12)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.stage == "train":
        train(args.threads)
    elif args.stage == "curve":
        curve(limit_neon=args.limit or 12)
    else:
        scores = evaluate(args.limit, args.steps)
        decision = verdict(scores)
        print(write_table(scores, decision, args.steps).read_text())
        if args.stage == "export":
            if not decision["beats_dcp_on_all"]:
                print("not exported: the weights do not beat dcp on every held-out set", file=sys.stderr)
                return 1
            print(f"exported {export(scores, decision, args.steps)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
