"""What a denoiser predicts, and how to train and read it.

A diffusion denoiser is trained to regress one quantity (its *objective*) from the noisy state ``x_t``:

- residual diffusion (:class:`ResidualSchedule`): ``"pred_res"`` (the residual ``I_in - I_0``, DS-RDMPD's choice),
  ``"pred_noise"``, ``"pred_res_noise"`` (a pair ``(residual, noise)``, two output heads) or ``"pred_x0"``;
- DDPM (:class:`DDPMSchedule`): ``"pred_noise"`` or ``"pred_x0"``.

:func:`residual_training_example` / :func:`ddpm_training_example` give the trainer ``x_t`` and every target, so a
diffusion loss is ``loss(net(ex.x_t, t, cond), ex.target(objective))``. :func:`residual_estimate` /
:func:`ddpm_estimate` turn a prediction back into the full estimate (clean image, noise, residual) that a sampler
steps with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .schedules import DDPMSchedule, ResidualSchedule, at

RESIDUAL_OBJECTIVES = ("pred_res", "pred_noise", "pred_res_noise", "pred_x0")
DDPM_OBJECTIVES = ("pred_noise", "pred_x0")

# Where alphabar_t = 1 (the last step of a residual schedule) the clean image cannot be told from the noise alone;
# a pred_noise estimate divides by 1 - alphabar_t floored here, as RDDM does. Use another objective with such steps.
_MIN_CLEAN_WEIGHT = 1e-6


def check_objective(objective: str, allowed: tuple[str, ...]) -> None:
    if objective not in allowed:
        raise ValueError(f"unknown diffusion objective {objective!r}; choose one of {', '.join(allowed)}")


def random_timesteps(num_timesteps: int, batch: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Uniform training timesteps ``0 .. T-1``, one per batch item, drawn from ``generator``."""
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(0, num_timesteps, (batch,), generator=generator, device=gen_device)
    return t.to(device) if device is not None else t


@dataclass(frozen=True)
class TrainingExample:
    """A noised state ``x_t`` and the regression target of each objective."""

    x_t: Tensor
    targets: dict[str, Tensor | tuple[Tensor, Tensor]]

    def target(self, objective: str) -> Tensor | tuple[Tensor, Tensor]:
        check_objective(objective, tuple(self.targets))
        return self.targets[objective]


def residual_training_example(schedule: ResidualSchedule, x0: Tensor, x_in: Tensor, t: Tensor,
                              noise: Tensor) -> TrainingExample:
    """``x0`` clean, ``x_in`` degraded (both in [-1, 1]), ``t`` a LongTensor of indices, ``noise`` standard normal."""
    res = x_in - x0
    x_t = schedule.q_sample(x0, x_in, t, noise)
    return TrainingExample(x_t, {"pred_res": res, "pred_noise": noise, "pred_res_noise": (res, noise), "pred_x0": x0})


def ddpm_training_example(schedule: DDPMSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> TrainingExample:
    return TrainingExample(schedule.q_sample(x0, t, noise), {"pred_noise": noise, "pred_x0": x0})


@dataclass(frozen=True)
class Estimate:
    """A denoiser's prediction completed into the clean image, the noise and (residual diffusion) the residual."""

    x0: Tensor
    noise: Tensor
    res: Tensor | None = None


def _clip(x: Tensor, clip: bool) -> Tensor:
    return x.clamp(-1, 1) if clip else x


def residual_estimate(schedule: ResidualSchedule, objective: str, output, x_t: Tensor, x_in: Tensor,
                      t: Tensor | int, clip: bool = True) -> Estimate:
    """Complete a residual-diffusion prediction using ``x_t = x_in + (alphabar - 1) res + betabar eps``.

    ``clip`` clamps the predicted residual and clean image to [-1, 1] as RDDM does (images are in [-1, 1]; a
    residual of a restorable degradation is smaller than that).
    """
    check_objective(objective, RESIDUAL_OBJECTIVES)
    abar, bbar = at(schedule.alphas_cumsum, t, x_t), at(schedule.betas_cumsum, t, x_t)

    def noise_from(res: Tensor) -> Tensor:
        return (x_t - x_in - (abar - 1) * res) / bbar

    if objective == "pred_res":
        res = _clip(output, clip)
        return Estimate(x0=_clip(x_in - res, clip), noise=noise_from(res), res=res)
    if objective == "pred_res_noise":
        res, noise = _clip(output[0], clip), output[1]
        return Estimate(x0=_clip(x_t - abar * res - bbar * noise, clip), noise=noise, res=res)
    if objective == "pred_noise":
        x0 = _clip((x_t - abar * x_in - bbar * output) / (1 - abar).clamp(min=_MIN_CLEAN_WEIGHT), clip)
        return Estimate(x0=x0, noise=output, res=_clip(x_in - x0, clip))
    x0 = _clip(output, clip)
    res = _clip(x_in - x0, clip)
    return Estimate(x0=x0, noise=noise_from(res), res=res)


def ddpm_estimate(schedule: DDPMSchedule, objective: str, output: Tensor, x_t: Tensor, t: Tensor | int,
                  clip: bool = True) -> Estimate:
    """Complete a DDPM prediction using ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``; ``clip`` clamps ``x0`` to
    [-1, 1] and re-derives the noise from the clamped ``x0`` so the two stay consistent."""
    check_objective(objective, DDPM_OBJECTIVES)
    abar = at(schedule.alphas_cumprod, t, x_t)
    x0 = output if objective == "pred_x0" else (x_t - (1 - abar).sqrt() * output) / abar.sqrt()
    if objective == "pred_noise" and not clip:
        return Estimate(x0=x0, noise=output)
    x0 = _clip(x0, clip)
    return Estimate(x0=x0, noise=(x_t - abar.sqrt() * x0) / (1 - abar).sqrt())
