"""Score methods on a dataset with the project's metrics: a table, `metrics.json` per method, pictures, an HTML report.

`--method input` scores the degraded input itself (the first row of every table). Images are restored through the
same tiled engine as `rsrestore restore`, so large dataset images work in bounded memory.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .metrics.detail import DETAIL_CONVENTIONS, detail_scores
from .metrics.full_reference import CONVENTIONS, compute_metrics, mean_metrics
from .models.registry import ModelError, accepted_bands, get_spec, load_model
from .tiling import restore_array
from .visualize import comparison_image, display_bands

INPUT_METHOD = "input"
FULL_REFERENCE = ("psnr", "ssim", "ciede2000", "mae", "sam")
NO_REFERENCE = ("niqe", "sseq")
# Which way is better, for the table's header.
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "ciede2000": False, "mae": False, "sam": False, "niqe": False,
                    "sseq": False, "gradient_ratio_input": True}
# Detail ratios (metrics.detail, all bands) whose ideal is 1, neither higher nor lower; gradient_ratio_input, the
# output's detail over the degraded input's, is better higher (a restored scene is no blurrier than its input).
IDEAL_ONE = {"gradient_ratio", "checkerboard_ratio", "checkerboard_ratio_input"}


def higher_is_better(metric: str) -> bool | None:
    """The direction of a score (``*_rgb`` like its all-band twin); None for a ratio whose ideal is 1, or an unknown
    name."""
    if metric in IDEAL_ONE:
        return None
    return HIGHER_IS_BETTER.get(metric.removesuffix("_rgb"))


def metric_arrow(metric: str) -> str:
    """The mark a table's header gives a score: " ↑", " ↓", " →1" (ideal 1), or nothing for an unknown name."""
    if metric in IDEAL_ONE:
        return " →1"
    return {True: " ↑", False: " ↓", None: ""}[higher_is_better(metric)]


@dataclass
class MethodResult:
    method: str
    dataset: str
    per_image: list[dict] = field(default_factory=list)
    pictures: list[np.ndarray] = field(default_factory=list)  # outputs of the first images, for comparisons
    split: str | None = None  # the split scored, None for a dataset without splits
    root: str = ""

    @property
    def mean(self) -> dict[str, float]:
        scores = [{k: v for k, v in r.items() if k != "name"} for r in self.per_image]
        return mean_metrics(scores) if scores else {}

    def to_json(self, conventions: dict) -> dict:
        return {"method": self.method, "dataset": self.dataset, "root": self.root, "split": self.split,
                "n": len(self.per_image), "mean": self.mean, "per_image": self.per_image, "conventions": conventions}


def score_image(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, no_reference: bool,
                inp: torch.Tensor | None = None) -> dict:
    """All scores of one image: over all bands, plus over RGB when there are more than 3 bands; then the detail
    ratios (all bands) against the target and, given the degraded input `inp`, against it."""
    c = pred.shape[1]
    rgb = display_bands(c)
    names = FULL_REFERENCE if c == 3 else tuple(n for n in FULL_REFERENCE if n != "ciede2000")
    scores = {k: v[0] for k, v in compute_metrics(pred, target, mask, names=names).items()}
    if c != 3:
        rgb_pred, rgb_target = pred[:, rgb], target[:, rgb]
        for k, v in compute_metrics(rgb_pred, rgb_target, mask, names=FULL_REFERENCE).items():
            scores[k if k == "ciede2000" else f"{k}_rgb"] = v[0]
    if no_reference:
        scores.update(no_reference_scores(pred[:, rgb] if c != 3 else pred))
    if min(pred.shape[-2:]) >= 13:  # the checkerboard energy's window; smaller images get no detail ratios
        scores.update({k: v[0] for k, v in detail_scores(pred, target, inp, mask).items()})
    return scores


def no_reference_scores(rgb: torch.Tensor) -> dict[str, float]:
    from .metrics.niqe import niqe
    from .metrics.sseq import sseq

    return {"niqe": float(niqe(rgb)[0]), "sseq": float(sseq(rgb)[0])}


def evaluate(
    methods: Sequence[str],
    dataset: str,
    root: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    weights: dict[str, str] | None = None,
    dataset_options: dict | None = None,
    device: str = "cpu",
    tile: int = 512,
    overlap: int = 32,
    limit: int | None = None,
    pictures: int = 4,
    no_reference: bool = False,
    progress: bool = True,
) -> dict[str, MethodResult]:
    """Evaluate each method on a dataset and write the reports into `out_dir`; returns the results by method.

    A dataset with splits is scored on its test split unless `split` says otherwise (see :func:`evaluation_split`).
    Every method name and weights file is checked before the first image is scored, and the reports are written
    only once every method has been scored, so a failure leaves no partial report.
    """
    from .data import build_dataset

    out_dir = Path(out_dir)
    models = _load_methods(methods, weights or {}, device)
    split = evaluation_split(dataset, root, split)
    options = dict(dataset_options or {})
    ds = build_dataset(dataset, root, split=split, **options)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise ModelError(f"the {dataset} dataset at {root} has no samples" + (f" in split {split!r}" if split else ""))
    conventions = {**CONVENTIONS, **DETAIL_CONVENTIONS}
    results: dict[str, MethodResult] = {}
    inputs, targets = [], []
    for method, model in models.items():
        spec = None if model is None else get_spec(method)
        result = MethodResult(method, dataset, split=split, root=str(root))
        it = range(n)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"evaluating {method}", unit="img", leave=False)
        for i in it:
            sample = _read_sample(ds, i, dataset)
            x, y = sample["input"], sample["target"]
            if model is None:
                pred = x
            else:
                if spec.needs_sar and "sar" not in sample:
                    raise ModelError(f"{method} needs SAR, but the {dataset} dataset gives none")
                sar = sample.get("sar") if spec.needs_sar else None
                bands = accepted_bands(spec, model)
                if bands and x.shape[0] not in bands:
                    raise ModelError(f"{method} takes {bands} band(s); the dataset gives {x.shape[0]}")
                pred = torch.from_numpy(restore_array(model, x, sar=sar, tile=tile, overlap=overlap, device=device))
            _check_shapes(pred, y, sample, method)
            pred = pred.clamp(0.0, 1.0)  # the metrics take values in [0, 1]; a model may overshoot slightly
            valid = sample.get("valid")
            mask = None if valid is None else valid[None]
            scores = score_image(pred[None].float(), y[None].float(), mask, no_reference,
                                 inp=x[None].float().clamp(0.0, 1.0))
            result.per_image.append({"name": sample["meta"].get("name", str(i)), **scores})
            if i < pictures:
                result.pictures.append(pred.numpy())
                if len(inputs) <= i:
                    inputs.append(x.numpy())
                    targets.append(y.numpy())
        results[method] = result
    out_dir.mkdir(parents=True, exist_ok=True)
    for method, result in results.items():
        mdir = out_dir / method
        mdir.mkdir(exist_ok=True)
        (mdir / "metrics.json").write_text(json.dumps(result.to_json(conventions), indent=2))
    write_pictures(results, inputs, targets, out_dir)
    table = format_table(results)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "metrics.json").write_text(
        json.dumps({"dataset": dataset, "root": str(root), "split": split, "n": n, "conventions": conventions,
                    "methods": {m: r.to_json(conventions) for m, r in results.items()}}, indent=2)
    )
    write_html_report(results, inputs, targets, out_dir / "report.html", dataset, n, conventions)
    return results


def evaluation_split(dataset: str, root: str | Path, split: str | None) -> str | None:
    """The split to score: `split` when given; else "test" for a dataset with splits (whose own default, for
    training, is "train" or "all"), and for a paired folder whose input/target folders sit in split subfolders
    with a ``test/`` among them; else None (no splits)."""
    import inspect

    from .data import DATASETS
    from .data.paired import INPUT_DIR_NAMES, PairedDataset

    if split is not None:
        return split
    cls = DATASETS.get(dataset.lower())
    param = None if cls is None else inspect.signature(cls.__init__).parameters.get("split")
    if param is None:
        return None
    if param.default is not None:
        return "test"
    root = Path(root)
    if issubclass(cls, PairedDataset) and not any((root / d).is_dir() for d in INPUT_DIR_NAMES):
        return "test" if (root / "test").is_dir() else None
    return None


def _load_methods(methods: Sequence[str], weights: dict[str, str], device: str) -> dict[str, torch.nn.Module | None]:
    """Every method by name with its weights (None for the input itself), all checked before any image is scored."""
    if not methods:
        raise ModelError("no method given; pass --method, e.g. --method input,dcp")
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise ModelError(f"method(s) {', '.join(repeated)} given twice")
    for m in methods:
        if m != INPUT_METHOD:
            get_spec(m)
    stray = sorted(set(weights) - set(methods))
    if stray:
        raise ModelError(f"weights given for {', '.join(stray)}, which is not among the methods ({', '.join(methods)})")
    return {m: None if m == INPUT_METHOD else load_model(m, weights=weights.get(m, "default"), device=device)
            for m in methods}


def _read_sample(ds, i: int, dataset: str) -> dict:
    """Sample `i`; a file that cannot be read is named, with what went wrong."""
    from .errors import user_message
    from .raster import RasterError

    try:
        return ds[i]
    except (RasterError, ModelError):
        raise  # these name their file already
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        entry = ds.samples[i] if isinstance(getattr(ds, "samples", None), list) and i < len(ds.samples) else {}
        files = [str(p) for p in entry.values()] if isinstance(entry, dict) else [str(entry)]
        if any(f in message for f in files):
            raise ModelError(message) from None
        raise ModelError(f"cannot read sample {i} of the {dataset} dataset ({', '.join(files) or 'no file'}): "
                         f"{message}") from None


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, sample: dict, method: str) -> None:
    if pred.shape == target.shape:
        return
    meta = sample.get("meta", {})
    raise ModelError(
        f"{method} gives {tuple(pred.shape)} for {meta.get('path', meta.get('name'))} but its reference "
        f"{meta.get('target_path', '')} is {tuple(target.shape)} (bands, height, width); they must match"
    )


def write_pictures(results: dict[str, MethodResult], inputs, targets, out_dir: Path) -> list[Path]:
    paths = []
    for i, (x, y) in enumerate(zip(inputs, targets)):
        panels = [("input", x)]
        panels += [(m, r.pictures[i]) for m, r in results.items() if m != INPUT_METHOD and i < len(r.pictures)]
        panels.append(("reference", y))
        p = out_dir / f"comparison_{i:02d}.png"
        comparison_image(panels).save(p)
        paths.append(p)
    return paths


def table_columns(results: dict[str, MethodResult]) -> list[str]:
    keys: list[str] = []
    for r in results.values():
        for k in r.mean:
            if k not in keys:
                keys.append(k)
    return keys


def format_table(results: dict[str, MethodResult]) -> str:
    """A Markdown table, a row per method, the way the papers lay theirs out."""
    cols = table_columns(results)
    arrows = [c + metric_arrow(c) for c in cols]
    lines = ["| method | n | " + " | ".join(arrows) + " |", "|---|---|" + "---|" * len(cols)]
    for m, r in results.items():
        mean = r.mean
        cells = [_fmt(mean.get(c)) for c in cols]
        lines.append(f"| {m} | {len(r.per_image)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


def write_html_report(results, inputs, targets, path: Path, dataset: str, n: int, conventions: dict) -> Path:
    """A self-contained HTML page (pictures embedded) that opens in a browser without a server."""
    cols = table_columns(results)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{len(r.per_image)}</td>"
        + "".join(f"<td>{_fmt(r.mean.get(c))}</td>" for c in cols)
        + "</tr>"
        for m, r in results.items()
    )
    figs = []
    for i, (x, y) in enumerate(zip(inputs, targets)):
        panels = [("input", x)] + [(m, r.pictures[i]) for m, r in results.items()
                                   if m != INPUT_METHOD and i < len(r.pictures)] + [("reference", y)]
        buf = io.BytesIO()
        comparison_image(panels, max_side=256).save(buf, format="PNG")
        figs.append(f'<img alt="comparison {i}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')
    conv = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in conventions.items())
    first = next(iter(results.values()), None)
    names = [str(r.get("name", "")) for r in first.per_image] if first else []
    source = (f"<p>Dataset root <code>{html.escape(first.root if first else '')}</code>, "
              f"split <b>{html.escape(str(first.split) if first and first.split else 'none (no splits)')}</b>; "
              f"images scored: {html.escape(', '.join(names))}</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rsrestore evaluation: {html.escape(dataset)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{display:block;margin:1em 0;max-width:100%}}</style></head><body>
<h1>Evaluation on {html.escape(dataset)} ({n} images)</h1>
{source}
<table><tr><th>method</th><th>n</th>{head}</tr>{rows}</table>
<h2>Input | methods | reference</h2>{''.join(figs)}
<h2>Conventions</h2><ul>{conv}</ul></body></html>"""
    path.write_text(page)
    return path
