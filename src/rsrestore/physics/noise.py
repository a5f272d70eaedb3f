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
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["fractal_noise", "rescale01", "uniform", "randint", "PatchyField"]


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


@dataclass(frozen=True)
class PatchyField:
    """How a patchy density field is drawn: banks and veils at a random scale, soft or sharp rims, streaks.

    :meth:`draw` gives, per sample, a fractal field n whose largest structures are ``scale`` pixels (log-uniform in
    ``scale_px_range``, at most ``max_scale_of_scene`` times the scene's longer side) with a random roughness
    (``persistence_range``), optionally stretched ``stretch`` times along a random direction (wind-blown dust
    streaks). With probability ``bank_probability`` it is cut into banks covering ``coverage`` of the scene, m =
    sigmoid((n - q) / edge) with q the (1 - coverage) quantile of n (a small edge gives the sharp rim of thin cloud);
    otherwise m = n (a veil). The result is d = floor + (1 - floor) m in [floor, 1]: ``floor`` is the density outside
    the banks (or in the thinnest part of a veil) as a share of the densest. Inside a bank the density follows the
    field by ``interior`` (0: a flat sheet; 0.5: half as dense where the field is lowest).
    """

    scale_px_range: tuple[float, float] = (24.0, 1024.0)
    max_scale_of_scene: float = 2.0
    persistence_range: tuple[float, float] = (0.4, 0.65)
    octaves: int = 5
    bank_probability: float = 0.5
    coverage_range: tuple[float, float] = (0.2, 0.8)
    edge_range: tuple[float, float] = (0.01, 0.15)  # in units of the [0, 1] field
    floor_range: tuple[float, float] = (0.0, 0.5)
    stretch_range: tuple[float, float] = (1.0, 1.0)  # 1 = isotropic
    interior_range: tuple[float, float] = (0.0, 0.0)  # how much a bank's density follows the field inside it

    def draw(
        self, batch: int, height: int, width: int, generator: torch.Generator,
        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, dict]:
        """(B, 1, H, W) field in [floor, 1] and the JSON-ready values drawn (one list entry per sample)."""
        side = max(height, width)
        hi = max(2.0, min(self.scale_px_range[1], self.max_scale_of_scene * side))
        lo = max(2.0, min(self.scale_px_range[0], hi))
        fields = []
        info: dict[str, list] = {"scale_px": [], "banks": [], "coverage": [], "edge": [], "floor": [], "stretch": [],
                                 "streak_direction": [], "interior": []}
        for _ in range(batch):
            u = uniform(generator, 9)  # every value drawn whether used or not, so options never shift other draws
            scale = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(u[0]))
            persistence = _between(self.persistence_range, u[1])
            banks = bool(u[2] < self.bank_probability)
            coverage = _between(self.coverage_range, u[3])
            edge = _between(self.edge_range, u[4])
            floor = _between(self.floor_range, u[5])
            stretch = _between(self.stretch_range, u[6])
            angle = 180.0 * float(u[7])
            interior = _between(self.interior_range, u[8])
            if stretch > 1.0:
                n = _streaked_noise(height, width, generator, self.octaves, persistence, scale, stretch, angle,
                                    device, dtype)
            else:
                n = fractal_noise(1, height, width, generator, octaves=self.octaves, persistence=persistence,
                                  base_scale=scale, device=device, dtype=dtype)
            if banks:
                flat = n.flatten()
                # the (1 - coverage) quantile; kthvalue, as torch.quantile refuses tensors over 2^24 values
                q = flat.kthvalue(max(1, min(flat.numel(), round((1.0 - coverage) * flat.numel())))).values
                # textured inside (thin cloud is not a flat sheet): the density falls by up to `interior` where the
                # field sits at the bank's rim level
                m = torch.sigmoid((n - q) / edge) * (1.0 - interior * (1.0 - n))
            else:
                m = n
            fields.append(floor + (1.0 - floor) * m)
            # streaks are drawn upright and turned anticlockwise on screen: their direction in degrees from the x axis
            # (x right, y down, as rows and columns run)
            direction = (90.0 - angle) % 180.0
            for key, value in zip(info, (scale, banks, coverage, edge, floor, stretch, direction, interior)):
                info[key].append(value)
        return torch.cat(fields), info


def _between(bounds: tuple[float, float], u: Tensor) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * float(u))


def _streaked_noise(
    height: int, width: int, generator: torch.Generator, octaves: int, persistence: float, scale: float,
    stretch: float, angle: float, device: torch.device | str | None, dtype: torch.dtype,
) -> Tensor:
    """Fractal noise whose structures are `stretch` times longer along `angle` degrees: drawn on a square that covers
    the scene at any rotation, squeezed across the streaks, rotated (kornia) and cropped; (1, 1, H, W) in [0, 1]."""
    from kornia.geometry.transform import rotate

    side = math.ceil(math.hypot(height, width)) + 2
    long_side = math.ceil(side * stretch)
    n = fractal_noise(1, side, long_side, generator, octaves=octaves, persistence=persistence,
                      base_scale=max(2.0, scale * stretch), device=device, dtype=dtype)
    # Squeezing the long (x) axis back to `side` leaves structures `scale` wide and scale * stretch tall: upright
    # streaks, then turned by `angle`.
    n = torch.nn.functional.interpolate(n, size=(side, side), mode="bilinear", align_corners=False)
    n = rotate(n, torch.tensor([angle], dtype=n.dtype, device=n.device), mode="bilinear", padding_mode="border")
    top, left = (side - height) // 2, (side - width) // 2
    return rescale01(n[:, :, top:top + height, left:left + width].contiguous())
