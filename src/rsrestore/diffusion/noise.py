"""Position-seeded noise for seamless tiled sampling.

A diffusion model restoring a large scene tile by tile must draw, at every scene pixel, the same noise whichever
tile reads it; otherwise overlapping tiles sample different images and the blend shows seams. ``torch.Generator``
has no per-position API (its streams are sequential), so the noise here is counter-based: each value is a pure
function of (seed, step, channel, y, x) -- a 32-bit integer hash of those coordinates, turned into a standard normal
by Box-Muller. The hash uses only int64 tensor ops on values below 2^48, so it is exact and identical on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .samplers import NoiseFn

_MASK32 = 0xFFFFFFFF
# Two odd constants separate the two uniforms Box-Muller needs from one pixel's hash.
_STREAM_RADIUS, _STREAM_ANGLE = 0x9E3779B9, 0x632BE5AB


def _mul32(h, c: int):
    """``(h * c) mod 2^32`` for ``h < 2^32``, exact in int64: the constant is split into 16-bit halves so no
    product exceeds 2^48 (int64 overflow is not something to rely on)."""
    low, high = c & 0xFFFF, c >> 16
    return (h * low + (((h * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(h):
    """A bijective 32-bit avalanche mix (the "lowbias32" xorshift-multiply constants from Wellons' hash
    prospector). Works on Python ints and on int64 tensors holding values in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def _key(seed: int, step: int) -> int:
    key = _mix32(seed & _MASK32)
    key = _mix32(key ^ ((seed >> 32) & _MASK32))
    return _mix32(key ^ (step & _MASK32))


def position_noise(seed: int, channels: int, y0: int, x0: int, height: int, width: int, step: int = 0, *,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise ``(channels, height, width)`` for the scene window whose top-left pixel is
    ``(y0, x0)``: the value at scene pixel (y, x), channel c and sampling step ``step`` depends only on
    ``(seed, step, c, y, x)``, so two windows agree wherever they overlap. Coordinates may be negative (a halo
    beyond the scene edge). Distinct pixels share a 32-bit hash, hence a value, with probability 2^-32.
    """
    key = _key(int(seed), int(step))
    c = torch.arange(channels, dtype=torch.int64, device=device).view(-1, 1, 1)
    y = (torch.arange(height, dtype=torch.int64, device=device) + y0).view(1, -1, 1) & _MASK32
    x = (torch.arange(width, dtype=torch.int64, device=device) + x0).view(1, 1, -1) & _MASK32
    h = _mix32(_mix32(_mix32(key ^ c) ^ y) ^ x)  # channel and row hashes are small; only the last is full size
    u_radius = (_mix32(h ^ _STREAM_RADIUS).to(torch.float64) + 0.5) / 2**32  # in (0, 1): log is finite
    u_angle = _mix32(h ^ _STREAM_ANGLE).to(torch.float64) / 2**32
    z = torch.sqrt(-2 * torch.log(u_radius)) * torch.cos(2 * math.pi * u_angle)
    return z.to(dtype)


def position_noise_fn(seed: int, origins: Sequence[tuple[int, int]]) -> NoiseFn:
    """A sampler's ``noise_fn`` for a batch of scene windows: item ``b`` of a ``(B, C, H, W)`` request is the
    :func:`position_noise` of the window at ``origins[b] = (y0, x0)``."""
    origins = list(origins)

    def draw(shape: tuple[int, ...], step: int) -> Tensor:
        batch, channels, height, width = shape
        if batch != len(origins):
            raise ValueError(f"noise requested for {batch} windows but {len(origins)} origins were given")
        return torch.stack([position_noise(seed, channels, y0, x0, height, width, step) for y0, x0 in origins])

    return draw
