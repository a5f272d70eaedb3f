"""Position-seeded noise for seamless tiled sampling.

A diffusion model restoring a large scene tile by tile must draw, at every scene pixel, the same noise whichever
tile reads it; otherwise overlapping tiles sample different images and the blend shows seams. ``torch.Generator``
has no per-position API (its streams are sequential), so the noise here is counter-based: each value is a pure
function of (seed, step, channel, y, x) -- a 32-bit integer hash of those coordinates, turned into a standard normal
by Box-Muller. The hash uses only int64 tensor ops on values below 2^48, so the integers are exact and identical on
any device (the float32 Box-Muller step may differ by a rounding unit between CPU and GPU kernels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .samplers import NoiseFn

_MASK32 = 0xFFFFFFFF


def _mul32_(h: Tensor, c: int) -> Tensor:
    """``h = (h * c) mod 2^32`` in place for ``0 <= h < 2^32``, exact in int64: the constant is split into 16-bit
    halves so no product exceeds 2^48 (int64 overflow is not something to rely on)."""
    high = (h * (c >> 16)).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return h.mul_(c & 0xFFFF).add_(high).bitwise_and_(_MASK32)


def _mix32_(h: Tensor) -> Tensor:
    """A bijective 32-bit avalanche mix, in place (the "lowbias32" xorshift-multiply constants from Wellons' hash
    prospector), on int64 tensors holding values in [0, 2^32). In place because the full-window mix dominates the
    cost and allocation-free ops halve it."""
    h.bitwise_xor_(h >> 16)
    _mul32_(h, 0x7FEB352D)
    h.bitwise_xor_(h >> 15)
    _mul32_(h, 0x846CA68B)
    return h.bitwise_xor_(h >> 16)


def _key(seed: int, step: int, device) -> Tensor:
    key = _mix32_(torch.tensor(seed & _MASK32, dtype=torch.int64, device=device))
    key = _mix32_(key ^ ((seed >> 32) & _MASK32))
    return _mix32_(key ^ (step & _MASK32))


def position_noise(seed: int, channels: int, y0: int, x0: int, height: int, width: int, step: int = 0, *,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise ``(channels, height, width)`` for the scene window whose top-left pixel is
    ``(y0, x0)``: the value at scene pixel (y, x), channel c and sampling step ``step`` depends only on
    ``(seed, step, c, y, x)``, so two windows agree wherever they overlap. Coordinates may be negative (a halo
    beyond the scene edge). Pixels of one row never share a hash (the mix is a bijection); pixels of different rows
do with probability 2^-32.
    """
    key = _key(int(seed), int(step), device)
    # Box-Muller turns two uniforms into two independent normals: channels 2k and 2k + 1 share a pair of uniforms,
    # each from its own stream (key ^ 2k for the radius, key ^ (2k + 1) for the angle). The stream and row hashes
    # are small; only the last mix with x runs over the full window.
    pairs = (channels + 1) // 2
    streams = torch.arange(2 * pairs, dtype=torch.int64, device=device).view(-1, 1, 1)
    y = (torch.arange(height, dtype=torch.int64, device=device) + y0).view(1, -1, 1) & _MASK32
    x = (torch.arange(width, dtype=torch.int64, device=device) + x0).view(1, 1, -1) & _MASK32
    rows = _mix32_(_mix32_(key ^ streams) ^ y)  # (2 pairs, height, 1)
    bits = _mix32_(rows ^ x).to(torch.float32).view(pairs, 2, height, width)
    # float32 rounds 32-bit integers to 24 significant bits: u stays in (0, 1], so the log is finite
    radius = torch.sqrt(-2 * torch.log((bits[:, 0] + 0.5) * 2.0**-32))
    angle = bits[:, 1] * (2 * math.pi * 2.0**-32)
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return z.reshape(2 * pairs, height, width)[:channels].to(dtype)


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
