"""Diffusion core: schedules, objectives and samplers, apart from any denoiser network.

A sampler calls ``denoiser(x_t, t, cond) -> prediction`` -- any callable: ``t`` is a ``LongTensor`` of 0-based step
indices (one per batch item), ``cond`` is passed through unchanged, and the prediction is what the chosen objective
names (``"pred_res"``: the residual ``I_in - I_0``; ``"pred_noise"``; ``"pred_res_noise"``: a pair; ``"pred_x0"``).
Images are in [-1, 1] here (:func:`to_signed` / :func:`to_unit` convert from and to the library's [0, 1]).
Randomness comes only from a ``torch.Generator`` or from a ``noise_fn(shape, step)`` such as
:func:`position_noise_fn`, which makes the noise a function of scene position so overlapping tiles agree.

Residual diffusion as in DS-RDMPD's stage 2 (the residual is ``stage1_output - clean``)::

    import torch
    from rsrestore.diffusion import ResidualSchedule, rddm_sample, residual_training_example, to_signed, to_unit

    schedule = ResidualSchedule.rddm(num_timesteps=1000, sum_scale=1.0)

    # training: the network regresses the residual from x_t
    x0, x_in = to_signed(clean), to_signed(stage1_output)
    t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), generator=g)
    ex = residual_training_example(schedule, x0, x_in, t, torch.randn(x0.shape, generator=g))
    loss = (net(torch.cat([ex.x_t, x_in, hazy], 1), t) - ex.target("pred_res")).abs().mean()

    # sampling: 5 deterministic steps from x_T = x_in + sqrt(sum_scale) eps
    denoise = lambda x_t, t, cond: net(torch.cat([x_t, *cond], 1), t)
    restored = to_unit(rddm_sample(denoise, schedule, x_in, cond=(x_in, to_signed(hazy)), steps=5,
                                   update="use_x_start", objective="pred_res",
                                   generator=torch.Generator().manual_seed(0)))

DDPM / DDIM for a noise-predicting network::

    schedule = DDPMSchedule.named("cosine", 1000)
    image = ddim_sample(lambda x, t, c: net(x, t), schedule, (1, 3, 64, 64), steps=50, eta=0.0, generator=g)
"""

from .noise import position_noise, position_noise_fn
from .objectives import (
    DDPM_OBJECTIVES,
    RESIDUAL_OBJECTIVES,
    Estimate,
    TrainingExample,
    ddpm_estimate,
    ddpm_training_example,
    random_timesteps,
    residual_estimate,
    residual_training_example,
)
from .samplers import (
    RDDM_UPDATES,
    Denoiser,
    NoiseFn,
    ddim_sample,
    ddpm_sample,
    generator_noise,
    rddm_sample,
    sampling_time_pairs,
)
from .schedules import DDPMSchedule, ResidualSchedule, at, to_signed, to_unit

__all__ = [
    "DDPMSchedule", "ResidualSchedule", "at", "to_signed", "to_unit",
    "RESIDUAL_OBJECTIVES", "DDPM_OBJECTIVES", "TrainingExample", "Estimate", "random_timesteps",
    "residual_training_example", "ddpm_training_example", "residual_estimate", "ddpm_estimate",
    "Denoiser", "NoiseFn", "RDDM_UPDATES", "sampling_time_pairs", "generator_noise", "ddpm_sample", "ddim_sample", "rddm_sample",
    "position_noise", "position_noise_fn",
]
