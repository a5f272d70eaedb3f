"""The atmospheric scattering model (Koschmieder; McCartney 1976; Narasimhan & Nayar 2003).

    I(x) = J(x) t(x) + A (1 - t(x))

I is the observed (hazy) radiance, J the scene radiance, t the transmission and A the global atmospheric light. All
functions are batched, differentiable torch operations on float tensors of shape (B, C, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_airlight(airlight: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast an atmospheric light given as a scalar, (C,), (B, C) or (B, C, 1, 1) against `like` (B, C, H, W)."""
    a = torch.as_tensor(airlight, dtype=like.dtype, device=like.device)
    if a.ndim == 0:
        return a.reshape(1, 1, 1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1, 1, 1)
    if a.ndim == 2:
        return a[:, :, None, None]
    if a.ndim == 4:
        return a
    raise ValueError(f"airlight must be a scalar, (C,), (B, C) or (B, C, 1, 1); got shape {tuple(a.shape)}")


def haze_forward(clear: Tensor, transmission: Tensor, airlight: Tensor | float) -> Tensor:
    """Degrade `clear` radiance J into hazy I = J t + A (1 - t).

    `transmission` is (B, 1, H, W) (wavelength-independent) or (B, C, H, W) (per band).
    """
    a = as_airlight(airlight, clear)
    return clear * transmission + a * (1.0 - transmission)


def haze_inverse(hazy: Tensor, transmission: Tensor, airlight: Tensor | float, t_min: float = 0.1) -> Tensor:
    """Recover J = (I - A) / max(t, t_min) + A, the inverse of :func:`haze_forward`.

    The lower bound `t_min` (t0 in He et al.) keeps dense-haze regions from amplifying noise without bound; with
    t >= t_min everywhere the inverse is exact.
    """
    a = as_airlight(airlight, hazy)
    return (hazy - a) / transmission.clamp_min(t_min) + a
