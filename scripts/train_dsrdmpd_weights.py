"""Train CPU-sized DS-RDMPD haze weights in two stages and score them on held-out scenes against the dark channel prior
and RSDehamba; export them into the package only if they beat the dark channel prior everywhere.

DS-RDMPD: Zhou, Wang, Zhang, Tao, Ren, "A Dual-Stage Residual Diffusion Model with Perceptual Decoding for Remote
Sensing Image Dehazing", IEEE TGRS 2025. Baselines: ``dcp`` (He, Sun & Tang, TPAMI 2011) and the bundled ``rsdehamba``.

Stages (``all`` runs them in order; each one can be rerun alone, and ``train`` resumes a stopped run)::

    python scripts/train_dsrdmpd_weights.py prepare    # the RSDehamba weights' split and held-out test sets
    python scripts/train_dsrdmpd_weights.py train      # configs/dsrdmpd_haze_cpu_stage1.yaml, then _stage2.yaml
    python scripts/train_dsrdmpd_weights.py evaluate   # input / dcp / rsdehamba / dsrdmpd on the held-out sets
    python scripts/train_dsrdmpd_weights.py export     # evaluate, then the weights into src/rsrestore/weights
    python scripts/train_dsrdmpd_weights.py picture    # a real Landsat-7 crop restored by each method, for the eye
    python scripts/train_dsrdmpd_weights.py table      # rewrite the table from its JSON

Data: the scene split of ``scripts/train_rsdehamba_weights.py`` (its ``prepare`` stage writes it), so both learned haze
models are trained on the same scenes and scored on the same unseen ones: training on EuroSAT RGB positions 0-899 per
class, NEON HARV + OSBS and NAIP; held out NEON TEAK + SJER_2017 (sites never trained on; 60 crops of 256 x 256) and
EuroSAT positions 950-999 (100 tiles of 64 x 64), with fixed synthetic haze. The table goes to
``benchmarks/results/dsrdmpd_haze_heldout.{md,json}``.
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
DATA = haze_split.DATA
CONFIGS = (ROOT / "configs" / "dsrdmpd_haze_cpu_stage1.yaml", ROOT / "configs" / "dsrdmpd_haze_cpu_stage2.yaml")
WORK = ROOT / "runs" / "dsrdmpd_haze_cpu"  # must match run.out_dir in CONFIGS
RUNS = (WORK / "stage1", WORK / "stage2")
EVAL = WORK / "eval"
WEIGHTS_DIR = haze_split.WEIGHTS_DIR
WEIGHTS_NAME = "dsrdmpd_haze_rgb"
RESULTS = haze_split.RESULTS
TABLE_NAME = "dsrdmpd_haze_heldout"
METHODS = ("input", "dcp", "rsdehamba", "dsrdmpd")
LABELS = {"input": "hazy input", "dcp": "DCP (dark channel prior, classical)",
          "rsdehamba": "RSDehamba (bundled weights)", "dsrdmpd": "DS-RDMPD (these weights, 5 steps, seed 0)"}
DECIDING = haze_split.DECIDING
LANDSAT = DATA / "landsat7" / "RGB.byte.tif"
LANDSAT_WINDOW = (100, 180, 320, 320)  # row, col, height, width: land, coast and clouds, inside the valid area
LICENCES = {
    "eurosat_rgb": "MIT (EuroSAT, Helber et al.)",
    "neon": "CC0 (NEON data policy)",
    "naip": "public domain (USDA NAIP)",
}


def _rel(p: Path) -> str:
    return haze_split._rel(p)


def train(threads: int) -> None:
    import torch

    from rsrestore.train import train_from_config

    torch.set_num_threads(threads)
    os.chdir(ROOT)  # the configs' paths are relative to the project root
    for config in CONFIGS:
        result = train_from_config(config, resume=True)
        print(f"{config.name}: step {result.step}/{result.total_steps}, {result.wall_time_s:.0f} s, "
              f"val {result.val_scores}", file=sys.stderr)
        if not result.finished:
            raise SystemExit("training stopped before its last step; rerun `train` to resume")


def scored_weights(weights: Path | None) -> Path:
    """The weights to score: the stage-2 run's final ones, or ``weights``; a checkpoint's ``model.safetensors``
    (which has no metadata beside it) is copied next to a metadata file naming the configs' model config."""
    weights = weights or RUNS[1] / "final.safetensors"
    if not weights.exists():
        raise SystemExit(f"{_rel(weights)} not found: run the `train` stage first")
    if weights.with_suffix(".json").exists():
        return weights
    from rsrestore.train import load_config

    copy = WORK / "scored.safetensors"
    copy.write_bytes(weights.read_bytes())
    config = load_config(CONFIGS[1], check_model=False).model.config
    copy.with_suffix(".json").write_text(json.dumps({"method": "dsrdmpd", "config": config, "from": str(weights)}))
    return copy


def evaluate(weights: Path | None = None, limit: int | None = None) -> dict:
    """Score ``METHODS`` on each held-out set; {set: {method: mean scores and n}}."""
    from rsrestore.evaluate import evaluate as run_eval

    weights = scored_weights(weights)
    os.chdir(ROOT)
    scores: dict = {}
    for name in haze_split.TEST_SETS:
        root = haze_split.HELDOUT / name
        if not (root / "manifest.json").exists():
            raise SystemExit(f"{_rel(root)} not found: run the `prepare` stage first")
        t = time.perf_counter()
        results = run_eval(list(METHODS), "paired", _rel(root), EVAL / name, weights={"dsrdmpd": str(weights)},
                           progress=False, pictures=6, limit=limit)
        scores[name] = {m: r.mean | {"n": len(r.per_image)} for m, r in results.items()}
        print(f"evaluate {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return scores


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def verdict(scores: dict) -> dict:
    """Whether DS-RDMPD beats dcp, rsdehamba and the hazy input on every deciding metric of every held-out set."""
    def against(other: str) -> dict:
        return {name: {k: _better(t["dsrdmpd"][k], t[other][k], hi) for k, hi in DECIDING}
                for name, t in scores.items()}

    vs = {other: against(other) for other in ("dcp", "rsdehamba", "input")}
    return {f"beats_{other}_on_all": all(all(v.values()) for v in table.values()) for other, table in vs.items()} | {
        f"vs_{other}": table for other, table in vs.items()} | {"deciding_metrics": [k for k, _ in DECIDING]}


def _stage_meta(weights: Path | None = None) -> list[dict]:
    """Each stage's ``final.json``; for a stage still running, the same fields from its latest checkpoint. Stage 2 is
    the run that wrote ``weights`` when they are a run's ``final.safetensors`` (a longer run in another folder)."""
    from rsrestore.train.checkpoint import resume_point

    stage2 = weights.parent if weights is not None and (weights.parent / "final.json").exists() else RUNS[1]
    metas = []
    for run in (RUNS[0], stage2):
        if (run / "final.json").exists():
            metas.append(json.loads((run / "final.json").read_text()))
            continue
        ckpt, _ = resume_point(run / "checkpoints")
        if ckpt is None:
            raise SystemExit(f"{_rel(run)} has neither final weights nor a checkpoint: run the `train` stage first")
        tc = ckpt.state["config"]
        metas.append({"steps": ckpt.state["step"], "wall_time_s": ckpt.state["wall_time_s"],
                      "global_batch_size": tc["data"]["batch_size"] * ckpt.state["world_size"],
                      "val_scores": ckpt.state["last_val"], "config": tc["model"]["config"], "train_config": tc,
                      "unfinished": f"checkpoint {ckpt.path.name} of {tc['run']['steps']} steps"})
    return metas


def _training_text(metas: list[dict]) -> str:
    parts = []
    for i, m in enumerate(metas, start=1):
        tc = m["train_config"]
        parts.append(f"stage {i}: {m['steps']} steps of batch {m['global_batch_size']} (64x64 crops) in "
                     f"{m['wall_time_s'] / 60:.1f} min, Adam {tc['optim']['lr']:g} cosine to "
                     f"{tc['schedule']['min_lr']:g}")
    return "; ".join(parts)


def _parameters(config: dict) -> str:
    from rsrestore.models.blocks import count_parameters
    from rsrestore.models.dsrdmpd import DSRDMPD, DSRDMPDConfig

    model = DSRDMPD(DSRDMPDConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}))
    return (f"stage 1 {count_parameters(model.stage1) / 1e6:.2f}M + stage 2 {count_parameters(model.stage2) / 1e6:.2f}M "
            f"parameters (paper: 58.7M + 52.0M)")


LIMITS = ("Trained for minutes on a shared CPU, on synthetic haze only (an atmospheric scattering model), at 64x64: "
          "it has not seen real haze, thin cloud or scenes larger than its crops. On the real Landsat-7 crop "
          "(`picture` stage) it raises contrast and saturation, leaves green and yellow fringes around clouds and a "
          "coloured frame along the image's edges, where DCP changes little. Each tile's GroupNorm and attention "
          "statistics come from that tile, so a tiled restore differs from whole-image sampling (see "
          "benchmarks/results/dsrdmpd_seams.json).")


def write_table(scores: dict, metas: list[dict], decision: dict) -> tuple[Path, Path]:
    from rsrestore.metrics.full_reference import CONVENTIONS

    RESULTS.mkdir(parents=True, exist_ok=True)
    tests = haze_split._test_description()
    config = metas[1]["config"]
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    lines = [
        "# DS-RDMPD on held-out synthetic haze scenes", "",
        f"CPU-sized DS-RDMPD ({_parameters(config)}), trained in two stages: {_training_text(metas)}. Restores with "
        "stage 1 and 5 sampling steps, seed 0.",
        "Scores: RGB, data range 1, Gaussian SSIM (window 11, sigma 1.5), CIEDE2000 on sRGB->Lab, SAM in degrees, "
        "mean over images; outputs clamped to [0, 1]. Written by `scripts/train_dsrdmpd_weights.py`.", "",
        f"Beats DCP on PSNR, SSIM and CIEDE2000 on every set: **{yes(decision['beats_dcp_on_all'])}** (the condition "
        f"for shipping the weights); beats RSDehamba on all three: **{yes(decision['beats_rsdehamba_on_all'])}**; "
        f"beats the hazy input on all three: **{yes(decision['beats_input_on_all'])}**.", "",
    ]
    for i, m in enumerate(metas, start=1):
        if "unfinished" in m:
            lines += [f"**Stage {i} had not finished**: scored from its {m['unfinished']}.", ""]
    for name, table in scores.items():
        t = tests[name]
        n = next(iter(table.values()))["n"]
        scored = f"{n} of {t['images']}" if n < t["images"] else f"{n}"
        lines += [f"## {name}: {scored} crops of {t['size']}x{t['size']} from {t['from']}", ""]
        lines += haze_split.score_table(table, decision["vs_dcp"][name], "DS-RDMPD", LABELS)
    lines += ["## What these weights cannot do", "", LIMITS, ""]
    md = RESULTS / f"{TABLE_NAME}.md"
    md.write_text("\n".join(lines))
    js = RESULTS / f"{TABLE_NAME}.json"
    js.write_text(json.dumps({"weights": f"{WEIGHTS_NAME}.safetensors", "config": config,
                              "parameters": _parameters(config), "training": _training_text(metas),
                              "stages": [{"steps": m["steps"], "wall_time_s": m["wall_time_s"],
                                          "val_scores": m["val_scores"], "train_config": m["train_config"]}
                                         for m in metas],
                              "test_sets": tests, "scores": scores, "decision": decision, "conventions": CONVENTIONS,
                              "limits": LIMITS}, indent=2) + "\n")
    return md, js


def export(scores: dict, decision: dict, weights: Path | None = None) -> Path:
    """Copy the stage-2 run's final weights (both stages) into the package with their metadata."""
    from rsrestore.models.registry import sha256_of
    from rsrestore.train import export_weights

    dst = export_weights(RUNS[1] if weights is None else weights.parent, WEIGHTS_DIR, WEIGHTS_NAME)
    meta_path = dst.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["val_scores"] = meta.pop("scores", None)
    meta.update({
        "method": "dsrdmpd",
        "task": "haze",
        "data": haze_split._data_description() | {"licences": LICENCES},
        "stages": [{"steps": m["steps"], "wall_time_s": m["wall_time_s"], "train_config": m["train_config"]}
                   for m in _stage_meta(weights)],
        "scores": {name: table["dsrdmpd"] for name, table in scores.items()},
        "baseline_scores": {name: {m: row for m, row in table.items() if m != "dsrdmpd"}
                            for name, table in scores.items()},
        "heldout_decision": decision,
        "limits": LIMITS,
        "trained_with": "scripts/train_dsrdmpd_weights.py, configs/dsrdmpd_haze_cpu_stage1.yaml and _stage2.yaml, CPU",
        "paper": "Zhou, Wang, Zhang, Tao, Ren, A Dual-Stage Residual Diffusion Model with Perceptual Decoding for "
                 "Remote Sensing Image Dehazing, IEEE TGRS 2025",
    })
    if meta["sha256"] != sha256_of(dst):
        raise RuntimeError("exported weights do not match their recorded sha256")
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return dst


def picture(weights: Path | None = None) -> Path:
    """The Landsat-7 crop (real haze and cloud edges) restored by dcp, rsdehamba and DS-RDMPD, side by side."""
    from rsrestore.models.registry import load_model
    from rsrestore.synthesize import read_crop
    from rsrestore.tiling import restore_array
    from rsrestore.visualize import save_comparison

    weights = scored_weights(weights)
    image, _ = read_crop(LANDSAT, LANDSAT_WINDOW)
    panels = [("Landsat-7 input", image)]
    for name in ("dcp", "rsdehamba", "dsrdmpd"):
        model = load_model(name, weights=str(weights) if name == "dsrdmpd" else "default")
        panels.append((name, restore_array(model, image)))
    return save_comparison(WORK / "landsat7_compare.png", panels, max_side=384)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("all", "prepare", "train", "evaluate", "export", "picture", "table"),
                        nargs="?",
                        default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--weights", type=Path, default=None,
                        help="score these weights instead of the stage-2 run's final ones (e.g. a checkpoint)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of each set (a quick "
                        "look; the table gives the image counts)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    torch.set_num_threads(args.threads)
    if args.stage in ("all", "prepare"):
        haze_split.prepare()
    if args.stage in ("all", "train"):
        train(args.threads)
    if args.stage == "table":  # rewrite the table from its JSON (e.g. after editing the text)
        scores = json.loads((RESULTS / f"{TABLE_NAME}.json").read_text())["scores"]
        md, _ = write_table(scores, _stage_meta(args.weights), verdict(scores))
        print(md.read_text(), file=sys.stderr)
    if args.stage in ("all", "evaluate", "export"):
        scores = evaluate(args.weights, args.limit)
        decision = verdict(scores)
        md, _ = write_table(scores, _stage_meta(args.weights), decision)
        print(md.read_text(), file=sys.stderr)
        if not decision["beats_dcp_on_all"]:
            print("DS-RDMPD does not beat DCP on every set and metric: not exported", file=sys.stderr)
        elif args.stage in ("all", "export"):
            dst = export(scores, decision, args.weights)
            print(f"exported {_rel(dst)} ({dst.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    if args.stage in ("all", "picture"):
        print(f"picture: {_rel(picture(args.weights))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
