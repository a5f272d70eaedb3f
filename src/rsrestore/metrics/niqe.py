"""NIQE: the Natural Image Quality Evaluator, a no-reference metric (lower is better).

Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer", IEEE Signal Processing
Letters 20(3), 209-212, 2013. The computation follows the authors' MATLAB release (``computequality.m``,
``computefeature.m``, ``estimateaggdparam.m``) step by step, and agrees with BasicSR's ``calculate_niqe`` where the
two agree with each other:

1. The RGB image is quantised to 8 bits (both references read 8-bit files) and reduced to one luminance plane in
   [0, 255], rounded to integers. ``color="gray"`` (default) is MATLAB's ``rgb2gray``, as the release and MATLAB's
   own ``niqe`` use; ``color="y"`` is the BT.601 studio-range Y of YCbCr (16..235) that BasicSR uses.
2. The plane is cropped to a whole number of 96 x 96 blocks (top-left anchored, as ``blkproc`` in the release).
3. At two scales: MSCN coefficients (paper Eq. 1) with the 7 x 7 Gaussian window and replicate borders; per block,
   an AGGD fit to the coefficients and to their products with the four neighbours (paper Eqs. 2-8): 18 features per
   scale, 36 in all. The second scale is MATLAB's ``imresize(im, 0.5)``: bicubic with antialiasing (see
   :func:`imresize_matlab`).
4. A multivariate Gaussian is fitted to the block features and compared with the pristine model (paper Eq. 10):
   ``sqrt((mu_p - mu_d)^T ((S_p + S_d) / 2)^+ (mu_p - mu_d))``.

The pristine model (``data/niqe/niqe_pris_params.npz``) is the release's, as shipped by BasicSR.

Agreement with the release (MATLAB, ``rgb2gray`` input) on the five images of IQA-PyTorch's calibration set:
I04 3.654922 vs 3.654922 (difference 2e-13); I06 3.2343 vs 3.2355; I03 15.7460 vs 15.7536; I19 8.6663 vs 8.6352;
I08 3.2020 vs 3.1840. The images that differ contain flat (saturated or posterised) areas, where the release's own
result hinges on the rounding noise of its filter; here that noise is removed (see :func:`mscn`), which makes
the score the same on every device.

Everything runs batched in float64 torch on the input's device; images of a batch share one size.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "niqe",
    "niqe_features",
    "mscn",
    "estimate_aggd_param",
    "estimate_ggd_param",
    "imresize_matlab",
    "to_luma_8bit",
    "load_niqe_params",
]

# MATLAB rgb2gray weights: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]), i.e. Y of YIQ.
_RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)
# BT.601 studio-range Y (MATLAB rgb2ycbcr), for RGB in [0, 1], giving Y in [16, 235].
_RGB2Y = (65.481, 128.553, 24.966)

# |x - mu| below this (relative to |x|, at least 1) is rounding noise of the local mean, not signal: for 8-bit
# data the smallest real deviation is about 1e-3, the noise about 1e-13.
_FLAT_TOL = 1e-9

# Shape grid of the moment-matching tables of the release: alpha = 0.2:0.001:10 (9801 values).
_ALPHA_MIN, _ALPHA_STEP, _ALPHA_COUNT = 0.2, 0.001, 9801


def _round_half_up(x: Tensor) -> Tensor:
    # MATLAB's uint8 casts round halves away from zero (torch.round goes to even); callers pass x >= 0 or saturate
    # negatives to 0 afterwards, where away-from-zero and half-up agree.
    return torch.floor(x + 0.5)


def _check_image(img: Tensor, name: str = "img") -> Tensor:
    """Validate an image tensor and return it as (B, C, H, W)."""
    if not isinstance(img, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(img).__name__}")
    if img.ndim == 3:
        img = img.unsqueeze(0)
    if img.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(img.shape)}")
    if img.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must have 3 bands (RGB) or 1 band (already grey), got {img.shape[1]}; "
            "select the R, G, B bands of a multispectral image first"
        )
    if not img.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {img.dtype}")
    if img.numel() and not bool(torch.isfinite(img).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return img


def to_luma_8bit(img: Tensor, color: Literal["gray", "y"] = "gray") -> Tensor:
    """Quantise an RGB image in [0, 1] to 8 bits and reduce it to one luminance plane, as MATLAB would.

    Args:
        img: (B, 3, H, W) or (B, 1, H, W) float in [0, 1]; values outside are saturated, as an 8-bit cast does.
        color: ``"gray"`` for MATLAB ``rgb2gray`` (weights 0.2989, 0.5870, 0.1140), ``"y"`` for the studio-range Y
            of MATLAB ``rgb2ycbcr`` (16 + 65.481 R + 128.553 G + 24.966 B). Ignored for single-band input.

    Returns:
        (B, H, W) float64 holding integers in [0, 255].
    """
    img = _check_image(img)
    if color not in ("gray", "y"):
        raise ValueError(f"color must be 'gray' or 'y', got {color!r}")
    q = _round_half_up(img.to(torch.float64).clamp(0.0, 1.0) * 255.0)
    if q.shape[1] == 1:
        return q[:, 0]
    r, g, b = q[:, 0], q[:, 1], q[:, 2]
    if color == "gray":
        lum = _RGB2GRAY[0] * r + _RGB2GRAY[1] * g + _RGB2GRAY[2] * b
    else:
        lum = 16.0 + (_RGB2Y[0] * r + _RGB2Y[1] * g + _RGB2Y[2] * b) / 255.0
    return _round_half_up(lum).clamp(0.0, 255.0)


# --------------------------------------------------------------------------------------------------------------------
# MATLAB-style resize
# --------------------------------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, the kernel of MATLAB's ``imresize(..., 'bicubic')``."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


@functools.lru_cache(maxsize=64)
def _resize_taps(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weights and source indices of MATLAB's ``imresize`` along one axis (its ``contributions`` function).

    Returns (weights, indices), both (out_len, P): output i is ``sum_p weights[i, p] * src[indices[i, p]]``.
    """
    kernel_width = 4.0
    if scale < 1 and antialias:
        # Antialiasing widens the kernel by 1/scale so that it low-passes below the new Nyquist frequency.
        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * t)

        kernel_width /= scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    # Output pixel x (1-based) sits at u in input coordinates: pixel centres of both grids stay aligned.
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # Out-of-range taps are mirrored with the edge sample repeated (MATLAB's 'symmetric' padding).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(w != 0, axis=0)
    return w[:, keep], idx[:, keep]


def _resize_rows(x: Tensor, scale: float, out_len: int, antialias: bool, uint8: bool) -> Tensor:
    """Resize axis -2 of (..., H, W)."""
    w_np, i_np = _resize_taps(x.shape[-2], out_len, float(scale), antialias)
    w = torch.as_tensor(w_np, dtype=x.dtype, device=x.device)
    idx = torch.as_tensor(i_np, device=x.device)
    out = torch.zeros(*x.shape[:-2], out_len, x.shape[-1], dtype=x.dtype, device=x.device)
    # One pass per tap (10 at scale 1/2) over whole contiguous rows: memory stays at one output-sized buffer.
    for p in range(w.shape[1]):
        out += x.index_select(-2, idx[:, p]) * w[:, p, None]
    if uint8:
        out = _round_half_up(out).clamp(0.0, 255.0)
    return out


def imresize_matlab(x: Tensor, scale: float, *, antialias: bool = True, uint8: bool = False) -> Tensor:
    """Resize the last two axes by ``scale`` exactly as MATLAB's ``imresize(x, scale)`` (bicubic) does.

    Why not ``F.interpolate``: torch's bicubic uses a = -0.75, clamps at the borders and (with ``antialias=True``)
    places taps differently, so features computed on the second scale of NIQE and SSEQ would drift from the published
    models, which were fitted on MATLAB-resized images. This is the MATLAB algorithm: Keys cubic kernel (a = -0.5)
    stretched by 1/scale when shrinking, weights normalised per output pixel, symmetric borders, output size
    ``ceil(scale * size)``, rows resized before columns.

    Args:
        x: (..., H, W) float tensor (computed in its dtype; pass float64 for MATLAB's double precision).
        scale: positive resize factor.
        antialias: widen the kernel when shrinking (MATLAB's default).
        uint8: emulate a uint8 image: round half away from zero and saturate to [0, 255] after each axis, as
            MATLAB's resize does for uint8 input.
    """
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError("x must be a tensor with at least 2 dimensions (..., H, W)")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got {x.dtype}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"cannot resize an empty image of size {h}x{w}")
    out_h, out_w = math.ceil(scale * h), math.ceil(scale * w)
    # MATLAB sorts the axes by scale (stable), so with equal scales it does rows (H) first; order matters only
    # through the intermediate rounding of uint8 images.
    y = _resize_rows(x, scale, out_h, antialias, uint8)
    y = _resize_rows(y.transpose(-1, -2).contiguous(), scale, out_w, antialias, uint8)
    return y.transpose(-1, -2).contiguous()


# --------------------------------------------------------------------------------------------------------------------
# Natural-scene statistics
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_niqe_params() -> dict[str, np.ndarray]:
    """The release's pristine model.

    Keys: ``mu_pris_param`` (36,), ``cov_pris_param`` (36, 36), ``gaussian_window`` (7, 7).
    """
    path = resources.files("rsrestore.metrics").joinpath("data/niqe/niqe_pris_params.npz")
    with resources.as_file(path) as p, np.load(p) as npz:
        return {
            "mu_pris_param": np.asarray(npz["mu_pris_param"], dtype=np.float64).reshape(36),
            "cov_pris_param": np.asarray(npz["cov_pris_param"], dtype=np.float64),
            "gaussian_window": np.asarray(npz["gaussian_window"], dtype=np.float64),
        }


def _filter_replicate(x: Tensor, win: Tensor) -> Tensor:
    """Correlate (B, H, W) with a small 2-D window, replicate borders (MATLAB ``imfilter(x, w, 'replicate')``).

    Shifted multiply-adds instead of ``F.conv2d``: float64 convolution has no fast CPU kernel in torch, and this is
    several times faster for a 7 x 7 window while giving the same sums.
    """
    k = win.shape[-1]
    pad = k // 2
    xp = F.pad(x.unsqueeze(1), (pad, pad, pad, pad), mode="replicate").squeeze(1)
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out.add_(xp[:, i : i + h, j : j + w], alpha=float(win[i, j]))
    return out


def mscn(lum: Tensor, window: Tensor | np.ndarray | None = None, c: float = 1.0) -> Tensor:
    """Mean-subtracted contrast-normalised coefficients, paper Eq. 1: ``(I - mu) / (sigma + c)``.

    ``mu`` and ``sigma`` are the local mean and standard deviation under the 7 x 7 Gaussian window with replicated
    borders (MATLAB ``imfilter(..., 'replicate')``). ``c = 1`` is the release's constant for images in [0, 255].
    Where ``I - mu`` is below floating-point noise (a flat neighbourhood) the coefficient is exactly 0, so a constant
    image maps to zeros on any device.

    Args:
        lum: (B, H, W) or (H, W) float luminance.
        window: (k, k) weights summing to 1; the release's window by default.
    """
    if lum.ndim not in (2, 3):
        raise ValueError(f"lum must be (B, H, W) or (H, W), got {tuple(lum.shape)}")
    squeeze = lum.ndim == 2
    x = (lum.unsqueeze(0) if squeeze else lum).to(torch.float64)
    if window is None:
        window = torch.as_tensor(load_niqe_params()["gaussian_window"])
    win = torch.as_tensor(window, dtype=torch.float64)
    if win.ndim != 2 or win.shape[0] != win.shape[1] or win.shape[0] % 2 == 0:
        raise ValueError(f"window must be a square 2-D array of odd side, got {tuple(win.shape)}")
    mu = _filter_replicate(x, win)
    # abs(): E[x^2] - mu^2 can dip below zero by rounding on flat areas.
    sigma = torch.sqrt(torch.abs(_filter_replicate(x * x, win) - mu * mu))
    dev = x - mu
    # Where the neighbourhood is flat, x - mu is 0 in exact arithmetic and what remains is rounding noise whose sign
    # depends on the summation order (CPU or GPU, MATLAB or NumPy). The AGGD fits count samples by sign, so that
    # noise alone moves NIQE by up to a few percent on images with saturated areas; it is set to exactly 0 here.
    flat = dev.abs() <= _FLAT_TOL * x.abs().clamp(min=1.0)
    out = torch.where(flat, torch.zeros_like(dev), dev) / (sigma + c)
    return out[0] if squeeze else out


@functools.lru_cache(maxsize=8)
def _shape_table(kind: str, device_str: str) -> tuple[Tensor, Tensor]:
    """(alpha grid, table) for the release's moment matching; the table is made to increase with alpha."""
    alpha = _ALPHA_MIN + _ALPHA_STEP * np.arange(_ALPHA_COUNT, dtype=np.float64)
    lg = np.vectorize(math.lgamma)
    if kind == "aggd":  # Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), estimateaggdparam.m
        ratio = np.exp(2 * lg(2 / alpha) - lg(1 / alpha) - lg(3 / alpha))
    else:  # Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2, estimateggdparam.m (BRISQUE); decreasing, so negate for search
        ratio = -np.exp(lg(1 / alpha) + lg(3 / alpha) - 2 * lg(2 / alpha))
    dev = torch.device(device_str)
    return torch.as_tensor(alpha, device=dev), torch.as_tensor(ratio, device=dev)


def _nearest_on_grid(values: Tensor, grid: Tensor, table: Tensor) -> Tensor:
    """grid[argmin_k (table[k] - v)^2] for each v, for an increasing table, without the (N, 9801) matrix.

    Ties go to the lower index, as argmin's first-minimum rule does. A NaN value maps to grid[0]: MATLAB's
    ``min`` over an all-NaN vector (and NumPy's ``argmin``) returns the first index, so the references report
    alpha = 0.2 for a block whose fit is undefined, and that 0.2 enters their ``nanmean``.
    """
    flat = values.reshape(-1).contiguous()
    hi = torch.searchsorted(table, flat.nan_to_num(0.0)).clamp(1, table.numel() - 1)
    lo = hi - 1
    pick_lo = (flat - table[lo]).abs() <= (table[hi] - flat).abs()
    idx = torch.where(torch.isnan(flat), torch.zeros_like(lo), torch.where(pick_lo, lo, hi))
    return grid[idx].reshape(values.shape)


def estimate_aggd_param(x: Tensor, dim: int = -1) -> tuple[Tensor, Tensor, Tensor]:
    """Fit an asymmetric generalised Gaussian by moment matching (paper Eqs. 5-7; ``estimateaggdparam.m``).

    With ``sigma_l^2 = E[x^2 | x < 0]``, ``sigma_r^2 = E[x^2 | x > 0]``, ``g = sigma_l / sigma_r`` and
    ``r = E|x|^2 / E[x^2]``, the shape ``alpha`` is the grid value (0.2:0.001:10) whose
    ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` is nearest to ``r (g^3 + 1)(g + 1) / (g^2 + 1)^2``, and
    ``beta_{l,r} = sigma_{l,r} sqrt(Gamma(1/a) / Gamma(3/a))``.

    Args:
        x: samples along ``dim``; any leading shape (fits are independent).

    Returns:
        (alpha, beta_l, beta_r), each of x's shape without ``dim``. A side without samples gets a NaN scale and
        alpha takes the grid's first value, 0.2, as in the release.
    """
    x = x.to(torch.float64)
    x2 = x * x
    neg, pos = (x < 0).to(x.dtype), (x > 0).to(x.dtype)
    # 0/0 -> NaN when a side is empty, which the release's nanmean/nancov then drop.
    left_std = torch.sqrt((x2 * neg).sum(dim) / neg.sum(dim))
    right_std = torch.sqrt((x2 * pos).sum(dim) / pos.sum(dim))
    gammahat = left_std / right_std
    rhat = x.abs().mean(dim) ** 2 / x2.mean(dim)
    rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    grid, table = _shape_table("aggd", str(x.device))
    alpha = _nearest_on_grid(rhatnorm, grid, table)
    scale = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    return alpha, left_std * scale, right_std * scale


def estimate_ggd_param(x: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Fit a zero-mean generalised Gaussian by moment matching (BRISQUE's ``estimateggdparam.m``).

    The shape is the grid value (0.2:0.001:10) whose ``Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2`` is nearest to
    ``E[x^2] / E|x|^2``; the returned scale is the standard deviation ``sqrt(E[x^2])``.

    Returns:
        (alpha, sigma), each of x's shape without ``dim``.
    """
    x = x.to(torch.float64)
    sigma_sq = (x * x).mean(dim)
    rho = sigma_sq / x.abs().mean(dim) ** 2
    grid, table = _shape_table("ggd", str(x.device))
    alpha = _nearest_on_grid(-rho, grid, table)
    return alpha, torch.sqrt(sigma_sq)


def _blocks(x: Tensor, bh: int, bw: int) -> Tensor:
    """(B, H, W) with H, W multiples of the block -> (B, nblocks, bh, bw), non-overlapping, row-major."""
    b, h, w = x.shape
    nh, nw = h // bh, w // bw
    return x.reshape(b, nh, bh, nw, bw).permute(0, 1, 3, 2, 4).reshape(b, nh * nw, bh, bw)


def _block_features(blocks: Tensor) -> Tensor:
    """The 18 features of ``computefeature.m`` for each block: (..., bh, bw) -> (..., 18)."""
    flat = blocks.flatten(-2)
    alpha, bl, br = estimate_aggd_param(flat)
    feats = [alpha, (bl + br) / 2]
    # Products with the right, lower, lower-right and lower-left neighbour (paper Eq. 4), wrapping inside the block
    # like the release's circshift; the release's [-1 1] diagonal is the same pair set as (1, -1) here.
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = (blocks * torch.roll(blocks, shifts=shift, dims=(-2, -1))).flatten(-2)
        alpha, bl, br = estimate_aggd_param(prod)
        mean = (br - bl) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))  # paper Eq. 8
        feats += [alpha, mean, bl, br]
    return torch.stack(feats, dim=-1)


def niqe_features(lum: Tensor, block_size: int = 96) -> Tensor:
    """Per-block NIQE features of luminance planes in [0, 255].

    Args:
        lum: (B, H, W) or (H, W), H and W at least ``block_size``; cropped to whole blocks (top-left anchored).
        block_size: block side at the first scale (the release's 96; even, so the second scale tiles exactly).

    Returns:
        (B, nblocks, 36): 18 features at full scale, then 18 at half scale (MATLAB bicubic ``imresize(., 0.5)``).
    """
    if lum.ndim == 2:
        lum = lum.unsqueeze(0)
    if lum.ndim != 3:
        raise ValueError(f"lum must be (B, H, W) or (H, W), got {tuple(lum.shape)}")
    if block_size < 2 or block_size % 2:
        raise ValueError(f"block_size must be an even integer >= 2, got {block_size}")
    h, w = lum.shape[-2:]
    nh, nw = h // block_size, w // block_size
    if nh == 0 or nw == 0:
        raise ValueError(f"image of {h}x{w} is smaller than one {block_size}x{block_size} NIQE block")
    x = lum[:, : nh * block_size, : nw * block_size].to(torch.float64)
    per_scale = []
    for scale in (1, 2):
        bs = block_size // scale
        per_scale.append(_block_features(_blocks(mscn(x), bs, bs)))
        if scale == 1:
            x = imresize_matlab(x, 0.5)
    return torch.cat(per_scale, dim=-1)


def _mvg_distance(feat: Tensor, mu_p: Tensor, cov_p: Tensor) -> Tensor:
    """Paper Eq. 10 with the release's NaN handling: nanmean for the mean, complete rows for the covariance."""
    mu_d = torch.nanmean(feat, dim=1)  # (B, 36)
    valid = ~torch.isnan(feat).any(dim=-1)  # (B, N)
    vf = valid.to(feat.dtype).unsqueeze(-1)
    n = vf.sum(dim=1)  # (B, 1)
    x = torch.where(valid.unsqueeze(-1), feat, torch.zeros_like(feat))
    mean_valid = x.sum(dim=1) / n.clamp(min=1)
    xc = (x - mean_valid.unsqueeze(1)) * vf
    # A single valid block has no spread: its covariance is taken as zero (MATLAB's cov of one observation).
    cov_d = xc.transpose(1, 2) @ xc / (n - 1).clamp(min=1).unsqueeze(-1)
    diff = (mu_p - mu_d).unsqueeze(-1)  # (B, 36, 1)
    # pinv's default cut-off (max(m, n) * eps * largest singular value) is MATLAB's pinv tolerance.
    inv = torch.linalg.pinv((cov_p + cov_d) / 2)
    q = (diff.transpose(1, 2) @ inv @ diff).reshape(-1)
    q = torch.where(n.reshape(-1) > 0, q, torch.full_like(q, float("nan")))
    return torch.sqrt(q)


def niqe(
    img: Tensor,
    *,
    color: Literal["gray", "y"] = "gray",
    crop_border: int = 0,
    block_size: int = 96,
) -> Tensor:
    """NIQE of each image of a batch (lower is better); Mittal et al. 2013, Eq. 10.

    Args:
        img: (B, 3, H, W) or (3, H, W) RGB float in [0, 1] (a single grey band is also accepted). Quantised to 8 bits
            first, as the references read 8-bit files.
        color: luminance used: ``"gray"`` (MATLAB ``rgb2gray``; the release and MATLAB's ``niqe``) or ``"y"``
            (studio-range Y of YCbCr; BasicSR's default). Scores differ slightly between the two.
        crop_border: pixels dropped on every side before scoring (BasicSR's ``crop_border``).
        block_size: 96, the size the pristine model was fitted with; other sizes are not comparable to published
            numbers.

    Returns:
        Tensor of shape (B,) in the input's float dtype and device. NaN for an image without texture (e.g.
        constant), where the AGGD fits are undefined.
    """
    img = _check_image(img)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    lum = to_luma_8bit(img, color)
    if crop_border:
        lum = lum[:, crop_border:-crop_border, crop_border:-crop_border]
    if lum.shape[-2] < block_size or lum.shape[-1] < block_size:
        raise ValueError(
            f"NIQE needs at least {block_size}x{block_size} pixels after cropping, got {tuple(lum.shape[-2:])}"
        )
    params = load_niqe_params()
    mu_p = torch.as_tensor(params["mu_pris_param"], device=lum.device)
    cov_p = torch.as_tensor(params["cov_pris_param"], device=lum.device)
    feat = niqe_features(lum, block_size)
    return _mvg_distance(feat, mu_p, cov_p).to(img.dtype)
