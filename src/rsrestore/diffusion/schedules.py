"""Noise schedules and the forward (noising) process: DDPM's and the residual schedules of RDDM.

Timesteps are 0-based indices ``i = 0 .. T-1`` into every table below; index ``i`` is step ``t = i + 1`` of the
papers' 1-based formulas. A denoiser is called with these indices (a ``LongTensor`` with one entry per batch item).

Images live in ``[-1, 1]`` inside a diffusion model; :func:`to_signed` and :func:`to_unit` convert from and to the
library's ``[0, 1]`` convention.

Tables are float64 (a 1000-step cumulative sum loses digits in float32) and are cast to the image's dtype and device
when they are read with :func:`at`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def to_signed(x: Tensor) -> Tensor:
    """Map an image from the library's ``[0, 1]`` to the ``[-1, 1]`` a diffusion model works in."""
    return x * 2 - 1


def to_unit(x: Tensor) -> Tensor:
    """Map an image from ``[-1, 1]`` back to ``[0, 1]``."""
    return (x + 1) / 2


def at(table: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """``table[t]`` shaped to broadcast over ``like`` (one value per batch item), in ``like``'s dtype and device."""
    if isinstance(t, int):
        return table[t].to(dtype=like.dtype, device=like.device)
    values = table.to(like.device)[t.to(like.device)].to(like.dtype)
    return values.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class DDPMSchedule:
    """A DDPM variance schedule: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

    Build it with :meth:`linear` (Ho et al. 2020: betas 1e-4 .. 0.02) or :meth:`cosine` (Nichol & Dhariwal 2021).
    """

    betas: Tensor  # (T,) float64

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMSchedule:
        return cls(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> DDPMSchedule:
        """abar(t) = f(t) / f(0) with f(t) = cos^2((t / T + s) / (1 + s) * pi / 2); betas capped at ``max_beta``
        so the last step does not divide by zero."""
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
        abar = f / f[0]
        return cls((1 - abar[1:] / abar[:-1]).clamp(max=max_beta))

    @classmethod
    def named(cls, name: str, num_timesteps: int = 1000) -> DDPMSchedule:
        """``"linear"`` or ``"cosine"``."""
        builders = {"linear": cls.linear, "cosine": cls.cosine}
        if name not in builders:
            raise ValueError(f"unknown DDPM schedule {name!r}; choose one of {sorted(builders)}")
        return builders[name](num_timesteps)

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    @property
    def alphas(self) -> Tensor:
        return 1 - self.betas

    @property
    def alphas_cumprod(self) -> Tensor:
        """abar_t = prod_{s <= t} (1 - beta_s), decreasing from about 1 to about 0."""
        return torch.cumprod(self.alphas, dim=0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw ``x_t`` given ``x_0`` in closed form."""
        abar = at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


@dataclass(frozen=True)
class ResidualSchedule:
    """RDDM's residual schedule: ``I_t = I_0 + alphabar_t I_res + betabar_t eps`` with ``I_res = I_in - I_0``.

    ``alphas`` weight the residual (the degradation) and ``betas2`` the noise variance added at each step. At the
    last step ``alphabar = 1`` and ``betabar^2 = sum_scale``: ``I_T = I_in + sqrt(sum_scale) eps``, which is where
    sampling starts.
    """

    alphas: Tensor  # (T,) float64, alpha_t
    betas2: Tensor  # (T,) float64, beta_t^2
    sum_scale: float

    @classmethod
    def rddm(cls, num_timesteps: int = 1000, sum_scale: float = 1.0) -> ResidualSchedule:
        """RDDM's "decreased alpha, increased beta" schedule (the one DS-RDMPD trains with).

        alpha_t = (T - t + 1) / (T (T + 1) / 2) decreases and sums to 1; beta_t^2 = sum_scale * t / (T (T + 1) / 2)
        increases and sums to ``sum_scale`` (t = 1 .. T).
        """
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float64)
        total = num_timesteps * (num_timesteps + 1) / 2
        return cls(alphas=(num_timesteps - t + 1) / total, betas2=sum_scale * t / total, sum_scale=float(sum_scale))

    @property
    def num_timesteps(self) -> int:
        return self.alphas.numel()

    @property
    def alphas_cumsum(self) -> Tensor:
        """alphabar_t, increasing to 1 (clamped: a float64 sum may overshoot 1 by an ulp)."""
        return self.alphas.cumsum(0).clamp(max=1.0)

    @property
    def betas2_cumsum(self) -> Tensor:
        """betabar_t^2, increasing to ``sum_scale``."""
        return self.betas2.cumsum(0)

    @property
    def betas_cumsum(self) -> Tensor:
        """betabar_t = sqrt(cumsum of beta^2), the noise standard deviation of ``I_t``."""
        return self.betas2_cumsum.sqrt()

    def q_sample(self, x0: Tensor, x_in: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw ``I_t`` given the clean ``x0`` and the degraded ``x_in`` in closed form."""
        return x0 + at(self.alphas_cumsum, t, x0) * (x_in - x0) + at(self.betas_cumsum, t, x0) * noise

    def start(self, x_in: Tensor, noise: Tensor) -> Tensor:
        """``I_T = I_in + sqrt(sum_scale) eps``: the state sampling starts from."""
        return x_in + math.sqrt(self.sum_scale) * noise
