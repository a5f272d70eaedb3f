"""Train the RSDehamba haze weights the package ships (``rsdehamba_haze_rgb``) on the CPU and score them on held-out
scenes against the dark channel prior.

RSDehamba: Zhou, Wu, Chen, Chen & He, "RSDehamba: Lightweight Vision Mamba for Remote Sensing Satellite Image
Dehazing", arXiv:2405.10030, 2024. Baseline: He, Sun & Tang, "Single Image Haze Removal Using Dark Channel Prior",
TPAMI 2011 (``dcp``).

Stages (``all`` runs them in order; each one can be rerun alone)::

    python scripts/train_rsdehamba_weights.py prepare    # split lists, training folders, held-out test sets
    python scripts/train_rsdehamba_weights.py probe      # time a few training steps (to choose run.steps)
    python scripts/train_rsdehamba_weights.py train      # configs/rsdehamba_haze_cpu.yaml through rsrestore.train
    python scripts/train_rsdehamba_weights.py evaluate   # input / dcp / rsdehamba on the held-out sets -> table
    python scripts/train_rsdehamba_weights.py export     # evaluate, then weights + metadata into src/rsrestore/weights
    python scripts/train_rsdehamba_weights.py table      # rewrite the table from its JSON (e.g. after the benchmark)

Data (all clean imagery from ``../shared/data``). The split is by scene and is the one the AOSR-Net weights use
(``scripts/train_aosrnet_weights.py``), so the two bundled models are tested on the same unseen scenes:

* EuroSAT RGB (Sentinel-2, 64 x 64): per class the files are ordered by their number; positions 0-899 train,
  900-949 validate (the trainer's monitor), 950-999 are held out. Near-uniform tiles listed in
  ``eurosat_rgb/low_contrast_std_lt8.txt`` are left out everywhere.
* NEON airborne RGB plots (10 cm): HARV and OSBS train; TEAK and SJER_2017 plots of at least 256 pixels a side are
  held out. ``SJER`` (the 2018 flight of the SJER_2017 plots: same ground) is used for neither.
* NAIP (R, G, B of the 4 bands, 10 years of one site): training only.

When the AOSR-Net split lists exist, ``prepare`` checks that this split's held-out and training lists equal them.

Haze pairs are synthesised on the fly for training (``synthetic`` dataset, ``kind: haze``: random 64 x 64 crops, the
8 dihedral moves, a preset thin / moderate / thick drawn per item). The training folder repeats each NEON plot
``NEON_REPEATS`` times and each NAIP year ``NAIP_REPEATS`` times (as links), as the AOSR-Net run does.

Held-out test sets are written once with ``synthesize_dataset`` (``kind="haze"``, fixed seeds, preset drawn per
sample) in the ``paired`` layout: 60 NEON crops of 256 x 256 and 100 EuroSAT tiles of 64 x 64, scored separately with
the project's evaluator (PSNR, SSIM, CIEDE2000, MAE, SAM).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONFIG = ROOT / "configs" / "rsdehamba_haze_cpu.yaml"
WORK = ROOT / "runs" / "rsdehamba_haze_cpu"  # must match the roots and out_dir in CONFIG
SPLIT = WORK / "split"
RUN = WORK / "train"
HELDOUT = WORK / "heldout"
EVAL = WORK / "eval"
WEIGHTS_DIR = ROOT / "src" / "rsrestore" / "weights"
WEIGHTS_NAME = "rsdehamba_haze_rgb"
RESULTS = ROOT / "benchmarks" / "results"
TABLE_NAME = "rsdehamba_haze_heldout"
SPEED = RESULTS / "rsdehamba.json"  # written by benchmarks/bench_rsdehamba.py
# The AOSR-Net run's split lists, compared with ours when present (read only).
AOSR_SPLIT = ROOT / "runs" / "aosrnet_dust_cpu" / "split"

NEON_TRAIN_SITES = ("HARV", "OSBS")
NEON_TEST_SITES = ("TEAK", "SJER_2017")
NEON_UNUSED_SITES = ("SJER",)
EUROSAT_TRAIN_END, EUROSAT_VAL_END = 900, 950
NEON_REPEATS, NAIP_REPEATS = 40, 100
SPLIT_KEYS = ("train_eurosat", "val_eurosat", "test_eurosat", "train_neon", "test_neon", "train_naip", "unused")

TEST_SETS = {
    # name: (split key, crops, size, seed)
    "neon": ("test_neon", 60, 256, 20240516),
    "eurosat": ("test_eurosat", 100, 64, 20240517),
}
METHODS = ("input", "dcp", "rsdehamba")
# Metrics on which the model must beat dcp to become the haze default: (key, higher is better).
DECIDING = (("psnr", True), ("ssim", True), ("ciede2000", False))


def _rel(p: Path) -> str:
    """A path as recorded in shipped files: relative to the project root (or to the data folder)."""
    p = Path(p).resolve()
    for base, prefix in ((ROOT, ""), (DATA, "../shared/data/")):
        try:
            return prefix + str(p.relative_to(base.resolve()))
        except ValueError:
            continue
    return p.name


# --------------------------------------------------------------------------------------------------------------------
# Split


def _tile_number(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem)
    if m is None:
        raise ValueError(f"no trailing number in {path.name}")
    return int(m.group(1))


def _low_contrast(eurosat: Path) -> set[str]:
    names = set()
    for line in (eurosat / "low_contrast_std_lt8.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split()[0])
    return names


def scene_split(data: Path = DATA) -> dict[str, list[Path]]:
    """The scene split of the module docstring: {key: sorted clean files} for the keys in ``SPLIT_KEYS``."""
    from rsrestore.synthesize import image_shape

    for sub in ("eurosat_rgb", "neon", "naip"):
        if not (data / sub).is_dir():
            raise FileNotFoundError(f"{data / sub} not found: the clean imagery lives in ../shared/data")
    out: dict[str, list[Path]] = {k: [] for k in SPLIT_KEYS}
    eurosat = data / "eurosat_rgb"
    low = _low_contrast(eurosat)
    for cls in sorted(p for p in eurosat.iterdir() if p.is_dir()):
        for pos, f in enumerate(sorted(cls.glob("*.jpg"), key=_tile_number)):
            if f"{cls.name}/{f.name}" in low:
                key = "unused"
            else:
                key = "train_eurosat" if pos < EUROSAT_TRAIN_END else "val_eurosat" if pos < EUROSAT_VAL_END else \
                    "test_eurosat"
            out[key].append(f)
    test_size = TEST_SETS["neon"][2]
    for site in NEON_TRAIN_SITES:
        out["train_neon"] += (data / "neon" / site).glob("*.png")
    for site in NEON_TEST_SITES:
        for f in (data / "neon" / site).glob("*.png"):
            # a plot smaller than the test crop would be scored partly on mirrored padding
            out["test_neon" if min(image_shape(f)[1:]) >= test_size else "unused"].append(f)
    for site in NEON_UNUSED_SITES:
        out["unused"] += (data / "neon" / site).glob("*.png")
    out["train_naip"] = list((data / "naip").glob("*.tif"))
    train = set(out["train_eurosat"]) | set(out["train_neon"]) | set(out["train_naip"])
    seen_later = set(out["val_eurosat"]) | set(out["test_eurosat"]) | set(out["test_neon"])
    if train & seen_later:
        raise RuntimeError(f"split overlap: {sorted(map(str, train & seen_later))[:3]}")
    return {k: sorted(v) for k, v in out.items()}


def compare_with_aosrnet_split(lists: dict[str, list[str]]) -> dict[str, str]:
    """{key: 'same' | 'different'} against the AOSR-Net run's lists, for keys both runs wrote; {} if it has none."""
    verdict = {}
    for key in SPLIT_KEYS:
        theirs = AOSR_SPLIT / f"{key}.txt"
        if theirs.is_file():
            verdict[key] = "same" if theirs.read_text().split() == lists[key] else "different"
    return verdict


def _link_folder(dest: Path, groups: list[tuple[str, list[Path], int]]) -> int:
    """A folder of symbolic links to clean files, each repeated ``repeats`` times, read by the ``synthetic`` dataset
    as one source (repeats weight the large NEON/NAIP scenes against the many small tiles). Returns the count."""
    if dest.exists():
        for p in sorted(dest.rglob("*"), reverse=True):
            p.unlink() if p.is_symlink() or p.is_file() else p.rmdir()
    count = 0
    for name, files, repeats in groups:
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            for r in range(repeats):
                suffix = f"_r{r:03d}" if repeats > 1 else ""
                (folder / f"{f.parent.name}_{f.stem}{suffix}{f.suffix}").symlink_to(f.resolve())
                count += 1
    return count


def prepare(data: Path = DATA, force: bool = False) -> dict:
    """Write the split lists, the training/validation link folders and the held-out haze test sets."""
    from rsrestore.synthesize import synthesize_dataset

    split = scene_split(data)
    lists = {k: [_rel(f) for f in files] for k, files in split.items()}
    SPLIT.mkdir(parents=True, exist_ok=True)
    for key, names in lists.items():
        (SPLIT / f"{key}.txt").write_text("".join(n + "\n" for n in names))
    same = compare_with_aosrnet_split(lists)
    if any(v != "same" for v in same.values()):
        raise RuntimeError(f"this split differs from the AOSR-Net run's: {same}")
    n_train = _link_folder(SPLIT / "train", [("eurosat", split["train_eurosat"], 1),
                                             ("neon", split["train_neon"], NEON_REPEATS),
                                             ("naip", split["train_naip"], NAIP_REPEATS)])
    n_val = _link_folder(SPLIT / "val", [("eurosat", split["val_eurosat"], 1)])
    for name, (key, n, size, seed) in TEST_SETS.items():
        out = HELDOUT / name
        if force or not (out / "manifest.json").exists():
            synthesize_dataset(split[key], out, kind="haze", n=n, size=size, seed=seed, progress=False,
                               overwrite=True)
    summary = {k: len(v) for k, v in split.items()} | {"train_links": n_train, "val_links": n_val,
                                                         "same_as_aosrnet_split": same or "no AOSR-Net lists found"}
    print("split:", json.dumps(summary), file=sys.stderr)
    return summary


# --------------------------------------------------------------------------------------------------------------------
# Training


def probe(steps: int, threads: int) -> float:
    """Seconds per training step of CONFIG's model on real batches (data loading included), median of ``steps``."""
    import statistics

    import torch

    from rsrestore.data import build_dataset
    from rsrestore.models.registry import load_model
    from rsrestore.train import load_config

    torch.set_num_threads(threads)
    os.chdir(ROOT)
    cfg = load_config(CONFIG)
    spec = cfg.data.train
    ds = build_dataset(spec.kind, spec.root, **spec.options)
    model = load_model(cfg.model.name, weights=None, config=cfg.model.config).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    bs = cfg.data.batch_size
    times = []
    for s in range(steps + 1):
        t = time.perf_counter()
        items = [ds[(s * bs + i) % len(ds)] for i in range(bs)]
        x = torch.stack([it["input"] for it in items]).contiguous(memory_format=torch.channels_last)
        y = torch.stack([it["target"] for it in items]).contiguous(memory_format=torch.channels_last)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s:  # the first step pays for allocations and file caches
            times.append(time.perf_counter() - t)
        print(f"probe step {s}: loss {loss.item():.4f}, {time.perf_counter() - t:.2f} s", file=sys.stderr)
    med = statistics.median(times)
    print(f"probe: {med:.2f} s/step at batch {bs} (median of {len(times)})", file=sys.stderr)
    return med


def train(overrides: list[str], threads: int) -> None:
    import torch

    from rsrestore.train import train_from_config

    torch.set_num_threads(threads)
    os.chdir(ROOT)  # the config's paths are relative to the project root
    result = train_from_config(CONFIG, overrides, resume=True)
    print(f"train: step {result.step}/{result.total_steps}, {result.wall_time_s:.0f} s, "
          f"val {result.val_scores}", file=sys.stderr)
    if not result.finished:
        raise SystemExit("training stopped before its last step; rerun `train` to resume")


# --------------------------------------------------------------------------------------------------------------------
# Evaluation, table, export


def evaluate(no_reference: bool, weights: Path | None = None) -> dict:
    """Score ``METHODS`` on each held-out set; returns {set: {method: mean scores and n}}."""
    from rsrestore.evaluate import evaluate as run_eval

    weights = weights or RUN / "final.safetensors"
    if not weights.exists():
        raise SystemExit(f"{_rel(weights)} not found: run the `train` stage first")
    os.chdir(ROOT)
    scores: dict = {}
    for name in TEST_SETS:
        root = HELDOUT / name
        if not (root / "manifest.json").exists():
            raise SystemExit(f"{_rel(root)} not found: run the `prepare` stage first")
        t = time.perf_counter()
        results = run_eval(list(METHODS), "paired", _rel(root), EVAL / name, weights={"rsdehamba": str(weights)},
                           no_reference=no_reference, progress=False, pictures=6)
        scores[name] = {m: r.mean | {"n": len(r.per_image)} for m, r in results.items()}
        print(f"evaluate {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return scores


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def comparison(scores: dict, other: str) -> dict[str, dict[str, bool]]:
    """{set: {metric: RSDehamba better than `other`}} on the deciding metrics (PSNR, SSIM, CIEDE2000)."""
    return {name: {k: _better(t["rsdehamba"][k], t[other][k], hi) for k, hi in DECIDING}
            for name, t in scores.items()}


def verdict(scores: dict) -> dict:
    """Whether the weights beat dcp (and the hazy input) on every deciding metric of every held-out set."""
    vs_dcp, vs_input = comparison(scores, "dcp"), comparison(scores, "input")
    return {
        "beats_dcp_on_all": all(all(v.values()) for v in vs_dcp.values()),
        "beats_input_on_all": all(all(v.values()) for v in vs_input.values()),
        "vs_dcp": vs_dcp,
        "vs_input": vs_input,
        "deciding_metrics": [k for k, _ in DECIDING],
    }


def _training_meta() -> dict:
    return json.loads((RUN / "final.json").read_text())


def _test_description() -> dict:
    out = {}
    for name, (key, n, size, seed) in TEST_SETS.items():
        sources = (SPLIT / f"{key}.txt").read_text().split()
        out[name] = {"images": n, "size": size, "seed": seed, "kind": "haze", "presets": "thin/moderate/thick drawn",
                     "clean_sources": len(sources), "folder": _rel(HELDOUT / name),
                     "from": {"neon": "NEON TEAK + SJER_2017 plots >= 256 px (sites never trained on)",
                              "eurosat": "EuroSAT RGB positions 950-999 of each class"}[name]}
    return out


def _data_description() -> dict:
    counts = {k: len((SPLIT / f"{k}.txt").read_text().split()) for k in SPLIT_KEYS}
    return {
        "train": (f"synthetic haze pairs (atmospheric scattering model with Angstrom wavelength dependence, presets "
                  f"thin/moderate/thick drawn per item, on-the-fly 64x64 crops with flips) from "
                  f"{counts['train_eurosat']} EuroSAT RGB tiles (positions 0-899 per class), {counts['train_neon']} "
                  f"NEON plots (HARV, OSBS; x{NEON_REPEATS} per epoch) and {counts['train_naip']} NAIP years (RGB; "
                  f"x{NAIP_REPEATS} per epoch), all from ../shared/data"),
        "validation": f"{counts['val_eurosat']} EuroSAT tiles (positions 900-949), 64 fixed haze draws (seed 12345)",
        "held_out_test": _test_description(),
        "not_used": ("NEON SJER (2018 flight of the SJER_2017 plots), NEON plots under 256 px, EuroSAT tiles in "
                     "low_contrast_std_lt8.txt"),
        "split": "the AOSR-Net weights' scene split (scripts/train_aosrnet_weights.py), rebuilt and compared",
        "split_lists": "written by scripts/train_rsdehamba_weights.py prepare (runs/rsdehamba_haze_cpu/split/*.txt)",
        "counts": counts,
    }


def reductions(config: dict) -> str:
    from rsrestore.models.rsdehamba import RSDehamba, RSDehambaConfig

    paper = RSDehambaConfig()
    ours = RSDehambaConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return (f"embed_dim {ours.embed_dim} (paper-sized default {paper.embed_dim}), depths {list(ours.depths)} (paper "
            f"{list(paper.depths)}), d_state {ours.d_state} (paper {paper.d_state}); "
            f"{RSDehamba(ours).num_parameters() / 1e6:.3f}M parameters (paper-sized model "
            f"{RSDehamba(paper).num_parameters() / 1e6:.2f}M); 64x64 crops instead of 256x256")


COLUMNS = (("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("ciede2000", "CIEDE2000 ↓"), ("mae", "MAE ↓"), ("sam", "SAM° ↓"),
           ("niqe", "NIQE ↓"), ("sseq", "SSEQ ↓"))
LABELS = {"input": "hazy input", "dcp": "DCP (dark channel prior, classical)",
          "rsdehamba": "RSDehamba (bundled weights)"}


def score_table(table: dict, vs_dcp: dict[str, bool], model: str, labels: dict[str, str] = LABELS) -> list[str]:
    """Markdown lines of one held-out set: a row per method, then whether `model` beats DCP there."""
    cols = [(k, h) for k, h in COLUMNS if all(k in table[m] for m in table)]
    lines = ["| method | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * len(cols)]
    for m, row in table.items():
        cells = [f"{row[k]:.4f}" if abs(row[k]) < 1 else f"{row[k]:.2f}" for k, _ in cols]
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    worse = [k for k, ok in vs_dcp.items() if not ok]
    return lines + ["", f"{model} vs DCP here: " + ("better on PSNR, SSIM and CIEDE2000" if not worse else
                                                     f"not better on {', '.join(worse)}"), ""]


def _schedule_text(tc: dict) -> str:
    o, s = tc["optim"], tc["schedule"]
    return (f"Adam lr {o['lr']:g}, {s['warmup_steps']}-step warm-up, {s['name']} to {s['min_lr']:g}, "
            f"{tc['loss']['name'].upper()} loss")


def _speed_lines() -> list[str]:
    """The speed section of the table, from the benchmark's JSON when it has been run."""
    if not SPEED.is_file():
        return ["Speed: run `python benchmarks/bench_rsdehamba.py`, then the `table` stage.", ""]
    r = json.loads(SPEED.read_text())
    m, inf, sc, tr = r["machine"], r["inference"], r["scaling"], r["training"]
    lines = [f"## Speed ({m['cpu']}, {m['torch_threads']} thread, torch {m['torch']}, load average at start "
             f"{m['load_average_at_start'][0]:.1f}; `benchmarks/results/rsdehamba.json`)", "",
             "| input | RSDehamba forward | RSDehamba MPix/s | DCP forward | DCP MPix/s | RSDehamba / DCP speed |",
             "|---|---|---|---|---|---|"]
    for size, row in inf.items():
        a, b = row["rsdehamba"], row["dcp"]
        lines.append(f"| {size} | {a['median_s']:.2f} s | {a['mpix_per_s']:.4f} | {b['median_s']:.3f} s | "
                     f"{b['mpix_per_s']:.2f} | {row['rsdehamba_over_dcp_speed']:.4f} |")
    t = tr["rsdehamba"]
    lines += ["", f"Forward time 512^2 / 256^2: RSDehamba {sc['rsdehamba']['time_ratio']:.2f} for 4x the pixels "
                  f"({sc['rsdehamba']['time_ratio_over_pixel_ratio']:.2f}x what linear cost predicts; a quadratic cost "
                  f"would give 16, i.e. 4x), DCP {sc['dcp']['time_ratio']:.2f}.",
              f"Training (forward + L1 + backward + Adam, batch {t['batch']} of {t['crop']}x{t['crop']}): "
              f"{t['median_s_per_step']:.2f} s/step = {t['mpix_per_s']:.4f} MPix/s, "
              f"{tr['rsdehamba_train_over_dcp_inference_speed']:.4f}x DCP's inference speed (DCP needs no training).",
              ""]
    return lines


def by_preset(name: str) -> dict | None:
    """{preset: {method: mean PSNR/SSIM/CIEDE2000, n}} of one held-out set, from the evaluator's per-image scores and
    the test set's manifest; None when either file is missing."""
    metrics, manifest = EVAL / name / "metrics.json", HELDOUT / name / "manifest.json"
    if not (metrics.is_file() and manifest.is_file()):
        return None
    preset = {s["name"]: s["preset"] for s in json.loads(manifest.read_text())["samples"]}
    methods = json.loads(metrics.read_text())["methods"]
    out: dict = {}
    for p in ("thin", "moderate", "thick"):
        out[p] = {}
        for m in METHODS:
            rows = [r for r in methods[m]["per_image"] if preset.get(r["name"]) == p]
            if rows:
                out[p][m] = {k: sum(r[k] for r in rows) / len(rows) for k, _ in DECIDING} | {"n": len(rows)}
    return out


def _speed_summary() -> dict | None:
    if not SPEED.is_file():
        return None
    r = json.loads(SPEED.read_text())
    return {"source": "benchmarks/results/rsdehamba.json", "machine": r["machine"], "scaling": r["scaling"],
            "inference_mpix_per_s": {size: {m: row[m]["mpix_per_s"] for m in ("rsdehamba", "dcp")}
                                     for size, row in r["inference"].items()},
            "forward_s": {size: {m: row[m]["median_s"] for m in ("rsdehamba", "dcp")}
                          for size, row in r["inference"].items()},
            "train_mpix_per_s": r["training"]["rsdehamba"]["mpix_per_s"],
            "train_s_per_step": r["training"]["rsdehamba"]["median_s_per_step"]}


def write_table(scores: dict, meta: dict, decision: dict) -> tuple[Path, Path]:
    from rsrestore.metrics.full_reference import CONVENTIONS

    RESULTS.mkdir(parents=True, exist_ok=True)
    tests = _test_description()
    tc = meta["train_config"]
    lines = [
        "# RSDehamba on held-out synthetic haze scenes", "",
        f"Weights `{WEIGHTS_NAME}.safetensors`: {reductions(meta['config'])}. {meta['steps']} steps of batch "
        f"{meta['global_batch_size']} in {meta['wall_time_s'] / 60:.1f} min on a shared 2-core CPU (1 thread); "
        f"{_schedule_text(tc)}.",
        "Scores: RGB, data range 1, Gaussian SSIM (window 11, sigma 1.5), CIEDE2000 on sRGB->Lab, SAM in degrees, "
        "mean over images; outputs clamped to [0, 1]. Written by `scripts/train_rsdehamba_weights.py`.",
        "",
        f"Beats DCP on PSNR, SSIM and CIEDE2000 on every set: **{'yes' if decision['beats_dcp_on_all'] else 'no'}**; "
        f"beats the hazy input on all three: **{'yes' if decision['beats_input_on_all'] else 'no'}**.",
        "",
    ]
    for name, table in scores.items():
        t = tests[name]
        lines += [f"## {name}: {t['images']} crops of {t['size']}x{t['size']} from {t['from']}", ""]
        lines += score_table(table, decision["vs_dcp"][name], "RSDehamba")
        split = by_preset(name)
        if split:
            lines += ["By preset (PSNR / SSIM / CIEDE2000):", "",
                      "| preset | n | " + " | ".join(LABELS[m] for m in METHODS) + " |",
                      "|---|---|" + "---|" * len(METHODS)]
            for p, row in split.items():
                if row:
                    n = next(iter(row.values()))["n"]
                    lines.append(f"| {p} | {n} | " + " | ".join(
                        f"{row[m]['psnr']:.2f} / {row[m]['ssim']:.3f} / {row[m]['ciede2000']:.2f}" for m in METHODS)
                        + " |")
            lines.append("")
    lines += _speed_lines()
    md = RESULTS / f"{TABLE_NAME}.md"
    md.write_text("\n".join(lines))
    js = RESULTS / f"{TABLE_NAME}.json"
    js.write_text(json.dumps({"weights": f"{WEIGHTS_NAME}.safetensors", "config": meta["config"],
                              "reduced": reductions(meta["config"]), "steps": meta["steps"],
                              "global_batch_size": meta["global_batch_size"], "wall_time_s": meta["wall_time_s"],
                              "schedule": _schedule_text(tc), "test_sets": tests, "scores": scores,
                              "decision": decision, "conventions": CONVENTIONS,
                              "by_preset": {name: by_preset(name) for name in scores},
                              "speed": _speed_summary()}, indent=2) + "\n")
    return md, js


def export(scores: dict, decision: dict) -> Path:
    """Copy the run's final weights into the package with their metadata, held-out scores included."""
    from rsrestore.models.registry import sha256_of
    from rsrestore.train import export_weights

    dst = export_weights(RUN, WEIGHTS_DIR, WEIGHTS_NAME)
    meta_path = dst.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["val_scores"] = meta.pop("scores", None)
    meta.update({
        "method": "rsdehamba",
        "task": "haze",
        "data": _data_description(),
        "scores": {name: table["rsdehamba"] for name, table in scores.items()},
        "baseline_scores": {name: {m: row for m, row in table.items() if m != "rsdehamba"}
                            for name, table in scores.items()},
        "heldout_decision": decision,
        "reduced_from_paper": reductions(meta["config"]),
        "trained_with": "scripts/train_rsdehamba_weights.py, configs/rsdehamba_haze_cpu.yaml, CPU (1 thread)",
        "paper": "Zhou et al., RSDehamba: Lightweight Vision Mamba for Remote Sensing Satellite Image Dehazing, "
                 "arXiv:2405.10030, 2024",
    })
    if meta["sha256"] != sha256_of(dst):
        raise RuntimeError("exported weights do not match their recorded sha256")
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("all", "prepare", "probe", "train", "evaluate", "export", "table"), nargs="?",
                        default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config value, e.g. --set run.steps=600 (repeatable)")
    parser.add_argument("--probe-steps", type=int, default=5, help="timed steps of the probe stage")
    parser.add_argument("--nr", action="store_true", help="also score NIQE and SSEQ")
    parser.add_argument("--force", action="store_true", help="rewrite the held-out test sets")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    if args.stage in ("all", "prepare"):
        prepare(force=args.force)
    if args.stage == "probe":
        probe(args.probe_steps, args.threads)
        return 0
    if args.stage in ("all", "train"):
        train(args.overrides, args.threads)
    if args.stage == "table":
        scores = json.loads((RESULTS / f"{TABLE_NAME}.json").read_text())["scores"]
        md, _ = write_table(scores, _training_meta(), verdict(scores))
        print(md.read_text(), file=sys.stderr)
        return 0
    if args.stage in ("all", "evaluate", "export"):
        scores = evaluate(args.nr)
        decision = verdict(scores)
        md, _ = write_table(scores, _training_meta(), decision)
        print(md.read_text(), file=sys.stderr)
        if not decision["beats_input_on_all"]:
            print("RSDehamba does not beat the hazy input on every set and metric: not exported", file=sys.stderr)
            return 1
        if not decision["beats_dcp_on_all"]:
            print("RSDehamba does not beat DCP on every set and metric: its preference should fall below dcp's",
                  file=sys.stderr)
        if args.stage in ("all", "export"):
            dst = export(scores, decision)
            print(f"exported {_rel(dst)} ({dst.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
