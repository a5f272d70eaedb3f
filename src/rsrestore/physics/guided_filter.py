"""The guided filter (He, Sun & Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013) in O(N) time.

Written by hand because the O(N) box filter by cumulative sums (the paper's Algorithm 1 relies on it) is a few lines,
while kornia's `guided_blur` convolves with a dense kernel whose cost grows with the radius squared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def box_filter(x: Tensor, r: int) -> Tensor:
    """Mean over a (2r+1) x (2r+1) window, clipped at the image border (each output divides by the number of pixels
    actually inside the window, as the reference MATLAB code does). O(N) in the number of pixels, independent of r."""
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {r}")
    if r == 0:
        return x
    h, w = x.shape[-2:]
    ones = torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device)
    return _box_sum(x, r) / _box_sum(ones, r)


def _box_sum(x: Tensor, r: int) -> Tensor:
    """Window sums by cumulative sums along each axis, with zero padding outside the image."""
    # float64 cumulative sums: float32 cumsum over thousands of pixels loses digits the subtraction then exposes.
    orig = x.dtype
    y = x.double() if orig != torch.float64 else x
    y = F.pad(y, (r + 1, r, r + 1, r))  # one extra leading zero so S[i + 2r + 1] - S[i] is the window sum
    y = y.cumsum(-2)
    y = y[..., 2 * r + 1 :, :] - y[..., : -2 * r - 1, :]
    y = y.cumsum(-1)
    y = y[..., 2 * r + 1 :] - y[..., : -2 * r - 1]
    return y.to(orig)


def guided_filter(guide: Tensor, src: Tensor, radius: int = 60, eps: float = 1e-3) -> Tensor:
    """Edge-preserving smoothing of `src` guided by `guide` (gray-scale guide: q = a I + b, the paper's Alg. 1).

    guide (B, 1, H, W) or (B, C, H, W) (averaged over bands to a gray guide), src (B, K, H, W). Differentiable.
    """
    if guide.shape[-2:] != src.shape[-2:]:
        raise ValueError(f"guide and src must share H, W; got {tuple(guide.shape)} and {tuple(src.shape)}")
    if guide.shape[1] != 1:
        guide = guide.mean(dim=1, keepdim=True)
    mean_i = box_filter(guide, radius)
    mean_p = box_filter(src, radius)
    corr_ip = box_filter(guide * src, radius)
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    a = (corr_ip - mean_i * mean_p) / (var_i + eps)
    b = mean_p - a * mean_i
    return box_filter(a, radius) * guide + box_filter(b, radius)
