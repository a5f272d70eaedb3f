"""Cloud-adaptive regularised loss (CARL) and a rule-based Sentinel-2 cloud / cloud-shadow mask.

Meraner, Ebel, Zhu & Schmitt, "Cloud removal in Sentinel-2 imagery using a deep residual neural network and
SAR-optical data fusion", ISPRS J. Photogramm. Remote Sens. 166 (2020), Sec. 3.3, Eq. (3):

    L_CARL = 1/N_tot * || CSM * (P - T) + (1 - CSM) * (P - I) ||_1  +  lambda * 1/N_tot * || P - T ||_1

with P the prediction, I the cloudy input, T the cloud-free target, CSM the cloud/cloud-shadow mask (1 = cloud or
shadow) and N_tot the number of tensor elements. Covered pixels are pulled toward the target, clear pixels toward
the input they already show (the target was taken on another day, so its clear pixels differ in season and light);
the lambda term keeps the whole image close to the target. lambda = 1 in the paper.

The mask is the one DSen2-CR derives from the cloudy image itself (their ``feature_detectors`` module): a cloud
score built from brightness and snow tests in the spirit of Sentinel Hub's / Google Earth Engine's "cloud score",
and a shadow test on the cloud-shadow index of Zhai et al. (ISPRS J. 2018). Thresholds follow that code; the
implementation here is batched torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Sentinel-2 L1C band order in SEN12MS-CR files: B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12.
_B1, _B2, _B3, _B4, _B8, _B10, _B11 = 0, 1, 2, 3, 7, 10, 11


def carl_loss(
    pred: torch.Tensor,
    cloudy: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    lam: float = 1.0,
) -> torch.Tensor:
    """Cloud-adaptive regularised loss, Meraner et al. (2020) Eq. (3).

    ``mean(CSM * |P - T| + (1 - CSM) * |P - I|) + lam * mean(|P - T|)``; for a binary mask this equals the paper's
    L1 norm of the masked sum, and for a soft mask it blends the two terms per pixel.

    Args:
        pred: prediction P, (B, C, H, W).
        cloudy: cloudy input I, same shape.
        target: cloud-free target T, same shape.
        mask: cloud/shadow mask, (B, 1, H, W) or (B, C, H, W), values in [0, 1], 1 = cloud or shadow.
        lam: weight of the global target term (1 in the paper).

    Returns:
        A scalar tensor.
    """
    if pred.ndim != 4:
        raise ValueError(f"carl_loss expects (B, C, H, W) tensors, got pred of shape {tuple(pred.shape)}")
    if cloudy.shape != pred.shape or target.shape != pred.shape:
        raise ValueError(
            f"pred, cloudy and target must share a shape, got {tuple(pred.shape)}, {tuple(cloudy.shape)}, "
            f"{tuple(target.shape)}"
        )
    b, c, h, w = pred.shape
    if mask.ndim != 4 or mask.shape[0] != b or mask.shape[1] not in (1, c) or mask.shape[2:] != (h, w):
        raise ValueError(f"mask must be (B, 1, H, W) or (B, C, H, W) matching {tuple(pred.shape)}, got {tuple(mask.shape)}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    mask = mask.to(pred.dtype)
    err_target = (pred - target).abs()
    err_input = (pred - cloudy).abs()
    adaptive = mask * err_target + (1.0 - mask) * err_input
    return adaptive.mean() + lam * err_target.mean()


def _rescale(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    # Linear ramp that maps lo -> 0 and hi -> 1; lo > hi gives a falling ramp (used for the snow test).
    return (x - lo) / (hi - lo)


def _normalized_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    s = a + b
    # Same guard as the reference code: an exact zero sum (no-data) gets a small denominator, not a NaN.
    s = torch.where(s == 0, torch.full_like(s, 1e-3), s)
    return (a - b) / s


def cloud_score(cloudy13: torch.Tensor) -> torch.Tensor:
    """Soft cloud score in [1e-5, 1] from 13-band Sentinel-2 reflectance in [0, 1] (digital number / 10000).

    Clouds are bright in blue (B2 ramp 0.1-0.5) and aerosol (B1 ramp 0.1-0.3), in aerosol + cirrus (B1 + B10 ramp
    0.15-0.2) and in the visible sum (B2 + B3 + B4 ramp 0.2-0.8), but are not snow (NDSI(B3, B11) ramp falling from
    0.8 to 0.6). The minimum of these scores is closed with a 5x5 grey-level closing and smoothed with a 7x7 box
    (zero padded), as in DSen2-CR's ``get_cloud_mask``.

    Returns:
        (B, 1, H, W) score.
    """
    score = pixel_cloud_score(cloudy13)
    # Grey closing = dilation then erosion; max-pooling with implicit -inf padding matches a reflect-padded
    # morphological filter here because, for a centred odd window, every reflected sample is already inside it.
    score = F.max_pool2d(score, 5, stride=1, padding=2)
    score = -F.max_pool2d(-score, 5, stride=1, padding=2)
    score = F.avg_pool2d(score, 7, stride=1, padding=3, count_include_pad=True)
    return score.clamp(1e-5, 1.0)


MIN_LEVEL_PIXELS = 64
"""Fewest pixels left after ``exclude`` for :func:`shadow_thresholds` to measure the levels on them alone."""


def pixel_cloud_score(cloudy13: torch.Tensor) -> torch.Tensor:
    """The minimum of :func:`cloud_score`'s tests at each pixel, (B, 1, H, W), before the closing and the box mean
    (and unclipped: clear pixels go well below 0, which is why the box mean loses thin cloud edges next to them)."""
    x = _check_s2(cloudy13)
    score = torch.ones_like(x[:, :1])
    tests = (
        _rescale(x[:, _B2 : _B2 + 1], 0.1, 0.5),
        _rescale(x[:, _B1 : _B1 + 1], 0.1, 0.3),
        _rescale(x[:, _B1 : _B1 + 1] + x[:, _B10 : _B10 + 1], 0.15, 0.2),
        _rescale(x[:, _B4 : _B4 + 1] + x[:, _B3 : _B3 + 1] + x[:, _B2 : _B2 + 1], 0.2, 0.8),
        _rescale(_normalized_difference(x[:, _B3 : _B3 + 1], x[:, _B11 : _B11 + 1]), 0.8, 0.6),
    )
    for t in tests:
        score = torch.minimum(score, t)
    return score


def shadow_thresholds(cloudy13: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The per-image thresholds of :func:`shadow_mask`, (B, 2) float64: T3 = min + 3/4 (mean - min) of the cloud-shadow
    index CSI = (B8 + B11) / 2 and T4 = min + 5/6 (mean - min) of B2 (Zhai et al. 2018, as in DSen2-CR). A restorer
    computes them once on the whole scene so that every tile of it applies the same test.

    ``exclude`` ((B, 1, H, W) bool, True = left out) takes pixels out of the minimum and the mean, for example the
    clouds, whose brightness otherwise lifts the mean until most clear ground falls below it; an image with fewer than
    ``MIN_LEVEL_PIXELS`` pixels left is measured whole."""
    x = _check_s2(cloudy13)
    keep = None
    if exclude is not None:
        keep = ~exclude.to(device=x.device, dtype=torch.bool)
        enough = keep.flatten(1).sum(1) >= MIN_LEVEL_PIXELS
        keep = keep | ~enough.view(-1, 1, 1, 1)

    def _level(band: torch.Tensor, frac: float) -> torch.Tensor:
        # Statistics in float64: a float32 mean of a flat scene can round above its minimum and flag every pixel.
        band = band.double()
        if keep is None:
            lo, mean = band.amin(dim=(1, 2, 3)), band.mean(dim=(1, 2, 3))
        else:
            lo = torch.where(keep, band, torch.inf).amin(dim=(1, 2, 3))
            mean = (band * keep).sum(dim=(1, 2, 3)) / keep.sum(dim=(1, 2, 3))
        return lo + frac * (mean - lo)

    csi = 0.5 * (x[:, _B8 : _B8 + 1] + x[:, _B11 : _B11 + 1])
    return torch.stack([_level(csi, 3 / 4), _level(x[:, _B2 : _B2 + 1], 5 / 6)], dim=1)


def shadow_mask(cloudy13: torch.Tensor, thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cloud-shadow mask (B, 1, H, W) from 13-band Sentinel-2 reflectance in [0, 1].

    Cloud-shadow index CSI = (B8 + B11) / 2 (Zhai et al. 2018); a pixel is shadow when CSI < T3 and B2 < T4 with
    per-image thresholds T3 = min + 3/4 (mean - min) of CSI and T4 = min + 5/6 (mean - min) of B2
    (:func:`shadow_thresholds`; pass ``thresholds`` (B or 1, 2) to use those of a whole scene on a part of it),
    followed by a 5x5 zero-padded median filter, as in DSen2-CR's ``get_shadow_mask``.
    """
    x = _check_s2(cloudy13)
    t = shadow_thresholds(x) if thresholds is None else thresholds.to(x.device, torch.float64)
    t = t.view(-1, 2, 1, 1)
    blue = x[:, _B2 : _B2 + 1].double()
    csi = 0.5 * (x[:, _B8 : _B8 + 1].double() + x[:, _B11 : _B11 + 1].double())
    raw = ((csi < t[:, :1]) & (blue < t[:, 1:])).to(x.dtype)
    # The median of a 0/1 window of 25 samples (zeros outside the image) is 1 exactly when at least 13 are 1.
    count = F.avg_pool2d(raw, 5, stride=1, padding=2, count_include_pad=True) * 25.0
    return (count > 12.5).to(x.dtype)


def cloud_shadow_mask(cloudy13: torch.Tensor, threshold: float = 0.2,
                      shadow_levels: torch.Tensor | None = None) -> torch.Tensor:
    """Cloud-or-shadow mask (B, 1, H, W) in {0, 1} for CARL when a dataset ships none.

    Args:
        cloudy13: cloudy Sentinel-2 L1C image (B, 13, H, W), reflectance in [0, 1] (digital number / 10000), band
            order B1..B12 with B8A and B10 as in SEN12MS-CR.
        threshold: cloud-score binarisation threshold; higher is more conservative (0.2 in DSen2-CR).
        shadow_levels: the shadow test's thresholds (:func:`shadow_thresholds` of the whole scene); by default
            those of each image.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    cloud = cloud_score(cloudy13) >= threshold
    shadow = shadow_mask(cloudy13, shadow_levels) > 0
    return (cloud | shadow).to(cloudy13.dtype)


def _check_s2(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 13:
        raise ValueError(f"expected a 13-band Sentinel-2 tensor (B, 13, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected float reflectance in [0, 1], got dtype {x.dtype}")
    return x
