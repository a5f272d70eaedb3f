"""Samplers: short loops that call any ``denoiser(x_t, t, cond) -> prediction`` and know nothing of networks.

- :func:`ddpm_sample`: DDPM ancestral sampling over all T steps (posterior variance).
- :func:`ddim_sample`: DDIM over a subset of the steps; ``eta = 0`` is deterministic, ``eta = 1`` is DDPM-like.
- :func:`rddm_sample`: RDDM's DDIM-style sampler for residual diffusion (DS-RDMPD's stage 2), from
  ``I_T = I_in + sqrt(sum_scale) eps`` to the restored image.

``t`` reaches the denoiser as a ``LongTensor`` of 0-based step indices, one per batch item. Randomness comes only from
the ``generator`` (the same seed gives the same output; without one, seed 0), or from ``noise_fn(shape, step)`` when
given: step 0 is the starting noise and step k the noise added by the k-th update. The tiling engine passes
:func:`rsrestore.diffusion.noise.position_noise_fn` there so overlapping tiles see the same noise. Samplers return
images in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .objectives import DDPM_OBJECTIVES, RESIDUAL_OBJECTIVES, check_objective, ddpm_estimate, residual_estimate
from .schedules import DDPMSchedule, ResidualSchedule

Denoiser = Callable[[Tensor, Tensor, Any], Any]
NoiseFn = Callable[[tuple[int, ...], int], Tensor]
Callback = Callable[[int, Tensor], None]

RDDM_UPDATES = ("use_x_start", "use_pred_noise")


def sampling_time_pairs(num_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """``(t, t_next)`` pairs from ``T - 1`` down to ``-1``, evenly spaced as RDDM does: the integer parts of
    ``linspace(-1, T - 1, steps + 1)``, reversed. ``t_next = -1`` marks the last step, which returns the clean-image
    estimate."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampling steps must be between 1 and the schedule's {num_timesteps} timesteps, got {steps}")
    # float32 as RDDM computes it, so the truncated times match the authors' for every (T, steps)
    times = torch.linspace(-1, num_timesteps - 1, steps + 1, dtype=torch.float32).int().tolist()[::-1]
    return list(zip(times[:-1], times[1:]))


def generator_noise(generator: torch.Generator | None, device: torch.device | str | None,
                    dtype: torch.dtype) -> NoiseFn:
    """A ``noise_fn`` drawing standard normal noise from ``generator`` (seed 0 when None), whatever the step."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def draw(shape: tuple[int, ...], step: int) -> Tensor:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)

    return draw


def _noise_source(generator, noise_fn, device, dtype) -> NoiseFn:
    if noise_fn is None:
        return generator_noise(generator, device, dtype)
    return lambda shape, step: noise_fn(shape, step).to(device=device, dtype=dtype)


def _timestep(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, schedule: DDPMSchedule, shape: tuple[int, ...], cond: Any = None, *,
                objective: str = "pred_noise", generator: torch.Generator | None = None,
                noise_fn: NoiseFn | None = None, clip: bool = True, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32, callback: Callback | None = None) -> Tensor:
    """DDPM ancestral sampling: ``x_{t-1} ~ q(x_{t-1} | x_t, x0_hat)`` for t = T-1 .. 0, no noise at the last step."""
    check_objective(objective, DDPM_OBJECTIVES)
    draw = _noise_source(generator, noise_fn, device, dtype)
    abar = schedule.alphas_cumprod.tolist()
    betas = schedule.betas.tolist()
    x = draw(tuple(shape), 0)
    for step, t in enumerate(reversed(range(schedule.num_timesteps)), start=1):
        est = ddpm_estimate(schedule, objective, denoiser(x, _timestep(t, x), cond), x, t, clip)
        abar_prev = abar[t - 1] if t > 0 else 1.0
        x = (math.sqrt(abar_prev) * betas[t] / (1 - abar[t]) * est.x0
             + math.sqrt(1 - betas[t]) * (1 - abar_prev) / (1 - abar[t]) * x)
        if t > 0:
            variance = betas[t] * (1 - abar_prev) / (1 - abar[t])
            x = x + math.sqrt(variance) * draw(x.shape, step)
        if callback is not None:
            callback(step, x)
    return x


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, schedule: DDPMSchedule, shape: tuple[int, ...], cond: Any = None, *,
                steps: int = 50, eta: float = 0.0, objective: str = "pred_noise",
                generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None, clip: bool = True,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al. 2021) over :func:`sampling_time_pairs`:
    ``x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next - sigma^2) eps_hat + sigma z`` with
    ``sigma = eta sqrt((1 - abar_next) / (1 - abar) (1 - abar / abar_next))``; the last step returns ``x0_hat``."""
    check_objective(objective, DDPM_OBJECTIVES)
    if eta < 0:
        raise ValueError(f"DDIM eta must be >= 0, got {eta}")
    draw = _noise_source(generator, noise_fn, device, dtype)
    abar = schedule.alphas_cumprod.tolist()
    x = draw(tuple(shape), 0)
    for step, (t, t_next) in enumerate(sampling_time_pairs(schedule.num_timesteps, steps), start=1):
        est = ddpm_estimate(schedule, objective, denoiser(x, _timestep(t, x), cond), x, t, clip)
        if t_next < 0:
            x = est.x0
        else:
            a, a_next = abar[t], abar[t_next]
            sigma = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
            x = math.sqrt(a_next) * est.x0 + math.sqrt(max(1 - a_next - sigma**2, 0.0)) * est.noise
            if sigma > 0:
                x = x + sigma * draw(x.shape, step)
        if callback is not None:
            callback(step, x)
    return x


@torch.no_grad()
def rddm_sample(denoiser: Denoiser, schedule: ResidualSchedule, x_in: Tensor, cond: Any = None, *,
                steps: int = 5, eta: float = 0.0, update: str = "use_x_start", objective: str = "pred_res",
                generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None, clip: bool = True,
                callback: Callback | None = None) -> Tensor:
    """Residual diffusion sampling (RDDM's DDIM-style sampler) from the degraded ``x_in`` (in [-1, 1]).

    Starts at ``I_T = x_in + sqrt(sum_scale) eps`` and steps over :func:`sampling_time_pairs`. With the estimate
    (x0_hat, res_hat, eps_hat) at ``t``, ``sigma^2 = eta beta^2 betabar_next^2 / betabar^2`` (``beta^2`` the noise
    variance between the two steps) and ``keep = sqrt(betabar_next^2 - sigma^2)``:

    - ``"use_x_start"`` (DS-RDMPD): ``I_next = k I_t + (1 - k) x0_hat + (alphabar_next - k alphabar) res_hat
      + sigma z`` with ``k = keep / betabar``;
    - ``"use_pred_noise"``: ``I_next = I_t - (alphabar - alphabar_next) res_hat - (betabar - keep) eps_hat
      + sigma z``.

    Both put ``I_next`` on the forward marginal ``x0_hat + alphabar_next res_hat + betabar_next eps`` and agree
    when the estimate is self-consistent. The last step returns ``x0_hat``. ``cond`` is passed to the denoiser
    unchanged (``x_in`` when None).
    """
    check_objective(objective, RESIDUAL_OBJECTIVES)
    if update not in RDDM_UPDATES:
        raise ValueError(f"unknown RDDM update {update!r}; choose one of {', '.join(RDDM_UPDATES)}")
    if eta < 0:
        raise ValueError(f"RDDM eta must be >= 0, got {eta}")
    cond = x_in if cond is None else cond
    draw = _noise_source(generator, noise_fn, x_in.device, x_in.dtype)
    abar = schedule.alphas_cumsum.tolist()
    bbar2 = schedule.betas2_cumsum.tolist()
    x = schedule.start(x_in, draw(tuple(x_in.shape), 0))
    for step, (t, t_next) in enumerate(sampling_time_pairs(schedule.num_timesteps, steps), start=1):
        est = residual_estimate(schedule, objective, denoiser(x, _timestep(t, x), cond), x, x_in, t, clip)
        if t_next < 0:
            x = est.x0
        else:
            sigma2 = eta * (bbar2[t] - bbar2[t_next]) * bbar2[t_next] / bbar2[t]
            keep = math.sqrt(max(bbar2[t_next] - sigma2, 0.0))
            if update == "use_x_start":
                k = keep / math.sqrt(bbar2[t])
                x = k * x + (1 - k) * est.x0 + (abar[t_next] - abar[t] * k) * est.res
            else:
                x = x - (abar[t] - abar[t_next]) * est.res - (math.sqrt(bbar2[t]) - keep) * est.noise
            if sigma2 > 0:
                x = x + math.sqrt(sigma2) * draw(tuple(x.shape), step)
        if callback is not None:
            callback(step, x)
    return x
