"""Full-reference image-quality metrics: PSNR, SSIM, CIEDE2000, MAE and SAM, under one stated convention.

The convention (also available as the dict :data:`CONVENTIONS`, which is meant to be stored next to every score):

* **Bands.** Metrics are computed on the bands the caller passes: RGB, or all bands. Never on the Y (luma) channel
  of YCbCr, which many dehazing papers use silently; select bands before calling (``x[:, [3, 2, 1]]``).
* **Values.** Inputs are floating-point images ``(B, C, H, W)`` in ``[0, 1]``; the data range is 1. Values outside
  ``[0, 1]`` (beyond float rounding) raise a ``ValueError``: clamp model outputs first, as writing them to an
  8-bit file would. Arithmetic is done in float64.
* **Masks.** ``mask`` is a bool tensor ``(B, 1, H, W)`` or ``(B, H, W)`` (a batch dimension of 1 broadcasts), True
  for valid pixels. Invalid (nodata) pixels never affect a score; they may even hold NaN. An image without any
  valid pixel scores NaN.
* **PSNR** (dB) ``= 10 log10(1 / MSE)``, the MSE taken over all valid pixels and all bands of one image (not a mean
  of per-band PSNRs). Identical images give ``inf``.
* **SSIM** (Wang et al., IEEE TIP 13(4), 2004, Eqs. 13-17): Gaussian window 11x11 with sigma 1.5 (the scipy
  truncation 3.5 sigma gives radius 5), K1 = 0.01, K2 = 0.03, population (not sample) covariances. "Valid"
  convention: the SSIM map is kept only where the whole 11x11 window lies inside the image, i.e. an
  ``(H - 10) x (W - 10)`` map, averaged per band and then over bands. This equals scikit-image's
  ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
  channel_axis=...)`` (which filters with 'reflect' padding and then crops 5 pixels from each side). Images must be
  at least 11x11. With a mask, only windows whose 121 pixels are all valid are averaged.
* **CIEDE2000** (Sharma, Wu & Dalal, Color Res. Appl. 30(1), 2005): mean over valid pixels of the per-pixel colour
  difference after sRGB (D65) to CIE L*a*b* (D65 / 2 degree). Needs exactly three bands in R, G, B order.
* **MAE**: mean absolute difference over valid pixels and all bands, on the ``[0, 1]`` scale.
* **SAM** (Kruse et al., Remote Sens. Environ. 44, 1993): spectral angle ``arccos(<p, t> / (|p| |t|))`` in degrees
  between the band vectors of each pixel, averaged over valid pixels; pixels where either vector has zero norm are
  skipped.
* **Reduction.** Each function returns one value per image; a data set's score is the mean over images
  (:func:`mean_metrics`), not a metric of pooled pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from rsrestore.metrics.color import delta_e_ciede2000, srgb_to_lab

__all__ = [
    "CONVENTIONS",
    "METRIC_NAMES",
    "psnr",
    "ssim",
    "ciede2000",
    "mae",
    "sam",
    "compute_metrics",
    "mean_metrics",
]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# float32 arithmetic upstream (e.g. x * 255 / 255) can leave values a few ULPs outside [0, 1]; those are rounding,
# not a different data range, so they are accepted and clamped.
_RANGE_TOLERANCE = 1e-6

CONVENTIONS: dict[str, object] = {
    "bands": "as passed by the caller (RGB or all bands); never the Y channel",
    "data_range": 1.0,
    "value_range": "inputs float in [0, 1]; computed in float64",
    "mask": "True = valid pixel; invalid pixels never affect a score; no valid pixel -> NaN",
    "psnr": "dB, 10*log10(1/MSE), MSE over all valid pixels and bands of one image; inf if MSE == 0",
    "ssim": (
        "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, population covariance; 'valid' map "
        "(window fully inside the image, (H-10)x(W-10)), per band then averaged over bands; "
        "= skimage structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, "
        "data_range=1); with a mask, only windows whose pixels are all valid"
    ),
    "ciede2000": "mean over valid pixels of CIEDE2000 (kL=kC=kH=1) after sRGB (D65) -> CIE Lab (D65, 2 deg); RGB only",
    "mae": "mean |pred - target| over valid pixels and bands, on [0, 1]",
    "sam": "mean spectral angle in degrees over valid pixels; pixels where either vector has zero norm skipped",
    "reduction": "one value per image; data-set score = mean over images",
}

METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "ciede2000", "mae", "sam")


# --------------------------------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------------------------------


def _work_dtype(device: torch.device) -> torch.dtype:
    # Apple's MPS backend has no float64; everywhere else sums over millions of pixels are done in double precision.
    return torch.float32 if device.type == "mps" else torch.float64


def _check_image(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor with values in [0, 1], got {x.dtype}; "
            "divide integer images by their maximum (e.g. 255) first"
        )
    if min(x.shape) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    return x


def _check_mask(mask: object, shape: torch.Size, device: torch.device) -> torch.Tensor:
    b, _, h, w = shape
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = valid pixel), got {mask.dtype}")
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != (h, w) or mask.shape[0] not in (1, b):
        raise ValueError(f"mask must have shape ({b}, 1, {h}, {w}) or ({b}, {h}, {w}), got {tuple(mask.shape)}")
    return mask.to(device).expand(b, 1, h, w)


def _prepare(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and return ``(pred, target, valid)`` in the working dtype; invalid pixels are zeroed."""
    pred = _check_image(pred, "pred")
    target = _check_image(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"pred and target are on different devices: {pred.device} and {target.device}")
    dtype = _work_dtype(pred.device)
    pred = pred.to(dtype)
    target = target.to(dtype)
    if mask is None:
        valid = torch.ones((pred.shape[0], 1, *pred.shape[2:]), dtype=torch.bool, device=pred.device)
    else:
        valid = _check_mask(mask, pred.shape, pred.device)
        # Zeroing nodata keeps NaN or junk there from leaking through a 0 * NaN into any sum below.
        pred = torch.where(valid, pred, 0.0)
        target = torch.where(valid, target, 0.0)
    for x, name in ((pred, "pred"), (target, "target")):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} has NaN or inf at valid pixels; mark them invalid with mask")
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
            raise ValueError(
                f"{name} has values in [{lo:.6g}, {hi:.6g}], outside [0, 1] (the metrics' data range is 1); "
                "scale it to [0, 1] and clamp, e.g. x.clamp(0, 1)"
            )
    return pred.clamp(0.0, 1.0), target.clamp(0.0, 1.0), valid


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``values`` (B, C, H, W) over entries where the bool ``weight`` (B, 1, H, W) is True."""
    w = weight.to(values.dtype)
    total = (values * w).sum(dim=(1, 2, 3))
    count = w.sum(dim=(1, 2, 3)) * values.shape[1]
    # 0 / 0 -> NaN is the intended score of an image with nothing valid to measure.
    return total / count


# --------------------------------------------------------------------------------------------------------------------
# Metric kernels on prepared tensors
# --------------------------------------------------------------------------------------------------------------------


def _psnr(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    mse = _masked_mean((pred - target) ** 2, valid)
    return 10.0 * torch.log10(1.0 / mse)


def _mae(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return _masked_mean((pred - target).abs(), valid)


def _gaussian_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = SSIM_WINDOW // 2
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return g / g.sum()


def _ssim(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    b, c, h, w = pred.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    g = _gaussian_kernel(pred.dtype, pred.device)
    # All five local moments of all bands go through one separable 'valid' convolution (Wang et al. Eqs. 14-16).
    stack = torch.stack((pred, target, pred * pred, target * target, pred * target), dim=2)
    stack = stack.reshape(b * c * 5, 1, h, w)
    stack = F.conv2d(stack, g.view(1, 1, 1, -1))
    stack = F.conv2d(stack, g.view(1, 1, -1, 1))
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.reshape(b, c, 5, h - SSIM_WINDOW + 1, w - SSIM_WINDOW + 1).unbind(dim=2)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = SSIM_K1**2
    c2 = SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # A window counts only if none of its pixels is invalid, so nodata never reaches a score.
    any_invalid = F.max_pool2d((~valid).to(pred.dtype), kernel_size=SSIM_WINDOW, stride=1)
    return _masked_mean(ssim_map, any_invalid == 0)


def _ciede2000(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if pred.shape[1] != 3:
        raise ValueError(
            f"ciede2000 needs exactly 3 bands in R, G, B order, got {pred.shape[1]}; select them first "
            "(e.g. x[:, [3, 2, 1]] for Sentinel-2 B4, B3, B2) or pass rgb_bands to compute_metrics"
        )
    d_e = delta_e_ciede2000(srgb_to_lab(pred), srgb_to_lab(target))
    return _masked_mean(d_e.unsqueeze(1), valid)


def _sam(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    norm_p = torch.linalg.vector_norm(pred, dim=1, keepdim=True)
    norm_t = torch.linalg.vector_norm(target, dim=1, keepdim=True)
    use = valid & (norm_p > 0) & (norm_t > 0)
    u = pred / torch.where(use, norm_p, 1.0)
    v = target / torch.where(use, norm_t, 1.0)
    # 2*atan2(|u - v|, |u + v|) is the angle between unit vectors without arccos's loss of precision near 0 degrees.
    angle = 2.0 * torch.atan2(
        torch.linalg.vector_norm(u - v, dim=1, keepdim=True), torch.linalg.vector_norm(u + v, dim=1, keepdim=True)
    )
    return _masked_mean(torch.rad2deg(angle), use)


_KERNELS = {"psnr": _psnr, "ssim": _ssim, "ciede2000": _ciede2000, "mae": _mae, "sam": _sam}


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, ``10 log10(1 / MSE)`` with data range 1; returns ``(B,)`` float64.

    The MSE is over all valid pixels and all bands of each image; identical images give ``inf``.
    """
    return _psnr(*_prepare(pred, target, mask))


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004, Eqs. 13-17); returns ``(B,)`` float64.

    Gaussian window 11 (sigma 1.5), K1 = 0.01, K2 = 0.03, population covariances, 'valid' map averaged per band
    and then over bands; equal to scikit-image's Gaussian SSIM with ``use_sample_covariance=False`` and
    ``data_range=1``. With a mask, the map is averaged over windows whose pixels are all valid (NaN if none is).
    Raises ``ValueError`` for images smaller than 11x11.
    """
    return _ssim(*_prepare(pred, target, mask))


def ssim_differentiable(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`ssim` for a training loss: the same convention, ``(B,)`` in the inputs' dtype, with autograd, no mask,
    no checks and no clamping (the caller passes same-shaped images of at least 11x11 on the [0, 1] scale).

    Computed outside autocast: the variances are differences of near-equal moments (E[x^2] - E[x]^2), which in
    bf16 cancel to noise or below zero and can drive the ratio to infinity."""
    valid = torch.ones((pred.shape[0], 1, *pred.shape[2:]), dtype=torch.bool, device=pred.device)
    with torch.autocast(pred.device.type, enabled=False):
        return _ssim(pred.float(), target.float(), valid)


def ciede2000(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CIEDE2000 colour difference per image (Sharma et al. 2005) after sRGB to CIE L*a*b* (D65).

    ``pred`` and ``target`` must have exactly 3 bands in R, G, B order; returns ``(B,)`` float64.
    """
    return _ciede2000(*_prepare(pred, target, mask))


def mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error per image over valid pixels and all bands, on the ``[0, 1]`` scale; returns ``(B,)``."""
    return _mae(*_prepare(pred, target, mask))


def sam(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean spectral angle in degrees per image (Kruse et al. 1993); returns ``(B,)`` float64.

    The angle between the C-band vectors of pred and target is averaged over valid pixels, skipping pixels where
    either vector is all zeros (the angle is undefined there); NaN if no pixel is left.
    """
    return _sam(*_prepare(pred, target, mask))


def compute_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    names: Sequence[str] = METRIC_NAMES,
    rgb_bands: Sequence[int] | None = None,
) -> dict[str, list[float]]:
    """Compute several metrics at once; returns ``{name: [score of image 0, score of image 1, ...]}``.

    All metrics but CIEDE2000 use every band passed. CIEDE2000 uses ``rgb_bands`` (indices of R, G, B) when given,
    else all bands when there are exactly three; with neither it is left out of the result (no key), since a colour
    difference has no meaning without knowing which bands are red, green and blue.
    """
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    unknown = [n for n in names if n not in _KERNELS]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; choose from {list(METRIC_NAMES)}")
    pred_w, target_w, valid = _prepare(pred, target, mask)
    n_bands = pred_w.shape[1]
    if rgb_bands is not None:
        rgb_bands = [int(i) for i in rgb_bands]
        if len(rgb_bands) != 3 or any(not -n_bands <= i < n_bands for i in rgb_bands):
            raise ValueError(f"rgb_bands must be 3 band indices (R, G, B) into {n_bands} bands, got {rgb_bands}")
    scores: dict[str, list[float]] = {}
    for name in names:
        if name == "ciede2000":
            if rgb_bands is not None:
                scores[name] = _ciede2000(pred_w[:, rgb_bands], target_w[:, rgb_bands], valid).tolist()
            elif n_bands == 3:
                scores[name] = _ciede2000(pred_w, target_w, valid).tolist()
            continue
        scores[name] = _KERNELS[name](pred_w, target_w, valid).tolist()
    return scores


def mean_metrics(per_image: Iterable[Mapping[str, float | Sequence[float]]]) -> dict[str, float]:
    """Average scores over images: each input dict maps a metric name to one score or a list of per-image scores
    (as :func:`compute_metrics` returns for a batch). Images whose score is NaN (nothing valid to measure) are left
    out of that metric's mean; ``inf`` (a perfect PSNR) is kept, so it shows in the mean. A metric with no finite
    or infinite score averages to NaN.
    """
    collected: dict[str, list[float]] = {}
    for entry in per_image:
        if not isinstance(entry, Mapping):
            raise TypeError(f"mean_metrics expects dicts of scores, got {type(entry).__name__}")
        for name, value in entry.items():
            values = [value] if isinstance(value, (int, float)) else list(value)
            collected.setdefault(name, []).extend(float(v) for v in values)
    means: dict[str, float] = {}
    for name, values in collected.items():
        kept = [v for v in values if not math.isnan(v)]
        means[name] = math.fsum(kept) / len(kept) if kept else math.nan
    return means
