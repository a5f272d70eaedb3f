"""HARM, ASPDiff's haze-aware refinement: frequency channel attention, and SimAM-weighted atmospheric priors that
modulate the frequency-enhanced features into the final image.

Zhang et al., "ASPDiff: Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image dehazing"
(IEEE TGRS). No code is public; this follows the paper's description, with FcaNet's multi-spectral attention as the
public form of its frequency attention.

* :class:`FrequencyChannelAttention` (Qin et al., "FcaNet: Frequency Channel Attention Networks", ICCV 2021): the
  features are average-pooled to 7 x 7, the channels split into 16 groups, group k pooled by the orthonormal 2-D DCT
  basis of the k-th of FcaNet's "top-16" frequencies (:data:`TOP16_FREQUENCIES`), the 16 results concatenated (one
  value per channel), then an MLP (reduction 16) and a sigmoid give channel weights that rescale the features.
* :func:`simam` (Yang et al., "SimAM: A Simple, Parameter-Free Attention Module", ICML 2021):
  ``d = (x - mu)^2``, ``y = d / (4 (sum d / (n - 1) + lambda)) + 0.5``, ``out = x sigmoid(y)``, per map, lambda 1e-4.
* :class:`HARM`: reading of the paper (chosen here): SimAM is applied to the refined transmission ``t`` and to the
  airlight map ``A (1 - t)`` (per band) -- the haze veil the scattering model adds at each pixel; SimAM of ``A``
  broadcast to a constant map would be a constant, so the veil carries ``A`` spatially. The two attended maps give a per-pixel scale
  and shift (1x1 convolutions) of the frequency-enhanced features, and a last convolution adds a correction to the
  input estimate: ``J = J_in + conv(features (1 + scale) + shift)``.

Tiling: the channel attention's pooled spectrum and SimAM's per-map mean and variance are whole-input quantities; they
go through :func:`~rsrestore.models.dsrdmpd.shared_statistics.shared`, so every tile of a scene can replay the
scene's (:meth:`~.restorer.ASPDiff.scene_statistics`).

The 2-D DCT here is written out (a small matrix product) because torch has no DCT; it is checked against
``scipy.fft.dctn(norm="ortho")`` in the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dsrdmpd.shared_statistics import shared
from .apem import Priors, band_transmission

__all__ = ["TOP16_FREQUENCIES", "dct_matrix", "dct2", "simam", "FrequencyChannelAttention", "HARM"]

#: FcaNet's "top16" selection on a 7 x 7 DCT grid, (u, v) = (vertical, horizontal) frequency: the 16 components
#: whose single-frequency attention scored best on ImageNet in the FcaNet paper (Fig. 4).
TOP16_FREQUENCIES: tuple[tuple[int, int], ...] = (
    (0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0),
    (5, 0), (1, 6), (3, 0), (0, 4), (0, 6), (0, 3), (3, 5), (2, 2),
)
#: The grid the features are pooled to before the DCT (FcaNet's 7 x 7).
DCT_GRID = 7


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (n, n): ``D[k, i] = c_k cos(pi k (i + 1/2) / n)`` with ``c_0 = sqrt(1/n)``
    and ``c_k = sqrt(2/n)``, so ``D @ x`` is ``scipy.fft.dct(x, norm="ortho")`` and ``D D^T = I``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * k * (i + 0.5) / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II over the last two dimensions (``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``)."""
    dh = dct_matrix(x.shape[-2], x.dtype, x.device)
    dw = dct_matrix(x.shape[-1], x.dtype, x.device)
    return dh @ x @ dw.T


def simam(x: Tensor, lam: float = 1e-4, owner: nn.Module | None = None, name: str = "simam") -> Tensor:
    """SimAM, parameter-free attention: every value weighted by the sigmoid of its inverse energy within its map.

    ``x`` (B, C, H, W); statistics per (batch, channel) over the H x W pixels (``n = H W``). Given an ``owner``
    module, the mean and the variance ``sum d / (n - 1)`` are its shared quantity ``name``.
    """
    n = x.shape[-2] * x.shape[-1]
    if n < 2:
        raise ValueError(f"SimAM needs at least 2 pixels per map, got {tuple(x.shape[-2:])}")

    def moments() -> tuple[Tensor, Tensor]:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return mean, (x - mean).pow(2).sum(dim=(-2, -1), keepdim=True) / (n - 1)

    mean, variance = moments() if owner is None else shared(owner, name, moments, x.shape[0])
    y = (x - mean).pow(2) / (4 * (variance + lam)) + 0.5
    return x * torch.sigmoid(y)


class FrequencyChannelAttention(nn.Module):
    """FcaNet's multi-spectral channel attention with its top-16 frequencies; ``channels`` a multiple of 16."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        groups = len(TOP16_FREQUENCIES)
        if channels % groups:
            raise ValueError(f"frequency channel attention needs channels divisible by {groups}, got {channels}")
        d = dct_matrix(DCT_GRID)
        basis = torch.stack([torch.outer(d[u], d[v]) for u, v in TOP16_FREQUENCIES])  # (16, 7, 7)
        # channel c is pooled by the basis of its group c // (channels / 16)
        self.register_buffer("basis", basis.repeat_interleave(channels // groups, dim=0), persistent=False)
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, channels, bias=False))

    def spectral_pool(self, x: Tensor) -> Tensor:
        """(B, C) DCT coefficients: channel c of the 7 x 7-pooled features at its group's frequency."""
        pooled = F.adaptive_avg_pool2d(x, DCT_GRID)
        return (pooled * self.basis.to(pooled.dtype)).sum(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.sigmoid(self.mlp(shared(self, "spectrum", lambda: self.spectral_pool(x), x.shape[0])))
        return x * weights[:, :, None, None]


class HARM(nn.Module):
    """Haze-aware refinement of an estimate ``J_in`` (B, C, H, W) given the hazy image and the refined priors.

    ``forward(estimate, hazy, priors=None)``: APEM's :class:`~.apem.Priors`; without them (ASPDiff without APEM)
    only the frequency attention refines. All images in [0, 1].
    """

    def __init__(self, bands: int = 3, width: int = 32, use_priors: bool = True) -> None:
        super().__init__()
        self.use_priors = use_priors
        self.head = nn.Conv2d(2 * bands, width, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(width, width, 3, padding=1))
        self.attention = FrequencyChannelAttention(width)
        if use_priors:
            self.modulation = nn.Conv2d(1 + bands, 2 * width, 1)  # SimAM(t), SimAM(A (1 - t)) -> scale, shift
        self.tail = nn.Conv2d(width, bands, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the identity on the estimate
        nn.init.zeros_(self.tail.bias)

    def forward(self, estimate: Tensor, hazy: Tensor, priors: Priors | None = None) -> Tensor:
        x = F.gelu(self.head(torch.cat([estimate, hazy], dim=1)))
        x = self.attention(x + self.body(x))
        if self.use_priors:
            if priors is None:
                raise ValueError("HARM built with use_priors needs the refined priors")
            veil = priors.airlight[:, :, None, None] * (1 - band_transmission(priors))  # (B, C, H, W)
            maps = torch.cat([simam(priors.t, owner=self, name="simam_t"), simam(veil, owner=self, name="simam_veil")],
                             dim=1)
            scale, shift = self.modulation(maps).chunk(2, dim=1)
            x = x * (1 + scale) + shift
        return estimate + self.tail(x)
