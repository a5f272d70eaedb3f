"""Colour conversions and colour differences used by the full-reference metrics.

* :func:`srgb_to_lab`: sRGB (IEC 61966-2-1, D65) in ``[0, 1]`` to CIE 1976 L*a*b* with the D65 / 2 degree white point
  ``(0.95047, 1.0, 1.08883)``. This is the conversion ``skimage.color.rgb2lab`` performs with its defaults.
* :func:`delta_e_ciede2000`: the CIEDE2000 colour difference, following G. Sharma, W. Wu and E. N. Dalal, "The
  CIEDE2000 color-difference formula: implementation notes, supplementary test data, and mathematical observations",
  Color Research & Application 30(1), 21-30, 2005 (equation numbers below refer to that paper).

Both take the colour axis at dim -3, as images do everywhere in the package: ``(..., 3, H, W)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["srgb_to_lab", "delta_e_ciede2000"]

# 25**7 appears in G (Eq. 4) and R_C (Eq. 17); kept exact as an integer-valued float.
_25_POW_7 = 25.0**7


def _check_colour_tensor(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (..., 3, H, W) with the colour axis at dim -3, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert sRGB values in ``[0, 1]`` (R, G, B at dim -3) to CIE L*a*b* (D65, 2 degree observer).

    The result has L* in ``[0, 100]`` and is computed in the input's dtype (pass float64 where precision matters).
    kornia's ``rgb_to_lab`` is used because it applies exactly the sRGB transfer function (threshold 0.04045), the
    XYZ matrix, the D65 white point and the CIE 1976 ``f(t)`` (threshold 0.008856, slope 7.787) that scikit-image
    uses, so scores agree with the reference implementation to rounding.
    """
    # Imported here: kornia costs a second or more at import time, and only CIEDE2000 needs it.
    from kornia.color import rgb_to_lab

    _check_colour_tensor(rgb, "rgb")
    return rgb_to_lab(rgb)


def _hue_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hue angle in radians in ``[0, 2*pi)``; atan2(0, 0) = 0 gives h' = 0 for achromatic colours (Eq. 7)."""
    h = torch.atan2(b, a)
    return torch.where(h < 0, h + 2 * math.pi, h)


def delta_e_ciede2000(
    lab1: torch.Tensor, lab2: torch.Tensor, k_l: float = 1.0, k_c: float = 1.0, k_h: float = 1.0
) -> torch.Tensor:
    """CIEDE2000 colour difference between two L*a*b* tensors of shape ``(..., 3, H, W)``; returns ``(..., H, W)``.

    Implements Sharma et al. (2005), Eqs. (2)-(22), including their two implementation notes: when the product of
    the chromas C'_1 C'_2 is zero the hue difference is zero (Eq. 10) and the mean hue is the plain sum h'_1 + h'_2
    (Eq. 14). The formula is symmetric in its two arguments. ``k_l``, ``k_c`` and ``k_h`` are the parametric
    weights (1 under reference conditions).

    Written here because neither torch, kornia nor torchmetrics provides CIEDE2000.
    """
    _check_colour_tensor(lab1, "lab1")
    _check_colour_tensor(lab2, "lab2")
    if lab1.shape != lab2.shape:
        raise ValueError(f"lab1 and lab2 must have the same shape, got {tuple(lab1.shape)} and {tuple(lab2.shape)}")
    l1, a1, b1 = lab1.unbind(dim=-3)
    l2, a2, b2 = lab2.unbind(dim=-3)

    # Eqs. (2)-(6): stretch a* by (1 + G) so that near-neutral colours get the hue weighting the data asked for.
    c_ab_mean = 0.5 * (torch.hypot(a1, b1) + torch.hypot(a2, b2))
    c7 = c_ab_mean**7
    g = 0.5 * (1.0 - torch.sqrt(c7 / (c7 + _25_POW_7)))
    a1p = (1.0 + g) * a1
    a2p = (1.0 + g) * a2
    c1p = torch.hypot(a1p, b1)
    c2p = torch.hypot(a2p, b2)
    h1p = _hue_angle(a1p, b1)
    h2p = _hue_angle(a2p, b2)

    # Eqs. (8)-(11).
    d_l = l2 - l1
    d_c = c2p - c1p
    chroma_product = c1p * c2p
    achromatic = chroma_product == 0
    h_diff = h2p - h1p
    d_h = torch.where(h_diff > math.pi, h_diff - 2 * math.pi, h_diff)
    d_h = torch.where(h_diff < -math.pi, h_diff + 2 * math.pi, d_h)
    d_h = torch.where(achromatic, torch.zeros_like(d_h), d_h)
    d_big_h = 2.0 * torch.sqrt(chroma_product) * torch.sin(0.5 * d_h)

    # Eqs. (12)-(14): the mean hue goes the short way round the circle.
    l_mean = 0.5 * (l1 + l2)
    c_mean = 0.5 * (c1p + c2p)
    h_sum = h1p + h2p
    wraps = (~achromatic) & (h_diff.abs() > math.pi)
    h_mean = torch.where(wraps & (h_sum < 2 * math.pi), h_sum + 2 * math.pi, h_sum)
    h_mean = torch.where(wraps & (h_sum >= 2 * math.pi), h_sum - 2 * math.pi, h_mean)
    h_mean = torch.where(achromatic, h_sum, 0.5 * h_mean)

    # Eqs. (15)-(21).
    t = (
        1.0
        - 0.17 * torch.cos(h_mean - math.radians(30.0))
        + 0.24 * torch.cos(2.0 * h_mean)
        + 0.32 * torch.cos(3.0 * h_mean + math.radians(6.0))
        - 0.20 * torch.cos(4.0 * h_mean - math.radians(63.0))
    )
    d_theta = math.radians(30.0) * torch.exp(-(((torch.rad2deg(h_mean) - 275.0) / 25.0) ** 2))
    c7_mean = c_mean**7
    r_c = 2.0 * torch.sqrt(c7_mean / (c7_mean + _25_POW_7))
    l50 = (l_mean - 50.0) ** 2
    s_l = 1.0 + 0.015 * l50 / torch.sqrt(20.0 + l50)
    s_c = 1.0 + 0.045 * c_mean
    s_h = 1.0 + 0.015 * c_mean * t
    r_t = -torch.sin(2.0 * d_theta) * r_c

    # Eq. (22). The rotation term can make the sum a rounding error below zero for near-identical colours.
    term_l = d_l / (k_l * s_l)
    term_c = d_c / (k_c * s_c)
    term_h = d_big_h / (k_h * s_h)
    d_e2 = term_l**2 + term_c**2 + term_h**2 + r_t * term_c * term_h
    return torch.sqrt(d_e2.clamp_min(0.0))
