"""Learning-rate schedules, evaluated by the training loop at every optimiser step."""

from __future__ import annotations

import math

from .config import ConfigError, OptimConfig, ScheduleConfig

__all__ = ["learning_rate"]


def learning_rate(
    optim: OptimConfig, schedule: ScheduleConfig, step: int, epoch: int, total_steps: int, total_epochs: int
) -> float:
    """The learning rate of optimiser step ``step`` (0-based) taken during epoch ``epoch`` (0-based).

    With ``t`` the step (``interval: step``) or the epoch (``interval: epoch``) and ``T`` the run's length in the
    same unit (after warm-up, for steps):

    - constant: ``lr``
    - cosine (SGDR without restarts, Loshchilov & Hutter 2017, Eq. 5):
      ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2``
    - exponential: ``lr * gamma ** t``
    - step: ``lr * gamma ** floor(t / step_size)``

    the decays floored at ``min_lr``; during the first ``warmup_steps`` steps the rate is ``lr (step + 1) / warmup``.
    """
    lr = optim.lr
    warm = schedule.warmup_steps
    if step < warm:
        return lr * (step + 1) / warm
    if schedule.interval == "epoch":
        t, total = epoch, total_epochs
    else:
        t, total = step - warm, total_steps - warm
    name = schedule.name
    if name == "constant":
        return lr
    if name == "cosine":
        frac = min(t / total, 1.0) if total > 0 else 1.0
        return schedule.min_lr + (lr - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if name == "exponential":
        return max(schedule.min_lr, lr * schedule.gamma**t)
    if name == "step":
        return max(schedule.min_lr, lr * schedule.gamma ** (t // schedule.step_size))
    raise ConfigError(f"schedule.name: unknown schedule {name!r}")
