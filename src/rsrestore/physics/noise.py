"""Smooth random fields for degradation synthesis: multi-octave (fractal) value noise.

Overhead imagery is orthographic, so haze thickness, dust load and cloud density cannot be derived from scene depth;
they are drawn instead from a fractal field: a sum of octaves of bicubically interpolated random lattices, octave
``o`` having a cell of ``base_scale / lacunarity**o`` pixels and an amplitude ``persistence**o`` (Perlin 1985; Ebert et
al., "Texturing and Modeling", ch. on fractal sums). Each field is rescaled per sample to span exactly [0, 1], so
presets can be defined by thresholds and ranges that mean the same thing at every image size.

All randomness comes from the caller's ``torch.Generator``; nothing touches the global RNG.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["fractal_noise", "rescale01", "uniform", "randint"]


def uniform(generator: torch.Generator, shape: tuple[int, ...] | int, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Float64 CPU draws from U[low, high) taken from `generator` (moved to the generator's device first)."""
    if isinstance(shape, int):
        shape = (shape,)
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).cpu()


def randint(generator: torch.Generator, high: int, low: int = 0) -> int:
    """One integer from [low, high) taken from `generator`."""
    if high <= low:
        return low
    return int(torch.randint(low, high, (1,), generator=generator, device=generator.device).item())


def rescale01(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max rescale each sample of (B, ...) to [0, 1]; a constant sample maps to 0.5."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    span = hi - lo
    out = (x - lo) / span.clamp_min(eps)
    return torch.where(span > eps, out, torch.full_like(x, 0.5))


def _catmull_rom(u: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Lattice indices (N, 4) and Catmull-Rom weights (N, 4) that interpolate a lattice of n nodes at positions u."""
    i = torch.floor(u)
    f = (u - i)[:, None]
    f2, f3 = f * f, f * f * f
    w = torch.cat(
        [(-f3 + 2 * f2 - f) / 2, (3 * f3 - 5 * f2 + 2) / 2, (-3 * f3 + 4 * f2 + f) / 2, (f3 - f2) / 2], dim=1
    )
    idx = (i.long()[:, None] + torch.arange(-1, 3, device=u.device)[None, :]).clamp(0, n - 1)
    return idx, w


def _interpolation_matrix(u: Tensor, n: int) -> Tensor:
    """Dense (len(u), n) matrix whose rows hold the Catmull-Rom weights of positions u on an n-node lattice."""
    idx, w = _catmull_rom(u, n)
    return torch.zeros(u.shape[0], n, dtype=u.dtype, device=u.device).scatter_add_(1, idx, w)


def _interpolate_lattice(lattice: Tensor, uy: Tensor, ux: Tensor) -> Tensor:
    """Separable bicubic interpolation of (B, gh, gw) at rows uy (H,) and columns ux (W,) -> (B, H, W).

    Two small matrix products (H x gh and gw x W) instead of an upsample-then-crop, which for coarse octaves would
    build images several times the output size.
    """
    my = _interpolation_matrix(uy, lattice.shape[1])
    mx = _interpolation_matrix(ux, lattice.shape[2])
    return my @ lattice @ mx.T


def fractal_noise(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    octaves: int = 5,
    persistence: float = 0.5,
    base_scale: float | None = None,
    device: torch.device | str | None = None,
    lacunarity: float = 2.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Fractal value noise of shape (B, 1, H, W), rescaled per sample to span [0, 1].

    Args:
        batch, height, width: output size.
        generator: source of all randomness (its device is where the lattices are drawn).
        octaves: number of octaves summed; octaves whose cell would be below 2 pixels are skipped, since they add
            only pixel noise.
        persistence: amplitude ratio between successive octaves (0.5 gives a 1/f-like "pink" field; larger values
            give rougher fields).
        base_scale: cell size in pixels of the coarsest octave, i.e. the size of the largest structures.
            Default ``max(height, width) / 2``.
        device: where the field is built and returned (default: the generator's device).
        lacunarity: cell-size ratio between successive octaves.

    Each octave's lattice is interpolated with Catmull-Rom splines (smooth, C1) at a random sub-cell offset, so that
    lattice nodes of different octaves do not line up (aligned nodes show as a faint grid).
    """
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"batch, height and width must be positive; got {batch}, {height}, {width}")
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1; got {octaves}")
    if not 0.0 < persistence <= 1.0:
        raise ValueError(f"persistence must be in (0, 1]; got {persistence}")
    if lacunarity <= 1.0:
        raise ValueError(f"lacunarity must be > 1; got {lacunarity}")
    if base_scale is None:
        base_scale = max(height, width) / 2.0
    if base_scale < 2.0:
        raise ValueError(f"base_scale must be at least 2 pixels; got {base_scale}")
    out_device = torch.device(device) if device is not None else generator.device

    total = torch.zeros(batch, height, width, device=out_device, dtype=dtype)
    amplitude = 1.0
    for o in range(octaves):
        cell = base_scale / lacunarity**o
        if cell < 2.0:
            break
        # Node 0 only serves as the left neighbour of the first interval; +3 covers that, the offset and the
        # right-hand neighbours of the last interval.
        gh = math.ceil(height / cell) + 3
        gw = math.ceil(width / cell) + 3
        lattice = torch.rand(batch, gh, gw, generator=generator, device=generator.device, dtype=dtype)
        offset = torch.rand(2, generator=generator, device=generator.device, dtype=torch.float64).cpu()
        uy = 1.0 + (torch.arange(height, dtype=torch.float64) + offset[0].item() * cell) / cell
        ux = 1.0 + (torch.arange(width, dtype=torch.float64) + offset[1].item() * cell) / cell
        field = _interpolate_lattice(lattice.to(out_device), uy.to(out_device, dtype), ux.to(out_device, dtype))
        total = total + amplitude * field
        amplitude *= persistence
    return rescale01(total[:, None])
