"""Do the bundled learned methods keep detail, and do they add a grid? (writes benchmarks/results/detail.json and
detail.png, the worst grid crops at 4x zoom).

For every bundled learned method (and the classical baselines dcp, rop as controls), restored through the library API
(`rsrestore.restore`):

* Real scenes without a clean reference: the Landsat-7 scene with real clouds and its nodata collar (restored from the
  GeoTIFF, so nodata is declared) and the SEN12MS-CR cloudy patches (RGB methods on B4, B3, B2; the SAR cloud methods
  on all 13 bands with their Sentinel-1 scene). Scores: the no-reference ratios of `rsrestore.metrics.detail`, output
  over input: `checkerboard_ratio_input` (2-pixel-period energy) and `gradient_ratio_input` (gradient energy).
* Held-out synthetic pairs (the first `--per-set` images of each `runs/*/heldout/<source>` set present): the same
  no-reference ratios, the full-reference ones (output over clean reference), and the reference's own ratios over the
  input (what a perfect restoration would score without a reference).
* `aosrnet_boundary`: AOSR-Net's brightness change by distance to the valid-data boundary of the Landsat-7 scene,
  with the collar declared nodata (file) and with it passed as plain black pixels (an array, as `rsrestore.restore`
  takes one, or a PNG export): the pale frame of issue 13.
* `rsdehamba_layers`: where RSDehamba's 2-pixel grid comes from: the 2-pixel-period share of each stage's feature maps
  (forward hooks), bundled weights against an untrained model, and the output's checkerboard ratio when the period-2
  part of each transposed convolution's output is removed (its 2x2 block mean kept).

All ratios of one table are measured in this run; the machine's load average is recorded.
Outputs are cached (`--cache`, a folder of .npz files keyed by method, image and the bundled weights' sha256), so
an interrupted run resumes; the JSON is rewritten after each section.
Usage: python benchmarks/bench_detail.py [--per-set 2] [--methods ...] [--out benchmarks/results/detail.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

import rsrestore
from rsrestore import tiling
from rsrestore.metrics.detail import ENERGY_FLOOR, detail_scores, nyquist_energy, nyquist_energy_map
from rsrestore.metrics.full_reference import compute_metrics
from rsrestore.models.registry import MODELS, get_spec, load_model, sha256_of
from rsrestore.raster import read_raster

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LANDSAT = DATA / "landsat7" / "RGB.byte.tif"
S12 = DATA / "sen12mscr"
HELDOUT = sorted(p for p in ROOT.glob("runs/*/heldout/*") if (p / "input").is_dir() and (p / "target").is_dir())
CONTROLS = ("dcp", "rop")
CROP = 48  # px of a worst-grid crop, shown at 4x
ZOOM = 4
CACHE = Path(tempfile.gettempdir()) / "rsrestore_bench_detail"


@functools.cache
def weights_tag(method: str) -> str:
    """The first 12 hex digits of the bundled weights' sha256 ('' for a method without weights), so that outputs
    cached with weights since replaced are not read back as the current weights' outputs."""
    path = getattr(MODELS.get(method), "weights_path", None)
    return sha256_of(path)[:12] if path and Path(path).exists() else ""


def cached(key: str, fn, method: str) -> tuple[np.ndarray, float]:
    """`fn()` -> (array, seconds), or what an earlier run stored under `key` with the same weights of `method`."""
    tag = weights_tag(method)
    path = CACHE / f"{key.replace('/', '_')}{'_' + tag if tag else ''}.npz"
    if path.exists():
        z = np.load(path)
        return z["out"], float(z["seconds"])
    out, seconds = fn()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, out=out, seconds=seconds)
    return out, seconds


def learned_methods() -> list[str]:
    return [m["name"] for m in rsrestore.list_models() if m["trainable"] and str(m["weights"]).endswith(".safetensors")]


def ratios(out: np.ndarray, inp: np.ndarray, mask: np.ndarray | None, ref: np.ndarray | None = None) -> dict:
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
    m = None if mask is None else torch.from_numpy(mask)[None, None]
    s = detail_scores(t(out), None if ref is None else t(ref), t(np.clip(inp, 0, 1)), m)
    return {k: round(v[0], 4) for k, v in s.items()}


def worst_crop(out: np.ndarray, inp: np.ndarray, mask: np.ndarray | None) -> tuple[float, int, int]:
    """The CROP x CROP window whose 2-pixel-period energy grew most (output over input, window means)."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
    m = None if mask is None else torch.from_numpy(mask)[None, None]
    e_out, e_in = (nyquist_energy_map(t(a), m)[0] for a in (out, np.clip(inp, 0, 1)))
    ok = e_out.isfinite()
    box = lambda e: F.avg_pool2d(e.nan_to_num()[None, None].float(), CROP, stride=8)[0, 0]  # noqa: E731
    cover = box(ok.double())
    ratio = (box(e_out) + ENERGY_FLOOR) / (box(e_in) + ENERGY_FLOOR)
    ratio = torch.where(cover > 0.99, ratio, torch.zeros_like(ratio))
    k = int(ratio.argmax())
    i, j = divmod(k, ratio.shape[1])
    return float(ratio.max()), i * 8, j * 8


def to_rgb(a: np.ndarray) -> np.ndarray:
    return a[[3, 2, 1]] if a.shape[0] == 13 else a[:3]


def crop_panel(arrays: list[np.ndarray], y: int, x: int) -> np.ndarray:
    """The same crop of each array, one shared 1-99 % stretch, side by side at ZOOM x."""
    crops = [to_rgb(a)[:, y:y + CROP, x:x + CROP] for a in arrays]
    lo, hi = np.percentile(np.concatenate([c.reshape(3, -1) for c in crops], axis=1), [1, 99], axis=1)
    crops = [np.clip((c - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1) for c in crops]
    row = np.concatenate([np.pad(c, ((0, 0), (0, 0), (0, 2)), constant_values=1) for c in crops], axis=2)
    return row.repeat(ZOOM, axis=1).repeat(ZOOM, axis=2)


def restore_file(method: str, path: Path, tmp: Path, bands=None, sar=None) -> tuple[np.ndarray, float]:
    out = tmp / f"{method}_{path.stem}.tif"
    t0 = time.perf_counter()
    rsrestore.restore(str(path), method, output=out, bands=bands, sar=sar, overwrite=True)
    seconds = time.perf_counter() - t0
    return read_raster(out, bands=bands)[0], seconds


def sar_of(cloudy: Path) -> Path:
    """The Sentinel-1 patch of a SEN12MS-CR cloudy patch: ROIs*_s2_cloudy/s2_cloudy_N/..._s2_cloudy_N_pM.tif ->
    ROIs*_s1/s1_N/..._s1_N_pM.tif."""
    roi, folder = cloudy.parents[1], cloudy.parent
    return (roi.parent / roi.name.replace("_s2_cloudy", "_s1") / folder.name.replace("s2_cloudy_", "s1_")
            / cloudy.name.replace("_s2_cloudy_", "_s1_"))


def real_scenes(methods: list[str], tmp: Path, picture: list, log: dict) -> dict:
    scenes = {}
    if LANDSAT.exists():
        scenes["landsat7_clouds"] = {"path": LANDSAT}
    for cloudy in sorted(S12.glob("*_s2_cloudy/*/*.tif")):
        sar = sar_of(cloudy)
        name = f"sen12mscr_{cloudy.stem.split('_cloudy_')[-1]}"
        scenes[name] = {"path": cloudy, "sar": sar if sar.exists() else None}
    results = {}
    for name, scene in scenes.items():
        rows = {}
        for method in methods:
            spec = get_spec(method)
            multispectral = read_raster(scene["path"])[0].shape[0] == 13
            if spec.needs_sar and (not multispectral or scene.get("sar") is None):
                continue
            bands = [4, 3, 2] if multispectral and not spec.needs_sar else None
            inp, mask, _ = read_raster(scene["path"], bands=bands)
            out, seconds = cached(f"{name}_{method}", method=method, fn=lambda: restore_file(
                method, scene["path"], tmp, bands=bands, sar=scene.get("sar") if spec.needs_sar else None))
            r = ratios(out, inp, mask)
            r["seconds"] = round(seconds, 1)
            if out.shape[0] == 13:  # the RGB bands alone as well, as the other methods see them
                r.update({f"{k}_rgb": v for k, v in ratios(to_rgb(out), to_rgb(inp), mask).items()})
            worst, y, x = worst_crop(out, inp, mask)
            r["worst_crop"] = {"ratio": round(worst, 2), "row": y, "col": x}
            rows[method] = r
            picture.append((worst, method, name, inp, out, y, x))
            print(name, method, r, flush=True)
        results[name] = {"file": str(scene["path"].relative_to(DATA)), "methods": rows}
    log["real_scenes"] = list(scenes)
    return results


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255


def heldout_sets(methods: list[str], per_set: int, timing: dict, sets: list[str] | None = None) -> dict:
    results = {}
    t = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    for folder in HELDOUT:
        if sets and f"{folder.parent.parent.name}/{folder.name}" not in sets:
            continue
        name = f"{folder.parent.parent.name}/{folder.name}"
        files = sorted((folder / "input").glob("*.png"))[:per_set]
        pairs = [(read_png(f), read_png(folder / "target" / f.name)) for f in files]
        keys = [f"{name}_{f.stem}" for f in files]
        ref_rows = [ratios(y, x, None) for x, y in pairs]
        rows = {"reference": _mean(ref_rows)}
        for method in methods:
            if get_spec(method).needs_sar:
                continue
            per = []
            for (x, y), key in zip(pairs, keys):
                out = cached(f"{key}_{method}", lambda x=x: _timed(lambda: rsrestore.restore(x, method)), method)[0]
                out = np.clip(out, 0, 1)
                per.append(ratios(out, x, None, ref=y))
                t0 = time.perf_counter()
                compute_metrics(t(out), t(y))
                t1 = time.perf_counter()
                detail_scores(t(out), t(y), t(x))
                timing["full_reference_s"] += t1 - t0
                timing["detail_s"] += time.perf_counter() - t1
            worst = max(p["checkerboard_ratio_input"] for p in per)
            rows[method] = _mean(per) | {"max_checkerboard_ratio_input": worst}
            print(name, method, rows[method], flush=True)
        results[name] = {"n": len(pairs), "kind": json.loads((folder / "manifest.json").read_text()).get("kind")
                         if (folder / "manifest.json").exists() else None, "methods": rows}
    return results


def _timed(fn) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _mean(rows: list[dict]) -> dict:
    # Ratios are averaged in the log domain (a geometric mean): one image's 50x must not outweigh ten images' 1x.
    return {k: round(float(np.exp(np.mean([np.log(r[k]) for r in rows]))), 4) for k in rows[0]}


def aosrnet_boundary(tmp: Path) -> dict:
    """Grey-level change (output minus input) of the valid pixels by distance to the nodata collar, minus the change
    21-40 px in; and the chroma (max - min band) of output and input by distance."""
    clean, mask, _ = read_raster(LANDSAT)
    depth = ndimage.distance_transform_edt(mask)
    dist = list(range(1, 31)) + [40]
    inner = (depth > 20) & (depth <= 40)
    # The array path with the collar passed as black pixels: restored as data before the black-collar rule, and with
    # it (an array without a mask now has its all-black pixels treated as nodata).
    black = np.where(mask[None], clean, 0).astype(np.float32)
    with mock.patch.object(tiling, "black_pixels", lambda image: np.zeros(image.shape[-2:], bool)):
        as_data = np.clip(rsrestore.restore(black, "aosrnet"), 0, 1)
    as_array = np.clip(rsrestore.restore(black, "aosrnet"), 0, 1)
    as_file = cached("landsat7_clouds_aosrnet", lambda: restore_file("aosrnet", LANDSAT, tmp), "aosrnet")[0]

    def profile(out):
        change = (out - clean).mean(axis=0)
        base = float(change[inner].mean())
        chroma = out.max(axis=0) - out.min(axis=0)
        return {"grey_change_minus_interior": [round(float(change[np.round(depth) == d].mean()) - base, 4)
                                               for d in dist],
                "chroma": [round(float(chroma[np.round(depth) == d].mean()), 4) for d in dist],
                "frame_1_5px": round(float(change[(depth > 0) & (depth <= 5)].mean()) - base, 4),
                "frame_1_20px": round(float(change[(depth > 0) & (depth <= 20)].mean()) - base, 4)}

    chroma_in = clean.max(axis=0) - clean.min(axis=0)
    return {"scene": str(LANDSAT.relative_to(DATA)), "distance_px": dist,
            "input_chroma": [round(float(chroma_in[np.round(depth) == d].mean()), 4) for d in dist],
            "collar_declared_nodata_file": profile(as_file),
            "collar_black_restored_as_data": profile(as_data),
            "collar_black_array_now": profile(as_array)}


def rsdehamba_layers() -> dict:
    """Period-2 share of each stage's features (bundled vs untrained) and the output's checkerboard ratio with the
    period-2 part of each transposed convolution's output removed."""
    clean, mask, _ = read_raster(LANDSAT)
    crops = {"landsat7_clouds_sea": clean[:, 200:456, 300:556]}
    cloudy = sorted(S12.glob("*_s2_cloudy/*/*.tif"))
    if cloudy:
        crops["sen12mscr_rgb"] = read_raster(cloudy[0], bands=[4, 3, 2])[0]
    stages = ["embed", "enc1", "down1", "enc2", "down2", "bottleneck", "up2", "fuse2", "dec2", "up1", "fuse1", "dec1",
              "head"]
    models = {"bundled": load_model("rsdehamba")}
    torch.manual_seed(0)
    models["untrained"] = load_model("rsdehamba", weights=None)
    out = {"stages": stages,
           "share": "2-pixel-period energy / variance of the map (both per channel, averaged), at the "
           "stage's own resolution (the half- and quarter-resolution stages' period 2 is 4 and 8 image pixels)"}
    for cname, img in crops.items():
        x = torch.from_numpy(np.ascontiguousarray(img))[None]
        entry = {}
        for mname, model in models.items():
            shares, hooks = {}, []
            for s in stages:
                def hook(_m, _i, y, s=s):
                    y = y.detach().float()
                    var = y.var(dim=(2, 3)).mean().item()
                    shares[s] = round(float(nyquist_energy(y - y.mean(dim=(2, 3), keepdim=True))[0]) / var, 5)
                hooks.append(getattr(model, s).register_forward_hook(hook))
            with torch.no_grad():
                y = model(x).clamp(0, 1)
            for h in hooks:
                h.remove()
            entry[mname] = {"share": shares, "checkerboard_ratio_input": ratios(y[0].numpy(), img, None)[
                "checkerboard_ratio_input"]}
            if mname == "bundled":
                for which in (["up1"], ["up2"], ["up1", "up2"]):
                    hooks = [getattr(model, s).register_forward_hook(block_mean) for s in which]
                    with torch.no_grad():
                        ya = model(x).clamp(0, 1)
                    for h in hooks:
                        h.remove()
                    entry[f"bundled_{'+'.join(which)}_block_mean"] = {
                        "checkerboard_ratio_input": ratios(ya[0].numpy(), img, None)["checkerboard_ratio_input"],
                        "max_abs_change": round(float((ya - y).abs().max()), 4)}
            print(cname, mname, entry[mname], flush=True)
        out[cname] = entry
    return out


def block_mean(_module, _inputs, y: torch.Tensor) -> torch.Tensor:
    """A forward hook: the output's 2x2 block means, repeated (a 2x2 stride-2 transposed convolution becomes a 1x1
    convolution with its four taps averaged, then nearest upsampling: no period-2 part)."""
    return F.interpolate(F.avg_pool2d(y, 2), scale_factor=2, mode="nearest")


def rsdehamba_patch(per_set: int) -> dict:
    """RSDehamba's bundled weights with up1's period-2 part removed (no retraining) against as they are, on held-out
    haze pairs: PSNR, SSIM and the checkerboard ratio over the reference."""
    model = load_model("rsdehamba")
    rows = {}
    for folder in [f for f in HELDOUT if f.parent.parent.name.startswith("rsdehamba")]:
        files = sorted((folder / "input").glob("*.png"))[:per_set]
        scores = {"as_bundled": [], "up1_block_mean": []}
        for f in files:
            x = torch.from_numpy(read_png(f))[None]
            y = torch.from_numpy(read_png(folder / "target" / f.name))[None]
            for variant in scores:
                hook = model.up1.register_forward_hook(block_mean) if variant == "up1_block_mean" else None
                with torch.no_grad():
                    out = model(x).clamp(0, 1)
                if hook is not None:
                    hook.remove()
                m = compute_metrics(out, y, names=("psnr", "ssim"))
                d = detail_scores(out, y, x)
                scores[variant].append({"psnr": m["psnr"][0], "ssim": m["ssim"][0],
                                        "checkerboard_ratio": d["checkerboard_ratio"][0],
                                        "checkerboard_ratio_input": d["checkerboard_ratio_input"][0]})
        rows[folder.name] = {"n": len(files)} | {
            v: {"psnr": round(float(np.mean([r["psnr"] for r in rs])), 3),
                "ssim": round(float(np.mean([r["ssim"] for r in rs])), 4)}
            | {k: _mean([{k: r[k]} for r in rs])[k] for k in ("checkerboard_ratio", "checkerboard_ratio_input")}
            for v, rs in scores.items()}
        print("patch", folder.name, rows[folder.name], flush=True)
    return rows


def save_picture(picture: list, path: Path) -> list[dict]:
    """Per method its worst crop over the real scenes: input | output, one stretch, 4x nearest."""
    best: dict[str, tuple] = {}
    for item in picture:
        if item[1] not in best or item[0] > best[item[1]][0]:
            best[item[1]] = item
    rows, legend = [], []
    for method, (worst, _, scene, inp, out, y, x) in best.items():
        rows.append(crop_panel([inp, out], y, x))
        legend.append({"method": method, "scene": scene, "row": y, "col": x,
                       "local_checkerboard_ratio": round(worst, 1)})
    width = max(r.shape[2] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, 6), (0, width - r.shape[2])), constant_values=1) for r in rows]
    strip = np.concatenate(rows, axis=1)
    image = Image.fromarray((strip * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
    draw = ImageDraw.Draw(image)
    for k, row in enumerate(legend):  # each row named on its output panel
        y0 = k * (CROP * ZOOM + 6)
        text = f"{row['method']} {row['scene']} {row['local_checkerboard_ratio']}x"
        draw.rectangle((CROP * ZOOM + 2 * ZOOM, y0, CROP * ZOOM + 2 * ZOOM + 6 * len(text) + 4, y0 + 12), fill="white")
        draw.text((CROP * ZOOM + 2 * ZOOM + 2, y0 + 1), text, fill="black")
    image.save(path, optimize=True)
    return legend


def main() -> None:
    global CACHE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every bundled learned method")
    parser.add_argument("--per-set", type=int, default=2)
    parser.add_argument("--sets", nargs="*", default=None, help="held-out sets as run/source (default: all)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder of cached outputs (resume)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detail.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["scenes", "heldout", "boundary", "layers",
                                                                        "patch"])
    args = parser.parse_args()
    CACHE = args.cache
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent (the shared data folder)")
    methods = (args.methods or learned_methods()) + [c for c in CONTROLS if c not in (args.methods or [])]
    result = {"load_average_start": [round(v, 2) for v in os.getloadavg()], "torch_threads": torch.get_num_threads(),
              "methods": methods, "learned": learned_methods(), "controls": list(CONTROLS),
              "conventions": "see rsrestore.metrics.detail.DETAIL_CONVENTIONS; set means are geometric means"}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    timing = {"full_reference_s": 0.0, "detail_s": 0.0}
    picture: list = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key, skip, fn in (("real_scenes", "scenes", lambda: real_scenes(methods, tmp, picture, result)),
                              ("rsdehamba_layers", "layers", rsdehamba_layers),
                              ("rsdehamba_up1_patch", "patch", lambda: rsdehamba_patch(3)),
                              ("aosrnet_boundary", "boundary", lambda: aosrnet_boundary(tmp)),
                              ("heldout", "heldout", lambda: heldout_sets(methods, args.per_set, timing, args.sets))):
            if skip in args.skip:
                if key in previous:
                    result[key] = previous[key]
                continue
            result[key] = fn()
            if key == "real_scenes" and picture:
                result["picture"] = {
                    "file": args.out.with_suffix(".png").name, "zoom": ZOOM, "crop_px": CROP,
                    "panels": "per method its worst real-scene crop: input | output (shared 1-99 % stretch)",
                    "rows": save_picture(picture, args.out.with_suffix(".png"))}
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # what is done so far
    if timing["full_reference_s"]:
        result["evaluator_cost"] = {k: round(v, 2) for k, v in timing.items()} | {
            "detail_over_full_reference": round(timing["detail_s"] / timing["full_reference_s"], 3)}
    if "picture" not in result and "picture" in previous:
        result["picture"] = previous["picture"]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
